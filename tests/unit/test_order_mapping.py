"""Mirakl → WooCommerce order mapping: validation, per-line decisions, payloads (pure functions)."""
from __future__ import annotations

from collections import Counter
from decimal import Decimal

import pytest

from include.woo_mirakl.clients.mirakl_models import Order
from include.woo_mirakl.config import Marketplace, OrderPolicy
from include.woo_mirakl.order_mapping import (
    InvalidOrderError,
    StockInfo,
    acceptance_problems,
    completion_update,
    country_iso2,
    decide_lines,
    meta_value,
    order_decision,
    reservation_order,
    vanished_lines,
)
from include.woo_mirakl.clients.woocommerce import SkuRef

MARKETPLACE = Marketplace(name="sandbox", mirakl_conn_id="mirakl_sandbox")
POLICY = OrderPolicy()
ADDRESS = {
    "firstname": "Zoé", "lastname": "Lefèvre", "street_1": "12 rue de l'Église", "city": "Besançon",
    "zip_code": "25000", "country": "France", "country_iso_code": "FRA", "phone": "+33 3 81 00 00 00",
}


def order(lines=None, **fields) -> Order:
    raw = {
        "order_id": "O-1", "commercial_id": "C-1", "order_state": "WAITING_ACCEPTANCE", "currency_iso_code": "EUR",
        "shipping_price": 4.99, "shipping_type_label": "Standard",
        "customer": {"firstname": "Zoé", "lastname": "Lefèvre"},
        "order_lines": lines if lines is not None else [
            {"order_line_id": "O-1-1", "offer_sku": "A", "quantity": 2, "price": 20.0, "shipping_price": 2.5},
            {"order_line_id": "O-1-2", "offer_sku": "B", "quantity": 1, "price": 5.5, "shipping_price": 2.49},
        ],
        **fields,
    }
    return Order.from_api(raw)


@pytest.mark.parametrize("given, expected", [("FRA", "FR"), ("deu", "DE"), ("ES", "ES"), ("GBR", "GB"),
                                             ("France", None), ("XX", None), ("", None), (None, None)])
def test_country_codes_become_iso2(given, expected):
    assert country_iso2(given) == expected


def test_a_clean_order_has_no_problems():
    assert acceptance_problems(order()) == []


@pytest.mark.parametrize("line, fragment", [
    ({"order_line_id": "L", "offer_sku": "", "quantity": 1, "price": 1}, "has no SKU"),
    ({"order_line_id": "L", "offer_sku": None, "quantity": 1, "price": 1}, "has no SKU"),
    ({"order_line_id": "L", "offer_sku": "A", "quantity": 0, "price": 1}, "quantity 0"),
    ({"order_line_id": "L", "offer_sku": "A", "quantity": -2, "price": 1}, "quantity -2"),
    ({"order_line_id": "L", "offer_sku": "A", "quantity": "3", "price": 1}, "quantity '3'"),
    ({"order_line_id": "L", "offer_sku": "A", "quantity": 1, "price": -1}, "price -1"),
])
def test_bad_lines_are_named(line, fragment):
    problems = acceptance_problems(order([line]))
    assert len(problems) == 1 and fragment in problems[0] and "line L" in problems[0]


@pytest.mark.parametrize("currency, fragment", [("XYZ", "unknown currency 'XYZ'"), ("", "no currency"),
                                                (None, "no currency")])
def test_unknown_currency_is_a_problem(currency, fragment):
    assert acceptance_problems(order(currency_iso_code=currency)) == [fragment]


def test_no_lines_is_a_problem():
    assert acceptance_problems(order([])) == ["no order lines"]


def test_decisions_accept_refuse_unknown_and_short_stock():
    promised: Counter[str] = Counter()
    decisions = decide_lines(order(), {"A": StockInfo(1)}, OrderPolicy(), promised)
    assert [(d.line_id, d.accepted) for d in decisions] == [("O-1-1", False), ("O-1-2", False)]
    assert decisions[0].reason == "short stock: 1 available, 2 ordered"
    assert decisions[1].reason == "unknown SKU"
    assert order_decision(decisions) == "refused"
    assert promised == Counter()


