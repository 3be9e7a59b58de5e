"""Benchmark of the payout reconciliation on days of a million lines and more. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/reconcile.py [--lines 1000000] [--big-lines 5000000] [--sample 20000]
        [--latency-scale 1.0] [--skip-e2e] [--skip-big]

Three passes, each in its own process so each peak memory (RSS) is its own:

* **end to end** — the sandbox (a child process, real-store latency profile, running clock) holds
  a day of ``--lines`` transaction lines (four per one-line order, all orders created that day);
  the flow's own functions read it through the export (TL03, TL04 every 10 s, TL05 chunks of
  100,000), stage it, read the orders' history, validate it with the expectation suite, reconcile
  it and write the reports. The WooCommerce side is staged directly (the orders the store would
  return), because reading 250,000 WooCommerce orders is the WooCommerce extract's cost, not this
  one's: its floor is printed. Mirakl's ceilings are checked from the sandbox's call log.
* **compute** — :func:`reconcile` alone on the same volume, synthetic frames, and a per-row Python
  loop on a sample as the in-process baseline.
* **big** — the compute pass on ``--big-lines``.

Times are printed as wall and CPU time; the compute targets are on CPU time, which the load of a
shared machine hardly moves (the wall time moved several-fold from run to run on two busy cores).

Floors: the export's floor is what the latency profile charges for the calls it needs (one TL03,
TL04 every 10 s while Mirakl prepares the file, one TL05 per chunk at 0.05 s a MB) plus the time the
sandbox takes to prepare it (``export_delay_s``, an assumption: Mirakl publishes none). TL02 alone
would need one call per 2,000 lines at 60 an hour.
"""
from __future__ import annotations

import argparse
import gc
import multiprocessing as mp
import sys
import tempfile
import time
from collections import defaultdict
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402
    Target, ceiling_breaches, figure, header, peak_rss_mb, print_targets, reset_peak_rss, window_peak_rss_mb,
)

DAY = date(2026, 3, 10)
SALE_TYPES = ("ORDER_AMOUNT", "ORDER_SHIPPING_AMOUNT", "COMMISSION_FEE", "COMMISSION_VAT")
EXPORT_DELAY_S = 20.0  # how long the sandbox takes to prepare the export (assumed)
CHUNK = 100_000


# ---- synthetic frames (compute pass) ----------------------------------------------------------------
def synthetic(orders: int, seed: int = 7) -> Any:
    """``orders`` one-line orders with 4 sale lines each; 0.5 % unknown to WooCommerce, 0.5 % overcharged."""
    import numpy as np
    import pandas as pd

    from include.woo_mirakl.reconciliation import Inputs, documents_frame, normalise_transactions, woo_refunds_frame

    rng = np.random.default_rng(seed)
    order_ids = pd.Series([f"SBX{i:08d}-A" for i in range(orders)], dtype="string")
    line_ids = order_ids + "-1"
    # integer cents, as the flow holds them
    price = rng.integers(500, 30000, orders)
    shipping = rng.choice(np.array([0, 499, 999]), orders)
    rate = np.where(rng.random(orders) < 0.005, 12, 10)
    fee = ((price + shipping) * rate + 50) // 100
    vat = (fee * 20 + 50) // 100
    n = orders * len(SALE_TYPES)
    lines = pd.DataFrame({
        "transaction_id": pd.Series(np.arange(n).astype(str), dtype="string"),
        "type": pd.Series(np.tile(np.array(SALE_TYPES), orders), dtype="string"),
        "amount_cents": np.column_stack([price, shipping, -fee, -vat]).ravel(),
        "amount_error": pd.Series([None] * n, dtype=object),
        "currency": "EUR",
        "billing_cycle_id": "c" * 36,
        "document_number": pd.Series([None] * n, dtype="string"),
        "date_created": pd.Timestamp("2026-03-10T10:00:00Z"),
        "order_id": np.repeat(order_ids.to_numpy(), len(SALE_TYPES)),
        "order_line_id": np.repeat(line_ids.to_numpy(), len(SALE_TYPES)),
    })
    lines = normalise_transactions(lines)
    known = rng.random(orders) >= 0.005
    woo_ids = pd.array(np.arange(1, orders + 1), dtype="Int64")
    woo_lines = pd.DataFrame({
        "woo_order_id": woo_ids, "woo_line_id": woo_ids, "mirakl_order_id": order_ids, "order_line_id": line_ids,
        "status": pd.Series(["processing"] * orders, dtype="string"),
        "date_created": pd.Timestamp("2026-03-10T09:00:00Z"), "date_completed": pd.NaT,
        "line_total": pd.array(price, dtype="Int64"), "order_total": pd.array(price + shipping, dtype="Int64"),
        "commission_as_of": pd.Series([None] * orders, dtype="string"),
    })[known].reset_index(drop=True)
    woo_lines["date_completed"] = pd.to_datetime(woo_lines["date_completed"], utc=True)
    empty = normalise_transactions(pd.DataFrame())
    return Inputs(day_lines=lines, history_lines=lines, cycle_lines=empty, documents=documents_frame([]),
                  woo_lines=woo_lines, woo_refunds=woo_refunds_frame([]),
                  ledger_orders=pd.DataFrame({"mirakl_order_id": pd.Series([], dtype="string"),
                                              "woo_order_id": pd.Series([], dtype="Int64")}))


