"""### Inventory and price push — `mirakl_inventory_push__<marketplace>`

Every minute (STO01 and PRI01 may be called once a minute), one run at a time.
WooCommerce is the truth; Mirakl offers follow it.

1. **follow_imports** — earlier stock (STO01) and price (PRI01) imports: status (STO02 / PRI02),
   error reports (STO03 / PRI03); what Mirakl accepted is recorded per SKU in the ledger,
   rejected SKUs are flagged and retried, SKUs Mirakl does not know become *unmatched SKU*
   exceptions.
2. **push_changes** — first a fresh OR11 listing of every marketplace of the store (shared with
   the order ingest: orders Mirakl has sold and the ingest has not read yet), then SKUs that may
   have changed (products and variations modified since the last cycle, SKUs on orders modified
   since then, marketplace demand that changed, SKUs to retry or held back),
   their *available to promise* (stock − demand of every marketplace not yet reserved in
   WooCommerce − safety buffer, never below 0) and marketplace price (price rule); a cycle without
   a fresh listing only lowers offers, never above what Mirakl holds; only the differences with what
   Mirakl accepted go out, in **one** stock file and **one** price file. Hourly — or when
   triggered with `{"full": true}` — a full comparison of every WooCommerce SKU with every
   Mirakl offer repairs drift and records unmatched SKUs in both directions. This flow alone
   owns them: one exception per SKU and marketplace (`unmatched_sku_missing_in_mirakl` or
   `unmatched_sku_missing_in_woocommerce`), resolved once the SKU exists on both sides; the data
   quality digest sends them and a catalogue offer created for the SKU clears it.

A run that comes too early (a manual trigger inside the minute) sends nothing and moves no
cursor: the next allowed run sends its changes. Open exceptions show on the operations page.
"""
from __future__ import annotations

from airflow.sdk import Param, task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags

FLOW = "mirakl_inventory_push"


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    @task(pool="mirakl_api")
    def follow_imports() -> dict:
        from include.woo_mirakl.inventory import for_marketplace

        return for_marketplace(name).follow_imports()

    @task(pool="mirakl_api")
    def push_changes(params: dict | None = None) -> dict:
        from include.woo_mirakl.inventory import for_marketplace

        return for_marketplace(name).push_changes(full=bool((params or {}).get("full")))

    follow_imports() >> push_changes()


globals().update(
    marketplace_dags(
        FLOW,
        build,
        schedule="* * * * *",
        doc_md=__doc__,
        tags=["stock"],
        description="WooCommerce stock and prices pushed to the Mirakl offers (STO01, PRI01 deltas)",
        params={"full": Param(False, type="boolean", description="Compare every SKU with every Mirakl offer now")},
    )
)
