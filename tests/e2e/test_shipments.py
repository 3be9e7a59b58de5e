"""mirakl_shipment_confirm__sandbox end to end: dag.test() against the sandbox over real HTTP.

Orders reach SHIPPING through the orders flow; the warehouse ships them in WooCommerce; the
shipment flow confirms them on Mirakl. One sandbox and one ledger for the module; tests run in
file order.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from tests.e2e.conftest import advance, fault_kinds_seen, fault_mix, land_then_drop, orders_in_shipping, run_dag

DAG_ID = "mirakl_shipment_confirm__sandbox"
MINUTE = 61

pytestmark = pytest.mark.usefixtures("airflow_env")


def run(sandbox, ledger, seconds: float = MINUTE):
    advance(sandbox, ledger, seconds)
    return run_dag(DAG_ID)


def mirakl_order(sandbox, order_id) -> dict:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)


def landed(sandbox, operation: str, order_id: str) -> list[dict]:
    """The calls of ``operation`` on the order that Mirakl applied (whatever the client heard)."""
    return sandbox.log.landed("mirakl", operation, f"/{order_id}/")


def set_woo_status(sandbox, woo_id: int, status: str) -> None:
    with sandbox.lock:
        store = sandbox.woo.store
        store.update_order(store.order(woo_id), {"status": status})


@pytest.fixture(scope="module")
def world(sandbox, ledger, airflow_env):
    sandbox.woo.settings["shipment_tracking_installed"] = True  # this store has the Shipment Tracking extension
    sandbox.woo.add_simple_product("MUG", "12.50", 100, name="Tasse")
    sandbox.woo.add_simple_product("TEE", "20.00", 100, name="T-shirt")
    with sandbox.lock:
        sandbox.mirakl.add_offer("MUG", 12.5, 500)
        sandbox.mirakl.add_offer("TEE", 20.0, 500)
    names = ["mapped", "unmapped", "untracked", "crash", "cancel"]
    placed = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 2)], [("MUG", 2), ("TEE", 1)],
                                                  [("MUG", 1)], [("TEE", 1)]])
    return dict(zip(names, placed))


def test_mapped_unmapped_and_untracked_shipments(sandbox, ledger, world):
    (mapped, w_mapped), (unmapped, w_unmapped), (untracked, w_untracked) = (
        world["mapped"], world["unmapped"], world["untracked"])
    sandbox.woo.ship_order(w_mapped, tracking_provider="DHL Express", tracking_number="JD0142")
    sandbox.woo.ship_order(w_unmapped, custom_tracking_provider="Mondial Relay", tracking_number="MR-77",
                           custom_tracking_link="https://www.mondialrelay.fr/suivi/?n=MR-77")
    sandbox.woo.ship_order(w_untracked)

    assert run(sandbox, ledger).state == "success"

    first = mirakl_order(sandbox, mapped)
    assert (first["order_state"], first["shipping_carrier_code"], first["shipping_tracking"]) == (
        "SHIPPED", "DHL", "JD0142")
    second = mirakl_order(sandbox, unmapped)
    assert second["order_state"] == "SHIPPED"
    assert "shipping_carrier_code" not in second
    assert (second["shipping_company"], second["shipping_tracking"], second["shipping_tracking_url"]) == (
        "Mondial Relay", "MR-77", "https://www.mondialrelay.fr/suivi/?n=MR-77")
    third = mirakl_order(sandbox, untracked)
    assert third["order_state"] == "SHIPPED" and "shipping_tracking" not in third

    for order_id, tracked in ((mapped, True), (unmapped, True), (untracked, False)):
        or23, or24 = landed(sandbox, "OR23", order_id), landed(sandbox, "OR24", order_id)
        assert len(or23) == (1 if tracked else 0) and len(or24) == 1, order_id
        assert all(e["method"] == "PUT" for e in or23 + or24)
        if tracked:
            assert or23[0]["seq"] < or24[0]["seq"], "tracking goes before the shipment confirmation"
    assert sandbox.log.count("mirakl", "SH21") == 1

    problem = ledger.get_exception("carrier_unmapped", "mondialrelay", "sandbox")
    assert problem is not None and problem.status == "open"
    assert problem.detail["carrier"] == "Mondial Relay" and problem.detail["order_id"] == unmapped
    assert "no Mirakl carrier code" in problem.detail["message"]
    assert ledger.get_action(f"sandbox:mirakl.OR24:{untracked}").state == "done"


def test_reruns_send_nothing_new(sandbox, ledger, world):
    before = Counter(e["operation"] for e in sandbox.log.entries("mirakl"))
    for _ in range(2):
        assert run(sandbox, ledger).state == "success"
    after = Counter(e["operation"] for e in sandbox.log.entries("mirakl"))
    assert after["OR23"] == before["OR23"] and after["OR24"] == before["OR24"]
    assert after["SH21"] == 1  # cached in the ledger for a day


def test_crash_after_or24_before_the_ledger_write_ships_once(sandbox, ledger, world):
    order_id, woo_id = world["crash"]
    sandbox.woo.ship_order(woo_id, tracking_provider="UPS", tracking_number="1Z999")
    land_then_drop(sandbox, "mirakl", "OR24")  # Mirakl ships it, the answer is lost
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert mirakl_order(sandbox, order_id)["order_state"] == "SHIPPED"
    assert ledger.get_action(f"sandbox:mirakl.OR24:{order_id}").state == "uncertain"

    assert run(sandbox, ledger).state == "success"
    assert len(landed(sandbox, "OR24", order_id)) == 1
    assert len(landed(sandbox, "OR23", order_id)) == 1
    action = ledger.get_action(f"sandbox:mirakl.OR24:{order_id}")
    assert action.state == "done" and action.outcome["found_on_mirakl"] is True


def test_cancelled_in_woocommerce_cancels_on_mirakl_or_raises(sandbox, ledger, world):
    order_id, woo_id = world["cancel"]
    set_woo_status(sandbox, woo_id, "cancelled")
    [(waiting, waiting_woo)] = orders_in_shipping(sandbox, ledger, [[("MUG", 1)]], debit=False)
    set_woo_status(sandbox, waiting_woo, "cancelled")

    assert run(sandbox, ledger).state == "success"
    assert mirakl_order(sandbox, order_id)["order_state"] == "CANCELED"
    assert len(landed(sandbox, "OR29", order_id)) == 1
    assert mirakl_order(sandbox, waiting)["order_state"] == "WAITING_DEBIT_PAYMENT"
    refused = ledger.get_exception("mirakl_cancel_refused", waiting, "sandbox")
    assert refused is not None and refused.status == "open"
    assert "does not allow cancelling" in refused.detail["message"]

    # once debited it reaches SHIPPING, where Mirakl allows the cancel. (The orders flow currently
    # re-opens the cancelled WooCommerce order as `processing` on SHIPPING, so it is cancelled again.)
    with sandbox.lock:
        sandbox.mirakl.debit(waiting)
    advance(sandbox, ledger, MINUTE)
    assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    set_woo_status(sandbox, waiting_woo, "cancelled")
    assert run(sandbox, ledger).state == "success"
    assert mirakl_order(sandbox, waiting)["order_state"] == "CANCELED"
    assert ledger.get_exception("mirakl_cancel_refused", waiting, "sandbox").status == "resolved"
    assert len(landed(sandbox, "OR29", order_id)) == 1


def test_overdue_orders_raise_then_clear_when_shipped(sandbox, ledger, world):
    with sandbox.lock:
        sandbox.mirakl.configure(leadtime_to_ship=0)
    try:
        [(late, late_woo)] = orders_in_shipping(sandbox, ledger, [[("TEE", 1)]])
    finally:
        with sandbox.lock:
            sandbox.mirakl.configure(leadtime_to_ship=2)
    # the shipping deadline is now the (24 h) acceptance deadline: move a day on, with fresh activity
    advance(sandbox, ledger, 86400 + 60)
    orders_in_shipping(sandbox, ledger, [[("MUG", 1)]], debit=False)
    assert run(sandbox, ledger).state == "success"
    overdue = ledger.get_exception("shipment_overdue", late, "sandbox")
    assert overdue is not None and overdue.status == "open" and overdue.severity == "critical"
    assert overdue.detail["hours_late"] > 0

    sandbox.woo.ship_order(late_woo)
    assert run(sandbox, ledger).state == "success"
    assert mirakl_order(sandbox, late)["order_state"] == "SHIPPED"
    assert ledger.get_exception("shipment_overdue", late, "sandbox").status == "resolved"


def test_faults_on_both_apis_still_ship_each_order_once(sandbox, ledger, world):
    placed = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 1)], [("MUG", 1)], [("TEE", 2)],
                                                  [("MUG", 1)], [("TEE", 1)]])
    for index, (_, woo_id) in enumerate(placed):
        sandbox.woo.ship_order(woo_id, tracking_provider="Colissimo", tracking_number=f"6A{index:05d}")
    sandbox.faults.set(fault_mix())
    try:
        for _ in range(10):
            run(sandbox, ledger)
            if all(mirakl_order(sandbox, o)["order_state"] == "SHIPPED" for o, _ in placed):
                break
    finally:
        sandbox.faults.clear()
    assert run(sandbox, ledger).state == "success"
    assert {"apply_then_status", "apply_then_drop"} <= fault_kinds_seen(sandbox)
    for index, (order_id, _) in enumerate(placed):
        shown = mirakl_order(sandbox, order_id)
        assert (shown["order_state"], shown["shipping_carrier_code"], shown["shipping_tracking"]) == (
            "SHIPPED", "COLISSIMO", f"6A{index:05d}")
        assert len(landed(sandbox, "OR24", order_id)) == 1, order_id
        assert ledger.get_action(f"sandbox:mirakl.OR24:{order_id}").state == "done", order_id
        assert ledger.get_exception("shipment_failed", order_id, "sandbox") is None


def test_call_log_shows_no_ceiling_breach_and_no_spec_violation(sandbox, world):
    times = sorted(datetime.fromisoformat(c["at"].replace("Z", "+00:00")) for c in sandbox.log.entries("mirakl", "OR11"))
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= timedelta(seconds=60)
    assert sandbox.log.count("mirakl", "SH21") == 1
    violations = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl") if e["violations"]]
    assert violations == []
