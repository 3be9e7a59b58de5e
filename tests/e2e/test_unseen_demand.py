"""End to end (issue 19): the stock push never gives back units Mirakl has just sold.

One marketplace, one sandbox, one ledger; the tests run in order like the minutes of one
shop's day. Orders are placed on the marketplace between two cycles, so Mirakl has already
lowered the offers while the order ingest has not read them yet.
"""
from __future__ import annotations

import pytest

from tests.e2e.stock_scenarios import (
    expected,
    ingest,
    marketplaces_file,
    next_minute,
    offers,
    place,
    push,
    woo_stock,
)

MARKETPLACE = "sandbox"
BUFFER = 1
STOCK = {"A": 25, "B": 12, "C": 6, "D": 9, "E": 4, "F": 30}
SKUS = sorted(STOCK)


@pytest.fixture(scope="module", autouse=True)
def marketplace_config(tmp_path_factory):
    with marketplaces_file(tmp_path_factory.mktemp("config"), [
        {"name": MARKETPLACE, "mirakl_conn_id": "mirakl_sandbox", "safety_buffer": BUFFER},
    ]) as path:
        yield path


@pytest.fixture(scope="module")
def shop(sandbox, ledger, airflow_env):
    """Every offer starts right (stock − buffer); the first cycle's full comparison agrees."""
    sandbox.woo.version = "10.3.0"
    with sandbox.lock:
        for sku, stock in STOCK.items():
            sandbox.woo.add_simple_product(sku, "10.00", stock)
            sandbox.mirakl.add_offer(sku, 10.0, stock - BUFFER)
    push(sandbox, ledger, MARKETPLACE)
    next_minute(sandbox, ledger)
    assert offers(sandbox, SKUS) == expected(sandbox, SKUS, {}, BUFFER)
    return sandbox


def test_orders_not_yet_ingested_are_subtracted_and_never_given_back(shop, sandbox, ledger):
    # the four orders (4, 5, 3 and 2 units), placed just before a cycle
    for index, lines in enumerate(([("A", 4)], [("B", 5), ("E", 2)], [("C", 3)])):
        place(sandbox, lines, index)
    # WooCommerce moves on meanwhile, on ordered and unordered SKUs
    sandbox.woo.direct_sale("A", 1)  # an ordered SKU sells on the web shop too
    sandbox.woo.set_stock("B", 14)  # an ordered SKU is restocked
    sandbox.woo.set_stock("C", 7)  # an ordered SKU's stock is edited
    sandbox.woo.set_stock("D", 11)  # a restock without any order
    unreserved = {"A": 4, "B": 5, "C": 3, "E": 2}
    or11_before = sandbox.log.count("mirakl", "OR11")

    summary = push(sandbox, ledger, MARKETPLACE)
    next_minute(sandbox, ledger)  # Mirakl applies the stock file

    assert offers(sandbox, SKUS) == expected(sandbox, SKUS, unreserved, BUFFER)
    assert summary["sure"] is True
    # the cycle learned of the orders from the ingest's own listing: one OR11, recorded for the ingest
    assert sandbox.log.count("mirakl", "OR11") == or11_before + 1
    assert ledger.pending_demand(MARKETPLACE, ["WAITING_ACCEPTANCE"]) == unreserved

    # the ingest then reserves them in WooCommerce: every offer still shows the same, nothing is given back
    assert ingest(sandbox, ledger, MARKETPLACE) == "success"
    assert woo_stock(sandbox, "A") == 25 - 1 - 4
    push(sandbox, ledger, MARKETPLACE)
    next_minute(sandbox, ledger)
    assert offers(sandbox, SKUS) == expected(sandbox, SKUS, {}, BUFFER)


