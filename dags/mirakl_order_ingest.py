"""
### Mirakl order ingest and acceptance

Every minute (OR11's published maximum), one run at a time, per marketplace:

1. **fetch_changes** — OR11: orders changed since the last run (with an overlap window) into the
   ledger. When the OR11 call budget is used up the run skips politely and resumes next minute.
2. **decide_and_reserve** — `WAITING_ACCEPTANCE` orders: SKU and stock look-up in WooCommerce,
   accept or refuse each line by the marketplace's `order_policy`, then an `on-hold` WooCommerce
   order with the accepted lines so the stock is reserved at once. A batch larger than WooCommerce
   takes at once is reserved in waves, each wave's OR21 sent while the next is reserved.
3. **send_decisions** — OR21 with every line's decision not sent yet (once per order), then the deadline guard:
   orders still undecided past the configured shares of their acceptance window raise exceptions.
4. **sync_woocommerce_orders** — `SHIPPING`: addresses, customer message and `processing` on the
   WooCommerce order; `CANCELED` / `REFUSED`: the WooCommerce order is cancelled, stock returns.

Orders with a bad payload (missing SKU, bad quantity, unknown currency, malformed address) become
exceptions in the ledger and are left for a person; the rest of the batch goes on. Every mutating
call is recorded in the ledger before and after it, so a retried run never creates a second
WooCommerce order nor sends a different OR21. Logic: `include/woo_mirakl/orders.py`.
"""
from __future__ import annotations

from airflow.sdk import task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags

FLOW = "mirakl_order_ingest"


def _flow(marketplace_name: str, mirakl: bool = False, woo: bool = False, mirakl_wait: float = 0.0):
    """The plain-Python flow with the clients it needs (imported here: parsing stays light)."""
    from include.woo_mirakl.orders import OrderIngest
    from include.woo_mirakl.wiring import wire

    w = wire(marketplace_name, mirakl_wait=mirakl_wait)
    return OrderIngest(w.marketplace, w.ledger, mirakl=w.mirakl() if mirakl else None, woo=w.woo() if woo else None)


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    @task(pool="mirakl_api")
    def fetch_changes() -> dict[str, int]:
        from include.woo_mirakl.orders import OR11_SLOT_WAIT

        return _flow(name, mirakl=True, mirakl_wait=OR11_SLOT_WAIT).fetch_changes()

    @task(pool="woocommerce_api")
    def decide_and_reserve() -> dict[str, int]:
        # with Mirakl too: a large batch's orders are answered wave by wave as they are reserved
        return _flow(name, mirakl=True, woo=True).decide_and_reserve()

    @task(pool="mirakl_api")
    def send_decisions() -> dict[str, dict[str, int]]:
        flow = _flow(name, mirakl=True)
        return {"or21": flow.send_decisions(), "deadlines": flow.guard_deadlines()}

    @task(pool="woocommerce_api")
    def sync_woocommerce_orders() -> dict[str, dict[str, int]]:
        flow = _flow(name, mirakl=True, woo=True)
        return {"shipping": flow.complete_shipping(), "cancelled": flow.release_cancelled()}

    fetched = fetch_changes()
    fetched >> decide_and_reserve() >> send_decisions()
    fetched >> sync_woocommerce_orders()


globals().update(
    marketplace_dags(FLOW, build, schedule="* * * * *", doc_md=__doc__, tags=["orders"],
                    description="New Mirakl orders accepted or refused line by line; stock reserved in WooCommerce")
)
