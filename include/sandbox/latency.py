"""How long each route of the sandbox takes to answer, so benches see a real store's pace.

The WooCommerce figures are the real WooCommerce 10.0.2 store's recorded timings
(``reference/woocommerce-real/``: the transcripts' ``elapsed_s`` medians per route, and the
README's "Speed" section for how list answers grow with their size: ``products?sku=<50 SKUs>``
0.54 s, ``per_page=100`` 0.56 s, 0.29 s / 0.35 s with ``_fields``, one SKU 0.05 s, a batch
creating 50 products 7–10 s). Nothing was recorded for Mirakl; its figures are an assumption
(a hosted API a continent away: 0.15 s a call, more for files), stated so it can be argued with.

A profile is off unless asked for: tests run without it (they must never wait); benches turn
it on. The delay is slept *outside* the sandbox lock, so concurrent requests overlap as they
would on a real server, and it is charged after the handler ran, so a large answer costs
what its size costs.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

# (base seconds, seconds per item in the answer or the batch); medians of the real store.
WOO_REAL_STORE: dict[str, tuple[float, float]] = {
    "woo.products.list": (0.05, 0.0051),  # per_page=100: 0.56 s; ?sku= lists are dearer, see below
    "woo.products.get": (0.071, 0.0),
    "woo.products.create": (0.131, 0.0),
    "woo.products.update": (0.131, 0.0),
    "woo.products.delete": (0.075, 0.0),
    "woo.products.batch": (0.08, 0.17),  # 50 creations 7-10 s
    "woo.variations.list": (0.05, 0.0051),
    "woo.variations.all": (0.05, 0.0051),
    "woo.variations.get": (0.071, 0.0),
    "woo.variations.create": (0.11, 0.0),
    "woo.variations.update": (0.228, 0.0),
    "woo.variations.batch": (0.08, 0.17),
    "woo.orders.list": (0.066, 0.017),  # 9 recorded lists: 0.07-0.38 s for 1-10 orders
    "woo.orders.get": (0.158, 0.0),
    "woo.orders.create": (0.316, 0.0),
    "woo.orders.update": (0.352, 0.0),
    "woo.orders.batch": (0.08, 0.316),  # no recording: each order costs what one creation costs
    "woo.notes.list": (0.062, 0.0),
    "woo.notes.create": (0.229, 0.0),
    "woo.refunds.list": (0.121, 0.0),
    "woo.refunds.all": (0.121, 0.0),
    "woo.refunds.create": (0.252, 0.0),
    "woo.fulfillments.list": (0.167, 0.0),
    "woo.tracking.list": (0.213, 0.0),
    "woo.tracking.create": (0.213, 0.0),
    "woo.system_status": (0.143, 0.0),
}
WOO_SKU_SEARCH = (0.05, 0.0098)  # products?sku=<50 SKUs>: 0.54 s
FIELDS_SHARE = 0.55  # _fields answers take ~0.29/0.54 and 0.35/0.56 of the full answer's time
WOO_DEFAULT = (0.1, 0.0)
WOO_CONCURRENCY = 4

# Mirakl: assumed (no recording). Files are dearer per megabyte downloaded.
MIRAKL_DEFAULT = (0.15, 0.0)
MIRAKL_ROUTES = {"OR11": (0.15, 0.003)}  # a page of 100 orders is ~0.3 MB of JSON
MIRAKL_PER_MB = 0.05


@dataclass
class LatencyProfile:
    """Seconds each answer takes: ``delay(service, operation, request, response)``."""

    woo: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(WOO_REAL_STORE))
    mirakl: dict[str, tuple[float, float]] = field(default_factory=lambda: dict(MIRAKL_ROUTES))
    scale: float = 1.0  # 0 turns it off; benches may shrink it while developing
    # A small store's PHP workers: at most this many WooCommerce requests are worked on at once
    # (an assumption; more would be kinder than most shared hostings). Mirakl: no such limit.
    woo_concurrency: int = WOO_CONCURRENCY
    sleep: Callable[[float], None] = time.sleep
    _slots: Any = field(default=None, init=False, repr=False)

    def wait(self, service: str, operation: str, request: Any, response: Any) -> float:
        """Hold the answer back for as long as the real service would take; returns the delay."""
        seconds = self.delay(service, operation, request, response)
        if seconds <= 0:
            return 0.0
        if service != "woo":
            self.sleep(seconds)
            return seconds
        if self._slots is None:
            self._slots = threading.BoundedSemaphore(self.woo_concurrency)
        with self._slots:
            self.sleep(seconds)
        return seconds

    @classmethod
    def real_store(cls, scale: float = 1.0) -> "LatencyProfile":
        return cls(scale=scale)

    def delay(self, service: str, operation: str, request: Any, response: Any) -> float:
        if self.scale <= 0:
            return 0.0
        body = getattr(response, "body", None)
        if service == "woo":
            base, per_item = self.woo.get(operation, WOO_DEFAULT)
            items = _items(body)
            if operation == "woo.products.list" and request.arg("sku"):
                base, per_item = WOO_SKU_SEARCH
            if operation.endswith(".batch"):
                items = _batch_size(request)
            seconds = base + per_item * items
            if request.arg("_fields"):
                seconds = base + (seconds - base) * FIELDS_SHARE
            return seconds * self.scale
        base, per_item = self.mirakl.get(operation, MIRAKL_DEFAULT)
        size = len(body) if isinstance(body, (bytes, str)) else 0
        return (base + per_item * _items(body) + MIRAKL_PER_MB * size / 2**20) * self.scale


def _items(body: Any) -> int:
    if isinstance(body, list):
        return len(body)
    if isinstance(body, dict):  # Mirakl wraps lists: {"orders": [...], "total_count": n}
        return max((len(v) for v in body.values() if isinstance(v, list)), default=0)
    return 0


def _batch_size(request: Any) -> int:
    try:
        data = request.json() or {}
    except ValueError:
        return 0
    return sum(len(data.get(k) or []) for k in ("create", "update", "delete")) if isinstance(data, dict) else 0
