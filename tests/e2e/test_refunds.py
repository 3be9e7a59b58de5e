"""mirakl_refund_sync__sandbox end to end: dag.test() against the sandbox over real HTTP.

Orders reach SHIPPING through the orders flow; the shop refunds them in WooCommerce; the refund
flow sends each refund to Mirakl once. One sandbox and one ledger for the module; tests run in
file order.
"""
from __future__ import annotations

import pytest

from tests.e2e.conftest import (
    CLIENT_TIMEOUT, advance, fail_record, fault_kinds_seen, fault_mix, land_then_drop, orders_in_shipping,
    run_dag,
)

DAG_ID = "mirakl_refund_sync__sandbox"
FLOW = "mirakl_refund_sync"
MINUTE = 61

pytestmark = pytest.mark.usefixtures("airflow_env")


def run(sandbox, ledger, retries: bool = True):
    advance(sandbox, ledger, MINUTE)
    return run_dag(DAG_ID, retries=retries)


def mirakl_refunds(sandbox, order_id) -> dict[str, list[tuple]]:
    """Per Mirakl line: (amount, shipping, quantity, reason) of each refund Mirakl holds."""
    with sandbox.lock:
        order = sandbox.mirakl.order(order_id)
    return {line["order_line_id"]: [(r["amount"], r["shipping_amount"], r["quantity"], r["reason_code"])
                                    for r in line["refunds"]] for line in order["order_lines"]}


def line_item(sandbox, woo_id: int, sku: str) -> int:
    return next(li["id"] for li in sandbox.woo.order(woo_id)["line_items"] if li["sku"] == sku)


def refund(sandbox, woo_id: int, lines: list[tuple[str, int, str]] | None = None, amount=None, reason=""):
    items = None if lines is None else [
        {"id": line_item(sandbox, woo_id, sku), "quantity": qty, "refund_total": total} for sku, qty, total in lines]
    return sandbox.woo.refund_order(woo_id, items, amount=amount, reason=reason)


def frozen(ledger, refund_id: int) -> dict:
    return ledger.get_cursor(FLOW, "sandbox", f"or28:{refund_id}")


def body(line_id: str, amount: float, shipping: float, reason: str, quantity: int | None = None) -> dict:
    out = {"order_line_id": line_id, "amount": amount, "shipping_amount": shipping, "reason_code": reason}
    if quantity:
        out["quantity"] = quantity
    return out


@pytest.fixture(scope="module")
def world(sandbox, ledger, airflow_env):
    sandbox.woo.add_simple_product("MUG", "12.50", 100, name="Tasse")
    sandbox.woo.add_simple_product("TEE", "20.00", 100, name="T-shirt")
    with sandbox.lock:
        sandbox.mirakl.add_offer("MUG", 12.5, 500)
        sandbox.mirakl.add_offer("TEE", 20.0, 500)
    names = ["partial", "full", "shipping", "over", "unknown", "crash"]
    placed = orders_in_shipping(sandbox, ledger, [
        [("MUG", 2), ("TEE", 1)], [("MUG", 1), ("TEE", 1)], [("MUG", 1), ("TEE", 1)], [("MUG", 1)], [("TEE", 1)],
        [("MUG", 3)],
    ])
    return dict(zip(names, placed))


