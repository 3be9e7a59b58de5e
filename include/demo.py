"""``make demo``: every flow once, end to end, against the local sandbox.

Starts the simulated Mirakl and WooCommerce on the ports the connections point at, seeds a
small shop, runs each flow with ``dag.test()`` (the same code the scheduler runs), moves
simulated time where the story needs it (the operator debiting orders, the warehouse
shipping, a billing cycle closing), and prints what happened in both systems. The ledger
starts afresh, since the sandbox does.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from datetime import datetime, time, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKETPLACE = "sandbox"


class Demo:
    """The story, one flow after another, with a few lines of output for each."""

    def __init__(self, sandbox, ledger, dags: dict):
        self.sandbox, self.ledger, self.dags = sandbox, ledger, dags

    def run(self, flow: str, title: str, conf: dict | None = None, logical_date: datetime | None = None) -> None:
        dag_id = f"{flow}__{MARKETPLACE}"
        print(f"\n▶ {title}  ({dag_id})", flush=True)
        kwargs = {"run_conf": conf}
        if logical_date is not None:
            kwargs["logical_date"] = logical_date
        state = str(getattr(self.dags[dag_id].test(**kwargs), "state", None))
        print(f"  run: {state.split('.')[-1].lower()}")
        if "success" not in state.lower():
            raise SystemExit(f"{dag_id} did not succeed ({state})")

    def pass_time(self, seconds: float) -> None:
        self.sandbox.clock.advance(seconds)
        self.ledger.shift_call_times(-seconds)

    def mirakl_orders(self, ids: list[str]) -> None:
        with self.sandbox.lock:
            orders = [self.sandbox.mirakl.order(i) for i in ids]
        for order in orders:
            lines = ", ".join(f"{l['offer_sku']}×{l['quantity']} {l['order_line_state']}" for l in order["order_lines"])
            print(f"  Mirakl {order['order_id']}: {order['order_state']:<22} {lines}")

    def woo_orders(self) -> list[dict]:
        with self.sandbox.lock:
            orders = [o for o in self.sandbox.woo.orders() if o.get("payment_method") == "mirakl"]
        for o in orders:
            city = (o.get("shipping") or {}).get("city") or "-"
            print(f"  WooCommerce #{o['id']}: {o['status']:<11} ship to {city}")
        return orders


def main() -> int:
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from airflow.models import DagBag

    from include.sandbox.core import Sandbox
    from include.sandbox.scenarios import apply_scenario
    from include.sandbox.sinks import MailSink, SlackSink
    from airflow.models import Connection

    from include.woo_mirakl.ledger import Ledger, ledger_url_from_connection

    for leftover in (ROOT / "var").glob("ledger.db*"):
        leftover.unlink()
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    # The alert connections in airflow_settings.yaml point at these two local stand-ins.
    mail, slack = MailSink(port=8025), SlackSink(token_path="/services/local-demo", port=8026)
    sandbox = Sandbox(seed=42).start(int(os.environ.get("SANDBOX_MIRAKL_PORT", 8081)),
                                     int(os.environ.get("SANDBOX_WOO_PORT", 8082)))
    try:
        print(f"sandbox: Mirakl {sandbox.mirakl_url}  WooCommerce {sandbox.woo_url}")
        world = apply_scenario(sandbox, "demo")
        print(f"seeded: {len(world['skus'])} SKUs, {len(world['orders'])} marketplace orders waiting for acceptance")
        # Outside a task the Task SDK cannot read Airflow's metadata DB, the models can.
        ledger = Ledger.from_url(ledger_url_from_connection(Connection.get_connection_from_secrets("woo_mirakl_ledger")))
        demo = Demo(sandbox, ledger, bag.dags)

        demo.run("mirakl_account", "Verify the connections", conf={"action": "verify"})
        demo.run("mirakl_order_ingest", "Accept or refuse new orders, reserve stock in WooCommerce")
        demo.mirakl_orders(world["orders"])
        demo.pass_time(180)  # the operator debits the customers
        demo.run("mirakl_order_ingest", "Debited orders: complete the WooCommerce orders")
        woo_orders = demo.woo_orders()

        with sandbox.lock:
            sandbox.woo.direct_sale(world["skus"][2], 1)
            sandbox.woo.set_stock(world["skus"][3], 7)
        demo.pass_time(60)
        demo.run("mirakl_inventory_push", "Push WooCommerce stock and prices to Mirakl offers")
        demo.pass_time(60)
        demo.run("mirakl_inventory_push", "Follow the stock import to the end")
        with sandbox.lock:
            for sku in world["skus"][:6]:
                offer, product = sandbox.mirakl.offer(sku), sandbox.woo.product_by_sku(sku)
                print(f"  {sku:<14} WooCommerce stock {product.get('stock_quantity')!s:>4}   "
                      f"Mirakl offer {offer['quantity'] if offer else '(none)'!s:>6}")

        processing = [o for o in woo_orders if o["status"] == "processing"]
        with sandbox.lock:
            sandbox.woo.settings["shipment_tracking_installed"] = True  # the demo shop has the extension
            carriers = [("DHL Express", "JD0001"), ("Mondial Relay", "MR0002"), (None, None)]
            for order, (carrier, number) in zip(processing, carriers):
                sandbox.woo.ship_order(order["id"], tracking_provider=carrier, tracking_number=number)
            if len(processing) > 1:  # one unit of a shipped order comes back damaged
                item = processing[1]["line_items"][0]
                sandbox.woo.refund_order(processing[1]["id"], reason="Damaged in transit",
                                         line_items=[{"sku": item["sku"], "quantity": 1}])
        demo.run("mirakl_shipment_confirm", "Shipped in WooCommerce: tracking (OR23) and shipment (OR24) to Mirakl")
        demo.run("mirakl_refund_sync", "Refunded in WooCommerce: one OR28 per refund")
        demo.mirakl_orders(world["orders"])

        with sandbox.lock:
            sandbox.mirakl.close_billing_cycle()
            today = sandbox.clock.now().date()
        demo.run("mirakl_data_quality", "Data quality: drift, deadlines, unmatched SKUs")
        demo.run("mirakl_catalogue_publish", "Catalogue publishing (nothing selected for the sandbox)")
        nightly = datetime.combine(today + timedelta(days=1), time(2, 30), tzinfo=timezone.utc)
        demo.run("mirakl_payout_reconciliation", f"Reconcile {today}: commissions and payouts", logical_date=nightly)
        reports = ROOT / "reports" / "reconciliation" / MARKETPLACE / today.isoformat()
        if reports.exists():
            print(f"  reports: {reports}")
            summary = reports / "summary.csv"
            if summary.exists():
                for line in summary.read_text(encoding="utf-8").splitlines()[1:8]:
                    print(f"    {line}")

        print("\nSummary")
        calls = Counter(e["operation"] for e in sandbox.log.entries())
        print("  API calls: " + ", ".join(f"{op} {n}" for op, n in sorted(calls.items())))
        open_exceptions = demo.ledger.open_exceptions(marketplace=MARKETPLACE)
        print(f"  open exceptions: {len(open_exceptions)}")
        for exc in open_exceptions[:15]:
            print(f"    - {exc.kind}: {exc.key}")
        print(f"  alerts: {len(mail.messages)} e-mail(s) to the local SMTP server, "
              f"{len(slack.payloads)} Slack message(s) to the local webhook")
        for message in mail.messages[:5]:
            print(f"    - e-mail: {message['subject']}")
    finally:
        sandbox.stop()
        mail.stop()
        slack.stop()
        print("sandbox stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
