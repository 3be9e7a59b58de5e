"""End to end: the catalogue publish isolates its records and survives faults that land (issues 15, 14).

One sandbox and one ledger for the module, tests in file order. A variable product whose
variations cannot be read is an exception on that product; the cycle goes on and retires
nothing it could not see. An OF24 import whose status keeps failing is given up on and its
offers sent again, without holding up the others. Offers of variations sharing their parent's
stock are created with the pool split between them.
"""
from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    advance,
    assert_within_ceilings,
    fail_record,
    fault_kinds_seen,
    fault_mix,
    run_dag,
)
from tests.e2e.stock_scenarios import marketplaces_file

DAG_ID = "mirakl_catalogue_publish__sandbox"
FLOW = "mirakl_catalogue_publish"
MARKETPLACE = "sandbox"
SHOES = {"id": 21, "name": "Shoes", "slug": "shoes"}
EANS = {"RUN-1": "4000000001010", "TEE-S": "4000000001027", "TEE-M": "4000000001034",
        "H-RED": "4000000001041", "H-BLUE": "4000000001058", "RUN-2": "4000000001065"}
TEES = ("TEE-S", "TEE-M")


@pytest.fixture(scope="module", autouse=True)
def marketplace(tmp_path_factory):
    with marketplaces_file(tmp_path_factory.mktemp("config"), [{
        "name": MARKETPLACE, "mirakl_conn_id": "mirakl_sandbox",
        "catalogue": {"select": {"categories": ["shoes"]}, "product_id": {"source": "global_unique_id", "type": "EAN"},
                      "retire": "delete"},
    }]) as path:
        yield path


@pytest.fixture(scope="module")
def shop(sandbox, airflow_env):
    """A simple shoe, a tee with own-stock sizes and a hoodie whose parent holds 5 for two colours."""
    woo, store = sandbox.woo, sandbox.woo.store
    with sandbox.lock:
        sandbox.mirakl.configure(unknown_products="reject", import_delay_s=3600, import_complete_after_polls=1)
        for ean in EANS.values():
            sandbox.mirakl.add_product(ean, "EAN")
        woo.add_simple_product("RUN-1", "50.00", 7, global_unique_id=EANS["RUN-1"], categories=[SHOES])
        tee = woo.add_variable_product("Tee", [
            {"sku": sku, "price": "30.00", "stock_quantity": 4, "attributes": [{"name": "Size", "option": sku[-1]}]}
            for sku in TEES])
        hoodie = woo.add_variable_product("Hoodie", [
            {"sku": sku, "price": "45.00", "attributes": [{"name": "Color", "option": sku[2:]}]}
            for sku in ("H-RED", "H-BLUE")], sku="HOODIE", stock_quantity=5)
        for parent in (tee, hoodie):
            store.update_item(store.item(parent["id"]), {"categories": [SHOES]})
            for variation_id in parent["variations"]:
                record = store.item(variation_id)
                store.update_item(record, {"global_unique_id": EANS[record["sku"]]})
    return {"tee": tee["id"], "hoodie": hoodie["id"]}


def cycle(sandbox, ledger, must_succeed: bool = True) -> dict:
    state = run_dag(DAG_ID).state
    if must_succeed:
        assert state == "success", state
    advance(sandbox, ledger, 61)
    sandbox.tick()
    return ledger.get_cursor(FLOW, MARKETPLACE, "last_cycle") or {}


def live(sandbox) -> dict[str, dict]:
    with sandbox.lock:
        return {o["shop_sku"]: o for o in sandbox.mirakl.offers()}


def problem(ledger, kind: str, key) -> object:
    return ledger.get_exception(kind, str(key), MARKETPLACE)


def test_one_products_unreadable_variations_are_an_exception_and_the_rest_is_published(sandbox, ledger, shop):
    fail_record(sandbox, "woo", "woo.variations.list", f"/products/{shop['tee']}/variations", 403)
    try:
        summary = cycle(sandbox, ledger)
    finally:
        sandbox.faults.clear()
    assert summary["create"] == 3 and summary["offer_import"], summary
    offers = live(sandbox)
    assert set(offers) == {"RUN-1", "H-RED", "H-BLUE"}
    # the hoodie's pool of 5 is split between its two offers, never 5 each
    assert (offers["H-RED"]["quantity"], offers["H-BLUE"]["quantity"]) == (3, 2)
    found = problem(ledger, "catalogue_product_unreadable", shop["tee"])
    assert found.status == "open" and found.detail["status"] == 403

    cycle(sandbox, ledger)  # follows the import, reads the tee again and creates its offers
    cycle(sandbox, ledger)
    assert set(live(sandbox)) == {"RUN-1", "H-RED", "H-BLUE", *TEES}
    assert problem(ledger, "catalogue_product_unreadable", shop["tee"]).status == "resolved"


