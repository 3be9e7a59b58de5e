"""The pure parts of human review: which rule asks for a person, and the marketplace settings."""
from __future__ import annotations

from collections import Counter
from dataclasses import replace
from decimal import Decimal

import pytest
import yaml

from include.woo_mirakl.clients.mirakl_models import Order
from include.woo_mirakl.config import ConfigError, HumanReview, Marketplace, OrderPolicy, load_marketplaces
from include.woo_mirakl.human_review import WooFacts, review_reasons, unit_price

MP = Marketplace(name="mp", mirakl_conn_id="m")


def order(*lines: tuple[str, int, str], total: str | None = None) -> Order:
    return Order.from_api({
        "order_id": "O-1", "currency_iso_code": "EUR",
        "total_price": total or str(sum(Decimal(p) * q for _, q, p in lines)),
        "order_lines": [{"order_line_id": f"O-1-{i}", "offer_sku": sku, "quantity": qty, "price_unit": price,
                         "price": str(Decimal(price) * qty)} for i, (sku, qty, price) in enumerate(lines, 1)],
    })


def rules(**changes) -> Marketplace:
    return replace(MP, human_review=replace(HumanReview(), **changes))


WOO = {"A": WooFacts(5, Decimal("20.00")), "B": WooFacts(1, Decimal("10.00"), backorders_allowed=True)}


def test_no_rule_no_person():
    assert review_reasons(order(("A", 1, "1.00"), ("B", 9, "10.00")), WOO, MP) == []


def test_accept_orders_false_always_asks():
    mp = replace(MP, order_policy=OrderPolicy(accept_orders=False))
    assert review_reasons(order(("A", 1, "20.00")), WOO, mp) == [
        "the marketplace's policy is to decide every order by hand (accept_orders: false)"]


@pytest.mark.parametrize("price, asks", [("16.00", False), ("15.99", True), ("25.00", False)])
def test_price_guard_is_strictly_more_than_the_share(price, asks):
    reasons = review_reasons(order(("A", 1, price)), WOO, rules(price_below_woo_share=Decimal("0.2")))
    assert bool(reasons) is asks
    if asks:
        assert reasons == [f"line O-1-1 (A): unit price {price} is more than 20 % below the WooCommerce price 20.00"]


def test_short_line_asks_only_when_backorders_are_allowed_and_counts_earlier_orders():
    mp = rules(backorder_short_lines=True)
    assert review_reasons(order(("B", 1, "10.00")), WOO, mp) == []
    assert review_reasons(order(("B", 1, "10.00")), WOO, mp, Counter({"B": 1})) == [
        "line O-1-1 (B): 1 ordered, 0 in stock, and the product allows backorders"]
    assert review_reasons(order(("A", 9, "20.00")), WOO, mp) == []  # short, but no backorders: refused as usual


def test_order_total_above():
    mp = rules(order_total_above=Decimal("100"))
    assert review_reasons(order(("A", 5, "20.00")), WOO, mp) == []
    assert review_reasons(order(("A", 5, "20.01")), WOO, mp) == ["the order total 100.05 EUR is above 100"]


def test_unit_price_without_price_unit_divides_the_line_price():
    o = Order.from_api({"order_id": "x", "order_lines": [{"order_line_id": "1", "offer_sku": "A", "quantity": 3,
                                                          "price": "10.00"}]})
    assert unit_price(o.order_lines[0]) == Decimal("3.33")


def _write(tmp_path, review) -> str:
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"marketplaces": [{"name": "x", "mirakl_conn_id": "c", "human_review": review}]}))
    return str(path)


def test_settings_are_read_and_checked(tmp_path):
    [mp] = load_marketplaces(_write(tmp_path, {"price_below_woo_share": 0.15, "order_total_above": 500,
                                               "timeout_default": "leave", "decide_before_minutes": 30}))
    assert mp.human_review == HumanReview(price_below_woo_share=Decimal("0.15"), order_total_above=Decimal("500"),
                                          timeout_default="leave", decide_before_minutes=30.0)
    for bad, message in (({"timeout_default": "maybe"}, "timeout_default 'maybe' must be one of"),
                         ({"price_below_woo_share": 1.5}, "must be between 0 and 1"),
                         ({"decide_before_minutes": -1}, "must be 0 or more"),
                         ({"typo": 1}, "unknown keys ['typo']")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_marketplaces(_write(tmp_path, bad))
