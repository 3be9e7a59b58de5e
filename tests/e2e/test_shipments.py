"""mirakl_shipment_confirm__sandbox end to end: dag.test() against the sandbox over real HTTP.

Orders reach SHIPPING through the orders flow; the warehouse ships them in WooCommerce; the
shipment flow confirms them on Mirakl. One sandbox and one ledger for the module; tests run in
file order.
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from tests.e2e.conftest import (
    advance, fail_record, fault_kinds_seen, fault_mix, land_then_drop, orders_in_shipping, run_dag,
)

DAG_ID = "mirakl_shipment_confirm__sandbox"
MINUTE = 61

pytestmark = pytest.mark.usefixtures("airflow_env")


def run(sandbox, ledger, seconds: float = MINUTE, retries: bool = True):
    advance(sandbox, ledger, seconds)
    return run_dag(DAG_ID, retries=retries)


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


def correct_tracking(sandbox, woo_id: int, number: str, provider: str = "Colissimo") -> None:
    """The warehouse replaces the order's tracking number in WooCommerce (a typo, a new parcel)."""
    with sandbox.lock:
        store = sandbox.woo.store
        order = store.order(woo_id)
        for entry in list(store.tracking_items(order)):
            store.delete_tracking(order, entry["tracking_id"])
        store.add_tracking(order, {"tracking_provider": provider, "tracking_number": number})


def calls_on(sandbox, order_id: str) -> list[str]:
    """The Mirakl calls sent on one order's own routes, in order (whether or not they landed)."""
    return [e["operation"] for e in sandbox.log.entries("mirakl") if f"/{order_id}/" in e["path"]]


def open_problem(ledger, kind: str, order_id: str):
    found = ledger.get_exception(kind, order_id, "sandbox")
    assert found is not None and found.status == "open", (kind, order_id, found)
    return found.detail


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
    # re-read in the overlap window, the same order with the same unmapped carrier is no new occurrence
    unmapped = ledger.get_exception("carrier_unmapped", "mondialrelay", "sandbox")
    assert unmapped.status == "open" and unmapped.count == 1, unmapped


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


def faulted_shipment_cycles(sandbox, ledger, faults: list[dict], prefix: str) -> list[tuple[str, int]]:
    """Six orders shipped in WooCommerce, shipment cycles under ``faults``, then a clean one."""
    placed = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 1)], [("MUG", 1)], [("TEE", 2)],
                                                  [("MUG", 1)], [("TEE", 1)]])
    for index, (_, woo_id) in enumerate(placed):
        sandbox.woo.ship_order(woo_id, tracking_provider="Colissimo", tracking_number=f"{prefix}{index:05d}")
    sandbox.faults.set(faults)
    try:
        for _ in range(10):
            run(sandbox, ledger)
            if all(mirakl_order(sandbox, o)["order_state"] == "SHIPPED" for o, _ in placed):
                break
    finally:
        sandbox.faults.clear()
    assert run(sandbox, ledger).state == "success"
    return placed


def shipment_problems(sandbox, ledger, placed: list[tuple[str, int]], prefix: str) -> list[str]:
    problems = []
    for index, (order_id, _) in enumerate(placed):
        shown = mirakl_order(sandbox, order_id)
        seen = (shown["order_state"], shown.get("shipping_carrier_code"), shown.get("shipping_tracking"))
        if seen != ("SHIPPED", "COLISSIMO", f"{prefix}{index:05d}"):
            problems.append(f"{order_id}: Mirakl shows {seen}")
        if len(landed(sandbox, "OR24", order_id)) != 1:
            problems.append(f"{order_id}: {len(landed(sandbox, 'OR24', order_id))} OR24 landed")
        if ledger.get_action(f"sandbox:mirakl.OR24:{order_id}").state != "done":
            problems.append(f"{order_id}: OR24 action not done")
        failed = ledger.get_exception("shipment_failed", order_id, "sandbox")
        if failed is not None and failed.status == "open":  # one resolved once it shipped is fine
            problems.append(f"{order_id}: open shipment_failed exception")
    return problems


