"""Marketplace sales the order ingest has not read yet, and the rule that never gives them back.

When a customer orders on a marketplace, Mirakl lowers the offer's quantity at once. Until the
order ingest has listed that order (OR11) and reserved it in WooCommerce, WooCommerce still
counts the sold units, and a stock file built from WooCommerce alone would hand them back to the
offer (STO01 quantities are absolute). This module decides what one inventory cycle knows of the
store's marketplace demand, and how far it may trust it.

How the inventory flow learns of orders the ingest has not read
-----------------------------------------------------------------
It **shares the ingest's listing**. Before it reads any demand or WooCommerce stock, a cycle
makes sure every marketplace of the store (every marketplace on the same WooCommerce
connection) has a *complete* OR11 listing that started at most ``fresh_for`` seconds ago. When
one has not — the ingest has not run yet this minute — the cycle runs the ingest's own listing
step for it (:meth:`~include.woo_mirakl.orders.OrderIngest.fetch_changes`: the same cursor, the
same ledger records, the same OR11 call budget). Whoever lists first in a minute lists for both
flows, so OR11 stays within Mirakl's once-a-minute ceiling per shop and no Mirakl read is added to
a normal cycle. Each complete listing is noted with its start time next to the call budget's
times (:func:`record_listing`), so every process and worker sees the same record.

The demand a cycle subtracts is then the **store's**: units on every marketplace's open orders
that no WooCommerce order holds yet (:func:`store_demand`), so a sale on one marketplace lowers
the offers on all the others in the same cycle, not only once WooCommerce has reserved it.

Why a cycle never raises an offer Mirakl has just lowered
---------------------------------------------------------
*Sure* cycles (every marketplace of the store listed completely within ``fresh_for``): every
order placed before the listing started is in the ledger, read *before* WooCommerce's stock. It
is either still unreserved (then it is in the store demand and subtracted) or already reserved
(then WooCommerce's stock no longer counts it); if the ingest reserves it between the two reads
it is subtracted twice, which only lowers; a line the ingest refuses counts as demand until
Mirakl shows it REFUSED, so its units are given back once, by Mirakl. So the quantity sent is
WooCommerce's stock minus *every* unit sold on *any* marketplace of the store before the
listing: whatever Mirakl took off for those orders is never given back, and a sale on one
marketplace lowers the offers on all the others. Such a cycle may raise (restocks, releases).

*Unsure* cycles (a listing failed, was cut short, or could not run because the OR11 budget was
spent and no fresh listing exists: the ingest is behind): before each stock line is sent, the
offer's live quantity is read from Mirakl (OF21 by SKU, which has no published ceiling; read
at that moment even in a full comparison, whose offer export may be older than Mirakl's latest
sales), and the line may only **lower** it (:func:`allowed_quantity`):

* if this marketplace's own listing is fresh, its sales are all known, so the line is
  ``min(target, live)``;
* otherwise its unread sales are inside ``live`` (Mirakl took them off), and what Mirakl has not
  been told yet is the drop of the store's available-to-promise since the value Mirakl last
  accepted from us (``told − target``: web-shop sales, known demand elsewhere); the line is
  ``min(target, live − max(0, told − target))``. Unread sales are thus subtracted exactly once,
  by Mirakl; a known sale of this marketplace learnt since ``told`` is subtracted twice, which
  only lowers.

Either way the value sent is never above what Mirakl holds at the moment it is read. Unread
sales on *another* marketplace are not in this offer's live quantity: an unsure cycle cannot
subtract them, it only never raises; the first sure cycle does. A SKU the rule held below its
target is remembered and examined again by the next cycle, which raises it once it is sure.

The one window no choice closes: a sale placed after the listing started and before Mirakl has
applied the stock file (seconds; up to ``fresh_for`` when another flow listed) is overwritten by
the absolute STO01 quantity. The next cycle lists it and lowers the offer again; the safety
buffer covers it meanwhile.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from include.woo_mirakl.config import Marketplace, load_marketplaces

log = logging.getLogger(__name__)

# Mirakl orders whose units WooCommerce has not reserved yet when they have no WooCommerce order.
OPEN_ORDER_STATES = ("STAGING", "WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT", "SHIPPING")
# Line states in which Mirakl has given the units back to the offer.
RELEASED_LINE_STATES = ("REFUSED", "CANCELED")
DEFAULT_FRESH_FOR = timedelta(seconds=30)
_LISTING_OPERATION = "OR11"
# The listing log keeps one entry per listing and only needs the newest; older ones age out.
_LISTING_LOG = [(1_000_000, 60.0)]


def _listing_scope(marketplace: str) -> str:
    return f"listing:{marketplace}"


def record_listing(ledger: Any, marketplace: str, started: datetime) -> None:
    """Note that a complete OR11 listing of ``marketplace``'s changed orders started at ``started``.

    Kept with the call budget's times (the same clock as OR11's ceiling, shared by every worker).
    """
    ledger.acquire_call_slot(_listing_scope(marketplace), _LISTING_OPERATION, _LISTING_LOG, started)


def last_listing(ledger: Any, marketplace: str) -> datetime | None:
    """When the newest complete OR11 listing of ``marketplace`` started, if any."""
    return ledger.last_call(_listing_scope(marketplace), _LISTING_OPERATION)


def store_of(marketplace: Marketplace, configured: Iterable[Marketplace] | None = None) -> list[Marketplace]:
    """Every marketplace selling the same WooCommerce store's stock, ``marketplace`` included."""
    try:
        others = list(load_marketplaces() if configured is None else configured)
    except Exception as error:  # noqa: BLE001 - a flow built outside the configuration still works alone
        log.warning("marketplaces file unreadable (%s): %s counts only its own demand", error, marketplace.name)
        others = []
    store = [m for m in others if m.woocommerce_conn_id == marketplace.woocommerce_conn_id
             and m.name != marketplace.name]
    return [marketplace, *store]


