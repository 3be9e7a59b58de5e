"""
### Shipment confirmation — `mirakl_shipment_confirm__<marketplace>`

Every 5 minutes, one run at a time, per marketplace:

1. **confirm_shipments** — WooCommerce orders of this marketplace modified since the last cycle
   (with an overlap window), and those an earlier cycle left waiting:
   * shipped (`completed`, or tracking added): **OR23** with the tracking when there is a tracking
     number — the Mirakl carrier code mapped from the WooCommerce carrier name
     (`include/config/carriers.yaml`, case- and spacing-insensitive, checked against Mirakl's
     carrier list SH21, cached a day in the ledger); an unmapped carrier is sent as carrier name
     and tracking URL and raises a `carrier_unmapped` exception naming it — then **OR24**, even
     without tracking;
   * cancelled in WooCommerce before shipping: **OR29** when Mirakl allows it (`can_cancel`),
     otherwise a `mirakl_cancel_refused` exception.
   Each call is sent once per order (ledger actions); after a crash or a lost answer the flow first
   looks at what Mirakl shows (the ledger's copy of the order, else one OR11) and resends nothing
   Mirakl already has. A tracking number corrected in WooCommerce, before or after OR24, is sent
   again (OR23 overwrites). One order that keeps failing (a 404, a 403, a persistent 5xx) is a
   `shipment_failed` / `tracking_failed` exception and the others go on; a refused API key or an
   unreachable API fails the task.
2. **flag_overdue** — accepted orders past Mirakl's shipping deadline and not shipped become
   `shipment_overdue` exceptions; they resolve once shipped.

Logic: `include/woo_mirakl/shipments.py`.
"""
from __future__ import annotations

from airflow.sdk import task

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags

FLOW = "mirakl_shipment_confirm"
OR11_WAIT = 65.0  # OR11 is shared with the orders flow (once a minute): wait for the slot rather than skip


def _flow(marketplace_name: str, mirakl: bool = False, woo: bool = False):
    """The plain-Python flow with the clients it needs (imported here: parsing stays light)."""
    from include.woo_mirakl.shipments import ShipmentConfirm
    from include.woo_mirakl.wiring import wire

    w = wire(marketplace_name, mirakl_wait=OR11_WAIT)
    return ShipmentConfirm(w.marketplace, w.ledger, mirakl=w.mirakl() if mirakl else None,
                           woo=w.woo() if woo else None)


def build(marketplace: Marketplace) -> None:
    name = marketplace.name

    @task(pool="mirakl_api")
    def confirm_shipments() -> dict[str, int]:
        return _flow(name, mirakl=True, woo=True).confirm_shipments()

    # Judged from the ledger alone, so independent of the sending step (and both show in the run state).
    @task(pool="mirakl_api")
    def flag_overdue() -> dict[str, int]:
        return _flow(name).flag_overdue()

    confirm_shipments()
    flag_overdue()


globals().update(
    marketplace_dags(FLOW, build, schedule="*/5 * * * *", doc_md=__doc__, tags=["shipping"],
                    description="Shipped WooCommerce orders confirmed on Mirakl with their tracking (OR23, OR24)")
)
