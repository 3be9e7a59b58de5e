"""Mirakl's offers for the full comparison, through the asynchronous offer export (OF52–OF54).

OF21 is a page-view operation: reading 100,000 offers through it is a thousand sequential
calls. OF52 exports any number of offers in a few chunks, but a *full* export is allowed once
a day; a *differential* one (offers changed since a date, deleted ones included) once a minute.
So the offers are kept in the ledger as a snapshot (SKU → quantity, price): one full export a
day rebuilds it, and each comparison in between applies a differential export to it.

The comparison that uses the snapshot still reads every WooCommerce item: only Mirakl's side is
incremental, and it is exact because every change to an offer moves its ``last_updated``.
"""
from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Callable

from include.woo_mirakl.async_export import wait_completed
from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.mirakl_models import parse_datetime, to_decimal

log = logging.getLogger(__name__)

SNAPSHOT = "offer_snapshot"
FULL_EVERY = timedelta(days=1)
MIN_INTERVAL = timedelta(minutes=1)
# Mirakl's clock and ours may differ: a differential export starts this long before the last one.
SKEW = timedelta(minutes=2)

Offers = dict[str, tuple[int | None, Decimal | None]]


def _price(item: dict) -> Decimal | None:
    """The offer's own price: the first price without a channel, group or date context."""
    prices = [p for p in item.get("prices") or [] if isinstance(p, dict)]
    plain = next((p for p in prices if not p.get("context")), prices[0] if prices else None)
    if plain is None:
        return to_decimal(item.get("price"))
    return to_decimal(plain.get("origin_price"))


def _quantity(item: dict) -> int | None:
    value = item.get("quantity")
    return int(value) if value not in (None, "") else None


def read_offers(mirakl: Any, ledger: Any, flow: str, marketplace: str, now: datetime, *,
                sleep: Callable[[float], None] = time.sleep) -> Offers:
    """Every live offer of the shop: SKU → (quantity, price), from the export and the snapshot."""
    state = ledger.get_cursor(flow, marketplace, SNAPSHOT, default=None) or {}
    full_at = parse_datetime(state.get("full_at"))
    full = not state or full_at is None or now - full_at >= FULL_EVERY
    as_of = parse_datetime(state.get("as_of"))
    if not full and as_of is not None and now - as_of < MIN_INTERVAL:
        # the safe reading of "differential once a minute": any OF52 within the minute counts
        return _offers(state)
    since = None if full else as_of - SKEW
    try:
        tracking_id = mirakl.request_offer_export(last_request_date=since)
    except BudgetExceeded as exceeded:
        if full or not state:
            raise
        # a differential a minute ago: the snapshot is at most that old
        log.info("%s: OF52 used less than a minute ago (%s); comparing with the snapshot", marketplace, exceeded)
        return _offers(state)
    status = wait_completed(mirakl.offer_export_status, tracking_id, "OF52", sleep=sleep)
    offers: Offers = {} if full else _offers(state)
    changed = 0
    for url in status.urls:
        for item in mirakl.iter_export_file(url, "OF54"):
            sku = item.get("shop_sku")
            if not sku:
                continue
            changed += 1
            if item.get("deleted"):
                offers.pop(sku, None)
            else:
                offers[sku] = (_quantity(item), _price(item))
    log.info("%s: OF52 %s export: %d offers read, %d in the snapshot", marketplace,
             "full" if full else "differential", changed, len(offers))
    ledger.set_cursor(flow, marketplace, SNAPSHOT, {
        "as_of": now.isoformat(), "full_at": now.isoformat() if full else state["full_at"],
        "offers": {sku: [q, None if p is None else str(p)] for sku, (q, p) in offers.items()},
    })
    return offers


def _offers(state: dict) -> Offers:
    return {sku: (q, None if p is None else Decimal(p)) for sku, (q, p) in (state.get("offers") or {}).items()}
