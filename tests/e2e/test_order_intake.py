"""Order intake never stops (issue #15, items 1-6): mirakl_order_ingest__sandbox end to end.

Each test builds its own orders on its own SKUs in this module's sandbox, so each passes alone
as well as after the others (the burst of 101 orders comes last: intake takes a few minutes to
read through it, which would slow the tests after it).
"""
from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from include.sandbox.core import iso
from include.sandbox.mirakl_data import ABSENT
from include.sandbox.scenarios import customer
from tests.e2e.conftest import ROOT, advance, fail_record, run_dag

DAG_ID = "mirakl_order_ingest__sandbox"
MINUTE = 61
NO_DEBIT = 10 * 86400

pytestmark = pytest.mark.usefixtures("airflow_env")


def run(sandbox, ledger, seconds: float = MINUTE):
    advance(sandbox, ledger, seconds)
    return run_dag(DAG_ID)


def product(sandbox, sku: str, stock: int = 50, price: str = "10.00") -> str:
    sandbox.woo.add_simple_product(sku, price, stock)
    with sandbox.lock:
        sandbox.mirakl.add_offer(sku, float(price), 500)
    return sku


def place(sandbox, lines, index=0, **kwargs) -> str:
    kwargs.setdefault("debit_delay_s", NO_DEBIT)
    with sandbox.lock:
        return sandbox.mirakl.place_order(
            lines=[{"offer_sku": sku, "quantity": qty} for sku, qty in lines], customer=customer(index), **kwargs
        )["order_id"]


def state(sandbox, order_id) -> str:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)["order_state"]


def woo_orders(sandbox, order_id) -> list[dict]:
    return [o for o in sandbox.woo.orders()
            if any(m["key"] == "_mirakl_order_id" and m["value"] == order_id for m in o["meta_data"])]


def test_malformed_orders_are_quarantined_one_by_one_and_intake_goes_on(sandbox, ledger):
    """Item 1: a "NaN" price, a numeric offer_sku, a numeric currency used to stop every later run."""
    sku = product(sandbox, "MAL-OK")
    nan_price, numeric_sku, numeric_currency = (place(sandbox, [(sku, 1)], i) for i in range(3))
    with sandbox.lock:
        sandbox.mirakl.override_order_json(nan_price, lines={0: {"price": "NaN"}})
        sandbox.mirakl.override_order_json(numeric_sku, lines={0: {"offer_sku": 12345}})
        sandbox.mirakl.override_order_json(numeric_currency, {"currency_iso_code": 978})
    good = place(sandbox, [(sku, 2)], 1)

    assert run(sandbox, ledger).state == "success"
    assert state(sandbox, good) == "WAITING_DEBIT_PAYMENT" and len(woo_orders(sandbox, good)) == 1
    for order_id, raw in ((nan_price, "'NaN'"), (numeric_sku, "12345"), (numeric_currency, "978")):
        problem = ledger.get_exception("order_invalid", order_id, "sandbox")
        assert problem is not None and problem.status == "open", order_id
        assert any(raw in p for p in problem.detail["problems"]), problem.detail
        assert state(sandbox, order_id) == "WAITING_ACCEPTANCE" and woo_orders(sandbox, order_id) == []
    cursor = ledger.get_cursor("mirakl_order_ingest", "sandbox", "or11")
    assert "resume_from" not in cursor  # the listing completed: the cursor moved on

    later = place(sandbox, [(sku, 1)], 2)
    assert run(sandbox, ledger).state == "success"
    assert state(sandbox, later) == "WAITING_DEBIT_PAYMENT"


def test_orders_without_address_keys_and_with_null_addresses_are_both_exceptions(sandbox, ledger):
    sku = product(sandbox, "ADDR")
    null_address, no_keys, fine = (place(sandbox, [(sku, 1)], i) for i in range(3))
    assert run(sandbox, ledger).state == "success"
    with sandbox.lock:
        for order_id in (null_address, no_keys, fine):
            sandbox.mirakl.debit(order_id)
        sandbox.mirakl.override_order_json(null_address, {"customer": {"billing_address": None}})
        sandbox.mirakl.override_order_json(no_keys, {"customer": {"billing_address": ABSENT, "shipping_address": ABSENT}})
    assert run(sandbox, ledger).state == "success"
    assert woo_orders(sandbox, fine)[0]["status"] == "processing"
    for order_id in (null_address, no_keys):
        problem = ledger.get_exception("order_completion_failed", order_id, "sandbox")
        assert problem is not None and "no billing address" in problem.detail["problems"], order_id
        assert woo_orders(sandbox, order_id)[0]["status"] == "on-hold"


