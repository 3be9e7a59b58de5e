"""mirakl_order_ingest__sandbox end to end: dag.test() runs against the sandbox over real HTTP.

One sandbox and one ledger for the module; the tests run in file order and build on each other
(the mixed batch is decided, re-run, shipped, cancelled, then crashed into and faulted).
"""
from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta

import pytest

from include.sandbox.scenarios import customer
from tests.e2e.conftest import advance, fault_kinds_seen, fault_mix, land_then_drop, run_dag

DAG_ID = "mirakl_order_ingest__sandbox"
MINUTE = 61  # one schedule tick, so the once-a-minute OR11 budget allows the next run
NO_DEBIT = 10 * 86400  # the operator debits only when a test says so
MESSAGE = "Merci de livrer après 18h — code porte 1234 🙂"

pytestmark = pytest.mark.usefixtures("airflow_env")


def run(sandbox, ledger, seconds: float = MINUTE):
    """One scheduled run, a minute after the previous one."""
    advance(sandbox, ledger, seconds)
    return run_dag(DAG_ID)


def place(sandbox, lines, index=0, **kwargs) -> str:
    kwargs.setdefault("debit_delay_s", NO_DEBIT)
    with sandbox.lock:
        order = sandbox.mirakl.place_order(
            lines=[{"offer_sku": sku, "quantity": qty} for sku, qty in lines], customer=customer(index), **kwargs
        )
    return order["order_id"]


def line_states(sandbox, order_id) -> dict[str, str]:
    with sandbox.lock:
        return {line["offer_sku"]: line["order_line_state"] for line in sandbox.mirakl.order(order_id)["order_lines"]}


def mirakl_state(sandbox, order_id) -> str:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)["order_state"]


def meta(order: dict, key: str):
    return next((m["value"] for m in order["meta_data"] if m["key"] == key), None)


def woo_orders_by_mirakl_id(sandbox) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    for order in sandbox.woo.orders():
        if meta(order, "_mirakl_order_id"):
            found.setdefault(meta(order, "_mirakl_order_id"), []).append(order)
    return found


def stock(sandbox, sku) -> int:
    return sandbox.woo.product_by_sku(sku)["stock_quantity"]


@pytest.fixture(scope="module")
def batch(sandbox, ledger, airflow_env):
    """A catalogue and the mixed batch of issue #4, placed before the first run."""
    sandbox.woo.add_simple_product("MUG-BLUE", "12.50", 10, name="Tasse bleue")
    sandbox.woo.add_simple_product("LAST-UNITS", "30.00", 3)
    sandbox.woo.add_simple_product("SHORT", "8.00", 1)
    sandbox.woo.add_variable_product("T-shirt été", [
        {"sku": "TEE-M", "price": "20.00", "stock_quantity": 5, "attributes": [{"name": "Size", "option": "M"}]},
        {"sku": "TEE-L", "price": "20.00", "stock_quantity": 5, "attributes": [{"name": "Size", "option": "L"}]},
    ])
    with sandbox.lock:
        for sku in ("MUG-BLUE", "LAST-UNITS", "SHORT", "TEE-M", "TEE-L", "NOT-IN-WOO"):
            sandbox.mirakl.add_offer(sku, 15.0, 200)
    orders = {
        "single": place(sandbox, [("MUG-BLUE", 2)], 0, customer_message=MESSAGE),
        "multi": place(sandbox, [("MUG-BLUE", 1), ("TEE-M", 2), ("NOT-IN-WOO", 1)], 1),
        "first_for_last": place(sandbox, [("LAST-UNITS", 2)], 2),
        "second_for_last": place(sandbox, [("LAST-UNITS", 2)], 0),
        "short": place(sandbox, [("SHORT", 3), ("MUG-BLUE", 1)], 1),
        "all_refused": place(sandbox, [("NOT-IN-WOO", 2)], 2),
        "bad": place(sandbox, [("TEE-L", 1)], 0),
    }
    with sandbox.lock:  # a payload Mirakl should never send: a line without its SKU
        sandbox.mirakl.store.orders[orders["bad"]]["lines"][0]["offer_sku"] = ""
    return orders


