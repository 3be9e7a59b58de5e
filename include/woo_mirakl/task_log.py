"""Lines written for the person reading a task's log (a dry-run plan, a verify report, a business date).

Logged from the task process, one record per line, rather than printed: Airflow's supervisor
timestamps printed lines when it reads them, so they can sort after the task's own last records
and land inside the collapsed "Post Execute" group of the log view, where nobody looks.
"""
from __future__ import annotations

import logging

log = logging.getLogger("woo_mirakl.report")


def tell(text: str) -> None:
    for line in text.splitlines():
        log.info("%s", line)
