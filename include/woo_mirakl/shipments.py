"""Shipment confirmation: WooCommerce shipments out to Mirakl (OR23 tracking, OR24 ship, OR29 cancel).

One cycle of :class:`ShipmentConfirm`:

1. :meth:`~ShipmentConfirm.confirm_shipments` — WooCommerce orders of this marketplace modified
   since the cursor (minus an overlap window), plus those an earlier cycle had to leave waiting:
   a shipped one (``completed``, or with tracking) gets OR23 when it has a tracking number, then
   OR24 — OR24 even without tracking, and OR23 again when the tracking is corrected later; a
   cancelled one gets OR29 when Mirakl allows it. Every call goes through the shared write path
   (:mod:`include.woo_mirakl.writes`); an action whose outcome is unknown is settled from what
   Mirakl shows (ledger copy of the order, else one OR11) before anything is sent again. One
   order's failure is an exception on it; the others and the cursor go on.
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
from include.woo_mirakl.clients.http import ClientError
from include.woo_mirakl.clients.mirakl_models import Order, parse_datetime
from include.woo_mirakl.clients.woocommerce import Shipment
from include.woo_mirakl.config import Marketplace, normalise_carrier
from include.woo_mirakl.ledger.repository import Ledger, OrderRecord
from include.woo_mirakl.writes import DONE, FINAL, Write, Writer, concerns_every_record

log = logging.getLogger(__name__)

FLOW = "mirakl_shipment_confirm"
CARRIER_CACHE_FLOW = "mirakl_carriers"  # shared by every flow that needs SH21
CARRIER_CACHE_TTL = timedelta(days=1)
OVERLAP = timedelta(minutes=5)
UNMAPPED_ORDERS_KEPT = 200  # orders remembered per unmapped carrier, so a re-read one is not counted twice
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
        self.writer = Writer(ledger, marketplace.name)
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
        waiting: set[int] = set()
        for woo_id in waiting_before - set(candidates):
            try:
                candidates[woo_id] = self.woo.get_order(woo_id)
            except ClientError as error:
                self._isolate(error, woo_id, None, "reading the WooCommerce order", counts)
                waiting.add(woo_id)

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
        unsettled = self._read_uncertain(work, counts)

        carriers: list[tuple[dict[str, str], frozenset[str] | None]] = []  # read once, when first needed
        for record, order in work:
            if record.mirakl_order_id in unsettled:
                waiting.add(int(order["id"]))
                continue
            try:
                again = self._one(record, order, carriers, counts)
            except ClientError as error:
                again = self._isolate(error, int(order["id"]), record.mirakl_order_id, "handling it", counts)
            if again:
                waiting.add(int(order["id"]))
        next_since = max(since, newest) if newest else since
        self.ledger.set_cursor(FLOW, self.mp, "woo_orders", {"since": _iso(next_since), "waiting": sorted(waiting)})
        counts["waiting"] = len(waiting)
        return dict(counts)

    def _one(self, record: OrderRecord, order: dict, carriers: list, counts: Counter[str]) -> bool:
        """One WooCommerce order: cancel or ship it on Mirakl; True when it must be looked at again."""
        status = order.get("status")
        if status == "cancelled":
            return self._cancel(record, counts)
        shipments = self._shipments(order)
        if status != "completed" and pick_shipment(shipments) is None:
            return False  # processing and nothing tracked: not shipped yet
        if not carriers:
            carriers.append((self.marketplace.carrier_map(), self.known_carrier_codes()))
        return self._ship(record, order, shipments, carriers[0], counts)

    def _isolate(self, error: ClientError, woo_id: int, order_id: str | None, doing: str, counts: Counter[str]) -> bool:
        """One order's failure (a 404, a persistent 5xx, a 403) is an exception on it; the cycle goes on."""
        if concerns_every_record(error):
            raise error
        if order_id is None:
            record = self.ledger.find_order_by_woo_id(woo_id, self.mp)
            order_id = record.mirakl_order_id if record is not None else f"woo:{woo_id}"
        self.ledger.raise_exception(EXC_SHIP_FAILED, order_id, {
            "order_id": order_id, "woo_order_id": woo_id,
            "message": f"shipment of WooCommerce order {woo_id} (Mirakl order {order_id}) failed while {doing} "
                       f"(tried again every cycle): {error}",
        }, self.mp)
        counts["failed"] += 1
        return True

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
        state = self._state(record)
        if done is not None and done.state == "done":
            # shipped: only a corrected tracking number is sent (OR23 overwrites; same one: no call)
            shipment = pick_shipment(shipments)
            if shipment is None or state in ENDED:
                return False
            return self._send_tracking(record, order, shipment, carriers, counts) == "retry"
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
            self._note_unmapped_carrier(request, order_id, order, carrier_map, known)
            counts["unmapped_carrier"] += 1
        if not request.body:
            counts["tracking_not_sent"] += 1
            return "skipped"
        body = request.body
        return self._write(Write(
            key=self._key(KIND_TRACKING, order_id), kind=KIND_TRACKING, target=order_id,
            request={"order_id": order_id, **body}, send=lambda: self.mirakl.update_tracking(order_id, **body),
            outcome=lambda _: {"order_id": order_id},
            supersede=True,  # a tracking number corrected in WooCommerce is sent again: OR23 overwrites
            repeatable=True,
        ), record, EXC_TRACKING_FAILED, counts)

    def _note_unmapped_carrier(
        self, request: TrackingRequest, order_id: str, order: dict, carrier_map: Mapping[str, str],
        known: frozenset[str] | None,
    ) -> None:
        """One occurrence per order of the carrier's open exception: an order re-read (the cursor's
        overlap window, a corrected tracking number) with the same unmapped carrier is not counted again."""
        carrier = normalise_carrier(request.unmapped_carrier) or "-"
        existing = self.ledger.get_exception(EXC_UNMAPPED_CARRIER, carrier, self.mp)
        counted = (existing.detail or {}).get("order_ids", []) if existing and existing.status != "resolved" else []
        if order_id in counted:
            return
        self.ledger.raise_exception(EXC_UNMAPPED_CARRIER, carrier, {
            "carrier": request.unmapped_carrier,
            "message": unmapped_reason(request.unmapped_carrier, carrier_map, known)
            + f"; add it to include/config/{self.marketplace.carrier_map_file}",
            "order_id": order_id, "woo_order_id": order["id"],
            "sent_as": "carrier name and tracking URL" if request.body else f"no tracking: {request.problem}",
            # the latest ones only: a re-read (overlap window, an order left waiting) is a recent one
            "order_ids": [*counted, order_id][-UNMAPPED_ORDERS_KEPT:],
        }, self.mp, severity="warning")

    def _send_ship(self, record: OrderRecord, counts: Counter[str]) -> str:
        order_id = record.mirakl_order_id
        outcome = self._write(Write(
            key=self._key(KIND_SHIP, order_id), kind=KIND_SHIP, target=order_id, request={"order_id": order_id},
            send=lambda: self.mirakl.ship_order(order_id), outcome=lambda _: {"order_id": order_id},
        ), record, EXC_SHIP_FAILED, counts, _shipped)
        if outcome == "done":
            self.ledger.resolve_exception(EXC_OVERDUE, order_id, self.mp)
        return outcome

    def _cancel(self, record: OrderRecord, counts: Counter[str]) -> bool:
        """OR29 for an order cancelled in WooCommerce; True when it must be looked at again."""
        order_id = record.mirakl_order_id
        state = self._state(record)
        existing = self.ledger.get_action(self._key(KIND_CANCEL, order_id))
        if existing is not None and existing.state in ("done", "failed") and not existing.retryable:
            return False
        unfinished = existing is not None and existing.state in ("intent", "uncertain")
        if not unfinished:  # an unfinished OR29 is settled from Mirakl's state first, whatever it is now
            if record.woo_status == "cancelled" or state in ENDED:
                return False  # cancelled because Mirakl cancelled it (the orders flow did that)
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
        outcome = self._write(Write(
            key=self._key(KIND_CANCEL, order_id), kind=KIND_CANCEL, target=order_id, request={"order_id": order_id},
            send=lambda: self.mirakl.cancel_order(order_id), outcome=lambda _: {"order_id": order_id},
        ), record, EXC_CANCEL_REFUSED, counts, _cancelled)
        return outcome == "retry"

    def _write(self, write: Write, record: OrderRecord, exception_kind: str, counts: Counter[str],
               landed: Callable[[Order], bool] | None = None) -> str:
        """One write on the shared path: ``done``, ``failed`` (for good) or ``retry`` (next cycle).

        An uncertain earlier attempt of a write that is not repeatable is settled from what Mirakl
        shows (``landed``: the ledger's copy of the order, else this cycle's OR11) and sent again
        only when it did not land.
        """
        order_id, label = record.mirakl_order_id, write.kind.split(".")[-1]

        def settle(_: Any) -> dict[str, Any] | None:
            shown = [self._snapshot(record), self._fresh.get(order_id)]
            return {"order_id": order_id, "found_on_mirakl": True} if any(
                o is not None and landed(o) for o in shown) else None

        sent = self.writer.write(write, settle=settle if landed is not None else None)
        if sent.status == DONE:
            if sent.sent or sent.recovered:
                counts[f"{label}_{'sent' if sent.sent else 'settled'}"] += 1
                self.ledger.resolve_exception(exception_kind, order_id, self.mp)
            return "done"
        if sent.status == FINAL:
            if sent.sent:
                error = sent.exception
                self.ledger.raise_exception(exception_kind, order_id, {
                    "order_id": order_id, "call": label, "status": getattr(error, "status", None),
                    "code": getattr(error, "code", None),
                    "message": f"Mirakl refused {label} for order {order_id}: {getattr(error, 'message', sent.error)}",
                }, self.mp)
                counts[f"{label}_refused"] += 1
            return "failed"
        if concerns_every_record(sent.exception):
            raise sent.exception
        counts[f"{label}_{sent.status}"] += 1
        if sent.persistent:
            self.ledger.raise_exception(exception_kind, order_id, {
                "order_id": order_id, "call": label,
                "message": f"{label} for order {order_id} not done after {sent.action.attempts} attempts "
                           f"(retried every cycle, never twice): {sent.error}",
            }, self.mp)
        return "retry"

    @staticmethod
    def _snapshot(record: OrderRecord) -> Order:
        """The ledger's copy of the Mirakl order (refreshed every minute by the orders flow)."""
        return Order.from_api((record.detail or {}).get("payload") or {})

    # ---- uncertain outcomes -----------------------------------------------------------------------
    def _read_uncertain(self, work: list[tuple[OrderRecord, dict]], counts: Counter[str]) -> set[str]:
        """One OR11 for every order with an unfinished OR24/OR29 its ledger copy does not show as landed.

        Its answers settle those actions when they are sent (:meth:`_write`); OR23 is simply sent
        again (it overwrites). Returns the orders Mirakl could not be asked about now: nothing is
        sent for them this cycle.
        """
        ids: set[str] = set()
        for record, _ in work:
            for kind, landed in ((KIND_SHIP, _shipped), (KIND_CANCEL, _cancelled)):
                action = self.ledger.get_action(self._key(kind, record.mirakl_order_id))
                if action is not None and action.state in ("intent", "uncertain") and not landed(self._snapshot(record)):
                    ids.add(record.mirakl_order_id)
        if not ids:
            return set()
        try:
            self._fresh.update({o.order_id: o for o in self.mirakl.get_orders(sorted(ids))})
        except (BudgetExceeded, ClientError) as error:
            log.info("%s: cannot check %d order(s) with uncertain actions on Mirakl now (%s)", self.mp, len(ids), error)
            counts["uncertain_deferred"] += len(ids)
            return ids
        return set()

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


def _shipped(mirakl_order: Order) -> bool:
    return mirakl_order.order_state in AFTER_SHIPPING


def _cancelled(mirakl_order: Order) -> bool:
    return mirakl_order.order_state == "CANCELED"


def _gmt(value: Any) -> str | None:
    """WooCommerce's ``*_gmt`` dates carry no zone: they are UTC."""
    if not value:
        return None
    text = str(value)
    return text if text.endswith("Z") or "+" in text[10:] else text + "Z"
