"""Order ingest and acceptance: Mirakl orders in, WooCommerce orders out, decisions back (OR21).

The ledger carries the state between the steps, so each step can run (and be retried) alone:

1. :meth:`OrderIngest.fetch_changes` — one OR11 listing of the orders changed since the cursor
   (minus an overlap window); each order and its lines are recorded in the ledger, bad payloads
   become exceptions. A listing cut short by the OR11 call budget resumes where it stopped.
2. :meth:`OrderIngest.decide_and_reserve` — for undecided ``WAITING_ACCEPTANCE`` orders: SKU
   look-up in WooCommerce, per-line decisions counting earlier orders of the batch, then the
   ``on-hold`` WooCommerce order that reserves the stock (intent and outcome in the ledger; a
   create whose outcome is unknown is found again by its ``_mirakl_order_id`` meta, never repeated).
3. :meth:`OrderIngest.send_decisions` — OR21 with every line's decision, once per order.
4. :meth:`OrderIngest.complete_shipping` and :meth:`OrderIngest.release_cancelled` — bring the
   WooCommerce order along when Mirakl reaches ``SHIPPING``, ``CANCELED`` or ``REFUSED``.
5. :meth:`OrderIngest.guard_deadlines` — exceptions for orders still waiting past a share of
   their acceptance window.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from include.woo_mirakl import human_review
from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.http import ApiError, ClientError, UncertainWriteError
from include.woo_mirakl.clients.mirakl_models import Order, parse_datetime
from include.woo_mirakl.order_log import decision_line
from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.ledger.repository import Ledger, OrderRecord
from include.woo_mirakl.order_mapping import (
    ACCEPTED,
    META_CANCEL_REASON,
    META_MARKETPLACE,
    META_ORDER_ID,
    VANISHED,
    InvalidOrderError,
    LineDecision,
    StockInfo,
    acceptance_problems,
    completion_update,
    decide_lines,
    meta_value,
    order_decision,
    pool_of,
    reservation_order,
    shipping_line_id,
    vanished_lines,
)
from include.woo_mirakl.order_money import expected_total, totals_problem
from include.woo_mirakl.unseen_demand import record_listing

log = logging.getLogger(__name__)

FLOW = "mirakl_order_ingest"
WAITING = "WAITING_ACCEPTANCE"
SHIPPING = "SHIPPING"
ENDED = ("CANCELED", "REFUSED")
OVERLAP = timedelta(minutes=2)
INITIAL_LOOKBACK = timedelta(days=30)
# WooCommerce's clock may differ from ours: look for a lost create this far before its intent.
RECOVERY_MARGIN = timedelta(minutes=15)

EXC_INVALID = "order_invalid"
EXC_DEADLINE = "acceptance_deadline"
EXC_RESERVE = "order_reservation_failed"
EXC_ACCEPT = "order_acceptance_failed"
EXC_COMPLETE = "order_completion_failed"
EXC_LISTING = "order_listing_stuck"
EXC_TOTALS = "order_totals_mismatch"
EXC_VANISHED = "order_product_vanished"

KIND_CREATE = "woo.orders.create"
KIND_ACCEPT = "mirakl.OR21"
KIND_COMPLETE = "woo.orders.complete"
KIND_CANCEL = "woo.orders.cancel"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(timezone.utc).isoformat()


@dataclass
class StepResult:
    """Counts of one step, small enough for an XCom."""

    counts: Counter[str] = field(default_factory=Counter)

    def add(self, key: str, n: int = 1) -> None:
        self.counts[key] += n

    def as_dict(self) -> dict[str, int]:
        return dict(self.counts)


class OrderIngest:
    """The order flow of one marketplace: plain Python over the two clients and the ledger.

    ``mirakl`` and ``woo`` are only needed by the steps that call them; ``clock`` is the
    wall clock used for decision times and deadline shares.
    """

    def __init__(
        self,
        marketplace: Marketplace,
        ledger: Ledger,
        *,
        mirakl: Any = None,
        woo: Any = None,
        clock: Callable[[], datetime] = _utcnow,
        overlap: timedelta = OVERLAP,
        initial_lookback: timedelta = INITIAL_LOOKBACK,
    ):
        self.marketplace = marketplace
        self.mp = marketplace.name
        self.ledger = ledger
        self.mirakl = mirakl
        self.woo = woo
        self.clock = clock
        self.overlap = overlap
        self.initial_lookback = initial_lookback

    def __repr__(self) -> str:
        return f"OrderIngest({self.mp!r})"

    # ---- keys -------------------------------------------------------------------------------
    def _key(self, kind: str, order_id: str) -> str:
        return f"{self.mp}:{kind}:{order_id}"

    # ---- 1. OR11 ----------------------------------------------------------------------------
    def fetch_changes(self) -> dict[str, int]:
        """Read changed orders (OR11) into the ledger; a used-up call budget skips politely."""
        result = StepResult()
        started = self.clock()
        cursor = self.ledger.get_cursor(FLOW, self.mp, "or11", default=None) or {}
        since = parse_datetime(cursor.get("since")) or (self.clock() - self.initial_lookback)
        resume_from = parse_datetime(cursor.get("resume_from"))
        orders: list[Order] = []
        complete = True
        try:
            for order in self.mirakl.iter_orders(start_update_date=since, start_date=resume_from):
                orders.append(order)
        except BudgetExceeded as exceeded:
            complete = False
            log.info("%s: OR11 budget used up after %d orders (%s)", self.mp, len(orders), exceeded)
            if not orders:
                result.add("skipped")
                return result.as_dict()
        for order in orders:
            result.add(self._record(order))
        result.add("read", len(orders))
        newest = max((o.last_updated_date for o in orders if o.last_updated_date), default=None)
        # The first listing of a cycle sets the low-water mark: any update after that call is
        # later than everything it returned, so restarting from it misses nothing.
        low_water = parse_datetime(cursor.get("low_water")) if resume_from else newest
        # Mirakl's clock is at least at the newest update it reported (see guard_deadlines).
        seen = max(filter(None, (newest, parse_datetime(cursor.get("newest_seen")))), default=None)
        if complete:
            next_since = max(since, low_water - self.overlap) if low_water else since
            state = {"since": _iso(next_since)}
        else:
            resume = orders[-1].created_date or resume_from
            state = {"since": _iso(since), "resume_from": _iso(resume), "low_water": _iso(low_water)}
            result.add("partial")
            if resume == resume_from:
                # a whole page created in the same second: resuming by creation date cannot move on
                self.ledger.raise_exception(
                    EXC_LISTING, "or11_resume", {"created_date": _iso(resume), "orders_read": len(orders)}, self.mp
                )
        self.ledger.set_cursor(FLOW, self.mp, "or11", {**state, "newest_seen": _iso(seen)})
        if complete:  # the inventory push trusts the ledger's demand only after a fresh complete listing
            record_listing(self.ledger, self.mp, started)
        return result.as_dict()

    def _record(self, order: Order) -> str:
        """Store one OR11 order and its lines; returns what happened (new / changed / unchanged)."""
        existing = self.ledger.get_order(self.mp, order.order_id)
        if (
            existing is not None
            and existing.mirakl_state == order.order_state
            and existing.last_mirakl_update == order.last_updated_date
        ):
            return "unchanged"
        detail = dict(existing.detail or {}) if existing else {}
        problems = acceptance_problems(order) if order.order_state == WAITING else []
        had_problems = bool(detail.get("problems"))
        detail.update(payload=order.raw, problems=problems)
        self.ledger.upsert_order(
            self.mp, order.order_id,
            commercial_id=order.commercial_id,
            mirakl_state=order.order_state,
            currency=(order.currency_iso_code or "")[:3] or None,
            total_price=order.total_price,
            acceptance_deadline=order.acceptance_decision_date,
            shipping_deadline=order.shipping_deadline,
            last_mirakl_update=order.last_updated_date,
            detail=detail,
        )
        lines = [
            {
                "mirakl_order_line_id": line.order_line_id,
                "offer_sku": line.offer_sku,
                "quantity": line.quantity,
                "price": line.price,
                "mirakl_state": line.order_line_state,
            }
            for line in order.order_lines
            if line.order_line_id not in ("", "None")
        ]
        if lines:
            self.ledger.set_order_lines(self.mp, order.order_id, lines)
        if problems:
            self.ledger.raise_exception(
                EXC_INVALID, order.order_id,
                {"order_id": order.order_id, "commercial_id": order.commercial_id, "problems": problems},
                self.mp,
            )
        elif had_problems:
            self.ledger.resolve_exception(EXC_INVALID, order.order_id, self.mp)
        return "new" if existing is None else "changed"

    # ---- 2. decisions and reservations --------------------------------------------------------
    def decide_and_reserve(self) -> dict[str, int]:
        """Decide undecided waiting orders and create their ``on-hold`` WooCommerce orders."""
        result = StepResult()
        overdue = human_review.apply_overdue_defaults(
            self.ledger, self.marketplace, human_review.mirakl_now(self.ledger, self.mp, self.clock))
        if overdue:
            result.add("review_timed_out", len(overdue))
        waiting = [r for r in self.ledger.orders_in_states(self.mp, [WAITING]) if not (r.detail or {}).get("problems")]
        # a flagged order is a person's to decide (or Mirakl's, when they left it)
        undecided = sorted((r for r in waiting if r.decision is None and human_review.review_state(r) is None),
                           key=_created_key)
        to_reserve = [r for r in waiting if r.decision in ("accepted", "partially") and r.woo_order_id is None
                      and not (r.detail or {}).get("reservation_failed")]
        decided_now: list[str] = []
        if undecided:
            skus = {line.offer_sku for r in undecided + to_reserve for line in r.lines if line.offer_sku}
            refs = self.woo.products_by_sku(skus)
            stock = {sku: StockInfo.of(ref) for sku, ref in refs.items()}
            facts = {sku: human_review.WooFacts.from_ref(ref, stock[sku].quantity) for sku, ref in refs.items()}
            in_airflow = self.marketplace.human_review.in_airflow
            promised: Counter[str] = Counter()  # per stock pool: siblings sharing a parent's stock count together
            for record in to_reserve:  # accepted earlier, not yet held by a WooCommerce order
                for line in record.lines:
                    if line.decision == ACCEPTED and line.offer_sku:
                        promised[pool_of(line.offer_sku, stock)] += line.quantity or 0
            for record in undecided:
                order = _order(record)
                reasons = human_review.review_reasons(order, facts, self.marketplace, promised,
                                                      pool=lambda sku: pool_of(sku, stock)) if in_airflow else []
                decisions = None if reasons else decide_lines(order, stock, self.marketplace.order_policy, promised)
                if decisions is None and in_airflow:
                    reasons = reasons or ["a line's SKU is unknown in WooCommerce and refuse_unknown_sku is off"]
                    human_review.flag_for_review(self.ledger, self.mp, order, reasons, facts, self.clock())
                    result.add("needs_review")
                    continue
                if decisions is None:
                    result.add("left_for_human")
                    continue
                decided = self._save_decisions(order, decisions)
                result.add(f"decided_{decided.decision}")
                decided_now.append(decided.mirakl_order_id)
                if decided.decision != "refused":
                    to_reserve.append(decided)
        if to_reserve:
            self._reserve(to_reserve, result)
        for order_id in decided_now:
            log.info("%s", decision_line(self.ledger.get_order(self.mp, order_id)))
        return result.as_dict()

    def _save_decisions(self, order: Order, decisions: list[LineDecision]) -> OrderRecord:
        self.ledger.set_order_lines(self.mp, order.order_id, [
            {"mirakl_order_line_id": d.line_id, "decision": d.decision, "decision_reason": d.reason}
            for d in decisions
        ])
        return self.ledger.upsert_order(
            self.mp, order.order_id, decision=order_decision(decisions), decided_at=self.clock()
        )

    def _reserve(self, records: list[OrderRecord], result: StepResult) -> None:
        pending: list[tuple[OrderRecord, dict, str]] = []
        lost: list[tuple[OrderRecord, dict, str]] = []
        for record in records:
            order = _order(record)
            accepted = {line.mirakl_order_line_id for line in record.lines if line.decision == ACCEPTED}
            body = reservation_order(self.marketplace, order, accepted)
            key = self._key(KIND_CREATE, record.mirakl_order_id)
            attempt = (record.detail or {}).get("reservation_attempt")
            if attempt:  # an earlier reservation lost a product and was undone: a new one
                key = f"{key}#{attempt}"
            action = self.ledger.begin_action(
                key, KIND_CREATE, record.mirakl_order_id, _create_digest_source(body), self.mp
            )
            if action.state == "done":
                self._remember_woo_order(record, action.outcome or {})
                result.add("already_reserved")
            elif action.state == "failed":
                result.add("reservation_failed")
            elif action.state == "uncertain":
                lost.append((record, body, key))
            else:
                pending.append((record, body, key))
        if lost:
            found = self._find_created(lost)
            for record, body, key in lost:
                woo_order = found.get(record.mirakl_order_id)
                if woo_order is None:
                    pending.append((record, body, key))
                    continue
                outcome = {"woo_order_id": woo_order["id"], "shipping_line_id": shipping_line_id(woo_order),
                           "found_after_crash": True}
                self.ledger.complete_action(key, outcome)
                self._remember_woo_order(record, outcome)
                result.add("recovered")
        for record, body, key in pending:
            self._create(record, body, key, result)

    def _find_created(self, lost: list[tuple[OrderRecord, dict, str]]) -> dict[str, dict]:
        """WooCommerce orders carrying our ``_mirakl_order_id``, modified since the earliest intent."""
        since = min((r.decided_at or self.clock()) for r, _, _ in lost) - RECOVERY_MARGIN
        wanted = {r.mirakl_order_id for r, _, _ in lost}
        found: dict[str, dict] = {}
        for woo_order in self.woo.iter_orders(modified_after=since):
            order_id = meta_value(woo_order, META_ORDER_ID)
            if order_id in wanted and meta_value(woo_order, META_MARKETPLACE) == self.mp:
                # two would already be a duplicate: keep the oldest, the one the reservation made
                if order_id not in found or woo_order["id"] < found[order_id]["id"]:
                    found[str(order_id)] = woo_order
        return found

    def _create(self, record: OrderRecord, body: dict, key: str, result: StepResult) -> None:
        try:
            woo_order = self.woo.create_order(body)
        except UncertainWriteError as error:
            self.ledger.mark_action_uncertain(key, str(error))
            result.add("reservation_uncertain")
            return
        except ApiError as error:
            if error.status >= 500 or error.status == 429:
                self.ledger.fail_action(key, str(error), retryable=True)
                result.add("reservation_retry")
                return
            self.ledger.fail_action(key, str(error), retryable=False)
            self._flag(record, reservation_failed=str(error))
            self.ledger.raise_exception(
                EXC_RESERVE, record.mirakl_order_id,
                {"order_id": record.mirakl_order_id, "commercial_id": record.commercial_id, "error": str(error)},
                self.mp,
            )
            result.add("reservation_failed")
            return
        except ClientError as error:  # never reached WooCommerce: safe to send again next run
            self.ledger.fail_action(key, str(error), retryable=True)
            result.add("reservation_retry")
            return
        outcome = {"woo_order_id": woo_order["id"], "shipping_line_id": shipping_line_id(woo_order)}
        gone = vanished_lines(body, woo_order)
        if gone:
            self.ledger.complete_action(key, {**outcome, "vanished_lines": gone})
            self._undo_reservation(record, woo_order, gone, result)
            return
        self.ledger.complete_action(key, outcome)
        self._remember_woo_order(record, outcome)
        self._check_totals(record, woo_order)
        result.add("reserved")

    def _undo_reservation(self, record: OrderRecord, woo_order: dict, gone: list[str], result: StepResult) -> None:
        """A created order that lost a product reserves nothing for it: cancel it, refuse or leave the lines."""
        reason = f"{VANISHED}: Mirakl line(s) {', '.join(gone)} came back without their product"
        update = {"status": "cancelled", "meta_data": [{"key": META_CANCEL_REASON, "value": reason}]}
        key = self._key(KIND_CANCEL, f"{record.mirakl_order_id}:{woo_order['id']}")
        self.ledger.begin_action(key, KIND_CANCEL, str(woo_order["id"]), update, self.mp)
        try:
            self.woo.update_order(int(woo_order["id"]), update)
            self.ledger.complete_action(key, {"woo_order_id": woo_order["id"]})
        except (ApiError, ClientError) as error:
            self.ledger.fail_action(key, str(error), retryable=False)
            reason += f"; cancelling WooCommerce order {woo_order['id']} failed: {error} (cancel it by hand)"
        self.ledger.raise_exception(
            EXC_VANISHED, record.mirakl_order_id,
            {"order_id": record.mirakl_order_id, "woo_order_id": woo_order["id"], "lines": gone, "problem": reason},
            self.mp,
        )
        detail = dict(record.detail or {})
        detail["reservation_attempt"] = int(detail.get("reservation_attempt") or 0) + 1
        if not self.marketplace.order_policy.refuse_unknown_sku:
            detail["reservation_failed"] = reason  # left for a person, as an unknown SKU would be
            self.ledger.upsert_order(self.mp, record.mirakl_order_id, detail=detail)
            result.add("vanished_left_for_human")
            return
        self.ledger.set_order_lines(self.mp, record.mirakl_order_id, [
            {"mirakl_order_line_id": line_id, "decision": "refused", "decision_reason": VANISHED} for line_id in gone
        ])
        decisions = [LineDecision(line.mirakl_order_line_id, line.offer_sku or "", line.quantity or 0,
                                  line.decision == ACCEPTED and line.mirakl_order_line_id not in gone)
                     for line in record.lines]
        self.ledger.upsert_order(self.mp, record.mirakl_order_id, decision=order_decision(decisions), detail=detail)
        result.add("vanished_refused")

    def _check_totals(self, record: OrderRecord, woo_order: dict) -> None:
        """WooCommerce's total must be what Mirakl charged for the lines it holds (within a cent)."""
        held = {line.mirakl_order_line_id for line in record.lines if line.decision == ACCEPTED}
        problem = totals_problem(woo_order, expected_total((record.detail or {}).get("payload") or {}, held))
        if problem:
            self.ledger.raise_exception(
                EXC_TOTALS, record.mirakl_order_id,
                {"order_id": record.mirakl_order_id, "woo_order_id": woo_order.get("id"), "problem": problem},
                self.mp,
            )
        else:
            self.ledger.resolve_exception(EXC_TOTALS, record.mirakl_order_id, self.mp)

    def _remember_woo_order(self, record: OrderRecord, outcome: dict) -> None:
        detail = dict(record.detail or {})
        detail["woo_shipping_line_id"] = outcome.get("shipping_line_id")
        self.ledger.upsert_order(
            self.mp, record.mirakl_order_id, woo_order_id=int(outcome["woo_order_id"]), woo_status="on-hold",
            detail=detail,
        )

    def _flag(self, record: OrderRecord, **changes: Any) -> None:
        detail = dict(record.detail or {})
        detail.update(changes)
        self.ledger.upsert_order(self.mp, record.mirakl_order_id, detail=detail)

    # ---- 3. OR21 ------------------------------------------------------------------------------
    def send_decisions(self) -> dict[str, int]:
        """OR21 for every decided order whose accepted lines are held in WooCommerce."""
        result = StepResult()
        for record in self.ledger.orders_in_states(self.mp, [WAITING]):
            detail = record.detail or {}
            if record.decision is None or detail.get("or21_sent"):
                continue
            if record.decision != "refused" and record.woo_order_id is None:
                continue  # never accept what WooCommerce does not hold yet
            decisions = {line.mirakl_order_line_id: line.decision == ACCEPTED for line in record.lines}
            key = self._key(KIND_ACCEPT, record.mirakl_order_id)
            request = {"order_id": record.mirakl_order_id, "order_lines": sorted(decisions.items())}
            action = self.ledger.begin_action(key, KIND_ACCEPT, record.mirakl_order_id, request, self.mp)
            if action.state == "done":
                self._flag(record, or21_sent=True)
                continue
            if action.state == "failed":
                continue
            try:
                self.mirakl.accept_order(record.mirakl_order_id, decisions)
            except UncertainWriteError as error:
                self.ledger.mark_action_uncertain(key, str(error))
                result.add("uncertain")
                continue
            except ApiError as error:
                if action.state == "uncertain" and error.status == 400:
                    # an earlier attempt may have landed: the next OR11 tells (the order moves on)
                    self.ledger.mark_action_uncertain(key, str(error))
                    result.add("uncertain")
                    continue
                retryable = error.status >= 500 or error.status == 429
                self.ledger.fail_action(key, str(error), retryable=retryable)
                if not retryable:
                    self.ledger.raise_exception(
                        EXC_ACCEPT, record.mirakl_order_id,
                        {"order_id": record.mirakl_order_id, "error": str(error), "decisions": decisions}, self.mp,
                    )
                result.add("failed")
                continue
            except BudgetExceeded:
                self.ledger.fail_action(key, "call budget used up", retryable=True)
                result.add("deferred")
                continue
            except ClientError as error:
                self.ledger.fail_action(key, str(error), retryable=True)
                result.add("failed")
                continue
            self.ledger.complete_action(key, {"accepted": sum(decisions.values()), "lines": len(decisions)})
            self._flag(record, or21_sent=True)
            result.add("sent")
        self._settle_uncertain_acceptances(result)
        return result.as_dict()

    def _settle_uncertain_acceptances(self, result: StepResult) -> None:
        """An OR21 of unknown outcome whose order has left WAITING_ACCEPTANCE did land."""
        for action in self.ledger.stuck_actions(timedelta(0), self.mp):
            if action.kind != KIND_ACCEPT or action.state != "uncertain" or not action.target:
                continue
            record = self.ledger.get_order(self.mp, action.target)
            if record is not None and record.mirakl_state not in (WAITING, None):
                self.ledger.complete_action(action.idempotency_key, {"confirmed_by_state": record.mirakl_state})
                result.add("confirmed")

    # ---- 4. SHIPPING and cancellations --------------------------------------------------------
    def complete_shipping(self) -> dict[str, int]:
        """Addresses, message, shipping and ``processing`` on the WooCommerce order of SHIPPING orders."""
        result = StepResult()
        for record in self.ledger.orders_in_states(self.mp, [SHIPPING]):
            if record.woo_order_id is None or record.woo_status != "on-hold":
                continue
            order = _order(record)
            try:
                message = self._customer_message(order)
                update = completion_update(
                    order, message, (record.detail or {}).get("woo_shipping_line_id"),
                    customer_email_in_billing=self.marketplace.customer_email_in_billing,
                    line_ids={line.mirakl_order_line_id for line in record.lines if line.decision == ACCEPTED},
                )
            except InvalidOrderError as error:
                self.ledger.raise_exception(
                    EXC_COMPLETE, record.mirakl_order_id,
                    {"order_id": record.mirakl_order_id, "woo_order_id": record.woo_order_id,
                     "problems": error.problems},
                    self.mp,
                )
                result.add("invalid")
                continue
            if self._apply_update(record, KIND_COMPLETE, update, result,
                                  check=lambda answer, r=record: self._check_totals(r, answer)):
                self.ledger.upsert_order(self.mp, record.mirakl_order_id, woo_status="processing")
                self.ledger.resolve_exception(EXC_COMPLETE, record.mirakl_order_id, self.mp)
                result.add("completed")
        return result.as_dict()

    def _customer_message(self, order: Order) -> str | None:
        if not order.has_customer_message:
            return None
        bodies = []
        for thread in self.mirakl.iter_order_threads(order.order_id):
            for message in thread.messages:
                sender = message.get("from") or {}
                if sender.get("type") in ("CUSTOMER_USER", "CUSTOMER") and message.get("body"):
                    bodies.append(str(message["body"]))
        return "\n\n".join(bodies) or None

    def release_cancelled(self) -> dict[str, int]:
        """Cancel the WooCommerce order of a cancelled or refused Mirakl order, so the stock returns."""
        result = StepResult()
        for record in self.ledger.orders_in_states(self.mp, list(ENDED)):
            if record.woo_order_id is None or record.woo_status == "cancelled":
                continue
            payload = (record.detail or {}).get("payload") or {}
            reason = (
                f"Mirakl order {record.mirakl_state}"
                + (f": {payload.get('order_state_reason_label') or payload.get('order_state_reason_code')}"
                   if payload.get("order_state_reason_code") else "")
            )
            update = {"status": "cancelled", "meta_data": [{"key": META_CANCEL_REASON, "value": reason}]}
            if self._apply_update(record, KIND_CANCEL, update, result):
                self._flag(record, released_because=reason)
                self.ledger.upsert_order(self.mp, record.mirakl_order_id, woo_status="cancelled")
                result.add("released")
        return result.as_dict()

    def _apply_update(self, record: OrderRecord, kind: str, update: dict, result: StepResult,
                      check: Callable[[dict], None] | None = None) -> bool:
        """An absolute (repeatable) update of the WooCommerce order, with intent and outcome;
        ``check`` looks at WooCommerce's answer (e.g. its recalculated totals)."""
        key = self._key(kind, record.mirakl_order_id)
        action = self.ledger.begin_action(key, kind, str(record.woo_order_id), update, self.mp)
        if action.state == "done":
            return True
        try:
            answer = self.woo.update_order(int(record.woo_order_id), update)
        except ApiError as error:
            retryable = error.status >= 500 or error.status == 429
            self.ledger.fail_action(key, str(error), retryable=retryable)
            result.add("update_failed")
            return False
        except ClientError as error:
            self.ledger.fail_action(key, str(error), retryable=True)
            result.add("update_failed")
            return False
        self.ledger.complete_action(key, {"woo_order_id": record.woo_order_id})
        if check is not None and isinstance(answer, dict):
            check(answer)
        return True

    # ---- 5. deadlines -------------------------------------------------------------------------
    def guard_deadlines(self) -> dict[str, int]:
        """An exception per order still waiting past a configured share of its acceptance window."""
        result = StepResult()
        # The deadline is Mirakl's: when our clock lags Mirakl's (the newest update Mirakl
        # reported is later than our "now"), judge by Mirakl's.
        cursor = self.ledger.get_cursor(FLOW, self.mp, "or11", default=None) or {}
        now = max(filter(None, (self.clock(), parse_datetime(cursor.get("newest_seen")))))
        shares = sorted(self.marketplace.acceptance_deadline_alerts)
        late: list[str] = []
        for record in self.ledger.orders_in_states(self.mp, [WAITING]):
            if (record.detail or {}).get("or21_sent"):
                continue
            created = parse_datetime(((record.detail or {}).get("payload") or {}).get("created_date"))
            deadline = record.acceptance_deadline
            if created is None or deadline is None or deadline <= created:
                continue
            used = (now - created) / (deadline - created)
            crossed = [s for s in shares if used >= s]
            if not crossed:
                continue
            late.append(record.mirakl_order_id)
            self.ledger.raise_exception(
                EXC_DEADLINE, record.mirakl_order_id,
                {
                    "order_id": record.mirakl_order_id, "commercial_id": record.commercial_id,
                    "share_used": round(min(used, 1.0), 3), "threshold": crossed[-1],
                    "deadline": _iso(deadline), "undecided_because": _why_waiting(record),
                },
                self.mp, severity="critical" if crossed[-1] >= 0.8 else "warning",
            )
            result.add(f"over_{int(crossed[-1] * 100)}")
        result.add("resolved", len(self.ledger.resolve_missing(EXC_DEADLINE, self.mp, late)))
        return result.as_dict()

    def run_once(self) -> dict[str, dict[str, int]]:
        """Every step in order, as the DAG runs them (for scripts and benchmarks)."""
        return {
            "fetch": self.fetch_changes(),
            "reserve": self.decide_and_reserve(),
            "accept": self.send_decisions(),
            "shipping": self.complete_shipping(),
            "released": self.release_cancelled(),
            "deadlines": self.guard_deadlines(),
        }