def test_mixed_batch_is_decided_line_by_line_and_reserved(sandbox, ledger, batch):
    dagrun = run(sandbox, ledger)
    assert dagrun.state == "success"

    assert line_states(sandbox, batch["single"]) == {"MUG-BLUE": "WAITING_DEBIT_PAYMENT"}
    assert line_states(sandbox, batch["multi"]) == {
        "MUG-BLUE": "WAITING_DEBIT_PAYMENT", "TEE-M": "WAITING_DEBIT_PAYMENT", "NOT-IN-WOO": "REFUSED"}
    assert line_states(sandbox, batch["first_for_last"]) == {"LAST-UNITS": "WAITING_DEBIT_PAYMENT"}
    assert line_states(sandbox, batch["second_for_last"]) == {"LAST-UNITS": "REFUSED"}
    assert line_states(sandbox, batch["short"]) == {"SHORT": "REFUSED", "MUG-BLUE": "WAITING_DEBIT_PAYMENT"}
    assert mirakl_state(sandbox, batch["all_refused"]) == "REFUSED"
    assert mirakl_state(sandbox, batch["bad"]) == "WAITING_ACCEPTANCE"

    woo = woo_orders_by_mirakl_id(sandbox)
    assert set(woo) == {batch["single"], batch["multi"], batch["first_for_last"], batch["short"]}
    assert all(len(found) == 1 for found in woo.values())
    single = woo[batch["single"]][0]
    assert single["status"] == "on-hold" and single["currency"] == "EUR" and single["payment_method"] == "mirakl"
    assert meta(single, "_mirakl_marketplace") == "sandbox"
    assert meta(single, "_mirakl_commercial_id").startswith("SBX")
    assert single["billing"]["first_name"] == "Zoé" and single["billing"]["last_name"] == "Lefèvre"
    assert [(li["sku"], li["quantity"], li["total"]) for li in single["line_items"]] == [("MUG-BLUE", 2, "30.00")]
    multi = woo[batch["multi"]][0]
    assert [(li["sku"], li["quantity"]) for li in multi["line_items"]] == [("MUG-BLUE", 1), ("TEE-M", 2)]
    assert multi["line_items"][1]["variation_id"] != 0
    short = woo[batch["short"]][0]
    assert [(li["sku"], li["quantity"]) for li in short["line_items"]] == [("MUG-BLUE", 1)]

    assert stock(sandbox, "MUG-BLUE") == 10 - 2 - 1 - 1
    assert stock(sandbox, "TEE-M") == 5 - 2
    assert stock(sandbox, "LAST-UNITS") == 3 - 2
    assert stock(sandbox, "SHORT") == 1

    problem = ledger.get_exception("order_invalid", batch["bad"], "sandbox")
    assert problem is not None and problem.status == "open"
    assert problem.detail["problems"] == [f"line {batch['bad']}-1 has no SKU"]
    recorded = ledger.get_order("sandbox", batch["second_for_last"])
    assert recorded.decision == "refused"
    assert recorded.lines[0].decision_reason == "short stock: 1 available, 2 ordered"


def test_reruns_create_and_send_nothing_new(sandbox, ledger, batch):
    orders_before = len(sandbox.woo.orders())
    or21_before = sandbox.log.count("mirakl", "OR21")
    for _ in range(2):
        assert run(sandbox, ledger).state == "success"
    assert len(sandbox.woo.orders()) == orders_before
    assert sandbox.log.count("mirakl", "OR21") == or21_before == 6


def test_shipping_completes_the_woocommerce_order(sandbox, ledger, batch):
    with sandbox.lock:
        sandbox.mirakl.debit(batch["single"])
        sandbox.mirakl.debit(batch["multi"])
    assert run(sandbox, ledger).state == "success"
    woo = woo_orders_by_mirakl_id(sandbox)
    single, multi = woo[batch["single"]][0], woo[batch["multi"]][0]
    assert single["status"] == "processing"
    assert single["billing"] == {
        "first_name": "Zoé", "last_name": "Lefèvre", "company": "", "address_1": "12 rue de l'Église",
        "address_2": "", "city": "Besançon", "state": "", "postcode": "25000", "country": "FR",
        "email": "", "phone": "+33 3 81 00 00 00",  # WooCommerce e-mails billing.email: never the customer
    }
    assert meta(single, "_mirakl_customer_email") == f"notification+{batch['single'].lower()}@notification.mirakl.net"
    assert single["shipping"]["city"] == "Besançon" and single["shipping"]["country"] == "FR"
    assert single["customer_note"] == MESSAGE
    assert meta(single, "MiraklOrderMessage") == MESSAGE
    assert [(s["method_id"], s["total"]) for s in single["shipping_lines"]] == [("mirakl", "4.99")]
    assert multi["status"] == "processing"
    assert (multi["shipping"]["first_name"], multi["shipping"]["city"], multi["shipping"]["country"]) == (
        "Jürgen", "München", "DE")
    assert multi["customer_note"] == ""
    with sandbox.lock:
        charged = sandbox.mirakl.order(batch["multi"])["shipping_price"]
    assert [s["total"] for s in multi["shipping_lines"]] == [f"{charged:.2f}"]
    assert stock(sandbox, "MUG-BLUE") == 6  # completing moves no stock


