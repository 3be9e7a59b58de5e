"""Benchmark: the vectorised reconciliation on 1,000,000 TL02 lines against 250,000 orders.

Prints wall time and peak memory (targets: <= 30 s, <= 2 GB) and, for scale, a per-row Python
loop doing the same join on a sample, as a per-row time ratio. Not a test: it prints figures.

    PYTHONPATH=. .venv/bin/python bench/reconcile.py [--orders 250000] [--sample 20000]
"""
from __future__ import annotations

import argparse
import gc
import resource
import time
from collections import defaultdict
from datetime import date

import numpy as np
import pandas as pd

from include.woo_mirakl.reconciliation import (
    AMOUNT_COLUMNS,
    BUCKETS,
    Day,
    Inputs,
    Rules,
    documents_frame,
    normalise_transactions,
    reconcile,
    woo_refunds_frame,
)

DAY = Day(date(2026, 3, 10))
RULES = Rules(commission_rate=0.10, commission_tolerance=0.01, grace_days=3)
SALE_TYPES = ("ORDER_AMOUNT", "ORDER_SHIPPING_AMOUNT", "COMMISSION_FEE", "COMMISSION_VAT")


def synthetic(orders: int, seed: int = 7) -> Inputs:
    """``orders`` one-line orders with 4 sale lines each; 0.5 % unknown to WooCommerce, 0.5 % overcharged."""
    rng = np.random.default_rng(seed)
    order_ids = pd.Series([f"SBX{i:08d}-A" for i in range(orders)], dtype="string")
    line_ids = order_ids + "-1"
    price = np.round(rng.uniform(5, 300, orders), 2)
    shipping = np.round(rng.choice([0.0, 4.99, 9.99], orders), 2)
    rate = np.where(rng.random(orders) < 0.005, 0.12, 0.10)
    fee = np.round((price + shipping) * rate, 2)
    vat = np.round(fee * 0.2, 2)
    n = orders * len(SALE_TYPES)
    lines = pd.DataFrame({
        "transaction_id": pd.Series(np.arange(n).astype(str), dtype="string"),
        "type": pd.Series(np.tile(np.array(SALE_TYPES), orders), dtype="string"),
        "amount": np.column_stack([price, shipping, -fee, -vat]).ravel(),
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
        "line_total": price, "order_total": np.round(price + shipping, 2),
        "commission_as_of": pd.Series([None] * orders, dtype="string"),
    })[known].reset_index(drop=True)
    woo_lines["date_completed"] = pd.to_datetime(woo_lines["date_completed"], utc=True)
    empty = normalise_transactions(pd.DataFrame())
    return Inputs(day_lines=lines, history_lines=empty, cycle_lines=empty, documents=documents_frame([]),
                  woo_lines=woo_lines, woo_refunds=woo_refunds_frame([]),
                  ledger_orders=pd.DataFrame({"mirakl_order_id": pd.Series([], dtype="string"),
                                              "woo_order_id": pd.Series([], dtype="Int64")}))


def loop_reconcile(records: list[dict], woo_orders: set[str], rules: Rules) -> list[tuple]:
    """The same line-level join and the two order findings, one Python iteration per row."""
    buckets: dict[tuple[str, str], dict[str, float]] = defaultdict(lambda: dict.fromkeys(AMOUNT_COLUMNS, 0.0))
    for row in records:
        bucket = BUCKETS.get(row["type"], "other_fees")
        buckets[(row["order_id"], row["order_line_id"])][bucket] += row["amount"]
    findings = []
    paid: dict[str, float] = defaultdict(float)
    for (order_id, line_id), amounts in buckets.items():
        base = amounts["order_amount"] + amounts["shipping_amount"] + amounts["refund_amount"] + \
            amounts["refund_shipping_amount"]
        expected = round(base * rules.commission_rate, 2)
        charged = round(-(amounts["commission"] + amounts["refunded_commission"]), 2)
        if abs(charged - expected) > rules.commission_tolerance + 1e-9:
            findings.append(("commission_off_rate", order_id, line_id, charged, expected))
        if amounts["order_amount"] > 0:
            paid[order_id] += amounts["order_amount"] + amounts["shipping_amount"]
    for order_id, amount in paid.items():
        if order_id not in woo_orders:
            findings.append(("order_missing_in_woocommerce", order_id, None, round(amount, 2), 0.0))
    return findings


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=250_000)
    parser.add_argument("--sample", type=int, default=20_000, help="order lines for the Python-loop baseline")
    args = parser.parse_args()

    started = time.perf_counter()
    inputs = synthetic(args.orders)
    built = time.perf_counter() - started
    rows = len(inputs.day_lines)
    gc.collect()
    before = peak_rss_mb()
    started = time.perf_counter()
    result = reconcile(inputs, RULES, DAY)
    vector_s = time.perf_counter() - started
    peak = peak_rss_mb()

    sample = inputs.day_lines.head(args.sample).to_dict("records")
    woo_orders = set(inputs.woo_lines["mirakl_order_id"].astype(str))
    started = time.perf_counter()
    loop_findings = loop_reconcile(sample, woo_orders, RULES)
    loop_s = time.perf_counter() - started
    sample_result = reconcile(Inputs(**{**inputs.__dict__, "day_lines": inputs.day_lines.head(args.sample)}),
                              RULES, DAY)
    assert len(loop_findings) == len(sample_result.findings), "the loop and the vectorised join disagree"

    vector_per_row = vector_s / rows
    loop_per_row = loop_s / len(sample)
    print(f"transaction lines        {rows:>12,}")
    print(f"orders                   {args.orders:>12,}  (WooCommerce knows {inputs.woo_lines['woo_order_id'].nunique():,})")
    print(f"building the frames      {built:>12.2f} s  (not counted)")
    print(f"vectorised reconcile     {vector_s:>12.2f} s  (target <= 30 s)")
    print(f"peak memory (RSS)        {peak:>12.0f} MB (target <= 2048 MB; {before:.0f} MB before the join)")
    print(f"findings                 {len(result.findings):>12,}  {result.findings['kind'].value_counts().to_dict()}")
    print(f"python loop, sample      {len(sample):>12,} lines in {loop_s:.2f} s")
    print(f"per row: vectorised {vector_per_row * 1e6:.2f} us, loop {loop_per_row * 1e6:.2f} us "
          f"-> loop / vectorised = {loop_per_row / vector_per_row:.1f}x")
    print(f"loop extrapolated to {rows:,} lines: {loop_per_row * rows:.1f} s")


if __name__ == "__main__":
    main()
