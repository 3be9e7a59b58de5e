"""Inventory and price push: WooCommerce stock and prices → Mirakl offers, as deltas, at Mirakl's pace.

One cycle (every minute, one at a time) has two steps:

:meth:`InventoryPush.follow_imports`
    Follows the STO01/PRI01 imports of earlier cycles (STO02 / PRI02), reads their error
    reports (STO03 / PRI03) and records per SKU what Mirakl accepted and what it rejected.
    Rejected SKUs are retried by the next push; SKUs Mirakl does not know become
    *unmatched SKU* exceptions.

:meth:`InventoryPush.push_changes`
    Finds the SKUs that may have changed — products and variations modified since the
    cursor (with an overlap window), every SKU on a WooCommerce order modified since its
    cursor (an order may move stock without moving the product's modified date), SKUs whose
    marketplace demand changed, SKUs to retry — computes their offer (available to promise,
    price rule; see :mod:`include.woo_mirakl.stock`), and sends only what differs from what
    Mirakl accepted: **one** STO01 file and **one** PRI01 file. Periodically (and on demand)
    it runs a *full comparison* instead: every WooCommerce SKU against every Mirakl offer
    (the offer export, :mod:`include.woo_mirakl.offer_export`; WooCommerce pages read by a
    small bounded pool), which also finds unmatched SKUs in both directions and repairs any drift.
    Demand is the whole store's, learnt first from a fresh OR11 listing of every marketplace
    shared with the order ingest; a cycle without one only lowers offers, never above what
    Mirakl holds (see :mod:`include.woo_mirakl.unseen_demand`).

One record's failure stays with it: a variable product whose variations cannot be read is an
exception on that product (its offers are left alone and it is read again next cycle), and an
import whose status or report keeps failing is given up on after a few cycles (its lines are
sent again with the values due then) without holding up the others. Only refused credentials
or an unreachable API fail the task. STO01/PRI01 go through :mod:`include.woo_mirakl.writes`.

Mirakl's ceilings are never exceeded: every call asks the call budget kept in the ledger.
A cycle that comes too early (a manual trigger, a retry) *coalesces*: it sends nothing,
leaves its cursors where they were, and the next allowed cycle sends everything. Cursors
only move when everything a cycle planned was handed to Mirakl, so no delta is lost.
"""
from __future__ import annotations

import hashlib
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

from include.woo_mirakl.budgets import BudgetExceeded, LedgerCallBudget
from include.woo_mirakl.clients.http import ApiError, ClientError, TransportError
from include.woo_mirakl.clients.mirakl import MiraklClient, PriceLine, StockLine
from include.woo_mirakl.clients.woocommerce import API_PREFIX, WooCommerceClient
from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.ledger import Ledger, OfferStateRecord
from include.woo_mirakl.offer_export import read_offers
from include.woo_mirakl.stock import (
    AcceptedOffer, OfferTarget, WooItem, offer_targets, price_to_send, quantity_to_send,
)
from include.woo_mirakl.woo_pages import iter_pages_pooled
from include.woo_mirakl.writes import DONE, RETRY, UNCERTAIN, Write, Writer, concerns_every_record
from include.woo_mirakl.unseen_demand import (  # noqa: F401 - OPEN_ORDER_STATES kept importable from here
    DEFAULT_FRESH_FOR,
    OPEN_ORDER_STATES,
    DemandWatch,
    Knowledge,
    allowed_quantity,
)

log = logging.getLogger(__name__)

FLOW = "mirakl_inventory_push"
UTC = timezone.utc

# Exception kinds this flow raises (and resolves when they clear).
MISSING_IN_MIRAKL = "unmatched_sku_missing_in_mirakl"  # a WooCommerce SKU with no Mirakl offer
MISSING_IN_WOOCOMMERCE = "unmatched_sku_missing_in_woocommerce"  # an offer whose SKU WooCommerce lacks
VARIATION_WITHOUT_SKU = "variation_without_sku"
OFFER_UPDATE_REJECTED = "offer_update_rejected"  # Mirakl refused a line for another reason: retried
PUSH_DEFERRED = "inventory_push_deferred"  # several cycles in a row could not hand their deltas over
PRODUCT_UNREADABLE = "inventory_product_unreadable"  # one product's variations could not be read: key its id
SKU_UNREADABLE = "inventory_sku_unreadable"  # a SKU look-up batch failed: key each SKU, looked up again next cycle
IMPORT_UNREADABLE = "inventory_import_unreadable"  # one import's status or report kept failing: key its id

WOO_ITEM_FIELDS = "id,sku,type,status,manage_stock,stock_quantity,stock_status,price,parent_id,date_modified_gmt"
WOO_ORDER_FIELDS = "id,date_modified_gmt,line_items"
_UNKNOWN_OFFER = re.compile(r"does not exist|not found|unknown (offer|sku)|no offer", re.IGNORECASE)


@dataclass(frozen=True)
class InventorySettings:
    """Tuning of the flow; the defaults fit the every-minute schedule."""

    overlap: timedelta = timedelta(seconds=60)  # re-read window behind each modified cursor
    full_every: timedelta = timedelta(hours=1)  # periodic full comparison
    deferred_alert_after: int = 5  # consecutive deferred cycles before an exception is raised
    # A STO01/PRI01 slot opening within this many seconds is waited for, so scheduler jitter
    # between two every-minute runs does not cost a whole cycle. Status calls never wait.
    send_wait: float = 10.0
    woo_page_pool: int = 3  # WooCommerce pages read at once by a full comparison (a small store's share)
    # How old a complete OR11 listing may be for a cycle to trust the ledger's demand and raise.
    listing_fresh_for: timedelta = DEFAULT_FRESH_FOR
    # Cycles in a row one import's STO02/STO03 (PRI02/PRI03) may fail before its lines are sent again.
    follow_attempts: int = 5


