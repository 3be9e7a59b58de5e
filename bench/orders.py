"""Benchmark of order ingest and acceptance on a burst of orders. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/orders.py [--orders 2000] [--arrival-seconds 0] [--skus 300]

The sandbox runs in a child process (so the memory figures are the flow's alone); the flow runs
here against it over loopback HTTP with a SQLite ledger. Sandbox time is frozen and moved by the
bench: every scheduled run starts on a minute boundary, and sandbox time also moves by the wall
time each run took, so acceptance latency (order creation → its OR21) includes the work.
The OR11 call budget is kept in the ledger and judged in sandbox time, as in production.

Figures, for the flow and for a naive per-order baseline run on a second burst in the same
sandbox (one OR11 look-up and one WooCommerce SKU search per line for each order):
orders decided per second of work, API calls per order, peak memory, acceptance latency
p50/p95/max in sandbox time. The naive baseline cannot respect OR11's once-a-minute maximum;
its latency is computed as if it did (one order per minute) and its breaches are counted.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# The sandbox process ------------------------------------------------------------------------
def _sandbox_main(conn: Any, n_skus: int, seed: int) -> None:
    """Child: the sandbox with a catalogue, driven by commands over a pipe."""
    from include.sandbox.core import Sandbox, parse_iso
    from include.sandbox.scenarios import catalogue, place_orders

    sandbox = Sandbox(seed=seed)
    sandbox.clock.freeze()
    with sandbox.lock:
        world = catalogue(sandbox, n_skus=n_skus, seed=seed, stock_range=(20, 80), missing_offer_share=0.0)
        for offer in sandbox.mirakl.store.offers.values():  # Mirakl may oversell: WooCommerce decides
            offer["quantity"] = 10**6
    sandbox.start()
    offered = [s for s in world["skus"] if s not in world["without_offer"]] + world["orphan_offers"]
    conn.send({"mirakl_url": sandbox.mirakl_url, "woo_url": sandbox.woo_url, "api_key": sandbox.mirakl.api_key,
               "shop_id": sandbox.mirakl.shop_id, "ck": sandbox.woo.consumer_key, "cs": sandbox.woo.consumer_secret})

    def place(count: int, seed_: int) -> list[str]:
        """``count`` orders, 20 per sandbox second (OR11 dates have one-second precision)."""
        ids: list[str] = []
        with sandbox.lock:
            for start in range(0, count, 20):
                ids += place_orders(sandbox, min(20, count - start), offered, seed=seed_ + start,
                                    debit_delay_s=10 * 86400)
                sandbox.clock.advance(1)
        return ids

    def accept_times() -> dict[str, float]:
        out: dict[str, float] = {}
        for entry in sandbox.log.entries("mirakl", "OR21"):
            if entry["status"] == 204:
                out[entry["path"].split("/")[3]] = parse_iso(entry["at"]).timestamp()
        return out

    def created(order_ids: list[str]) -> dict[str, float]:
        with sandbox.lock:
            return {i: parse_iso(sandbox.mirakl.store.orders[i]["created"]).timestamp() for i in order_ids}

    def calls() -> dict[str, int]:
        return dict(Counter(f"{e['service']}:{e['operation']}" for e in sandbox.log.entries()))

    def or11_times() -> list[float]:
        return sorted(parse_iso(e["at"]).timestamp() for e in sandbox.log.entries("mirakl", "OR11"))

    def states(order_ids: list[str]) -> dict[str, int]:
        with sandbox.lock:
            return dict(Counter(sandbox.mirakl.store.orders[i]["state"] for i in order_ids))

    commands: dict[str, Callable[..., Any]] = {
        "now": lambda: sandbox.clock.now().timestamp(),
        "advance": lambda seconds: (sandbox.clock.advance(seconds), sandbox.tick())[0].timestamp(),
        "place": place, "accept_times": accept_times, "created": created, "calls": calls,
        "or11_times": or11_times, "states": states,
        "woo_orders": lambda: len(sandbox.woo.store.orders),
    }
    while True:
        name, args = conn.recv()
        if name == "stop":
            sandbox.stop()
            conn.send(None)
            return
        try:
            conn.send(("ok", commands[name](*args)))
        except Exception as error:  # report, keep serving
            conn.send(("error", repr(error)))


class SandboxProcess:
    """The bench's handle on the child sandbox."""

    def __init__(self, n_skus: int, seed: int):
        self.conn, child = mp.Pipe()
        self.process = mp.Process(target=_sandbox_main, args=(child, n_skus, seed), daemon=True)
        self.process.start()
        self.info = self.conn.recv()

    def __call__(self, name: str, *args: Any) -> Any:
        self.conn.send((name, args))
        status, value = self.conn.recv()
        if status != "ok":
            raise RuntimeError(f"sandbox command {name} failed: {value}")
        return value

    def stop(self) -> None:
        self.conn.send(("stop", ()))
        self.conn.recv()
        self.process.join(5)