def _order(record: OrderRecord) -> Order:
    return Order.from_api((record.detail or {}).get("payload") or {})


def _created_key(record: OrderRecord) -> tuple[str, str]:
    return (str(((record.detail or {}).get("payload") or {}).get("created_date") or ""), record.mirakl_order_id)


def _create_digest_source(body: dict) -> dict:
    """What a reservation *is* (order and lines), so a retry with fresher names still matches."""
    return {
        "order_id": meta_value(body, META_ORDER_ID),
        "lines": [(item["sku"], item["quantity"], item["total"]) for item in body["line_items"]],
        "currency": body["currency"],
    }


def _why_waiting(record: OrderRecord) -> str:
    detail = record.detail or {}
    if detail.get("problems"):
        return "invalid payload: " + "; ".join(detail["problems"])
    if detail.get("reservation_failed"):
        return "WooCommerce order could not be created: " + str(detail["reservation_failed"])
    review = (detail.get("review") or {}).get("status")
    if record.decision is None and review == human_review.PENDING:
        return "waiting for a person's decision in Airflow (Required actions)"
    if record.decision is None and review == human_review.LEFT:
        return "left to Mirakl by a person's decision"
    if record.decision is None:
        return "not decided yet"
    return "decision not confirmed by Mirakl yet"
