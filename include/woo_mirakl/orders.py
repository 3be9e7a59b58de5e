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
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Sequence

from include.woo_mirakl import human_review
from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.http import ApiError, ClientError
from include.woo_mirakl.clients.mirakl_models import Order, parse_datetime
from include.woo_mirakl.order_log import decision_line
from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.ledger.repository import ActionRecord, Ledger, OrderRecord
from include.woo_mirakl.order_mapping import (
    ACCEPTED,
    META_CANCEL_REASON,
    META_MARKETPLACE,
    META_ORDER_ID,
    VANISHED,
    InvalidOrderError,
    SHORT_STOCK,
    LineDecision,
    StockInfo,
    acceptance_problems,
    completion_update,
    decide_lines,
    meta_value,
    order_decision,
    payload_problems,
    pool_of,
    reservation_order,
    shipping_line_id,
    vanished_lines,
)
from include.woo_mirakl.writes import DONE, FINAL, RETRY, UNCERTAIN, Write, WriteResult, Writer
from include.woo_mirakl.order_money import expected_total, totals_problem
from include.woo_mirakl.unseen_demand import record_listing

log = logging.getLogger(__name__)

FLOW = "mirakl_order_ingest"
WAITING = "WAITING_ACCEPTANCE"
WAITING_DEBIT = "WAITING_DEBIT_PAYMENT"
SHIPPING = "SHIPPING"
ENDED = ("CANCELED", "REFUSED")
# Accepted on Mirakl and not shipped yet: such an order needs a WooCommerce order to be fulfilled.
TO_FULFIL = (WAITING_DEBIT, SHIPPING)
# Accepted and already beyond fulfilment: too late to create one, a person must look.
PAST_FULFILMENT = ("SHIPPED", "TO_COLLECT", "RECEIVED", "CLOSED", "INCIDENT_OPEN", "REFUNDED")
OVERLAP = timedelta(minutes=2)
INITIAL_LOOKBACK = timedelta(days=30)
# Mirakl's dates may run a little ahead of ours; beyond this a date is wrong, not early.
CLOCK_TOLERANCE = timedelta(minutes=5)
PARTIAL_DISABLED = "ORDER_PARTIAL_ACCEPTANCE_DISABLED"
# WooCommerce's clock may differ from ours: look for a lost create this far before its intent.
RECOVERY_MARGIN = timedelta(minutes=15)
# Calls in flight at once: OR21 (no published maximum; one task slot of the mirakl_api pool sends
# them) and WooCommerce creates (a small store's few PHP workers: 4 keeps a cycle of 100 new
# orders within 15 s at the recorded 0.32 s a create, see bench/orders.py).
OR21_WORKERS = 8
WOO_WORKERS = 4
# Reservations go out as POST /orders/batch, up to this many orders a request (the store creates a
# batch's orders one after the other, so the batches still go out WOO_WORKERS at once).
WOO_BATCH = 25
# A run scheduled on the minute starts a little earlier or later in it than the previous one did:
# the listing waits this long for OR11's once-a-minute slot rather than skip a whole minute.
OR11_SLOT_WAIT = 10.0

# The order export (changes = "export"): a differential OR13 at most every 5 minutes, a window
# starting this much before the previous one ended (Mirakl's clock and ours may differ).
EXPORT_EVERY = timedelta(minutes=5)
EXPORT_SKEW = timedelta(minutes=2)
EXPORT_STALE = timedelta(hours=1)  # an export still pending this long is given up and asked again

