"""Benchmark of order ingest and acceptance: one cycle, a burst, a sustained arrival. Prints figures; not a test.

    PYTHONPATH=. .venv/bin/python bench/orders.py [--scenario all|cycle|burst|sustained]
        [--orders 2000] [--rate 95] [--minutes 30] [--latency-scale 1.0] [--changes both|listing|export]

The sandbox runs in a child process with the real store's latency profile (see
``include/sandbox/latency.py``: WooCommerce from the recorded timings, Mirakl assumed) and a
running clock: sandbox time advances with the real work and jumps to the next minute boundary
between cycles, as the every-minute schedule would. The flow runs here against it over loopback
HTTP with a SQLite ledger; its OR11 budget is kept in the ledger and judged in sandbox time.

Orders arrive spread evenly over the time since the previous cycle (burst: over 100 s before the
first cycle). Acceptance latency is an order's creation → its OR21, in sandbox time.

Floors (what the best possible flow could do under the ceilings and the profile): a cycle starts
on each minute boundary; OR11 gives 100 orders a page and, when each page counts, one page a minute
(persona default; 15 minutes for an External Partner); when a listing counts once, every waiting
order in one listing. Each order then needs one WooCommerce reservation (the store works on
``woo_concurrency`` requests at once, 0.316 s each) and one OR21 (0.15 s, concurrent).

The flow sends its reservations as ``POST /orders/batch`` (up to ``WOO_BATCH`` orders a request,
``--woo-workers`` requests at once) and its OR21s ``--or21-workers`` at a time (the flow's
defaults, ``WOO_WORKERS`` and ``OR21_WORKERS`` in ``include/woo_mirakl/orders.py``). The profile
prices a batch at what its orders would cost created one by one (the store creates them one after
the other), so batches save requests, not store time: 100 orders cost 4 requests, not 100. OR21s
go 8 at a time rather than all at once, so a cycle of 100 lies above the floor by about
12 × 0.15 s, plus the SKU look-ups and the ledger.

``--changes listing|export`` picks the marketplace's ``order_listing.changes`` for the sustained
run; the bench prints what each path (OR11, the OR13/OR15 order export) brought.
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
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (  # noqa: E402  (bench/ is not a package)
    Target, ceiling_breaches, figure, header, peak_rss_mb, percentile, print_targets,
)

PAGE = 100  # OR11's largest page
MINUTE = 60.0


# The sandbox process ------------------------------------------------------------------------
def _sandbox_main(conn: Any, n_skus: int, seed: int, latency_scale: float) -> None:
    """Child: the sandbox with a catalogue, driven by commands over a pipe."""
    from include.sandbox.core import Clock, Sandbox, parse_iso
    from include.sandbox.latency import LatencyProfile
    from include.sandbox.scenarios import MESSAGES, catalogue, customer

    profile = LatencyProfile.real_store(scale=latency_scale)
    sandbox = Sandbox(seed=seed, clock=Clock(start=datetime(2026, 3, 2, 8, 0, tzinfo=timezone.utc)),
                      latency=profile)
    with sandbox.lock:
        world = catalogue(sandbox, n_skus=n_skus, seed=seed, stock_range=(10**5, 10**5 + 100),
                          missing_offer_share=0.0)
        for offer in sandbox.mirakl.store.offers.values():  # Mirakl may oversell: WooCommerce decides
            offer["quantity"] = 10**7
    sandbox.start()
    offered = [s for s in world["skus"] if s not in world["without_offer"]]
    conn.send({"mirakl_url": sandbox.mirakl_url, "woo_url": sandbox.woo_url, "api_key": sandbox.mirakl.api_key,
               "shop_id": sandbox.mirakl.shop_id, "ck": sandbox.woo.consumer_key, "cs": sandbox.woo.consumer_secret,
               "woo_concurrency": profile.woo_concurrency})
    rng = random.Random(seed)

    def place(count: int, since: float) -> list[str]:
        """``count`` orders created evenly between ``since`` and now (sandbox time)."""
        ids: list[str] = []
        with sandbox.lock:
            now = sandbox.clock.now()
            span = max(0.0, now.timestamp() - since)
            for i in range(count):
                at = datetime.fromtimestamp(since + span * (i + 1) / (count + 1), timezone.utc)
                lines = [{"offer_sku": sku, "quantity": rng.randint(1, 2)}
                         for sku in rng.sample(offered, k=rng.randint(1, 3))]
                order = sandbox.mirakl.store.place_order(at, lines, customer(i), MESSAGES[i % len(MESSAGES)],
                                                         86400, 10 * 86400)
                ids.append(order["order_id"])
        return ids

    def accept_times() -> dict[str, float]:
        return {e["path"].split("/")[3]: parse_iso(e["at"]).timestamp()
                for e in sandbox.log.entries("mirakl", "OR21") if e["status"] == 204}

    def created(order_ids: list[str]) -> dict[str, float]:
        with sandbox.lock:
            return {i: parse_iso(sandbox.mirakl.store.orders[i]["created"]).timestamp() for i in order_ids}

    commands: dict[str, Callable[..., Any]] = {
        "now": lambda: sandbox.clock.now().timestamp(),
        "advance": lambda seconds: (sandbox.clock.advance(seconds), sandbox.tick())[0].timestamp(),
        "place": place, "accept_times": accept_times, "created": created,
        "calls": lambda: dict(Counter(f"{e['service']}:{e['operation']}" for e in sandbox.log.entries())),
        "log": lambda: sandbox.log.entries("mirakl"),
        "waiting": lambda ids: sum(1 for i in ids if sandbox.mirakl.store.orders[i]["state"] == "WAITING_ACCEPTANCE"),
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

    def __init__(self, n_skus: int, seed: int, latency_scale: float):
        self.conn, child = mp.Pipe()
        self.process = mp.get_context("fork").Process(target=_sandbox_main, args=(child, n_skus, seed, latency_scale),
                                                      daemon=True)
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


# Floors -------------------------------------------------------------------------------------
def floor_latencies(created: list[float], first_tick: float, each_page_counts: bool, scale: float,
                    woo_concurrency: int, listing_every: float = MINUTE) -> list[float]:
    """Acceptance latency of each order under the best possible flow (see the module docstring)."""
    reserve, accept, page_cost = 0.316 * scale, 0.15 * scale, 0.45 * scale
    pending = sorted(created)
    out: list[float] = []
    tick, store_free, i = first_tick, first_tick, 0
    while i < len(pending):
        ready = [c for c in pending[i:] if c <= tick]
        if not ready:
            tick = max(tick + listing_every, first_tick + listing_every * int((pending[i] - first_tick) // listing_every + 1))
            continue
        batch = ready[:PAGE] if each_page_counts else ready
        read_at = tick + page_cost * (-(-len(batch) // PAGE))
        start = max(read_at, store_free)
        for rank, c in enumerate(batch):
            out.append(start + reserve * (rank // woo_concurrency + 1) + accept - c)
        store_free = start + reserve * -(-len(batch) // woo_concurrency)
        i += len(batch)
        tick += listing_every
    return out


# The flow -----------------------------------------------------------------------------------
def run_flow(sb: SandboxProcess, arrivals: list[tuple[float, int]], each_page_counts: bool,
             max_cycles: int = 600, workers: dict[str, int] | None = None, changes: str = "listing") -> dict[str, Any]:
    """Cycles on every minute boundary until every order is decided; ``arrivals``: (offset s, count).

    ``changes``: the marketplace's ``order_listing.changes`` (``listing`` or ``export``)."""
    import dataclasses
    from include.woo_mirakl.budgets import LedgerCallBudget, marketplace_limits
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
    limits = marketplace_limits("default", each_page_counts)
    from include.woo_mirakl.orders import OR11_SLOT_WAIT

    # as the DAG's listing task: a cycle starting a little early in its minute waits for the slot
    budget = LedgerCallBudget(ledger, "bench", clock=sandbox_now, limits=limits, max_wait=OR11_SLOT_WAIT)
    mirakl = MiraklClient(info["mirakl_url"], info["api_key"], shop_id=info["shop_id"], budget=budget,
                          limits=limits, retry=retry)
    woo = WooCommerceClient(info["woo_url"], info["ck"], info["cs"], retry=retry)
    marketplace = get_marketplace("sandbox")
    marketplace = dataclasses.replace(
        marketplace, order_listing=dataclasses.replace(marketplace.order_listing, changes=changes))
    flow = OrderIngest(marketplace, ledger, mirakl=mirakl, woo=woo, clock=sandbox_now,
                       initial_lookback=timedelta(hours=1), **(workers or {}))
    start = sb("now")
    start = start - start % MINUTE + MINUTE  # the first minute boundary
    calls_before = sb("calls")
    pending = sorted(arrivals)
    order_ids: list[str] = []
    first_tick = None
    cycle_walls: list[float] = []
    last_end = start + min(0.0, pending[0][0] if pending else 0.0)  # orders before the first tick
    runs = 0
    fetched: Counter[str] = Counter()
    while True:
        tick = start + MINUTE * runs
        now = sb("now")
        if tick > now:
            sb("advance", tick - now)
        due = sum(count for at, count in pending if start + at <= tick)
        pending = [(at, count) for at, count in pending if start + at > tick]
        if due:
            order_ids += sb("place", due, last_end)
        first_tick = first_tick or tick
        began = time.perf_counter()
        fetched.update(flow.fetch_changes())
        flow.decide_and_reserve()
        flow.send_decisions()
        cycle_walls.append(time.perf_counter() - began)
        last_end = sb("now")
        runs += 1
        if not pending and sb("waiting", order_ids) == 0:
            break
        if runs > max_cycles:
            raise RuntimeError("the flow did not converge")
    accepted = sb("accept_times")
    created = sb("created", order_ids)
    latency = [accepted[i] - created[i] for i in order_ids if i in accepted]
    log = sb("log")
    or11_variant = None if each_page_counts else (
        lambda e: "uncounted" if e["operation"] == "OR11" and e["query"].get("offset", ["0"])[0] != "0" else None)
    return {
        "runs": runs, "cycle_walls": cycle_walls, "latency": latency, "created": sorted(created.values()),
        "first_tick": first_tick, "calls": {k: v - calls_before.get(k, 0) for k, v in sb("calls").items()
                                            if v != calls_before.get(k, 0)},
        "decided": len(latency), "orders": len(order_ids), "fetched": dict(fetched), "changes": changes,
        "breaches": ceiling_breaches(log, limits, or11_variant),
    }


