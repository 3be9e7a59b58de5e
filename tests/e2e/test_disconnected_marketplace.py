"""A disconnected marketplace gets no write from any flow, even a run that starts anyway.

The account flow's disconnect pauses the marketplace's DAGs; a run already queued, a manual
trigger or a flow unpaused by mistake must still send nothing. The marketplace is disconnected
through the account flow itself, with work waiting in every flow (a new order, a shipped order,
a refund, a stock change); then every flow runs: neither API receives a single write, and once
reconnected the waiting work goes out, once.
"""
from __future__ import annotations

from datetime import timedelta

import pytest

from tests.e2e.conftest import advance, orders_in_shipping, run_dag

pytestmark = pytest.mark.usefixtures("airflow_env")

MARKETPLACE = "sandbox"
FLOWS = ("mirakl_order_ingest", "mirakl_inventory_push", "mirakl_shipment_confirm", "mirakl_refund_sync")
READS_BY_POST = {"OF52", "TL03"}  # export requests: POSTs that change nothing


def writes(sandbox, service: str, since: int) -> list[str]:
    return [f"{e['method']} {e['operation']}" for e in sandbox.log.entries(service)[since:]
            if e["method"] != "GET" and e["operation"] not in READS_BY_POST]


def task_states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def run_every_flow(sandbox, ledger) -> dict[str, dict[str, str]]:
    advance(sandbox, ledger, 61)
    states = {}
    for flow in FLOWS:
        run = run_dag(f"{flow}__{MARKETPLACE}")
        states[flow] = task_states(run)
        assert run.state == "success", (flow, states[flow])
    return states


def mirakl_order(sandbox, order_id: str) -> dict:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)


@pytest.fixture(scope="module")
def waiting_work(sandbox, ledger):
    """Two orders in SHIPPING, then the disconnect, then work for every flow."""
    from include.sandbox.scenarios import customer

    sandbox.woo.settings["shipment_tracking_installed"] = True
    sandbox.woo.add_simple_product("MUG", "12.50", 50, name="Tasse")
    sandbox.woo.add_simple_product("TEE", "20.00", 50, name="T-shirt")
    with sandbox.lock:
        sandbox.mirakl.add_offer("MUG", 12.5, 50)
        sandbox.mirakl.add_offer("TEE", 20.0, 50)
    (shipped, woo_shipped), (refunded, woo_refunded) = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 1)]])
    assert run_dag(f"mirakl_inventory_push__{MARKETPLACE}").state == "success"  # offers follow WooCommerce

    advance(sandbox, ledger, 61)
    run = run_dag(f"mirakl_account__{MARKETPLACE}", {"action": "disconnect", "offers_policy": "keep",
                                                      "confirmation": "Disconnect", "dry_run": False})
    assert run.state == "success", task_states(run)
    assert ledger.get_cursor("mirakl_account", MARKETPLACE, "connection")["status"] == "disconnected"

    with sandbox.lock:
        new = sandbox.mirakl.place_order(lines=[{"offer_sku": "MUG", "quantity": 2}], customer=customer(5))["order_id"]
    sandbox.woo.ship_order(woo_shipped, tracking_provider="DHL Express", tracking_number="JD0142")
    refund = sandbox.woo.refund_order(woo_refunded, [{"sku": "TEE", "quantity": 1}], reason="Item arrived broken")
    sandbox.woo.set_stock("TEE", 7)
    return {"new": new, "shipped": shipped, "shipped_woo": woo_shipped, "refunded": refunded, "refund": refund}


def test_no_flow_writes_to_either_api_while_disconnected(sandbox, ledger, waiting_work):
    mirakl_calls, woo_calls = len(sandbox.log.entries("mirakl")), len(sandbox.log.entries("woo"))

    states = run_every_flow(sandbox, ledger)

    assert writes(sandbox, "mirakl", mirakl_calls) == []
    assert writes(sandbox, "woo", woo_calls) == []
    # Every task did nothing at all (no read either) and ended skipped, not failed nor retried.
    assert len(sandbox.log.entries("mirakl")) == mirakl_calls and len(sandbox.log.entries("woo")) == woo_calls
    assert {flow: set(tasks.values()) for flow, tasks in states.items()} == {flow: {"skipped"} for flow in FLOWS}
    assert mirakl_order(sandbox, waiting_work["new"])["order_state"] == "WAITING_ACCEPTANCE"
    assert mirakl_order(sandbox, waiting_work["shipped"])["order_state"] == "SHIPPING"
    assert ledger.get_order(MARKETPLACE, waiting_work["new"]) is None  # not even read
    # A write refused before sending leaves no intent behind that would look uncertain later.
    assert ledger.stuck_actions(timedelta(0), marketplace=MARKETPLACE, states=("intent", "uncertain")) == []


def test_after_reconnect_the_waiting_work_goes_out_once(sandbox, ledger, waiting_work):
    run = run_dag(f"mirakl_account__{MARKETPLACE}", {"action": "reconnect"})
    assert run.state == "success", task_states(run)

    run_every_flow(sandbox, ledger)
    run_every_flow(sandbox, ledger)  # the accepted order goes on to its WooCommerce order; nothing twice

    assert mirakl_order(sandbox, waiting_work["new"])["order_state"] != "WAITING_ACCEPTANCE"
    assert mirakl_order(sandbox, waiting_work["shipped"])["order_state"] == "SHIPPED"
    assert len(sandbox.log.landed("mirakl", "OR21", f"/{waiting_work['new']}/")) == 1
    assert len(sandbox.log.landed("mirakl", "OR24", f"/{waiting_work['shipped']}/")) == 1
    assert sandbox.log.count("mirakl", "OR28", landed=True) == 1
    assert len([o for o in sandbox.woo.orders() if any(
        m["key"] == "_mirakl_order_id" and m["value"] == waiting_work["new"] for m in o["meta_data"])]) == 1
    with sandbox.lock:
        offers = {o["shop_sku"]: o["quantity"] for o in sandbox.mirakl.offers()}
    assert offers["TEE"] == 7


def test_a_disconnect_landing_during_a_run_stops_its_writes(sandbox, ledger, waiting_work, monkeypatch):
    """The run wired itself while connected; the disconnect lands before its first write."""
    from include.woo_mirakl import wiring
    from include.woo_mirakl.account import mark_disconnected
    from include.woo_mirakl.refunds import RefundSync

    sandbox.woo.refund_order(waiting_work["shipped_woo"], [{"sku": "MUG", "quantity": 1}],
                                      reason="Item arrived broken")
    w = wiring.wire(MARKETPLACE)
    flow = RefundSync(w.marketplace, w.ledger, mirakl=w.mirakl(), woo=w.woo())
    mark_disconnected(ledger, MARKETPLACE, "keep")
    mirakl_calls = len(sandbox.log.entries("mirakl"))

    with pytest.raises(wiring.MarketplaceDisconnected, match="OR28 not sent"):
        flow.sync()

    assert writes(sandbox, "mirakl", mirakl_calls) == []