@dataclass
class Plan:
    """What one cycle found and decided: the lines to send and the cursors to move afterwards."""

    full: bool
    stock: dict[str, int] = field(default_factory=dict)
    prices: dict[str, Decimal] = field(default_factory=dict)
    cursors: dict[str, str | None] = field(default_factory=dict)
    examined: int = 0
    confirmed: list[dict[str, Any]] = field(default_factory=list)  # full comparison: ledger rows to heal
    held_back: set[str] = field(default_factory=set)  # raises an unsure cycle did not send
    unread_parents: set[int] = field(default_factory=set)  # variable products whose variations failed to read
    unread_skus: dict[str, str] = field(default_factory=dict)  # SKUs whose look-up failed -> the error
    read_parents: set[int] = field(default_factory=set)


def _parse_gmt(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _later(a: str | None, b: str | None) -> str | None:
    """The later of two WooCommerce GMT timestamps (same format, so compared as datetimes)."""
    if not a or not b:
        return a or b
    return a if _parse_gmt(a) >= _parse_gmt(b) else b


def _known(record: OfferStateRecord | None) -> AcceptedOffer | None:
    """What the ledger says Mirakl holds, with in-flight values taking precedence."""
    if record is None:
        return None
    return AcceptedOffer(
        quantity=record.last_accepted_quantity,
        price=record.last_accepted_price,
        pending_quantity=record.last_pushed_quantity if record.pending_quantity_import_id else None,
        pending_price=record.last_pushed_price if record.pending_price_import_id else None,
    )


class InventoryPush:
    """The inventory and price push of one marketplace (plain Python: no scheduler needed)."""

    def __init__(
        self,
        marketplace: Marketplace,
        woo: WooCommerceClient,
        mirakl: MiraklClient,
        ledger: Ledger,
        budget: LedgerCallBudget,
        *,
        settings: InventorySettings | None = None,
        clock: Callable[[], datetime] | None = None,
        demand_watch: DemandWatch | None = None,
    ):
        self.marketplace = marketplace
        self.woo = woo
        self.mirakl = mirakl
        self.ledger = ledger
        self.budget = budget
        self.settings = settings or InventorySettings()
        self.clock = clock or budget.clock
        self._variations_route: bool | None = None
        self.writer = Writer(ledger, marketplace.name)
        # Without a store-wide watch (scripts, benchmarks) the cycle lists its own marketplace only.
        self.demand_watch = demand_watch or DemandWatch(
            marketplace, ledger, self._list_own_orders, store=[marketplace], clock=self.clock,
            fresh_for=self.settings.listing_fresh_for)

    # ---- small helpers ----------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.marketplace.name

    def _cursor(self, name: str, default: Any = None) -> Any:
        return self.ledger.get_cursor(FLOW, self.name, name, default)

    def _set_cursor(self, name: str, value: Any) -> None:
        self.ledger.set_cursor(FLOW, self.name, name, value)

    def _open_keys(self, kind: str) -> set[str]:
        return {e.key for e in self.ledger.open_exceptions(self.name, kind)}

    @contextmanager
    def _budget_wait(self, seconds: float) -> Iterator[None]:
        previous, self.budget.max_wait = self.budget.max_wait, seconds
        try:
            yield
        finally:
            self.budget.max_wait = previous

    # ---- step 1: follow earlier imports ---------------------------------------------------------
    def follow_imports(self) -> dict[str, int]:
        """Settle finished STO01/PRI01 imports of earlier cycles; unfinished ones wait for the next."""
        pending = self._cursor("imports", {"stock": [], "price": []})
        summary = {"settled": 0, "accepted": 0, "rejected": 0, "waiting": 0}
        with self._budget_wait(0.0):
            still_stock = self._follow_stock(pending.get("stock", []), summary)
            still_price = self._follow_prices(pending.get("price", []), summary)
        # Re-read before writing: only this step removes imports, only push_changes adds them.
        latest = self._cursor("imports", {"stock": [], "price": []})
        settled = set(pending.get("stock", [])) - set(still_stock), set(pending.get("price", [])) - set(still_price)
        self._set_cursor("imports", {
            "stock": [i for i in latest.get("stock", []) if i not in settled[0]],
            "price": [i for i in latest.get("price", []) if i not in settled[1]],
        })
        summary["waiting"] = len(still_stock) + len(still_price)
        return summary

    def _follow_stock(self, import_ids: list[str], summary: dict[str, int]) -> list[str]:
        waiting = list(import_ids)
        for import_id in self._failing_last(import_ids):  # STO02 allows one call every 15 s
            try:
                status = self.mirakl.stock_import_status(import_id)
                if not status.finished:
                    break
                rejected = self._rejections(status, import_id, self.mirakl.stock_error_report, "stock")
            except BudgetExceeded as error:
                if not error.retry_stopped or (rejected := self._unfollowable(import_id, "stock", error)) is None:
                    break
            except ApiError as error:
                if error.status == 404:
                    rejected = self._all_rejected(import_id, "stock", f"import {import_id} unknown to Mirakl")
                elif (rejected := self._unfollowable(import_id, "stock", error)) is None:
                    continue
            except ClientError as error:
                if (rejected := self._unfollowable(import_id, "stock", error)) is None:
                    continue
            self._settle(import_id, rejected, "stock", summary)
            waiting.remove(import_id)
        return waiting

    def _follow_prices(self, import_ids: list[str], summary: dict[str, int]) -> list[str]:
        if not import_ids:
            return []
        waiting = list(import_ids)
        try:
            statuses = {s.import_id: s for s in self.mirakl.iter_price_imports(import_ids=import_ids)}
        except (BudgetExceeded, ClientError) as error:  # one listing for all: a failure counts for each
            if isinstance(error, BudgetExceeded) and not error.retry_stopped:
                return waiting
            for import_id in import_ids:
                if (rejected := self._unfollowable(import_id, "price", error)) is not None:
                    self._settle(import_id, rejected, "price", summary)
                    waiting.remove(import_id)
            return waiting
        for import_id in self._failing_last(import_ids):
            status = statuses.get(import_id)
            try:
                if status is None:
                    rejected = self._all_rejected(import_id, "price", f"import {import_id} unknown to Mirakl")
                elif not status.finished:
                    continue
                else:
                    rejected = self._rejections(status, import_id, self.mirakl.price_error_report, "price")
            except BudgetExceeded as error:  # PRI03 once a minute: the next report waits for the next cycle
                if not error.retry_stopped:
                    break
                if (rejected := self._unfollowable(import_id, "price", error)) is None:
                    continue
            except ClientError as error:
                if (rejected := self._unfollowable(import_id, "price", error)) is None:
                    continue
            self._settle(import_id, rejected, "price", summary)
            waiting.remove(import_id)
        return waiting

    def _failing_last(self, import_ids: list[str]) -> list[str]:
        """Imports in order, those that failed to be followed last: one cannot hold up the others."""
        failures = self._cursor("follow_failures", {}) or {}
        return sorted(import_ids, key=lambda i: failures.get(i, 0))

    def _unfollowable(self, import_id: str, kind: str, error: Exception) -> dict[str, str] | None:
        """One import's status or error report failed: None while it may still be read (it stays
        waiting), its lines as rejected once it failed ``follow_attempts`` cycles in a row.

        Rejected lines are sent again by the next push with the value due *then* (an absolute
        quantity or price), so an import that did land is overwritten, never replayed stale.
        """
        if concerns_every_record(error):
            raise error
        failures = self._cursor("follow_failures", {}) or {}
        failures[import_id] = failures.get(import_id, 0) + 1
        self._set_cursor("follow_failures", failures)
        log.warning("%s: %s import %s could not be followed (%s), attempt %d", self.name, kind, import_id,
                    error, failures[import_id])
        if failures[import_id] < self.settings.follow_attempts:
            return None
        reason = f"{kind} import {import_id} unreadable after {failures[import_id]} attempts: {error}"
        self.ledger.raise_exception(
            IMPORT_UNREADABLE, import_id,
            {"import_id": import_id, "import": kind, "error": str(error), "attempts": failures[import_id],
             "action": "its lines are sent again with the values due now"},
            self.name, severity="warning",
        )
        return self._all_rejected(import_id, kind, reason)

    def _rejections(self, status: Any, import_id: str, report: Callable[[str], list], kind: str) -> dict[str, str]:
        if (status.status or "").upper() != "COMPLETE":
            reason = status.reason_status or f"import {status.status}"
            return self._all_rejected(import_id, kind, reason)
        if not status.has_error_report:
            return {}
        rejected: dict[str, str] = {}
        for line in report(import_id):
            if line.offer_sku:
                rejected[line.offer_sku] = line.error or "rejected"
        return rejected

    def _pending_skus(self, import_id: str, kind: str) -> list[str]:
        # The ledger has no "SKUs of import X" query yet; read its model directly.
        from sqlalchemy import select

        from include.woo_mirakl.ledger.models import OfferState

        column = OfferState.pending_quantity_import_id if kind == "stock" else OfferState.pending_price_import_id
        with self.ledger.session(write=False) as s, s.begin():
            query = select(OfferState.sku).where(OfferState.marketplace == self.name, column == import_id)
            return list(s.scalars(query))

    def _all_rejected(self, import_id: str, kind: str, reason: str) -> dict[str, str]:
        return {sku: reason for sku in self._pending_skus(import_id, kind)}

    def _settle(self, import_id: str, rejected: dict[str, str], kind: str, summary: dict[str, int]) -> None:
        failures = self._cursor("follow_failures", {}) or {}
        if failures.pop(import_id, None) is not None:
            self._set_cursor("follow_failures", failures)
        pushed = set(self._pending_skus(import_id, kind))
        counts = self.ledger.mark_import_result(self.name, import_id, rejected)
        summary["settled"] += 1
        summary["accepted"] += counts["accepted"]
        summary["rejected"] += counts["rejected"]
        accepted = pushed - set(rejected)
        for sku, error in rejected.items():
            if sku not in pushed:
                continue
            if _UNKNOWN_OFFER.search(error):
                self.ledger.raise_exception(
                    MISSING_IN_MIRAKL, sku,
                    {"sku": sku, "missing_from": "mirakl", "source": f"{kind} import {import_id}", "error": error},
                    self.name, severity="warning",
                )
            else:
                self.ledger.raise_exception(
                    OFFER_UPDATE_REJECTED, sku,
                    {"sku": sku, "import": kind, "import_id": import_id, "error": error, "retried": True},
                    self.name, severity="error",
                )
        for kind_ in (MISSING_IN_MIRAKL, OFFER_UPDATE_REJECTED):
            for sku in self._open_keys(kind_) & accepted:
                self.ledger.resolve_exception(kind_, sku, self.name)

    # ---- step 2: find and push deltas -----------------------------------------------------------
    def push_changes(self, full: bool = False) -> dict[str, Any]:
        """One push cycle; returns counts for the run's XCom (never data)."""
        now = self.clock()
        last_full = _parse_gmt(self._cursor("last_full"))
        full = full or last_full is None or now - last_full >= self.settings.full_every
        if not full and self._both_files_blocked(now):
            return self._deferred("coalesced: STO01 and PRI01 were called less than a minute ago")
        knowledge = self.demand_watch.learn()  # before any WooCommerce read: see unseen_demand
        demand = knowledge.demand
        plan = self._plan_full(demand) if full else self._plan_changes(demand)
        if not knowledge.sure:
            self._lower_only(plan, knowledge)
        with self._budget_wait(self.settings.send_wait):
            sent, reason = self._send(plan)
        if reason:
            return self._deferred(reason, plan, sent)
        for name, value in plan.cursors.items():
            if value is not None:
                self._set_cursor(name, value)
        self._set_cursor("demand", demand)
        self._set_cursor("held_back", sorted(plan.held_back))
        self._set_cursor("unsure", {})  # every unsure line was sent again (or its SKU is gone)
        self._set_cursor("unread_parents", sorted(plan.unread_parents))
        self._set_cursor("unread_skus", sorted(plan.unread_skus))
        self.ledger.resolve_missing(SKU_UNREADABLE, self.name, plan.unread_skus)
        if full:  # every product was listed: what is still open is what failed now
            self.ledger.resolve_missing(PRODUCT_UNREADABLE, self.name, {str(p) for p in plan.unread_parents})
        for key in self._open_keys(PRODUCT_UNREADABLE) if not full else ():
            if key.isdigit() and int(key) in plan.read_parents:
                self.ledger.resolve_exception(PRODUCT_UNREADABLE, key, self.name)
        if full:
            self._set_cursor("last_full", now.isoformat())
        if plan.confirmed:
            self.ledger.upsert_offer_states(self.name, plan.confirmed)
        self._set_cursor("deferred_cycles", 0)
        self.ledger.resolve_exception(PUSH_DEFERRED, self.name, self.name)
        summary = {"full": full, "examined": plan.examined, "stock_lines": len(plan.stock),
                   "price_lines": len(plan.prices), **sent, "deferred": False,
                   "sure": knowledge.sure, "held_back": len(plan.held_back), "unsure_because": knowledge.stale}
        self._set_cursor("last_cycle", summary)
        self.ledger.record_sync_success(FLOW, self.name, summary=summary)
        return summary

    def _both_files_blocked(self, now: datetime) -> bool:
        """Whether neither STO01 nor PRI01 may be called now (a cheap check before reading WooCommerce)."""
        horizon = now + timedelta(seconds=self.settings.send_wait) - timedelta(seconds=60)
        for operation in ("STO01", "PRI01"):
            last = self.ledger.last_call(self.budget.scope, operation)
            if last is None or last <= horizon:
                return False
        return True

    def _deferred(self, reason: str, plan: Plan | None = None, sent: dict[str, Any] | None = None) -> dict[str, Any]:
        count = int(self._cursor("deferred_cycles", 0)) + 1
        self._set_cursor("deferred_cycles", count)
        if count >= self.settings.deferred_alert_after:
            self.ledger.raise_exception(
                PUSH_DEFERRED, self.name, {"cycles": count, "reason": reason}, self.name, severity="error"
            )
        log.warning("%s: not everything was handed to Mirakl this cycle (%s); the next cycle sends it",
                    self.name, reason)
        self.ledger.record_sync_failure(FLOW, self.name, reason)
        summary = {
            "full": bool(plan and plan.full), "examined": plan.examined if plan else 0,
            "stock_lines": len(plan.stock) if plan else 0, "price_lines": len(plan.prices) if plan else 0,
            "stock_import": None, "price_import": None, **(sent or {}), "deferred": True, "reason": reason,
        }
        self._set_cursor("last_cycle", summary)
        return summary

    # ---- unsure cycles: lower only ------------------------------------------------------------------
    def _list_own_orders(self, marketplace: Marketplace) -> dict[str, int]:
        """The order ingest's listing step (OR11) with this flow's client and budget."""
        from include.woo_mirakl.orders import OrderIngest

        with self._budget_wait(self.settings.send_wait):
            return OrderIngest(marketplace, self.ledger, mirakl=self.mirakl, clock=self.clock).fetch_changes()

    def _lower_only(self, plan: Plan, knowledge: Knowledge) -> None:
        """No stock line above what Mirakl holds now; raises wait for a sure cycle (see unseen_demand)."""
        states = self.ledger.offer_states(self.name, list(plan.stock))
        for sku, target in list(plan.stock.items()):
            try:  # read now: an offer export may be older than the sales Mirakl has just made
                live = self._live_quantity(sku)
            except (ApiError, TransportError) as error:
                log.warning("%s: %s not sent this cycle, its live quantity is unknown (%s)", self.name, sku, error)
                del plan.stock[sku]
                plan.held_back.add(sku)
                continue
            record = states.get(sku)
            pending = record.last_pushed_quantity if record and record.pending_quantity_import_id else None
            told = pending if pending is not None else (record.last_accepted_quantity if record else None)
            quantity = allowed_quantity(target, live, told, sure=False, own_fresh=knowledge.own_fresh)
            if quantity < target:
                plan.held_back.add(sku)
            if quantity == (pending if pending is not None else live):
                del plan.stock[sku]  # Mirakl holds it already, or is applying it
            else:
                plan.stock[sku] = quantity

    def _live_quantity(self, sku: str) -> int | None:
        """The quantity of ``sku``'s offer on Mirakl now (OF21 by SKU, no published ceiling); None: no offer."""
        for offer in self.mirakl.iter_offers(sku=sku):
            if offer.shop_sku == sku:
                return offer.quantity
        return None

    # ---- planning: incremental ---------------------------------------------------------------------
    def _plan_changes(self, demand: dict[str, int]) -> Plan:
        plan = Plan(full=False)
        items: dict[str, WooItem] = {}
        wanted: set[str] = set()
        no_sku: set[str] = set()

        # The orders' listing needs nothing from the products': read it meanwhile.
        orders_cursor = self._cursor("orders_modified")
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="woo-orders") as reading:
            orders = reading.submit(lambda: list(self._iter_modified("/orders", "woo.orders.list", orders_cursor,
                                                                     fields=WOO_ORDER_FIELDS)))
            parents = self._read_changed_products(plan, items, no_sku)
            changed_orders = orders.result()
        for order in changed_orders:
            plan.cursors["orders_modified"] = _later(plan.cursors.get("orders_modified") or orders_cursor,
                                                     order.get("date_modified_gmt"))
            wanted.update(str(line["sku"]) for line in order.get("line_items") or [] if line.get("sku"))

        previous_demand = self._cursor("demand", {}) or {}
        wanted.update(sku for sku in set(demand) | set(previous_demand)
                      if demand.get(sku, 0) != previous_demand.get(sku, 0))
        wanted.update(self._skus_to_retry())
        wanted.update(self._cursor("held_back", []) or [])
        wanted.update(self._cursor("unread_skus", []) or [])  # failed last time: look up again
        wanted.update(sku for skus in (self._cursor("unsure", {}) or {}).values() for sku in skus)
        for item in self._items_by_sku(wanted - set(items), plan):
            self._collect(item, items, no_sku)
        # A pool's demand is its variations' together: read the siblings of any pool member seen.
        pools = {i.parent_id for i in items.values() if i.manage_stock == "parent"} - set(parents)
        for parent in sorted(pools):
            for raw in self._parent_variations(parent, plan):
                self._collect(WooItem.from_api(raw), items, no_sku)
        # a pool whose siblings could not be read waits (its split needs them all): see stock.pool_targets
        for sku, item in list(items.items()):
            if item.manage_stock == "parent" and item.parent_id in plan.unread_parents:
                del items[sku]

        self._report_variations_without_sku(no_sku, seen_with_sku={str(i.id) for i in items.values()}, full=False)
        # SKUs Mirakl has no offer for are left to the full comparison, which sees when one appears.
        for sku in self._open_keys(MISSING_IN_MIRAKL):
            items.pop(sku, None)
        self._decide(plan, items.values(), demand, self.ledger.offer_states(self.name, list(items)))
        return plan

    def _read_changed_products(self, plan: Plan, items: dict[str, WooItem], no_sku: set[str]) -> dict[int, bool]:
        """Products modified since the last cycle, then the variations of changed variable products;
        returns the changed variable products (and whether each manages a stock pool)."""
        cursor = self._cursor("products_modified")
        parents: dict[int, bool] = {}  # changed variable products -> whether they manage a stock pool
        for raw in self._iter_modified("/products", "woo.products.list", cursor):
            plan.cursors["products_modified"] = _later(plan.cursors.get("products_modified") or cursor,
                                                       raw.get("date_modified_gmt"))
            item = WooItem.from_api(raw)
            if item.type == "variable":
                parents[item.id] = item.manage_stock is True
            self._collect(item, items, no_sku)

        cursor = self._cursor("variations_modified")
        for raw in self._iter_changed_variations(cursor, parents, plan):
            plan.cursors["variations_modified"] = _later(plan.cursors.get("variations_modified") or cursor,
                                                         raw.get("date_modified_gmt"))
            self._collect(WooItem.from_api(raw), items, no_sku)
        return parents

    @staticmethod
    def _collect(item: WooItem, items: dict[str, WooItem], no_sku: set[str]) -> None:
        if not item.is_offer:
            return
        if not item.sku:
            if item.is_variation:
                no_sku.add(str(item.id))
            return
        items[item.sku] = item

    def _iter_modified(
        self, path: str, operation: str, cursor: str | None, fields: str = WOO_ITEM_FIELDS,
        extra: Mapping[str, Any] | None = None,
    ) -> Iterator[dict]:
        """Items modified since ``cursor`` − overlap (all items without a cursor), id ascending, de-duplicated."""
        params: dict[str, Any] = {"orderby": "id", "order": "asc", "_fields": fields, **(extra or {})}
        if cursor:
            since = _parse_gmt(cursor) - self.settings.overlap
            params.update({"modified_after": since.strftime("%Y-%m-%dT%H:%M:%S"), "dates_are_gmt": "true"})
        seen: set[tuple[Any, Any]] = set()
        for item in iter_pages_pooled(self.woo, path, operation, params, self.settings.woo_page_pool):
            key = (item.get("id"), item.get("date_modified_gmt"))
            if key not in seen:
                seen.add(key)
                yield item

    def _has_variations_route(self) -> bool:
        """``GET /variations`` (every variation of the store) exists from WooCommerce 10.3."""
        if self._variations_route is None:
            self._variations_route = self.woo.version() >= (10, 3)
        return self._variations_route

    def _iter_changed_variations(self, cursor: str | None, modified_parents: Mapping[int, bool],
                                 plan: Plan) -> Iterator[dict]:
        """Variations that may have changed, reading only parents whose ``date_modified`` moved.

        A real store moves a parent's date whenever one of its variations is saved or sold, and a
        sale from a parent-managed pool moves only the parent's: so a changed parent's variations
        are read whole, and an unchanged parent's not at all (the periodic full comparison is the
        safety net for anything else).
        """
        if self._has_variations_route():
            yield from self._iter_modified("/variations", "woo.variations.all", cursor)
            parents = {p for p, pool in modified_parents.items() if pool}  # pool sales move no variation
        else:
            parents = set(modified_parents)
        parents |= set(self._cursor("unread_parents", []) or [])  # failed last time: read again
        for parent in sorted(parents):
            yield from self._parent_variations(parent, plan)

    def _parent_variations(self, parent: int, plan: Plan) -> list[dict]:
        """One variable product's variations; a failure on it alone is an exception on that product.

        The product is read again by the next cycle (``unread_parents``), and a full comparison
        that missed it retires no offer it cannot see (see :meth:`_compare_full`).
        """
        try:
            found = list(self._iter_modified(f"/products/{parent}/variations", "woo.variations.list", None))
        except ClientError as error:
            if concerns_every_record(error):
                raise
            plan.unread_parents.add(int(parent))
            self.ledger.raise_exception(
                PRODUCT_UNREADABLE, str(parent),
                {"woocommerce_id": int(parent), "error": str(error), "status": getattr(error, "status", None),
                 "action": "its variations' offers are left as they are and read again next cycle"},
                self.name, severity="error",
            )
            return []
        plan.read_parents.add(int(parent))
        return [{**raw, "type": "variation", "parent_id": parent} for raw in found]

    def _items_by_sku(self, skus: Iterable[str], plan: Plan) -> list[WooItem]:
        """Products and variations by exact SKU; a failed look-up batch is an exception on each of its SKUs.

        Their offers are left as they are (nothing is sent for them) and looked up again next cycle.
        """
        wanted = sorted(s for s in skus if s and "," not in s)
        found = [WooItem.from_api(raw) for raw in self.woo.iter_by_sku(wanted, WOO_ITEM_FIELDS, plan.unread_skus)]
        for sku, error in plan.unread_skus.items():
            self.ledger.raise_exception(SKU_UNREADABLE, sku, {
                "sku": sku, "error": f"the WooCommerce look-up of SKU {sku} failed: {error}",
                "action": "its offer is left as it is and looked up again next cycle",
            }, self.name, severity="error")
        return found

    def _skus_to_retry(self) -> set[str]:
        """SKUs whose last push Mirakl rejected."""
        from sqlalchemy import select

        from include.woo_mirakl.ledger.models import OfferState

        with self.ledger.session(write=False) as s, s.begin():
            return set(s.scalars(select(OfferState.sku).where(
                OfferState.marketplace == self.name, OfferState.last_error.is_not(None))))

    def _decide(
        self,
        plan: Plan,
        items: Iterable[WooItem],
        demand: Mapping[str, int],
        states: Mapping[str, OfferStateRecord],
        mirakl: Mapping[str, tuple[int | None, Decimal | None]] | None = None,
    ) -> None:
        """Add to the plan every line whose value differs from what Mirakl holds (or is getting)."""
        items = list(items)
        targets = offer_targets(items, self.marketplace, demand)  # a shared pool is split: see there
        unsure = (self._cursor("unsure", {}) or {}) if mirakl is None else {}  # see _submit
        for item in items:
            plan.examined += 1
            target = targets[item.sku]
            record = states.get(item.sku)
            known = _known(record)
            if mirakl is not None:  # full comparison: Mirakl's own values are the truth about Mirakl
                quantity, price = mirakl[item.sku]
                known = AcceptedOffer(quantity, price, known.pending_quantity if known else None,
                                      known.pending_price if known else None)
                self._heal(plan, target, record, quantity, price)
            quantity = quantity_to_send(target, known)
            if quantity is None and item.sku in unsure.get("stock", ()):
                quantity = target.quantity
            if quantity is not None:
                plan.stock[item.sku] = quantity
            price = price_to_send(target, known)
            if price is None and item.sku in unsure.get("price", ()):
                price = target.price
            if price is not None:
                plan.prices[item.sku] = price

    @staticmethod
    def _heal(plan: Plan, target: OfferTarget, record: OfferStateRecord | None,
              quantity: int | None, price: Decimal | None) -> None:
        """Record in the ledger what Mirakl already holds when it matches, so later deltas are exact."""
        row: dict[str, Any] = {}
        if quantity == target.quantity and (record is None or record.last_accepted_quantity != quantity):
            if record is None or not record.pending_quantity_import_id:
                row.update(last_accepted_quantity=quantity, last_pushed_quantity=quantity)
        if price is not None and target.price is not None and Decimal(price) == target.price and (
            record is None or record.last_accepted_price is None or Decimal(record.last_accepted_price) != price
        ):
            if record is None or not record.pending_price_import_id:
                row.update(last_accepted_price=price, last_pushed_price=price)
        if row:
            plan.confirmed.append({"sku": target.sku, **row})

    # ---- planning: full comparison -------------------------------------------------------------
    def _plan_full(self, demand: dict[str, int]) -> Plan:
        """Every WooCommerce SKU against every Mirakl offer; finds unmatched SKUs both ways.

        Mirakl's offers are held once (SKU → quantity, price); WooCommerce is streamed page by
        page and each page is compared and dropped, so the catalogue is never held twice. The
        offer export (OF52-OF54) is prepared by Mirakl while WooCommerce's pages are read: pages
        wait in memory only until the offers are there.
        """
        plan = Plan(full=True)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="offer-export") as executor:
            exported = executor.submit(read_offers, self.mirakl, self.ledger, FLOW, self.name, self.clock())
            return self._compare_full(plan, demand, exported)

    def _compare_full(self, plan: Plan, demand: dict[str, int], exported: Future) -> Plan:
        missing_in_mirakl: dict[str, int] = {}
        no_sku: set[str] = set()
        seen_ids: set[str] = set()
        page: list[WooItem] = []
        pooled: list[WooItem] = []  # variations sharing a parent's stock: split together, at the end

        def flush(items: list[WooItem]) -> None:
            offers = exported.result()  # SKU -> (quantity, price); matched ones are taken out
            matched = [i for i in items if i.sku in offers]
            states = self.ledger.offer_states(self.name, [i.sku for i in matched])
            self._decide(plan, matched, demand, states, mirakl={i.sku: offers.pop(i.sku) for i in matched})
            matched_skus = {i.sku for i in matched}
            missing_in_mirakl.update((i.sku, i.id) for i in items if i.sku not in matched_skus)
            items.clear()

        for raw in self._iter_catalogue(plan):
            item = WooItem.from_api(raw)
            items: dict[str, WooItem] = {}
            self._collect(item, items, no_sku)
            seen_ids.update(str(i.id) for i in items.values())
            for collected in items.values():
                (pooled if collected.manage_stock == "parent" else page).append(collected)
            if len(page) >= 500 and exported.done():
                flush(page)
        flush(page)
        flush(pooled)
        offers = exported.result()

        # What is left of the offers has no WooCommerce SKU. Offers this integration used to
        # manage lost their product: take them off sale rather than let them oversell. Unless a
        # product could not be read: its variations are among them, and are left alone.
        complete = not plan.unread_parents
        managed = self.ledger.offer_states(self.name, list(offers)) if complete else {}
        for sku, (quantity, _price) in offers.items():
            if sku in managed and quantity:
                plan.stock[sku] = 0

        self._report_unmatched(missing_in_mirakl, offers if complete else None)
        self._report_variations_without_sku(no_sku, seen_with_sku=seen_ids, full=complete)
        cursor = self._cursor("orders_modified")
        plan.cursors["orders_modified"] = self._latest_order_modified() or cursor
        return plan

    def _iter_catalogue(self, plan: Plan) -> Iterator[dict]:
        """Every product and variation of the store, streamed; records the modified cursors."""
        parents: list[int] = []
        for raw in self._iter_modified("/products", "woo.products.list", None):
            plan.cursors["products_modified"] = _later(plan.cursors.get("products_modified"),
                                                       raw.get("date_modified_gmt"))
            if raw.get("type") == "variable":
                parents.append(int(raw["id"]))
            yield raw
        if self._has_variations_route():
            variations: Iterable[dict] = self._iter_modified("/variations", "woo.variations.all", None)
        else:
            variations = (raw for parent in parents for raw in self._parent_variations(parent, plan))
        for raw in variations:
            plan.cursors["variations_modified"] = _later(plan.cursors.get("variations_modified"),
                                                         raw.get("date_modified_gmt"))
            yield raw

    def _latest_order_modified(self) -> str | None:
        """The newest order's modified date: where the orders cursor starts after a full comparison."""
        reply = self.woo.request(
            "GET", API_PREFIX + "/orders", "woo.orders.list",
            params={"orderby": "modified", "order": "desc", "per_page": 1, "_fields": "id,date_modified_gmt"},
        )
        orders = reply.body or []
        return orders[0].get("date_modified_gmt") if orders else None

    # ---- exceptions ---------------------------------------------------------------------------------
    def _report_unmatched(self, missing_in_mirakl: Mapping[str, int], orphan_offers: Mapping[str, Any] | None) -> None:
        """Unmatched SKUs of a full comparison; ``orphan_offers`` None: WooCommerce was not read whole."""
        open_mirakl = self._open_keys(MISSING_IN_MIRAKL)
        self.ledger.raise_exceptions(MISSING_IN_MIRAKL, {  # one transaction, however many
            sku: {"sku": sku, "missing_from": "mirakl", "woocommerce_id": product_id, "source": "full comparison"}
            for sku, product_id in missing_in_mirakl.items() if sku not in open_mirakl
        }, self.name, severity="warning")
        if orphan_offers is None:
            return
        self.ledger.resolve_missing(MISSING_IN_MIRAKL, self.name, missing_in_mirakl)
        open_woo = self._open_keys(MISSING_IN_WOOCOMMERCE)
        self.ledger.raise_exceptions(MISSING_IN_WOOCOMMERCE, {
            sku: {"sku": sku, "missing_from": "woocommerce", "source": "full comparison"}
            for sku in orphan_offers if sku not in open_woo
        }, self.name, severity="warning")
        self.ledger.resolve_missing(MISSING_IN_WOOCOMMERCE, self.name, orphan_offers)

    def _report_variations_without_sku(self, ids: set[str], seen_with_sku: set[str], full: bool) -> None:
        open_keys = self._open_keys(VARIATION_WITHOUT_SKU)
        for variation_id in ids - open_keys:
            self.ledger.raise_exception(
                VARIATION_WITHOUT_SKU, variation_id,
                {"woocommerce_id": int(variation_id), "missing": "sku",
                 "hint": "give the variation its own SKU so it can be matched to an offer"},
                self.name, severity="warning",
            )
        if full:
            self.ledger.resolve_missing(VARIATION_WITHOUT_SKU, self.name, ids)
        else:
            for variation_id in open_keys & seen_with_sku:
                self.ledger.resolve_exception(VARIATION_WITHOUT_SKU, variation_id, self.name)

    # ---- sending ------------------------------------------------------------------------------------
    def _send(self, plan: Plan) -> tuple[dict[str, Any], str | None]:
        """Hand the plan's files to Mirakl; returns what was sent and why not everything was."""
        sent: dict[str, Any] = {"stock_import": None, "price_import": None}
        reasons = []
        if plan.stock:
            lines = [StockLine(sku, quantity) for sku, quantity in plan.stock.items()]
            import_id, reason = self._submit("STO01", "stock", plan.stock, lines, self.mirakl.import_stock)
            if import_id:
                self.ledger.mark_offers_pushed(self.name, import_id, quantities=plan.stock)
                self._remember_import("stock", import_id)
                sent["stock_import"] = import_id
            if reason:
                reasons.append(reason)
        if plan.prices:
            lines = [PriceLine(sku, price) for sku, price in plan.prices.items()]
            import_id, reason = self._submit("PRI01", "price", plan.prices, lines, self.mirakl.import_prices)
            if import_id:
                self.ledger.mark_offers_pushed(self.name, import_id, prices=plan.prices)
                self._remember_import("price", import_id)
                sent["price_import"] = import_id
            if reason:
                reasons.append(reason)
        return sent, "; ".join(reasons) or None

    def _submit(
        self, operation: str, kind: str, values: Mapping[str, Any], lines: list, upload: Callable[[list], str]
    ) -> tuple[str | None, str | None]:
        """One file upload through the shared write path; transient failures defer, never fail the task.

        Each cycle's file is an action of its own (keyed by the cycle's time and content). An upload
        of unknown outcome is never replayed: the next cycle sends what is due *then*, an absolute
        quantity or price per line, so a file that did land is overwritten with newer values, not
        repeated stale ones, and its lines are *unsure*: the ledger cannot tell what Mirakl holds, so
        they are sent again even when the value due went back to the one last accepted. A file
        refused for good (4xx) concerns every line in it: the task fails.
        """
        digest = hashlib.sha256("\n".join(f"{sku};{values[sku]}" for sku in sorted(values)).encode()).hexdigest()
        result = self.writer.write(Write(
            key=f"{self.name}:{operation}:{self.clock().isoformat()}:{digest[:16]}", kind=operation, target=None,
            request={"lines": len(lines), "digest": digest}, send=lambda: upload(lines),
            outcome=lambda import_id: {"import_id": import_id, "lines": len(lines)},
        ))
        if result.status == DONE:
            return (result.outcome or {}).get("import_id"), None
        if result.status == UNCERTAIN:
            unsure = self._cursor("unsure", {}) or {}
            self._set_cursor("unsure", {**unsure, kind: sorted(set(unsure.get(kind, [])) | set(values))})
            return None, f"{operation} outcome unknown ({result.error}); the next cycle sends what is due then"
        if result.status == RETRY:
            if isinstance(result.exception, BudgetExceeded):
                return None, f"coalesced: {operation} allowed again at {result.exception.retry_at.isoformat()}"
            return None, f"{operation} failed ({result.error}); resent by the next cycle"
        raise result.exception or RuntimeError(f"{operation} refused: {result.error}")

    def _remember_import(self, kind: str, import_id: str) -> None:
        pending = self._cursor("imports", {"stock": [], "price": []})
        pending.setdefault(kind, []).append(import_id)
        self._set_cursor("imports", pending)


def for_marketplace(name: str, *, settings: InventorySettings | None = None) -> InventoryPush:
    """The flow for a configured marketplace, with clients from its Airflow connections."""
    from include.woo_mirakl.wiring import wire

    settings = settings or InventorySettings()
    w = wire(name)

    def list_orders(marketplace: Marketplace) -> dict[str, int]:
        from include.woo_mirakl.orders import OrderIngest

        other = wire(marketplace.name, mirakl_wait=settings.send_wait)
        return OrderIngest(other.marketplace, other.ledger, mirakl=other.mirakl(), clock=w.budget.clock).fetch_changes()

    watch = DemandWatch(w.marketplace, w.ledger, list_orders, clock=w.budget.clock,
                        fresh_for=settings.listing_fresh_for)
    return InventoryPush(w.marketplace, w.woo(), w.mirakl(), w.ledger, w.budget, settings=settings,
                         demand_watch=watch)


__all__ = [
    "FLOW", "MISSING_IN_MIRAKL", "MISSING_IN_WOOCOMMERCE", "OFFER_UPDATE_REJECTED", "PUSH_DEFERRED",
    "VARIATION_WITHOUT_SKU", "InventoryPush", "InventorySettings", "Plan", "for_marketplace",
]