EXC_INVALID = "order_invalid"
EXC_EXPORT = "order_export_failed"
EXC_DEADLINE = "acceptance_deadline"
EXC_RESERVE = "order_reservation_failed"
EXC_ACCEPT = "order_acceptance_failed"
EXC_COMPLETE = "order_completion_failed"
EXC_RELEASE = "order_release_failed"
EXC_FUTURE = "order_date_in_future"
EXC_OUTSIDE = "order_accepted_outside"
EXC_NO_WOO_ORDER = "order_without_woo_order"
EXC_PARTIAL = "order_partial_acceptance_disabled"
EXC_TOTALS = "order_totals_mismatch"
EXC_VANISHED = "order_product_vanished"
EXC_LOOKUP = "order_sku_lookup_failed"  # its SKUs' look-up failed: left undecided for the next cycle

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
        or21_workers: int = OR21_WORKERS,
        woo_workers: int = WOO_WORKERS,
        woo_batch: int = WOO_BATCH,
    ):
        self.marketplace = marketplace
        self.mp = marketplace.name
        self.ledger = ledger
        self.mirakl = mirakl
        self.woo = woo
        self.clock = clock
        self.overlap = overlap
        self.initial_lookback = initial_lookback
        self.or21_workers = or21_workers
        self.woo_workers = woo_workers
        self.woo_batch = woo_batch
        self._batched: dict[str, dict | Exception] = {}  # what a batch said of each order, by Mirakl order id
        self.writer = Writer(ledger, marketplace.name)
        self._created: dict[str, dict] = {}  # WooCommerce's answers to this run's creates, by Mirakl order id

    def __repr__(self) -> str:
        return f"OrderIngest({self.mp!r})"

    # ---- keys -------------------------------------------------------------------------------
    def _key(self, kind: str, order_id: str) -> str:
        return f"{self.mp}:{kind}:{order_id}"

    # ---- 1. OR11 ----------------------------------------------------------------------------
    def fetch_changes(self) -> dict[str, int]:
        """Read changed orders (OR11) into the ledger; a used-up call budget skips politely.

        One order's bad payload is quarantined on its own (``order_invalid``); the rest of the
        listing and the cursor go on. Dates later than our clock (plus a tolerance) move neither
        the cursor nor "Mirakl's clock".
        """
        if self.marketplace.order_listing.changes == "export":
            return self._fetch_waiting_and_export()
        result = StepResult()
        started = self.clock()
        cursor = self.ledger.get_cursor(FLOW, self.mp, "or11", default=None) or {}
        since = parse_datetime(cursor.get("since")) or (self.clock() - self.initial_lookback)
        resume_from = parse_datetime(cursor.get("resume_from"))
        skip = int(cursor.get("resume_skip") or 0) if resume_from else 0
        orders: list[Order] = []
        complete = True
        try:
            for order in self.mirakl.iter_orders(start_update_date=since, start_date=resume_from, offset=skip):
                orders.append(order)
        except BudgetExceeded as exceeded:
            complete = False
            log.info("%s: OR11 budget used up after %d orders (%s)", self.mp, len(orders), exceeded)
            if not orders:
                result.add("skipped")
                return result.as_dict()
        self._record_all(orders, result)
        result.add("read", len(orders))
        latest_plausible = self._mirakl_now() + CLOCK_TOLERANCE
        updates = [self._plausible_update(o, latest_plausible) for o in orders]
        self.ledger.resolve_exceptions(EXC_FUTURE, {str(o.order_id) for o, d in zip(orders, updates) if d}, self.mp)
        newest = max((d for d in updates if d), default=None)
        # The first listing of a cycle sets the low-water mark: any update after that call is
        # later than everything it returned, so restarting from it misses nothing.
        low_water = parse_datetime(cursor.get("low_water")) if resume_from else newest
        # Mirakl's clock is at least at the newest (plausible) update it reported (see guard_deadlines).
        seen = max(filter(None, (newest, parse_datetime(cursor.get("newest_seen")))), default=None)
        if seen is not None:
            seen = min(seen, latest_plausible)
        if complete:
            next_since = max(since, low_water - self.overlap) if low_water else since
            state = {"since": _iso(next_since)}
        else:
            # Resume on (creation date, position): a full page created in one second moves on too.
            resume = orders[-1].created_date or resume_from
            same_second = sum(1 for o in orders if o.created_date == resume)
            skip = same_second + (skip if resume == resume_from else 0)
            state = {"since": _iso(since), "resume_from": _iso(resume), "resume_skip": skip,
                     "low_water": _iso(low_water)}
            result.add("partial")
        self.ledger.set_cursor(FLOW, self.mp, "or11", {**state, "newest_seen": _iso(seen)})
        if complete:  # the inventory push trusts the ledger's demand only after a fresh complete listing
            record_listing(self.ledger, self.mp, started)
        return result.as_dict()

    def _fetch_waiting_and_export(self) -> dict[str, int]:
        """OR11 for orders awaiting acceptance only, then one step of the order export.

        Every order read here is decided and answered (OR21) in this cycle, so it leaves
        ``WAITING_ACCEPTANCE`` and the next listing, which starts at the newest creation date read
        (less an overlap), carries new orders. A listing that found nothing new (a full page of
        orders still waiting on a person) resumes on (creation date, position) instead, so it
        moves on. The export brings every other change, and any order the listing missed.
        """
        result = StepResult()
        started = self.clock()
        cursor = self.ledger.get_cursor(FLOW, self.mp, "or11_waiting", default=None) or {}
        since = parse_datetime(cursor.get("since")) or (self.clock() - self.initial_lookback)
        skip = int(cursor.get("skip") or 0)
        orders: list[Order] = []
        complete = True
        try:
            for order in self.mirakl.iter_orders(states=[WAITING], start_date=since, offset=skip):
                orders.append(order)
        except BudgetExceeded as exceeded:
            complete = False
            log.info("%s: OR11 budget used up after %d waiting orders (%s)", self.mp, len(orders), exceeded)
            if not orders:
                result.add("skipped")
        if orders:
            self._record_all(orders, result)
            result.add("read", len(orders))
            newest = max((o.created_date for o in orders if o.created_date), default=None)
            if newest is None:
                state = {"since": _iso(since), "skip": skip + len(orders)}
            elif complete or result.counts.get("new"):
                state = {"since": _iso(max(since, newest - self.overlap)), "skip": 0}
            else:
                same = sum(1 for o in orders if o.created_date == newest)
                state = {"since": _iso(newest), "skip": same + (skip if newest == since else 0)}
                result.add("partial")
            self.ledger.set_cursor(FLOW, self.mp, "or11_waiting", state)
        if complete:  # the inventory push trusts the ledger's demand only after a fresh complete listing
            record_listing(self.ledger, self.mp, started)
        self._export_step(result)
        return result.as_dict()

    def _export_step(self, result: StepResult) -> None:
        """Collect the pending order export if it is ready, then ask for the next one when due.

        Never waits: an export asked in one cycle is read in a later one. Its orders only ever
        move a record forward (an export is a snapshot, older than what OR11 may have just said).
        """
        state = self.ledger.get_cursor(FLOW, self.mp, "or13", default=None) or {}
        now = self._mirakl_now()
        try:
            if state.get("tracking_id"):
                state = self._collect_export(state, now, result)
            since = parse_datetime(state.get("since")) or (self.clock() - self.initial_lookback)
            if not state.get("tracking_id") and now - since >= EXPORT_EVERY:
                tracking_id = self.mirakl.request_order_export(start_update_date=since - EXPORT_SKEW,
                                                               end_update_date=now)
                state = {"since": _iso(since), "until": _iso(now), "tracking_id": tracking_id,
                         "requested_at": _iso(now)}
                result.add("export_requested")
        except BudgetExceeded as exceeded:
            log.info("%s: order export waits for its call budget (%s)", self.mp, exceeded)
        except (ApiError, ClientError) as error:
            log.warning("%s: order export: %s", self.mp, error)
            self.ledger.raise_exception(EXC_EXPORT, self.mp, {
                "error": str(error), "since": state.get("since"),
                "effect": "state changes of known orders wait for the next export; nothing is lost"}, self.mp)
            result.add("export_failed")
        self.ledger.set_cursor(FLOW, self.mp, "or13", state)

    def _collect_export(self, state: dict, now: datetime, result: StepResult) -> dict:
        status = self.mirakl.order_export_status(state["tracking_id"])
        if status.failed or (not status.completed and now - parse_datetime(state["requested_at"]) > EXPORT_STALE):
            log.warning("%s: order export %s %s; asking again", self.mp, state["tracking_id"], status.status)
            result.add("export_failed")
            return {"since": state["since"]}  # the same window again
        if not status.completed:
            result.add("export_pending")
            return state
        orders = [order for url in status.urls for order in self.mirakl.iter_order_export(url)]
        exported = StepResult()
        self._record_all(orders, exported)
        for key, count in exported.counts.items():
            result.add(f"export_{key}", count)
        result.add("export_read", len(orders))
        self.ledger.resolve_exceptions(EXC_EXPORT, [self.mp], self.mp)
        return {"since": state["until"]}

    def _mirakl_now(self) -> datetime:
        """Mirakl's clock as its last answer showed it (HTTP Date), never behind ours."""
        server = getattr(self.mirakl, "server_time", None)
        return max(self.clock(), server) if isinstance(server, datetime) else self.clock()

    def _plausible_update(self, order: Order, latest: datetime) -> datetime | None:
        """The order's last update, unless it is later than Mirakl's own clock allows: then an exception."""
        updated = order.last_updated_date
        if updated is None or updated <= latest:
            return updated  # the caller resolves an earlier exception, for the whole listing at once
        self.ledger.raise_exception(
            EXC_FUTURE, order.order_id,
            {"order_id": order.order_id, "last_updated_date": order.raw.get("last_updated_date"),
             "our_clock": _iso(self.clock()), "mirakl_clock": _iso(self._mirakl_now()),
             "effect": "ignored for the OR11 cursor and Mirakl's clock; the order itself is read"},
            self.mp,
        )
        return None

    def _quarantine(self, order: Order, problems: list[str]) -> None:
        """Keep the raw payload and say why, so the order is neither lost nor acted on."""
        raw = order.raw if isinstance(order.raw, dict) else {}
        order_id = str(order.order_id)
        try:
            self.ledger.upsert_order(self.mp, order_id, detail={"payload": raw, "problems": problems})
        except Exception as error:  # noqa: BLE001 - even an unstorable payload gets its exception
            problems = [*problems, f"payload not stored: {type(error).__name__}"]
        self.ledger.raise_exception(
            EXC_INVALID, order_id,
            {"order_id": order_id, "commercial_id": raw.get("commercial_id"), "problems": problems},
            self.mp,
        )

    def _record_all(self, orders: list[Order], result: StepResult) -> None:
        """Store the listing's orders and lines in one transaction (new / changed / unchanged each).

        A payload that cannot be read is quarantined alone; should the database refuse the batch
        (one order's value it cannot store), the orders are stored one at a time so only that one is.
        """
        known = self.ledger.get_orders(self.mp, {str(o.order_id) for o in orders})
        prepared: list[tuple[Order, dict[str, Any], list[dict], list[str], bool]] = []
        for order in orders:
            try:
                found = self._prepare(order, known.get(str(order.order_id)))
            except Exception as error:  # noqa: BLE001 - one order's payload must never stop intake
                self._quarantined(order, error, result)
                continue
            if found is None:
                result.add("unchanged")
            else:
                prepared.append((order, *found))
        try:
            self._store(prepared)
        except Exception:  # noqa: BLE001 - find the one the database refuses, store the others
            stored = []
            for entry in prepared:
                try:
                    self._store([entry])
                    stored.append(entry)
                except Exception as error:  # noqa: BLE001
                    self._quarantined(entry[0], error, result)
            prepared = stored
        for order, *_ in prepared:
            result.add("changed" if str(order.order_id) in known else "new")

    def _quarantined(self, order: Order, error: Exception, result: StepResult) -> None:
        log.warning("%s: order %s quarantined: %s", self.mp, order.order_id, error)
        self._quarantine(order, [f"cannot be read: {type(error).__name__}: {error}"])
        result.add("quarantined")

    def _prepare(self, order: Order, existing: OrderRecord | None) -> tuple[dict[str, Any], list[dict], list[str], bool] | None:
        """What to store of one OR11 order (fields, lines, problems, whether it had problems); None if unchanged."""
        if existing is not None and (
            (existing.mirakl_state == order.order_state and existing.last_mirakl_update == order.last_updated_date)
            # an answer older than what is stored (an export's snapshot) never moves an order back
            or (existing.last_mirakl_update and order.last_updated_date
                and order.last_updated_date < existing.last_mirakl_update)
        ):
            return None
        detail = dict(existing.detail or {}) if existing else {}
        problems = acceptance_problems(order) if order.order_state == WAITING else payload_problems(order.raw)
        had_problems = bool(detail.get("problems"))
        detail.update(payload=order.raw, problems=problems)
        fields = dict(
            commercial_id=_text(order.commercial_id),
            mirakl_state=_text(order.order_state),
            currency=(_text(order.currency_iso_code) or "")[:3] or None,
            total_price=_finite(order.total_price),
            acceptance_deadline=order.acceptance_decision_date,
            shipping_deadline=order.shipping_deadline,
            last_mirakl_update=order.last_updated_date,
            detail=detail,
        )
        lines = [
            {
                "mirakl_order_line_id": line.order_line_id,
                "offer_sku": _text(line.offer_sku),
                "quantity": line.quantity,
                "price": _finite(line.price),
                "mirakl_state": _text(line.order_line_state),
            }
            for line in order.order_lines
            if line.order_line_id not in ("", "None")
        ]
        return fields, lines, problems, had_problems

    def _store(self, prepared: list[tuple[Order, dict[str, Any], list[dict], list[str], bool]]) -> None:
        if not prepared:
            return
        self.ledger.upsert_orders(
            self.mp, {str(o.order_id): fields for o, fields, *_ in prepared},
            {str(o.order_id): lines for o, _, lines, *_ in prepared if lines},
        )
        for o, _, _, problems, _ in prepared:  # rare, and each carries its own (latest) detail
            if problems:
                self.ledger.raise_exception(
                    EXC_INVALID, o.order_id,
                    {"order_id": o.order_id, "commercial_id": o.commercial_id, "problems": problems}, self.mp)
        self.ledger.resolve_exceptions(
            EXC_INVALID, [str(o.order_id) for o, _, _, problems, had in prepared if had and not problems], self.mp)

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
        to_reserve.extend(self._accepted_without_woo_order(result))
        decided_now: dict[str, tuple[Order, list[LineDecision]]] = {}
        if undecided:
            skus = {line.offer_sku for r in undecided + to_reserve for line in r.lines if line.offer_sku}
            unread: dict[str, str] = {}
            refs = self.woo.products_by_sku(skus, unread)
            undecided = self._without_unread_skus(undecided, unread, result)
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
                decisions = _all_or_nothing(decisions, self.marketplace.order_policy.partial_acceptance, promised,
                                            lambda sku: pool_of(sku, stock))
                decided_now[str(order.order_id)] = (order, decisions)
                result.add(f"decided_{order_decision(decisions)}")
            saved = self._save_decisions(decided_now)
            to_reserve.extend(r for i, r in saved.items() if r.decision != "refused")
        if to_reserve:
            self._reserve_in_waves(to_reserve, result)
        for record in self.ledger.get_orders(self.mp, decided_now).values():
            log.info("%s", decision_line(record))
        return result.as_dict()

    def _without_unread_skus(self, undecided: list[OrderRecord], unread: dict[str, str],
                             result: StepResult) -> list[OrderRecord]:
        """The orders all of whose SKUs were looked up; the others are an exception and wait.

        A SKU not read is not an unknown SKU: deciding on it would refuse a sellable line.
        """
        kept = []
        for record in undecided:
            failed = sorted({line.offer_sku for line in record.lines if line.offer_sku in unread})
            if not failed:
                kept.append(record)
                continue
            result.add("lookup_failed")
            self.ledger.raise_exception(EXC_LOOKUP, record.mirakl_order_id, {
                "order_id": record.mirakl_order_id, "commercial_id": record.commercial_id, "skus": failed,
                "error": f"the WooCommerce look-up of SKU(s) {', '.join(failed)} failed: {unread[failed[0]]}",
                "action": "left undecided; decided at the next cycle",
            }, self.mp)
        self.ledger.resolve_exceptions(EXC_LOOKUP, [r.mirakl_order_id for r in kept], self.mp)
        return kept

    def _accepted_without_woo_order(self, result: StepResult) -> list[OrderRecord]:
        """Orders accepted outside the integration (back office, auto-accept) that WooCommerce lacks.

        Still to fulfil: decided from Mirakl's own line states and reserved like any other (the
        SHIPPING step then completes them), unless the policy says a person decides. Already
        beyond fulfilment: too late to create one; a critical exception.
        """
        adopt = self.marketplace.order_policy.adopt_external_orders
        found: list[OrderRecord] = []
        missing: list[str] = []
        for record in self.ledger.orders_in_states(self.mp, [*TO_FULFIL, *PAST_FULFILMENT]):
            detail = record.detail or {}
            if record.woo_order_id is not None or detail.get("problems") or detail.get("reservation_failed"):
                continue
            if record.decision is not None and record.mirakl_state in TO_FULFIL:
                found.append(record)  # decided here, accepted on Mirakl, reservation still to make
                continue
            live = [line for line in record.lines if line.mirakl_state not in ("REFUSED", "CANCELED")]
            if not live or record.decision is not None:
                continue
            if record.mirakl_state in PAST_FULFILMENT or not adopt:
                missing.append(record.mirakl_order_id)
                self.ledger.raise_exception(EXC_NO_WOO_ORDER, record.mirakl_order_id, {
                    "order_id": record.mirakl_order_id, "commercial_id": record.commercial_id,
                    "mirakl_state": record.mirakl_state,
                    "why": "accepted on Mirakl outside this integration; "
                           + ("too late to create its WooCommerce order" if record.mirakl_state in PAST_FULFILMENT
                              else "order_policy.adopt_external_orders is off: create it by hand"),
                }, self.mp, severity="critical")
                continue
            reason = "accepted on Mirakl outside this integration"
            self.ledger.set_order_lines(self.mp, record.mirakl_order_id, [
                {"mirakl_order_line_id": line.mirakl_order_line_id,
                 "decision": ACCEPTED if line in live else "refused", "decision_reason": reason}
                for line in record.lines
            ])
            decision = "accepted" if len(live) == len(record.lines) else "partially"
            detail = {**detail, "or21_sent": True, "accepted_outside": True}
            found.append(self.ledger.upsert_order(
                self.mp, record.mirakl_order_id, decision=decision, decided_at=self.clock(), detail=detail))
            self.ledger.raise_exception(EXC_OUTSIDE, record.mirakl_order_id, {
                "order_id": record.mirakl_order_id, "mirakl_state": record.mirakl_state,
                "action": "WooCommerce order created from Mirakl's accepted lines"}, self.mp, severity="warning")
            result.add("accepted_outside")
        self.ledger.resolve_missing(EXC_NO_WOO_ORDER, self.mp, missing)
        return found

    def _refuse_all_or_nothing(self, record: OrderRecord, error: str | None) -> None:
        """The operator refuses partial decisions: refuse the whole order (its reservation is
        released once Mirakl shows it REFUSED) and tell ops to set the marketplace's policy."""
        self.ledger.set_order_lines(self.mp, record.mirakl_order_id, [
            {"mirakl_order_line_id": line.mirakl_order_line_id, "decision": "refused",
             "decision_reason": line.decision_reason if line.decision != ACCEPTED
             else "partial acceptance disabled by the operator: whole order refused"}
            for line in record.lines
        ])
        self.ledger.upsert_order(self.mp, record.mirakl_order_id, decision="refused")
        self._flag(record, partial_refused=error)
        self.ledger.raise_exception(EXC_PARTIAL, record.mirakl_order_id, {
            "order_id": record.mirakl_order_id, "error": error,
            "action": "whole order refused; set order_policy.partial_acceptance to refuse_all or accept_all",
        }, self.mp, severity="warning")

    def _save_decisions(self, decided: dict[str, tuple[Order, list[LineDecision]]]) -> dict[str, OrderRecord]:
        """Every order's and line's decision, in one transaction; the orders as stored, in ``decided``'s order."""
        if not decided:
            return {}
        now = self.clock()
        saved = self.ledger.upsert_orders(
            self.mp,
            {i: {"decision": order_decision(decisions), "decided_at": now} for i, (_, decisions) in decided.items()},
            {i: [{"mirakl_order_line_id": d.line_id, "decision": d.decision, "decision_reason": d.reason}
                 for d in decisions] for i, (_, decisions) in decided.items()},
        )
        return {i: saved[i] for i in decided}

    def _reservation(self, record: OrderRecord, body: dict, attempt: str = "") -> Write:
        def outcome(woo_order: dict) -> dict[str, Any]:
            gone = vanished_lines(body, woo_order)
            return {"woo_order_id": woo_order["id"], "shipping_line_id": shipping_line_id(woo_order),
                    **({"vanished_lines": gone} if gone else {})}

        def send() -> dict:
            batched = self._batched.pop(record.mirakl_order_id, None)
            if isinstance(batched, Exception):
                raise batched
            woo_order = batched if batched is not None else self.woo.create_order(body)
            self._created[record.mirakl_order_id] = woo_order
            return woo_order

        return Write(
            key=self._key(KIND_CREATE, record.mirakl_order_id) + attempt, kind=KIND_CREATE,
            target=record.mirakl_order_id, request=_create_digest_source(body), send=send, outcome=outcome,
        )

    def _reserve_in_waves(self, records: list[OrderRecord], result: StepResult) -> None:
        """Reserve a wave at a time (the batches WooCommerce takes at once) and, with a Mirakl client,
        answer each wave's orders (OR21) while the next wave is reserved: in a burst the first orders
        are accepted within seconds instead of after the whole backlog. ``send_decisions`` answers
        whatever is left; the ledger's keys make every OR21 go out once."""
        wave = max(1, self.woo_batch * self.woo_workers)
        if self.mirakl is None or len(records) <= wave:
            self._reserve(records, result)
            return
        answered: list[Future] = []
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="or21-wave") as answering:
            for start in range(0, len(records), wave):
                chunk = records[start:start + wave]
                self._reserve(chunk, result)
                answered.append(answering.submit(self.send_decisions, [r.mirakl_order_id for r in chunk]))
        for done in answered:
            for key, n in done.result().items():
                result.add(f"answered_{key}", n)

    def _reserve(self, records: list[OrderRecord], result: StepResult) -> None:
        """The reservations of ``records``: every intent in one transaction, the creates a few at a
        time, every outcome in one transaction, then the orders' WooCommerce ids in one more."""
        writes = []
        bodies: dict[str, dict] = {}
        for record in records:
            order = _order(record)
            accepted = {line.mirakl_order_line_id for line in record.lines if line.decision == ACCEPTED}
            body = bodies[record.mirakl_order_id] = reservation_order(self.marketplace, order, accepted)
            attempt = (record.detail or {}).get("reservation_attempt")
            # an earlier reservation lost a product and was undone: a new one
            writes.append(self._reservation(record, body, f"#{attempt}" if attempt else ""))
        pending: list[tuple[OrderRecord, Write, ActionRecord]] = []
        lost: list[tuple[OrderRecord, Write, ActionRecord]] = []
        held: list[tuple[OrderRecord, dict]] = []  # (record, outcome) to store as the order's WooCommerce order
        for record, write, action in zip(records, writes, self.writer.begin_all(writes)):
            if action.state == "done":
                held.append((record, action.outcome or {}))
                result.add("already_reserved")
            elif action.state == "failed":
                result.add("reservation_failed")
            elif action.state == "uncertain":
                lost.append((record, write, action))
            else:
                pending.append((record, write, action))
        if lost:
            # WooCommerce has no idempotency key: look for what an earlier attempt created, in one listing
            found = self._find_created([record for record, _, _ in lost])
            for record, write, action in lost:
                woo_order = found.get(record.mirakl_order_id)
                if woo_order is None:
                    pending.append((record, write, action))
                    continue
                done = self.writer.settled(write, action, {
                    "woo_order_id": woo_order["id"], "shipping_line_id": shipping_line_id(woo_order),
                    "found_after_crash": True})
                held.append((record, done.outcome or {}))
                result.add("recovered")
        self._send_batches([(record, bodies[record.mirakl_order_id]) for record, _, _ in pending])
        sent = self.writer.send_all([(write, action) for _, write, action in pending], self.woo_workers)
        created: list[tuple[OrderRecord, dict]] = []
        for (record, _, _), outcome in zip(pending, sent):
            woo_order = self._created.pop(record.mirakl_order_id, None)
            if self._created_one(record, outcome, woo_order, result):
                held.append((record, outcome.outcome or {}))
                created.append((record, woo_order))
        self._remember_woo_orders(held)
        self._check_all_totals(created)
        self.ledger.resolve_exceptions(EXC_RESERVE, [record.mirakl_order_id for record, _ in created], self.mp)

    def _send_batches(self, pending: list[tuple[OrderRecord, dict]]) -> None:
        """Create the pending reservations through ``POST /orders/batch``, a few batches at once.

        Their intents are already in the ledger; what each batch says of each order is kept for
        the order's own write to record, exactly as if it had been created alone (a batch whose
        answer is lost leaves each of its orders uncertain, found again by ``_mirakl_order_id``).
        """
        if self.woo_batch <= 1 or len(pending) <= 1:
            return
        size = min(self.woo_batch, -(-len(pending) // max(1, self.woo_workers)))
        groups = [pending[i:i + size] for i in range(0, len(pending), size)]

        def send(group: list[tuple[OrderRecord, dict]]) -> None:
            try:
                answers: list[Any] = self.woo.create_orders([body for _, body in group])
            except Exception as error:  # noqa: BLE001 - each order's write records it as its own
                answers = [error] * len(group)
            for (record, _), answer in zip(group, answers):
                self._batched[record.mirakl_order_id] = answer

        with ThreadPoolExecutor(max_workers=max(1, min(self.woo_workers, len(groups))),
                                thread_name_prefix="woo-batch") as pool:
            list(pool.map(send, groups))

    def _find_created(self, lost: list[OrderRecord]) -> dict[str, dict]:
        """WooCommerce orders carrying our ``_mirakl_order_id``, modified since the earliest intent."""
        since = min((r.decided_at or self.clock()) for r in lost) - RECOVERY_MARGIN
        wanted = {r.mirakl_order_id for r in lost}
        found: dict[str, dict] = {}
        for woo_order in self.woo.iter_orders(modified_after=since):
            order_id = meta_value(woo_order, META_ORDER_ID)
            if order_id in wanted and meta_value(woo_order, META_MARKETPLACE) == self.mp:
                # two would already be a duplicate: keep the oldest, the one the reservation made
                if order_id not in found or woo_order["id"] < found[order_id]["id"]:
                    found[str(order_id)] = woo_order
        return found

    def _created_one(self, record: OrderRecord, sent: WriteResult, woo_order: dict | None,
                     result: StepResult) -> bool:
        """How one create ended; True when WooCommerce now holds the order's accepted lines."""
        if sent.status == DONE:
            gone = (sent.outcome or {}).get("vanished_lines")
            if gone:
                self._undo_reservation(record, woo_order or {"id": sent.outcome["woo_order_id"]}, gone, result)
                return False
            result.add("reserved")
            return True
        if sent.status == UNCERTAIN:
            result.add("reservation_uncertain")
        elif sent.status == RETRY:
            result.add("reservation_retry")
        else:
            self._flag(record, reservation_failed=sent.error)
            self.ledger.raise_exception(
                EXC_RESERVE, record.mirakl_order_id,
                {"order_id": record.mirakl_order_id, "commercial_id": record.commercial_id, "error": sent.error},
                self.mp, severity="critical",
            )
            result.add("reservation_failed")
        return False

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
        self._check_all_totals([(record, woo_order)])

    def _check_all_totals(self, orders: list[tuple[OrderRecord, dict | None]]) -> None:
        """WooCommerce's total must be what Mirakl charged for the lines it holds (within a cent)."""
        fine: list[str] = []
        for record, woo_order in orders:
            if not isinstance(woo_order, dict):
                continue
            held = {line.mirakl_order_line_id for line in record.lines if line.decision == ACCEPTED}
            problem = totals_problem(woo_order, expected_total((record.detail or {}).get("payload") or {}, held))
            if problem:
                self.ledger.raise_exception(
                    EXC_TOTALS, record.mirakl_order_id,
                    {"order_id": record.mirakl_order_id, "woo_order_id": woo_order.get("id"), "problem": problem},
                    self.mp,
                )
            else:
                fine.append(record.mirakl_order_id)
        self.ledger.resolve_exceptions(EXC_TOTALS, fine, self.mp)

    def _remember_woo_orders(self, held: list[tuple[OrderRecord, dict]]) -> None:
        """Each order's WooCommerce order (``on-hold``) and shipping line, in one transaction."""
        if not held:
            return
        self.ledger.upsert_orders(self.mp, {
            record.mirakl_order_id: {
                "woo_order_id": int(outcome["woo_order_id"]), "woo_status": "on-hold",
                "detail": {**(record.detail or {}), "woo_shipping_line_id": outcome.get("shipping_line_id")}}
            for record, outcome in held})

    def _flag(self, record: OrderRecord, **changes: Any) -> None:
        detail = dict(record.detail or {})
        detail.update(changes)
        self.ledger.upsert_order(self.mp, record.mirakl_order_id, detail=detail)

    # ---- 3. OR21 ------------------------------------------------------------------------------
    def send_decisions(self, order_ids: Sequence[str] | None = None) -> dict[str, int]:
        """OR21 for every decided order (or those of ``order_ids``) whose accepted lines are held in
        WooCommerce.

        The intents in one transaction, the calls ``or21_workers`` at a time, the outcomes in one
        transaction, the orders' flags in one more.
        """
        result = StepResult()
        due: list[tuple[OrderRecord, dict[str, bool]]] = []
        writes: list[Write] = []
        records = (self.ledger.orders_in_states(self.mp, [WAITING]) if order_ids is None
                   else self.ledger.get_orders(self.mp, order_ids).values())
        for record in records:
            detail = record.detail or {}
            if record.mirakl_state != WAITING or record.decision is None or detail.get("or21_sent"):
                continue
            if record.decision != "refused" and record.woo_order_id is None:
                continue  # never accept what WooCommerce does not hold yet
            decisions = {line.mirakl_order_line_id: line.decision == ACCEPTED for line in record.lines}
            due.append((record, decisions))
            writes.append(self._acceptance(record, decisions))
        sent_ok: list[OrderRecord] = []
        answered: list[str] = []
        for (record, decisions), sent in zip(due, self.writer.write_all(writes, self.or21_workers)):
            order_id = record.mirakl_order_id
            if sent.status == DONE:
                sent_ok.append(record)
                if sent.sent:
                    answered.append(order_id)
                    result.add("sent")
            elif sent.status == UNCERTAIN:
                result.add("uncertain")
            elif sent.status == RETRY:
                result.add("deferred" if isinstance(sent.exception, BudgetExceeded) else "failed")
            elif sent.sent and getattr(sent.exception, "code", None) == PARTIAL_DISABLED:
                self._refuse_all_or_nothing(record, sent.error)
                result.add("partial_refused")
            elif sent.sent:
                self.ledger.raise_exception(
                    EXC_ACCEPT, order_id, {"order_id": order_id, "error": sent.error, "decisions": decisions},
                    self.mp, severity="critical",
                )
                result.add("failed")
        if sent_ok:
            self.ledger.upsert_orders(self.mp, {
                r.mirakl_order_id: {"detail": {**(r.detail or {}), "or21_sent": True}} for r in sent_ok})
            self.ledger.resolve_exceptions(EXC_ACCEPT, answered, self.mp)
        if order_ids is None:
            self._settle_uncertain_acceptances(result)
        return result.as_dict()

    def _acceptance(self, record: OrderRecord, decisions: dict[str, bool]) -> Write:
        order_id = record.mirakl_order_id
        key = self._key(KIND_ACCEPT, order_id) + (":all-or-nothing" if (record.detail or {}).get("partial_refused")
                                                  else "")
        return Write(
            key=key, kind=KIND_ACCEPT, target=order_id,
            request={"order_id": order_id, "order_lines": sorted(decisions.items())},
            send=lambda: self.mirakl.accept_order(order_id, decisions),
            outcome=lambda _: {"accepted": sum(decisions.values()), "lines": len(decisions)},
            landed_if_rejected=True,  # an earlier attempt may have landed: the next OR11 tells
        )

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
            if (record.detail or {}).get("problems"):
                result.add("invalid")  # quarantined by fetch_changes, with its exception
                continue
            order = _order(record)
            try:
                message = self._customer_message(order)
                update = completion_update(
                    order, message, (record.detail or {}).get("woo_shipping_line_id"),
                    customer_email_in_billing=self.marketplace.customer_email_in_billing,
                    line_ids={line.mirakl_order_line_id for line in record.lines if line.decision == ACCEPTED},
                )
            except (InvalidOrderError, ArithmeticError, TypeError, ValueError) as error:
                problems = getattr(error, "problems", None) or [f"{type(error).__name__}: {error}"]
                self.ledger.raise_exception(
                    EXC_COMPLETE, record.mirakl_order_id,
                    {"order_id": record.mirakl_order_id, "woo_order_id": record.woo_order_id,
                     "problems": problems},
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
        ``check`` looks at WooCommerce's answer (e.g. its recalculated totals).

        When the update's content changed since an unfinished attempt (Mirakl's address was
        corrected after a failed completion), the new content supersedes the old one.
        """
        woo_order_id = int(record.woo_order_id)
        answer: dict[str, Any] = {}
        sent = self.writer.write(Write(
            key=self._key(kind, record.mirakl_order_id), kind=kind, target=str(record.woo_order_id), request=update,
            send=lambda: answer.setdefault("order", self.woo.update_order(woo_order_id, update)),
            outcome=lambda _: {"woo_order_id": record.woo_order_id},
            supersede=True, repeatable=True,
        ))
        if sent.status == DONE:
            if check is not None and isinstance(answer.get("order"), dict):
                check(answer["order"])
            return True
        result.add("update_failed")
        if sent.status == FINAL:
            self.ledger.raise_exception(
                EXC_COMPLETE if kind == KIND_COMPLETE else EXC_RELEASE, record.mirakl_order_id,
                {"order_id": record.mirakl_order_id, "woo_order_id": record.woo_order_id, "error": sent.error},
                self.mp,
            )
        return False

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


def _text(value: Any) -> str | None:
    """A string field as the ledger stores it: a number where text is due is not stored as text."""
    return value if isinstance(value, str) else None


def _finite(value: Decimal | None) -> Decimal | None:
    return value if value is not None and value.is_finite() else None


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


def _all_or_nothing(
    decisions: list[LineDecision], policy: str, promised: Counter[str], pool: Callable[[str], str]
) -> list[LineDecision]:
    """Where partial acceptance is off: refuse every line, or accept every line when only stock is short.

    ``promised`` (units accepted for the batch so far, per stock ``pool``) is corrected for the
    lines that change.
    """
    accepted = [d for d in decisions if d.accepted]
    if policy == "allowed" or not accepted or len(accepted) == len(decisions):
        return decisions
    only_short = all(d.reason and d.reason.startswith(SHORT_STOCK) for d in decisions if not d.accepted)
    if policy == "accept_all" and only_short:
        for d in decisions:
            if not d.accepted:
                promised[pool(d.sku)] += d.quantity
        return [LineDecision(d.line_id, d.sku, d.quantity, True, None if d.accepted else
                             f"accepted although {d.reason} (partial acceptance off, policy accept_all)")
                for d in decisions]
    for d in accepted:
        promised[pool(d.sku)] -= d.quantity
    first = next(d for d in decisions if not d.accepted)
    return [d if not d.accepted else LineDecision(
        d.line_id, d.sku, d.quantity, False, f"whole order refused (partial acceptance off): {first.reason}")
        for d in decisions]


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
