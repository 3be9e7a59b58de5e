"""``order_listing.changes: export`` end to end (issue #16): OR11 spends its once-a-minute slot on
orders awaiting acceptance; every other change comes from the order export (OR13 → OR14 → OR15).

The tests run in file order on one sandbox: a few orders, then a backlog larger than a page, then
a failing export.
"""
from __future__ import annotations

from collections import Counter

import pytest
import yaml

from include.sandbox.scenarios import customer
from tests.e2e.conftest import ROOT, advance, assert_within_ceilings, fail_record, run_dag

DAG_ID = "mirakl_order_ingest__sandbox"
MINUTE = 61
NO_DEBIT = 10 * 86400

pytestmark = pytest.mark.usefixtures("airflow_env", "export_mode")


@pytest.fixture(scope="module")
def export_mode(tmp_path_factory):
    data = yaml.safe_load((ROOT / "include" / "config" / "marketplaces.yaml").read_text())
    data["marketplaces"][0]["order_listing"]["changes"] = "export"
    path = tmp_path_factory.mktemp("export-mode") / "marketplaces.yaml"
    path.write_text(yaml.safe_dump(data))
    mp = pytest.MonkeyPatch()
    mp.setenv("WOO_MIRAKL_MARKETPLACES", str(path))
    yield path
    mp.undo()


def run(sandbox, ledger, seconds: float = MINUTE):
    advance(sandbox, ledger, seconds)
    return run_dag(DAG_ID)


def place(sandbox, sku: str, index: int = 0, quantity: int = 1) -> str:
    with sandbox.lock:
        return sandbox.mirakl.place_order([{"offer_sku": sku, "quantity": quantity}], customer=customer(index),
                                          debit_delay_s=NO_DEBIT)["order_id"]


def state(sandbox, order_id: str) -> str:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)["order_state"]


def woo_order(sandbox, order_id: str) -> dict | None:
    found = [o for o in sandbox.woo.orders()
             if any(m["key"] == "_mirakl_order_id" and m["value"] == order_id for m in o["meta_data"])]
    assert len(found) <= 1, f"{order_id} has {len(found)} WooCommerce orders"
    return found[0] if found else None


def or21_counts(sandbox) -> Counter:
    return Counter(e["path"].split("/")[3] for e in sandbox.log.entries("mirakl", "OR21"))


@pytest.fixture(scope="module")
def sku(sandbox):
    sandbox.woo.add_simple_product("EXP-A", "12.00", 10_000)
    with sandbox.lock:
        sandbox.mirakl.add_offer("EXP-A", 12.0, 10_000)
    return "EXP-A"


def test_listings_read_only_waiting_orders_and_shipping_comes_through_the_export(sandbox, ledger, sku):
    orders = [place(sandbox, sku, i) for i in range(3)]
    assert run(sandbox, ledger).state == "success"
    assert {state(sandbox, o) for o in orders} == {"WAITING_DEBIT_PAYMENT"}
    listings = sandbox.log.entries("mirakl", "OR11")
    assert listings and all(e["query"].get("order_state_codes") == ["WAITING_ACCEPTANCE"] for e in listings)
    assert len(sandbox.log.entries("mirakl", "OR13")) == 1  # the first export covers the look-back

    with sandbox.lock:  # the operator debits two customers: their orders reach SHIPPING
        for order_id in orders[:2]:
            sandbox.mirakl.debit(order_id)
    # The first export's snapshot (taken before OR21) says WAITING_ACCEPTANCE: it is read next run
    # and must not have the orders decided and answered a second time.
    assert run(sandbox, ledger).state == "success"
    assert len(sandbox.log.entries("mirakl", "OR15")) == 1
    assert set(or21_counts(sandbox).values()) == {1} and len(or21_counts(sandbox)) == 3
    assert all(woo_order(sandbox, o)["status"] == "on-hold" for o in orders)

    for _ in range(5):  # the next export is allowed 5 minutes after the first
        assert run(sandbox, ledger).state == "success"
    assert len(sandbox.log.entries("mirakl", "OR13")) == 2
    for order_id in orders[:2]:
        assert ledger.get_order("sandbox", order_id).mirakl_state == "SHIPPING"
        completed = woo_order(sandbox, order_id)
        assert completed["status"] == "processing" and completed["shipping"]["address_1"]
    assert woo_order(sandbox, orders[2])["status"] == "on-hold"
    assert set(or21_counts(sandbox).values()) == {1}
    assert all(e["query"].get("order_state_codes") == ["WAITING_ACCEPTANCE"]
               for e in sandbox.log.entries("mirakl", "OR11"))
    assert_within_ceilings(sandbox)


def test_a_backlog_larger_than_a_page_is_read_a_page_a_minute_without_rereading(sandbox, ledger, sku):
    orders = [place(sandbox, sku, i) for i in range(230)]
    before = len(sandbox.log.entries("mirakl", "OR11"))
    for _ in range(3):
        assert run(sandbox, ledger).state == "success"
    assert {state(sandbox, o) for o in orders} == {"WAITING_DEBIT_PAYMENT"}
    assert set(or21_counts(sandbox).values()) == {1}
    pages = sandbox.log.entries("mirakl", "OR11")[before:]
    # each page counts against the once-a-minute ceiling: one page a run, each one of new orders
    assert len(pages) == 3, [e["query"] for e in pages]
    assert all(woo_order(sandbox, o) is not None for o in orders)
    assert_within_ceilings(sandbox)


def test_a_failing_export_is_an_exception_and_the_listing_goes_on(sandbox, ledger, sku):
    fail_record(sandbox, "mirakl", "OR13", "")
    try:
        for _ in range(6):  # past the 5 minutes: an export is asked and refused
            assert run(sandbox, ledger).state == "success"
        problem = ledger.get_exception("order_export_failed", "sandbox", "sandbox")
        assert problem is not None and problem.status == "open" and "500" in problem.detail["error"]
        new = place(sandbox, sku, 7)
        assert run(sandbox, ledger).state == "success"
        assert state(sandbox, new) == "WAITING_DEBIT_PAYMENT"  # acceptance does not wait on the export
    finally:
        sandbox.faults.clear()
    with sandbox.lock:
        sandbox.mirakl.debit(new)
    # A refused OR13 still used its 5-minute slot: the window that failed is asked again once the
    # ceiling allows, and read the run after.
    for _ in range(6):
        assert run(sandbox, ledger).state == "success"
    assert ledger.get_order("sandbox", new).mirakl_state == "SHIPPING"
    assert ledger.get_exception("order_export_failed", "sandbox", "sandbox").status == "resolved"
    assert_within_ceilings(sandbox)
