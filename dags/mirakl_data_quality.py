"""
### Data quality — `mirakl_data_quality__<marketplace>`

Every 15 minutes, one run at a time, per marketplace:

1. **run_checks** — a snapshot of the ledger, the WooCommerce orders and catalogue and the
   Mirakl offers (OF21), checked by the Great Expectations suites in
   `include/config/expectations/`: status drift against the mapping table
   `include/config/status_map.yaml` (with its age), acceptance deadlines close, shipping
   deadlines passed, accepted orders without exactly one WooCommerce order, stock drift (offer
   vs. last accepted push vs. WooCommerce), actions stuck in *intent*. Findings become ledger
   exceptions: opened, seen again (count, last seen), resolved when they clear; a person may
   acknowledge them on the operations page. A SKU on one side only is not checked here: the
   inventory push owns it (one exception per SKU, resolved when the SKU appears), the digest sends it.
2. **send_digest** — one e-mail and one Slack message with every open exception that has not
   alerted yet (or not within the quiet period, Variable `woo_mirakl_alert_quiet_minutes`),
   critical ones first. Sending fails soft. Logic: `include/woo_mirakl/quality.py`, `digest.py`.
"""
from __future__ import annotations

from airflow.sdk import get_current_context, task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags

FLOW = "mirakl_data_quality"


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    # The digest right after carries its critical findings: no separate immediate alert for them.
    @task(pool="mirakl_api", on_success_callback=[])
    def run_checks() -> dict[str, int]:
        from include.woo_mirakl.quality import run_checks as check
        from include.woo_mirakl.wiring import wire

        w = wire(name)
        counts = check(w.marketplace, w.ledger, w.woo(), w.mirakl())
        w.ledger.record_sync_success(FLOW, name, get_current_context()["run_id"], counts)
        return counts

    # Alert even when the checks failed: exceptions raised by the other flows still need it.
    @task(pool="woocommerce_api", trigger_rule="all_done")
    def send_digest() -> dict[str, int]:
        from include.woo_mirakl.digest import send_digest as send
        from include.woo_mirakl.ledger import get_ledger

        context = get_current_context()
        return send(get_ledger(), name, run_id=context["run_id"], context=context)

    run_checks() >> send_digest()


globals().update(
    marketplace_dags(FLOW, build, schedule="*/15 * * * *", doc_md=__doc__, tags=["quality"],
                    description="Status and stock drift, deadlines, stuck actions checked; one alert digest (e-mail, Slack)")
)
