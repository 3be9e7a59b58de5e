"""``make demo``: every flow once, end to end, against the local sandbox.

Starts the simulated Mirakl and WooCommerce on the ports the connections point at, seeds a
small shop, runs each flow that exists with ``dag.test()`` (the same code the scheduler
runs), moves simulated time where the story needs it (the operator debiting orders), and
prints what happened in both systems. The ledger is started afresh, since the sandbox is.
"""
from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARKETPLACE = "sandbox"


def _dags() -> dict:
    from airflow.models import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    if bag.import_errors:
        raise SystemExit(f"DAG import errors: {bag.import_errors}")
    return bag.dags


def _run(dags: dict, flow: str, title: str) -> bool:
    dag_id = f"{flow}__{MARKETPLACE}"
    if dag_id not in dags:
        return False
    print(f"\n▶ {title}  ({dag_id})", flush=True)
    run = dags[dag_id].test()
    state = getattr(run, "state", None)
    print(f"  run finished: {state}")
    if str(state) not in ("success", "DagRunState.SUCCESS"):
        raise SystemExit(f"{dag_id} did not succeed ({state})")
    return True


def _pass_time(sandbox, ledger, seconds: float) -> None:
    sandbox.clock.advance(seconds)
    ledger.shift_call_times(-seconds)


def main() -> int:
    os.environ.setdefault("AIRFLOW__LOGGING__LOGGING_LEVEL", "WARNING")
    from include.sandbox.core import Sandbox
    from include.sandbox.scenarios import apply_scenario
    from include.woo_mirakl.ledger import get_ledger

    ledger_file = ROOT / "var" / "ledger.db"
    for leftover in ledger_file.parent.glob("ledger.db*"):
        leftover.unlink()
    sandbox = Sandbox(seed=42).start(int(os.environ.get("SANDBOX_MIRAKL_PORT", 8081)),
                                     int(os.environ.get("SANDBOX_WOO_PORT", 8082)))
    try:
        print(f"sandbox: Mirakl {sandbox.mirakl_url}  WooCommerce {sandbox.woo_url}")
        world = apply_scenario(sandbox, "demo")
        print(f"seeded: {len(world['skus'])} SKUs, {len(world['orders'])} marketplace orders waiting for acceptance")
        ledger = get_ledger()
        dags = _dags()

        if _run(dags, "mirakl_order_ingest", "Accept or refuse new orders, reserve stock in WooCommerce"):
            with sandbox.lock:
                orders = [sandbox.mirakl.order(i) for i in world["orders"]]
            for order in orders:
                lines = ", ".join(f"{l['offer_sku']}×{l['quantity']} {l['order_line_state']}" for l in order["order_lines"])
                print(f"  {order['order_id']}: {order['order_state']:<22} {lines}")
            _pass_time(sandbox, ledger, 180)  # the operator debits the customers
            _run(dags, "mirakl_order_ingest", "Debited orders: complete the WooCommerce orders")
            with sandbox.lock:
                woo_orders = [o for o in sandbox.woo.orders() if o.get("payment_method") == "mirakl"]
            for o in woo_orders:
                city = (o.get("shipping") or {}).get("city") or "-"
                print(f"  WooCommerce order #{o['id']}: {o['status']:<11} ship to {city}")

        with sandbox.lock:
            sold = world["skus"][2]
            sandbox.woo.direct_sale(sold, 1)
            sandbox.woo.set_stock(world["skus"][3], 7)
        _pass_time(sandbox, ledger, 60)
        if _run(dags, "mirakl_inventory_push", "Push WooCommerce stock and prices to Mirakl offers"):
            with sandbox.lock:
                for sku in world["skus"][:6]:
                    offer = sandbox.mirakl.offer(sku)
                    product = sandbox.woo.product_by_sku(sku)
                    print(f"  {sku:<14} WooCommerce stock {product.get('stock_quantity')!s:>4}  "
                          f"Mirakl offer {offer['quantity'] if offer else '(none)'!s:>6}")

        for flow in sorted({d.split('__')[0] for d in dags} - {"mirakl_order_ingest", "mirakl_inventory_push"}):
            if flow != "mirakl_account":
                _run(dags, flow, flow.replace("_", " "))

        print("\nSummary")
        calls = Counter(e["operation"] for e in sandbox.log.entries())
        print("  API calls: " + ", ".join(f"{op} {n}" for op, n in sorted(calls.items())))
        open_exceptions = ledger.open_exceptions(marketplace=MARKETPLACE)
        by_kind = Counter(getattr(e, "kind", None) or e["kind"] for e in open_exceptions)
        print("  open exceptions: " + (", ".join(f"{k} {n}" for k, n in sorted(by_kind.items())) or "none"))
        for exc in open_exceptions[:10]:
            kind = getattr(exc, "kind", None) or exc["kind"]
            key = getattr(exc, "key", None) or exc["key"]
            print(f"    - {kind}: {key}")
    finally:
        sandbox.stop()
        print("sandbox stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