def test_cancelled_order_releases_its_reservation(sandbox, ledger, batch):
    with sandbox.lock:
        sandbox.mirakl.debit(batch["first_for_last"])
        sandbox.mirakl.store.cancel(sandbox.clock.now(), batch["first_for_last"])
    assert run(sandbox, ledger).state == "success"
    cancelled = woo_orders_by_mirakl_id(sandbox)[batch["first_for_last"]][0]
    assert cancelled["status"] == "cancelled"
    assert meta(cancelled, "_mirakl_cancel_reason") == "Mirakl order CANCELED: Shop Canceled"
    assert stock(sandbox, "LAST-UNITS") == 3
    assert ledger.get_order("sandbox", batch["first_for_last"]).woo_status == "cancelled"


def test_crash_between_create_and_ledger_write_yields_one_order(sandbox, ledger, airflow_env):
    """Its own products and order, so it passes alone as well as after the rest of the module."""
    sandbox.woo.add_simple_product("CRASH-MUG", "9.00", 4)
    with sandbox.lock:
        sandbox.mirakl.add_offer("CRASH-MUG", 9.0, 4)
    order_id = place(sandbox, [("CRASH-MUG", 1)], 1)
    land_then_drop(sandbox, "woo", "woo.orders.create")  # created in WooCommerce, the answer never arrives
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
    assert ledger.get_action(f"sandbox:woo.orders.create:{order_id}").state == "uncertain"
    assert mirakl_state(sandbox, order_id) == "WAITING_ACCEPTANCE"  # not accepted while unrecorded

    assert run(sandbox, ledger).state == "success"
    assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
    assert line_states(sandbox, order_id) == {"CRASH-MUG": "WAITING_DEBIT_PAYMENT"}
    action = ledger.get_action(f"sandbox:woo.orders.create:{order_id}")
    assert action.state == "done" and action.outcome["found_after_crash"] is True
    assert stock(sandbox, "CRASH-MUG") == 3


def test_deadline_guard_escalates_then_clears(sandbox, ledger, batch):
    bad = batch["bad"]  # left for a person since the first run
    late = place(sandbox, [("MUG-BLUE", 1)], 2, acceptance_delay_s=400)
    with sandbox.lock:
        sandbox.mirakl.store.orders[late]["lines"][0]["quantity"] = 0  # invalid: stays undecided
    assert run(sandbox, ledger).state == "success"
    assert ledger.get_exception("order_invalid", late, "sandbox").status == "open"
    assert ledger.get_exception("acceptance_deadline", late, "sandbox") is None

    advance(sandbox, ledger, 160)  # 221 s of a 400 s window
    place(sandbox, [("MUG-BLUE", 1)], 0)  # fresh activity: OR11 shows how late it is on Mirakl's clock
    assert run_dag(DAG_ID).state == "success"
    warning = ledger.get_exception("acceptance_deadline", late, "sandbox")
    assert warning.status == "open" and warning.severity == "warning" and warning.detail["threshold"] == 0.5
    assert "invalid payload" in warning.detail["undecided_because"]

    advance(sandbox, ledger, 120)  # 341 s
    place(sandbox, [("MUG-BLUE", 1)], 0)
    assert run_dag(DAG_ID).state == "success"
    critical = ledger.get_exception("acceptance_deadline", late, "sandbox")
    assert critical.severity == "critical" and critical.detail["threshold"] == 0.8

    assert run(sandbox, ledger, 120).state == "success"  # past the deadline: Mirakl cancelled it
    assert mirakl_state(sandbox, late) == "CANCELED"
    assert ledger.get_exception("acceptance_deadline", late, "sandbox").status == "resolved"
    assert bad  # the first bad order is still waiting (24 h window): still only an invalid-order exception
    assert ledger.get_exception("order_invalid", bad, "sandbox").status == "open"


