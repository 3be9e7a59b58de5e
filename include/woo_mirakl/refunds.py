"""Refunds: every WooCommerce refund on a marketplace order sent to Mirakl once (OR28).

:func:`plan_refund` (pure) maps one WooCommerce refund to the lines of one OR28: each refunded
line item to its Mirakl order line (quantity, amount), a shipping refund — a ``shipping_lines``
entry, or the part of the refund not tied to a line — to the lines' shipping amounts, the reason
to a Mirakl reason code. A refund that cannot be sent whole (more than is left to refund, a line
Mirakl does not have, a line whose state forbids refunds) raises :class:`UnsendableRefund`:
nothing of it is sent and it becomes an exception.

:class:`RefundSync` runs a cycle. The OR28 body is frozen in the ledger before the intent, the
intent before the call, the Mirakl refund ids after it. An intent whose outcome is unknown (a
crash, a dropped connection) is settled from the order's refunds on Mirakl — the ledger copy,
else one OR11 — and only an OR28 that provably did not land is sent again. Every write goes through
the shared write path (:mod:`include.woo_mirakl.writes`); one refund's failure is an exception on
it, the others and the cursor go on.
"""
from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import yaml

from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.http import ClientError
from include.woo_mirakl.clients.mirakl_models import Order, RefundLine, parse_datetime
from include.woo_mirakl.config import CONFIG_DIR, ConfigError, Marketplace
from include.woo_mirakl.ledger.repository import Ledger, OrderRecord
from include.woo_mirakl.order_money import refund_excess, tax_mode
from include.woo_mirakl.writes import DONE, FINAL, UNCERTAIN, Write, WriteResult, Writer, concerns_every_record

log = logging.getLogger(__name__)

FLOW = "mirakl_refund_sync"
KIND_REFUND = "mirakl.OR28"
KIND_NOTE = "woo.refund_note"
EXC_UNSENDABLE = "refund_unsendable"
EXC_REFUSED = "refund_refused"
EXC_FAILED = "refund_failed"
REASONS_FILE = CONFIG_DIR / "refund_reasons.yaml"
OVERLAP = timedelta(minutes=5)
INITIAL_LOOKBACK = timedelta(days=30)
REFUNDABLE_STATES = ("SHIPPING", "SHIPPED", "TO_COLLECT", "RECEIVED")
META_LINE_ID = "_mirakl_order_line_id"
META_REFUNDED_ITEM = "_refunded_item_id"
CENT = Decimal("0.01")


class UnsendableRefund(ValueError):
    """A WooCommerce refund that cannot be sent to Mirakl as a whole; the message says why."""


def _money(value: Any) -> Decimal:
    return abs(Decimal(str(value or 0))).quantize(CENT)