def test_partial_full_and_shipping_only_refunds(sandbox, ledger, world):
    (partial, w_partial), (full, w_full), (ship, w_ship) = world["partial"], world["full"], world["shipping"]
    first = refund(sandbox, w_partial, [("MUG", 1, "12.50")], reason="Item arrived broken")
    whole = refund(sandbox, w_full, reason="")
    shipping_only = refund(sandbox, w_ship, [], amount="4.99", reason="Late delivery")

    assert run(sandbox, ledger).state == "success"

    assert frozen(ledger, first["id"]) == {"refunds": [body(f"{partial}-1", 12.5, 0.0, "RETURN_BROKEN_ITEM", 1)]}
    assert mirakl_refunds(sandbox, partial) == {
        f"{partial}-1": [(12.5, 0.0, 1, "RETURN_BROKEN_ITEM")], f"{partial}-2": []}
    # the shipping (2.50 + 2.49 per line) goes with the lines it was charged on
    assert frozen(ledger, whole["id"]) == {"refunds": [
        body(f"{full}-1", 12.5, 2.5, "RETURN_CHANGED_MIND", 1), body(f"{full}-2", 20.0, 2.49, "RETURN_CHANGED_MIND", 1)]}
    assert mirakl_refunds(sandbox, full) == {
        f"{full}-1": [(12.5, 2.5, 1, "RETURN_CHANGED_MIND")], f"{full}-2": [(20.0, 2.49, 1, "RETURN_CHANGED_MIND")]}
    assert frozen(ledger, shipping_only["id"]) == {"refunds": [
        body(f"{ship}-1", 0.0, 2.5, "RETURN_CHANGED_MIND"), body(f"{ship}-2", 0.0, 2.49, "RETURN_CHANGED_MIND")]}
    assert mirakl_refunds(sandbox, ship) == {
        f"{ship}-1": [(0.0, 2.5, 0, "RETURN_CHANGED_MIND")], f"{ship}-2": [(0.0, 2.49, 0, "RETURN_CHANGED_MIND")]}
    assert sandbox.log.count("mirakl", "OR28") == 3

    action = ledger.get_action(f"sandbox:mirakl.OR28:{whole['id']}")
    assert action.state == "done" and len(action.outcome["refund_ids"]) == 2
    notes = [n["note"] for n in sandbox.woo.store.notes[w_full]]
    assert any(", ".join(action.outcome["refund_ids"]) in n and f"Refund #{whole['id']}" in n for n in notes)


def test_two_refunds_on_one_order_on_a_store_before_9(sandbox, ledger, world):
    partial, w_partial = world["partial"]
    sandbox.woo.version = "8.9.0"  # no GET /refunds: refunds are read per order
    try:
        second = refund(sandbox, w_partial, [("MUG", 1, "12.50"), ("TEE", 1, "20.00")], reason="changed mind")
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.woo.version = "9.8.0"
    assert sandbox.log.count("woo", "woo.refunds.list") >= 1
    assert frozen(ledger, second["id"]) == {"refunds": [
        body(f"{partial}-1", 12.5, 0.0, "RETURN_CHANGED_MIND", 1), body(f"{partial}-2", 20.0, 0.0, "RETURN_CHANGED_MIND", 1)]}
    assert mirakl_refunds(sandbox, partial) == {
        f"{partial}-1": [(12.5, 0.0, 1, "RETURN_BROKEN_ITEM"), (12.5, 0.0, 1, "RETURN_CHANGED_MIND")],
        f"{partial}-2": [(20.0, 0.0, 1, "RETURN_CHANGED_MIND")]}


def test_reruns_send_nothing_new(sandbox, ledger, world):
    before = sandbox.log.count("mirakl", "OR28")
    for _ in range(2):
        assert run(sandbox, ledger).state == "success"
    assert sandbox.log.count("mirakl", "OR28") == before == 4


def test_over_refund_and_unknown_line_are_refused_with_clear_exceptions(sandbox, ledger, world):
    (over, w_over), (unknown, w_unknown) = world["over"], world["unknown"]
    too_much = refund(sandbox, w_over, [("MUG", 1, "16.00")])
    with sandbox.lock:  # a line the shop added in WooCommerce: Mirakl never sold it
        store = sandbox.woo.store
        store.update_order(store.order(w_unknown), {"line_items": [{"sku": "MUG", "quantity": 1}]})
    stray = refund(sandbox, w_unknown, [("MUG", 1, "12.50")])
    or28_before = sandbox.log.count("mirakl", "OR28")

    assert run(sandbox, ledger).state == "success"

    assert sandbox.log.count("mirakl", "OR28") == or28_before
    assert mirakl_refunds(sandbox, over) == {f"{over}-1": []}
    assert mirakl_refunds(sandbox, unknown) == {f"{unknown}-1": []}
    over_problem = ledger.get_exception("refund_unsendable", str(too_much["id"]), "sandbox")
    assert over_problem.status == "open" and over_problem.detail["order_id"] == over
    assert "16.00 on Mirakl line" in over_problem.detail["message"]
    assert "more than is left to refund: 12.50" in over_problem.detail["message"]
    stray_problem = ledger.get_exception("refund_unsendable", str(stray["id"]), "sandbox")
    assert stray_problem.status == "open"
    assert f"is not a line of Mirakl order {unknown}" in stray_problem.detail["message"]
    assert ledger.get_action(f"sandbox:mirakl.OR28:{too_much['id']}") is None