# Helpers ------------------------------------------------------------------------------------
def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)}


def breaches(times: list[float], window: float = 60.0) -> int:
    """OR11 calls closer than ``window`` seconds to the previous one (sandbox time)."""
    return sum(1 for a, b in zip(times, times[1:]) if b - a < window - 1e-6)


# The flow -----------------------------------------------------------------------------------
def run_flow(sb: SandboxProcess, order_ids: list[str], arrivals: list[tuple[float, int, int]]) -> dict[str, Any]:
    from include.woo_mirakl.budgets import LedgerCallBudget
    from include.woo_mirakl.clients.http import RetryPolicy
    from include.woo_mirakl.clients.mirakl import MiraklClient
    from include.woo_mirakl.clients.woocommerce import WooCommerceClient
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.ledger import Ledger
    from include.woo_mirakl.orders import OrderIngest

    info = sb.info
    ledger = Ledger.from_url(f"sqlite:///{tempfile.mkdtemp(prefix='bench-orders-')}/ledger.db")
    sandbox_now = lambda: datetime.fromtimestamp(sb("now"), timezone.utc)  # noqa: E731
    retry = RetryPolicy(base_delay=0.05, max_delay=0.5)
    budget = LedgerCallBudget(ledger, "bench", clock=sandbox_now)
    mirakl = MiraklClient(info["mirakl_url"], info["api_key"], shop_id=info["shop_id"], budget=budget, retry=retry)
    woo = WooCommerceClient(info["woo_url"], info["ck"], info["cs"], retry=retry)
    flow = OrderIngest(get_marketplace("sandbox"), ledger, mirakl=mirakl, woo=woo, clock=sandbox_now,
                       initial_lookback=__import__("datetime").timedelta(hours=1))
    start = sb("now")
    calls_before = sb("calls")
    pending = list(arrivals)
    work = 0.0
    runs = 0
    tracemalloc.start()
    while True:
        tick = start + 60 * runs
        now = sb("now")
        if tick > now:
            sb("advance", tick - now)
        while pending and pending[0][0] <= sb("now") - start:
            _, count, seed = pending.pop(0)
            order_ids.extend(sb("place", count, seed))
        began = time.perf_counter()
        flow.fetch_changes()
        flow.decide_and_reserve()
        flow.send_decisions()
        elapsed = time.perf_counter() - began
        work += elapsed
        sb("advance", elapsed)  # the run took this long on the schedule's clock too
        runs += 1
        left = sb("states", order_ids).get("WAITING_ACCEPTANCE", 0)
        if not pending and left == 0:
            break
        if runs > 400:
            raise RuntimeError("the flow did not converge")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    accepted = sb("accept_times")
    created = sb("created", order_ids)
    latency = [accepted[i] - created[i] for i in order_ids if i in accepted]
    return {
        "runs": runs, "work_s": work, "peak_mb": peak / 2**20, "latency": latency,
        "calls": diff(sb("calls"), calls_before), "decided": len(latency),
        "or11_breaches": breaches(sb("or11_times")), "states": sb("states", order_ids),
    }


