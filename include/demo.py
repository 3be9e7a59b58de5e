"""``make demo``: every flow once, end to end, against the local sandbox.

Starts the simulated Mirakl and WooCommerce on the ports the connections point at, seeds a
small shop, runs each flow with ``dag.test()`` (the same code the scheduler runs), moves
simulated time where the story needs it (the operator debiting orders, the warehouse
shipping, a billing cycle closing), and prints what happened in both systems. The ledger
starts afresh, since the sandbox does.

The shop has traded on the two days before: one order a day, shipped, as the integration left
it in both systems and the ledger. The story ends with a backfill of the reconciliation over
those two days and today, one run per day, so each report has lines and its chart three days.
The sinks for the alert e-mails and Slack messages listen where the ``smtp_alerts`` and
``slack_alerts`` connections point.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
MARKETPLACE = "sandbox"
EARLIER_DAYS = 2  # days of trading before today's story: with today, the three reconciled days


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

    def verification(self) -> None:
        """The verify report as the task logged it (at INFO, below the demo's log level), from the ledger."""
        from include.woo_mirakl.account import FLOW, Check, VerifyReport

        last = self.ledger.get_cursor(FLOW, MARKETPLACE, "last_verify", {})
        report = VerifyReport(MARKETPLACE, datetime.fromisoformat(last["checked_at"]), [Check(**c) for c in last["checks"]])
        print("\n".join(f"  {line}" for line in report.render().splitlines()))

    def reconcile(self, days: list[date]) -> None:
        """One reconciliation run per day, as a backfill makes them (a run dated D+1 02:30 reconciles D)."""
        from include.woo_mirakl.finance_reports import day_paths, read_summary

        for day in days:
            nightly = datetime.combine(day + timedelta(days=1), time(2, 30), tzinfo=timezone.utc)
            self.run("mirakl_payout_reconciliation", f"Reconcile {day}: commissions and payouts", logical_date=nightly)
            paths = day_paths(MARKETPLACE, day)
            summary = read_summary(paths.summary_csv)
            print(f"  {summary.get('transaction_lines', 0)} Mirakl transaction lines, {summary.get('orders', 0)} orders, "
                  f"sales {summary.get('sales', '0')} {summary.get('currency', '')}, "
                  f"paid out {summary.get('payout_paid', '0')}")
            print(f"  report: {paths.html}")

    def woo_orders(self) -> list[dict]:
        with self.sandbox.lock:
            orders = [o for o in self.sandbox.woo.orders() if o.get("payment_method") == "mirakl"]
        for o in orders:
            city = (o.get("shipping") or {}).get("city") or "-"
            print(f"  WooCommerce #{o['id']}: {o['status']:<11} ship to {city}")
        return orders


def trade_earlier_days(sandbox, ledger, days: list[date]) -> None:
    """One order a day on ``days``, as the integration left it: accepted, debited and shipped on
    Mirakl, a completed WooCommerce order built by the orders flow's own mapping, both in the ledger.
    Its products are its own, so today's story starts from the demo scenario's stock."""
    from include.sandbox.scenarios import catalogue, customer
    from include.woo_mirakl.clients.mirakl_models import Order
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.order_mapping import completion_update, reservation_order

    def move_to(moment: datetime) -> None:
        sandbox.clock.advance((moment - sandbox.clock.now()).total_seconds())

    marketplace = get_marketplace(MARKETPLACE)
    with sandbox.lock:
        move_to(datetime.combine(days[0], time(9), tzinfo=timezone.utc))
        skus = catalogue(sandbox, n_skus=2, seed=7, variable_share=0, missing_offer_share=0, orphan_offers=0,
                         stock_range=(40, 60), prefix="EARLIER")["skus"]
        for index, day in enumerate(days):
            move_to(datetime.combine(day, time(10), tzinfo=timezone.utc))
            placed = sandbox.mirakl.place_order(lines=[{"offer_sku": skus[index % len(skus)], "quantity": 1 + index}],
                                                customer=customer(index), debit_delay_s=86400)
            lines = [line["order_line_id"] for line in placed["order_lines"]]
            sandbox.mirakl.store.accept(sandbox.clock.now(), placed["order_id"],
                                        [{"id": line, "accepted": True} for line in lines])
            sandbox.mirakl.debit(placed["order_id"])
            order = Order.from_api(sandbox.mirakl.order(placed["order_id"]))
            woo = sandbox.woo.store.create_order(reservation_order(marketplace, order, set(lines)))
            sandbox.woo.store.update_order(woo, {**completion_update(order, None, None), "status": "completed"})
            sandbox.mirakl.store.ship(sandbox.clock.now(), order.order_id)
            ledger.upsert_order(MARKETPLACE, order.order_id, commercial_id=order.commercial_id, mirakl_state="SHIPPED",
                                decision="accepted", woo_order_id=woo["id"], woo_status="completed",
                                currency=order.currency_iso_code)
            ledger.set_order_lines(MARKETPLACE, order.order_id, [
                {"mirakl_order_line_id": line, "decision": "accepted", "mirakl_state": "SHIPPED"} for line in lines])
            print(f"  {day}: Mirakl {order.order_id} shipped, WooCommerce #{woo['id']} completed")
        move_to(datetime.now(timezone.utc))


def fresh_ledger_file(url: str) -> None:
    """The sandbox starts empty, so must a local SQLite ledger (other databases are left alone)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database:
        for leftover in Path(parsed.database).parent.glob(Path(parsed.database).name + "*"):
            leftover.unlink()


def main() -> int:
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from airflow.models import Connection, DagBag

    from include.sandbox.core import Sandbox
    from include.sandbox.scenarios import apply_scenario
    from include.sandbox.sinks import MailSink, SlackSink
    from include.woo_mirakl.finance_reports import reports_root
    from include.woo_mirakl.ledger import Ledger, ledger_url_from_connection

    # Outside a task the Task SDK cannot read Airflow's metadata DB, the models can.
    ledger_url = ledger_url_from_connection(Connection.get_connection_from_secrets("woo_mirakl_ledger"))
    fresh_ledger_file(ledger_url)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    # Local stand-ins where the alert connections (airflow_settings.yaml) point.
    webhook = urlsplit(Connection.get_connection_from_secrets("slack_alerts").password or "")
    mail = MailSink(port=Connection.get_connection_from_secrets("smtp_alerts").port or 8025)
    slack = SlackSink(token_path=webhook.path or "/services/local-demo", port=webhook.port or 8026)
    sandbox = Sandbox(seed=42).start(int(os.environ.get("SANDBOX_MIRAKL_PORT", 8081)),
                                     int(os.environ.get("SANDBOX_WOO_PORT", 8082)))
    try:
        print(f"sandbox: Mirakl {sandbox.mirakl_url}  WooCommerce {sandbox.woo_url}")
        ledger = Ledger.from_url(ledger_url)
        today = sandbox.clock.now().date()
        earlier = [today - timedelta(days=n) for n in range(EARLIER_DAYS, 0, -1)]
        print("earlier days of trading, as the integration left them:")
        trade_earlier_days(sandbox, ledger, earlier)
        world = apply_scenario(sandbox, "demo")
        print(f"seeded: {len(world['skus'])} SKUs, {len(world['orders'])} marketplace orders waiting for acceptance")
        demo = Demo(sandbox, ledger, bag.dags)

        demo.run("mirakl_account", "Verify the connections", conf={"action": "verify"})
        demo.verification()
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
        demo.run("mirakl_data_quality", "Data quality: drift and deadlines; one alert digest of every open exception")
        demo.run("mirakl_catalogue_publish", "Catalogue publishing (nothing selected for the sandbox)")
        # Today's run is early (the nightly one starts at 02:30 tomorrow), so that today shows too.
        print(f"\nBackfill of the reconciliation, {earlier[0]} to {today}, one run per day")
        demo.reconcile([*earlier, today])
        print(f"  reports of every day: {reports_root() / 'reconciliation' / MARKETPLACE}")

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
