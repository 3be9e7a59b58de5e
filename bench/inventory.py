"""Benchmark of the inventory push on a 100,000-SKU sandbox catalogue. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/inventory.py [--skus 100000] [--changed 0.01] [--minutes 30]
        [--latency-scale 1.0] [--pool 3]

The sandbox runs in a child process (so the memory figures are the flow's alone) with the real
store's latency profile (``include/sandbox/latency.py``) and a running clock: sandbox time moves
with the real work, and jumps to the next minute boundary between cycles as the schedule would.
The flow runs here, over loopback HTTP, with a SQLite ledger whose call budget is judged in
sandbox time. Peak memory is the flow process's peak RSS (no tracemalloc in timed runs).

Figures, each beside its floor (the latency the cycle's own calls cost at best: WooCommerce pages
``--pool`` at a time, Mirakl's calls one after the other) and the ratio to it:
* one incremental cycle with a share of the catalogue changed (stock edits, web-shop sales,
  price changes): wall time, requests, Mirakl calls per operation; the naive baseline (one
  Mirakl request per changed SKU) as a ratio;
* a full comparison of the whole catalogue (offers through OF52-OF54, WooCommerce pages by the pool);
* propagation latency (WooCommerce change -> Mirakl offer quantity) with the every-minute schedule.
Mirakl's ceilings are checked from the sandbox's call log.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (bench/ is not a package)
    Target, ceiling_breaches, figure, header, peak_rss_mb, percentile, print_targets,
)

EXPORT_DELAY_S = 20.0  # how long the sandbox takes to prepare an offer export (assumed: Mirakl publishes none)

WOO_VERSION = "10.3.0"  # GET /variations; older stores cost one request per variable product


# The sandbox process ------------------------------------------------------------------------
def _sandbox_main(conn: Any, n_skus: int, seed: int, latency_scale: float) -> None:
    """Child: the sandbox with its catalogue, driven by commands over a pipe."""
    from include.sandbox.core import Sandbox
    from include.sandbox.latency import LatencyProfile
    from include.sandbox.scenarios import catalogue

    sandbox = Sandbox(seed=seed)
    sandbox.clock.freeze()  # building the catalogue takes no shop time
    sandbox.woo.version = WOO_VERSION
    started = time.perf_counter()
    with sandbox.lock:
        world = catalogue(sandbox, n_skus=n_skus, seed=seed, stock_range=(5, 50))
        sandbox.mirakl.configure(export_delay_s=EXPORT_DELAY_S)
    sandbox.clock.unfreeze()
    sandbox.latency = LatencyProfile.real_store(scale=latency_scale)
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
        "log": lambda: sandbox.log.entries(),
        "clear_calls": lambda: None,  # the whole log is kept: the ceilings are checked over the run
    }
    while True:
        name, args = conn.recv()
        if name == "stop":
            sandbox.stop()
            conn.send(None)
            return
        if name in ("log", "calls", "clear_calls"):
            conn.send(commands[name](*args))
            continue
        with sandbox.lock:
            conn.send(commands[name](*args))


class SandboxProcess:
    def __init__(self, n_skus: int, seed: int, latency_scale: float):
        self._conn, child = mp.Pipe()
        self._process = mp.get_context("fork").Process(target=_sandbox_main, args=(child, n_skus, seed, latency_scale),
                                                       daemon=True)
        self._process.start()
        self.info = self._conn.recv()

    def __call__(self, name: str, *args: Any) -> Any:
        self._conn.send((name, args))
        return self._conn.recv()

    def stop(self) -> None:
        self("stop")
        self._process.join(10)


# Measuring --------------------------------------------------------------------------------------
POOL = 3


def measured(sandbox: SandboxProcess, step: Callable[[], Any]) -> dict[str, Any]:
    """Run one step: wall time, requests per service, and the floor of the calls it made."""
    before = len(sandbox("log"))
    started = time.perf_counter()
    result = step()
    wall = time.perf_counter() - started
    entries = sandbox("log")[before:]
    calls = Counter((e["service"], e["operation"]) for e in entries)
    woo = sum(e.get("latency_s", 0.0) for e in entries if e["service"] == "woo")
    mirakl = sum(e.get("latency_s", 0.0) for e in entries if e["service"] == "mirakl")
    return {
        "result": result, "wall": wall, "floor": woo / POOL + mirakl,
        "woo": sum(n for (service, _), n in calls.items() if service == "woo"),
        "mirakl": {op: n for (service, op), n in sorted(calls.items()) if service == "mirakl"},
    }


def cycle(flow: Any, full: bool = False) -> dict[str, Any]:
    followed = flow.follow_imports()
    pushed = flow.push_changes(full=full)
    return {"follow": followed, "push": pushed}


def next_minute(sandbox: SandboxProcess) -> float:
    """Move to the next minute boundary of sandbox time (the schedule's next run)."""
    now = sandbox("now")
    return sandbox("advance", 60 - now % 60)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=100_000)
    parser.add_argument("--changed", type=float, default=0.01, help="share of SKUs changed before the cycle")
    parser.add_argument("--minutes", type=int, default=30, help="simulated minutes for the latency run")
    parser.add_argument("--latency-scale", type=float, default=1.0, help="1 = the real store's pace")
    parser.add_argument("--pool", type=int, default=3, help="WooCommerce pages read at once")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    global POOL
    POOL = args.pool

    from datetime import datetime, timezone

    from include.woo_mirakl.budgets import LedgerCallBudget
    from include.woo_mirakl.clients.mirakl import MiraklClient
    from include.woo_mirakl.clients.woocommerce import WooCommerceClient
    from include.woo_mirakl.config import Marketplace
    from include.woo_mirakl.inventory import InventoryPush, InventorySettings
    from include.woo_mirakl.ledger import Ledger

    header(f"inventory push bench: {args.skus:,} SKUs, latency profile x{args.latency_scale}, "
           f"WooCommerce pool {args.pool}, every-minute schedule")
    sandbox = SandboxProcess(args.skus, args.seed, args.latency_scale)
    info = sandbox.info
    print(f"  built in {info['seconds']:.1f} s: {len(info['skus']):,} SKUs, {len(info['offered']):,} with an offer")
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="bench-inventory-")
    ledger = Ledger.from_url(f"sqlite:///{workdir}/ledger.db")
    sandbox_now = lambda: datetime.fromtimestamp(sandbox("now"), timezone.utc)  # noqa: E731
    budget = LedgerCallBudget(ledger, "bench", clock=sandbox_now)
    flow = InventoryPush(
        Marketplace(name="bench", mirakl_conn_id="bench"),
        WooCommerceClient(info["woo_url"], info["ck"], info["cs"]),
        MiraklClient(info["mirakl_url"], info["api_key"], shop_id=info["shop_id"], budget=budget),
        ledger, budget, settings=InventorySettings(woo_page_pool=args.pool),  # send_wait as in production
    )
    targets: list[Target] = []

    # A store's last modification is recent, not the catalogue import: the cursors start from it.
    sandbox("advance", 3600)
    touched = [info["skus"][0], next(s for s in info["skus"] if s.endswith("-S"))]  # a product and a variation
    for sku in touched:
        sandbox("set_stock", sku, 10)
    next_minute(sandbox)
    first = measured(sandbox, lambda: cycle(flow))
    print(f"\n== first cycle (full comparison, ledger empty): {first['woo']} WooCommerce requests, "
          f"Mirakl {first['mirakl']}")
    figure("wall time", first["wall"], "s", max(EXPORT_DELAY_S, first["floor"]))
    next_minute(sandbox)
    cycle(flow)  # settles the first imports
    next_minute(sandbox)

    offered = [sku for sku in info["offered"] if sku not in touched]
    changed = rng.sample(offered, max(1, int(len(info["skus"]) * args.changed)))
    thirds = len(changed) // 3
    for sku in changed[:thirds]:
        sandbox("set_stock", sku, rng.randint(0, 60))
    for sku in changed[thirds:2 * thirds]:
        sandbox("sell", sku, 1)  # a web-shop order: the product's modified date does not move
    for sku in changed[2 * thirds:]:
        sandbox("set_price", sku, f"{rng.randint(5, 200)}.{rng.choice(['00', '50', '95'])}")
    next_minute(sandbox)
    inc = measured(sandbox, lambda: cycle(flow))
    push = inc["result"]["push"]
    sto01, pri01 = inc["mirakl"].get("STO01", 0), inc["mirakl"].get("PRI01", 0)
    mirakl_total = sum(inc["mirakl"].values())
    naive = push["stock_lines"] + push["price_lines"]  # one request per SKU and value sent
    print(f"\n== incremental cycle, {len(changed):,} SKUs changed ({args.changed:.1%}: stock edits, web-shop sales, "
          f"price changes): {inc['woo']} WooCommerce requests, Mirakl {inc['mirakl']}")
    figure("wall time", inc["wall"], "s", inc["floor"])
    print(f"  lines sent: {push['stock_lines']} stock, {push['price_lines']} price; STO01 {sto01}, PRI01 {pri01}")
    print(f"  naive baseline (one Mirakl request per changed SKU value): {naive} calls -> "
          f"{naive / max(1, sto01 + pri01):.0f}x more uploads, {naive / max(1, mirakl_total):.0f}x more Mirakl calls")
    targets.append(Target(f"delta cycle, {args.changed:.0%} of {args.skus:,} SKUs changed", inc["wall"], "s", 5,
                          inc["floor"]))
    targets.append(Target("delta cycle files: STO01 + PRI01", sto01 + pri01, "files", 2, 2))
    next_minute(sandbox)
    cycle(flow)
    next_minute(sandbox)

    full = measured(sandbox, lambda: cycle(flow, full=True))
    print(f"\n== full comparison of {len(info['skus']):,} SKUs (offer snapshot + differential OF52): "
          f"{full['woo']} WooCommerce requests, Mirakl {full['mirakl']}")
    full_floor = max(EXPORT_DELAY_S, full["floor"])  # the export is prepared while WooCommerce is read
    figure("wall time", full["wall"], "s", full_floor)
    rss = peak_rss_mb()
    figure("peak RSS of the flow's process so far", rss, "MB")
    targets.append(Target(f"full comparison of {args.skus:,} SKUs", full["wall"], "s", 60, full_floor))
    targets.append(Target(f"full comparison of {args.skus:,} SKUs, peak RSS", rss, "MB", 500))
    next_minute(sandbox)
    cycle(flow)

    # Latency: changes at random moments, a cycle at every minute boundary; sandbox time runs with the work.
    latencies: list[float] = []
    cycle_walls: list[float] = []
    waiting: dict[str, tuple[float, int]] = {}
    for minute in range(args.minutes):
        boundary = next_minute(sandbox)
        started = time.perf_counter()
        cycle(flow)
        cycle_walls.append(time.perf_counter() - started)
        sandbox("advance", 2.5)  # Mirakl applies the stock file (the sandbox's import takes 2 s)
        now = sandbox("now")
        quantities = sandbox("offer_quantities", list(waiting))
        for sku, (changed_at, quantity) in list(waiting.items()):
            if quantities.get(sku) == max(0, quantity):
                latencies.append(now - changed_at)  # seen at the latest when this cycle ended
                del waiting[sku]
        # five changes at random moments of the rest of this minute
        moments = sorted(rng.uniform(now, boundary + 60) for _ in range(5))
        for moment in moments:
            current = sandbox("now")
            if moment > current:
                sandbox("advance", moment - current)
            sku = rng.choice(offered)
            waiting[sku] = (sandbox("now"), sandbox("set_stock", sku, rng.randint(0, 60)))
    p95 = percentile(latencies, 0.95)
    # floor: a change waits for the next minute boundary (uniform), then the cycle's STO01 and the import
    floor95 = 0.95 * 60 + 0.15 * args.latency_scale + 2.0
    print(f"\n== propagation latency over {args.minutes} minutes ({len(latencies)} changes arrived, "
          f"{len(waiting)} not yet)")
    figure("p50", statistics.median(latencies) if latencies else float("nan"), "s")
    figure("p95", p95, "s", floor95)
    figure("cycle wall p50", statistics.median(cycle_walls), "s")
    targets.append(Target("stock propagation p95", p95, "s", 65, floor95))
    breaches = ceiling_breaches(sandbox("log"))
    print(f"\n  Mirakl ceilings broken over the whole run (sandbox call log): {breaches or 'none'}")
    targets.append(Target("Mirakl ceilings broken", sum(breaches.values()), "calls", 0, 0))
    sandbox.stop()
    print_targets(targets)


if __name__ == "__main__":
    main()
