"""
### Mirakl orders decided by a person (required actions)

Every minute, per marketplace: the orders the order ingest flagged as needing a person
(`accept_orders: false`, or a `human_review` rule: price under the WooCommerce price by more than a
share, a short line whose product allows backorders, an order above a total) each get a
**required action** (*Browse → Required Actions*, or the run's task): the order's lines with SKU,
quantity, price and WooCommerce stock, and a choice per line.

1. **claim** — takes the newly flagged orders (each order goes to exactly one run).
2. **decide** — one required action per order, due before Mirakl's acceptance deadline (minus
   `human_review.decide_before_minutes`). Without an answer by then, the marketplace's
   `timeout_default` applies (refuse, accept, or leave it to Mirakl).

The decision is recorded in the ledger with who made it; the next order ingest run reserves the
accepted lines in WooCommerce and sends OR21 once. Runs stay open while they wait for people, so
this flow (unlike the others) allows several runs at a time. Logic: `include/woo_mirakl/human_review.py`.
"""
from __future__ import annotations

from airflow.sdk import task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags
from include.woo_mirakl.review_operator import OrderReviewOperator

FLOW = "mirakl_order_review"
MAX_OPEN_RUNS = 32  # runs waiting for people; each holds the orders it claimed


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    @task
    def claim(run_id: str | None = None) -> list[str]:
        from include.woo_mirakl.human_review import claim_reviews
        from include.woo_mirakl.ledger import get_ledger

        return claim_reviews(get_ledger(), marketplace, run_id or "manual")

    OrderReviewOperator.partial(
        task_id="decide", marketplace=name, timeout_default=marketplace.human_review.timeout_default,
        map_index_template="{{ task.order_id }}",
    ).expand(order_id=claim())


globals().update(
    marketplace_dags(FLOW, build, schedule="* * * * *", doc_md=__doc__, tags=["orders", "human-review"],
                     max_active_runs=MAX_OPEN_RUNS,
                     description="Orders flagged for a person: one required action each, before Mirakl's deadline")
)