def test_crash_after_or28_before_the_ledger_write_refunds_once(sandbox, ledger, world):
    order_id, woo_id = world["crash"]
    made = refund(sandbox, woo_id, [("MUG", 2, "25.00")], reason="damaged")
    land_then_drop(sandbox, "mirakl", "OR28")  # Mirakl makes the refund, the answer is lost
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert mirakl_refunds(sandbox, order_id) == {f"{order_id}-1": [(25.0, 0.0, 2, "RETURN_BROKEN_ITEM")]}
    assert ledger.get_action(f"sandbox:mirakl.OR28:{made['id']}").state == "uncertain"

    for _ in range(2):
        assert run(sandbox, ledger).state == "success"
    assert mirakl_refunds(sandbox, order_id) == {f"{order_id}-1": [(25.0, 0.0, 2, "RETURN_BROKEN_ITEM")]}
    action = ledger.get_action(f"sandbox:mirakl.OR28:{made['id']}")
    assert action.state == "done" and action.outcome["found_on_mirakl"] is True
    assert len(action.outcome["refund_ids"]) == 1


def faulted_refund_cycles(sandbox, ledger) -> tuple[list[tuple[str, int]], list[dict]]:
    """Refunds made in WooCommerce, refund cycles under 20 % faults of every kind, then a clean one."""
    placed = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 2)], [("MUG", 2), ("TEE", 1)],
                                                  [("TEE", 1)], [("MUG", 1)], [("MUG", 1), ("TEE", 1)]])
    made = [refund(sandbox, woo_id, reason="broken") for _, woo_id in placed]
    sandbox.faults.set(fault_mix(operations={"mirakl": "OR28"}))
    try:
        for _ in range(10):
            run(sandbox, ledger)
            if all(_done(ledger, r["id"]) for r in made):
                break
    finally:
        sandbox.faults.clear()
    assert run(sandbox, ledger).state == "success"
    return placed, made


def refund_problems(sandbox, ledger, placed, made) -> list[str]:
    problems = []
    for (order_id, _), made_refund in zip(placed, made):
        if not _done(ledger, made_refund["id"]):
            problems.append(f"refund {made_refund['id']}: OR28 action not done")
        for line_id, refunds in mirakl_refunds(sandbox, order_id).items():
            if len(refunds) != 1:
                problems.append(f"{line_id}: {len(refunds)} refunds on Mirakl (duplicate or lost)")
        if ledger.get_exception("refund_refused", str(made_refund["id"]), "sandbox") is not None:
            problems.append(f"refund {made_refund['id']}: exception")
    return problems


def test_faults_on_both_apis_still_refund_each_once(sandbox, ledger, world):
    placed, made = faulted_refund_cycles(sandbox, ledger)
    assert {"apply_then_status", "apply_then_drop"} <= fault_kinds_seen(sandbox)
    assert refund_problems(sandbox, ledger, placed, made) == []


def test_blind_write_retry_fails_the_refund_fault_test(sandbox, ledger, world, blind_write_retry):
    placed, made = faulted_refund_cycles(sandbox, ledger)
    problems = refund_problems(sandbox, ledger, placed, made)
    assert problems, "a blind OR28 retry went unnoticed"


def _done(ledger, refund_id) -> bool:
    action = ledger.get_action(f"sandbox:mirakl.OR28:{refund_id}")
    return action is not None and action.state == "done"