def report(name: str, r: dict[str, Any], floor: list[float]) -> float:
    print(f"\n== {name}")
    lat = r["latency"]
    figure("orders decided", r["decided"], f"of {r['orders']} in {r['runs']} cycles")
    figure("API calls per order", sum(r["calls"].values()) / max(1, r["orders"]), "calls")
    print("  calls by operation: " + ", ".join(f"{k}={v}" for k, v in sorted(r["calls"].items())))
    figure("cycle wall time p50", statistics.median(r["cycle_walls"]), "s")
    figure("cycle wall time max", max(r["cycle_walls"]), "s")
    figure("acceptance latency p50", percentile(lat, 0.5), "s", percentile(floor, 0.5))
    p95 = percentile(lat, 0.95)
    figure("acceptance latency p95", p95, "s", percentile(floor, 0.95))
    figure("acceptance latency max", max(lat) if lat else float("nan"), "s", max(floor) if floor else None)
    f = r["fetched"]
    print(f"  what each path brought: OR11 listing {f.get('read', 0)} orders ({f.get('new', 0)} new, "
          f"{f.get('changed', 0)} changed, {f.get('unchanged', 0)} unchanged); order export (OR13-15) "
          f"{f.get('export_read', 0)} orders ({f.get('export_new', 0)} new, {f.get('export_changed', 0)} changed, "
          f"{f.get('export_unchanged', 0)} unchanged) in {f.get('export_requested', 0)} exports")
    print(f"  Mirakl ceilings broken (sandbox call log): {r['breaches'] or 'none'}")
    return p95