def test_a_future_dated_update_neither_hides_later_orders_nor_makes_fresh_ones_critical(sandbox, ledger):
    """Item 2: the cursor and "Mirakl's clock" are bounded by the Date Mirakl answers with."""
    sku = product(sandbox, "FUTURE")
    ahead = place(sandbox, [(sku, 1)], 0)
    with sandbox.lock:
        sandbox.mirakl.override_order_json(ahead, {"last_updated_date": iso(sandbox.clock.now() + timedelta(days=3))})
    assert run(sandbox, ledger).state == "success"
    flagged = ledger.get_exception("order_date_in_future", ahead, "sandbox")
    assert flagged is not None and flagged.status == "open"
    assert state(sandbox, ahead) == "WAITING_DEBIT_PAYMENT"  # the order itself is handled

    fresh = place(sandbox, [(sku, 1)], 1)
    assert run(sandbox, ledger).state == "success"
    assert state(sandbox, fresh) == "WAITING_DEBIT_PAYMENT"  # read: the cursor did not jump three days
    assert ledger.get_exception("acceptance_deadline", fresh, "sandbox") is None


def test_a_changed_address_after_a_failed_completion_is_sent_and_blocks_nothing(sandbox, ledger):
    """Item 3: the completion's request changed after a failed attempt; it used to wedge SHIPPING."""
    sku = product(sandbox, "MOVED")
    moved, behind = place(sandbox, [(sku, 1)], 0), place(sandbox, [(sku, 1)], 1)
    assert run(sandbox, ledger).state == "success"
    with sandbox.lock:
        sandbox.mirakl.debit(moved)
    sandbox.faults.set([{"service": "woo", "operation": "woo.orders.update", "kind": "status", "status": 503}])
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert woo_orders(sandbox, moved)[0]["status"] == "on-hold"
    assert ledger.get_action(f"sandbox:woo.orders.complete:{moved}").state == "failed"

    with sandbox.lock:
        order = sandbox.mirakl.store.orders[moved]
        order["customer"]["shipping_address"]["city"] = "Dijon"
        order["last_updated"] = iso(sandbox.clock.now())
        sandbox.mirakl.debit(behind)
    assert run(sandbox, ledger).state == "success"
    completed = woo_orders(sandbox, moved)[0]
    assert completed["status"] == "processing" and completed["shipping"]["city"] == "Dijon"
    assert woo_orders(sandbox, behind)[0]["status"] == "processing"
    action = ledger.get_action(f"sandbox:woo.orders.complete:{moved}")
    assert action.state == "done" and action.generation == 2


def test_orders_accepted_outside_the_integration_get_a_woocommerce_order(sandbox, ledger):
    """Item 4: accepted in the back office (or by auto-accept): fulfilled like ours, or a critical exception."""
    sku = product(sandbox, "OUTSIDE", stock=20)
    waiting, shipping, shipped = (place(sandbox, [(sku, 2)], i) for i in range(3))
    with sandbox.lock:
        store, now = sandbox.mirakl.store, sandbox.clock.now()
        for order_id in (waiting, shipping, shipped):
            store.accept(now, order_id, [{"id": f"{order_id}-1", "accepted": True}])
        for order_id in (shipping, shipped):
            store.debit(now, order_id)
        store.ship(now, shipped)
    assert run(sandbox, ledger).state == "success"
    assert run(sandbox, ledger).state == "success"  # the SHIPPING step completes what the first run created

    assert [o["status"] for o in woo_orders(sandbox, waiting)] == ["on-hold"]
    assert [o["status"] for o in woo_orders(sandbox, shipping)] == ["processing"]
    assert woo_orders(sandbox, shipping)[0]["shipping"]["address_1"]
    assert sandbox.woo.product_by_sku(sku)["stock_quantity"] == 20 - 2 - 2
    assert ledger.get_exception("order_accepted_outside", waiting, "sandbox").severity == "warning"
    assert woo_orders(sandbox, shipped) == []
    critical = ledger.get_exception("order_without_woo_order", shipped, "sandbox")
    assert critical is not None and critical.severity == "critical" and critical.status == "open"
    assert sku not in ledger.pending_demand("sandbox", ["WAITING_DEBIT_PAYMENT", "SHIPPING"])
    assert not [e for e in sandbox.log.entries("mirakl", "OR21") if waiting in e["path"]]  # nothing re-accepted


@pytest.fixture
def marketplaces_file(tmp_path, monkeypatch):
    """A copy of the marketplaces file whose sandbox entry a test may change."""
    def write(**policy) -> Path:
        config = yaml.safe_load((ROOT / "include" / "config" / "marketplaces.yaml").read_text())
        for entry in config["marketplaces"]:
            entry.setdefault("order_policy", {}).update(policy)
        path = tmp_path / "marketplaces.yaml"
        path.write_text(yaml.safe_dump(config))
        monkeypatch.setenv("WOO_MIRAKL_MARKETPLACES", str(path))
        return path
    return write


