"""End to end (issue 19): demand on one marketplace lowers the offers on the others in the same cycle.

One WooCommerce store sells on two Mirakl marketplaces, each with its own shop (a second
simulated Mirakl, on the same clock) and its own safety buffer. Orders are placed on both
between two cycles and none has been read by the order ingest yet.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.e2e.stock_scenarios import (
    expected,
    ingest,
    marketplaces_file,
    next_minute,
    offers,
    place,
    push,
)

BUFFERS = {"sandbox": 1, "second": 2}
STOCK = {"A": 20, "B": 10, "C": 5, "D": 8, "E": 12}
SKUS = sorted(STOCK)


@pytest.fixture(scope="module", autouse=True)
def marketplace_config(tmp_path_factory):
    with marketplaces_file(tmp_path_factory.mktemp("config"), [
        {"name": "sandbox", "mirakl_conn_id": "mirakl_sandbox", "safety_buffer": BUFFERS["sandbox"]},
        {"name": "second", "mirakl_conn_id": "mirakl_second", "safety_buffer": BUFFERS["second"]},
    ]) as path:
        yield path


@pytest.fixture(scope="module")
def second(sandbox, airflow_env):
    """The second marketplace's Mirakl shop, on the first sandbox's clock, and its connection."""
    from include.sandbox.core import Sandbox

    box = Sandbox(seed=8, clock=sandbox.clock, validate_requests=True).start()
    os.environ["AIRFLOW_CONN_MIRAKL_SECOND"] = json.dumps({
        "conn_type": "mirakl", "host": box.mirakl_url, "password": box.mirakl.api_key,
        "extra": {"shop_id": str(box.mirakl.shop_id), "retry_base_delay": 0.05, "timeout": 5},
    })
    yield box
    os.environ.pop("AIRFLOW_CONN_MIRAKL_SECOND", None)
    box.stop()


@pytest.fixture(scope="module")
def shops(sandbox, second, ledger):
    sandbox.woo.version = "10.3.0"
    with sandbox.lock:
        for sku, stock in STOCK.items():
            sandbox.woo.add_simple_product(sku, "10.00", stock)
    for name, box in (("sandbox", sandbox), ("second", second)):
        with box.lock:
            for sku, stock in STOCK.items():
                box.mirakl.add_offer(sku, 10.0, stock - BUFFERS[name])
    boxes = {"sandbox": sandbox, "second": second}
    cycle(sandbox, ledger, boxes)
    assert_every_offer_due(sandbox, boxes, {})
    return boxes


def cycle(sandbox, ledger, boxes) -> dict[str, dict]:
    """Both marketplaces' inventory cycles in the same minute; then Mirakl applies the files."""
    summaries = {name: push(sandbox, ledger, name) for name in boxes}
    next_minute(sandbox, ledger, boxes["second"])
    return summaries


def assert_every_offer_due(sandbox, boxes, unreserved: dict[str, int]) -> None:
    for name, box in boxes.items():
        assert offers(box, SKUS) == expected(sandbox, SKUS, unreserved, BUFFERS[name]), name


def test_demand_on_either_marketplace_lowers_the_offers_on_both(sandbox, ledger, shops):
    place(sandbox, [("A", 3), ("C", 2)], 0)
    place(shops["second"], [("A", 2), ("B", 4)], 1)
    place(shops["second"], [("C", 1)], 2)
    sandbox.woo.direct_sale("B", 1)
    sandbox.woo.set_stock("D", 10)  # a restock, sold nowhere
    unreserved = {"A": 5, "B": 4, "C": 3}

    summaries = cycle(sandbox, ledger, shops)

    assert_every_offer_due(sandbox, shops, unreserved)
    assert all(s["sure"] for s in summaries.values()), summaries

    # once the ingests have reserved everything in WooCommerce, nothing moves back up
    for name in shops:
        assert ingest(sandbox, ledger, name) == "success"
    cycle(sandbox, ledger, shops)
    assert_every_offer_due(sandbox, shops, {})


def test_a_marketplace_whose_listing_fails_makes_every_cycle_of_the_store_lower_only(sandbox, ledger, shops):
    second = shops["second"]
    place(sandbox, [("E", 2)], 0)
    unread = place(second, [("A", 4)], 1)
    sandbox.woo.direct_sale("E", 1)
    sandbox.woo.set_stock("D", 14)  # a restock: must wait for a cycle that has heard from both marketplaces
    before = {name: offers(box, SKUS) for name, box in shops.items()}

    second.faults.set([{"service": "mirakl", "operation": "OR11", "status": 500}])
    try:
        ingest(sandbox, ledger, "second")  # OR11 answers 500: nothing is read from the second marketplace
        summaries = cycle(sandbox, ledger, shops)
        assert ledger.get_order("second", unread) is None
    finally:
        second.faults.clear()

    after = {name: offers(box, SKUS) for name, box in shops.items()}
    for name in shops:
        raised = {sku for sku in SKUS if after[name][sku] > before[name][sku]}
        assert raised == set(), (name, raised)
    assert not any(s["sure"] for s in summaries.values()), summaries
    # what the ledger knows still lowers both: E sold on the web shop and on the first marketplace
    known = expected(sandbox, ["E"], {"E": 2}, 0)["E"]
    assert after["sandbox"]["E"] == known - BUFFERS["sandbox"] and after["second"]["E"] == known - BUFFERS["second"]

    for name in shops:
        assert ingest(sandbox, ledger, name) == "success"
    summaries = cycle(sandbox, ledger, shops)
    assert all(s["sure"] for s in summaries.values()), summaries
    assert_every_offer_due(sandbox, shops, {})
