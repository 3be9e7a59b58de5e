"""Available to promise, prices and deltas: the pure rules of the inventory push."""
from __future__ import annotations

from decimal import Decimal

import pytest

from include.woo_mirakl.config import Marketplace, PriceRule
from include.woo_mirakl.stock import (
    AcceptedOffer,
    OfferTarget,
    WooItem,
    available_to_promise,
    offer_target,
    offer_targets,
    parse_price,
    price_to_send,
    quantity_to_send,
    woo_stock,
)

MARKET = Marketplace(name="m", mirakl_conn_id="c", safety_buffer=2,
                     price_rule=PriceRule(Decimal("10"), Decimal("0.10")), unmanaged_in_stock_quantity=7)


def item(**fields) -> WooItem:
    data = {"id": 1, "sku": "A", "type": "simple", "status": "publish", "manage_stock": True,
            "stock_quantity": 10, "stock_status": "instock", "price": "19.99", **fields}
    return WooItem.from_api(data)


@pytest.mark.parametrize("stock, demand, buffer, expected", [
    (10, 0, 0, 10), (10, 3, 2, 5), (4, 3, 2, 0), (0, 5, 0, 0), (-3, 0, 0, 0), (5, 0, 5, 0),
])
def test_available_to_promise_subtracts_demand_and_buffer_and_never_goes_negative(stock, demand, buffer, expected):
    assert available_to_promise(stock, demand, buffer) == expected


def test_available_to_promise_rejects_negative_inputs():
    with pytest.raises(ValueError, match="cannot be negative"):
        available_to_promise(10, -1, 0)


@pytest.mark.parametrize("fields, expected", [
    ({}, 10),
    ({"manage_stock": False, "stock_quantity": None, "stock_status": "instock"}, 7),
    ({"manage_stock": False, "stock_quantity": None, "stock_status": "onbackorder"}, 7),
    ({"manage_stock": False, "stock_quantity": None, "stock_status": "outofstock"}, 0),
    ({"manage_stock": "parent", "stock_quantity": 4}, 4),
    ({"status": "draft"}, 0),
    ({"status": "private"}, 0),
    ({"stock_quantity": -2, "stock_status": "onbackorder"}, -2),
])
def test_woo_stock_rules(fields, expected):
    assert woo_stock(item(**fields), 7) == expected


def test_offer_target_applies_demand_buffer_and_price_rule():
    target = offer_target(item(stock_quantity=10), MARKET, unreserved_demand=3)
    # 10 - 3 - 2 = 5; 19.99 * 1.10 = 21.989 -> rounded to 0.10 -> 22.00
    assert target == OfferTarget("A", 5, Decimal("22.00"))


def test_backordered_negative_stock_is_offered_as_zero():
    assert offer_target(item(stock_quantity=-4), MARKET).quantity == 0


def test_variable_parents_are_never_offers():
    parent = item(type="variable", sku="PARENT")
    assert not parent.is_offer
    with pytest.raises(ValueError, match="variable product, not an offer"):
        offer_target(parent, MARKET)


def test_an_item_without_sku_cannot_become_an_offer():
    variation = WooItem.from_api({"id": 9, "sku": "", "parent_id": 3, "price": "5"})
    assert variation.is_variation and variation.sku == ""
    with pytest.raises(ValueError, match="has no SKU"):
        offer_target(variation, MARKET)


def test_missing_price_is_not_zero():
    assert parse_price("") is None
    assert parse_price(None) is None
    assert parse_price("abc") is None
    assert parse_price("-1") is None
    assert parse_price("12.5") == Decimal("12.5")
    assert offer_target(item(price=""), MARKET).price is None


def test_quantity_delta_against_accepted_value():
    target = OfferTarget("A", 5, Decimal("10.00"))
    assert quantity_to_send(target, None) == 5
    assert quantity_to_send(target, AcceptedOffer(quantity=5)) is None
    assert quantity_to_send(target, AcceptedOffer(quantity=4)) == 5


def test_quantity_in_flight_is_not_sent_twice_but_a_newer_value_is():
    target = OfferTarget("A", 5, None)
    assert quantity_to_send(target, AcceptedOffer(quantity=9, pending_quantity=5)) is None
    assert quantity_to_send(target, AcceptedOffer(quantity=5, pending_quantity=9)) == 5


def test_price_delta_compares_decimals_and_skips_unknown_prices():
    target = OfferTarget("A", 1, Decimal("22.00"))
    assert price_to_send(target, AcceptedOffer(price=Decimal("22"))) is None
    assert price_to_send(target, AcceptedOffer(price=Decimal("21.90"))) == Decimal("22.00")
    assert price_to_send(target, AcceptedOffer(price=Decimal("1"), pending_price=Decimal("22.00"))) is None
    assert price_to_send(OfferTarget("A", 1, None), None) is None



def pooled(variation_id: int, sku: str, pool: int, **fields) -> WooItem:
    """A variation whose parent (id 100) manages the stock: WooCommerce reports the pool on it."""
    return item(id=variation_id, sku=sku, type="variation", parent_id=100, manage_stock="parent",
                stock_quantity=pool, **fields)


@pytest.mark.parametrize("pool, demand, expected", [
    (13, {}, {"R": 4, "G": 4, "B": 3}),  # 13 − buffer 2 = 11: 3 each, the 2 left to the lowest ids
    (13, {"B": 3}, {"R": 3, "G": 3, "B": 2}),  # demand on one variation lowers the whole pool
    (4, {}, {"R": 1, "G": 1, "B": 0}),
    (2, {"R": 1}, {"R": 0, "G": 0, "B": 0}),
])
def test_a_shared_pool_is_split_so_its_offers_never_sum_above_its_atp(pool, demand, expected):
    items = [pooled(3, "B", pool), pooled(1, "R", pool), pooled(2, "G", pool), item(id=9, sku="S", stock_quantity=6)]
    targets = offer_targets(items, MARKET, demand)
    assert {sku: targets[sku].quantity for sku in "RGB"} == expected
    assert sum(expected.values()) == available_to_promise(pool, sum(demand.values()), MARKET.safety_buffer)
    assert targets["S"].quantity == 4 and targets["R"].price == Decimal("22.00")  # own stock: as before


def test_an_unpublished_variation_takes_no_share_of_its_pool():
    items = [pooled(1, "R", 8), pooled(2, "G", 8, status="draft")]
    assert {sku: t.quantity for sku, t in offer_targets(items, MARKET, {}).items()} == {"R": 6, "G": 0}
