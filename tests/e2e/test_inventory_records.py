"""End to end: the inventory push isolates its records, splits shared stock, survives faults that land.

One sandbox and one ledger for the module, tests in file order like the minutes of one shop's
day (issues 15 and 14). The store runs WooCommerce 9.8 (no ``GET /variations``), so each variable
product's variations are one request of their own, which can fail on its own.
"""
from __future__ import annotations

from decimal import Decimal

import pytest

from tests.e2e.conftest import assert_within_ceilings, fail_record, fault_kinds_seen, fault_mix
from tests.e2e.stock_scenarios import marketplaces_file, next_minute, offers, place

DAG_ID = "mirakl_inventory_push__sandbox"
FLOW = "mirakl_inventory_push"
MARKETPLACE = "sandbox"
BUFFER = 1
POOL = ("P-RED", "P-BLUE", "P-GREEN")  # variations of the hoodie, sharing its stock
OWN = ("Q-1", "Q-2")  # variations of the tee, each with its own stock
SIMPLE = ("A", "B")
SOLD: dict[str, int] = {}  # units customers bought on Mirakl that WooCommerce never reserved (no ingest here)


@pytest.fixture(scope="module", autouse=True)
def marketplace(tmp_path_factory):
    with marketplaces_file(tmp_path_factory.mktemp("config"), [
        {"name": MARKETPLACE, "mirakl_conn_id": "mirakl_sandbox", "safety_buffer": BUFFER},
    ]) as path:
        yield path


@pytest.fixture(scope="module")
def shop(sandbox, airflow_env):
    """Two simple products, a tee with own-stock variations, a hoodie whose parent holds 7 for three
    variations; Mirakl offers each hoodie variation the whole pool (the bug of issue 14)."""
    woo = sandbox.woo
    woo.version = "9.8.0"
    with sandbox.lock:
        woo.add_simple_product("A", "10.00", 20)
        woo.add_simple_product("B", "20.00", 8)
        tee = woo.add_variable_product("Tee", [
            {"sku": "Q-1", "price": "15.00", "stock_quantity": 4, "attributes": [{"name": "Size", "option": "S"}]},
            {"sku": "Q-2", "price": "15.00", "stock_quantity": 6, "attributes": [{"name": "Size", "option": "M"}]},
        ])
        hoodie = woo.add_variable_product("Hoodie", [
            {"sku": sku, "price": "40.00", "attributes": [{"name": "Color", "option": sku[2:]}]} for sku in POOL
        ], sku="HOODIE", stock_quantity=7)
        for sku, price, quantity in (("A", 10.0, 20), ("B", 20.0, 8), ("Q-1", 15.0, 4), ("Q-2", 15.0, 6),
                                     *((sku, 40.0, 7) for sku in POOL)):
            sandbox.mirakl.add_offer(sku, price, quantity)
    return {"tee": tee["id"], "hoodie": hoodie["id"]}


def cycle(sandbox, ledger, conf: dict | None = None, must_succeed: bool = True) -> dict:
    """One inventory run, then a minute (Mirakl applies finished imports); what the cycle recorded."""
    from tests.e2e.conftest import run_dag

    state = run_dag(DAG_ID, conf).state
    if must_succeed:
        assert state == "success", state
    next_minute(sandbox, ledger)
    return ledger.get_cursor(FLOW, MARKETPLACE, "last_cycle")


def due(sandbox) -> dict[str, int]:
    """What each offer must show: own stock − unreserved demand − buffer; a pool's ATP split evenly,
    the units left over to the lowest WooCommerce ids."""
    unreserved = SOLD
    woo = sandbox.woo
    out = {sku: max(0, woo.product_by_sku(sku)["stock_quantity"] - unreserved.get(sku, 0) - BUFFER)
           for sku in SIMPLE + OWN}
    pool = max(0, woo.product_by_sku("HOODIE")["stock_quantity"] - sum(unreserved.get(s, 0) for s in POOL) - BUFFER)
    members = sorted(POOL, key=lambda sku: woo.product_by_sku(sku)["id"])
    share, left = divmod(pool, len(members))
    out.update({sku: share + (1 if rank < left else 0) for rank, sku in enumerate(members)})
    return out


def open_keys(ledger, kind: str) -> set[str]:
    return {e.key for e in ledger.open_exceptions(MARKETPLACE, kind)}


