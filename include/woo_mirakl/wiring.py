"""One marketplace's ledger, Mirakl call budget and clients, from its Airflow connections.

Every flow's tasks start here, so which connection a marketplace uses and how its call
ceilings are kept is decided in one place. Imported inside tasks only: it pulls in the
clients and SQLAlchemy, which DAG parsing must not pay for.

A disconnected marketplace (the account flow's disconnect, :func:`account.is_disconnected`) is
refused here too: the clients handed out refuse every write, asked at each write (a disconnect may
land while a run is under way), so no flow writes to Mirakl or WooCommerce for it even when a run
starts although its DAGs were paused. The account flow, which writes the disconnect itself, builds
its clients from the hook and is not refused.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

from airflow.sdk.exceptions import AirflowSkipException

from include.woo_mirakl.account import is_disconnected

from include.woo_mirakl.budgets import LedgerCallBudget, marketplace_limits
from include.woo_mirakl.clients.http import RetryPolicy, WriteRefused
from include.woo_mirakl.clients.mirakl import MiraklClient
from include.woo_mirakl.clients.woocommerce import WooCommerceClient
from include.woo_mirakl.config import Marketplace, get_marketplace
from include.woo_mirakl.hooks import MiraklHook, WooCommerceHook
from include.woo_mirakl.ledger import Ledger, get_ledger

log = logging.getLogger(__name__)

# POSTs that only ask Mirakl for an export (TL03, OF52): reads, allowed while disconnected.
READ_REQUESTS = frozenset({"OF52", "TL03"})


class MarketplaceDisconnected(WriteRefused, AirflowSkipException):
    """A write refused because the marketplace is disconnected: the task ends as skipped, nothing sent.

    Not a ClientError, so no flow mistakes it for one record's failure and goes on with the next.
    """


def disconnect_guard(ledger: Ledger, marketplace: str) -> Callable[[str], None]:
    """A client's ``write_guard``: refuses a write while the marketplace is (being) disconnected."""

    def guard(operation: str) -> None:
        if operation in READ_REQUESTS or not is_disconnected(ledger, marketplace):
            return
        message = (f"marketplace {marketplace!r} is disconnected: {operation} not sent, and this task does "
                   "nothing more (reconnect it with the mirakl_account flow to resume)")
        log.warning(message)
        raise MarketplaceDisconnected(message)

    return guard


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
        client.write_guard = disconnect_guard(self.ledger, self.marketplace.name)
        return client

    def woo(self, retry: RetryPolicy | None = None) -> WooCommerceClient:
        client = WooCommerceHook(self.marketplace.woocommerce_conn_id).get_client(retry=retry)
        client.write_guard = disconnect_guard(self.ledger, self.marketplace.name)
        return client


def wire(marketplace_name: str, *, mirakl_wait: float = 0.0) -> Wiring:
    """Wire a configured marketplace; ``mirakl_wait`` is how long a call may wait for its slot."""
    marketplace = get_marketplace(marketplace_name)
    ledger = get_ledger()
    hook = MiraklHook(marketplace.mirakl_conn_id)
    budget = hook.get_budget(ledger, max_wait=mirakl_wait)
    listing = marketplace.order_listing
    budget.limits = marketplace_limits(listing.persona, listing.each_page_counts)
    return Wiring(marketplace, ledger, budget, hook)
