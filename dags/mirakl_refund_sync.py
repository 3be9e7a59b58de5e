"""
### Refund sync — `mirakl_refund_sync__<marketplace>`

Every 5 minutes, one run at a time, per marketplace.

**sync_refunds** — WooCommerce refunds on this marketplace's orders since the last cycle
(`GET /refunds` on WooCommerce 9.0+, per order on older stores, with an overlap window), and those
an earlier cycle left pending. Each refund becomes **one OR28**: every refunded line item mapped
to its Mirakl order line with its quantity and amount, a shipping refund to the lines' shipping
amounts, the reason to a Mirakl reason code (`include/config/refund_reasons.yaml`, with a default).

Exactly once: the OR28 body is frozen and the intent recorded in the ledger, keyed by the
WooCommerce refund id, before the call; a re-run, a retry or a duplicate event finds it there.
When an outcome is unknown (a crash, a lost answer) the order's refunds on Mirakl are checked
(the ledger's copy, else one OR11) and OR28 is sent again only if it provably did not land.

A refund that cannot be sent whole — more than is left to refund, a line Mirakl does not have, a
line whose state forbids refunds — is a `refund_unsendable` exception and nothing of it is sent;
one Mirakl rejects is a `refund_refused` exception, one that keeps failing (a 404, a persistent
5xx) a `refund_failed` exception, retried every cycle while the others go on; a refused API key or
an unreachable API fails the task. The Mirakl refund ids are kept in the ledger
against the WooCommerce refund and written as a note on the WooCommerce order.

Logic: `include/woo_mirakl/refunds.py`.
"""
from __future__ import annotations

from airflow.sdk import task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags

FLOW = "mirakl_refund_sync"
OR11_WAIT = 65.0  # OR11 (checking an uncertain refund) is shared with the orders flow: wait for the slot


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    @task(pool="mirakl_api")
    def sync_refunds() -> dict[str, int]:
        from include.woo_mirakl.refunds import RefundSync
        from include.woo_mirakl.wiring import wire

        w = wire(name, mirakl_wait=OR11_WAIT)
        return RefundSync(w.marketplace, w.ledger, mirakl=w.mirakl(), woo=w.woo()).sync()

    sync_refunds()


globals().update(
    marketplace_dags(FLOW, build, schedule="*/5 * * * *", doc_md=__doc__, tags=["orders", "finance"],
                    description="WooCommerce refunds sent to Mirakl, one OR28 each, never twice")
)
