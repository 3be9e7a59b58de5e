"""Call budgets: never call a Mirakl operation more often than Mirakl publishes.

The published maxima live in ``include/config/mirakl_call_limits.yaml`` (generated from
the spec by ``scripts/extract_call_limits.py``). A :class:`CallBudget` is asked before
each call; when the operation's window is used up it raises :class:`BudgetExceeded`
with the time the call becomes allowed, instead of letting the call through.

:class:`LedgerCallBudget` keeps the last calls in the ledger (under a row lock), so the
budget holds across processes and Celery workers of one marketplace.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, runtime_checkable

import yaml

DEFAULT_LIMITS_FILE = Path(__file__).resolve().parents[1] / "config" / "mirakl_call_limits.yaml"

Window = tuple[int, float]


class BudgetExceeded(Exception):
    """The operation may not be called yet; ``retry_at`` is the earliest time it may.

    ``retry_stopped``: the call was made and failed (5xx, 429, a lost answer), and the budget
    stopped the client's retry, so the failure is the call's, not only the budget's.
    """

    retry_stopped = False

    def __init__(self, operation: str, retry_at: datetime):
        super().__init__(f"call budget for {operation} used up; next call allowed at {retry_at.isoformat()}")
        self.operation = operation
        self.retry_at = retry_at


@dataclass(frozen=True)
class OperationLimit:
    """One operation's published maximum: ``windows`` of (calls, seconds)."""

    operation: str
    windows: tuple[Window, ...]
    variants: dict[str, tuple[Window, ...]] = field(default_factory=dict)
    pages_free: bool = False
    published: str = ""
    personas: dict[str, tuple[tuple[Window, ...], dict[str, tuple[Window, ...]]]] = field(default_factory=dict)


class CallLimits:
    """The published maxima of every operation, looked up by operation code."""

    def __init__(self, operations: dict[str, OperationLimit]):
        self._operations = operations

    @classmethod
    def from_file(cls, path: str | Path = DEFAULT_LIMITS_FILE) -> "CallLimits":
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        def windows(raw: Any) -> tuple[Window, ...]:
            return tuple((int(c), float(s)) for c, s in raw or [])

        operations = {}
        for code, entry in (data.get("operations") or {}).items():
            operations[code] = OperationLimit(
                operation=code,
                windows=windows(entry.get("limits")),
                variants={name: windows(w) for name, w in (entry.get("variants") or {}).items()},
                pages_free=bool(entry.get("pages_free", False)),
                published=entry.get("published", ""),
                personas={
                    persona: (windows(p.get("limits")), {n: windows(w) for n, w in (p.get("variants") or {}).items()})
                    for persona, p in (entry.get("personas") or {}).items()
                },
            )
        return cls(operations)

    def adapted(self, persona: str | None = None, pages_free: Mapping[str, bool] | None = None) -> "CallLimits":
        """These limits as one marketplace reads them.

        ``persona``: the spec publishes other maxima for some users (OR11: every 15 minutes for an
        "External Partner"); operations without that persona keep the default. ``pages_free``: per
        operation, whether only a listing's first page counts against its ceiling; the spec does
        not say for OR11, so the default reading counts every page.
        """
        operations = dict(self._operations)
        if persona and persona != "default":
            known = {p for limit in operations.values() for p in limit.personas}
            if persona not in known:
                raise ValueError(f"no operation publishes a maximum for persona {persona!r} (known: {sorted(known)})")
            for code, limit in operations.items():
                if persona in limit.personas:
                    windows, variants = limit.personas[persona]
                    operations[code] = replace(limit, windows=windows, variants=variants)
        for code, free in (pages_free or {}).items():
            if code in operations:
                operations[code] = replace(operations[code], pages_free=bool(free))
        return CallLimits(operations)

    def get(self, operation: str) -> OperationLimit | None:
        return self._operations.get(operation)

    def windows(self, operation: str, variant: str | None = None) -> tuple[Window, ...]:
        """The windows that apply; without a variant, every variant's (the strictest)."""
        limit = self._operations.get(operation)
        if limit is None:
            return ()
        if variant is None:
            return limit.windows
        if variant not in limit.variants:
            raise ValueError(f"{operation} has no call-frequency variant {variant!r} (has {sorted(limit.variants)})")
        return limit.variants[variant]

    def pages_free(self, operation: str) -> bool:
        limit = self._operations.get(operation)
        return bool(limit and limit.pages_free)

    def __contains__(self, operation: str) -> bool:
        return operation in self._operations


def marketplace_limits(persona: str = "default", each_page_counts: bool = True) -> CallLimits:
    """The published limits as one marketplace's ``order_listing`` setting reads them."""
    return default_limits().adapted(persona, {"OR11": not each_page_counts})


@lru_cache(maxsize=1)
def default_limits() -> CallLimits:
    """The committed limits file, read once per process."""
    return CallLimits.from_file(DEFAULT_LIMITS_FILE)


@runtime_checkable
class CallBudget(Protocol):
    """Asked before each call of a limited operation; raises :class:`BudgetExceeded` when too early."""

    def acquire(self, operation: str, variant: str | None = None) -> None: ...


class SlotLedger(Protocol):
    def acquire_call_slot(
        self, scope: str, operation: str, limits: list[tuple[int, float]], now: datetime
    ) -> datetime | None: ...


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class LedgerCallBudget:
    """A :class:`CallBudget` whose call history lives in the ledger, shared by every worker.

    ``scope`` identifies the quota holder (one Mirakl shop on one instance). With
    ``max_wait`` > 0 a call that becomes allowed within that many seconds waits for its
    slot instead of raising (useful for the next page of a listing).
    """

    def __init__(
        self,
        ledger: SlotLedger,
        scope: str,
        *,
        limits: CallLimits | None = None,
        clock: Callable[[], datetime] = _utcnow,
        max_wait: float = 0.0,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.ledger = ledger
        self.scope = scope
        self.limits = limits or default_limits()
        self.clock = clock
        self.max_wait = max_wait
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"LedgerCallBudget(scope={self.scope!r}, max_wait={self.max_wait})"

    def acquire(self, operation: str, variant: str | None = None) -> None:
        windows = self.limits.windows(operation, variant)
        if not windows:
            return
        key = operation if variant is None else f"{operation}:{variant}"
        while True:
            now = self.clock()
            retry_at = self.ledger.acquire_call_slot(self.scope, key, [tuple(w) for w in windows], now)
            if retry_at is None:
                return
            wait = (retry_at - now).total_seconds()
            if wait > self.max_wait:
                raise BudgetExceeded(key, retry_at)
            self._sleep(max(wait, 0.0))