def test_faults_on_both_apis_still_ship_each_order_once(sandbox, ledger, world):
    placed = faulted_shipment_cycles(sandbox, ledger, fault_mix(), "6A")
    assert {"apply_then_status", "apply_then_drop"} <= fault_kinds_seen(sandbox)
    assert shipment_problems(sandbox, ledger, placed, "6A") == []


def test_blind_write_retry_fails_the_shipment_fault_test(sandbox, ledger, world, blind_write_retry):
    # every OR24 faulted, most after landing: a blind retry of one finds the order SHIPPED already
    faults = [rule for rule in fault_mix(1.0, {"mirakl": "OR24"}) if rule["service"] == "mirakl"]
    placed = faulted_shipment_cycles(sandbox, ledger, faults, "6B")
    assert shipment_problems(sandbox, ledger, placed, "6B"), "a blind OR24 retry went unnoticed"


def test_one_order_failing_for_good_leaves_the_others_and_the_cursor_going(sandbox, ledger, world):
    placed = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 1)], [("MUG", 1)], [("TEE", 1)], [("MUG", 1)]])
    (down, w_down), (gone, _), (unread, w_unread), (denied, _), (fine, w_fine) = placed
    for index, (_, woo_id) in enumerate(placed):
        sandbox.woo.ship_order(woo_id, tracking_provider="Colissimo", tracking_number=f"8B{index:05d}")
    fail_record(sandbox, "mirakl", "OR24", f"/{down}/ship", 500)  # Mirakl fails this order's OR24 every time
    fail_record(sandbox, "mirakl", "*", f"/api/orders/{gone}/", 404)  # Mirakl no longer knows this one
    fail_record(sandbox, "woo", "woo.tracking.list", f"/orders/{w_unread}/", 500)  # its tracking cannot be read
    fail_record(sandbox, "mirakl", "OR24", f"/{denied}/ship", 403)
    try:
        for _ in range(3):
            assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()

    shown = mirakl_order(sandbox, fine)
    assert (shown["order_state"], shown["shipping_tracking"]) == ("SHIPPED", "8B00004")
    for order_id in (down, gone, unread, denied):
        assert mirakl_order(sandbox, order_id)["order_state"] == "SHIPPING", order_id
    stuck = open_problem(ledger, "shipment_failed", down)["message"]
    assert "not done after 3 attempts" in stuck and "HTTP 500" in stuck
    assert open_problem(ledger, "tracking_failed", gone)["status"] == 404
    assert open_problem(ledger, "shipment_failed", gone)["status"] == 404
    assert "woo.tracking.list: HTTP 500" in open_problem(ledger, "shipment_failed", unread)["message"]
    assert open_problem(ledger, "shipment_failed", denied)["status"] == 403
    waiting = set(ledger.get_cursor("mirakl_shipment_confirm", "sandbox", "woo_orders")["waiting"])
    assert {w_down, w_unread} <= waiting and w_fine not in waiting

    for _ in range(2):  # the faults are over: what was retried ships, once
        assert run(sandbox, ledger).state == "success"
    for order_id in (down, unread):
        assert mirakl_order(sandbox, order_id)["order_state"] == "SHIPPED", order_id
        assert len(landed(sandbox, "OR24", order_id)) == 1, order_id
        assert ledger.get_exception("shipment_failed", order_id, "sandbox").status == "resolved", order_id
    assert mirakl_order(sandbox, denied)["order_state"] == "SHIPPING"  # refused for good: left to a person