def test_one_refund_failing_for_good_leaves_the_others_and_the_cursor_going(sandbox, ledger, world):
    placed = orders_in_shipping(sandbox, ledger, [[("MUG", 1)], [("TEE", 1)], [("MUG", 1)], [("TEE", 1)]])
    (down, _), (gone, w_gone), (denied, _), (fine, _) = placed
    made = {order_id: refund(sandbox, woo_id, reason="broken") for order_id, woo_id in placed}
    fail_record(sandbox, "mirakl", "OR28", f'"{down}-1"', 500)  # Mirakl fails this order's OR28 every time
    fail_record(sandbox, "woo", "woo.orders.get", f"/orders/{w_gone} ", 404)  # its WooCommerce order is gone
    fail_record(sandbox, "mirakl", "OR28", f'"{denied}-1"', 403)
    try:
        for _ in range(3):
            assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()

    assert [len(r) for r in mirakl_refunds(sandbox, fine).values()] == [1]
    assert _done(ledger, made[fine]["id"])
    for order_id in (down, gone, denied):
        assert mirakl_refunds(sandbox, order_id) == {f"{order_id}-1": []}, order_id
    stuck = ledger.get_exception("refund_failed", str(made[down]["id"]), "sandbox")
    assert stuck.status == "open" and "not done after 3 attempts" in stuck.detail["message"]
    assert "HTTP 500" in stuck.detail["message"] and down in stuck.detail["message"]
    missing = ledger.get_exception("refund_failed", str(made[gone]["id"]), "sandbox")
    assert missing.status == "open" and "HTTP 404" in missing.detail["message"]
    refused = ledger.get_exception("refund_refused", str(made[denied]["id"]), "sandbox")
    assert refused.status == "open" and refused.detail["status"] == 403
    cursor = ledger.get_cursor(FLOW, "sandbox", "woo_refunds")
    assert {int(k) for k in cursor["pending"]} >= {made[down]["id"], made[gone]["id"]}
    assert made[fine]["id"] not in {int(k) for k in cursor["pending"]}

    for _ in range(2):  # the faults are over: what was retried lands, once
        assert run(sandbox, ledger).state == "success"
    for order_id in (down, gone):
        assert [len(r) for r in mirakl_refunds(sandbox, order_id).values()] == [1], order_id
        assert ledger.get_exception("refund_failed", str(made[order_id]["id"]), "sandbox").status == "resolved"
    assert mirakl_refunds(sandbox, denied) == {f"{denied}-1": []}  # refused for good: left to a person


def test_refused_credentials_fail_the_task_and_lose_no_refund(sandbox, ledger, world):
    [(order_id, woo_id)] = orders_in_shipping(sandbox, ledger, [[("TEE", 1)]])
    made = refund(sandbox, woo_id, reason="broken")
    key, sandbox.mirakl.api_key = sandbox.mirakl.api_key, "rotated-key"  # the shop's key changed in Mirakl
    try:
        assert run(sandbox, ledger, retries=False).state == "failed"
    finally:
        sandbox.mirakl.api_key = key
    action = ledger.get_action(f"sandbox:mirakl.OR28:{made['id']}")
    assert action.state == "failed" and action.retryable  # not refused for good: every record would be
    assert ledger.get_exception("refund_refused", str(made["id"]), "sandbox") is None

    assert run(sandbox, ledger).state == "success"
    assert [len(r) for r in mirakl_refunds(sandbox, order_id).values()] == [1]
    assert _done(ledger, made["id"])


@pytest.mark.parametrize("kind", ["apply_then_status", "apply_then_slow"])
def test_or28_applied_then_failed_is_settled_from_mirakl_not_sent_again(sandbox, ledger, world, kind):
    [(order_id, woo_id)] = orders_in_shipping(sandbox, ledger, [[("MUG", 1), ("TEE", 1)]])
    made = refund(sandbox, woo_id, reason="damaged")
    sandbox.faults.add({"service": "mirakl", "operation": "OR28", "kind": kind, "status": 500,
                        "delay": CLIENT_TIMEOUT + 1, "count": 1})
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert ledger.get_action(f"sandbox:mirakl.OR28:{made['id']}").state == "uncertain"
    sent = sandbox.log.count("mirakl", "OR28")

    for _ in range(2):
        assert run(sandbox, ledger).state == "success"
    assert sandbox.log.count("mirakl", "OR28") == sent  # settled from Mirakl's refunds, not re-sent
    assert [len(r) for r in mirakl_refunds(sandbox, order_id).values()] == [1, 1]
    action = ledger.get_action(f"sandbox:mirakl.OR28:{made['id']}")
    assert action.state == "done" and action.outcome["found_on_mirakl"] is True
    assert len(action.outcome["refund_ids"]) == 2


def test_no_spec_violation_and_no_ceiling_breach(sandbox, world):
    from datetime import datetime, timedelta

    violations = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl") if e["violations"]]
    assert violations == []
    times = sorted(datetime.fromisoformat(c["at"].replace("Z", "+00:00")) for c in sandbox.log.entries("mirakl", "OR11"))
    assert min(later - earlier for earlier, later in zip(times, times[1:])) >= timedelta(seconds=60)
