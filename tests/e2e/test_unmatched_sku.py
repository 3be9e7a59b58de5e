"""One unmatched SKU, one exception, whichever flows look at it (issue #17, item 7).

A Mirakl offer WooCommerce has no product for (GHOST, also ordered by a customer) and a
WooCommerce product Mirakl has no offer for (NEW) go through every flow that reads SKUs: order
ingest, inventory push, data quality, catalogue publish, twice. The ledger holds exactly one open
exception for each, the inventory push's, under the side the SKU is missing from; once the SKU
exists on both sides the push's next full comparison resolves it and nothing reopens it.
"""
from __future__ import annotations

import json

import pytest

from tests.e2e.conftest import NO_DEBIT, advance, run_dag

MP = "sandbox"
KNOWN, GHOST, NEW = "UM-KNOWN", "UM-GHOST", "UM-NEW"
FLOWS = ("mirakl_order_ingest", "mirakl_inventory_push", "mirakl_data_quality", "mirakl_catalogue_publish")

pytestmark = pytest.mark.usefixtures("alert_env")


@pytest.fixture(scope="module")
def shop(sandbox, airflow_env):
    from include.sandbox.scenarios import customer

    sandbox.woo.add_simple_product(KNOWN, "20.00", 10)
    sandbox.woo.add_simple_product(NEW, "15.00", 6)
    with sandbox.lock:
        sandbox.mirakl.add_offer(KNOWN, 20.0, 10)
        sandbox.mirakl.add_offer(GHOST, 12.0, 4)
        order = sandbox.mirakl.place_order(lines=[{"offer_sku": GHOST, "quantity": 1}, {"offer_sku": KNOWN, "quantity": 1}],
                                           customer=customer(0), debit_delay_s=NO_DEBIT)
    return order["order_id"]


def about(ledger, sku: str) -> list[tuple[str, str]]:
    """Open exceptions naming the SKU, in their key or their detail."""
    return sorted((e.kind, e.key) for e in ledger.open_exceptions(MP)
                  if e.key.rsplit(":", 1)[-1] == sku or f'"{sku}"' in json.dumps(e.detail or {}))


def run_every_flow(sandbox, ledger, conf: dict | None = None) -> None:
    for flow in FLOWS:
        run = run_dag(f"{flow}__{MP}", conf if flow == "mirakl_inventory_push" else None)
        assert run.state == "success", (flow, run.state)
        advance(sandbox, ledger, 61)  # past the minute STO01/PRI01/OF24 allow between calls
        sandbox.tick()


def test_each_unmatched_sku_is_one_open_exception_of_the_inventory_push(shop, sandbox, ledger):
    for _round in range(2):
        run_every_flow(sandbox, ledger)

        assert about(ledger, GHOST) == [("unmatched_sku_missing_in_woocommerce", GHOST)]
        assert about(ledger, NEW) == [("unmatched_sku_missing_in_mirakl", NEW)]
    ghost = ledger.get_exception("unmatched_sku_missing_in_woocommerce", GHOST, MP)
    assert ghost.detail["source"] == "full comparison"
    decided = {line.offer_sku: line.decision for line in ledger.get_order(MP, shop).lines}
    assert decided[GHOST] == "refused", "the order's unknown line is refused, not raised as another SKU exception"


def test_the_exception_resolves_when_the_sku_appears_on_the_missing_side(shop, sandbox, ledger):
    sandbox.woo.add_simple_product(GHOST, "12.00", 4)
    with sandbox.lock:
        sandbox.mirakl.add_offer(NEW, 15.0, 6)

    run_every_flow(sandbox, ledger, {"full": True})

    assert about(ledger, GHOST) == [] and about(ledger, NEW) == []
    for kind, sku in (("unmatched_sku_missing_in_woocommerce", GHOST), ("unmatched_sku_missing_in_mirakl", NEW)):
        assert ledger.get_exception(kind, sku, MP).status == "resolved"
