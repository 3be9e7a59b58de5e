"""Benchmark of the inventory push on a 100,000-SKU sandbox catalogue. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/inventory.py [--skus 100000] [--changed 0.01] [--minutes 30]

The sandbox runs in a child process (so the memory figures are the flow's alone); the flow
runs here, against it, over loopback HTTP, with a SQLite ledger. Sandbox time is frozen and
moved by the bench: one "minute" is one scheduled cycle (follow_imports, then push_changes).

Figures:
* one incremental cycle with a share of the catalogue changed (stock edits, web-shop sales,
  price changes): wall time, WooCommerce requests, Mirakl calls per operation, peak memory,
  and the naive baseline (one Mirakl request per changed SKU) as a ratio;
* a full comparison of the whole catalogue: wall time and peak memory;
* propagation latency (WooCommerce change → Mirakl offer quantity) with the every-minute
  schedule: p50 and p95 in sandbox time, plus each cycle's own wall time.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WOO_VERSION = "10.3.0"  # GET /variations; older stores cost one request per variable product


# The sandbox process ------------------------------------------------------------------------
def _sandbox_main(conn: Any, n_skus: int, seed: int) -> None:
    """Child: the sandbox with its catalogue, driven by commands over a pipe."""
    from include.sandbox.core import Sandbox
    from include.sandbox.scenarios import catalogue

    sandbox = Sandbox(seed=seed)
    sandbox.clock.freeze()
    sandbox.woo.version = WOO_VERSION
    started = time.perf_counter()
    with sandbox.lock:
        world = catalogue(sandbox, n_skus=n_skus, seed=seed, stock_range=(5, 50))
    sandbox.start()
    conn.send({"mirakl_url": sandbox.mirakl_url, "woo_url": sandbox.woo_url, "api_key": sandbox.mirakl.api_key,
               "shop_id": sandbox.mirakl.shop_id, "ck": sandbox.woo.consumer_key, "cs": sandbox.woo.consumer_secret,
               "skus": world["skus"], "offered": sorted(set(world["skus"]) - set(world["without_offer"])),
               "seconds": time.perf_counter() - started})
    commands: dict[str, Callable[..., Any]] = {
        "now": lambda: sandbox.clock.now().timestamp(),
        "advance": lambda seconds: (sandbox.clock.advance(seconds), sandbox.tick())[0].timestamp(),
        "set_stock": lambda sku, qty: sandbox.woo.set_stock(sku, qty)["stock_quantity"],
        "sell": lambda sku, qty: sandbox.woo.direct_sale(sku, qty)["id"],
        "set_price": lambda sku, price: sandbox.woo.set_price(sku, price)["price"],
        "stock": lambda sku: sandbox.woo.product_by_sku(sku)["stock_quantity"],
        "offer_quantities": lambda skus: {s: (sandbox.mirakl.offer(s) or {}).get("quantity") for s in skus},
        "calls": lambda: Counter((e["service"], e["operation"]) for e in sandbox.log.entries()),
        "clear_calls": sandbox.log.clear,
    }
    while True:
        name, args = conn.recv()
        if name == "stop":
            sandbox.stop()
            conn.send(None)
            return
        with sandbox.lock:
            conn.send(commands[name](*args))


class SandboxProcess:
    def __init__(self, n_skus: int, seed: int):
        self._conn, child = mp.Pipe()
        self._process = mp.get_context("fork").Process(target=_sandbox_main, args=(child, n_skus, seed), daemon=True)
        self._process.start()
        self.info = self._conn.recv()

    def __call__(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        return self._conn.recv()

    def stop(self) -> None:
        self("stop")
        self._process.join(10)


# Measuring --------------------------------------------------------------------------------------
TRACE = True


def measured(sandbox: SandboxProcess, step: Callable[[], Any]) -> dict[str, Any]:
    """Run one step: wall time, requests per service, and (unless --no-trace) peak traced memory.

    tracemalloc slows Python code down; run with --no-trace for wall times without its overhead.
    """
    sandbox("clear_calls")
    if TRACE:
        tracemalloc.start()
    started = time.perf_counter()
    result = step()
    wall = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1] if TRACE else 0
    tracemalloc.stop()
    calls = sandbox("calls")
    return {
        "result": result, "wall": wall, "peak_mb": peak / 2**20,
        "woo": sum(n for (service, _), n in calls.items() if service == "woo"),
        "mirakl": {op: n for (service, op), n in sorted(calls.items()) if service == "mirakl"},
    }


def cycle(flow: Any, full: bool = False) -> dict[str, Any]:
    followed = flow.follow_imports()
    pushed = flow.push_changes(full=full)
    return {"follow": followed, "push": pushed}


def next_minute(sandbox: SandboxProcess, ledger: Any) -> None:
    sandbox("advance", 60)
    ledger.shift_call_times(-60)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of SKUs changed before the cycle")
    parser.add_argument("--minutes", type=int, default=30, help="simulated minutes for the latency run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-trace", action="store_true", help="skip tracemalloc (faster; no memory figures)")
    args = parser.parse_args(argv)
    global TRACE
    TRACE = not args.no_trace

    from include.woo_mirakl.budgets import LedgerCallBudget
    from include.woo_mirakl.clients.mirakl import MiraklClient
    from include.woo_mirakl.clients.woocommerce import WooCommerceClient
    from include.woo_mirakl.config import Marketplace
    from include.woo_mirakl.inventory import InventoryPush, InventorySettings
    from include.woo_mirakl.ledger import Ledger

    print(f"building a {args.skus:,}-SKU catalogue in the sandbox (WooCommerce {WOO_VERSION}) ...", flush=True)
    sandbox = SandboxProcess(args.skus, args.seed)
    info = sandbox.info
    print(f"  built in {info['seconds']:.1f} s: {len(info['skus']):,} SKUs, {len(info['offered']):,} with an offer")
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="bench-inventory-")
    ledger = Ledger.from_url(f"sqlite:///{workdir}/ledger.db")
    budget = LedgerCallBudget(ledger, "bench")
    flow = InventoryPush(
        Marketplace(name="bench", mirakl_conn_id="bench"),
        WooCommerceClient(info["woo_url"], info["ck"], info["cs"]),
        MiraklClient(info["mirakl_url"], info["api_key"], shop_id=info["shop_id"], budget=budget),
        ledger, budget, settings=InventorySettings(send_wait=0.0),
    )

    # A store's last modification is recent, not the catalogue import: the cursors start from it.
    sandbox("advance", 3600)
    touched = [info["skus"][0], next(s for s in info["skus"] if s.endswith("-S"))]  # a product and a variation
    for sku in touched:
        sandbox("set_stock", sku, 10)
    first = measured(sandbox, lambda: cycle(flow))
    print(f"\nfirst cycle (full comparison, ledger empty): {first['wall']:.1f} s, peak {first['peak_mb']:.0f} MiB, "
          f"{first['woo']} WooCommerce requests, Mirakl {first['mirakl']}")
    next_minute(sandbox, ledger)
    cycle(flow)  # settles the first imports
    next_minute(sandbox, ledger)

    offered = [sku for sku in info["offered"] if sku not in touched]
    changed = rng.sample(offered, max(1, int(len(info["skus"]) * args.changed)))
    thirds = len(changed) // 3
    for sku in changed[:thirds]:
        sandbox("set_stock", sku, rng.randint(0, 60))
    for sku in changed[thirds:2 * thirds]:
        sandbox("sell", sku, 1)  # a web-shop order: the product's modified date does not move
    for sku in changed[2 * thirds:]:
        sandbox("set_price", sku, f"{rng.randint(5, 200)}.{rng.choice(['00', '50', '95'])}")
    inc = measured(sandbox, lambda: cycle(flow))
    push = inc["result"]["push"]
    sto01 = inc["mirakl"].get("STO01", 0)
    pri01 = inc["mirakl"].get("PRI01", 0)
    mirakl_total = sum(inc["mirakl"].values())
    naive = push["stock_lines"] + push["price_lines"]  # one request per SKU and value sent
    print(f"\nincremental cycle, {len(changed):,} SKUs changed ({args.changed:.1%}: stock edits, web-shop sales, "
          f"price changes):")
    print(f"  wall {inc['wall']:.2f} s, peak {inc['peak_mb']:.1f} MiB, {inc['woo']} WooCommerce requests")
    print(f"  Mirakl calls {inc['mirakl']} -> STO01 {sto01}, PRI01 {pri01}; lines: {push['stock_lines']} stock, "
          f"{push['price_lines']} price")
    print(f"  naive baseline (one Mirakl request per changed SKU value): {naive} calls -> "
          f"{naive / max(1, sto01 + pri01):.0f}x more uploads, {naive / max(1, mirakl_total):.0f}x more Mirakl calls, "
          f"{(naive + inc['woo']) / max(1, mirakl_total + inc['woo']):.1f}x more requests in all")
    next_minute(sandbox, ledger)
    cycle(flow)
    next_minute(sandbox, ledger)

    full = measured(sandbox, lambda: cycle(flow, full=True))
    print(f"\nfull comparison of {len(info['skus']):,} SKUs: {full['wall']:.1f} s, peak {full['peak_mb']:.0f} MiB, "
          f"{full['woo']} WooCommerce requests, Mirakl {full['mirakl']}")
    next_minute(sandbox, ledger)
    cycle(flow)

    # Latency: changes at random moments, a cycle at every minute boundary.
    latencies: list[float] = []
    cycle_walls: list[float] = []
    waiting: dict[str, tuple[float, int]] = {}
    for minute in range(args.minutes):
        elapsed = 2.0 if minute else 0.0  # the previous cycle's import took 2 s of this minute
        moments = sorted(rng.uniform(elapsed, 60) for _ in range(5))
        for moment in moments:
            now = sandbox("advance", moment - elapsed)
            elapsed = moment
            sku = rng.choice(offered)
            waiting[sku] = (now, sandbox("set_stock", sku, rng.randint(0, 60)))
        sandbox("advance", 60 - elapsed)
        ledger.shift_call_times(-60)
        started = time.perf_counter()
        cycle(flow)
        cycle_wall = time.perf_counter() - started
        cycle_walls.append(cycle_wall)
        # sandbox time stands still during the cycle; charge its real duration to the latency
        arrived = sandbox("advance", 2.0) + cycle_wall
        quantities = sandbox("offer_quantities", list(waiting))
        for sku, (changed_at, quantity) in list(waiting.items()):
            if quantities.get(sku) == max(0, quantity):
                latencies.append(arrived - changed_at)
                del waiting[sku]
    print(f"\npropagation latency over {args.minutes} simulated minutes ({len(latencies)} changes, every-minute "
          f"schedule, import applied 2 s after STO01): p50 {statistics.median(latencies):.1f} s, "
          f"p95 {percentile(latencies, 0.95):.1f} s, max {max(latencies):.1f} s; "
          f"not yet arrived: {len(waiting)}; cycle wall p50 {statistics.median(cycle_walls):.2f} s")
    sandbox.stop()


if __name__ == "__main__":
    main()