def test_earlier_orders_of_the_batch_count_against_stock():
    stock = {"A": StockInfo(3), "B": StockInfo(None)}  # B: stock not managed, no limit
    promised: Counter[str] = Counter()
    first = decide_lines(order(), stock, OrderPolicy(), promised)
    second = decide_lines(order(), stock, OrderPolicy(), promised)
    assert [d.accepted for d in first] == [True, True]
    assert [d.accepted for d in second] == [False, True]
    assert order_decision(second) == "partially"
    assert promised == Counter({"sku:A": 2, "sku:B": 2})  # per stock pool; a SKU without one is its own


def test_two_lines_of_one_sku_share_its_stock():
    lines = [{"order_line_id": f"L{i}", "offer_sku": "A", "quantity": 2, "price": 1} for i in (1, 2)]
    decisions = decide_lines(order(lines), {"A": StockInfo(3)}, OrderPolicy(), Counter())
    assert [d.accepted for d in decisions] == [True, False]


def test_policy_can_leave_orders_to_a_person_or_accept_short_stock():
    assert decide_lines(order(), {}, OrderPolicy(accept_orders=False), Counter()) is None
    assert decide_lines(order(), {"A": StockInfo(9)}, OrderPolicy(refuse_unknown_sku=False), Counter()) is None
    lenient = decide_lines(order(), {"A": StockInfo(0), "B": StockInfo(0)}, OrderPolicy(refuse_short_stock=False),
                           Counter())
    assert [d.accepted for d in lenient] == [True, True]


def test_reservation_holds_accepted_lines_at_marketplace_prices():
    body = reservation_order(MARKETPLACE, order(), {"O-1-1"})
    assert body["status"] == "on-hold" and body["currency"] == "EUR" and body["payment_method"] == "mirakl"
    assert body["set_paid"] is False
    assert body["line_items"] == [{
        "sku": "A", "quantity": 2, "subtotal": "20.00", "total": "20.00",
        "meta_data": [{"key": "_mirakl_order_line_id", "value": "O-1-1"}],
    }]
    assert body["shipping_lines"] == [{"method_id": "mirakl", "method_title": "Standard", "total": "2.50"}]
    assert meta_value(body, "_mirakl_order_id") == "O-1"
    assert meta_value(body, "_mirakl_marketplace") == "sandbox"
    assert meta_value(body, "_mirakl_commercial_id") == "C-1"
    assert body["billing"] == {"first_name": "Zoé", "last_name": "Lefèvre"}
    with pytest.raises(ValueError, match="no accepted line"):
        reservation_order(MARKETPLACE, order(), set())


def test_completion_maps_addresses_message_and_shipping():
    shipped = order(
        order_state="SHIPPING", shipping_price=Decimal("4.99"),
        customer_notification_email="n+o-1@notification.mirakl.net",
        customer={"firstname": "Zoé", "lastname": "Lefèvre", "billing_address": ADDRESS,
                  "shipping_address": {**ADDRESS, "country_iso_code": "DEU", "city": "München", "phone": None}},
    )
    update = completion_update(shipped, "Merci — code 1234", shipping_line_id=77)
    assert update["status"] == "processing"
    assert update["billing"] == {
        "first_name": "Zoé", "last_name": "Lefèvre", "company": "", "address_1": "12 rue de l'Église",
        "address_2": "", "city": "Besançon", "state": "", "postcode": "25000", "country": "FR",
        "phone": "+33 3 81 00 00 00", "email": "",  # WooCommerce e-mails billing.email: never the customer
    }
    assert update["shipping"]["country"] == "DE" and update["shipping"]["city"] == "München"
    assert update["shipping"]["phone"] == ""
    assert update["customer_note"] == "Merci — code 1234"
    assert update["meta_data"] == [{"key": "MiraklOrderMessage", "value": "Merci — code 1234"},
                                   {"key": "_mirakl_customer_email", "value": "n+o-1@notification.mirakl.net"},
                                   {"key": "is_vat_exempt", "value": "yes"}]
    allowed = completion_update(shipped, None, shipping_line_id=77, customer_email_in_billing=True)
    assert allowed["billing"]["email"] == "n+o-1@notification.mirakl.net"
    assert update["shipping_lines"] == [{"id": 77, "method_id": "mirakl", "method_title": "Standard",
                                         "total": "4.99"}]