# The naive baseline -------------------------------------------------------------------------
def run_naive(sb: SandboxProcess, order_ids: list[str]) -> dict[str, Any]:
    """Per order: OR11 by id, one WooCommerce search per line, create, OR21 (no batching, no budget)."""
    from include.woo_mirakl.clients.http import RetryPolicy
    from include.woo_mirakl.clients.mirakl import MiraklClient
    from include.woo_mirakl.clients.woocommerce import WooCommerceClient
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.order_mapping import reservation_order

    info = sb.info
    marketplace = get_marketplace("sandbox")
    retry = RetryPolicy(base_delay=0.05, max_delay=0.5)
    mirakl = MiraklClient(info["mirakl_url"], info["api_key"], shop_id=info["shop_id"], retry=retry)
    woo = WooCommerceClient(info["woo_url"], info["ck"], info["cs"], retry=retry)
    calls_before = sb("calls")
    or11_before = len(sb("or11_times"))
    tracemalloc.start()
    began = time.perf_counter()
    for order_id in order_ids:
        order = mirakl.get_orders([order_id])[0]
        decisions: dict[str, bool] = {}
        for line in order.order_lines:
            ref = woo.products_by_sku([line.offer_sku]).get(line.offer_sku)
            decisions[line.order_line_id] = bool(ref and (ref.stock_quantity or 0) >= line.quantity)
        accepted = {line_id for line_id, ok in decisions.items() if ok}
        if accepted:
            woo.create_order(reservation_order(marketplace, order, accepted))
        mirakl.accept_order(order_id, decisions)
    work = time.perf_counter() - began
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    created = sb("created", order_ids)
    first = min(created.values())
    # at OR11's maximum (one call a minute) order i could be read at minute i at the earliest
    latency = [first + 60 * (i + 1) - created[o] for i, o in enumerate(order_ids)]
    return {
        "runs": len(order_ids), "work_s": work, "peak_mb": peak / 2**20, "latency": latency,
        "calls": diff(sb("calls"), calls_before), "decided": len(order_ids),
        "or11_breaches": len(sb("or11_times")) - or11_before - 1,
    }


def report(name: str, r: dict[str, Any], orders: int) -> dict[str, float]:
    api = sum(r["calls"].values())
    figures = {
        "decided_per_s": r["decided"] / r["work_s"] if r["work_s"] else float("nan"),
        "calls_per_order": api / orders,
        "peak_mb": r["peak_mb"],
        "p95_s": percentile(r["latency"], 0.95),
    }
    print(f"\n== {name}")
    print(f"orders decided              {r['decided']} of {orders} in {r['runs']} runs")
    print(f"decided per second of work  {figures['decided_per_s']:.1f}  ({r['work_s']:.1f} s of work)")
    print(f"API calls per order         {figures['calls_per_order']:.2f}  ({api} calls)")
    print("calls by operation          " + ", ".join(f"{k}={v}" for k, v in sorted(r["calls"].items())))
    print(f"peak memory (tracemalloc)   {figures['peak_mb']:.1f} MiB")
    lat = r["latency"]
    print(f"acceptance latency          p50 {percentile(lat, 0.5):.0f} s, p95 {figures['p95_s']:.0f} s, "
          f"max {max(lat):.0f} s (sandbox time)")
    print(f"OR11 calls < 60 s apart     {r['or11_breaches']}")
    if "states" in r:
        print(f"Mirakl states afterwards    {r['states']}")
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--arrival-seconds", type=float, default=0.0,
                        help="spread the orders evenly over this many seconds (0: all at once)")
    parser.add_argument("--skus", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)

    sb = SandboxProcess(args.skus, args.seed)
    try:
        waves = max(1, int(args.arrival_seconds // 60) + 1)
        per_wave = [args.orders // waves + (1 if i < args.orders % waves else 0) for i in range(waves)]
        arrivals = [(60.0 * i, count, args.seed + i) for i, count in enumerate(per_wave) if count]
        flow_ids: list[str] = []
        flow = run_flow(sb, flow_ids, arrivals)
        naive_ids = sb("place", args.orders, args.seed + 10_000)
        naive = run_naive(sb, naive_ids)
    finally:
        sb.stop()
    print(f"burst of {args.orders} orders over {args.arrival_seconds:.0f} s, {args.skus} SKUs, "
          "schedule every minute, OR11 at most once a minute (every page counts)")
    ours = report("flow (batched SKU look-ups, one OR11 listing per minute)", flow, args.orders)
    base = report("naive baseline (OR11 + SKU search per order)", naive, args.orders)
    print("\n== flow vs naive (ratio)")
    print(f"decided per second of work  x{ours['decided_per_s'] / base['decided_per_s']:.2f}")
    print(f"API calls per order         x{ours['calls_per_order'] / base['calls_per_order']:.2f}")
    print(f"peak memory                 x{ours['peak_mb'] / base['peak_mb']:.2f}")
    print(f"acceptance latency p95      x{ours['p95_s'] / base['p95_s']:.3f}")


if __name__ == "__main__":
    main()
