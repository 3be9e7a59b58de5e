"""The data-quality check sees every order past acceptance, whoever accepted it (item 4 of #15).

The world is built by the orders flow itself from what happens on Mirakl: one order this
integration accepted, one accepted in the Mirakl back office while still to ship (the orders flow
adopts it), and one accepted and shipped in the back office before the integration saw it, which
no WooCommerce order will ever carry. Only that last one is a critical ``woo_order_missing``; a
WooCommerce order made for it by hand clears it.
"""
from __future__ import annotations

import pytest

from tests.e2e.conftest import advance, orders_in_shipping, run_dag

pytestmark = pytest.mark.usefixtures("airflow_env")

DAG_ID = "mirakl_data_quality__sandbox"
MP = "sandbox"
GRACE = 11 * 60  # past quality.MISSING_WOO_ORDER_GRACE, on Mirakl's clock


def woo_order_missing(ledger) -> dict[str, str]:
    return {e.key: e.severity for e in ledger.open_exceptions(MP, kind="woo_order_missing")}


@pytest.fixture(scope="module")
def world(sandbox, ledger):
    from include.sandbox.scenarios import customer

    sandbox.woo.add_simple_product("DQ-1", "15.00", 40)
    with sandbox.lock:
        sandbox.mirakl.add_offer("DQ-1", 15.0, 40)
    [(ours, _)] = orders_in_shipping(sandbox, ledger, [[("DQ-1", 1)]])
    with sandbox.lock:
        store, now = sandbox.mirakl.store, sandbox.clock.now()
        adopted, shipped = (sandbox.mirakl.place_order(lines=[{"offer_sku": "DQ-1", "quantity": 1}],
                                                       customer=customer(i))["order_id"] for i in (1, 2))
        for order_id in (adopted, shipped):  # accepted in the Mirakl back office
            store.accept(now, order_id, [{"id": f"{order_id}-1", "accepted": True}])
            store.debit(now, order_id)
        store.ship(now, shipped)
    for _ in range(2):
        advance(sandbox, ledger, 61)
        assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    assert ledger.get_order(MP, shipped).woo_order_id is None and ledger.get_order(MP, shipped).decision is None
    assert ledger.get_order(MP, adopted).woo_order_id is not None
    return {"ours": ours, "adopted": adopted, "shipped": shipped}


def test_an_order_shipped_outside_the_integration_without_a_woocommerce_order_is_critical(sandbox, ledger, world):
    advance(sandbox, ledger, GRACE)

    assert run_dag(DAG_ID).state == "success"

    assert woo_order_missing(ledger) == {world["shipped"]: "critical"}
    detail = ledger.get_exception("woo_order_missing", world["shipped"], MP).detail
    assert detail["mirakl_state"] == "SHIPPED" and detail["decision"] is None


def test_a_woocommerce_order_made_by_hand_for_it_clears_it(sandbox, ledger, world):
    from include.woo_mirakl.hooks import WooCommerceHook

    WooCommerceHook("woocommerce_default").get_client().create_order(
        {"status": "completed", "meta_data": [{"key": "_mirakl_order_id", "value": world["shipped"]}]})

    assert run_dag(DAG_ID).state == "success"

    assert woo_order_missing(ledger) == {}
    assert ledger.get_exception("woo_order_missing", world["shipped"], MP).status == "resolved"
