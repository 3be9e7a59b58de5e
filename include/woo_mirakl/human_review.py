"""Orders a person decides in Airflow: which ones, what the person sees, and how the decision is kept.

1. :func:`review_reasons` (pure) says why an order needs a person under its marketplace's
   ``order_policy`` and ``human_review`` settings: ``accept_orders`` false, a unit price more than a
   share under the WooCommerce price, a short line whose product allows backorders, an order above
   a configured total.
2. :func:`flag_for_review` marks the order in the ledger with those reasons and the WooCommerce
   facts the person needs (stock and price per line); the order ingest then leaves it alone.
3. :func:`claim_reviews` hands each flagged order to exactly one review run (an idempotent ledger
   action), whose required action (``include/woo_mirakl/review_operator.py``) shows
   :func:`review_form` and is due :func:`decision_due` before Mirakl's acceptance deadline.
4. :func:`record_decision` keeps the first decision (who, when, per line) in the ledger. The order
   ingest then takes it the usual way: reservation in WooCommerce, OR21 once.
   :func:`apply_overdue_defaults` applies the marketplace's timeout default when nobody answered in
   time and Airflow did not either (a stopped scheduler must not let the deadline pass unanswered).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Mapping
from urllib.parse import quote

from include.woo_mirakl.clients.mirakl_models import Order, parse_datetime
from include.woo_mirakl.config import Marketplace

WAITING = "WAITING_ACCEPTANCE"
KIND_REQUEST = "human.review.request"
KIND_DECISION = "human.review"
KIND_NOTICE = "human.review.notice"
PENDING, DECIDED, LEFT, TOO_LATE = "pending", "decided", "left_to_mirakl", "too_late"

# The options of the required action (its labels are what people click).
PER_LINE, ACCEPT_ALL, REFUSE_ALL, LEAVE = "per_line", "accept_all", "refuse_all", "leave"
OPTION_LABELS = {
    PER_LINE: "Apply the line choices",
    ACCEPT_ALL: "Accept every line",
    REFUSE_ALL: "Refuse every line",
    LEAVE: "Leave it to Mirakl",
}
TIMEOUT_OPTION = {"refuse": REFUSE_ALL, "accept": ACCEPT_ALL, "leave": LEAVE}
ACCEPT, REFUSE = "accept", "refuse"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class WooFacts:
    """What WooCommerce says about a SKU when the order is flagged: stock, price, backorders."""

    quantity: int | None  # None: stock not tracked
    price: Decimal | None
    backorders_allowed: bool = False

    @classmethod
    def from_ref(cls, ref: Any, available: int | None) -> "WooFacts":
        """From a SKU look-up and the units it can sell (``StockInfo.quantity``: None for no limit)."""
        try:
            price = Decimal(str(ref.price)) if ref.price not in (None, "") else None
        except ArithmeticError:
            price = None
        return cls(available, price, bool(getattr(ref, "backorders_allowed", False)))

    def as_dict(self) -> dict[str, Any]:
        return {"quantity": self.quantity, "price": None if self.price is None else str(self.price),
                "backorders_allowed": self.backorders_allowed}


def unit_price(line: Any) -> Decimal | None:
    """The line's unit price: ``price_unit`` when Mirakl sends it, else the line price over the quantity."""
    raw = (line.raw or {}).get("price_unit")
    if raw not in (None, ""):
        return Decimal(str(raw)).quantize(Decimal("0.01"))
    if line.price is None or not line.quantity:
        return None
    return (line.price / line.quantity).quantize(Decimal("0.01"))


def _percent(share: Decimal) -> str:
    return f"{share * 100:f}".rstrip("0").rstrip(".")