def test_refused_credentials_fail_the_task_and_lose_no_shipment(sandbox, ledger, world):
    [(order_id, woo_id)] = orders_in_shipping(sandbox, ledger, [[("TEE", 1)]])
    sandbox.woo.ship_order(woo_id, tracking_provider="Colissimo", tracking_number="6A-KEY")
    key, sandbox.mirakl.api_key = sandbox.mirakl.api_key, "rotated-key"  # the shop's key changed in Mirakl
    try:
        assert run(sandbox, ledger, retries=False).state == "failed"
    finally:
        sandbox.mirakl.api_key = key
    assert ledger.get_action(f"sandbox:mirakl.OR23:{order_id}").retryable
    assert ledger.get_exception("tracking_failed", order_id, "sandbox") is None

    assert run(sandbox, ledger).state == "success"
    shown = mirakl_order(sandbox, order_id)
    assert (shown["order_state"], shown["shipping_tracking"]) == ("SHIPPED", "6A-KEY")


def test_or23_and_or24_applied_then_answered_500_are_settled_from_mirakl(sandbox, ledger, world):
    [(order_id, woo_id)] = orders_in_shipping(sandbox, ledger, [[("TEE", 1)]])
    sandbox.woo.ship_order(woo_id, tracking_provider="DHL Express", tracking_number="JD0777")
    for operation in ("OR23", "OR24"):  # each lands, then Mirakl answers 500
        sandbox.faults.add({"service": "mirakl", "operation": operation, "kind": "apply_then_status", "status": 500,
                            "count": 1})
    try:
        for _ in range(3):
            assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    shown = mirakl_order(sandbox, order_id)
    assert (shown["order_state"], shown["shipping_carrier_code"], shown["shipping_tracking"]) == (
        "SHIPPED", "DHL", "JD0777")
    # OR23 overwrites: the client may repeat it. OR24 is sent once; Mirakl's order settled it.
    assert [op for op in calls_on(sandbox, order_id) if op == "OR24"] == ["OR24"]
    assert ledger.get_action(f"sandbox:mirakl.OR23:{order_id}").state == "done"
    action = ledger.get_action(f"sandbox:mirakl.OR24:{order_id}")
    assert action.state == "done" and action.outcome["found_on_mirakl"] is True


def test_corrected_tracking_is_sent_again_once_before_and_after_the_shipment(sandbox, ledger, world):
    [(before, w_before), (after, w_after)] = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 1)]])
    sandbox.woo.ship_order(w_before, tracking_provider="Colissimo", tracking_number="6A-TYPO1")
    sandbox.woo.ship_order(w_after, tracking_provider="Colissimo", tracking_number="6A-TYPO2")
    sandbox.faults.add({"service": "mirakl", "operation": "OR24", "kind": "status", "status": 503,
                        "contains": f"/{before}/", "count": 1})  # this one is not shipped yet next cycle
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert mirakl_order(sandbox, before)["order_state"] == "SHIPPING"
    assert mirakl_order(sandbox, after)["order_state"] == "SHIPPED"

    correct_tracking(sandbox, w_before, "6A-RIGHT1")
    correct_tracking(sandbox, w_after, "6A-RIGHT2")
    for _ in range(3):
        assert run(sandbox, ledger).state == "success"
    for order_id, number in ((before, "6A-RIGHT1"), (after, "6A-RIGHT2")):
        shown = mirakl_order(sandbox, order_id)
        assert (shown["order_state"], shown["shipping_carrier_code"], shown["shipping_tracking"]) == (
            "SHIPPED", "COLISSIMO", number), order_id
        assert len(landed(sandbox, "OR23", order_id)) == 2, order_id  # the first number, then the corrected one
        assert len(landed(sandbox, "OR24", order_id)) == 1, order_id


def test_call_log_shows_no_ceiling_breach_and_no_spec_violation(sandbox, world):
    times = sorted(datetime.fromisoformat(c["at"].replace("Z", "+00:00")) for c in sandbox.log.entries("mirakl", "OR11"))
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= timedelta(seconds=60)
    assert sandbox.log.count("mirakl", "SH21") == 1
    violations = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl") if e["violations"]]
    assert violations == []
