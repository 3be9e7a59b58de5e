"""The lower-only rule and the freshness of the store's order listings (issue 19).

The rule is a pure function; the watch runs against a real SQLite ledger with a stand-in for
the OR11 listing (the end-to-end tests in tests/e2e/test_unseen_demand*.py run the real one).
"""
from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import pytest

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.unseen_demand import (
    DemandWatch,
    allowed_quantity,
    last_listing,
    record_listing,
    store_demand,
    store_of,
)

NOW = datetime(2026, 12, 3, 8, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("target, live, told, own_fresh, expected", [
    (25, 21, 25, False, 21),  # the issue: 4 sold on Mirakl, unread; WooCommerce still says 25
    (24, 21, 25, False, 20),  # ... and 1 sold on the web shop: 25 - 4 - 1
    (30, 21, 25, False, 21),  # a restock while unsure: not raised
    (2, 5, 5, False, 2),  # a plain lowering goes through
    (0, 3, 6, False, 0),
    (1, 2, 9, False, 0),  # never below zero
    (10, 8, None, False, 8),  # nothing accepted from us yet: at most what Mirakl holds
    (20, 18, 23, True, 18),  # this marketplace's sales are all known: only capped, not counted twice
    (12, None, 15, False, 12),  # no offer on Mirakl: nothing to give back
])
def test_an_unsure_cycle_lowers_but_never_raises(target, live, told, own_fresh, expected):
    assert allowed_quantity(target, live, told, sure=False, own_fresh=own_fresh) == expected


def test_a_sure_cycle_sends_the_target_even_above_mirakl():
    assert allowed_quantity(30, 21, 25, sure=True, own_fresh=True) == 30


def test_an_unsure_quantity_is_never_above_what_mirakl_holds():
    for target, live, told, own in itertools.product(range(0, 12), range(0, 12), (None, *range(0, 12)), (True, False)):
        quantity = allowed_quantity(target, live, told, sure=False, own_fresh=own)
        assert 0 <= quantity <= min(target, live), (target, live, told, own)


@pytest.fixture
def ledger(tmp_path):
    from include.woo_mirakl.ledger import Ledger

    return Ledger.from_url(f"sqlite:///{tmp_path / 'ledger.db'}")


def market(name: str, store: str = "woocommerce_default") -> Marketplace:
    return Marketplace(name=name, mirakl_conn_id=f"mirakl_{name}", woocommerce_conn_id=store)


def test_the_store_is_every_marketplace_on_the_same_woocommerce_connection():
    configured = [market("a"), market("b"), market("c", store="woocommerce_other")]
    assert [m.name for m in store_of(configured[1], configured)] == ["b", "a"]
    assert [m.name for m in store_of(market("alone"), [])] == ["alone"]


def test_store_demand_adds_every_marketplace_and_ignores_reserved_orders(ledger):
    for mp, order, lines, woo in (("a", "A-1", [("X", 2), ("Y", 1)], None), ("b", "B-1", [("X", 3)], None),
                                  ("b", "B-2", [("Y", 5)], 77)):
        ledger.upsert_order(mp, order, mirakl_state="WAITING_ACCEPTANCE", woo_order_id=woo)
        ledger.set_order_lines(mp, order, [{"mirakl_order_line_id": f"{order}-{i}", "offer_sku": sku, "quantity": q}
                                           for i, (sku, q) in enumerate(lines)])
    assert store_demand(ledger, ["a", "b"]) == {"X": 5, "Y": 1}


def test_a_fresh_listing_is_trusted_and_a_stale_one_is_listed_again(ledger):
    clock = {"now": NOW}
    listed: list[str] = []

    def list_orders(marketplace):
        listed.append(marketplace.name)
        if marketplace.name == "b":
            raise RuntimeError("HTTP 500")
        record_listing(ledger, marketplace.name, clock["now"])
        return {"read": 0}

    record_listing(ledger, "a", NOW - timedelta(seconds=10))
    record_listing(ledger, "b", NOW - timedelta(seconds=50))
    watch = DemandWatch(market("a"), ledger, list_orders, store=[market("a"), market("b")], clock=lambda: clock["now"],
                        fresh_for=timedelta(seconds=30))
    knowledge = watch.learn()
    assert listed == ["b"]  # a listed 10 s ago: its listing is shared, not repeated
    assert not knowledge.sure and knowledge.own_fresh
    assert "HTTP 500" in knowledge.stale["b"]

    clock["now"] = NOW + timedelta(seconds=25)  # a's listing is now 35 s old
    knowledge = watch.learn()
    assert listed == ["b", "a", "b"] and last_listing(ledger, "a") == clock["now"]
    assert set(knowledge.stale) == {"b"}


def test_a_listing_the_budget_refused_is_not_taken_for_a_fresh_one(ledger):
    watch = DemandWatch(market("a"), ledger, lambda m: {"skipped": 1}, store=[market("a")], clock=lambda: NOW)
    knowledge = watch.learn()
    assert not knowledge.sure and not knowledge.own_fresh
    assert "less than a minute ago" in knowledge.stale["a"]
