"""Shipment confirmation: WooCommerce shipments out to Mirakl (OR23 tracking, OR24 ship, OR29 cancel).

One cycle of :class:`ShipmentConfirm`:

1. :meth:`~ShipmentConfirm.confirm_shipments` — WooCommerce orders of this marketplace modified
   since the cursor (minus an overlap window), plus those an earlier cycle had to leave waiting:
   a shipped one (``completed``, or with tracking) gets OR23 when it has a tracking number, then
   OR24 — OR24 even without tracking; a cancelled one gets OR29 when Mirakl allows it. Every call
   is a ledger action (intent before, outcome after); an action whose outcome is unknown is
   settled from what Mirakl shows (ledger copy of the order, else one OR11) before anything is
   sent again.
2. :meth:`~ShipmentConfirm.flag_overdue` — accepted orders past Mirakl's shipping deadline and not
   shipped become exceptions; they resolve once shipped.

The carrier mapping is pure (:func:`tracking_request`); Mirakl's carrier list (SH21, allowed once a
day) is cached in the ledger for a day.
"""
from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable, Mapping

from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.http import ApiError, ClientError, UncertainWriteError
from include.woo_mirakl.clients.mirakl_models import Order, parse_datetime
from include.woo_mirakl.clients.woocommerce import Shipment
from include.woo_mirakl.config import Marketplace, normalise_carrier
from include.woo_mirakl.ledger.repository import ActionConflictError, Ledger, OrderRecord

log = logging.getLogger(__name__)

FLOW = "mirakl_shipment_confirm"
CARRIER_CACHE_FLOW = "mirakl_carriers"  # shared by every flow that needs SH21
CARRIER_CACHE_TTL = timedelta(days=1)
OVERLAP = timedelta(minutes=5)
INITIAL_LOOKBACK = timedelta(days=30)
ORDER_INGEST_FLOW = "mirakl_order_ingest"

KIND_TRACKING = "mirakl.OR23"
KIND_SHIP = "mirakl.OR24"
KIND_CANCEL = "mirakl.OR29"

EXC_UNMAPPED_CARRIER = "carrier_unmapped"
EXC_TRACKING_FAILED = "tracking_failed"
EXC_NO_TRACKING_SOURCE = "no_tracking_source"
EXC_SHIP_FAILED = "shipment_failed"
EXC_OVERDUE = "shipment_overdue"
EXC_CANCEL_REFUSED = "mirakl_cancel_refused"
EXC_SHIPPED_CANCELLED = "shipped_cancelled_order"

SHIPPING = "SHIPPING"
BEFORE_SHIPPING = ("WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT")
AFTER_SHIPPING = ("SHIPPED", "TO_COLLECT", "RECEIVED", "CLOSED")
ENDED = ("CANCELED", "REFUSED")
WOO_STATUSES = ("processing", "completed", "cancelled")
META_ORDER_ID = "_mirakl_order_id"
META_MARKETPLACE = "_mirakl_marketplace"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _iso(value: datetime) -> str:
    return value.astimezone(timezone.utc).isoformat()


# ---- pure mapping --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrackingRequest:
    """The OR23 body for one order, and the carrier name to report when it is not mapped."""

    body: dict[str, str]
    unmapped_carrier: str | None = None
    problem: str | None = None  # why tracking cannot be sent at all (then ``body`` is empty)


def pick_shipment(shipments: Iterable[Shipment]) -> Shipment | None:
    """The parcel to report: the last one with a tracking number (Mirakl keeps one per order)."""
    tracked = [s for s in shipments if (s.tracking_number or "").strip()]
    return tracked[-1] if tracked else None


def tracking_request(
    shipment: Shipment, carrier_map: Mapping[str, str], known_codes: frozenset[str] | None
) -> TrackingRequest:
    """OR23 for a shipment: the mapped Mirakl carrier code, else carrier name and tracking URL.

    ``carrier_map`` is keyed by :func:`normalise_carrier`; ``known_codes`` is SH21's list (None when
    unknown: the map is trusted).
    """
    number = (shipment.tracking_number or "").strip()
    name = (shipment.provider or "").strip()
    code = carrier_map.get(normalise_carrier(name)) if name else None
    if code and (known_codes is None or code in known_codes):
        return TrackingRequest({"carrier_code": code, "tracking_number": number})
    label = name or "(no carrier name)"
    if not shipment.tracking_url:
        return TrackingRequest({}, unmapped_carrier=label,
                               problem=f"carrier {label!r} is not mapped and the shipment has no tracking URL")
    body = {"carrier_name": label, "carrier_url": shipment.tracking_url, "tracking_number": number}
    return TrackingRequest(body, unmapped_carrier=label)


