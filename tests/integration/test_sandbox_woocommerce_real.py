"""The sandbox's WooCommerce does what the recorded real store does (shared/reference/woocommerce-real).

Taxes recalculated on create and on address updates in both price modes (and not on a VAT-exempt
order), stock pools of parent-managed variations, lines that lose a trashed product, dates moved by
sales and by variations, refunds with tax, and the e-mails a store sends its customers.
"""
from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests

from include.sandbox.core import Sandbox
from include.sandbox.sinks import MailSink

API = "/wp-json/wc/v3"
FR = {"country": "FR", "rate": "20.0000", "name": "TVA 20%", "shipping": True}
ADDRESS = {"first_name": "Zoé", "last_name": "Lefèvre", "address_1": "12 rue de l'Église", "city": "Besançon",
           "postcode": "25000", "country": "FR"}


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox().start(0, 0)
    yield box
    box.stop()


@pytest.fixture
def http(sandbox: Sandbox) -> Iterator[requests.Session]:
    session = requests.Session()
    session.auth = ("ck_sandbox", "cs_sandbox")
    saved = dict(sandbox.woo.settings)
    yield session
    sandbox.woo.settings.clear()
    sandbox.woo.settings.update(saved)


def post(sandbox: Sandbox, http: requests.Session, path: str, body: dict) -> dict:
    response = http.post(sandbox.woo_url + API + path, json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def marketplace_order(sku: str, meta: list[dict] | None = None) -> dict:
    return {"status": "on-hold", "currency": "EUR", "billing": {"first_name": "Zoé", "last_name": "Lefèvre"},
            "line_items": [{"sku": sku, "quantity": 2, "subtotal": "25.00", "total": "25.00"}],
            "shipping_lines": [{"method_id": "mirakl", "method_title": "Standard", "total": "4.99"}],
            "meta_data": meta or []}


@pytest.mark.parametrize("inclusive", [False, True], ids=["prices-exclusive", "prices-inclusive"])
def test_taxes_added_on_the_update_that_carries_addresses(sandbox, http, inclusive) -> None:
    sandbox.woo.settings.update(calc_taxes=True, prices_include_tax=inclusive, tax_rates=[FR])
    sku = f"TAX-{int(inclusive)}"
    sandbox.woo.add_simple_product(sku, "12.50", 10)
    created = post(sandbox, http, "/orders", marketplace_order(sku))
    # no address yet: taxes for the store's base country (no rate there), as recorded
    assert (created["total"], created["total_tax"], created["prices_include_tax"]) == ("29.99", "0.00", inclusive)
    updated = http.put(sandbox.woo_url + API + f"/orders/{created['id']}", json={
        "status": "processing", "billing": ADDRESS, "shipping": ADDRESS}).json()
    assert (updated["total"], updated["total_tax"], updated["shipping_tax"], updated["cart_tax"]) == \
        ("35.99", "6.00", "1.00", "5.00")  # VAT added on top of 25.00 + 4.99, in both modes
    assert updated["line_items"][0]["taxes"] == [{"id": 1, "total": "5.00", "subtotal": "5.00"}]
    assert updated["tax_lines"][0]["rate_code"] == "FR-TVA 20%-1"
    refund = post(sandbox, http, f"/orders/{created['id']}/refunds", {
        "amount": "15.00", "api_refund": False, "line_items": [
            {"id": updated["line_items"][0]["id"], "quantity": 1, "refund_total": "12.50",
             "refund_tax": [{"id": 1, "refund_total": "2.50"}]}]})
    assert refund["line_items"][0]["total_tax"] == "-2.50" and refund["tax_lines"][0]["tax_total"] == "-2.50"


def test_a_vat_exempt_order_keeps_its_totals(sandbox, http) -> None:
    sandbox.woo.settings.update(calc_taxes=True, prices_include_tax=True, tax_rates=[FR])
    sandbox.woo.add_simple_product("TAX-EXEMPT", "12.50", 10)
    created = post(sandbox, http, "/orders", marketplace_order("TAX-EXEMPT", [{"key": "is_vat_exempt", "value": "yes"}]))
    updated = http.put(sandbox.woo_url + API + f"/orders/{created['id']}", json={
        "status": "processing", "billing": ADDRESS, "shipping": ADDRESS}).json()
    assert (updated["total"], updated["total_tax"], updated["tax_lines"]) == ("29.99", "0.00", [])


def test_parent_managed_variations_share_one_pool(sandbox, http) -> None:
    sandbox.clock.advance(2)
    parent = sandbox.woo.add_variable_product("Shared tee", [
        {"sku": "SH-RED", "price": "15.00", "attributes": [{"name": "Color", "option": "Red"}]},
        {"sku": "SH-BLUE", "price": "15.00", "attributes": [{"name": "Color", "option": "Blue"}]},
    ], sku="SH", stock_quantity=2)
    red = sandbox.woo.product_by_sku("SH-RED")
    assert (red["manage_stock"], red["stock_quantity"]) == ("parent", 2)
    sandbox.clock.advance(2)
    for sku in ("SH-RED", "SH-BLUE"):
        order = post(sandbox, http, "/orders", {"status": "on-hold", "line_items": [{"sku": sku, "quantity": 2}]})
        assert [m["key"] for m in order["line_items"][0]["meta_data"]] == ["color", "_reduced_stock"]
    after = [sandbox.woo.product_by_sku(s) for s in ("SH", "SH-RED", "SH-BLUE")]
    assert [p["stock_quantity"] for p in after] == [-2, -2, -2]
    assert after[0]["date_modified_gmt"] > parent["date_modified_gmt"]  # the pool's owner moved
    assert after[1]["date_modified_gmt"] == red["date_modified_gmt"]


def test_variation_edit_moves_its_parent(sandbox, http) -> None:
    parent = sandbox.woo.add_variable_product("Edited tee", [
        {"sku": "ED-M", "price": "20.00", "stock_quantity": 5, "attributes": [{"name": "Size", "option": "M"}]}])
    sandbox.clock.advance(3)
    variation = sandbox.woo.product_by_sku("ED-M")
    http.put(sandbox.woo_url + API + f"/products/{parent['id']}/variations/{variation['id']}",
             json={"stock_quantity": 42})
    assert sandbox.woo.product_by_sku("ED-M")["date_modified_gmt"] > parent["date_modified_gmt"]
    changed = http.get(sandbox.woo_url + API + "/products", params={
        "modified_after": parent["date_modified_gmt"], "dates_are_gmt": "true"}).json()
    assert parent["id"] in [p["id"] for p in changed]


def test_a_trashed_product_leaves_an_empty_line(sandbox, http) -> None:
    gone = sandbox.woo.add_simple_product("GONE-1", "9.00", 10)
    trashed = http.delete(sandbox.woo_url + API + f"/products/{gone['id']}")
    assert trashed.status_code == 200 and trashed.json()["status"] == "trash"
    order = post(sandbox, http, "/orders", {"status": "on-hold", "line_items": [
        {"sku": "GONE-1", "quantity": 1, "total": "15.00"}]})
    [line] = order["line_items"]
    assert (line["product_id"], line["name"], line["sku"], order["total"]) == (0, "", None, "15.00")
    assert http.get(sandbox.woo_url + API + "/products", params={"sku": "GONE-1"}).json() == []
    assert sandbox.woo.product_by_sku("GONE-1")["stock_quantity"] == 10


def test_the_store_emails_the_billing_address(sandbox, http) -> None:
    sink = MailSink()
    try:
        sandbox.woo.settings.update(smtp_port=sink.port)
        sandbox.woo.add_simple_product("MAIL-1", "12.50", 10)
        order = post(sandbox, http, "/orders", marketplace_order("MAIL-1"))
        http.put(sandbox.woo_url + API + f"/orders/{order['id']}", json={
            "status": "processing", "billing": {**ADDRESS, "email": "buyer@example.com"}})
        http.put(sandbox.woo_url + API + f"/orders/{order['id']}", json={"status": "completed"})
        post(sandbox, http, f"/orders/{order['id']}/refunds", {"amount": "5.00", "api_refund": False})
        to_buyer = [(m["X-WC-Email"], m["Subject"]) for m in sink.messages if m["To"] == "buyer@example.com"]
        assert [t for t, _ in to_buyer] == ["customer_processing_order", "customer_completed_order",
                                            "customer_refunded_order"]
        assert "partially refunded" in to_buyer[-1][1]
        assert any(m["To"] == "admin@store.sandbox" for m in sink.messages)  # new order, to the shop
    finally:
        sink.stop()
