"""Waiting for one of Mirakl's asynchronous exports (TL03 → TL04, OF52 → OF53) to complete.

The status calls are published at "every 10 seconds" at most; the first is made at once (a
small export is often ready), the next ones 10 seconds apart.
"""
from __future__ import annotations

import time
from typing import Any, Callable

POLL_EVERY = 10.0


class ExportFailed(RuntimeError):
    """Mirakl reported the export FAILED or CANCELED, or it did not complete in time."""


def wait_completed(status: Callable[[str], Any], tracking_id: str, what: str, *, first: Any = None,
                   sleep: Callable[[float], None] = time.sleep, timeout: float = 3 * 3600.0) -> Any:
    """Poll ``status(tracking_id)`` until COMPLETED; returns that status (with the chunks' URLs)."""
    current = first if first is not None else status(tracking_id)
    waited = 0.0
    while not current.completed:
        if current.failed:
            raise ExportFailed(f"{what} export {tracking_id} {current.status}: {current.error or 'no detail'}")
        if waited >= timeout:
            raise ExportFailed(f"{what} export {tracking_id} still {current.status} after {waited:.0f} s")
        sleep(POLL_EVERY)
        waited += POLL_EVERY
        current = status(tracking_id)
    return current
