"""Alert digest: open exceptions grouped into one message per run, so on-call is not flooded.

An exception alerts once when it opens, and once more if it escalates to a higher severity;
while it stays open it alerts again only after the quiet period. Acknowledged and resolved
exceptions never alert. Critical ones (an acceptance deadline close, an order that could not
be created, a refund that failed) head the digest, and flows that raise them between digests
call :func:`alert_critical_now` to send at once.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from include.woo_mirakl.ledger import ExceptionRecord, Ledger

log = logging.getLogger(__name__)

QUIET_VARIABLE = "woo_mirakl_alert_quiet_minutes"
DEFAULT_QUIET_PERIOD = timedelta(hours=4)
MAX_LINES = 40  # beyond this the digest says how many more and points at the operations page
OPS_PAGE_PATH = "/woo-mirakl/"

# Kinds that need a human within minutes whatever their severity says.
CRITICAL_KINDS = frozenset({
    "acceptance_deadline",  # orders flow: undecided late in the acceptance window
    "acceptance_deadline_near",  # data quality
    "order_reservation_failed",  # orders flow: the WooCommerce order could not be created
    "woo_order_missing",  # data quality: accepted in Mirakl, no WooCommerce order
    "refund_refused",  # refunds flow: Mirakl refused the OR28
    "refund_failed",  # refunds flow: a refund that keeps failing (404, persistent 5xx)
    "refund_unsendable",  # refunds flow: a WooCommerce refund that cannot become an OR28
})


@dataclass(frozen=True)
class DigestPolicy:
    """When an open exception alerts again, and which ones are critical."""

    quiet_period: timedelta = DEFAULT_QUIET_PERIOD
    critical_kinds: frozenset[str] = CRITICAL_KINDS

    def __post_init__(self) -> None:
        if self.quiet_period < timedelta(0):
            raise ValueError(f"the alert quiet period must not be negative, got {self.quiet_period}")

    @classmethod
    def from_variables(cls) -> DigestPolicy:
        """The policy with the quiet period from the Airflow Variable (minutes), if set."""
        from airflow.sdk import Variable

        try:
            raw = Variable.get(QUIET_VARIABLE)
        except Exception:  # not set: the default applies
            return cls()
        try:
            minutes = float(raw)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"Variable {QUIET_VARIABLE} must be a number of minutes, got {raw!r}") from exc
        return cls(quiet_period=timedelta(minutes=minutes))

    def is_critical(self, exception: ExceptionRecord) -> bool:
        return exception.severity == "critical" or exception.kind in self.critical_kinds

    def is_due(self, exception: ExceptionRecord, now: datetime) -> bool:
        """Open (not acknowledged, not resolved) and not alerted within the quiet period."""
        if exception.status != "open":
            return False
        return exception.notified_at is None or now - exception.notified_at >= self.quiet_period


@dataclass(frozen=True)
class Digest:
    """The exceptions one alert will carry, critical first."""

    marketplace: str
    critical: list[ExceptionRecord] = field(default_factory=list)
    regular: list[ExceptionRecord] = field(default_factory=list)

    @property
    def exceptions(self) -> list[ExceptionRecord]:
        return [*self.critical, *self.regular]

    def __bool__(self) -> bool:
        return bool(self.critical or self.regular)


def build_digest(
    marketplace: str, exceptions: Iterable[ExceptionRecord], now: datetime, policy: DigestPolicy
) -> Digest:
    due = [e for e in exceptions if e.marketplace == marketplace and policy.is_due(e, now)]
    due.sort(key=lambda e: (e.kind, e.first_seen, e.key))
    return Digest(
        marketplace,
        critical=[e for e in due if policy.is_critical(e)],
        regular=[e for e in due if not policy.is_critical(e)],
    )


def _age(now: datetime, since: datetime) -> str:
    minutes = max(0, int((now - since).total_seconds() // 60))
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h"
    return f"{minutes // 1440} d"


def _summary(detail: dict[str, Any] | None, limit: int = 160) -> str:
    if not detail:
        return ""
    text = ", ".join(f"{k}={v}" for k, v in detail.items() if k not in ("body", "subject") and v not in (None, ""))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _line(exception: ExceptionRecord, now: datetime, critical: bool) -> str:
    tag = "CRITICAL " if critical else ""
    seen = f", seen {exception.count}x" if exception.count > 1 else ""
    again = " (still open)" if exception.notified_at is not None else ""
    detail = _summary(exception.detail)
    return (
        f"- {tag}{exception.kind} {exception.key}: open {_age(now, exception.first_seen)}{seen}{again}"
        + (f" | {detail}" if detail else "")
    )


def render_digest(digest: Digest, now: datetime, run_id: str | None = None, page_url: str | None = None) -> tuple[str, str]:
    """Subject and plain-text body of one digest."""
    kinds = sorted({e.kind for e in digest.exceptions})
    critical = f"{len(digest.critical)} critical, " if digest.critical else ""
    subject = (
        f"[woo-mirakl] {digest.marketplace}: {critical}{len(digest.exceptions)} exception(s) need attention"
        f" ({', '.join(kinds)})"
    )
    lines = [_line(e, now, True) for e in digest.critical] + [_line(e, now, False) for e in digest.regular]
    shown = lines[:MAX_LINES]
    if len(lines) > MAX_LINES:
        shown.append(f"... and {len(lines) - MAX_LINES} more")
    footer = [f"Marketplace: {digest.marketplace}"]
    if run_id:
        footer.append(f"Run: {run_id}")
    if page_url:
        footer.append(f"Operations page: {page_url}")
    return subject, "\n".join([*shown, "", *footer]) + "\n"


def ops_page_url() -> str:
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="http://localhost:8080/").rstrip("/") + OPS_PAGE_PATH


def _deliver(ledger: Ledger, digest: Digest, now: datetime, run_id: str | None, context: dict[str, Any] | None) -> bool:
    from include.woo_mirakl.alerts import send_alert

    subject, body = render_digest(digest, now, run_id, ops_page_url())
    delivery = send_alert(subject, body, context)
    if delivery.delivered:
        ledger.mark_exceptions_notified([e.id for e in digest.exceptions])
    else:
        # Nothing went out: they stay due, and the next run tries again.
        log.warning("%s: digest of %d exception(s) not delivered on any channel", digest.marketplace, len(digest.exceptions))
    return delivery.delivered


def send_digest(
    ledger: Ledger,
    marketplace: str,
    policy: DigestPolicy | None = None,
    *,
    now: datetime | None = None,
    run_id: str | None = None,
    context: dict[str, Any] | None = None,
) -> dict[str, int]:
    """One alert with every due open exception of the marketplace; counts for the XCom."""
    policy = policy or DigestPolicy.from_variables()
    now = now or datetime.now(timezone.utc)
    digest = build_digest(marketplace, ledger.open_exceptions(marketplace), now, policy)
    if not digest:
        return {"alerted": 0, "critical": 0, "sent": 0}
    sent = _deliver(ledger, digest, now, run_id, context)
    return {"alerted": len(digest.exceptions), "critical": len(digest.critical), "sent": int(sent)}


def alert_critical_now(
    ledger: Ledger,
    marketplace: str,
    records: Sequence[ExceptionRecord] | None = None,
    policy: DigestPolicy | None = None,
    *,
    now: datetime | None = None,
    context: dict[str, Any] | None = None,
) -> int:
    """Send at once, as one alert, the critical exceptions not alerted since they (re)opened or escalated.

    ``records`` narrows the candidates (what ``Ledger.raise_exception`` returned); by default every
    open exception of the marketplace, which is how every task of every flow calls it when it ends
    (:class:`~include.woo_mirakl.alerts.CriticalAlert`). Each opening alerts once, and once more when
    it escalates (warning to critical, :meth:`Ledger.raise_exception`): the ledger claim
    makes sure of it even when two tasks end together; the digest reminds after its quiet period.
    Returns how many were alerted.
    """
    policy = policy or DigestPolicy()  # the quiet period does not matter here: no Variable to read
    now = now or datetime.now(timezone.utc)
    candidates = ledger.open_exceptions(marketplace, include_acknowledged=False) if records is None else records
    fresh = [r for r in candidates if r.marketplace == marketplace and r.status == "open" and policy.is_critical(r)
             and (r.notified_at is None or r.notified_at < r.opened_at)]
    if not fresh:
        return 0
    won = set(ledger.claim_first_alerts([r.id for r in fresh]))
    critical = [r for r in fresh if r.id in won]
    if not critical:
        return 0
    from include.woo_mirakl.alerts import send_alert

    subject, body = render_digest(Digest(marketplace, critical=critical), now, None, ops_page_url())
    if send_alert(subject, body, context).delivered:
        return len(critical)
    ledger.release_alerts([r.id for r in critical])  # nothing went out: the next task's end tries again
    log.warning("%s: %d critical exception(s) not delivered on any channel", marketplace, len(critical))
    return 0
