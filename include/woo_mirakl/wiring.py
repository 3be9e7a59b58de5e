"""One marketplace's ledger, Mirakl call budget and clients, from its Airflow connections.

Every flow's tasks start here, so which connection a marketplace uses and how its call
ceilings are kept is decided in one place. Imported inside tasks only: it pulls in the
clients and SQLAlchemy, which DAG parsing must not pay for.

A disconnected marketplace (the account flow's disconnect, :func:`account.is_disconnected`) is
refused here too, so no flow writes to Mirakl or WooCommerce for it even when a run starts although
its DAGs were paused: a task of that marketplace's DAGs is skipped when it wires itself, before it
reads or records anything, and the clients handed out refuse every write, asked at each write (a
disconnect may land while a run is under way). The account flow, which writes the disconnect
itself, builds its clients from the hook and is not refused.
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


def refuse_if_disconnected(ledger: Ledger, marketplace: str, what: str) -> None:
    if is_disconnected(ledger, marketplace):
        message = (f"marketplace {marketplace!r} is disconnected: {what}, and this task does nothing more "
                   "(reconnect it with the mirakl_account flow to resume)")
        log.warning(message)
        raise MarketplaceDisconnected(message)


def disconnect_guard(ledger: Ledger, marketplace: str) -> Callable[[str], None]:
    """A client's ``write_guard``: refuses a write while the marketplace is (being) disconnected."""

    def guard(operation: str) -> None:
        if operation not in READ_REQUESTS:
            refuse_if_disconnected(ledger, marketplace, f"{operation} not sent")

    return guard


def _running_marketplace() -> str | None:
    """The marketplace of the DAG whose task is running (``<flow>__<marketplace>``), None outside a task."""
    try:
        from airflow.sdk import get_current_context

        dag_id = get_current_context()["dag"].dag_id
    except Exception:  # noqa: BLE001 - no task context (a script, a test calling a flow directly)
        return None
    return dag_id.split("__", 1)[1] if "__" in dag_id else None


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
    # A task of this marketplace's own DAGs; wiring another marketplace (to read its orders) goes on.
    if marketplace_name == _running_marketplace():
        refuse_if_disconnected(ledger, marketplace_name, "nothing read, nothing sent")
    hook = MiraklHook(marketplace.mirakl_conn_id)
    budget = hook.get_budget(ledger, max_wait=mirakl_wait)
    listing = marketplace.order_listing
    budget.limits = marketplace_limits(listing.persona, listing.each_page_counts)
    return Wiring(marketplace, ledger, budget, hook)
