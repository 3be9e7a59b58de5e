"""The pure mapping parts of the shipment and refund flows: carriers, reasons, OR28 plans."""
from __future__ import annotations

from decimal import Decimal

import pytest

from include.woo_mirakl.clients.mirakl_models import Order
from include.woo_mirakl.clients.woocommerce import Shipment
from include.woo_mirakl.config import ConfigError, normalise_carrier
from include.woo_mirakl.refunds import (
    ReasonMap,
    UnsendableRefund,
    find_landed,
    plan_refund,
    refunded_so_far,
    request_of,
)
from include.woo_mirakl.shipments import pick_shipment, tracking_request

CARRIERS = {normalise_carrier(k): v for k, v in {"DHL Express": "DHL", "La Poste": "LAPOSTE", "UPS": "UPS"}.items()}
KNOWN = frozenset({"DHL", "LAPOSTE"})
REASONS = ReasonMap("RETURN_CHANGED_MIND", (("broken", "RETURN_BROKEN_ITEM"), ("changed mind", "RETURN_CHANGED_MIND")))


def shipment(provider, number="N1", url=None) -> Shipment:
    return Shipment(tracking_number=number, provider=provider, tracking_url=url, date_shipped=None, source="meta")


@pytest.mark.parametrize("provider", ["DHL Express", "dhl-express", "DHL_EXPRESS", " dhl  express "])
def test_mapped_carrier_ignores_case_and_spacing(provider):
    assert tracking_request(shipment(provider), CARRIERS, KNOWN).body == {"carrier_code": "DHL", "tracking_number": "N1"}


def test_unmapped_carrier_sends_name_and_url_and_names_the_carrier():
    request = tracking_request(shipment("Mondial Relay", url="https://mr.example/N1"), CARRIERS, KNOWN)
    assert request.body == {"carrier_name": "Mondial Relay", "carrier_url": "https://mr.example/N1",
                            "tracking_number": "N1"}
    assert request.unmapped_carrier == "Mondial Relay"


def test_mapped_code_missing_from_sh21_is_unmapped():
    request = tracking_request(shipment("UPS", url="https://ups.example/N1"), CARRIERS, KNOWN)
    assert request.unmapped_carrier == "UPS" and "carrier_code" not in request.body
    assert tracking_request(shipment("UPS"), CARRIERS, None).body["carrier_code"] == "UPS"  # SH21 unknown: trust the map


def test_unmapped_carrier_without_url_sends_no_tracking():
    request = tracking_request(shipment("Mondial Relay"), CARRIERS, KNOWN)
    assert request.body == {} and "no tracking URL" in request.problem


def test_pick_shipment_takes_the_last_tracked_parcel():
    assert pick_shipment([shipment("UPS", "A"), shipment("UPS", ""), shipment("DHL", "B"), shipment("DHL", None)]).tracking_number == "B"
    assert pick_shipment([shipment("UPS", "")]) is None


def test_reason_map_exact_then_keyword_then_default(tmp_path):
    assert REASONS.code("Changed  MIND") == "RETURN_CHANGED_MIND"
    assert REASONS.code("The item arrived broken, sorry") == "RETURN_BROKEN_ITEM"
    assert REASONS.code("") == REASONS.code("late") == "RETURN_CHANGED_MIND"
    (tmp_path / "bad.yaml").write_text("reasons: {broken: X}\n")
    with pytest.raises(ConfigError, match="default"):
        ReasonMap.load(tmp_path / "bad.yaml")
    assert ReasonMap.load().code("damaged") == "RETURN_BROKEN_ITEM"  # the shipped file loads


def mirakl_order(states=("SHIPPED", "SHIPPED"), refunds=((), ())) -> Order:
    lines = [
        {"order_line_id": "O-1", "order_line_state": states[0], "offer_sku": "MUG", "quantity": 2, "price": 25.0,
         "shipping_price": 2.5, "refunds": list(refunds[0])},
        {"order_line_id": "O-2", "order_line_state": states[1], "offer_sku": "TEE", "quantity": 1, "price": 20.0,
         "shipping_price": 2.49, "refunds": list(refunds[1])},
    ]
    return Order.from_api({"order_id": "O", "order_lines": lines})


WOO_ORDER = {"id": 7, "line_items": [
    {"id": 11, "sku": "MUG", "meta_data": [{"key": "_mirakl_order_line_id", "value": "O-1"}]},
    {"id": 12, "sku": "TEE", "meta_data": [{"key": "_mirakl_order_line_id", "value": "O-2"}]},
    {"id": 13, "sku": "GIFT", "meta_data": []},
]}


