"""MiraklClient against the running sandbox over loopback HTTP.

Every request the client sends is validated against Mirakl's official OpenAPI spec by
the sandbox (``validate_requests=True``); each test fails if one had a violation.
"""
from __future__ import annotations

import logging
import socket
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Callable, Iterator

import pytest

from include.sandbox.core import Sandbox
from include.woo_mirakl.budgets import BudgetExceeded, LedgerCallBudget
from include.woo_mirakl.clients.http import (
    ApiError,
    MalformedResponseError,
    RetryPolicy,
    TransportError,
    UncertainWriteError,
)
from include.woo_mirakl.clients.mirakl import MiraklClient, StockLine, PriceLine
from include.woo_mirakl.clients.mirakl_models import RefundLine
from include.woo_mirakl.ledger import Ledger

API_KEY = "sandbox-mirakl-key"
SHOP_ID = 2001
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, timeout=1.0, connect_timeout=1.0)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(seed=7, validate_requests=True).start()
    with sb.lock:
        sb.mirakl.configure(import_delay_s=0, import_complete_after_polls=1)
        for i in range(20):
            sb.mirakl.add_offer(f"MK-{i:03d}", 10 + i, 50)
    yield sb
    sb.stop()


@pytest.fixture(autouse=True)
def no_spec_violations(sandbox: Sandbox) -> Iterator[None]:
    """Clear faults around each test and fail it if any request broke the spec."""
    sandbox.faults.clear()
    start = len(sandbox.log.entries("mirakl"))
    yield
    sandbox.faults.clear()
    bad = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl")[start:] if e["violations"]]
    assert not bad, f"requests violating the Mirakl spec: {bad}"


@pytest.fixture()
def client(sandbox: Sandbox) -> MiraklClient:
    return MiraklClient(sandbox.mirakl_url, API_KEY, shop_id=SHOP_ID, retry=FAST)


def calls(sandbox: Sandbox, operation: str) -> int:
    return sandbox.log.count("mirakl", operation)


def place(sandbox: Sandbox, *skus: str, quantity: int = 1, **kwargs: Any) -> str:
    with sandbox.lock:
        order = sandbox.mirakl.place_order(lines=[{"offer_sku": s, "quantity": quantity} for s in skus], **kwargs)
    return order["order_id"]


def line_ids(sandbox: Sandbox, order_id: str) -> list[str]:
    with sandbox.lock:
        return [line["order_line_id"] for line in sandbox.mirakl.order(order_id)["order_lines"]]


def on_response(client: MiraklClient, operation_path: str, action: Callable[[int], None]) -> None:
    """Run ``action(n)`` after the n-th answer to ``operation_path`` (to change data between pages)."""
    seen = {"n": 0}

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        if response.request.path_url.split("?")[0] == operation_path:
            seen["n"] += 1
            action(seen["n"])

    client.session.hooks["response"].append(hook)


# Account and typed results -------------------------------------------------------------------------
def test_account(client: MiraklClient) -> None:
    account = client.account()
    assert (account.shop_id, account.shop_name, account.currency_iso_code, account.shop_state) == (
        SHOP_ID, "Sandbox Shop", "EUR", "OPEN")
    assert account.raw["shop_id"] == SHOP_ID


def test_order_life_cycle_with_typed_results(sandbox: Sandbox, client: MiraklClient) -> None:
    order_id = place(sandbox, "MK-001", "MK-002", customer_message="Please ring twice")
    first, second = line_ids(sandbox, order_id)
    [order] = client.get_orders([order_id])
    assert order.order_state == "WAITING_ACCEPTANCE" and order.acceptance_decision_date is not None
    assert order.customer is None or order.customer.shipping_address is None  # no address before debit

    client.accept_order(order_id, {first: True, second: False})
    assert client.get_order(order_id).order_state == "WAITING_DEBIT_PAYMENT"
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    order = client.get_orders([order_id])[0]
    assert order.order_state == "SHIPPING" and order.customer.shipping_address is not None
    assert order.line(first).order_line_state == "SHIPPING" and order.line(second).order_line_state == "REFUSED"
    threads = list(client.iter_order_threads(order_id))
    assert any("ring twice" in str(t.messages) for t in threads)

    carrier = client.carriers()[0]
    client.update_tracking(order_id, carrier_code=carrier.code, tracking_number="TRK-1")
    client.ship_order(order_id)
    shipped = client.get_order(order_id)
    assert shipped.order_state == "SHIPPED" and shipped.shipping_tracking == "TRK-1"

    [result] = client.refund([RefundLine(first, Decimal("5.00"), "15", quantity=1)])
    assert result.order_line_id == first and result.amount == Decimal("5.00") and result.refund_id
    refunded = client.get_orders([order_id])[0].line(first)
    assert [r.amount for r in refunded.refunds] == [Decimal("5.0")]