def review_reasons(order: Order, woo: Mapping[str, WooFacts], marketplace: Marketplace,
                   promised: Counter[str] | None = None, pool: Callable[[str], str] = lambda sku: sku) -> list[str]:
    """Why ``order`` needs a person (empty when the automatic rules may decide it).

    ``promised`` counts units already accepted for earlier orders per stock pool (``pool`` names a
    SKU's pool: variations sharing their parent's stock count together).
    """
    rules = marketplace.human_review
    reasons: list[str] = []
    if not marketplace.order_policy.accept_orders:
        reasons.append("the marketplace's policy is to decide every order by hand (accept_orders: false)")
    if rules.order_total_above is not None and order.total_price is not None and order.total_price > rules.order_total_above:
        reasons.append(f"the order total {order.total_price} {order.currency_iso_code or ''} is above "
                       f"{rules.order_total_above}".replace("  ", " "))
    taken: Counter[str] = Counter(promised or {})
    for line in order.order_lines:
        facts = woo.get(line.offer_sku or "")
        if facts is None:
            continue
        price = unit_price(line)
        share = rules.price_below_woo_share
        if share is not None and price is not None and facts.price:
            floor = facts.price * (1 - share)
            if price < floor:
                reasons.append(f"line {line.order_line_id} ({line.offer_sku}): unit price {price} is more than "
                               f"{_percent(share)} % below the WooCommerce price {facts.price}")
        if rules.backorder_short_lines and facts.backorders_allowed and facts.quantity is not None:
            available = facts.quantity - taken[pool(line.offer_sku)]
            if line.quantity > available:
                reasons.append(f"line {line.order_line_id} ({line.offer_sku}): {line.quantity} ordered, "
                               f"{max(available, 0)} in stock, and the product allows backorders")
        taken[pool(line.offer_sku)] += line.quantity
    return reasons


def flag_for_review(ledger: Any, marketplace: str, order: Order, reasons: list[str],
                    woo: Mapping[str, WooFacts], now: datetime) -> None:
    """Mark a waiting order as needing a person, with what they need to see."""
    record = ledger.get_order(marketplace, order.order_id)
    detail = dict(record.detail or {}) if record else {}
    detail["review"] = {
        "status": PENDING, "reasons": reasons, "flagged_at": now.isoformat(),
        "woo": {sku: facts.as_dict() for sku, facts in woo.items()
                if any(line.offer_sku == sku for line in order.order_lines)},
    }
    ledger.upsert_order(marketplace, order.order_id, detail=detail)


def review_state(record: Any) -> str | None:
    return ((record.detail or {}).get("review") or {}).get("status")


def mirakl_now(ledger: Any, marketplace: str, clock: Callable[[], datetime] = _utcnow) -> datetime:
    """Our clock, or Mirakl's when it is ahead (the newest update Mirakl reported): deadlines are Mirakl's."""
    cursor = ledger.get_cursor("mirakl_order_ingest", marketplace, "or11", default=None) or {}
    seen = parse_datetime(cursor.get("newest_seen"))
    now = clock()
    return max(now, seen) if seen else now


def decision_due(record: Any, marketplace: Marketplace) -> datetime | None:
    """When the person's decision is due: the acceptance deadline minus the configured margin."""
    if record.acceptance_deadline is None:
        return None
    return record.acceptance_deadline - timedelta(minutes=marketplace.human_review.decide_before_minutes)


def claim_reviews(ledger: Any, marketplace: Marketplace, run_id: str, limit: int = 100) -> list[str]:
    """Orders flagged for review that no review run has taken yet, now taken by ``run_id``."""
    claimed: list[str] = []
    for record in ledger.orders_in_states(marketplace.name, [WAITING]):
        if review_state(record) != PENDING or record.decision is not None:
            continue
        key = f"{marketplace.name}:{KIND_REQUEST}:{record.mirakl_order_id}"
        action = ledger.begin_action(key, KIND_REQUEST, record.mirakl_order_id,
                                     {"order_id": record.mirakl_order_id}, marketplace.name)
        if not action.created:
            continue  # another run has it (its required action, or the deadline, decides)
        ledger.complete_action(key, {"run_id": run_id})
        claimed.append(record.mirakl_order_id)
        if len(claimed) >= limit:
            break
    return claimed


def line_param(line_id: str) -> str:
    return f"line_{line_id}"


