"""Reading a whole WooCommerce collection with a few pages in flight at once.

A real store takes about half a second per page of 100 (``woocommerce-real/README.md``,
"Speed"): a catalogue of 100,000 items is a thousand pages, eight minutes one after the other.
The first page says how many there are (``X-WP-TotalPages``); the others are then fetched by a
small bounded pool, so the store is never hit by more than ``pool`` requests from one flow.
Pages come back in page order, so callers see the items as a sequential read would give them.

Each worker has its own HTTP session (``requests.Session`` is not thread-safe) with the
client's authentication, retries and redaction.
"""
from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import requests

from include.woo_mirakl.clients.woocommerce import API_PREFIX, PER_PAGE

DEFAULT_POOL = 3


def _clone(woo: Any) -> Any:
    """The client with a session of its own (same auth, headers, query-string auth)."""
    twin = copy.copy(woo)
    session = requests.Session()
    session.headers.update(woo.session.headers)
    session.auth = woo.session.auth
    session.params = copy.copy(woo.session.params)
    session.verify = woo.session.verify
    twin.session = session
    return twin


def iter_pages_pooled(woo: Any, path: str, operation: str, params: Mapping[str, Any] | None = None,
                      pool: int = DEFAULT_POOL) -> Iterator[dict]:
    """Every item of a collection ordered by id (each once), pages 2..N fetched ``pool`` at a time.

    Items created during the read land on later pages and change nothing. An item leaving the
    set (deleted, unpublished) moves the later ones towards the start, so one could be skipped:
    a page whose ``X-WP-Total`` is below the first page's shows it, and the collection is then
    read again sequentially for the items not yet seen. With ``pool`` 1 this is the sequential read.
    """
    if pool <= 1:
        yield from woo.iter_pages(path, operation, params)
        return
    base = {**(params or {}), "per_page": PER_PAGE}
    first = woo.request("GET", API_PREFIX + path, operation, params={**base, "page": 1})
    total = int(first.headers.get("X-WP-Total") or 0)
    pages = int(first.headers.get("X-WP-TotalPages") or 1)
    seen: set[Any] = set()
    for item in first.body or []:
        seen.add(item.get("id"))
        yield item
    if pages <= 1 or not first.body:
        return
    local = threading.local()
    shrank = False

    def fetch(page: int) -> tuple[int, list[dict]]:
        if not hasattr(local, "client"):
            local.client = _clone(woo)
        reply = local.client.request("GET", API_PREFIX + path, operation, params={**base, "page": page})
        return int(reply.headers.get("X-WP-Total") or total), reply.body or []

    with ThreadPoolExecutor(max_workers=pool, thread_name_prefix="woo-page") as executor:
        pending: list = []  # at most 2 x pool pages held: submitted ahead of the one being read
        next_page = 2
        while next_page <= pages or pending:
            while next_page <= pages and len(pending) < 2 * pool:
                pending.append(executor.submit(fetch, next_page))
                next_page += 1
            page_total, items = pending.pop(0).result()
            shrank = shrank or page_total < total
            for item in items:
                if item.get("id") not in seen:
                    seen.add(item.get("id"))
                    yield item
    if shrank:
        for item in woo.iter_pages(path, operation, params):
            if item.get("id") not in seen:
                seen.add(item.get("id"))
                yield item