def _key(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip().casefold()


# ---- reason codes --------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReasonMap:
    """WooCommerce refund reason → Mirakl reason code, with a default."""

    default: str
    reasons: tuple[tuple[str, str], ...] = ()

    @classmethod
    def load(cls, path: str | Path = REASONS_FILE) -> "ReasonMap":
        try:
            data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            raise ConfigError(f"refund reason map not found: {path}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if not isinstance(data, dict) or not str(data.get("default") or "").strip():
            raise ConfigError(f"{path}: needs a non-empty 'default' Mirakl reason code")
        reasons = data.get("reasons") or {}
        if not isinstance(reasons, dict):
            raise ConfigError(f"{path}: 'reasons' must map reason texts to Mirakl reason codes")
        return cls(str(data["default"]).strip(), tuple((_key(str(k)), str(v).strip()) for k, v in reasons.items()))

    def code(self, reason: str | None) -> str:
        text = _key(reason or "")
        if not text:
            return self.default
        for key, code in self.reasons:
            if key == text:
                return code
        for key, code in self.reasons:
            if key and key in text:
                return code
        return self.default


# ---- the pure mapping ----------------------------------------------------------------------------

def mirakl_line_ids(woo_order: Mapping[str, Any], record: OrderRecord | None = None) -> dict[int, str]:
    """WooCommerce line item id → Mirakl order line id (item meta, else the ledger's mapping)."""
    found: dict[int, str] = {}
    for item in woo_order.get("line_items") or []:
        for meta in item.get("meta_data") or []:
            if isinstance(meta, dict) and meta.get("key") == META_LINE_ID and meta.get("value"):
                found[int(item["id"])] = str(meta["value"])
    for line in (record.lines if record else ()):
        if line.woo_line_item_id is not None:
            found.setdefault(int(line.woo_line_item_id), line.mirakl_order_line_id)
    return found


def refunded_so_far(mirakl_order: Order, sent: Iterable[Mapping[str, Any]] = ()) -> dict[str, tuple[Decimal, Decimal, int]]:
    """Per Mirakl line: amount, shipping and quantity already refunded.

    Mirakl's own refunds are merged by refund id with ``sent`` (refunds this integration
    recorded, which a stale copy of the order may not show yet).
    """
    by_id: dict[str, tuple[str, Decimal, Decimal, int]] = {}
    anonymous: list[tuple[str, Decimal, Decimal, int]] = []
    for line in mirakl_order.order_lines:
        for refund in line.refunds:
            row = (line.order_line_id, _money(refund.amount), _money(refund.shipping_amount), refund.quantity or 0)
            if refund.id:
                by_id[refund.id] = row
            else:
                anonymous.append(row)
    for refund in sent:
        rid = str(refund.get("refund_id") or "")
        row = (str(refund["order_line_id"]), _money(refund.get("amount")), _money(refund.get("shipping_amount")),
               int(refund.get("quantity") or 0))
        if rid:
            by_id.setdefault(rid, row)
        else:
            anonymous.append(row)
    totals: dict[str, tuple[Decimal, Decimal, int]] = {}
    for line_id, amount, shipping, quantity in [*by_id.values(), *anonymous]:
        a, s, q = totals.get(line_id, (Decimal("0"), Decimal("0"), 0))
        totals[line_id] = (a + amount, s + shipping, q + quantity)
    return totals


def plan_refund(
    refund: Mapping[str, Any],
    woo_order: Mapping[str, Any],
    mirakl_order: Order,
    reasons: ReasonMap,
    already: Mapping[str, tuple[Decimal, Decimal, int]],
    record: OrderRecord | None = None,
) -> list[RefundLine]:
    """The OR28 lines for one WooCommerce refund, or :class:`UnsendableRefund` saying why not."""
    where = f"refund {refund.get('id')} of WooCommerce order {woo_order.get('id')}"
    reason_code = reasons.code(refund.get("reason"))
    to_mirakl = mirakl_line_ids(woo_order, record)
    lines = {line.order_line_id: line for line in mirakl_order.order_lines}
    amounts: dict[str, list[Any]] = {}  # Mirakl line id -> [amount, shipping, quantity]
    for item in refund.get("line_items") or []:
        original = _refunded_item(item)
        amount = _money(item.get("total")) + _money(item.get("total_tax"))
        quantity = abs(int(item.get("quantity") or 0))
        if amount == 0 and quantity == 0:
            continue
        line_id = to_mirakl.get(original) if original is not None else None
        if line_id is None or line_id not in lines:
            raise UnsendableRefund(
                f"{where}: line item {original if original is not None else item.get('id')} "
                f"({item.get('sku') or item.get('name') or 'no SKU'}) is not a line of Mirakl order "
                f"{mirakl_order.order_id}" + (f" (no Mirakl line {line_id})" if line_id else "")
            )
        entry = amounts.setdefault(line_id, [Decimal("0"), Decimal("0"), 0])
        entry[0] += amount
        entry[2] += quantity
    total = _money(refund.get("amount"))
    shipping = sum((_money(s.get("total")) + _money(s.get("total_tax")) for s in refund.get("shipping_lines") or []),
                   Decimal("0"))
    tied = sum((e[0] for e in amounts.values()), Decimal("0"))
    untied = total - tied - shipping
    if untied < 0 and not shipping:
        raise UnsendableRefund(f"{where}: its amount {total} is less than its refunded lines ({tied})")
    shipping += max(untied, Decimal("0"))
    if shipping:
        _allocate_shipping(shipping, amounts, lines, already, where)
    if not amounts:
        raise UnsendableRefund(f"{where}: nothing to refund (amount {total}, no line)")
    plan = []
    for line_id, (amount, ship, quantity) in amounts.items():
        line = lines[line_id]
        if line.order_line_state not in REFUNDABLE_STATES:
            raise UnsendableRefund(
                f"{where}: Mirakl order line {line_id} is {line.order_line_state}; refunds are only allowed in "
                f"{', '.join(REFUNDABLE_STATES)}"
            )
        done_amount, done_ship, done_qty = already.get(line_id, (Decimal("0"), Decimal("0"), 0))
        excess = refund_excess(line.raw, tax_mode(mirakl_order.raw), amount, quantity, done_amount, done_qty)
        if excess:
            raise UnsendableRefund(f"{where}: {amount} on Mirakl line {line_id} ({line.offer_sku}) {excess}")
        if quantity > line.quantity - done_qty:
            raise UnsendableRefund(
                f"{where}: {quantity} unit(s) on Mirakl line {line_id} ({line.offer_sku}) but only "
                f"{line.quantity - done_qty} of {line.quantity} are left to refund"
            )
        plan.append(RefundLine(order_line_id=line_id, amount=amount, shipping_amount=ship,
                               quantity=quantity if quantity else None, reason_code=reason_code))
    return plan


def _refunded_item(item: Mapping[str, Any]) -> int | None:
    for meta in item.get("meta_data") or []:
        if isinstance(meta, dict) and meta.get("key") == META_REFUNDED_ITEM and str(meta.get("value") or "").isdigit():
            return int(meta["value"])
    return None


def _allocate_shipping(
    shipping: Decimal, amounts: dict[str, list[Any]], lines: Mapping[str, Any],
    already: Mapping[str, tuple[Decimal, Decimal, int]], where: str,
) -> None:
    """Spread a shipping refund over the lines' shipping left, the refund's own lines first."""
    left = shipping
    order = [lid for lid in amounts] + [lid for lid in lines if lid not in amounts]
    available_total = Decimal("0")
    for line_id in order:
        line = lines[line_id]
        if line.order_line_state not in REFUNDABLE_STATES:
            continue
        available = _money(line.shipping_price) - already.get(line_id, (0, Decimal("0"), 0))[1]
        available_total += max(available, Decimal("0"))
        take = min(left, max(available, Decimal("0")))
        if take > 0:
            amounts.setdefault(line_id, [Decimal("0"), Decimal("0"), 0])[1] += take
            left -= take
        if left == 0:
            return
    raise UnsendableRefund(
        f"{where}: {shipping} of shipping (or amount not tied to a line) is more than the shipping left to "
        f"refund: {available_total}"
    )


def request_of(plan: Iterable[RefundLine]) -> dict[str, Any]:
    """The OR28 request as stored (and digested) in the ledger."""
    return {"refunds": [line.to_api() for line in plan]}


def lines_of(request: Mapping[str, Any]) -> list[RefundLine]:
    return [
        RefundLine(order_line_id=str(r["order_line_id"]), amount=Decimal(str(r["amount"])),
                   shipping_amount=Decimal(str(r.get("shipping_amount") or 0)), quantity=r.get("quantity"),
                   reason_code=str(r["reason_code"]))
        for r in request["refunds"]
    ]


def find_landed(request: Mapping[str, Any], mirakl_order: Order, claimed: set[str]) -> list[str] | None:
    """The Mirakl refund ids an earlier OR28 of ``request`` created, or None if it did not land.

    Each requested line must have a refund on Mirakl with the same amount, shipping amount,
    quantity and reason that no other WooCommerce refund has claimed.
    """
    lines = {line.order_line_id: line for line in mirakl_order.order_lines}
    used = set(claimed)
    found: list[str] = []
    for wanted in request["refunds"]:
        line = lines.get(str(wanted["order_line_id"]))
        match = None
        for refund in line.refunds if line else []:
            if (refund.id and refund.id not in used
                    and _money(refund.amount) == _money(wanted["amount"])
                    and _money(refund.shipping_amount) == _money(wanted.get("shipping_amount"))
                    and (refund.quantity or 0) == int(wanted.get("quantity") or 0)
                    and refund.reason_code == wanted["reason_code"]):
                match = refund.id
                break
        if match is None:
            return None
        used.add(match)
        found.append(match)
    return found


def refund_note(refund_id: Any, refund_ids: list[str], marketplace: str) -> str:
    return (f"Refund #{refund_id} sent to Mirakl ({marketplace}): Mirakl refund id(s) "
            f"{', '.join(refund_ids)}.")


# ---- the flow ------------------------------------------------------------------------------------

def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class RefundSync:
    """The refund flow of one marketplace: plain Python over both clients and the ledger."""

    def __init__(
        self,
        marketplace: Marketplace,
        ledger: Ledger,
        *,
        mirakl: Any = None,
        woo: Any = None,
        reasons: ReasonMap | None = None,
        clock: Callable[[], datetime] = _utcnow,
        overlap: timedelta = OVERLAP,
    ):
        self.marketplace = marketplace
        self.mp = marketplace.name
        self.ledger = ledger
        self.mirakl = mirakl
        self.woo = woo
        self.reasons = reasons or ReasonMap.load()
        self.clock = clock
        self.overlap = overlap
        self.writer = Writer(ledger, marketplace.name)
        self._woo_orders: dict[int, dict] = {}
        self._fresh: dict[str, Order] = {}

    def __repr__(self) -> str:
        return f"RefundSync({self.mp!r})"

    def key(self, woo_refund_id: Any) -> str:
        return f"{self.mp}:{KIND_REFUND}:{int(woo_refund_id)}"

    def sync(self) -> dict[str, int]:
        """Send every new WooCommerce refund of this marketplace's orders; retry what is pending."""
        counts: Counter[str] = Counter()
        self._woo_orders, self._fresh = {}, {}
        cursor = self.ledger.get_cursor(FLOW, self.mp, "woo_refunds", default=None) or {}
        since = parse_datetime(cursor.get("since")) or (self.clock() - INITIAL_LOOKBACK)
        pending_before = {int(k): int(v) for k, v in (cursor.get("pending") or {}).items()}
        refunds: dict[int, dict] = {}
        newest = None
        for refund in self.woo.iter_refunds(modified_after=since, overlap=self.overlap):
            stamp = parse_datetime(_gmt(refund.get("date_created_gmt")))
            newest = max(filter(None, (newest, stamp)), default=None)
            refunds[int(refund["id"])] = refund
        pending: dict[int, int] = {}
        for refund_id, order_id in pending_before.items():
            if refund_id not in refunds:
                try:
                    found = self._refund_of_order(order_id, refund_id)
                except ClientError as error:
                    self._isolate(error, {"id": refund_id}, order_id, "reading it back")
                    pending[refund_id] = order_id
                    counts["failed"] += 1
                    continue
                if found is not None:
                    refunds[refund_id] = found

        self._check_uncertain_on_mirakl(refunds)
        for refund_id, refund in sorted(refunds.items()):
            order_id = int(refund.get("parent_id") or 0)
            try:
                outcome = self._one(refund, order_id, counts)
            except ClientError as error:
                outcome = self._isolate(error, refund, order_id, "handling it")
            counts[outcome] += 1
            if outcome in ("retry", "uncertain", "note_pending", "failed"):
                pending[refund_id] = order_id
        next_since = max(since, newest) if newest else since
        self.ledger.set_cursor(FLOW, self.mp, "woo_refunds",
                               {"since": next_since.isoformat(), "pending": {str(k): v for k, v in pending.items()}})
        counts["pending"] = len(pending)
        return dict(counts)

    def _isolate(self, error: ClientError, refund: Mapping[str, Any], order_id: int, doing: str) -> str:
        """One refund's failure (a 404, a persistent 5xx, a 403) is an exception on it; the cycle goes on."""
        if concerns_every_record(error):
            raise error
        self._failed(refund, order_id, f"refund {refund['id']} of WooCommerce order {order_id} failed while "
                                       f"{doing} (tried again every cycle): {error}")
        return "failed"

    def _check_uncertain_on_mirakl(self, refunds: Mapping[int, dict]) -> None:
        """One OR11 for every order with a refund whose outcome is unknown and not settled by the ledger copy."""
        ids: set[str] = set()
        for refund_id, refund in refunds.items():
            action = self.ledger.get_action(self.key(refund_id))
            if action is None or action.state not in ("intent", "uncertain") or not action.target:
                continue
            record = self.ledger.get_order(self.mp, action.target)
            request = self.ledger.get_cursor(FLOW, self.mp, f"or28:{refund_id}", default=None)
            if record is None or request is None:
                continue
            snapshot = Order.from_api((record.detail or {}).get("payload") or {})
            if not find_landed(request, snapshot, self._claimed(record.mirakl_order_id)):
                ids.add(record.mirakl_order_id)
        if not ids:
            return
        try:
            self._fresh = {o.order_id: o for o in self.mirakl.get_orders(sorted(ids))}
        except (BudgetExceeded, ClientError) as error:
            log.info("%s: cannot check %d order(s) with uncertain refunds on Mirakl now (%s)", self.mp, len(ids), error)

    def _refund_of_order(self, order_id: int, refund_id: int) -> dict | None:
        for refund in self.woo.list_order_refunds(order_id):
            if int(refund["id"]) == refund_id:
                return {**refund, "parent_id": refund.get("parent_id") or order_id}
        return None

    def _woo_order(self, order_id: int) -> dict:
        if order_id not in self._woo_orders:
            self._woo_orders[order_id] = self.woo.get_order(order_id)
        return self._woo_orders[order_id]

    def _one(self, refund: dict, order_id: int, counts: Counter[str]) -> str:
        """Handle one WooCommerce refund; returns what happened to it."""
        key = self.key(refund["id"])
        action = self.ledger.get_action(key)
        if action is not None and action.state == "done":
            return self._after(refund, order_id, action.outcome or {}, "already_sent")
        if action is not None and action.state == "failed" and not action.retryable:
            return "refused_earlier"
        record = self.ledger.find_order_by_woo_id(order_id, self.mp) if order_id else None
        if record is None:
            return "not_this_marketplace"
        request = self.ledger.get_cursor(FLOW, self.mp, f"or28:{int(refund['id'])}", default=None)
        if request is None:  # first time: plan it and freeze the body before the intent
            try:
                request = self._plan(refund, order_id, record)
            except UnsendableRefund as problem:
                self.ledger.raise_exception(EXC_UNSENDABLE, str(refund["id"]), {
                    "woo_refund_id": refund["id"], "woo_order_id": order_id, "order_id": record.mirakl_order_id,
                    "amount": refund.get("amount"), "reason": refund.get("reason"), "message": str(problem),
                }, self.mp)
                return "unsendable"
            self.ledger.set_cursor(FLOW, self.mp, f"or28:{int(refund['id'])}", request)

        def outcome(results: list[Any], found: list[str] | None = None) -> dict[str, Any]:
            ids = found if found is not None else [r.refund_id for r in results if r.refund_id]
            return self._outcome(refund, order_id, request, ids, found_on_mirakl=found is not None,
                                 order_refund_id=next((r.order_refund_id for r in results if r.order_refund_id), None))

        write = Write(key=key, kind=KIND_REFUND, target=record.mirakl_order_id, request=request,
                      send=lambda: self.mirakl.refund(lines_of(request)), outcome=outcome)
        action = self.writer.begin(write)
        if action.state == "done":
            return self._after(refund, order_id, action.outcome or {}, "already_sent")
        if action.state == "failed":
            return "refused_earlier"
        if action.state == "uncertain":  # never sent again before Mirakl's refunds say it did not land
            landed = self._landed(request, record, refund)
            if landed is None:
                return "uncertain"  # Mirakl cannot be asked now: ask again next cycle, send nothing
            if landed:
                done = self.writer.settled(write, action, outcome([], found=landed))
                self.ledger.resolve_exception(EXC_FAILED, str(refund["id"]), self.mp)
                return self._after(refund, order_id, done.outcome or {}, "settled_from_mirakl")
        return self._sent(self.writer.send(write, action), refund, order_id, record, request)

    def _sent(self, sent: WriteResult, refund: dict, order_id: int, record: OrderRecord, request: dict) -> str:
        """What one OR28 call told, recorded against its refund."""
        if sent.status == DONE:
            self.ledger.resolve_exception(EXC_UNSENDABLE, str(refund["id"]), self.mp)
            self.ledger.resolve_exception(EXC_FAILED, str(refund["id"]), self.mp)
            return self._after(refund, order_id, sent.outcome or {}, "sent")
        where = f"refund {refund['id']} of WooCommerce order {order_id} (Mirakl order {record.mirakl_order_id})"
        if sent.status == FINAL:
            error = sent.exception
            self.ledger.raise_exception(EXC_REFUSED, str(refund["id"]), {
                "woo_refund_id": refund["id"], "woo_order_id": order_id, "order_id": record.mirakl_order_id,
                "status": getattr(error, "status", None), "code": getattr(error, "code", None), "request": request,
                "message": f"Mirakl refused {where}: {getattr(error, 'message', sent.error)}",
            }, self.mp)
            return "refused"
        if concerns_every_record(sent.exception):
            raise sent.exception
        if sent.persistent:
            self._failed(refund, order_id, f"OR28 for {where} not done after {sent.action.attempts} attempts "
                                           f"(retried every cycle, never twice): {sent.error}")
        return "uncertain" if sent.status == UNCERTAIN else "retry"

    def _failed(self, refund: dict, order_id: int, message: str) -> None:
        self.ledger.raise_exception(EXC_FAILED, str(refund["id"]), {
            "woo_refund_id": refund["id"], "woo_order_id": order_id, "message": message}, self.mp)

    def _plan(self, refund: dict, order_id: int, record: OrderRecord) -> dict[str, Any]:
        mirakl_order = Order.from_api((record.detail or {}).get("payload") or {})
        already = refunded_so_far(mirakl_order, self._sent_for(record.mirakl_order_id))
        plan = plan_refund(refund, self._woo_order(order_id), mirakl_order, self.reasons, already, record)
        return request_of(plan)

    def _sent_for(self, mirakl_order_id: str) -> list[dict]:
        """Refunds this integration has recorded for an order, and those it is about to send."""
        sent: list[dict] = []
        for action in self.ledger.actions_for_target(KIND_REFUND, mirakl_order_id):
            if action.state == "done":
                sent.extend((action.outcome or {}).get("lines") or [])
            elif action.state in ("intent", "uncertain") or (action.state == "failed" and action.retryable):
                woo_refund_id = action.idempotency_key.rsplit(":", 1)[-1]
                frozen = self.ledger.get_cursor(FLOW, self.mp, f"or28:{woo_refund_id}", default=None)
                sent.extend((frozen or {}).get("refunds") or [])
        return sent

    def _claimed(self, mirakl_order_id: str) -> set[str]:
        claimed: set[str] = set()
        for action in self.ledger.actions_for_target(KIND_REFUND, mirakl_order_id):
            if action.state == "done":
                claimed.update(str(i) for i in (action.outcome or {}).get("refund_ids") or [])
        return claimed

    def _landed(self, request: dict, record: OrderRecord, refund: dict) -> list[str] | None | bool:
        """Refund ids when an earlier OR28 landed, False when it provably did not, None if unknown now."""
        claimed = self._claimed(record.mirakl_order_id)
        snapshot = Order.from_api((record.detail or {}).get("payload") or {})
        found = find_landed(request, snapshot, claimed)
        if found:
            return found
        fresh = self._fresh.get(record.mirakl_order_id)  # read once per cycle for all of them
        if fresh is None:
            log.info("%s: refund %s: outcome unknown and Mirakl not read this cycle", self.mp, refund["id"])
            return None
        return find_landed(request, fresh, claimed) or False

    @staticmethod
    def _outcome(refund: dict, order_id: int, request: dict, ids: list[str], found_on_mirakl: bool,
                 order_refund_id: str | None = None) -> dict[str, Any]:
        lines = [{**line, "refund_id": rid} for line, rid in zip(request["refunds"], ids)]
        return {"woo_refund_id": int(refund["id"]), "woo_order_id": order_id, "refund_ids": ids,
                "order_refund_id": order_refund_id, "lines": lines, "found_on_mirakl": found_on_mirakl}

    def _after(self, refund: dict, order_id: int, outcome: Mapping[str, Any], what: str) -> str:
        """``what`` happened to the refund; ``note_pending`` instead while its note is not written."""
        return "note_pending" if self._note(refund, order_id, outcome) == "note_pending" else what

    def _note(self, refund: dict, order_id: int, outcome: Mapping[str, Any]) -> str:
        """The Mirakl refund ids as a WooCommerce order note (once; looked for before re-adding)."""
        key = f"{self.mp}:{KIND_NOTE}:{int(refund['id'])}"
        existing = self.ledger.get_action(key)
        if existing is not None and existing.state == "done":
            return "already_sent"
        text = refund_note(refund["id"], list(outcome.get("refund_ids") or []), self.mp)

        def settle(_: Any) -> dict | None:  # an earlier attempt may have added it: WooCommerce has no key
            return {"found": True} if any(n.get("note") == text for n in self.woo.list_notes(order_id)) else None

        write = Write(key=key, kind=KIND_NOTE, target=str(order_id), request={"note": text},
                      send=lambda: self.woo.add_note(order_id, text),
                      outcome=lambda note: {"note_id": (note or {}).get("id")})
        try:
            sent = self.writer.write(write, settle=settle)
        except ClientError as error:  # the notes could not be read: look again next cycle
            if concerns_every_record(error):
                raise
            return "note_pending"
        if sent.status == FINAL:
            self._failed(refund, order_id, f"the note with the Mirakl refund ids could not be added to WooCommerce "
                                           f"order {order_id}: {sent.error}")
            return "note_failed"
        if sent.status != DONE and concerns_every_record(sent.exception):
            raise sent.exception
        return "sent" if sent.status == DONE else "note_pending"


def _gmt(value: Any) -> str | None:
    """WooCommerce's ``*_gmt`` dates carry no zone: they are UTC."""
    if not value:
        return None
    text = str(value)
    return text if text.endswith("Z") or "+" in text[10:] else text + "Z"