def run_naive(sb: SandboxProcess, count: int) -> dict[str, float]:
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
    ids = sb("place", count, sb("now") - 5)
    calls_before = sb("calls")
    began = time.perf_counter()
    for order_id in ids:
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
    calls = sum(v - calls_before.get(k, 0) for k, v in sb("calls").items())
    return {"per_order_s": work / count, "calls_per_order": calls / count}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", default="all", choices=("all", "cycle", "burst", "sustained"))
    parser.add_argument("--orders", type=int, default=2000, help="orders of the burst")
    parser.add_argument("--rate", type=int, default=95, help="orders a minute of the sustained arrival")
    parser.add_argument("--minutes", type=int, default=30, help="minutes of the sustained arrival")
    parser.add_argument("--cycle-orders", type=int, default=100)
    parser.add_argument("--skus", type=int, default=300)
    parser.add_argument("--naive", type=int, default=20, help="orders of the naive per-order baseline")
    parser.add_argument("--latency-scale", type=float, default=1.0, help="1 = the real store's pace")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--changes", default="both", choices=("both", "listing", "export"),
                        help="order_listing.changes of the sustained run (both: one run each)")
    parser.add_argument("--or21-workers", type=int, default=None, help="OR21 calls at once (default: the flow's)")
    parser.add_argument("--woo-workers", type=int, default=None,
                        help="WooCommerce creates at once (default: the flow's)")
    args = parser.parse_args(argv)
    scale = args.latency_scale
    from include.woo_mirakl import orders as flow_module
    workers = {"or21_workers": args.or21_workers or flow_module.OR21_WORKERS,
               "woo_workers": args.woo_workers or flow_module.WOO_WORKERS}
    header(f"order ingest bench: latency profile x{scale}, {args.skus} SKUs, schedule every minute, "
           f"{workers['or21_workers']} OR21 and {workers['woo_workers']} WooCommerce creates at once")
    targets: list[Target] = []

    def sandbox() -> SandboxProcess:
        return SandboxProcess(args.skus, args.seed, scale)

    if args.scenario in ("all", "cycle"):
        sb = sandbox()
        try:
            r = run_flow(sb, [(-30.0, args.cycle_orders)], each_page_counts=True, workers=workers)
            base = run_naive(sb, args.naive)
        finally:
            sb.stop()
        conc = sb.info["woo_concurrency"]
        floor = 0.45 * scale + 0.316 * scale * -(-args.cycle_orders // conc) + 0.15 * scale
        print(f"\n== one cycle of {args.cycle_orders} new orders")
        figure("cycle wall time", r["cycle_walls"][0], "s", floor)
        print("  calls by operation: " + ", ".join(f"{k}={v}" for k, v in sorted(r["calls"].items())))
        figure("naive per-order baseline, extrapolated", base["per_order_s"] * args.cycle_orders, "s", floor)
        figure("naive API calls per order", base["calls_per_order"], "calls",
               sum(r["calls"].values()) / args.cycle_orders)
        targets.append(Target(f"one cycle of {args.cycle_orders} new orders", r["cycle_walls"][0], "s", 15, floor))

    if args.scenario in ("all", "burst"):
        for each_page_counts in (True, False):
            sb = sandbox()
            try:
                r = run_flow(sb, [(-100.0, args.orders)], each_page_counts, workers=workers)
            finally:
                sb.stop()
            reading = "each page counts" if each_page_counts else "a listing counts once"
            floor = floor_latencies(r["created"], r["first_tick"], each_page_counts, scale, sb.info["woo_concurrency"])
            p95 = report(f"burst of {args.orders} orders over 100 s, {reading}", r, floor)
            floor95 = percentile(floor, 0.95)
            targets.append(Target(f"burst p95 / floor ({reading})", p95 / floor95, "x", 1.1, 1.0))
            if not each_page_counts:
                targets.append(Target("burst p95 (a listing counts once)", p95, "s", 150, floor95))
        for persona, every in (("External Partner", 900.0),):
            floor = floor_latencies(r["created"], r["first_tick"], True, scale, sb.info["woo_concurrency"], every)
            print(f"  floor for the {persona} persona (one page every {every / 60:.0f} min): "
                  f"p95 {percentile(floor, 0.95):,.0f} s")

    if args.scenario in ("all", "sustained"):
        for changes in (("listing", "export") if args.changes == "both" else (args.changes,)):
            sb = sandbox()
            try:
                arrivals = [(MINUTE * m, args.rate) for m in range(args.minutes)]
                r = run_flow(sb, arrivals, each_page_counts=True, workers=workers, changes=changes)
            finally:
                sb.stop()
            floor = floor_latencies(r["created"], r["first_tick"], True, scale, sb.info["woo_concurrency"])
            p95 = report(f"sustained {args.rate} orders a minute for {args.minutes} min, each page counts, "
                         f"changes from the {changes}", r, floor)
            targets.append(Target(f"sustained {args.rate}/min p95 (each page counts, changes: {changes})", p95, "s",
                                  90, percentile(floor, 0.95)))
    figure("peak RSS of the flow's process", peak_rss_mb(), "MB")
    print_targets(targets)


if __name__ == "__main__":
    main()
