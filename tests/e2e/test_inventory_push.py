"""End to end: `mirakl_inventory_push__sandbox` against the sandbox, run by dag.test().

The tests of this module share one sandbox and one ledger and run in order, like the
minutes of one shop's day: each test starts from the state the previous one left. Every
cycle is one DAG run followed by one minute of simulated time.
"""
from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from tests.e2e.conftest import advance, assert_within_ceilings, run_dag

DAG_ID = "mirakl_inventory_push__sandbox"
MARKETPLACE = "sandbox"
BUFFER = 1
MARKUP = Decimal("10")  # percent
UNMANAGED_QUANTITY = 5


@pytest.fixture(scope="module", autouse=True)
def marketplace_config(tmp_path_factory):
    """The sandbox marketplace with a safety buffer, a markup and an unmanaged-stock quantity."""
    import os

    path = Path(tmp_path_factory.mktemp("config")) / "marketplaces.yaml"
    path.write_text(yaml.safe_dump({"marketplaces": [{
        "name": MARKETPLACE, "mirakl_conn_id": "mirakl_sandbox", "woocommerce_conn_id": "woocommerce_default",
        "safety_buffer": BUFFER, "price_rule": {"markup_percent": str(MARKUP), "rounding": "0.01"},
        "unmanaged_stock": {"in_stock_quantity": UNMANAGED_QUANTITY},
    }]}))
    saved = os.environ.get("WOO_MIRAKL_MARKETPLACES")
    os.environ["WOO_MIRAKL_MARKETPLACES"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("WOO_MIRAKL_MARKETPLACES", None)
    else:
        os.environ["WOO_MIRAKL_MARKETPLACES"] = saved


def marked_up(price: str) -> Decimal:
    return (Decimal(price) * (1 + MARKUP / 100)).quantize(Decimal("0.01"))


@pytest.fixture(scope="module")
def shop(sandbox, airflow_env):
    """A small catalogue: simple, unmanaged and variable products; some offers drifted or missing."""
    woo, mirakl = sandbox.woo, sandbox.mirakl
    woo.version = "10.3.0"  # GET /variations: variation changes are found by their own modified date
    with sandbox.lock:
        for sku, price, stock in (("A", "10.00", 20), ("B", "25.50", 8), ("C", "7.00", 3), ("D", "12.00", 15),
                                  ("E", "30.00", 6), ("NOOFFER", "5.00", 4)):
            woo.add_simple_product(sku, price, stock)
        woo.add_simple_product("U", "9.90", None, manage_stock=False, stock_status="instock")
        parent = woo.add_variable_product("T-shirt", [
            {"sku": "TS-S", "price": "15.00", "stock_quantity": 5, "attributes": [{"name": "Size", "option": "S"}]},
            {"sku": "TS-M", "price": "15.00", "stock_quantity": 9, "attributes": [{"name": "Size", "option": "M"}]},
            {"sku": "", "price": "15.00", "stock_quantity": 2, "attributes": [{"name": "Size", "option": "L"}]},
        ])
        for sku, price, quantity in (("A", 11.0, 19), ("B", 28.05, 99), ("C", 7.7, 2), ("D", 13.2, 14),
                                     ("E", 33.0, 5), ("U", 10.89, 9), ("TS-S", 16.5, 4), ("TS-M", 16.5, 8),
                                     ("ORPHAN", 3.0, 7)):
            mirakl.add_offer(sku, price, quantity)
    no_sku_variation = next(v for v in parent["variations"] if not woo.store.item(v)["sku"])
    return {"no_sku_variation": no_sku_variation}


def cycle(sandbox, ledger, conf: dict | None = None):
    """One DAG run, then a minute of simulated time (the sandbox applies finished imports)."""
    run = run_dag(DAG_ID, conf)
    assert run.state == "success", run.state
    advance(sandbox, ledger, 60)
    sandbox.tick()
    return last_summary(ledger)


def last_summary(ledger) -> dict:
    """What the last push cycle did (also when it deferred), as the flow records it."""
    return ledger.get_cursor("mirakl_inventory_push", MARKETPLACE, "last_cycle")


def offer(sandbox, sku: str) -> dict:
    found = sandbox.mirakl.offer(sku)
    assert found is not None, f"no offer {sku}"
    return found


def sent_rows(sandbox, import_id: str | None) -> dict[str, dict]:
    """The lines of one STO01/PRI01 file, as the sandbox received them."""
    if import_id is None:
        return {}
    return {row["offer-sku"]: row for row in sandbox.mirakl.store.imports[import_id]["rows"]}


def open_keys(ledger, kind: str) -> set[str]:
    return {e.key for e in ledger.open_exceptions(MARKETPLACE, kind)}


def woo_stock(sandbox, sku: str) -> int:
    return sandbox.woo.product_by_sku(sku)["stock_quantity"]


def test_first_cycle_compares_everything_and_repairs_drift(sandbox, ledger, shop):
    summary = cycle(sandbox, ledger)

    assert summary["full"] is True and summary["deferred"] is False
    expected = {"A": 19, "B": 7, "C": 2, "D": 14, "E": 5, "U": UNMANAGED_QUANTITY - BUFFER, "TS-S": 4, "TS-M": 8}
    assert {sku: offer(sandbox, sku)["quantity"] for sku in expected} == expected
    # only the drifted offers were in the file: B (99 on Mirakl) and U (9 on Mirakl; unmanaged: 5 - 1)
    assert set(sent_rows(sandbox, summary["stock_import"])) == {"B", "U"}
    # B's price 28.05 on Mirakl vs 25.50 * 1.10 = 28.05: equal; nothing else differs either
    assert summary["price_import"] is None
    assert sandbox.log.count("mirakl", "STO01") == 1

    assert open_keys(ledger, "unmatched_sku_missing_in_mirakl") == {"NOOFFER"}
    assert open_keys(ledger, "unmatched_sku_missing_in_woocommerce") == {"ORPHAN"}
    assert open_keys(ledger, "variation_without_sku") == {str(shop["no_sku_variation"])}
    orphan = ledger.get_exception("unmatched_sku_missing_in_woocommerce", "ORPHAN", MARKETPLACE)
    assert orphan.detail["missing_from"] == "woocommerce"


def test_each_kind_of_change_reaches_mirakl_after_one_cycle_and_nothing_else_is_sent(sandbox, ledger):
    sandbox.woo.direct_sale("A", 3)  # an order: the product's modified date does not move
    sandbox.woo.set_stock("C", 11)  # a manual stock edit
    sandbox.woo.set_price("D", "20.00")  # a price change
    sandbox.woo.set_stock("TS-M", 2)  # a variation

    summary = cycle(sandbox, ledger)

    assert summary["full"] is False and summary["deferred"] is False
    stock = sent_rows(sandbox, summary["stock_import"])
    prices = sent_rows(sandbox, summary["price_import"])
    assert {sku: int(row["quantity"]) for sku, row in stock.items()} == {"A": 16, "C": 10, "TS-M": 1}
    assert {sku: Decimal(row["price"]) for sku, row in prices.items()} == {"D": marked_up("20.00")}
    assert offer(sandbox, "A")["quantity"] == 16 and offer(sandbox, "C")["quantity"] == 10
    assert offer(sandbox, "TS-M")["quantity"] == 1
    assert Decimal(str(offer(sandbox, "D")["price"])) == Decimal("22.00")

    # the next cycle settles the imports: the ledger records what Mirakl accepted
    summary = cycle(sandbox, ledger)
    assert summary["stock_import"] is None and summary["price_import"] is None
    states = ledger.offer_states(MARKETPLACE, ["A", "C", "D", "TS-M"])
    assert states["A"].last_accepted_quantity == 16 and states["A"].pending_quantity_import_id is None
    assert states["D"].last_accepted_price == Decimal("22.00")


def test_marketplace_demand_not_yet_in_woocommerce_lowers_the_quantity_never_below_zero(sandbox, ledger):
    ledger.upsert_order(MARKETPLACE, "MO-1", mirakl_state="WAITING_ACCEPTANCE")
    ledger.set_order_lines(MARKETPLACE, "MO-1", [
        {"mirakl_order_line_id": "MO-1-1", "offer_sku": "B", "quantity": 2},
        {"mirakl_order_line_id": "MO-1-2", "offer_sku": "E", "quantity": 50},  # more than the store has
    ])
    summary = cycle(sandbox, ledger)
    assert {s: int(r["quantity"]) for s, r in sent_rows(sandbox, summary["stock_import"]).items()} == {"B": 5, "E": 0}
    assert offer(sandbox, "B")["quantity"] == woo_stock(sandbox, "B") - 2 - BUFFER == 5
    assert offer(sandbox, "E")["quantity"] == 0

    # the orders flow created the WooCommerce order: the demand is reserved there now, not counted twice
    ledger.upsert_order(MARKETPLACE, "MO-1", woo_order_id=424242, mirakl_state="WAITING_DEBIT_PAYMENT")
    summary = cycle(sandbox, ledger)
    assert offer(sandbox, "B")["quantity"] == woo_stock(sandbox, "B") - BUFFER
    assert offer(sandbox, "E")["quantity"] == woo_stock(sandbox, "E") - BUFFER


def test_two_triggers_within_a_minute_make_one_stock_import(sandbox, ledger):
    before = sandbox.log.count("mirakl", "STO01")
    sandbox.woo.set_stock("A", 30)
    first = run_dag(DAG_ID)
    sandbox.woo.set_stock("C", 4)
    second = run_dag(DAG_ID)  # a manual trigger a few seconds later
    assert first.state == second.state == "success"
    assert last_summary(ledger)["deferred"] is True
    assert sandbox.log.count("mirakl", "STO01") == before + 1
    advance(sandbox, ledger, 60)
    sandbox.tick()
    assert offer(sandbox, "A")["quantity"] == 29 and offer(sandbox, "C")["quantity"] == 10  # C not yet
    # C's change was not lost: the next allowed cycle sends it
    summary = cycle(sandbox, ledger)
    assert set(sent_rows(sandbox, summary["stock_import"])) == {"C"}
    assert offer(sandbox, "C")["quantity"] == 3


def test_rejected_lines_are_flagged_and_retried_while_the_others_are_recorded(sandbox, ledger):
    sandbox.woo.set_price("E", "0")  # Mirakl refuses a zero price
    sandbox.woo.set_price("A", "11.00")
    summary = cycle(sandbox, ledger)
    assert set(sent_rows(sandbox, summary["price_import"])) == {"A", "E"}
    cycle(sandbox, ledger)  # follows the import: reads PRI02 and the PRI03 error report

    states = ledger.offer_states(MARKETPLACE, ["A", "E"])
    assert states["A"].last_accepted_price == marked_up("11.00") and states["A"].last_error is None
    assert states["E"].last_error and states["E"].last_accepted_price == Decimal("33.00")
    assert open_keys(ledger, "offer_update_rejected") == {"E"}
    retried = last_summary(ledger)
    assert set(sent_rows(sandbox, retried["price_import"])) == {"E"}  # retried although WooCommerce did not change

    sandbox.woo.set_price("E", "31.00")  # fixed in WooCommerce
    cycle(sandbox, ledger)
    cycle(sandbox, ledger)
    assert Decimal(str(offer(sandbox, "E")["price"])) == marked_up("31.00")
    assert open_keys(ledger, "offer_update_rejected") == set()


def test_unmatched_skus_of_every_kind_are_recorded_and_resolved(sandbox, ledger, shop):
    # a new WooCommerce product without an offer: Mirakl reports it unknown in the error report
    with sandbox.lock:
        sandbox.woo.add_simple_product("NEW", "8.00", 6)
    summary = cycle(sandbox, ledger)
    assert "NEW" in sent_rows(sandbox, summary["stock_import"])
    cycle(sandbox, ledger)
    assert "NEW" in open_keys(ledger, "unmatched_sku_missing_in_mirakl")
    detail = ledger.get_exception("unmatched_sku_missing_in_mirakl", "NEW", MARKETPLACE).detail
    assert detail["missing_from"] == "mirakl" and "import" in detail["source"]

    # fixes on both sides: offers created, the orphan's product created, the variation gets a SKU
    with sandbox.lock:
        for sku in ("NEW", "NOOFFER", "TS-L"):
            sandbox.mirakl.add_offer(sku, 1.0, 0)
        sandbox.woo.add_simple_product("ORPHAN", "3.00", 2)
        sandbox.woo.store.update_item(sandbox.woo.store.item(shop["no_sku_variation"]), {"sku": "TS-L"})
    cycle(sandbox, ledger, {"full": True})
    for kind in ("unmatched_sku_missing_in_mirakl", "unmatched_sku_missing_in_woocommerce", "variation_without_sku"):
        assert open_keys(ledger, kind) == set(), kind
    expected = {"NEW": 5, "NOOFFER": 3, "TS-L": 1, "ORPHAN": 1}
    assert {sku: offer(sandbox, sku)["quantity"] for sku in expected} == expected


def test_429_and_5xx_from_either_side_complete_later_without_double_pushes_or_lost_deltas(sandbox, ledger):
    sandbox.faults.set([
        {"service": "woo", "operation": "woo.variations.all", "status": 429, "count": 2, "retry_after": 0},
        {"service": "woo", "operation": "woo.orders.list", "status": 503, "count": 1},
        {"service": "mirakl", "operation": "STO01", "status": 500, "count": 1},
    ])
    try:
        sandbox.woo.set_stock("B", 40)
        sandbox.woo.direct_sale("D", 1)
        calls_before = sandbox.log.count("mirakl", "STO01")
        imports_before = set(sandbox.mirakl.store.imports)
        summary = cycle(sandbox, ledger)
        assert summary["deferred"] is True and summary["stock_import"] is None
        assert sandbox.log.count("mirakl", "STO01") == calls_before + 1  # the failed one, not retried
        assert offer(sandbox, "B")["quantity"] != 39

        sandbox.faults.set([{"service": "mirakl", "operation": "STO02", "status": 429, "count": 1}])
        summary = cycle(sandbox, ledger)
        assert summary["deferred"] is False
        assert {s: int(r["quantity"]) for s, r in sent_rows(sandbox, summary["stock_import"]).items()} == {
            "B": 39, "D": woo_stock(sandbox, "D") - BUFFER}
        pending = summary["stock_import"]
        cycle(sandbox, ledger)  # STO02 answers 429: the import stays pending, nothing is sent again
        assert ledger.offer_states(MARKETPLACE, ["B"])["B"].pending_quantity_import_id == pending
        cycle(sandbox, ledger)
        assert ledger.offer_states(MARKETPLACE, ["B"])["B"].last_accepted_quantity == 39
    finally:
        sandbox.faults.clear()
    new_files = [i for i in set(sandbox.mirakl.store.imports) - imports_before
                 if sandbox.mirakl.store.imports[i]["kind"] == "stock"]
    assert [i for i in new_files if "B" in sent_rows(sandbox, i)] == [pending]  # sent once, not lost


def test_the_call_log_shows_no_ceiling_exceeded_and_no_spec_violation(sandbox):
    calls = assert_within_ceilings(sandbox)
    assert calls[("STO01", None)] and calls[("STO02", None)] and calls[("PRI01", None)]
    assert calls[("OF52", "full")] and not calls[("OF21", None)]  # the offer export, not page views