def woo_refund(amount, *items, reason="", shipping_lines=()):
    return {"id": 99, "amount": amount, "reason": reason, "shipping_lines": list(shipping_lines), "line_items": [
        {"id": 500 + i, "sku": "x", "quantity": -qty, "total": f"-{total}", "total_tax": "0.00",
         "meta_data": [{"key": "_refunded_item_id", "value": str(item)}]} for i, (item, qty, total) in enumerate(items)]}


def test_line_refund_maps_to_its_mirakl_line_with_quantity_and_amount():
    plan = plan_refund(woo_refund("12.50", (11, 1, "12.50"), reason="broken"), WOO_ORDER, mirakl_order(), REASONS, {})
    assert request_of(plan) == {"refunds": [
        {"order_line_id": "O-1", "amount": 12.5, "shipping_amount": 0.0, "quantity": 1, "reason_code": "RETURN_BROKEN_ITEM"}]}


def test_amount_not_tied_to_a_line_is_shipping_spread_over_the_lines():
    plan = plan_refund(woo_refund("4.00"), WOO_ORDER, mirakl_order(), REASONS, {})
    assert [(p.order_line_id, p.amount, p.shipping_amount) for p in plan] == [
        ("O-1", Decimal("0"), Decimal("2.50")), ("O-2", Decimal("0"), Decimal("1.50"))]
    explicit = plan_refund(woo_refund("2.00", shipping_lines=[{"total": "-2.00", "total_tax": "0"}]), WOO_ORDER,
                           mirakl_order(), REASONS, {})
    assert [(p.order_line_id, p.shipping_amount) for p in explicit] == [("O-1", Decimal("2.00"))]


def test_refunds_already_made_count_against_what_is_left():
    done = refunded_so_far(mirakl_order(refunds=(({"id": "r1", "amount": 12.5, "shipping_amount": 0, "quantity": 1},), ())),
                           [{"refund_id": "r1", "order_line_id": "O-1", "amount": 12.5, "quantity": 1},
                            {"refund_id": "r2", "order_line_id": "O-1", "amount": 5, "quantity": 0}])
    assert done == {"O-1": (Decimal("17.50"), Decimal("0.00"), 1)}
    with pytest.raises(UnsendableRefund, match=r"12\.50 on Mirakl line O-1 \(MUG\) is more than is left to refund: 7\.50"):
        plan_refund(woo_refund("12.50", (11, 1, "12.50")), WOO_ORDER, mirakl_order(), REASONS, done)


@pytest.mark.parametrize("refund, states, message", [
    (woo_refund("30.00", (11, 1, "30.00")), ("SHIPPED", "SHIPPED"), "more than is left to refund: 25.00"),
    (woo_refund("12.50", (11, 3, "12.50")), ("SHIPPED", "SHIPPED"), "3 unit(s) on Mirakl line O-1 (MUG) but only 2"),
    (woo_refund("5.00", (13, 1, "5.00")), ("SHIPPED", "SHIPPED"), "line item 13 (x) is not a line of Mirakl order O"),
    (woo_refund("12.50", (11, 1, "12.50")), ("CLOSED", "SHIPPED"), "O-1 is CLOSED; refunds are only allowed in"),
    (woo_refund("10.00"), ("SHIPPED", "SHIPPED"), "more than the shipping left to refund: 4.99"),
    (woo_refund("0"), ("SHIPPED", "SHIPPED"), "nothing to refund"),
])
def test_unsendable_refunds_say_why(refund, states, message):
    with pytest.raises(UnsendableRefund) as raised:
        plan_refund(refund, WOO_ORDER, mirakl_order(states=states), REASONS, {})
    assert message in str(raised.value) and "refund 99 of WooCommerce order 7" in str(raised.value)


def test_find_landed_matches_unclaimed_refunds_only():
    request = {"refunds": [{"order_line_id": "O-1", "amount": 12.5, "shipping_amount": 0.0, "quantity": 1,
                            "reason_code": "R"}]}
    refund = {"amount": 12.5, "shipping_amount": 0, "quantity": 1, "reason_code": "R"}
    order = mirakl_order(refunds=(({"id": "r1", **refund}, {"id": "r2", **refund}), ()))
    assert find_landed(request, order, set()) == ["r1"]
    assert find_landed(request, order, {"r1"}) == ["r2"]
    assert find_landed(request, order, {"r1", "r2"}) is None
    assert find_landed(request, mirakl_order(), set()) is None
