"""What every bench shares: figures beside their floor, the closing target lines, the ceilings check.

A *floor* is the best any implementation could do given Mirakl's published call ceilings and
the latency profile (the real store's timings): a figure's ratio to its floor says how much is
left to gain, a goal below its floor cannot be met. Every bench ends with one line per target::

    target <name>: <measured> <unit> (goal <goal>, floor <floor>) met|missed

Timed runs never trace memory (tracemalloc slows Python 3-4x); memory is measured in a separate
pass (:func:`memory_pass`) or as the process's peak RSS.
"""
from __future__ import annotations

import os
import resource
import sys
import tracemalloc
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def machine_load() -> str:
    """The load beside every figure: the machine is shared, figures move with it."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} cores"


def header(title: str) -> None:
    print(f"{title}\n  ({machine_load()}, {datetime.now().isoformat(timespec='seconds')})", flush=True)


def figure(label: str, value: float, unit: str, floor: float | None = None, width: int = 44) -> str:
    """``label  value unit  (floor F, xR)``: the ratio to the floor beside the figure."""
    text = f"  {label:<{width}} {_num(value)} {unit}"
    if floor is not None:
        ratio = value / floor if floor else float("inf")
        text += f"  (floor {_num(floor)} {unit}, x{ratio:.2f})"
    print(text, flush=True)
    return text


def _num(value: float) -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


@dataclass
class Target:
    """One goal of the issue: met when ``measured`` is at most ``goal`` (or at least, when ``higher``)."""

    name: str
    measured: float
    unit: str
    goal: float
    floor: float | None = None
    higher_is_better: bool = False

    @property
    def met(self) -> bool:
        if self.measured != self.measured:
            return False
        return self.measured >= self.goal if self.higher_is_better else self.measured <= self.goal

    def line(self) -> str:
        floor = "n/a" if self.floor is None else _num(self.floor)
        verdict = "met" if self.met else "missed"
        return (f"target {self.name}: {_num(self.measured)} {self.unit} "
                f"(goal {_num(self.goal)}, floor {floor}) {verdict}")


def print_targets(targets: Iterable[Target]) -> None:
    print(f"\n== targets ({machine_load()})")
    for target in targets:
        print(target.line(), flush=True)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: ``/proc/self/clear_refs``); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def window_peak_rss_mb() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return peak_rss_mb()


def memory_pass(step: Callable[[], Any]) -> float:
    """Peak traced Python memory (MiB) of one run of ``step``; never inside a timed run."""
    tracemalloc.start()
    try:
        step()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def ceiling_breaches(entries: list[dict], limits: Any = None,
                     variants: Callable[[dict], str | None] | None = None) -> dict[str, int]:
    """Mirakl calls of the sandbox's call log that broke a published window (in sandbox time).

    ``variants`` names the variant a call was made under (e.g. OF52 differential / full);
    without it, the variant the sandbox logged (else the strictest windows); ``"uncounted"`` leaves
    a call out (a later page of a listing, where the marketplace counts a listing once).
    """
    from include.sandbox.core import parse_iso
    from include.woo_mirakl.budgets import default_limits

    limits = limits or default_limits()
    times: dict[str, list[float]] = {}
    for entry in entries:
        if entry["service"] != "mirakl" or entry.get("status") is None or entry["status"] >= 400:
            continue
        variant = variants(entry) if variants else entry.get("variant")
        if variant == "uncounted":
            continue
        key = entry["operation"] if variant is None else f"{entry['operation']}:{variant}"
        times.setdefault(key, []).append(parse_iso(entry["at"]).timestamp())
    breaches: dict[str, int] = {}
    for key, stamps in times.items():
        operation, _, variant = key.partition(":")
        windows = limits.windows(operation, variant or None) if operation in limits else ()
        stamps.sort()
        count = 0
        for calls, seconds in windows:
            for i in range(calls, len(stamps)):
                # one second of slack: the log's timestamps are rounded to the second
                if stamps[i] - stamps[i - calls] < seconds - 1:
                    count += 1
        if count:
            breaches[key] = count
    return breaches