def review_form(record: Any, marketplace: Marketplace) -> tuple[str, str, dict[str, dict[str, Any]]]:
    """Subject, Markdown body and per-line params (accept / refuse) of an order's required action."""
    order = Order.from_api((record.detail or {}).get("payload") or {})
    review = (record.detail or {}).get("review") or {}
    woo = review.get("woo") or {}
    due = decision_due(record, marketplace)
    currency = order.currency_iso_code or ""
    rows = []
    params: dict[str, dict[str, Any]] = {}
    for line in order.order_lines:
        facts = woo.get(line.offer_sku or "") or {}
        stock = "not in WooCommerce" if not facts else (
            "not tracked" if facts.get("quantity") is None else str(facts["quantity"]))
        if facts.get("backorders_allowed"):
            stock += " (backorders allowed)"
        woo_price = facts.get("price") or "—"
        rows.append(f"| {line.order_line_id} | {line.offer_sku} | {line.quantity} | {unit_price(line)} {currency} "
                    f"| {woo_price} | {stock} |")
        params[line_param(line.order_line_id)] = {
            "value": ACCEPT if facts else REFUSE, "type": "string", "enum": [ACCEPT, REFUSE],
            "title": f"Line {line.order_line_id}: {line.offer_sku} × {line.quantity}",
            "description": f"{unit_price(line)} {currency} each; WooCommerce stock {stock}",
        }
    reasons = "\n".join(f"- {r}" for r in review.get("reasons") or []) or "- (no reason recorded)"
    body = (
        f"**Mirakl order {order.order_id}** ({order.commercial_id or 'no commercial id'}) on marketplace "
        f"**{marketplace.name}**, total {order.total_price} {currency}.\n\n"
        f"Why a person decides:\n{reasons}\n\n"
        f"| line | SKU | qty | unit price | WooCommerce price | WooCommerce stock |\n|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n\nDecide before **{due:%Y-%m-%d %H:%M} UTC** (Mirakl's deadline is "
          f"{record.acceptance_deadline:%Y-%m-%d %H:%M} UTC). Without an answer: "
          f"**{OPTION_LABELS[TIMEOUT_OPTION[marketplace.human_review.timeout_default]]}**. "
          "Choose *Apply the line choices* to accept or refuse line by line with the fields below; "
          "accepted lines are reserved in WooCommerce and Mirakl gets the answer (OR21) within a minute."
    ) if due else ""
    subject = f"Accept or refuse Mirakl order {order.order_id} ({marketplace.name})"
    return subject, body, params


def required_action_link(base_url: str | None, dag_id: str, run_id: str, task_id: str, map_index: int) -> str | None:
    """The Airflow UI page of one required action (the path Airflow's HITLOperator links to),
    under ``base_url`` with its path kept (an Airflow served under /airflow stays there)."""
    if not base_url:
        return None
    return (f"{base_url.rstrip('/')}/dags/{quote(dag_id, safe='')}/runs/{quote(run_id, safe=':+')}/tasks/"
            f"{quote(task_id, safe='')}/required_actions?map_index={int(map_index)}")


def required_action_notice(record: Any, marketplace: Marketplace, link: str | None) -> tuple[str, str]:
    """Subject and body of the message telling ops that an order waits for a person."""
    order_id = record.mirakl_order_id
    due = decision_due(record, marketplace)
    reasons = ((record.detail or {}).get("review") or {}).get("reasons") or []
    default = OPTION_LABELS[TIMEOUT_OPTION[marketplace.human_review.timeout_default]]
    subject = f"[woo-mirakl] Mirakl order {order_id} waits for a decision ({marketplace.name})"
    body = (
        f"Mirakl order {order_id} on marketplace {marketplace.name} needs a person to accept or refuse it.\n"
        f"Why: {'; '.join(reasons) or 'no reason recorded'}\n"
        f"Decide before: {due:%Y-%m-%d %H:%M} UTC (Mirakl's deadline: {record.acceptance_deadline:%Y-%m-%d %H:%M} UTC)\n"
        f"Without an answer: {default}\n"
        f"Required action: {link or 'Browse → Required Actions in Airflow (set [api] base_url for a direct link)'}\n"
    )
    return subject, body


def notify_required_action(ledger: Any, marketplace: Marketplace, record: Any, link: str | None,
                           send: Callable[[str, str], Any]) -> dict[str, Any] | None:
    """Tell ops once per order (a ledger action, recorded before and after) that it waits for a person.

    ``send(subject, body)`` returns a :class:`~include.woo_mirakl.alerts.Delivery`. Returns what was
    sent, or None when an earlier attempt already told them. When every configured channel failed,
    the action stays retryable, so a retry of the task tells them then.
    """
    mp, order_id = marketplace.name, record.mirakl_order_id
    key = f"{mp}:{KIND_NOTICE}:{order_id}"
    action = ledger.begin_action(key, KIND_NOTICE, order_id, {"order_id": order_id}, mp)
    if action.state == "done":
        return None
    subject, body = required_action_notice(record, marketplace, link)
    delivery = send(subject, body)
    outcome = {"email": delivery.email, "slack": delivery.slack, "link": link}
    if not delivery.delivered and False in (delivery.email, delivery.slack):
        ledger.fail_action(key, "no alert channel delivered the notice", retryable=True)
    else:
        ledger.complete_action(key, outcome)
    return outcome