def test_cancel_order(sandbox: Sandbox, client: MiraklClient) -> None:
    order_id = place(sandbox, "MK-003")
    client.accept_order(order_id, {line_ids(sandbox, order_id)[0]: True})
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    assert client.get_order(order_id).can_cancel
    client.cancel_order(order_id)
    assert client.get_order(order_id).order_state == "CANCELED"


def test_tracking_needs_a_carrier(client: MiraklClient) -> None:
    with pytest.raises(ValueError, match="carrier_code or a carrier_name"):
        client.update_tracking("X", tracking_number="1")


def test_stock_import_status_and_error_report(sandbox: Sandbox, client: MiraklClient) -> None:
    import_id = client.import_stock([StockLine("MK-010", 7), StockLine("GHOST-SKU", 3)])
    status = client.stock_import_status(import_id)
    assert status.finished and status.lines_in_success == 1 and status.lines_in_error == 1
    assert status.has_error_report
    [error] = client.stock_error_report(import_id)
    assert error.offer_sku == "GHOST-SKU" and error.error
    with sandbox.lock:
        assert sandbox.mirakl.offer("MK-010")["quantity"] == 7


def test_price_import(sandbox: Sandbox, client: MiraklClient) -> None:
    import_id = client.import_prices([PriceLine("MK-011", Decimal("42.50")), PriceLine("NOPE", Decimal("1"))])
    status = client.price_import_status(import_id)
    assert status.finished and status.lines_in_error == 1
    assert [line.offer_sku for line in client.price_error_report(import_id)] == ["NOPE"]
    with sandbox.lock:
        assert float(sandbox.mirakl.offer("MK-011")["price"]) == 42.5


def test_offers_listing_and_export(client: MiraklClient) -> None:
    skus = [offer.shop_sku for offer in client.iter_offers()]
    assert len(skus) == len(set(skus)) and {f"MK-{i:03d}" for i in range(20)} <= set(skus)
    rows = client.export_offers()
    assert {f"MK-{i:03d}" for i in range(20)} <= {row["shop-sku"] for row in rows}


def test_offer_import(sandbox: Sandbox, client: MiraklClient) -> None:
    import_id = client.import_offers([{
        "shop_sku": "MK-NEW", "product_id": "MK-NEW", "product_id_type": "SHOP_SKU", "price": 9.5,
        "quantity": 4, "state_code": "11", "update_delete": "update",
    }])
    assert import_id and import_id != "None"


def test_transactions_and_accounting_documents(sandbox: Sandbox, client: MiraklClient) -> None:
    order_id = place(sandbox, "MK-004")
    client.accept_order(order_id, {line_ids(sandbox, order_id)[0]: True})
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
        sandbox.mirakl.close_billing_cycle()
    lines = list(client.iter_transactions(order_id=[order_id], limit=1))  # limit 1: several seek pages
    assert lines and {t.order_id for t in lines} == {order_id}
    assert len({t.id for t in lines}) == len(lines)
    assert any(t.amount is not None and t.type for t in lines)
    documents = list(client.iter_accounting_documents())
    assert documents and all(d.total_amount_incl_taxes is not None for d in documents)


