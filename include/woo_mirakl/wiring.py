"""One marketplace's ledger, Mirakl call budget and clients, from its Airflow connections.

Every flow's tasks start here, so which connection a marketplace uses and how its call
ceilings are kept is decided in one place. Imported inside tasks only: it pulls in the
clients and SQLAlchemy, which DAG parsing must not pay for.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from include.woo_mirakl.budgets import LedgerCallBudget, marketplace_limits
from include.woo_mirakl.clients.http import RetryPolicy
from include.woo_mirakl.clients.mirakl import MiraklClient
from include.woo_mirakl.clients.woocommerce import WooCommerceClient
from include.woo_mirakl.config import Marketplace, get_marketplace
from include.woo_mirakl.hooks import MiraklHook, WooCommerceHook
from include.woo_mirakl.ledger import Ledger, get_ledger


@dataclass
class Wiring:
    """The ledger and budget of one marketplace, and its clients on demand."""

    marketplace: Marketplace
    ledger: Ledger
    budget: LedgerCallBudget
    _mirakl_hook: MiraklHook = field(repr=False)

    def mirakl(self, retry: RetryPolicy | None = None) -> MiraklClient:
        """A Mirakl client that asks the ledger's call budget before every limited call."""
        client = self._mirakl_hook.get_client(budget=self.budget, retry=retry)
        client.limits = self.budget.limits  # the marketplace's reading of OR11 (persona, pages)
        return client

    def woo(self, retry: RetryPolicy | None = None) -> WooCommerceClient:
        return WooCommerceHook(self.marketplace.woocommerce_conn_id).get_client(retry=retry)


def wire(marketplace_name: str, *, mirakl_wait: float = 0.0) -> Wiring:
    """Wire a configured marketplace; ``mirakl_wait`` is how long a call may wait for its slot."""
    marketplace = get_marketplace(marketplace_name)
    ledger = get_ledger()
    hook = MiraklHook(marketplace.mirakl_conn_id)
    budget = hook.get_budget(ledger, max_wait=mirakl_wait)
    listing = marketplace.order_listing
    budget.limits = marketplace_limits(listing.persona, listing.each_page_counts)
    return Wiring(marketplace, ledger, budget, hook)
