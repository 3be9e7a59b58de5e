"""Each marketplace's reading of OR11's ceiling: the persona (default / External Partner) and
whether every page of one listing counts. Real ledger budget, real HTTP against the sandbox."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Iterator

import pytest

from include.sandbox.core import Clock, Sandbox
from include.sandbox.scenarios import place_orders
from include.woo_mirakl.budgets import BudgetExceeded, LedgerCallBudget, marketplace_limits
from include.woo_mirakl.clients.http import RetryPolicy
from include.woo_mirakl.clients.mirakl import MiraklClient
from include.woo_mirakl.config import ConfigError, OrderListing, load_marketplaces
from include.woo_mirakl.ledger import Ledger

START = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, timeout=2.0, connect_timeout=1.0)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(seed=5, clock=Clock(start=START, frozen=True), validate_requests=True).start()
    with sb.lock:
        for i in range(5):
            sb.mirakl.add_offer(f"LS-{i}", 10 + i, 10**6)
        place_orders(sb, 25, [f"LS-{i}" for i in range(5)], seed=1)  # three pages of 10
    yield sb
    sb.stop()


def _client(sandbox: Sandbox, tmp_path: Path, persona: str, each_page_counts: bool):
    now = [sandbox.clock.now()]
    budget = LedgerCallBudget(Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db"), "shop",
                              limits=marketplace_limits(persona, each_page_counts), clock=lambda: now[0])
    client = MiraklClient(sandbox.mirakl_url, sandbox.mirakl.api_key, shop_id=sandbox.mirakl.shop_id,
                          budget=budget, limits=budget.limits, retry=FAST, page_size=10)
    return client, now


def test_the_published_personas_and_readings():
    assert marketplace_limits().windows("OR11") == ((1, 60.0),)
    assert marketplace_limits("external_partner").windows("OR11") == ((1, 900.0),)
    assert marketplace_limits("external_partner").windows("TL02") == ((20, 60.0), (60, 3600.0))
    assert not marketplace_limits().pages_free("OR11")
    assert marketplace_limits(each_page_counts=False).pages_free("OR11")
    with pytest.raises(ValueError, match="persona 'robot'"):
        marketplace_limits("robot")


def test_each_page_counts_by_default(sandbox: Sandbox, tmp_path: Path):
    client, _ = _client(sandbox, tmp_path, "default", each_page_counts=True)
    read = []
    with pytest.raises(BudgetExceeded):
        for order in client.iter_orders():
            read.append(order.order_id)
    assert len(read) == 10  # the second page needs a second slot, a minute later


def test_a_listing_counts_once_when_the_marketplace_says_so(sandbox: Sandbox, tmp_path: Path):
    client, now = _client(sandbox, tmp_path, "default", each_page_counts=False)
    assert len(list(client.iter_orders())) == 25  # three pages, one slot
    with pytest.raises(BudgetExceeded):
        next(iter(client.iter_orders()))  # the next listing waits for the minute
    now[0] += timedelta(seconds=60)
    assert next(iter(client.iter_orders())).order_id


def test_external_partner_lists_every_15_minutes(sandbox: Sandbox, tmp_path: Path):
    client, now = _client(sandbox, tmp_path, "external_partner", each_page_counts=False)
    assert len(list(client.iter_orders())) == 25
    now[0] += timedelta(minutes=14)
    with pytest.raises(BudgetExceeded) as exceeded:
        list(client.iter_orders())
    assert exceeded.value.retry_at == now[0] + timedelta(minutes=1)
    now[0] += timedelta(minutes=1)
    assert len(list(client.iter_orders())) == 25


def test_the_setting_is_read_per_marketplace(tmp_path: Path):
    path = tmp_path / "marketplaces.yaml"
    path.write_text(
        "marketplaces:\n"
        "  - {name: partner, mirakl_conn_id: m1, order_listing: {persona: external_partner, each_page_counts: false}}\n"
        "  - {name: plain, mirakl_conn_id: m2}\n", encoding="utf-8")
    partner, plain = load_marketplaces(path)
    assert partner.order_listing == OrderListing("external_partner", False)
    assert plain.order_listing == OrderListing("default", True)
    path.write_text("marketplaces:\n  - {name: bad, mirakl_conn_id: m, order_listing: {persona: robot}}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError, match="order_listing.persona 'robot'"):
        load_marketplaces(path)