def test_malformed_address_is_refused_with_reasons():
    bad = {**ADDRESS, "country_iso_code": "ZZZ", "country": "Nowhere", "city": ""}
    shipped = order(customer={"billing_address": bad, "shipping_address": ADDRESS})
    with pytest.raises(InvalidOrderError) as caught:
        completion_update(shipped, None, None)
    assert caught.value.problems == [
        "billing address country 'ZZZ' is not a known country", "billing address has no city",
    ]
    with pytest.raises(InvalidOrderError, match="no billing address"):
        completion_update(order(customer={"firstname": "A"}), None, None)


def test_reservation_is_vat_exempt_and_carries_what_mirakl_charged():
    taxed = order(order_tax_mode="TAX_EXCLUDED", lines=[
        {"order_line_id": "O-1-1", "offer_sku": "A", "quantity": 2, "price": 20.0, "shipping_price": 2.5,
         "taxes": [{"amount": 4.0, "code": "TVA20"}], "shipping_taxes": [{"amount": 0.5, "code": "TVA20"}]}])
    body = reservation_order(MARKETPLACE, taxed, {"O-1-1"})
    assert meta_value(body, "is_vat_exempt") == "yes" and meta_value(body, "_mirakl_tax_mode") == "TAX_EXCLUDED"
    [line] = body["line_items"]
    assert (line["total"], body["shipping_lines"][0]["total"]) == ("24.00", "3.00")  # taxes on top, as charged
    assert meta_value(line, "_mirakl_taxes") == [{"amount": 4.0, "code": "TVA20"}]
    included = reservation_order(MARKETPLACE, order(lines=[
        {"order_line_id": "O-1-1", "offer_sku": "A", "quantity": 2, "price": 20.0, "shipping_price": 2.5,
         "taxes": [{"amount": 3.33, "code": "TVA20"}]}]), {"O-1-1"})
    assert included["line_items"][0]["total"] == "20.00"  # the price already holds the tax


def test_vanished_lines_are_those_without_their_product():
    sent = reservation_order(MARKETPLACE, order(), {"O-1-1", "O-1-2"})
    created = {"line_items": [
        {"product_id": 11, "sku": "A", "quantity": 2, "meta_data": [{"key": "_mirakl_order_line_id", "value": "O-1-1"}]},
        {"product_id": 0, "sku": None, "quantity": 1, "meta_data": [{"key": "_mirakl_order_line_id", "value": "O-1-2"}]},
    ]}
    assert vanished_lines(sent, created) == ["O-1-2"]
    created["line_items"][1].update(product_id=12, sku="B")
    assert vanished_lines(sent, created) == []
    created["line_items"][1]["quantity"] = 3
    assert vanished_lines(sent, created) == ["O-1-2"]


def test_variations_sharing_a_parent_draw_on_one_pool():
    pool = {"RED": StockInfo(2, "parent:9"), "BLUE": StockInfo(2, "parent:9")}
    promised = Counter()
    first = decide_lines(order(lines=[{"order_line_id": "A-1", "offer_sku": "RED", "quantity": 2, "price": 30}]),
                         pool, POLICY, promised)
    second = decide_lines(order(lines=[{"order_line_id": "B-1", "offer_sku": "BLUE", "quantity": 2, "price": 30}]),
                          pool, POLICY, promised)
    assert [d.accepted for d in first + second] == [True, False]
    assert second[0].reason == "short stock: 0 available, 2 ordered"


def test_unmanaged_out_of_stock_is_refused_like_the_push_offers_zero():
    ref = SkuRef(sku="OOSU", product_id=5, parent_id=None, type="simple", stock_quantity=None, manage_stock=False,
                 price="6.00", date_modified_gmt=None, stock_status="outofstock")
    [decision] = decide_lines(order(lines=[{"order_line_id": "A-1", "offer_sku": "OOSU", "quantity": 1, "price": 6}]),
                              {"OOSU": StockInfo.of(ref)}, POLICY, Counter())
    assert not decision.accepted and decision.reason.startswith("short stock: 0 available")
    assert StockInfo.of(SkuRef(**{**ref.__dict__, "stock_status": "instock"})).quantity is None
