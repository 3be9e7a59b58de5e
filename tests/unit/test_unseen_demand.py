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


def order(ledger, mp, order_id, lines, woo=None, state="WAITING_ACCEPTANCE"):
    """``lines``: (sku, quantity, our decision, Mirakl's line state)."""
    ledger.upsert_order(mp, order_id, mirakl_state=state, woo_order_id=woo)
    ledger.set_order_lines(mp, order_id, [
        {"mirakl_order_line_id": f"{order_id}-{i}", "offer_sku": sku, "quantity": qty, "decision": decision,
         "mirakl_state": line_state}
        for i, (sku, qty, decision, line_state) in enumerate(lines)])


def test_store_demand_adds_every_marketplace_and_ignores_what_woocommerce_holds(ledger):
    order(ledger, "a", "A-1", [("X", 2, None, "WAITING_ACCEPTANCE"), ("Y", 1, None, "WAITING_ACCEPTANCE")])
    order(ledger, "b", "B-1", [("X", 3, None, "WAITING_ACCEPTANCE")])
    order(ledger, "b", "B-2", [("Y", 5, "accepted", "WAITING_DEBIT_PAYMENT")], woo=77, state="WAITING_DEBIT_PAYMENT")
    order(ledger, "c", "C-1", [("X", 9, None, "WAITING_ACCEPTANCE")])  # another store's marketplace
    order(ledger, "a", "A-0", [("X", 4, None, "CANCELED")], state="CANCELED")
    assert store_demand(ledger, ["a", "b"]) == {"X": 5, "Y": 1}


def test_a_line_we_refuse_counts_until_mirakl_has_given_its_units_back(ledger):
    # decided, OR21 not processed yet: Mirakl still holds the units off the offer
    order(ledger, "a", "A-1", [("X", 2, "refused", "WAITING_ACCEPTANCE")])
    order(ledger, "a", "A-2", [("Y", 1, "accepted", "WAITING_ACCEPTANCE"), ("X", 3, "refused", "WAITING_ACCEPTANCE")],
          woo=12)
    assert store_demand(ledger, ["a"]) == {"X": 5}
    # Mirakl processed the refusals (OR11 shows the lines REFUSED): the units are back on the offer
    order(ledger, "a", "A-1", [("X", 2, "refused", "REFUSED")], state="REFUSED")
    order(ledger, "a", "A-2", [("Y", 1, "accepted", "WAITING_DEBIT_PAYMENT"), ("X", 3, "refused", "REFUSED")],
          woo=12, state="WAITING_DEBIT_PAYMENT")
    assert store_demand(ledger, ["a"]) == {}


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
