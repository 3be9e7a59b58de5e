"""What Mirakl charged, WooCommerce's totals against it, and the OR28 cap (pure functions)."""
from __future__ import annotations

from decimal import Decimal

from include.woo_mirakl.order_money import expected_total, line_charged, refund_excess, shipping_charged, totals_problem

LINE = {"order_line_id": "L-1", "quantity": 2, "price": 25.0, "shipping_price": 4.99,
        "taxes": [{"amount": 4.17, "code": "TVA20"}], "shipping_taxes": [{"amount": 0.83, "code": "TVA20"}]}


def test_charged_amounts_follow_the_tax_mode():
    assert (line_charged(LINE, "TAX_INCLUDED"), shipping_charged(LINE, "TAX_INCLUDED")) == (Decimal("25.00"),
                                                                                           Decimal("4.99"))
    assert (line_charged(LINE, "TAX_EXCLUDED"), shipping_charged(LINE, "TAX_EXCLUDED")) == (Decimal("29.17"),
                                                                                           Decimal("5.82"))
    order = {"order_tax_mode": "TAX_EXCLUDED", "order_lines": [LINE, {**LINE, "order_line_id": "L-2"}]}
    assert expected_total(order, {"L-1"}) == Decimal("34.99")


def test_totals_problem_names_the_tax_woocommerce_added():
    assert totals_problem({"id": 7, "total": "49.99"}, Decimal("49.99")) is None
    assert totals_problem({"id": 7, "total": "50.00"}, Decimal("49.99")) is None  # a cent of rounding
    assert totals_problem({"id": 7, "total": "59.99", "total_tax": "10.00"}, Decimal("49.99")) == (
        "WooCommerce order 7 totals 59.99, Mirakl charged 49.99 (WooCommerce added 10.00 of tax)")


def test_refund_excess_caps_the_line_and_the_units_refunded():
    tax_included = {**LINE, "price": 25.0}
    # one unit refunded with VAT added on top of a VAT-inclusive price (12.50 + 2.50)
    assert "more than Mirakl charged for them: 12.50" in refund_excess(
        tax_included, "TAX_INCLUDED", Decimal("15.00"), 1, Decimal("0"), 0)
    assert refund_excess(tax_included, "TAX_INCLUDED", Decimal("12.50"), 1, Decimal("0"), 0) is None
    assert refund_excess(tax_included, "TAX_INCLUDED", Decimal("12.50"), 1, Decimal("12.50"), 1) is None
    assert "more than is left to refund: 12.50" in refund_excess(
        tax_included, "TAX_INCLUDED", Decimal("13.00"), 0, Decimal("12.50"), 1)
    thirds = {"quantity": 3, "price": 10.0}  # 3.33 + 3.33 + 3.34: earlier rounding is absorbed
    assert refund_excess(thirds, "TAX_INCLUDED", Decimal("3.34"), 1, Decimal("6.66"), 2) is None
    assert refund_excess(thirds, "TAX_INCLUDED", Decimal("3.34"), 1, Decimal("0"), 0) is not None
