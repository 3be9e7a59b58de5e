"""The order flow writes its ledger per step, not per order (issue #16).

A cycle of twelve new orders must cost the ledger as many writing transactions as a cycle of one: the
intake, the decisions, the reservations' intents and outcomes and the OR21s' are each written
for the whole batch at once. Counted on the ledger's own engine, which the DAG's tasks share.
"""
from __future__ import annotations

import pytest
from sqlalchemy import event

from tests.e2e.test_order_ingest import mirakl_state, place, run, woo_orders_by_mirakl_id

pytestmark = pytest.mark.usefixtures("airflow_env")
SKUS = ("WP-MUG", "WP-TEE", "WP-CAP")


@pytest.fixture(scope="module")
def catalogue(sandbox):
    for sku in SKUS:
        sandbox.woo.add_simple_product(sku, "10.00", 500)
    with sandbox.lock:
        for sku in SKUS:
            sandbox.mirakl.add_offer(sku, 10.0, 500)


def _cycle_transactions(sandbox, ledger, orders: int) -> tuple[int, list[str]]:
    placed = [place(sandbox, [(SKUS[i % 3], 1), (SKUS[(i + 1) % 3], 2)], i) for i in range(orders)]
    commits: list[int] = []

    def statement(conn, _cursor, sql: str, *_args) -> None:
        if sql.lstrip().split(None, 1)[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            conn.info["writes"] = True

    def commit(conn) -> None:
        if conn.info.pop("writes", False):
            commits.append(1)

    # Transactions that write: the reads (a cursor, the disconnect guard's state) are not the point
    event.listen(ledger._engine, "before_cursor_execute", statement)
    event.listen(ledger._engine, "commit", commit)
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        event.remove(ledger._engine, "before_cursor_execute", statement)
        event.remove(ledger._engine, "commit", commit)
    return len(commits), placed


def test_a_cycle_costs_the_ledger_the_same_transactions_for_one_order_or_twelve(sandbox, ledger, catalogue):
    assert run(sandbox, ledger).state == "success"  # first listing: cursors and budgets exist from here on
    one, first = _cycle_transactions(sandbox, ledger, 1)
    twelve, batch = _cycle_transactions(sandbox, ledger, 12)
    for order_id in first + batch:  # each reserved once and accepted
        assert mirakl_state(sandbox, order_id) == "WAITING_DEBIT_PAYMENT"
        assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
        assert ledger.get_action(f"sandbox:mirakl.OR21:{order_id}").state == "done"
    assert one > 0 and twelve == one, f"{twelve} ledger transactions for 12 orders, {one} for one"


def _woo_calls(sandbox, operation: str) -> int:
    return len(sandbox.log.entries("woo", operation))


def test_reservations_go_out_in_batches_of_orders(sandbox, ledger, catalogue):
    creates, batches = _woo_calls(sandbox, "woo.orders.create"), _woo_calls(sandbox, "woo.orders.batch")
    placed = [place(sandbox, [(SKUS[i % 3], 1)], i) for i in range(9)]
    assert run(sandbox, ledger).state == "success"
    assert _woo_calls(sandbox, "woo.orders.create") == creates  # not one request per order
    assert 1 <= _woo_calls(sandbox, "woo.orders.batch") - batches <= 4
    for order_id in placed:
        assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
        assert ledger.get_action(f"sandbox:woo.orders.create:{order_id}").state == "done"


def test_a_batch_that_lands_and_loses_its_answer_creates_each_order_once(sandbox, ledger, catalogue):
    """The store created every order of the batch, the answer never came: each order is uncertain,
    not accepted, and found again by ``_mirakl_order_id`` next run, never created twice."""
    from tests.e2e.conftest import land_then_drop

    placed = [place(sandbox, [(SKUS[i % 3], 1)], i) for i in range(6)]
    land_then_drop(sandbox, "woo", "woo.orders.batch", count=4)
    try:
        assert run(sandbox, ledger).state == "success"
    finally:
        sandbox.faults.clear()
    assert sandbox.log.entries("woo", "woo.orders.batch")[-1]["fault"] == "apply_then_drop"
    for order_id in placed:
        assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
        assert ledger.get_action(f"sandbox:woo.orders.create:{order_id}").state == "uncertain"
        assert mirakl_state(sandbox, order_id) == "WAITING_ACCEPTANCE"  # never accepted while unrecorded

    assert run(sandbox, ledger).state == "success"
    for order_id in placed:
        assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
        assert mirakl_state(sandbox, order_id) == "WAITING_DEBIT_PAYMENT"
        action = ledger.get_action(f"sandbox:woo.orders.create:{order_id}")
        assert action.state == "done" and action.outcome["found_after_crash"] is True


def test_a_backlog_larger_than_a_wave_is_answered_wave_by_wave_and_each_order_once(sandbox, ledger, catalogue):
    """Reservations go out a wave at a time (the batches WooCommerce takes at once); each wave's OR21s
    are sent while the next wave is reserved, so the reserve step answers its orders itself and the
    answer step is left with the refusals only."""
    from include.woo_mirakl.orders import OrderIngest
    from include.woo_mirakl.wiring import wire
    from tests.e2e.conftest import advance

    assert run(sandbox, ledger).state == "success"  # nothing left from the tests before
    accepted = [place(sandbox, [(SKUS[i % 3], 1)], i) for i in range(10)]
    with sandbox.lock:
        sandbox.mirakl.add_offer("WP-NOT-IN-WOO", 10.0, 5)  # an offer WooCommerce has no product for
    refused = place(sandbox, [("WP-NOT-IN-WOO", 1)], 10)
    advance(sandbox, ledger, 61)
    w = wire("sandbox")
    flow = OrderIngest(w.marketplace, w.ledger, mirakl=w.mirakl(), woo=w.woo(), woo_batch=2, woo_workers=2)  # waves of 4
    flow.fetch_changes()
    batches = _woo_calls(sandbox, "woo.orders.batch")
    reserved = flow.decide_and_reserve()
    assert reserved["answered_sent"] == 10, reserved
    assert _woo_calls(sandbox, "woo.orders.batch") - batches == 6  # waves of 4, 4 and 2, each split over two workers
    assert flow.send_decisions() == {"sent": 1}  # the refusal; nothing answered twice
    for order_id in accepted:
        assert len([e for e in sandbox.log.entries("mirakl", "OR21") if order_id in e["path"]]) == 1
        assert mirakl_state(sandbox, order_id) == "WAITING_DEBIT_PAYMENT"
        assert len(woo_orders_by_mirakl_id(sandbox)[order_id]) == 1
    assert mirakl_state(sandbox, refused) == "REFUSED"
