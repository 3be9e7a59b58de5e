"""Helpers for the end-to-end tests of marketplace demand that the order ingest has not read yet.

The rule every test checks: each offer shows ``max(0, WooCommerce stock − units sold on any
marketplace of the store and not yet reserved in WooCommerce − the marketplace's buffer)``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import yaml

from include.sandbox.scenarios import customer
from tests.e2e.conftest import advance, load_dag, run_dag

NO_DEBIT = 10 * 86400  # the operator debits only when a test says so


@contextmanager
def marketplaces_file(directory: Path, entries: list[dict]) -> Iterator[Path]:
    """Point ``WOO_MIRAKL_MARKETPLACES`` at a file listing ``entries`` (one WooCommerce store)."""
    path = directory / "marketplaces.yaml"
    path.write_text(yaml.safe_dump({"marketplaces": [
        {"woocommerce_conn_id": "woocommerce_default", "price_rule": {"markup_percent": "0", "rounding": "0.01"},
         **entry} for entry in entries]}))
    saved = os.environ.get("WOO_MIRAKL_MARKETPLACES")
    os.environ["WOO_MIRAKL_MARKETPLACES"] = str(path)
    try:
        yield path
    finally:
        if saved is None:
            os.environ.pop("WOO_MIRAKL_MARKETPLACES", None)
        else:
            os.environ["WOO_MIRAKL_MARKETPLACES"] = saved


def place(mirakl_sandbox, lines: list[tuple[str, int]], index: int = 0) -> str:
    """A customer orders on the marketplace: Mirakl lowers the offers at once."""
    with mirakl_sandbox.lock:
        return mirakl_sandbox.mirakl.place_order(
            lines=[{"offer_sku": sku, "quantity": qty} for sku, qty in lines], customer=customer(index),
            debit_delay_s=NO_DEBIT,
        )["order_id"]


def offers(mirakl_sandbox, skus) -> dict[str, int]:
    with mirakl_sandbox.lock:
        return {sku: mirakl_sandbox.mirakl.offer(sku)["quantity"] for sku in skus}


def woo_stock(sandbox, sku: str) -> int:
    return sandbox.woo.product_by_sku(sku)["stock_quantity"]


def expected(sandbox, skus, unreserved: dict[str, int], buffer: int) -> dict[str, int]:
    """What every offer must show: stock − unreserved marketplace units − buffer, never below 0."""
    return {sku: max(0, woo_stock(sandbox, sku) - unreserved.get(sku, 0) - buffer) for sku in skus}


def push(sandbox, ledger, marketplace: str, conf: dict | None = None) -> dict:
    """One inventory cycle of ``marketplace``; returns what the cycle recorded."""
    run = run_dag(f"mirakl_inventory_push__{marketplace}", conf)
    assert run.state == "success", run.state
    return ledger.get_cursor("mirakl_inventory_push", marketplace, "last_cycle")


def ingest(sandbox, ledger, marketplace: str) -> str:
    """One order-ingest run of ``marketplace``; returns its state (it may fail on purpose).

    Airflow's own task retries are off: a failing listing fails this run, as it would until
    the retries ran out.
    """
    dag = load_dag(f"mirakl_order_ingest__{marketplace}")
    for task in dag.tasks:
        task.retries = 0
    return dag.test().state


def next_minute(sandbox, ledger, *others) -> None:
    """A minute passes: call budgets reopen and the sandboxes apply finished imports."""
    advance(sandbox, ledger, 61)
    for box in (sandbox, *others):
        box.tick()