def loop_reconcile(records: list[dict], woo_orders: set[str], commission_rate: float, tolerance: float) -> list:
    """The same line-level join and the two order findings, one Python iteration per row."""
    from include.woo_mirakl.reconciliation import AMOUNT_COLUMNS, BUCKETS

    buckets: dict = defaultdict(lambda: dict.fromkeys(AMOUNT_COLUMNS, 0))
    for row in records:
        buckets[(row["order_id"], row["order_line_id"])][BUCKETS.get(row["type"], "other_fees")] += row["amount_cents"]
    findings, paid = [], defaultdict(float)
    for (order_id, line_id), amounts in buckets.items():
        base = amounts["order_amount"] + amounts["shipping_amount"] + amounts["refund_amount"] + \
            amounts["refund_shipping_amount"]
        charged = -(amounts["commission"] + amounts["refunded_commission"])
        if abs(charged - round(base * commission_rate)) > tolerance:
            findings.append(("commission_off_rate", order_id, line_id))
        if amounts["order_amount"] > 0:
            paid[order_id] += amounts["order_amount"] + amounts["shipping_amount"]
    findings += [("order_missing_in_woocommerce", o) for o in paid if o not in woo_orders]
    return findings


def compute_pass(lines: int, sample: int) -> dict[str, float]:
    from include.woo_mirakl.reconciliation import Day, Inputs, Rules, reconcile

    rules = Rules(commission_rate="0.10", commission_tolerance="0.01", grace_days=3)
    inputs = synthetic(lines // len(SALE_TYPES))
    gc.collect()
    before = peak_rss_mb()
    started, cpu = time.perf_counter(), time.process_time()
    result = reconcile(inputs, rules, Day(DAY))
    compute, cpu = time.perf_counter() - started, time.process_time() - cpu
    out = {"compute_s": compute, "cpu_s": cpu, "peak_mb": peak_rss_mb(), "before_mb": before,
           "findings": len(result.findings),
           "rows": len(inputs.day_lines)}
    if sample:
        head = inputs.day_lines.head(sample)
        records = head.to_dict("records")
        woo = set(inputs.woo_lines["mirakl_order_id"].astype(str))
        started = time.perf_counter()
        loop = loop_reconcile(records, woo, 0.10, 1)  # cents
        out["loop_per_row_us"] = (time.perf_counter() - started) / len(records) * 1e6
        check = reconcile(Inputs(**{**inputs.__dict__, "day_lines": head, "history_lines": head}), rules, Day(DAY))
        assert len(loop) == len(check.findings), "the loop and the vectorised join disagree"
    return out


# ---- the sandbox with a big day (end-to-end pass) --------------------------------------------------
def _sandbox_main(conn: Any, lines: int, latency_scale: float) -> None:
    from include.sandbox.core import Clock, Sandbox, iso
    from include.sandbox.latency import LatencyProfile

    start = datetime.combine(DAY, datetime.min.time(), tzinfo=timezone.utc)
    sandbox = Sandbox(seed=3, clock=Clock(start=start + timedelta(days=1, hours=2, minutes=30)),
                      latency=LatencyProfile.real_store(scale=latency_scale))
    store = sandbox.mirakl.store
    store.settings.export_delay_s = EXPORT_DELAY_S
    orders = lines // len(SALE_TYPES)
    cycle = store.cycle_id
    balance = 0.0
    for i in range(orders):
        stamp = iso(start + timedelta(seconds=10 + i * 86000 / orders))
        order_id = f"SBX{i:08d}-A"
        price = round(5 + (i * 37 % 29500) / 100, 2)
        fee = round((price + 4.99) * (0.12 if i % 200 == 0 else 0.10), 2)
        entities = {"domain": "PRODUCT", "order": {"commercial_id": order_id[:-2], "creation_date": stamp,
                                                   "id": order_id}, "order_line": {"id": f"{order_id}-1"}}
        for kind, amount in zip(SALE_TYPES, (price, 4.99, -fee, round(-fee * 0.2, 2))):
            balance = round(balance + amount, 2)
            store.transactions.append({
                "seq": len(store.transactions) + 1, "amount": amount, "amount_credited": max(amount, 0.0),
                "amount_debited": max(-amount, 0.0), "balance": balance, "currency_iso_code": "EUR",
                "date_created": stamp, "entities": entities, "id": f"t-{len(store.transactions)}",
                "last_updated": stamp, "pay_out_psp_code": "NOT_SPECIFIED", "payment_state": "PAYABLE",
                "psp_balance": balance, "seller_billing_cycle_id": cycle, "transaction_date": stamp, "type": kind,
            })
    store.counters["transaction"] = len(store.transactions)
    sandbox.start()
    conn.send({"mirakl_url": sandbox.mirakl_url, "api_key": sandbox.mirakl.api_key, "shop_id": sandbox.mirakl.shop_id,
               "orders": orders})
    while True:
        name = conn.recv()
        if name == "stop":
            sandbox.stop()
            conn.send(None)
            return
        if name == "now":
            conn.send(sandbox.clock.now().timestamp())
        elif name == "log":
            conn.send(sandbox.log.entries("mirakl"))


def woo_orders(orders: int) -> list[dict]:
    """What the WooCommerce extract would have staged: one order per Mirakl order but 0.5 %."""
    out = []
    for i in range(orders):
        if i % 200 == 7:
            continue
        order_id = f"SBX{i:08d}-A"
        price = round(5 + (i * 37 % 29500) / 100, 2)
        out.append({"id": i + 1, "status": "processing", "date_created_gmt": f"{DAY}T09:00:00",
                    "date_completed_gmt": None, "total": f"{price + 4.99:.2f}",
                    "meta_data": [{"key": "_mirakl_order_id", "value": order_id},
                                  {"key": "_mirakl_marketplace", "value": "bench"}],
                    "line_items": [{"id": i + 1, "total": f"{price:.2f}", "meta_data": [
                        {"key": "_mirakl_order_line_id", "value": f"{order_id}-1"}]}]})
    return out


def e2e_pass(lines: int, latency_scale: float, conn_out: Any) -> None:
    """Child of the bench: the flow's functions against the sandbox child; sends its figures back."""
    from include.woo_mirakl.budgets import LedgerCallBudget
    from include.woo_mirakl.clients.http import RetryPolicy
    from include.woo_mirakl.clients.mirakl import MiraklClient
    from include.woo_mirakl.finance_reports import write_reports
    from include.woo_mirakl.ledger import Ledger
    from include.woo_mirakl.reconciliation import (
        CURSOR_FLOW, Day, Rules, Stage, extract_mirakl_day, extract_mirakl_history, reconcile, validate_transactions,
        woo_lines_frame,
    )

    conn, child = mp.Pipe()
    sandbox = mp.get_context("fork").Process(target=_sandbox_main, args=(child, lines, latency_scale), daemon=True)
    built = time.perf_counter()
    sandbox.start()
    info = conn.recv()
    built = time.perf_counter() - built
    work = Path(tempfile.mkdtemp(prefix="bench-reconcile-"))
    ledger = Ledger.from_url(f"sqlite:///{work}/ledger.db")
    ledger.set_cursor(CURSOR_FLOW, "bench", "day_lines_last", lines)  # yesterday was as big
    sandbox_now = lambda: datetime.fromtimestamp((conn.send("now"), conn.recv())[1], timezone.utc)  # noqa: E731
    budget = LedgerCallBudget(ledger, "bench", clock=sandbox_now, max_wait=65.0)
    mirakl = MiraklClient(info["mirakl_url"], info["api_key"], shop_id=info["shop_id"], budget=budget,
                          retry=RetryPolicy(timeout=300.0))
    day, stage = Day(DAY), Stage(work / "stage")
    rules = Rules(commission_rate="0.10", commission_tolerance="0.01", grace_days=3)
    timings: dict[str, float] = {}
    cpus: dict[str, float] = {}  # CPU time: what the shared machine's load hardly moves
    peaks: dict[str, float] = {}  # each step's own peak RSS (the window is reset before it)

    def timed(name: str, step: Any) -> Any:
        gc.collect()
        reset_peak_rss()
        started, cpu = time.perf_counter(), time.process_time()
        value = step()
        timings[name], cpus[name] = time.perf_counter() - started, time.process_time() - cpu
        peaks[name] = window_peak_rss_mb()
        return value

    timed("export (TL03, TL04, TL05) and staging", lambda: extract_mirakl_day(mirakl, ledger, "bench", day, stage))
    # as extract_woocommerce stages them (reading them is the WooCommerce extract's cost, not this one's)
    timed("(bench) staging the WooCommerce orders",
          lambda: stage.save_lines("woo_lines", woo_lines_frame(woo_orders(info["orders"]), "bench")))
    stage.save("woo_refunds", [])
    stage.save("ledger", [])
    history = timed("orders' history", lambda: extract_mirakl_history(mirakl, "bench", day, 3, stage))
    timed("expectation suite", lambda: validate_transactions(stage.all_transaction_lines()))
    inputs = timed("loading the staged inputs", lambda: stage.inputs("bench"))
    result = timed("reconcile (compute)", lambda: reconcile(inputs, rules, day))
    timed("reports (CSV, XLSX, HTML)", lambda: write_reports(result, "bench", DAY, root=work / "reports"))
    conn.send("log")
    log = conn.recv()
    conn.send("stop")
    conn.recv()
    # the peak of the whole flow: the highest window (each reset starts the process's peak again)
    conn_out.send({"timings": timings, "cpus": cpus, "peaks": peaks,
                   "peak_mb": max([window_peak_rss_mb(), *peaks.values()]), "log": log, "built_s": built,
                   "findings": len(result.findings), "history": history, "lines": len(inputs.day_lines)})


def in_process(target: Any, *args: Any) -> Any:
    """Run ``target(*args, conn)`` in a fresh process; its result and its own peak RSS."""
    here, there = mp.Pipe()
    process = mp.get_context("spawn").Process(target=_child, args=(target, args, there))
    process.start()
    value = here.recv()
    process.join()
    return value


def _child(target: Any, args: tuple, conn: Any) -> None:
    if target is e2e_pass:
        e2e_pass(*args, conn)
    else:
        conn.send(target(*args))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--big-lines", type=int, default=5_000_000)
    parser.add_argument("--sample", type=int, default=20_000, help="lines for the Python-loop baseline")
    parser.add_argument("--latency-scale", type=float, default=1.0)
    parser.add_argument("--skip-e2e", action="store_true")
    parser.add_argument("--skip-big", action="store_true")
    args = parser.parse_args(argv)
    header(f"payout reconciliation bench: {args.lines:,}-line day, latency profile x{args.latency_scale}")
    targets: list[Target] = []
    tl02_calls = -(-args.lines // 2000)
    tl02_floor = max(0, tl02_calls - 60) / 60 * 3600  # 60 in the first hour, then 60 an hour

    if not args.skip_e2e:
        r = in_process(e2e_pass, args.lines, args.latency_scale)
        calls = defaultdict(int)
        for entry in r["log"]:
            calls[entry["operation"]] += 1
        chunks = calls["TL05"]
        mb = sum(1 for _ in range(0))  # noqa: F841  (sizes are not logged)
        floor = (0.15 + EXPORT_DELAY_S + 0.15 * calls["TL04"] + chunks * 0.15
                 + 0.05 * args.lines * 640 / 2**20) * args.latency_scale
        floor = max(floor, EXPORT_DELAY_S)
        total = sum(v for k, v in r["timings"].items() if not k.startswith("(bench)"))
        print(f"\n== end to end: {r['lines']:,} lines through the export ({r['built_s']:.0f} s to build the sandbox)")
        for name, seconds in r["timings"].items():
            figure(name, seconds, "s", floor if name.startswith("export") else None)
        for name, seconds in r["cpus"].items():
            figure(f"CPU time of: {name}", seconds, "s")
        for name, mb in r["peaks"].items():
            figure(f"peak RSS during: {name}", mb, "MB")
        figure("end to end", total, "s")
        print("  Mirakl calls: " + ", ".join(f"{k}={v}" for k, v in sorted(calls.items())))
        print(f"  orders' history: {r['history']}")
        breaches = ceiling_breaches(r["log"])
        print(f"  Mirakl ceilings broken (sandbox call log): {breaches or 'none'}")
        figure("TL02 alone: calls for the day's lines", tl02_calls, "calls")
        figure("TL02 alone: hours at 60 calls an hour", tl02_floor / 3600, "h")
        figure("peak RSS of the flow", r["peak_mb"], "MB")
        orders = args.lines // 4
        woo_floor = -(-orders // 100) * (0.066 + 0.017 * 100 * 0.55) * args.latency_scale / 4
        figure("WooCommerce extract floor (not run): pages of 100", woo_floor / 60, "min")
        targets += [
            Target(f"{args.lines:,}-line day end to end within Mirakl's ceilings", sum(breaches.values()),
                   "breaches", 0, 0),
            Target(f"{args.lines:,}-line day end to end peak memory", r["peak_mb"], "MB", 2048),
            Target(f"{args.lines:,}-line day compute (end-to-end pass, CPU)", r["cpus"]["reconcile (compute)"], "s",
                   10),
        ]

    c = in_process(compute_pass, args.lines, args.sample)
    print(f"\n== compute alone: {c['rows']:,} lines, synthetic frames")
    figure("vectorised reconcile (wall)", c["compute_s"], "s")
    figure("vectorised reconcile (CPU)", c["cpu_s"], "s")
    figure("peak RSS", c["peak_mb"], "MB")
    if "loop_per_row_us" in c:
        per_row = c["compute_s"] / c["rows"] * 1e6
        figure("per row: vectorised", per_row, "us")
        figure("per row: Python loop baseline (sample)", c["loop_per_row_us"], "us")
        print(f"  loop / vectorised = x{c['loop_per_row_us'] / per_row:.1f}")
    targets.append(Target(f"{c['rows']:,}-line day compute (CPU)", c["cpu_s"], "s", 10))
    targets.append(Target(f"{c['rows']:,}-line day compute peak memory", c["peak_mb"], "MB", 2048))
    if not args.skip_big:
        b = in_process(compute_pass, args.big_lines, 0)
        print(f"\n== compute alone: {b['rows']:,} lines")
        figure("vectorised reconcile (wall)", b["compute_s"], "s")
        figure("vectorised reconcile (CPU)", b["cpu_s"], "s")
        figure("peak RSS", b["peak_mb"], "MB")
        targets.append(Target(f"{b['rows']:,}-line day peak memory", b["peak_mb"], "MB", 4096))
    print_targets(targets)


if __name__ == "__main__":
    main()