def test_an_unreadable_product_retires_none_of_its_offers(sandbox, ledger, shop):
    fail_record(sandbox, "woo", "woo.variations.list", f"/products/{shop['tee']}/variations", 503)
    try:
        summary = cycle(sandbox, ledger)
    finally:
        sandbox.faults.clear()
    assert summary["retire"] == 0, summary
    assert set(TEES) <= set(live(sandbox))
    assert problem(ledger, "catalogue_product_unreadable", shop["tee"]).detail["status"] == 503
    cycle(sandbox, ledger)
    assert set(TEES) <= set(live(sandbox))
    assert problem(ledger, "catalogue_product_unreadable", shop["tee"]).status == "resolved"


def test_an_import_that_cannot_be_followed_holds_up_no_other_and_is_sent_again(sandbox, ledger, shop):
    sandbox.woo.set_price("RUN-1", "55.00")
    first = cycle(sandbox, ledger)["offer_import"]
    assert first
    fail_record(sandbox, "mirakl", "OF02", first)
    try:
        sandbox.woo.set_price("TEE-S", "33.00")
        second = cycle(sandbox, ledger)["offer_import"]
        assert second and second != first
        for _ in range(6):
            cycle(sandbox, ledger)
        states = ledger.get_cursor(FLOW, MARKETPLACE, "offers")
        assert "pending" not in states["TEE-S"] and states["TEE-S"]["offer"]["price"] == 33.0  # followed
        found = problem(ledger, "catalogue_import_unreadable", first)
        assert found.status == "open" and found.detail["skus"] == ["RUN-1"]
    finally:
        sandbox.faults.clear()
    resent = [i for i, imp in sandbox.mirakl.store.imports.items()
              if i not in (first, second) and any(line.get("shop_sku") == "RUN-1" for line in imp.get("lines") or [])]
    assert resent  # RUN-1's complete offer went out again (harmless: OF24 is absolute)
    cycle(sandbox, ledger)
    states = ledger.get_cursor(FLOW, MARKETPLACE, "offers")
    assert "pending" not in states["RUN-1"] and states["RUN-1"]["offer"]["price"] == 55.0
    assert live(sandbox)["RUN-1"]["price"] == 55.0


def test_an_offer_file_that_landed_unanswered_is_checked_not_sent_twice(sandbox, ledger, shop):
    sandbox.woo.set_price("TEE-M", "31.00")
    before = sandbox.log.count("mirakl", "OF24", landed=True)
    sandbox.faults.set([{"service": "mirakl", "operation": "OF24", "kind": "apply_then_drop", "count": 1}])
    try:
        summary = cycle(sandbox, ledger)
    finally:
        sandbox.faults.clear()
    assert summary["offer_import"] is None and "unknown" in summary["reason"]
    cycle(sandbox, ledger)  # what Mirakl shows settles it
    cycle(sandbox, ledger)
    assert sandbox.log.count("mirakl", "OF24", landed=True) == before + 1
    assert live(sandbox)["TEE-M"]["price"] == 31.0
    assert "pending" not in ledger.get_cursor(FLOW, MARKETPLACE, "offers")["TEE-M"]


def test_under_faults_that_land_then_fail_the_offers_end_as_the_catalogue_says(sandbox, ledger, shop):
    with sandbox.lock:
        sandbox.woo.add_simple_product("RUN-2", "70.00", 2, global_unique_id=EANS["RUN-2"], categories=[SHOES])
    sandbox.faults.set(fault_mix(0.2))
    try:
        for minute in range(6):
            sandbox.woo.set_price("RUN-1", f"{60 + minute}.00")
            sandbox.woo.set_price("H-BLUE", f"{46 + minute}.00")
            cycle(sandbox, ledger, must_succeed=False)  # a run may fail: Airflow would retry it
        seen = fault_kinds_seen(sandbox)
    finally:
        sandbox.faults.clear()
    assert {"apply_then_status", "apply_then_drop"} <= seen, seen
    for _ in range(4):  # clean minutes: everything followed, settled or sent again
        cycle(sandbox, ledger)

    offers = live(sandbox)
    assert {sku: offers[sku]["price"] for sku in ("RUN-1", "H-BLUE", "RUN-2")} == {
        "RUN-1": 65.0, "H-BLUE": 51.0, "RUN-2": 70.0}
    assert set(offers) == {"RUN-1", "RUN-2", "H-RED", "H-BLUE", *TEES}
    states = ledger.get_cursor(FLOW, MARKETPLACE, "offers")
    assert not [sku for sku, state in states.items() if state.get("pending")]
    assert {sku: states[sku]["offer"]["price"] for sku in offers} == {sku: o["price"] for sku, o in offers.items()}
    assert_within_ceilings(sandbox)