def test_partial_acceptance_refused_by_the_operator_refuses_the_whole_order_and_frees_the_stock(sandbox, ledger):
    """Item 6: ORDER_PARTIAL_ACCEPTANCE_DISABLED used to be final while the reservation held the stock."""
    sku = product(sandbox, "PARTIAL", stock=5)
    with sandbox.lock:
        sandbox.mirakl.add_offer("PARTIAL-GHOST", 5.0, 10)  # not in WooCommerce: that line is refused
        sandbox.mirakl.configure(partial_acceptance_disabled=True)
    try:
        order_id = place(sandbox, [(sku, 2), ("PARTIAL-GHOST", 1)], 0)
        assert run(sandbox, ledger).state == "success"
        assert sandbox.woo.product_by_sku(sku)["stock_quantity"] == 3  # reserved, then OR21 refused
        problem = ledger.get_exception("order_partial_acceptance_disabled", order_id, "sandbox")
        assert problem is not None and "partial_acceptance" in problem.detail["action"]
        assert run(sandbox, ledger).state == "success"  # the whole order refused (OR21)
        assert run(sandbox, ledger).state == "success"  # REFUSED read back: the reservation is released
    finally:
        with sandbox.lock:
            sandbox.mirakl.configure(partial_acceptance_disabled=False)
    assert state(sandbox, order_id) == "REFUSED"
    assert [o["status"] for o in woo_orders(sandbox, order_id)] == ["cancelled"]
    assert sandbox.woo.product_by_sku(sku)["stock_quantity"] == 5


def test_partial_acceptance_policy_refuse_all_decides_the_whole_order_up_front(sandbox, ledger, marketplaces_file):
    marketplaces_file(partial_acceptance="refuse_all")
    sku = product(sandbox, "ALL-OR-NOTHING", stock=5)
    with sandbox.lock:
        sandbox.mirakl.add_offer("ALL-GHOST", 5.0, 10)
        sandbox.mirakl.configure(partial_acceptance_disabled=True)
    try:
        order_id = place(sandbox, [(sku, 2), ("ALL-GHOST", 1)], 0)
        assert run(sandbox, ledger).state == "success"
    finally:
        with sandbox.lock:
            sandbox.mirakl.configure(partial_acceptance_disabled=False)
    assert state(sandbox, order_id) == "REFUSED"
    assert woo_orders(sandbox, order_id) == []  # nothing reserved, nothing to release
    assert len([e for e in sandbox.log.entries("mirakl", "OR21") if order_id in e["path"]]) == 1
    reasons = {line.offer_sku: line.decision_reason for line in ledger.get_order("sandbox", order_id).lines}
    assert reasons[sku].startswith("whole order refused (partial acceptance off)")


def test_partial_acceptance_policy_accept_all_accepts_short_lines(sandbox, ledger, marketplaces_file):
    marketplaces_file(partial_acceptance="accept_all")
    sku, other = product(sandbox, "ACCEPT-ALL", stock=1), product(sandbox, "ACCEPT-ALL-2", stock=5)
    order_id = place(sandbox, [(sku, 2), (other, 1)], 0)
    assert run(sandbox, ledger).state == "success"
    with sandbox.lock:
        lines = {line["offer_sku"]: line["order_line_state"] for line in sandbox.mirakl.order(order_id)["order_lines"]}
    assert lines == {sku: "WAITING_DEBIT_PAYMENT", other: "WAITING_DEBIT_PAYMENT"}
    [held] = woo_orders(sandbox, order_id)
    assert sorted((li["sku"], li["quantity"]) for li in held["line_items"]) == [(sku, 2), (other, 1)]


def test_a_failed_sku_look_up_leaves_its_orders_for_the_next_cycle_and_intake_goes_on(sandbox, ledger):
    """Issue #15: a 5xx, 404 or 403 on one SKU look-up batch used to fail the whole task."""
    sku = product(sandbox, "LOOKUP-1")
    for status in (500, 404, 403):
        order_id = place(sandbox, [(sku, 1)])
        fail_record(sandbox, "woo", "woo.products.list", sku, status)
        try:
            assert run(sandbox, ledger).state == "success"
        finally:
            sandbox.faults.clear()
        assert state(sandbox, order_id) == "WAITING_ACCEPTANCE" and woo_orders(sandbox, order_id) == []
        problem = ledger.get_exception("order_sku_lookup_failed", order_id, "sandbox")
        assert problem.status == "open" and problem.detail["skus"] == [sku] and sku in problem.detail["error"]

        assert run(sandbox, ledger).state == "success"
        assert state(sandbox, order_id) == "WAITING_DEBIT_PAYMENT" and len(woo_orders(sandbox, order_id)) == 1
        assert ledger.get_exception("order_sku_lookup_failed", order_id, "sandbox").status == "resolved"


def test_a_full_page_created_in_one_second_is_read_through(sandbox, ledger):
    """Item 5: resuming OR11 by creation date alone re-read the same page for ever."""
    sku = product(sandbox, "SAME-SECOND", stock=500)
    advance(sandbox, ledger, MINUTE)
    sandbox.clock.freeze()
    try:
        placed = [place(sandbox, [(sku, 1)], i % 3) for i in range(101)]
    finally:
        sandbox.clock.unfreeze()
    for _ in range(3):
        assert run(sandbox, ledger).state == "success"
    assert {state(sandbox, o) for o in placed} == {"WAITING_DEBIT_PAYMENT"}
