"""WooCommerce requests per inventory cycle on a store of 500 variable products of which 5 changed.

Before WooCommerce 10.3 there is no ``GET /variations``: reading every variable product's
variations each minute costs ~0.2 s per product on a real store. A real store moves a parent's
``date_modified`` when one of its variations is saved or sold, so an incremental cycle reads the
variations of changed parents only; the periodic full comparison still reads everything.
"""
from __future__ import annotations

from collections import Counter

import pytest

from tests.e2e.conftest import advance, run_dag

DAG_ID = "mirakl_inventory_push__sandbox"
PARENTS = 500
CHANGED = 5

pytestmark = pytest.mark.usefixtures("airflow_env")


def cycle(sandbox, ledger) -> Counter:
    """One inventory run; the WooCommerce requests it made, by operation."""
    before = len(sandbox.log.entries("woo"))
    assert run_dag(DAG_ID).state == "success"
    made = Counter(e["operation"] for e in sandbox.log.entries("woo")[before:])
    advance(sandbox, ledger, 61)
    sandbox.tick()
    return made


@pytest.fixture(scope="module")
def store(sandbox, ledger, airflow_env):
    sandbox.woo.version = "9.8.0"  # before 10.3: no GET /variations
    with sandbox.lock:
        for n in range(PARENTS):
            variations = [{"sku": f"V{n:03d}-{size}", "price": "19.90", "stock_quantity": 8,
                           "attributes": [{"name": "Size", "option": size}]} for size in ("M", "L")]
            sandbox.woo.add_variable_product(f"Tee {n:03d}", variations)
            for variation in variations:
                sandbox.mirakl.add_offer(variation["sku"], 19.9, 8)
    # The catalogue was loaded in one second; on a real store the newest change is some other,
    # later product's (the read window is a minute behind the newest change seen).
    advance(sandbox, ledger, 120)
    sandbox.woo.add_simple_product("ANCHOR", "5.00", 4)
    with sandbox.lock:
        sandbox.mirakl.add_offer("ANCHOR", 5.0, 4)
    first = cycle(sandbox, ledger)  # the first cycle is a full comparison: everything is read
    assert first["woo.variations.list"] == PARENTS
    cycle(sandbox, ledger)  # follows the imports, nothing changed
    return sandbox


def test_an_incremental_cycle_reads_only_the_changed_parents_variations(store, sandbox, ledger):
    changed = [f"V{n:03d}-M" for n in range(0, PARENTS, PARENTS // CHANGED)]
    for sku in changed:
        sandbox.woo.set_stock(sku, 3)
    made = cycle(sandbox, ledger)
    print(f"\nWooCommerce requests in one cycle, {PARENTS} variable products, {CHANGED} changed: "
          f"{sum(made.values())} ({dict(made)})")
    assert made["woo.variations.list"] == CHANGED
    assert sum(made.values()) <= CHANGED + 5, made  # + products, orders, system status, SKU look-ups
    cycle(sandbox, ledger)
    with sandbox.lock:
        assert {sku: sandbox.mirakl.offer(sku)["quantity"] for sku in changed} == {sku: 3 for sku in changed}


def test_a_sale_moves_the_parent_and_reaches_mirakl(store, sandbox, ledger):
    sandbox.woo.direct_sale("V250-L", 2)  # a web-shop checkout: only dates moved by the sale tell
    made = cycle(sandbox, ledger)
    # its parent, plus the previous changes the one-minute re-read window still covers
    assert made["woo.variations.list"] == 1 + CHANGED
    cycle(sandbox, ledger)
    with sandbox.lock:
        assert sandbox.mirakl.offer("V250-L")["quantity"] == 6
