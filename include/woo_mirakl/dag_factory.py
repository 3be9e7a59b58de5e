"""One factory that turns a business flow into one DAG per marketplace.

A DAG file describes its flow once, as a function that adds tasks for a marketplace;
:func:`marketplace_dags` builds ``<flow>__<marketplace>`` for every marketplace in the
configuration, with the project's common contract (owner, retries, one run at a time,
no catch-up, tags). Parsing stays cheap: no network, no database, no heavy imports.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any, Callable

from airflow.sdk import DAG

from include.woo_mirakl.config import Marketplace, load_marketplaces

OWNER = "woo-mirakl"
START_DATE = datetime(2026, 1, 1, tzinfo=timezone.utc)

DEFAULT_ARGS: dict[str, Any] = {
    "owner": OWNER,
    "retries": 3,
    "retry_delay": timedelta(seconds=30),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=10),
    "execution_timeout": timedelta(minutes=30),
}


def dag_id(flow: str, marketplace: Marketplace | str) -> str:
    name = marketplace if isinstance(marketplace, str) else marketplace.name
    return f"{flow}__{name}"


def marketplace_dags(
    flow: str,
    build: Callable[[Marketplace], None],
    *,
    schedule: str | None,
    doc_md: str | None = None,
    tags: list[str] | None = None,
    max_active_runs: int = 1,
    catchup: bool = False,
    **dag_kwargs: Any,
) -> dict[str, DAG]:
    """Build ``<flow>__<marketplace>`` for each configured marketplace.

    The DAG file assigns the result into its globals so Airflow discovers each DAG.
    """
    from include.woo_mirakl.alerts import failure_callbacks, success_callbacks

    dags: dict[str, DAG] = {}
    for marketplace in load_marketplaces():
        # Every task ends by alerting the critical exceptions it raised (failed tasks too).
        default_args = {**DEFAULT_ARGS, "on_failure_callback": failure_callbacks(marketplace.name),
                        "on_success_callback": success_callbacks(marketplace.name)}
        with DAG(
            dag_id=dag_id(flow, marketplace),
            schedule=marketplace.schedule(flow, schedule),
            start_date=START_DATE,
            catchup=catchup,
            max_active_runs=max_active_runs,
            default_args=default_args,
            doc_md=doc_md,
            tags=["woo-mirakl", f"marketplace:{marketplace.name}", *(tags or [])],
            **dag_kwargs,
        ) as dag:
            build(marketplace)
        dags[dag.dag_id] = dag
    return dags