# Pagination over a changing data set ---------------------------------------------------------------
def test_or11_pagination_misses_nothing_and_repeats_nothing_while_orders_change(
    sandbox: Sandbox, client: MiraklClient
) -> None:
    sandbox.clock.advance(3600)  # later creation dates than earlier tests' orders
    start = sandbox.now()
    placed = [place(sandbox, f"MK-{5 + i % 5:03d}") for i in range(230)]
    other = MiraklClient(sandbox.mirakl_url, API_KEY, shop_id=SHOP_ID, retry=FAST)
    left: list[str] = []
    added: list[str] = []

    def refuse(order_id: str) -> None:
        other.accept_order(order_id, {line: False for line in line_ids(sandbox, order_id)})
        left.append(order_id)

    def change(page: int) -> None:
        if page == 1:  # orders already read leave the set: later ones move towards the start
            for order_id in placed[10:14]:
                refuse(order_id)
            added.append(place(sandbox, "MK-005"))
        elif page == 2:  # and an order not read yet leaves too
            refuse(placed[150])
            refuse(placed[120])

    on_response(client, "/api/orders", change)
    seen = [o.order_id for o in client.iter_orders(states=["WAITING_ACCEPTANCE"], start_date=start)]

    assert len(seen) == len(set(seen)), "an order was yielded twice"
    present_throughout = set(placed) - {placed[150], placed[120]}
    missing = present_throughout - set(seen)
    assert not missing, f"orders missed by the pagination: {sorted(missing)[:5]}"
    assert set(added) <= set(seen)
    assert set(seen) <= set(placed) | set(added)


# Call budgets ----------------------------------------------------------------------------------------
def test_second_or11_within_a_minute_is_refused_with_a_retry_time(
    sandbox: Sandbox, client: MiraklClient, tmp_path: Any
) -> None:
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    now = [datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)]
    budget = LedgerCallBudget(Ledger.from_url(url), "mirakl:test-shop", clock=lambda: now[0])
    budgeted = MiraklClient(sandbox.mirakl_url, API_KEY, shop_id=SHOP_ID, retry=FAST, budget=budget)
    before = calls(sandbox, "OR11")

    list(budgeted.iter_orders(states=["CLOSED"]))
    now[0] += timedelta(seconds=20)
    with pytest.raises(BudgetExceeded) as refused:
        list(budgeted.iter_orders(states=["CLOSED"]))
    assert refused.value.operation == "OR11"
    assert refused.value.retry_at == datetime(2026, 1, 1, 12, 1, tzinfo=timezone.utc)

    # another worker of the same shop (its own Ledger object on the same database) is refused too
    elsewhere = LedgerCallBudget(Ledger.from_url(url), "mirakl:test-shop", clock=lambda: now[0])
    with pytest.raises(BudgetExceeded):
        MiraklClient(sandbox.mirakl_url, API_KEY, retry=FAST, budget=elsewhere).get_orders(["X"])
    assert calls(sandbox, "OR11") == before + 1, "a refused call reached Mirakl"

    now[0] += timedelta(seconds=41)
    list(budgeted.iter_orders(states=["CLOSED"]))
    assert calls(sandbox, "OR11") == before + 2
    # operations without a published ceiling are not held back
    budgeted.get_order(place(sandbox, "MK-001"))
    budgeted.get_order(place(sandbox, "MK-001"))


# Retries and errors ----------------------------------------------------------------------------------
def test_429_honours_retry_after(sandbox: Sandbox, client: MiraklClient) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "A01", "kind": "status", "status": 429,
                         "retry_after": 1, "count": 1}])
    before = calls(sandbox, "A01")
    started = time.monotonic()
    assert client.account().shop_id == SHOP_ID
    assert time.monotonic() - started >= 1.0
    assert calls(sandbox, "A01") == before + 2


def test_429_with_a_retry_after_beyond_the_ceiling_is_reported_not_slept(
    sandbox: Sandbox, client: MiraklClient
) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "status", "status": 429,
                         "retry_after": 3600, "count": 1}])
    with pytest.raises(ApiError) as error:
        client.carriers()
    assert error.value.status == 429 and error.value.retry_after == 3600


@pytest.mark.parametrize("status", [500, 502, 503])
def test_5xx_on_a_read_is_retried(sandbox: Sandbox, client: MiraklClient, status: int) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "status", "status": status,
                         "count": 2}])
    before = calls(sandbox, "SH21")
    assert client.carriers()
    assert calls(sandbox, "SH21") == before + 3