def store_demand(ledger: Any, marketplaces: Iterable[str], states: Sequence[str] = OPEN_ORDER_STATES) -> dict[str, int]:
    """Units per SKU that Mirakl has taken off the offers of any of ``marketplaces`` and that no
    WooCommerce order holds yet, on the orders the ledger knows.

    A line counts until a WooCommerce order holds it (the order has one, and the line was not
    refused) or Mirakl has given its units back (Mirakl shows the line REFUSED or CANCELED). A
    line we decided to refuse therefore still counts until Mirakl has processed the refusal: a
    stock file in between would give its units back once, and the refusal a second time.
    """
    from sqlalchemy import func, or_, select

    from include.woo_mirakl.ledger.models import Order, OrderLine

    names = list(marketplaces)
    if not names:
        return {}
    query = (
        select(OrderLine.offer_sku, func.sum(OrderLine.quantity))
        .join(Order, Order.id == OrderLine.order_id)
        .where(
            Order.marketplace.in_(names),
            Order.mirakl_state.in_(list(states)),
            OrderLine.offer_sku.is_not(None),
            or_(OrderLine.mirakl_state.is_(None), OrderLine.mirakl_state.not_in(RELEASED_LINE_STATES)),
            or_(Order.woo_order_id.is_(None), OrderLine.decision.is_not(None) & (OrderLine.decision != "accepted")),
        )
        .group_by(OrderLine.offer_sku)
    )
    with ledger.session(write=False) as s, s.begin():
        return {sku: int(quantity or 0) for sku, quantity in s.execute(query) if quantity}


def allowed_quantity(target: int, live: int | None, told: int | None, *, sure: bool, own_fresh: bool) -> int:
    """The quantity one cycle may send for an offer whose available-to-promise is ``target``.

    ``live`` is what Mirakl holds now (None: no such offer, nothing to give back), ``told`` the
    value Mirakl last accepted from us or is applying. A sure cycle sends the target; an unsure
    one never goes above ``live`` (see the module docstring).
    """
    if sure or live is None:
        return target
    if own_fresh:
        return max(0, min(target, live))
    untold = max(0, told - target) if told is not None else 0
    return max(0, min(target, live - untold))


@dataclass(frozen=True)
class Knowledge:
    """What one inventory cycle knows of the store's marketplace demand, and how far to trust it."""

    marketplace: str
    demand: dict[str, int]
    stale: dict[str, str] = field(default_factory=dict)  # marketplace → why its orders may be unread

    @property
    def sure(self) -> bool:
        return not self.stale

    @property
    def own_fresh(self) -> bool:
        return self.marketplace not in self.stale


class DemandWatch:
    """Brings the ledger's view of the store's orders up to date for one inventory cycle.

    ``list_orders`` runs the order ingest's listing step for a marketplace (it records a complete
    listing itself); ``clock`` must be the clock of the call budgets.
    """

    def __init__(
        self,
        marketplace: Marketplace,
        ledger: Any,
        list_orders: Callable[[Marketplace], Mapping[str, int]] | None,
        *,
        store: Sequence[Marketplace] | None = None,
        clock: Callable[[], datetime],
        fresh_for: timedelta = DEFAULT_FRESH_FOR,
    ):
        self.marketplace = marketplace
        self.ledger = ledger
        self.list_orders = list_orders
        self.store = list(store) if store is not None else store_of(marketplace)
        self.clock = clock
        self.fresh_for = fresh_for

    def _fresh(self, name: str, now: datetime) -> bool:
        started = last_listing(self.ledger, name)
        return started is not None and started >= now - self.fresh_for

    def learn(self) -> Knowledge:
        """List where no fresh listing exists, then read the store's demand (before any WooCommerce read)."""
        now = self.clock()
        stale: dict[str, str] = {}
        for marketplace in self.store:
            if self._fresh(marketplace.name, now):
                continue
            reason = f"no listing of its orders in the last {int(self.fresh_for.total_seconds())} s"
            if self.list_orders is not None:
                try:
                    result = self.list_orders(marketplace)
                except Exception as error:  # noqa: BLE001 - any failure only makes the cycle unsure
                    result = {}
                    reason = f"listing its orders failed: {type(error).__name__}: {error}"
                if result.get("skipped"):
                    reason = "OR11 was called less than a minute ago and that listing is not fresh"
                elif result.get("partial"):
                    reason = "the listing of its orders was cut short"
            if not self._fresh(marketplace.name, now):
                stale[marketplace.name] = reason
        if stale:
            log.warning("%s: unsure cycle, lowering only (%s)", self.marketplace.name,
                        "; ".join(f"{name}: {why}" for name, why in stale.items()))
        demand = store_demand(self.ledger, [m.name for m in self.store])
        return Knowledge(self.marketplace.name, demand, stale)


__all__ = [
    "DEFAULT_FRESH_FOR", "OPEN_ORDER_STATES", "DemandWatch", "Knowledge", "allowed_quantity", "last_listing",
    "record_listing", "store_demand", "store_of",
]