def faulted_cycles(sandbox, ledger, orders: int = 12) -> list[str]:
    """Orders placed, then ingest cycles under 20 % faults of every kind, then one clean cycle."""
    skus = ["MUG-BLUE", "TEE-M", "TEE-L", "LAST-UNITS"]
    placed = [place(sandbox, [(skus[i % 4], 1), (skus[(i + 1) % 4], 1)], i % 3) for i in range(orders)]
    sandbox.faults.set(fault_mix())
    try:
        for _ in range(15):
            run(sandbox, ledger)
            if all(mirakl_state(sandbox, o) != "WAITING_ACCEPTANCE" for o in placed):
                break
    finally:
        sandbox.faults.clear()
    assert run(sandbox, ledger).state == "success"
    return placed


def convergence_problems(sandbox, ledger, placed: list[str]) -> list[str]:
    """Everything that would make a faulted run wrong: duplicates, losses, records in the wrong state."""
    problems: list[str] = []
    woo = woo_orders_by_mirakl_id(sandbox)
    for order_id in placed:
        states = line_states(sandbox, order_id)
        if not set(states.values()) <= {"WAITING_DEBIT_PAYMENT", "REFUSED"}:
            problems.append(f"{order_id} left undecided on Mirakl: {states}")
        landed_or21 = len(sandbox.log.landed("mirakl", "OR21", f"/{order_id}/"))
        if landed_or21 != 1:
            problems.append(f"{order_id}: OR21 landed {landed_or21} times")
        accepted = sorted(sku for sku, state in states.items() if state == "WAITING_DEBIT_PAYMENT")
        found = woo.get(order_id, [])
        if accepted and len(found) != 1:
            problems.append(f"{order_id}: duplicate or missing WooCommerce order ({len(found)})")
        elif accepted and sorted(li["sku"] for li in found[0]["line_items"]) != accepted:
            problems.append(f"{order_id}: WooCommerce lines differ from the accepted lines")
        elif not accepted and found:
            problems.append(f"{order_id}: refused on Mirakl but held in WooCommerce")
        record = ledger.get_order("sandbox", order_id)
        if accepted and record.woo_order_id != (found[0]["id"] if len(found) == 1 else None):
            problems.append(f"{order_id}: ledger points at WooCommerce order {record.woo_order_id}")
        for kind in ("woo.orders.create", "mirakl.OR21"):
            action = ledger.get_action(f"sandbox:{kind}:{order_id}")
            if action is not None and action.state != "done":
                problems.append(f"{order_id}: {kind} action left {action.state}")
        for kind in ("order_acceptance_failed", "order_reservation_failed"):
            if ledger.get_exception(kind, order_id, "sandbox") is not None:
                problems.append(f"{order_id}: exception {kind}")
    return problems


def test_twenty_percent_faults_converge_without_duplicates(sandbox, ledger, batch):
    placed = faulted_cycles(sandbox, ledger)
    assert {"apply_then_status", "apply_then_drop"} <= fault_kinds_seen(sandbox)
    assert {e["service"] for e in sandbox.log.entries() if e["fault"]} == {"mirakl", "woo"}
    assert convergence_problems(sandbox, ledger, placed) == []


def test_blind_write_retry_fails_the_fault_test(sandbox, ledger, batch, blind_write_retry):
    """The fault test above catches a client that retries order creation or OR21 blindly."""
    placed = faulted_cycles(sandbox, ledger)
    problems = convergence_problems(sandbox, ledger, placed)
    assert any("duplicate" in p or "OR21 landed" in p or "action left" in p for p in problems), problems


def test_call_log_shows_no_ceiling_breach_and_no_spec_violation(sandbox, batch):
    calls = sandbox.log.entries("mirakl", "OR11")
    times = sorted(datetime.fromisoformat(c["at"].replace("Z", "+00:00")) for c in calls)
    assert len(times) > 5
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= timedelta(seconds=60), min(gaps)
    violations = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl") if e["violations"]]
    assert violations == []
    per_operation = Counter(e["operation"] for e in sandbox.log.entries("mirakl"))
    assert set(per_operation) <= {"OR11", "OR21", "M11"}, per_operation