def unmapped_reason(name: str, carrier_map: Mapping[str, str], known_codes: frozenset[str] | None) -> str:
    code = carrier_map.get(normalise_carrier(name))
    if code and known_codes is not None and code not in known_codes:
        return f"carrier {name!r} maps to {code!r}, which is not in Mirakl's carrier list (SH21)"
    return f"carrier {name!r} has no Mirakl carrier code in the carrier map"


def meta_value(order: Mapping[str, Any], key: str) -> Any:
    for meta in order.get("meta_data") or []:
        if isinstance(meta, dict) and meta.get("key") == key:
            return meta.get("value")
    return None


# ---- the flow ------------------------------------------------------------------------------------

class ShipmentConfirm:
    """The shipment flow of one marketplace: plain Python over both clients and the ledger."""

    def __init__(
        self,
        marketplace: Marketplace,
        ledger: Ledger,
        *,
        mirakl: Any = None,
        woo: Any = None,
        clock: Callable[[], datetime] = _utcnow,
        overlap: timedelta = OVERLAP,
    ):
        self.marketplace = marketplace
        self.mp = marketplace.name
        self.ledger = ledger
        self.mirakl = mirakl
        self.woo = woo
        self.clock = clock
        self.overlap = overlap
        # per cycle: orders read from OR11 and tracking read from WooCommerce
        self._fresh: dict[str, Order] = {}
        self._tracking: dict[int, list[Shipment]] = {}

    def __repr__(self) -> str:
        return f"ShipmentConfirm({self.mp!r})"

    def _key(self, kind: str, order_id: str) -> str:
        return f"{self.mp}:{kind}:{order_id}"

    # ---- 1. shipments and cancellations ---------------------------------------------------------
    def confirm_shipments(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        cursor = self.ledger.get_cursor(FLOW, self.mp, "woo_orders", default=None) or {}
        since = parse_datetime(cursor.get("since")) or (self.clock() - INITIAL_LOOKBACK)
        waiting_before = {int(i) for i in cursor.get("waiting") or []}
        candidates: dict[int, dict] = {}
        newest = None
        for order in self.woo.iter_orders(modified_after=since, overlap=self.overlap, status=WOO_STATUSES):
            stamp = parse_datetime(_gmt(order.get("date_modified_gmt")))
            newest = max(filter(None, (newest, stamp)), default=None)
            if meta_value(order, META_MARKETPLACE) == self.mp and meta_value(order, META_ORDER_ID):
                candidates[int(order["id"])] = order
        for woo_id in waiting_before - set(candidates):
            candidates[woo_id] = self.woo.get_order(woo_id)

        work: list[tuple[OrderRecord, dict]] = []
        for woo_id, order in candidates.items():
            record = self.ledger.get_order(self.mp, str(meta_value(order, META_ORDER_ID)))
            if record is None or record.woo_order_id not in (None, woo_id):
                counts["not_in_ledger"] += 1
                continue
            work.append((record, order))
        self._fresh, self._tracking = {}, {}
        if work:
            self._note_tracking_sources()
        unsettled = self._settle_uncertain(work, counts)

        waiting: set[int] = set()
        carriers: tuple[dict[str, str], frozenset[str] | None] | None = None
        for record, order in work:
            status = order.get("status")
            if record.mirakl_order_id in unsettled:
                waiting.add(int(order["id"]))
                continue
            if status == "cancelled":
                if self._cancel(record, counts):
                    waiting.add(int(order["id"]))
                continue
            shipments = self._shipments(order)
            if status != "completed" and pick_shipment(shipments) is None:
                continue  # processing and nothing tracked: not shipped yet
            if carriers is None:
                carriers = (self.marketplace.carrier_map(), self.known_carrier_codes())
            if self._ship(record, order, shipments, carriers, counts):
                waiting.add(int(order["id"]))
        next_since = max(since, newest) if newest else since
        self.ledger.set_cursor(FLOW, self.mp, "woo_orders", {"since": _iso(next_since), "waiting": sorted(waiting)})
        counts["waiting"] = len(waiting)
        return dict(counts)

    def _state(self, record: OrderRecord) -> str | None:
        fresh = self._fresh.get(record.mirakl_order_id)
        return fresh.order_state if fresh is not None else record.mirakl_state

    def _ship(
        self, record: OrderRecord, order: dict, shipments: list[Shipment],
        carriers: tuple[dict[str, str], frozenset[str] | None], counts: Counter[str],
    ) -> bool:
        """OR23 then OR24 for one shipped order; True when it must be looked at again next cycle."""
        order_id = record.mirakl_order_id
        ship_key = self._key(KIND_SHIP, order_id)
        done = self.ledger.get_action(ship_key)
        if done is not None and done.state == "done":
            return False
        state = self._state(record)
        if state in ENDED:
            self.ledger.raise_exception(EXC_SHIPPED_CANCELLED, order_id, {
                "order_id": order_id, "woo_order_id": order["id"], "mirakl_state": state,
                "message": f"WooCommerce shipped order {order['id']} but Mirakl order {order_id} is {state}",
            }, self.mp)
            counts["shipped_but_cancelled"] += 1
            return False
        if state in AFTER_SHIPPING and done is None:
            counts["already_shipped_on_mirakl"] += 1
            return False
        if state in BEFORE_SHIPPING:
            counts["waiting_for_mirakl"] += 1
            return True
        shipment = pick_shipment(shipments)
        if shipment is not None:
            outcome = self._send_tracking(record, order, shipment, carriers, counts)
            if outcome == "retry":
                return True
        return self._send_ship(record, counts) == "retry"

    def _send_tracking(
        self, record: OrderRecord, order: dict, shipment: Shipment,
        carriers: tuple[dict[str, str], frozenset[str] | None], counts: Counter[str],
    ) -> str:
        order_id = record.mirakl_order_id
        carrier_map, known = carriers
        request = tracking_request(shipment, carrier_map, known)
        if request.unmapped_carrier:
            self.ledger.raise_exception(EXC_UNMAPPED_CARRIER, normalise_carrier(request.unmapped_carrier) or "-", {
                "carrier": request.unmapped_carrier,
                "message": unmapped_reason(request.unmapped_carrier, carrier_map, known)
                + f"; add it to include/config/{self.marketplace.carrier_map_file}",
                "order_id": order_id, "woo_order_id": order["id"],
                "sent_as": "carrier name and tracking URL" if request.body else f"no tracking: {request.problem}",
            }, self.mp, severity="warning")
            counts["unmapped_carrier"] += 1
        if not request.body:
            counts["tracking_not_sent"] += 1
            return "skipped"
        key = self._key(KIND_TRACKING, order_id)
        try:
            action = self.ledger.begin_action(key, KIND_TRACKING, order_id, {"order_id": order_id, **request.body},
                                              self.mp)
        except ActionConflictError:
            # the tracking changed in WooCommerce after an earlier OR23: OR23 is a plain overwrite
            counts["tracking_changed"] += 1
            return "skipped"
        if action.state == "done":
            return "done"
        if action.state == "failed":
            return "skipped"
        return self._call(key, order_id, KIND_TRACKING, EXC_TRACKING_FAILED, counts,
                          lambda: self.mirakl.update_tracking(order_id, **request.body))

    def _send_ship(self, record: OrderRecord, counts: Counter[str]) -> str:
        order_id = record.mirakl_order_id
        key = self._key(KIND_SHIP, order_id)
        action = self.ledger.begin_action(key, KIND_SHIP, order_id, {"order_id": order_id}, self.mp)
        if action.state in ("done", "failed"):
            return action.state
        outcome = self._call(key, order_id, KIND_SHIP, EXC_SHIP_FAILED, counts,
                             lambda: self.mirakl.ship_order(order_id))
        if outcome == "done":
            self.ledger.resolve_exception(EXC_OVERDUE, order_id, self.mp)
        return outcome

    def _cancel(self, record: OrderRecord, counts: Counter[str]) -> bool:
        """OR29 for an order cancelled in WooCommerce; True when it must be looked at again."""
        order_id = record.mirakl_order_id
        state = self._state(record)
        if record.woo_status == "cancelled" or state in ENDED:
            return False  # cancelled because Mirakl cancelled it (the orders flow did that)
        key = self._key(KIND_CANCEL, order_id)
        existing = self.ledger.get_action(key)
        if existing is not None and existing.state in ("done", "failed"):
            return False
        fresh = self._fresh.get(order_id)
        payload = fresh.raw if fresh is not None else ((record.detail or {}).get("payload") or {})
        if state in AFTER_SHIPPING or not payload.get("can_cancel"):
            self.ledger.raise_exception(EXC_CANCEL_REFUSED, order_id, {
                "order_id": order_id, "woo_order_id": record.woo_order_id, "mirakl_state": state,
                "message": f"WooCommerce order {record.woo_order_id} was cancelled, but Mirakl does not allow "
                           f"cancelling order {order_id} in state {state}: cancel or refund it in Mirakl",
            }, self.mp)
            counts["cancel_refused"] += 1
            return state in BEFORE_SHIPPING  # it may become cancellable once it reaches SHIPPING
        self.ledger.begin_action(key, KIND_CANCEL, order_id, {"order_id": order_id}, self.mp)
        outcome = self._call(key, order_id, KIND_CANCEL, EXC_CANCEL_REFUSED, counts,
                             lambda: self.mirakl.cancel_order(order_id))
        if outcome == "done":
            self.ledger.resolve_exception(EXC_CANCEL_REFUSED, order_id, self.mp)
        return outcome == "retry"

    def _call(self, key: str, order_id: str, kind: str, exception_kind: str, counts: Counter[str],
              send: Callable[[], None]) -> str:
        """Send one write and record its outcome: ``done``, ``failed`` (for good) or ``retry``."""
        label = kind.split(".")[-1]
        try:
            send()
        except UncertainWriteError as error:
            self.ledger.mark_action_uncertain(key, str(error))
            counts[f"{label}_uncertain"] += 1
            return "retry"
        except ApiError as error:
            retryable = error.status >= 500 or error.status == 429
            self.ledger.fail_action(key, str(error), retryable=retryable)
            if retryable:
                counts[f"{label}_retry"] += 1
                return "retry"
            self.ledger.raise_exception(exception_kind, order_id, {
                "order_id": order_id, "call": label, "status": error.status, "code": error.code,
                "message": f"Mirakl refused {label} for order {order_id}: {error.message}",
            }, self.mp)
            counts[f"{label}_refused"] += 1
            return "failed"
        except (ClientError, BudgetExceeded) as error:
            self.ledger.fail_action(key, str(error), retryable=True)
            counts[f"{label}_retry"] += 1
            return "retry"
        self.ledger.complete_action(key, {"order_id": order_id})
        counts[f"{label}_sent"] += 1
        return "done"

    # ---- uncertain outcomes -----------------------------------------------------------------------
    def _settle_uncertain(self, work: list[tuple[OrderRecord, dict]], counts: Counter[str]) -> set[str]:
        """Complete the actions whose earlier attempt landed, judged from what Mirakl shows.

        The ledger's copy of the order (refreshed every minute by the orders flow) settles most;
        the others cost one OR11 for all of them, whose answers are kept for this cycle. Returns
        the orders still unsettled (OR11 not available now): nothing is sent for them this cycle.
        """
        pending: list[tuple[str, OrderRecord, dict]] = []
        for record, order in work:
            for kind in (KIND_TRACKING, KIND_SHIP, KIND_CANCEL):
                action = self.ledger.get_action(self._key(kind, record.mirakl_order_id))
                if action is None or action.state not in ("intent", "uncertain"):
                    continue
                snapshot = Order.from_api((record.detail or {}).get("payload") or {})
                if self._landed(kind, snapshot, order):
                    self._settle(kind, record.mirakl_order_id, counts, "settled_from_ledger")
                else:
                    pending.append((kind, record, order))
        if not pending:
            return set()
        ids = {record.mirakl_order_id for _, record, _ in pending}
        try:
            self._fresh.update({o.order_id: o for o in self.mirakl.get_orders(sorted(ids))})
        except (BudgetExceeded, ClientError) as error:
            log.info("%s: cannot check %d uncertain action(s) on Mirakl now (%s)", self.mp, len(pending), error)
            counts["uncertain_deferred"] += len(pending)
            return ids
        for kind, record, order in pending:
            found = self._fresh.get(record.mirakl_order_id)
            if found is not None and self._landed(kind, found, order):
                self._settle(kind, record.mirakl_order_id, counts, "settled_from_mirakl")
        return set()

    def _settle(self, kind: str, order_id: str, counts: Counter[str], how: str) -> None:
        self.ledger.complete_action(self._key(kind, order_id), {"order_id": order_id, "found_on_mirakl": True})
        if kind == KIND_SHIP:
            self.ledger.resolve_exception(EXC_OVERDUE, order_id, self.mp)
        counts[how] += 1

    def _landed(self, kind: str, mirakl_order: Order, woo_order: dict) -> bool:
        state = mirakl_order.order_state
        if kind == KIND_SHIP:
            return state in AFTER_SHIPPING
        if kind == KIND_CANCEL:
            return state == "CANCELED"
        if not mirakl_order.shipping_tracking:
            return False
        shipment = pick_shipment(self._shipments(woo_order))
        return shipment is not None and mirakl_order.shipping_tracking == (shipment.tracking_number or "").strip()

    def _note_tracking_sources(self) -> None:
        """A store with no tracking plugin or feature is said once (one open exception), not per order."""
        try:
            sources = self.woo.tracking_sources()
        except ClientError as error:
            log.info("%s: tracking sources unknown this cycle (%s)", self.mp, error)
            return
        if sources:
            self.ledger.resolve_exception(EXC_NO_TRACKING_SOURCE, "woocommerce", self.mp)
            return
        known = self.ledger.get_exception(EXC_NO_TRACKING_SOURCE, "woocommerce", self.mp)
        if known is None or known.status == "resolved":
            self.ledger.raise_exception(EXC_NO_TRACKING_SOURCE, "woocommerce", {
                "problem": "WooCommerce has no Shipment Tracking extension, no Advanced Shipment Tracking plugin "
                           "and no core fulfillments: shipments are confirmed to Mirakl (OR24) without tracking "
                           "numbers (OR23). Install one of them to send tracking.",
            }, self.mp, severity="warning")

    def _shipments(self, woo_order: dict) -> list[Shipment]:
        woo_id = int(woo_order["id"])
        if woo_id not in self._tracking:
            self._tracking[woo_id] = self.woo.shipments(woo_order)
        return self._tracking[woo_id]

    def known_carrier_codes(self) -> frozenset[str] | None:
        """Mirakl's carrier codes (SH21), from the ledger cache when younger than a day."""
        cached = self.ledger.get_cursor(CARRIER_CACHE_FLOW, self.mp, "sh21", default=None) or {}
        fetched = parse_datetime(cached.get("fetched_at"))
        if fetched and self.clock() - fetched < CARRIER_CACHE_TTL:
            return frozenset(cached.get("codes") or [])
        try:
            codes = sorted(c.code for c in self.mirakl.carriers())
        except (BudgetExceeded, ClientError) as error:
            log.info("%s: SH21 not available now (%s); using the cached carrier list", self.mp, error)
            return frozenset(cached["codes"]) if cached.get("codes") else None
        self.ledger.set_cursor(CARRIER_CACHE_FLOW, self.mp, "sh21", {"fetched_at": _iso(self.clock()), "codes": codes})
        return frozenset(codes)

    # ---- 2. overdue -------------------------------------------------------------------------------
    def flag_overdue(self) -> dict[str, int]:
        """An exception per accepted order past its shipping deadline and not shipped."""
        counts: Counter[str] = Counter()
        now = self._mirakl_now()
        late: list[str] = []
        for record in self.ledger.orders_in_states(self.mp, [SHIPPING, "WAITING_DEBIT_PAYMENT"]):
            if record.shipping_deadline is None or record.shipping_deadline > now:
                continue
            shipped = self.ledger.get_action(self._key(KIND_SHIP, record.mirakl_order_id))
            if shipped is not None and shipped.state == "done":
                continue
            late.append(record.mirakl_order_id)
            self.ledger.raise_exception(EXC_OVERDUE, record.mirakl_order_id, {
                "order_id": record.mirakl_order_id, "commercial_id": record.commercial_id,
                "woo_order_id": record.woo_order_id, "shipping_deadline": _iso(record.shipping_deadline),
                "hours_late": round((now - record.shipping_deadline).total_seconds() / 3600, 1),
                "message": f"order {record.mirakl_order_id} should have shipped by "
                           f"{_iso(record.shipping_deadline)} and has not",
            }, self.mp, severity="critical")
            counts["overdue"] += 1
        counts["resolved"] = len(self.ledger.resolve_missing(EXC_OVERDUE, self.mp, late))
        return dict(counts)

    def _mirakl_now(self) -> datetime:
        """Our clock, or Mirakl's when it is ahead (the newest update the orders flow saw)."""
        cursor = self.ledger.get_cursor(ORDER_INGEST_FLOW, self.mp, "or11", default=None) or {}
        return max(filter(None, (self.clock(), parse_datetime(cursor.get("newest_seen")))))


def _gmt(value: Any) -> str | None:
    """WooCommerce's ``*_gmt`` dates carry no zone: they are UTC."""
    if not value:
        return None
    text = str(value)
    return text if text.endswith("Z") or "+" in text[10:] else text + "Z"