def test_one_products_unreadable_variations_leave_its_offers_alone_and_the_cycle_goes_on(sandbox, ledger, shop):
    # every read of the tee's variations fails (e.g. deleted between the listing and the read)
    fail_record(sandbox, "woo", "woo.variations.list", f"/products/{shop['tee']}/variations", 404)
    try:
        summary = cycle(sandbox, ledger)
    finally:
        sandbox.faults.clear()

    assert summary["full"] is True and summary["deferred"] is False
    expected = due(sandbox)
    assert offers(sandbox, SIMPLE + POOL) == {sku: expected[sku] for sku in SIMPLE + POOL}
    assert offers(sandbox, OWN) == {"Q-1": 4, "Q-2": 6}  # not zeroed as if the product were gone
    problem = ledger.get_exception("inventory_product_unreadable", str(shop["tee"]), MARKETPLACE)
    assert problem.status == "open" and problem.detail["status"] == 404
    assert open_keys(ledger, "unmatched_sku_missing_in_woocommerce") == set()
    assert ledger.get_cursor(FLOW, MARKETPLACE, "last_full")  # the cursors went on

    cycle(sandbox, ledger)  # the product is read again by the next cycle
    assert offers(sandbox, OWN) == {"Q-1": expected["Q-1"], "Q-2": expected["Q-2"]} == {"Q-1": 3, "Q-2": 5}
    assert open_keys(ledger, "inventory_product_unreadable") == set()


def test_variations_sharing_a_pool_never_offer_more_than_it_holds(sandbox, ledger, shop):
    # the first cycle split 7 − buffer 1 = 6 between three variations
    assert offers(sandbox, POOL) == {"P-RED": 2, "P-BLUE": 2, "P-GREEN": 2}

    sandbox.woo.set_stock("HOODIE", 5)  # the pool changes: 4 to share, the lowest id gets the extra unit
    cycle(sandbox, ledger)
    offered = offers(sandbox, POOL)
    assert offered == {sku: due(sandbox)[sku] for sku in POOL} and sum(offered.values()) == 4
    assert sorted(offered.values()) == [1, 1, 2]

    # customers buy every unit the marketplace offers, whatever the mix: no more than the pool
    place(sandbox, [(sku, quantity) for sku, quantity in offered.items() if quantity])
    SOLD.update(offered)
    cycle(sandbox, ledger)
    assert sum(offers(sandbox, POOL).values()) == 0
    assert sum(offered.values()) <= sandbox.woo.product_by_sku("HOODIE")["stock_quantity"] - BUFFER


def test_a_persistent_5xx_or_403_on_one_product_is_an_exception_on_it_and_the_rest_is_pushed(sandbox, ledger, shop):
    for status in (503, 403):
        sandbox.woo.direct_sale("A", 1)
        sandbox.woo.set_stock("Q-1", 9)  # moves its parent's modified date: the tee is read
        fail_record(sandbox, "woo", "woo.variations.list", f"/products/{shop['tee']}/variations", status)
        try:
            summary = cycle(sandbox, ledger)
        finally:
            sandbox.faults.clear()
        assert summary["deferred"] is False and summary["full"] is False
        assert offers(sandbox, ["A"]) == {"A": due(sandbox)["A"]}
        assert offers(sandbox, ["Q-1"]) == {"Q-1": 3}  # waits: read again next cycle
        problem = ledger.get_exception("inventory_product_unreadable", str(shop["tee"]), MARKETPLACE)
        assert problem.status == "open" and problem.detail["status"] == status

        cycle(sandbox, ledger)
        assert offers(sandbox, ["Q-1"]) == {"Q-1": 8}
        assert open_keys(ledger, "inventory_product_unreadable") == set()
        sandbox.woo.set_stock("Q-1", 4)
        cycle(sandbox, ledger)


def test_a_failed_sku_look_up_is_an_exception_on_its_skus_and_the_rest_is_pushed(sandbox, ledger, shop):
    cycle(sandbox, ledger)  # not the first cycle: that one compares everything (no look-up by SKU)
    sandbox.woo.direct_sale("A", 1)
    cycle(sandbox, ledger)  # and B's own change is out of the modified listing's overlap window
    for status in (500, 404, 403):
        sandbox.woo.direct_sale("A", 1)  # A is listed as modified: not looked up
        place(sandbox, [("B", 1)])  # B's demand moved: looked up by SKU
        SOLD["B"] = SOLD.get("B", 0) + 1
        fail_record(sandbox, "woo", "woo.products.list", "B", status)
        try:
            summary = cycle(sandbox, ledger)
        finally:
            sandbox.faults.clear()
        assert summary["deferred"] is False
        assert offers(sandbox, ["A"]) == {"A": due(sandbox)["A"]}
        rows = sandbox.mirakl.store.imports[summary["stock_import"]]["rows"]
        assert {r["offer-sku"] for r in rows} == {"A"}  # nothing sent for B this cycle
        problem = ledger.get_exception("inventory_sku_unreadable", "B", MARKETPLACE)
        assert problem.status == "open" and "B" in problem.detail["error"]

        before = len(sku_look_ups(sandbox, "B"))
        cycle(sandbox, ledger)  # B is looked up again, although nothing about it changed since
        assert [e["status"] for e in sku_look_ups(sandbox, "B")[before:]] == [200]
        assert offers(sandbox, ["B"]) == {"B": due(sandbox)["B"]}
        assert open_keys(ledger, "inventory_sku_unreadable") == set()


