"""### Catalogue publishing — `mirakl_catalogue_publish__<marketplace>`

Every five minutes (Mirakl's recommended pace for OF24; its ceiling is once a minute), one run
at a time. WooCommerce is the master of the catalogue; the marketplace's offers follow it.

1. **follow_imports** — earlier offer imports (OF24 → status OF02, error report OF03) and product
   imports (P41 → status P42, error report P44, integration report P45): per SKU, what Mirakl
   accepted is kept in the ledger as the offer it holds; refusals become exceptions with the
   operator's reason. An offer refused because the operator lacks its product goes to the
   product import (when enabled); a product the operator integrated becomes an offer.
2. **publish** — the products selected in `marketplaces.yaml` (`catalogue.select`: categories,
   tags, SKUs; nothing by default), as simple products and variations with their own SKU:
   offers to create (with their available-to-promise quantity), offers whose price, description
   or other field changed (always sent complete: OF24 resets what it is not sent), and offers to
   retire (deselected, deleted or not published: deleted, or kept at zero stock, per
   `catalogue.retire`) go out in **one** OF24 call; unknown products in one P41 file.
   Stock stays with `mirakl_inventory_push` (STO01).

Trigger with `{"dry_run": true}` to see what would be created, updated and retired, without
sending anything. A run inside the minute after the previous OF24 sends nothing: the next one does.
Products without a SKU, a product reference or a price are exceptions on the operations page.
"""
from __future__ import annotations

from airflow.sdk import Param, task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags

FLOW = "mirakl_catalogue_publish"


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    @task(pool="mirakl_api")
    def follow_imports(params: dict | None = None) -> dict:
        if (params or {}).get("dry_run"):
            return {"dry_run": True}
        from include.woo_mirakl.catalogue import for_marketplace

        return for_marketplace(name).follow_imports()

    @task(pool="mirakl_api")
    def publish(params: dict | None = None) -> dict:
        from include.woo_mirakl.catalogue import for_marketplace

        return for_marketplace(name).publish(dry_run=bool((params or {}).get("dry_run")))

    follow_imports() >> publish()


globals().update(
    marketplace_dags(
        FLOW,
        build,
        schedule="*/5 * * * *",
        doc_md=__doc__,
        tags=["catalogue", "stock"],
        description="Selected WooCommerce products published as complete Mirakl offers (OF24, P41)",
        params={"dry_run": Param(False, type="boolean",
                                 description="List what would be created, updated and retired; send nothing")},
    )
)