def test_5xx_that_persists_raises_the_api_error(sandbox: Sandbox, client: MiraklClient) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "status", "status": 503}])
    with pytest.raises(ApiError) as error:
        client.carriers()
    assert error.value.status == 503 and error.value.message == "injected fault"
    assert "HTTP 503" in str(error.value)


def test_slow_answer_beyond_the_timeout_is_retried_for_a_read(sandbox: Sandbox, client: MiraklClient) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "slow", "delay": 1.5, "count": 1}])
    assert client.carriers()


def test_dropped_connection_is_retried_for_a_read(sandbox: Sandbox, client: MiraklClient) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "drop", "count": 2}])
    assert client.carriers()


def test_malformed_body_is_retried_then_reported(sandbox: Sandbox, client: MiraklClient) -> None:
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "malformed", "count": 1}])
    assert client.carriers()
    sandbox.faults.set([{"service": "mirakl", "operation": "SH21", "kind": "malformed"}])
    with pytest.raises(MalformedResponseError, match="malformed response \\(HTTP 200\\)"):
        client.carriers()


def test_a_refund_is_never_retried_blindly(sandbox: Sandbox, client: MiraklClient) -> None:
    order_id = place(sandbox, "MK-006")
    [line] = line_ids(sandbox, order_id)
    client.accept_order(order_id, {line: True})
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    for fault in ({"kind": "status", "status": 500}, {"kind": "drop"}, {"kind": "status", "status": 503}):
        sandbox.faults.set([{"service": "mirakl", "operation": "OR28", "count": 1, **fault}])
        before = calls(sandbox, "OR28")
        with pytest.raises(UncertainWriteError):
            client.refund([RefundLine(line, Decimal("1.00"), "15", quantity=0)])
        assert calls(sandbox, "OR28") == before + 1, f"OR28 was retried after {fault}"


def test_a_write_that_times_out_is_uncertain_and_may_have_happened(sandbox: Sandbox, client: MiraklClient) -> None:
    order_id = place(sandbox, "MK-007")
    [line] = line_ids(sandbox, order_id)
    client.accept_order(order_id, {line: True})
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    sandbox.faults.set([{"service": "mirakl", "operation": "OR24", "kind": "slow", "delay": 1.5, "count": 1}])
    with pytest.raises(UncertainWriteError, match="timed out"):
        client.ship_order(order_id)
    time.sleep(0.8)  # the server finishes the request the client gave up on
    assert client.get_order(order_id).order_state == "SHIPPED"  # which is why it was not retried


def test_429_on_a_write_is_retried(sandbox: Sandbox, client: MiraklClient) -> None:
    order_id = place(sandbox, "MK-008")
    sandbox.faults.set([{"service": "mirakl", "operation": "OR21", "kind": "status", "status": 429,
                         "retry_after": 0, "count": 1}])
    client.accept_order(order_id, {line_ids(sandbox, order_id)[0]: True})
    assert client.get_order(order_id).order_state == "WAITING_DEBIT_PAYMENT"


def test_connection_refused_is_retried_then_reported() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    closed = MiraklClient(f"http://127.0.0.1:{port}", API_KEY, retry=FAST)
    with pytest.raises(TransportError, match="connection refused after 4 attempts"):
        closed.ship_order("X-1")  # never sent, so even a write may be retried


def test_bad_api_key_is_an_api_error_without_the_key(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    wrong_key = "wrong-key-7f3a9c2e"
    bad = MiraklClient(sandbox.mirakl_url, wrong_key, retry=FAST)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(ApiError) as error:
        bad.account()
    assert error.value.status == 401 and error.value.message == "Unauthorized"
    for text in (str(error.value), repr(error.value), repr(bad), caplog.text):
        assert wrong_key not in text


def test_wrong_shop_id_is_refused(sandbox: Sandbox) -> None:
    other_shop = MiraklClient(sandbox.mirakl_url, API_KEY, shop_id=9999, retry=FAST)
    with pytest.raises(ApiError) as error:
        other_shop.account()
    assert error.value.status == 403 and "9999" in error.value.message
