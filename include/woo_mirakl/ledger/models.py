"""SQLAlchemy 2 models of the ledger: the integration's own state and audit trail.

Every timestamp is a timezone-aware UTC datetime (see `UTCDateTime`); money is `Decimal`.
"""
from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

UTC = dt.timezone.utc
MONEY = Numeric(18, 4)


def utcnow() -> dt.datetime:
    return dt.datetime.now(UTC)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend.

    SQLite has no time zones, so values are stored there as naive UTC in SQLAlchemy's fixed-width
    text format, which keeps string comparison equal to time comparison. Naive input is refused:
    guessing its zone is how deadlines silently shift by hours.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if not isinstance(value, dt.datetime):
            raise TypeError(f"expected a datetime, got {type(value).__name__}: {value!r}")
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given to the ledger; pass a timezone-aware one")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime(), Decimal: MONEY, dict[str, Any]: JSON}


class Timestamped:
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SchemaVersion(Base):
    """One row per applied schema step; the highest version is the current schema."""

    __tablename__ = "schema_version"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    description: Mapped[str] = mapped_column(String(200))
    applied_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Order(Timestamped, Base):
    """A Mirakl order as the integration knows it, and the WooCommerce order that mirrors it."""

    __tablename__ = "orders"
    __table_args__ = (
        UniqueConstraint("marketplace", "mirakl_order_id", name="uq_orders_marketplace_order"),
        Index("ix_orders_marketplace_state", "marketplace", "mirakl_state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    marketplace: Mapped[str] = mapped_column(String(100))
    mirakl_order_id: Mapped[str] = mapped_column(String(100))
    commercial_id: Mapped[str | None] = mapped_column(String(100))
    mirakl_state: Mapped[str | None] = mapped_column(String(40))
    woo_order_id: Mapped[int | None] = mapped_column(BigInteger, index=True)
    woo_status: Mapped[str | None] = mapped_column(String(40))
    currency: Mapped[str | None] = mapped_column(String(3))
    total_price: Mapped[Decimal | None]
    acceptance_deadline: Mapped[dt.datetime | None]
    shipping_deadline: Mapped[dt.datetime | None]
    decision: Mapped[str | None] = mapped_column(String(20))
    decided_at: Mapped[dt.datetime | None]
    last_mirakl_update: Mapped[dt.datetime | None]
    detail: Mapped[dict[str, Any] | None]


class OrderLine(Timestamped, Base):
    """One Mirakl order line, its acceptance decision and the WooCommerce line item it became."""

    __tablename__ = "order_lines"
    __table_args__ = (UniqueConstraint("order_id", "mirakl_order_line_id", name="uq_order_lines_order_line"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.id", ondelete="CASCADE"), index=True)
    mirakl_order_line_id: Mapped[str] = mapped_column(String(100))
    offer_sku: Mapped[str | None] = mapped_column(String(200), index=True)
    quantity: Mapped[int | None]
    price: Mapped[Decimal | None]
    mirakl_state: Mapped[str | None] = mapped_column(String(40))
    decision: Mapped[str | None] = mapped_column(String(20))
    decision_reason: Mapped[str | None] = mapped_column(Text)
    woo_line_item_id: Mapped[int | None] = mapped_column(BigInteger)


class Action(Base):
    """Every mutating external call: intent before it, outcome after it (idempotency and audit)."""

    __tablename__ = "actions"
    __table_args__ = (Index("ix_actions_state_started", "state", "started_at"), Index("ix_actions_kind_target", "kind", "target"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    idempotency_key: Mapped[str] = mapped_column(String(300), unique=True)
    marketplace: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(100))
    target: Mapped[str | None] = mapped_column(String(200))
    request_digest: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(20))
    outcome: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    retryable: Mapped[bool | None] = mapped_column(Boolean)
    attempts: Mapped[int] = mapped_column(Integer, default=1)
    started_at: Mapped[dt.datetime]  # the first attempt: how long the action has been going on
    finished_at: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_attempt_at: Mapped[dt.datetime | None]
    # An absolute update whose content changed before it finished starts a new generation.
    generation: Mapped[int] = mapped_column(Integer, default=1, server_default="1")


class OfferState(Base):
    """What was last pushed to, and accepted by, Mirakl for one SKU of one marketplace."""

    __tablename__ = "offer_state"

    marketplace: Mapped[str] = mapped_column(String(100), primary_key=True)
    sku: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_pushed_quantity: Mapped[int | None]
    last_pushed_price: Mapped[Decimal | None]
    last_accepted_quantity: Mapped[int | None]
    last_accepted_price: Mapped[Decimal | None]
    pending_quantity_import_id: Mapped[str | None] = mapped_column(String(100))
    pending_price_import_id: Mapped[str | None] = mapped_column(String(100))
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class LedgerException(Base):
    """A condition that needs a human, with its life cycle (open, acknowledged, resolved)."""

    __tablename__ = "exceptions"
    __table_args__ = (
        UniqueConstraint("marketplace", "kind", "key", name="uq_exceptions_marketplace_kind_key"),
        Index("ix_exceptions_status", "status", "marketplace"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    marketplace: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(300))
    detail: Mapped[dict[str, Any] | None]
    severity: Mapped[str] = mapped_column(String(20))
    status: Mapped[str] = mapped_column(String(20))
    count: Mapped[int] = mapped_column(Integer)
    first_seen: Mapped[dt.datetime]
    last_seen: Mapped[dt.datetime]
    opened_at: Mapped[dt.datetime]
    resolved_at: Mapped[dt.datetime | None]
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    acknowledged_at: Mapped[dt.datetime | None]
    notified_at: Mapped[dt.datetime | None]


class Cursor(Base):
    """A flow's resumable position (e.g. the last Mirakl update date read) per marketplace."""

    __tablename__ = "cursors"

    flow: Mapped[str] = mapped_column(String(100), primary_key=True)
    marketplace: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class SyncRun(Base):
    """The last successful (and last failed) run of each flow per marketplace, for the operations page."""

    __tablename__ = "sync_runs"

    flow: Mapped[str] = mapped_column(String(100), primary_key=True)
    marketplace: Mapped[str] = mapped_column(String(100), primary_key=True)
    last_success_at: Mapped[dt.datetime | None]
    last_run_id: Mapped[str | None] = mapped_column(String(250))
    last_summary: Mapped[dict[str, Any] | None]
    last_failure_at: Mapped[dt.datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class CallBudget(Base):
    """One row per (scope, operation): the row lock that serialises slot decisions, and the last call."""

    __tablename__ = "call_budget"

    scope: Mapped[str] = mapped_column(String(100), primary_key=True)
    operation: Mapped[str] = mapped_column(String(50), primary_key=True)
    last_call_at: Mapped[dt.datetime | None]


class CallBudgetCall(Base):
    """The time of one recent call of an operation, kept as long as the longest window needs it."""

    __tablename__ = "call_budget_calls"
    __table_args__ = (Index("ix_call_budget_calls_scope_op_at", "scope", "operation", "called_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    scope: Mapped[str] = mapped_column(String(100))
    operation: Mapped[str] = mapped_column(String(50))
    called_at: Mapped[dt.datetime]


class ReconciliationResult(Base):
    """One finding of the nightly payout reconciliation, with the amounts on both sides."""

    __tablename__ = "reconciliation_results"
    __table_args__ = (Index("ix_reconciliation_marketplace_date", "marketplace", "run_date"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_date: Mapped[dt.date] = mapped_column(Date)
    marketplace: Mapped[str] = mapped_column(String(100))
    finding_kind: Mapped[str] = mapped_column(String(100))
    order_id: Mapped[str | None] = mapped_column(String(100))
    line_id: Mapped[str | None] = mapped_column(String(100))
    amount_mirakl: Mapped[Decimal | None]
    amount_woo: Mapped[Decimal | None]
    difference: Mapped[Decimal | None]
    currency: Mapped[str | None] = mapped_column(String(3))
    detail: Mapped[dict[str, Any] | None]
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