def test_a_cycle_whose_listing_fails_lowers_but_never_raises(shop, sandbox, ledger):
    next_minute(sandbox, ledger)
    placed = [place(sandbox, [("A", 3)], 0), place(sandbox, [("C", 2), ("F", 5)], 1)]
    sandbox.woo.direct_sale("A", 2)  # an ordered SKU sells on the web shop: must go down by both
    sandbox.woo.set_stock("F", 40)  # an ordered SKU is restocked: unsure, so not raised yet
    sandbox.woo.set_stock("D", 20)  # a restock without any order: unsure, so not raised yet
    unreserved = {"A": 3, "C": 2, "F": 5}
    before = offers(sandbox, SKUS)

    sandbox.faults.set([{"service": "mirakl", "operation": "OR11", "status": 500}])
    try:
        ingest(sandbox, ledger, MARKETPLACE)  # OR11 answers 500: the ingest reads nothing this minute
        summary = push(sandbox, ledger, MARKETPLACE)
        assert all(ledger.get_order(MARKETPLACE, order_id) is None for order_id in placed)
    finally:
        sandbox.faults.clear()
    next_minute(sandbox, ledger)

    due = expected(sandbox, SKUS, unreserved, BUFFER)
    after = offers(sandbox, SKUS)
    assert summary["sure"] is False
    # below their WooCommerce figure, so examined again by the next cycle: D and F wait for a sure one
    assert ledger.get_cursor("mirakl_inventory_push", MARKETPLACE, "held_back") == ["A", "D", "F"]
    assert after == {sku: min(due[sku], before[sku]) for sku in SKUS}  # lowered where due, raised nowhere
    assert after["A"] == due["A"] == woo_stock(sandbox, "A") - 3 - BUFFER
    assert after["F"] == before["F"] < due["F"] and after["D"] == before["D"] < due["D"]

    # the next minute the ingest reads the orders again: a sure cycle, every offer as due, raises included
    assert ingest(sandbox, ledger, MARKETPLACE) == "success"
    summary = push(sandbox, ledger, MARKETPLACE)
    next_minute(sandbox, ledger)
    assert summary["sure"] is True and summary["held_back"] == 0
    assert offers(sandbox, SKUS) == expected(sandbox, SKUS, {}, BUFFER)
    assert woo_stock(sandbox, "F") == 40 - 5


def test_an_unsure_full_comparison_lowers_but_never_raises(shop, sandbox, ledger):
    next_minute(sandbox, ledger)
    placed = place(sandbox, [("B", 3), ("E", 1)], 2)
    sandbox.woo.set_stock("B", 20)  # a restock of an ordered SKU
    with sandbox.lock:
        sandbox.mirakl.store.offers["C"]["quantity"] += 4  # drift upwards on Mirakl: lowered back at once
    unreserved = {"B": 3, "E": 1}
    before = offers(sandbox, SKUS)

    sandbox.faults.set([{"service": "mirakl", "operation": "OR11", "status": 500}])
    try:
        summary = push(sandbox, ledger, MARKETPLACE, {"full": True})
    finally:
        sandbox.faults.clear()
    next_minute(sandbox, ledger)

    assert summary["full"] is True and summary["sure"] is False
    assert ledger.get_order(MARKETPLACE, placed) is None
    due = expected(sandbox, SKUS, unreserved, BUFFER)
    assert offers(sandbox, SKUS) == {sku: min(due[sku], before[sku]) for sku in SKUS}
    assert offers(sandbox, ["C"]) == {"C": due["C"]}

    assert ingest(sandbox, ledger, MARKETPLACE) == "success"
    push(sandbox, ledger, MARKETPLACE)
    next_minute(sandbox, ledger)
    assert offers(sandbox, SKUS) == expected(sandbox, SKUS, {}, BUFFER)


def test_the_call_log_shows_no_ceiling_exceeded(sandbox):
    from datetime import datetime

    from include.woo_mirakl.budgets import default_limits

    limits = default_limits()
    # OF52's ceiling is per variant: a full export once a day, a differential once a minute
    calls: dict[tuple[str, str | None], list[datetime]] = {}
    for entry in sandbox.log.entries("mirakl"):
        calls.setdefault((entry["operation"], entry.get("variant")), []).append(
            datetime.fromisoformat(entry["at"].replace("Z", "+00:00")))
    assert calls[("OR11", None)] and calls[("STO01", None)]
    for (operation, variant), times in calls.items():
        for max_calls, window in limits.windows(operation, variant):
            for i, start in enumerate(times):
                inside = [t for t in times[i:] if (t - start).total_seconds() < window]
                assert len(inside) <= max_calls, (operation, max_calls, window, inside)