def sku_look_ups(sandbox, sku: str) -> list[dict]:
    return [e for e in sandbox.log.entries("woo", "woo.products.list") if sku in (e["query"].get("sku") or [""])[0]]


def test_an_import_that_cannot_be_followed_holds_up_no_other_and_its_lines_are_sent_again(sandbox, ledger):
    sandbox.woo.direct_sale("B", 1)
    first = cycle(sandbox, ledger)["stock_import"]
    assert first
    fail_record(sandbox, "mirakl", "STO02", first)
    try:
        sandbox.woo.direct_sale("A", 1)
        second = cycle(sandbox, ledger)["stock_import"]
        for _ in range(6):
            cycle(sandbox, ledger)
        states = ledger.offer_states(MARKETPLACE, ["A", "B"])
        # the second import was followed although the first, older one kept failing
        assert states["A"].pending_quantity_import_id is None
        assert states["A"].last_accepted_quantity == due(sandbox)["A"]
        problem = ledger.get_exception("inventory_import_unreadable", first, MARKETPLACE)
        assert problem.status == "open" and problem.detail["import"] == "stock"
        assert first not in ledger.get_cursor(FLOW, MARKETPLACE, "imports")["stock"]
    finally:
        sandbox.faults.clear()
    assert second and second != first
    # B's line was sent again with the value due now, and settled
    resent = [i for i, imp in sandbox.mirakl.store.imports.items()
              if imp["kind"] == "stock" and i != first and any(r["offer-sku"] == "B" for r in imp["rows"])]
    assert resent
    cycle(sandbox, ledger)
    assert ledger.offer_states(MARKETPLACE, ["B"])["B"].last_accepted_quantity == due(sandbox)["B"]
    assert offers(sandbox, ["B"]) == {"B": due(sandbox)["B"]}


def test_a_stock_file_that_landed_unanswered_is_corrected_when_the_stock_goes_back(sandbox, ledger):
    before = due(sandbox)["A"]
    sandbox.woo.set_stock("A", 30)
    sandbox.faults.set([{"service": "mirakl", "operation": "STO01", "kind": "apply_then_drop", "count": 1}])
    try:
        summary = cycle(sandbox, ledger)
    finally:
        sandbox.faults.clear()
    assert summary["deferred"] is True
    assert offers(sandbox, ["A"]) == {"A": 29}  # Mirakl applied it; the ledger never heard
    sandbox.woo.set_stock("A", before + BUFFER)  # back to what Mirakl last accepted
    cycle(sandbox, ledger)
    assert offers(sandbox, ["A"]) == {"A": before}


def test_under_faults_that_land_then_fail_every_offer_ends_at_what_is_due(sandbox, ledger, shop):
    sandbox.faults.set(fault_mix(0.2))
    try:
        for minute in range(8):
            sandbox.woo.direct_sale("A", 1)
            sandbox.woo.set_stock("B", 10 + minute)
            sandbox.woo.set_stock("HOODIE", 8 + minute % 3)
            sandbox.woo.set_price("Q-2", f"{16 + minute}.00")
            cycle(sandbox, ledger, must_succeed=False)  # a run may fail: Airflow would retry it
        seen = fault_kinds_seen(sandbox)
    finally:
        sandbox.faults.clear()
    assert {"apply_then_status", "apply_then_drop"} <= seen, seen
    for _ in range(3):  # clean minutes: imports followed, everything unsure sent again
        cycle(sandbox, ledger)

    expected = due(sandbox)
    assert offers(sandbox, SIMPLE + OWN + POOL) == expected
    with sandbox.lock:
        assert Decimal(str(sandbox.mirakl.offer("Q-2")["price"])) == Decimal("23.00")
    # the ledger agrees with Mirakl, so later deltas are exact
    states = ledger.offer_states(MARKETPLACE, list(expected))
    assert {sku: states[sku].last_accepted_quantity for sku in expected} == expected
    assert_within_ceilings(sandbox)
