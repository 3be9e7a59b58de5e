"""Transaction lines through Mirakl's asynchronous export (TL03 request, TL04 status, TL05 files).

TL02 allows 60 pages of 2,000 lines an hour: a day of a million lines would take 8 hours of
it. TL03 may run once a day but exports any volume; its chunks (NDJSON) are read one at a time
and each line goes into a compact typed frame as it is parsed, so the raw lines are never held
as Python objects, not even a chunk's.

The tracking id is kept in the ledger before the first status call: a retried task follows
the export it already asked for instead of asking again (which the once-a-day ceiling would
refuse anyway).
"""
from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

from include.woo_mirakl.async_export import wait_completed
from include.woo_mirakl.clients.http import ApiError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

EXPORT_TIMEOUT = 3 * 3600.0
ITEMS_PER_CHUNK = 100_000


def read_transaction_export(
    mirakl: Any,
    ledger: Any,
    flow: str,
    marketplace: str,
    key: str,
    *,
    date_created_from: datetime,
    date_created_to: datetime,
    new_since: datetime,
    sleep: Callable[[float], None] = time.sleep,
    timeout: float = EXPORT_TIMEOUT,
) -> tuple["pd.DataFrame", list[str]]:
    """The exported lines as one frame, and the ids of orders created at or after ``new_since``.

    ``key`` names the export in the ledger (one per reconciled day).
    """
    from include.woo_mirakl.reconciliation import concat_lines, transactions_frame

    cursor = f"tl03:{key}"
    tracking_id = ledger.get_cursor(flow, marketplace, cursor, default=None)
    status = _status(mirakl, tracking_id) if tracking_id else None
    if status is None or status.failed:
        if status is not None:
            log.warning("%s: export %s %s (%s); asking again", marketplace, tracking_id, status.status, status.error)
        tracking_id = mirakl.request_transaction_export(
            date_created_from=date_created_from, date_created_to=date_created_to, items_per_chunk=ITEMS_PER_CHUNK,
            export_format="NDJSON")
        ledger.set_cursor(flow, marketplace, cursor, tracking_id)
        status = mirakl.transaction_export_status(tracking_id)
    status = wait_completed(mirakl.transaction_export_status, tracking_id, "TL03", first=status, sleep=sleep,
                            timeout=timeout)
    frames, new_orders, created = [], set(), {}
    for url in status.urls:
        # each item is read once, as parsed: its row for the frame, its order if new
        rows = mirakl.iter_export_file(url, "TL05", exact=True)  # amounts as Decimal, never float
        frames.append(transactions_frame(_noting_new_orders(rows, new_since, created, new_orders)))
    log.info("%s: export %s gave %d lines in %d files", marketplace, tracking_id,
             sum(len(f) for f in frames), len(frames))
    return concat_lines(frames), sorted(new_orders)


def _status(mirakl: Any, tracking_id: str) -> Any:
    try:
        return mirakl.transaction_export_status(tracking_id)
    except ApiError as error:
        if error.status == 404:  # expired or unknown: ask for a new one
            return None
        raise


def orders_created_since(rows: Iterable[dict], since: datetime) -> set[str]:
    """Orders whose creation date (``entities.order.creation_date``) is at or after ``since``.

    No line of such an order predates ``since``: its history up to the day's end is its lines of
    the day, which spares a TL02 call per hundred orders. An order without a creation date is
    never counted as new.
    """
    out: set[str] = set()
    for _ in _noting_new_orders(rows, since, {}, out):
        pass
    return out


def _noting_new_orders(rows: Iterable[dict], since: datetime, created: dict[Any, bool],
                       out: set[str]) -> Iterator[dict]:
    """``rows`` passed through, adding to ``out`` the orders created at or after ``since``;
    ``created`` remembers each creation date's answer (many lines share an order and its date)."""
    from include.woo_mirakl.clients.mirakl_models import parse_datetime

    for row in rows:
        order = (row.get("entities") or {}).get("order") or {}
        stamp = order.get("creation_date")
        if stamp not in created:
            moment = parse_datetime(stamp)
            created[stamp] = moment is not None and moment >= since
        if created[stamp] and order.get("id"):
            out.add(str(order["id"]))
        yield row