def record_decision(ledger: Any, marketplace: Marketplace, order_id: str, option: str,
                    line_choices: Mapping[str, str] | None, by: str, *, timed_out: bool = False,
                    now: datetime | None = None) -> dict[str, Any]:
    """Keep the first decision on a flagged order; later ones (or ones past the deadline) change nothing."""
    if option not in OPTION_LABELS:
        raise ValueError(f"unknown review option {option!r}; expected one of {list(OPTION_LABELS)}")
    now = now or mirakl_now(ledger, marketplace.name)
    mp = marketplace.name
    key = f"{mp}:{KIND_DECISION}:{order_id}"
    action = ledger.begin_action(key, KIND_DECISION, order_id, {"order_id": order_id}, mp)
    if action.state == "done":
        return {"order_id": order_id, **(action.outcome or {}), "kept": False, "because": "already decided"}
    record = ledger.get_order(mp, order_id)
    why_not = None
    if record is None:
        why_not = "the order is not in the ledger"
    elif record.mirakl_state != WAITING:
        why_not = f"the order is {record.mirakl_state} on Mirakl now"
    elif record.decision is not None or (record.detail or {}).get("or21_sent"):
        why_not = "the order was decided already"
    elif record.acceptance_deadline is not None and now >= record.acceptance_deadline:
        why_not = "Mirakl's acceptance deadline has passed"
    if why_not:
        if record is not None:
            _set_review(ledger, mp, record, status=TOO_LATE, by=by, at=now.isoformat(), option=option, note=why_not)
        outcome = {"kept": False, "because": why_not, "by": by}
        ledger.complete_action(key, outcome)
        return {"order_id": order_id, **outcome}
    how = "on timeout" if timed_out else "in Airflow"
    review = {"by": by, "at": now.isoformat(), "option": option, "timed_out": timed_out}
    if option == LEAVE:
        _set_review(ledger, mp, record, status=LEFT, **review)
        outcome = {"kept": True, "decision": None, "left_to_mirakl": True, **review}
        ledger.complete_action(key, outcome)
        return {"order_id": order_id, **outcome}
    choices = {}
    for line in record.lines:
        if option == ACCEPT_ALL:
            choices[line.mirakl_order_line_id] = ACCEPT
        elif option == REFUSE_ALL:
            choices[line.mirakl_order_line_id] = REFUSE
        else:  # a line without a choice is refused: accepting needs a person's yes
            choices[line.mirakl_order_line_id] = (line_choices or {}).get(line_param(line.mirakl_order_line_id), REFUSE)
    from include.woo_mirakl.order_mapping import ACCEPTED, REFUSED

    ledger.set_order_lines(mp, order_id, [
        {"mirakl_order_line_id": line_id, "decision": ACCEPTED if choice == ACCEPT else REFUSED,
         "decision_reason": f"{'accepted' if choice == ACCEPT else 'refused'} by {by} {how}"}
        for line_id, choice in choices.items()
    ])
    accepted = sum(1 for c in choices.values() if c == ACCEPT)
    decision = "accepted" if accepted == len(choices) else ("refused" if accepted == 0 else "partially")
    record = ledger.get_order(mp, order_id)
    detail = dict(record.detail or {})
    detail["review"] = {**(detail.get("review") or {}), "status": DECIDED, **review, "lines": choices}
    ledger.upsert_order(mp, order_id, decision=decision, decided_at=now, detail=detail)
    outcome = {"kept": True, "decision": decision, "lines": choices, **review}
    ledger.complete_action(key, outcome)
    return {"order_id": order_id, **outcome}


def _set_review(ledger: Any, mp: str, record: Any, **changes: Any) -> None:
    detail = dict(record.detail or {})
    detail["review"] = {**(detail.get("review") or {}), **changes}
    ledger.upsert_order(mp, record.mirakl_order_id, detail=detail)


def apply_overdue_defaults(ledger: Any, marketplace: Marketplace, now: datetime) -> list[dict[str, Any]]:
    """The timeout default for flagged orders whose decision is overdue and still missing."""
    done = []
    option = TIMEOUT_OPTION[marketplace.human_review.timeout_default]
    for record in ledger.orders_in_states(marketplace.name, [WAITING]):
        due = decision_due(record, marketplace)
        if review_state(record) == PENDING and record.decision is None and due is not None and now >= due:
            done.append(record_decision(ledger, marketplace, record.mirakl_order_id, option, None,
                                        "timeout default (no decision before the deadline)", timed_out=True, now=now))
    return done
