"""The Ledger: named, transactional operations on the integration's state and audit trail.

Every method is its own transaction and returns plain dataclasses or dicts, never ORM objects.
Writing transactions take SQLite's write lock up front (``BEGIN IMMEDIATE``) and lock rows with
``SELECT ... FOR UPDATE`` on PostgreSQL, so tasks on several workers can share one ledger.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, Row, Table, bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, configure_mappers

from include.woo_mirakl.ledger.db import LedgerError, engine_for_url, ledger_url_from_connection, safe_url, writer
from include.woo_mirakl.ledger.models import (
    UTC,
    Action,
    CallBudget,
    CallBudgetCall,
    Cursor,
    LedgerException,
    OfferState,
    Order,
    OrderLine,
    ReconciliationResult,
    SyncRun,
)

DEFAULT_CONN_ID = "woo_mirakl_ledger"
_CHUNK = 5000  # rows per executemany / IN list: far below SQLite's variable limit, big enough to be fast

SEVERITIES = ("info", "warning", "error", "critical")
ORDER_DECISIONS = ("accepted", "partially", "refused")
LINE_DECISIONS = ("accepted", "refused")

ORDER_FIELDS = frozenset(
    {
        "commercial_id", "mirakl_state", "woo_order_id", "woo_status", "currency", "total_price",
        "acceptance_deadline", "shipping_deadline", "decision", "decided_at", "last_mirakl_update", "detail",
    }
)
LINE_FIELDS = frozenset(
    {"offer_sku", "quantity", "price", "mirakl_state", "decision", "decision_reason", "woo_line_item_id"}
)
OFFER_FIELDS = frozenset(
    {
        "last_pushed_quantity", "last_pushed_price", "last_accepted_quantity", "last_accepted_price",
        "pending_quantity_import_id", "pending_price_import_id", "last_error",
    }
)
RECONCILIATION_FIELDS = frozenset(
    {"finding_kind", "order_id", "line_id", "amount_mirakl", "amount_woo", "difference", "currency", "detail"}
)


class ActionConflictError(LedgerError):
    """An idempotency key was reused for a different request: it must never be sent with other content."""


class NotFoundError(LedgerError):
    """The record a method was asked to change does not exist."""


@dataclasses.dataclass(frozen=True)
class OrderLineRecord:
    mirakl_order_line_id: str
    offer_sku: str | None
    quantity: int | None
    price: Decimal | None
    mirakl_state: str | None
    decision: str | None
    decision_reason: str | None
    woo_line_item_id: int | None


@dataclasses.dataclass(frozen=True)
class OrderRecord:
    marketplace: str
    mirakl_order_id: str
    commercial_id: str | None
    mirakl_state: str | None
    woo_order_id: int | None
    woo_status: str | None
    currency: str | None
    total_price: Decimal | None
    acceptance_deadline: dt.datetime | None
    shipping_deadline: dt.datetime | None
    decision: str | None
    decided_at: dt.datetime | None
    last_mirakl_update: dt.datetime | None
    detail: dict[str, Any] | None
    created_at: dt.datetime
    updated_at: dt.datetime
    lines: tuple[OrderLineRecord, ...] = ()


@dataclasses.dataclass(frozen=True)
class ActionRecord:
    """An action after `Ledger.begin_action`; `state` tells the caller what to do.

    ``intent``: send the request. ``uncertain``: an earlier attempt may have reached the remote
    side, so look for its effect before sending. ``done``: already sent, `outcome` holds the result.
    ``failed``: failed for good (not retryable); do not send.
    """

    idempotency_key: str
    marketplace: str
    kind: str
    target: str | None
    request_digest: str
    state: str
    outcome: dict[str, Any] | None
    error: str | None
    retryable: bool | None
    attempts: int
    started_at: dt.datetime  # the first attempt
    finished_at: dt.datetime | None
    last_attempt_at: dt.datetime | None = None
    generation: int = 1
    created: bool = False  # True when this call recorded the intent


@dataclasses.dataclass(frozen=True)
class OfferStateRecord:
    marketplace: str
    sku: str
    last_pushed_quantity: int | None
    last_pushed_price: Decimal | None
    last_accepted_quantity: int | None
    last_accepted_price: Decimal | None
    pending_quantity_import_id: str | None
    pending_price_import_id: str | None
    last_error: str | None
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class ExceptionRecord:
    id: int
    marketplace: str
    kind: str
    key: str
    detail: dict[str, Any] | None
    severity: str
    status: str
    count: int
    first_seen: dt.datetime
    last_seen: dt.datetime
    opened_at: dt.datetime
    resolved_at: dt.datetime | None
    acknowledged_by: str | None
    acknowledged_at: dt.datetime | None
    notified_at: dt.datetime | None
    newly_opened: bool = False  # True when this call opened (or reopened) it: time to alert


@dataclasses.dataclass(frozen=True)
class SyncStatus:
    flow: str
    marketplace: str
    last_success_at: dt.datetime | None
    last_run_id: str | None
    last_summary: dict[str, Any] | None
    last_failure_at: dt.datetime | None
    last_error: str | None


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"value of type {type(value).__name__} is not JSON-serialisable for the ledger: {value!r}")


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, no whitespace, Decimals and datetimes as strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_json_default)


def request_digest(request: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a request: equal content, equal digest."""
    return hashlib.sha256(canonical_json(request).encode("utf-8")).hexdigest()


def _jsonable(value: Any) -> Any:
    return None if value is None else json.loads(canonical_json(value))


def _record(cls: type, row: Any, **extra: Any) -> Any:
    """A dataclass from an ORM object or a Core row, built while its session is still open."""
    source = row._mapping if isinstance(row, Row) else None
    # Fields with a default are columns when the row has them (last_attempt_at, generation), or
    # not columns at all (lines, created, newly_opened): those come from `extra`.
    names = [f.name for f in dataclasses.fields(cls) if f.name not in extra and (
        f.default is dataclasses.MISSING or (f.name in source if source is not None else hasattr(row, f.name)))]
    return cls(**{n: source[n] if source is not None else getattr(row, n) for n in names}, **extra)


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _check_fields(what: str, given: Iterable[str], allowed: frozenset[str]) -> None:
    unknown = sorted(set(given) - allowed)
    if unknown:
        raise ValueError(f"unknown {what} field(s) {unknown}; allowed: {sorted(allowed)}")


def _check_aware(values: Mapping[str, Any]) -> None:
    for name, value in values.items():
        if isinstance(value, dt.datetime) and value.utcoffset() is None:
            raise ValueError(f"{name}: naive datetime {value.isoformat()} given to the ledger; pass a timezone-aware one")


def _check_choice(what: str, value: str | None, allowed: Sequence[str]) -> None:
    if value is not None and value not in allowed:
        raise ValueError(f"{what} must be one of {list(allowed)}, got {value!r}")


class Ledger:
    """The integration's own state and audit trail, in its own database (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime] | None = None):
        # Mapper configuration runs Airflow's global hook that imports all of Airflow's models
        # (about a second); do it here, never inside a transaction holding SQLite's write lock.
        configure_mappers()
        self._engine = engine
        self._writer = writer(engine)
        self._clock = clock or (lambda: dt.datetime.now(UTC))
        self._insert = postgresql.insert if engine.dialect.name == "postgresql" else sqlite.insert

    @classmethod
    def from_url(cls, url: str, clock: Callable[[], dt.datetime] | None = None) -> Ledger:
        """A ledger on `url` (an SQLAlchemy URL), its schema created or upgraded if needed."""
        configure_mappers()  # before the schema lock, see __init__
        return cls(engine_for_url(url), clock)

    def __repr__(self) -> str:
        return f"Ledger({safe_url(self._engine.url)})"

    __str__ = __repr__

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @contextmanager
    def session(self, write: bool = True) -> Iterator[Session]:
        """A session; use as ``with ledger.session() as s, s.begin():``."""
        with Session(self._writer if write else self._engine, expire_on_commit=False) as s:
            yield s

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the ledger clock returned a naive datetime; it must be timezone-aware")
        return now

    def _upsert(self, s: Session, table: Table, keys: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> int:
        """INSERT ... ON CONFLICT DO UPDATE of the given columns only, as executemany per column set."""
        groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = defaultdict(list)
        for row in rows:
            groups[tuple(sorted(row))].append(row)
        conn = s.connection()
        total = 0
        for columns, group in groups.items():
            stmt = self._insert(table)
            changes = {c: stmt.excluded[c] for c in columns if c not in keys}
            stmt = (
                stmt.on_conflict_do_update(index_elements=list(keys), set_=changes)
                if changes
                else stmt.on_conflict_do_nothing(index_elements=list(keys))
            )
            # RETURNING makes SQLAlchemy batch an upsert into multi-row VALUES ("insertmanyvalues");
            # without it, ON CONFLICT is sent one row at a time (SQLAlchemy #13130).
            stmt = stmt.returning(table.c[keys[0]])
            for chunk in _chunks(group):
                conn.execute(stmt, list(chunk)).close()
            total += len(group)
        return total

    # ---- orders -------------------------------------------------------------------------------

    def upsert_order(self, marketplace: str, mirakl_order_id: str, **fields: Any) -> OrderRecord:
        """Create the order or update only the given fields (see ORDER_FIELDS)."""
        _check_fields("order", fields, ORDER_FIELDS)
        _check_choice("order decision", fields.get("decision"), ORDER_DECISIONS)
        _check_aware(fields)
        if "detail" in fields:
            fields["detail"] = _jsonable(fields["detail"])
        row = {"marketplace": marketplace, "mirakl_order_id": mirakl_order_id, **fields, "updated_at": self._now()}
        with self.session() as s, s.begin():
            self._upsert(s, Order.__table__, ("marketplace", "mirakl_order_id"), [row])
            return self._load_orders(s, Order.marketplace == marketplace, Order.mirakl_order_id == mirakl_order_id)[0]

    def get_order(self, marketplace: str, mirakl_order_id: str) -> OrderRecord | None:
        with self.session(write=False) as s, s.begin():
            found = self._load_orders(s, Order.marketplace == marketplace, Order.mirakl_order_id == mirakl_order_id)
            return found[0] if found else None

    def set_order_lines(self, marketplace: str, mirakl_order_id: str, lines: Iterable[Mapping[str, Any]]) -> OrderRecord:
        """Create or update lines by ``mirakl_order_line_id`` (only the fields given); returns the order."""
        lines = list(lines)
        for line in lines:
            if not line.get("mirakl_order_line_id"):
                raise ValueError(f"order {mirakl_order_id}: every line needs a mirakl_order_line_id, got {dict(line)!r}")
            _check_fields("order line", set(line) - {"mirakl_order_line_id"}, LINE_FIELDS)
            _check_choice("line decision", line.get("decision"), LINE_DECISIONS)
        with self.session() as s, s.begin():
            order_id = s.scalar(
                select(Order.id)
                .where(Order.marketplace == marketplace, Order.mirakl_order_id == mirakl_order_id)
                .with_for_update()
            )
            if order_id is None:
                raise NotFoundError(f"no order {mirakl_order_id!r} on marketplace {marketplace!r} in the ledger")
            now = self._now()
            rows = [{**line, "order_id": order_id, "updated_at": now} for line in lines]
            self._upsert(s, OrderLine.__table__, ("order_id", "mirakl_order_line_id"), rows)
            s.execute(update(Order).where(Order.id == order_id).values(updated_at=now))
            return self._load_orders(s, Order.id == order_id)[0]

    def upsert_orders(
        self, marketplace: str, orders: Mapping[str, Mapping[str, Any]],
        lines: Mapping[str, Iterable[Mapping[str, Any]]] | None = None,
    ) -> dict[str, OrderRecord]:
        """:meth:`upsert_order` and :meth:`set_order_lines` for many orders in one transaction.

        ``orders``: the fields to set per Mirakl order id (empty for none but the lines');
        ``lines``: per order id, its lines as :meth:`set_order_lines` takes them. Returns the
        orders as stored, by id.
        """
        lines = {order_id: list(rows) for order_id, rows in (lines or {}).items()}
        now = self._now()
        order_rows = []
        for order_id, fields in {**{i: {} for i in lines}, **orders}.items():
            fields = dict(fields)
            _check_fields("order", fields, ORDER_FIELDS)
            _check_choice("order decision", fields.get("decision"), ORDER_DECISIONS)
            _check_aware(fields)
            if "detail" in fields:
                fields["detail"] = _jsonable(fields["detail"])
            order_rows.append({"marketplace": marketplace, "mirakl_order_id": order_id, **fields, "updated_at": now})
        for order_id, rows in lines.items():
            for line in rows:
                if not line.get("mirakl_order_line_id"):
                    raise ValueError(f"order {order_id}: every line needs a mirakl_order_line_id, got {dict(line)!r}")
                _check_fields("order line", set(line) - {"mirakl_order_line_id"}, LINE_FIELDS)
                _check_choice("line decision", line.get("decision"), LINE_DECISIONS)
        ids = [row["mirakl_order_id"] for row in order_rows]
        with self.session() as s, s.begin():
            self._upsert(s, Order.__table__, ("marketplace", "mirakl_order_id"), order_rows)
            if lines:
                db_ids = self._order_ids(s, marketplace, list(lines))
                self._upsert(s, OrderLine.__table__, ("order_id", "mirakl_order_line_id"), [
                    {**line, "order_id": db_ids[order_id], "updated_at": now}
                    for order_id, rows in lines.items() for line in rows])
            return self._orders_by_id(s, marketplace, ids)

    def get_orders(self, marketplace: str, mirakl_order_ids: Iterable[str]) -> dict[str, OrderRecord]:
        """The ledger's orders among ``mirakl_order_ids``, by id (absent ones left out)."""
        with self.session(write=False) as s, s.begin():
            return self._orders_by_id(s, marketplace, list(mirakl_order_ids))

    def _order_ids(self, s: Session, marketplace: str, mirakl_order_ids: Sequence[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for chunk in _chunks(mirakl_order_ids):
            found.update(s.execute(select(Order.mirakl_order_id, Order.id).where(
                Order.marketplace == marketplace, Order.mirakl_order_id.in_(chunk))).all())
        return found

    def _orders_by_id(self, s: Session, marketplace: str, mirakl_order_ids: Sequence[str]) -> dict[str, OrderRecord]:
        found: dict[str, OrderRecord] = {}
        for chunk in _chunks(mirakl_order_ids):
            for record in self._load_orders(s, Order.marketplace == marketplace, Order.mirakl_order_id.in_(chunk)):
                found[record.mirakl_order_id] = record
        return found

    def orders_in_states(self, marketplace: str, states: Iterable[str]) -> list[OrderRecord]:
        with self.session(write=False) as s, s.begin():
            return self._load_orders(s, Order.marketplace == marketplace, Order.mirakl_state.in_(list(states)))

    def find_order_by_woo_id(self, woo_order_id: int, marketplace: str | None = None) -> OrderRecord | None:
        conditions = [Order.woo_order_id == woo_order_id]
        if marketplace is not None:
            conditions.append(Order.marketplace == marketplace)
        with self.session(write=False) as s, s.begin():
            found = self._load_orders(s, *conditions)
            return found[0] if found else None

    def pending_demand(self, marketplace: str, states: Iterable[str]) -> dict[str, int]:
        """Quantity per SKU on orders in `states` that have no WooCommerce order yet (not refused lines)."""
        with self.session(write=False) as s, s.begin():
            rows = s.execute(
                select(OrderLine.offer_sku, func.sum(OrderLine.quantity))
                .join(Order, Order.id == OrderLine.order_id)
                .where(
                    Order.marketplace == marketplace,
                    Order.mirakl_state.in_(list(states)),
                    Order.woo_order_id.is_(None),
                    OrderLine.offer_sku.is_not(None),
                    (OrderLine.decision.is_(None)) | (OrderLine.decision != "refused"),
                )
                .group_by(OrderLine.offer_sku)
            )
            return {sku: int(qty or 0) for sku, qty in rows}

    def order_counts_by_state(self, marketplace: str, since: dt.datetime | None = None) -> dict[str, int]:
        """Orders per Mirakl state (updated since `since`), for the order funnel."""
        query = select(Order.mirakl_state, func.count()).where(Order.marketplace == marketplace)
        if since is not None:
            query = query.where(Order.updated_at >= since)
        with self.session(write=False) as s, s.begin():
            return {state: count for state, count in s.execute(query.group_by(Order.mirakl_state))}

    def _load_orders(self, s: Session, *conditions: Any) -> list[OrderRecord]:
        orders = s.execute(select(Order).where(*conditions).order_by(Order.id)).scalars().all()
        lines: dict[int, list[OrderLineRecord]] = defaultdict(list)
        for chunk in _chunks([o.id for o in orders]):
            query = select(OrderLine).where(OrderLine.order_id.in_(chunk)).order_by(OrderLine.id)
            for line in s.execute(query).scalars():
                lines[line.order_id].append(_record(OrderLineRecord, line))
        return [_record(OrderRecord, o, lines=tuple(lines[o.id])) for o in orders]

    # ---- actions ------------------------------------------------------------------------------

    def begin_action(
        self, key: str, kind: str, target: str | None, request: Mapping[str, Any], marketplace: str,
        *, supersede: bool = False,
    ) -> ActionRecord:
        """Record the intent of a mutating call before making it (see ActionRecord for the states).

        ``started_at`` keeps the first attempt's time (so an action retried every cycle still looks
        as old as it is); ``last_attempt_at`` is the latest. Raises ActionConflictError if `key` was
        used before with a different kind or request, unless ``supersede``: an absolute update whose
        content changed (an address corrected, a tracking number fixed) starts a new generation of
        the action in state ``intent``; whatever an earlier generation did, the new content wins.
        """
        with self.session() as s, s.begin():
            return self._begin_action(s, key, kind, target, request, marketplace, supersede, self._now())

    def begin_actions(self, writes: Sequence[Mapping[str, Any]], marketplace: str) -> list[ActionRecord]:
        """:meth:`begin_action` for many writes in one transaction (``key``, ``kind``, ``target``,
        ``request`` and optionally ``supersede`` each): every intent is committed before any call."""
        now = self._now()
        with self.session() as s, s.begin():
            return [self._begin_action(s, w["key"], w["kind"], w.get("target"), w["request"], marketplace,
                                       bool(w.get("supersede")), now) for w in writes]

    def _begin_action(
        self, s: Session, key: str, kind: str, target: str | None, request: Mapping[str, Any], marketplace: str,
        supersede: bool, now: dt.datetime,
    ) -> ActionRecord:
        digest = request_digest(request)
        inserted = s.connection().execute(
            self._insert(Action.__table__)
            .values(
                idempotency_key=key, marketplace=marketplace, kind=kind, target=target, request_digest=digest,
                state="intent", attempts=1, started_at=now, last_attempt_at=now, created_at=now, generation=1,
            )
            .on_conflict_do_nothing(index_elements=["idempotency_key"])
        )
        action = s.execute(select(Action).where(Action.idempotency_key == key).with_for_update()).scalar_one()
        if inserted.rowcount == 1:
            return _record(ActionRecord, action, created=True)
        if action.kind != kind or (action.request_digest != digest and not supersede):
            raise ActionConflictError(
                f"action {key!r} ({action.kind}, state {action.state}) was begun with a different request "
                f"(digest {action.request_digest[:12]}… vs {digest[:12]}…, kind {kind}); "
                "a request is never sent twice with different content"
            )
        if action.request_digest != digest:
            action.request_digest = digest
            action.generation += 1
            action.state = "intent"
            action.attempts = 1
            action.started_at = now
            action.last_attempt_at = now
            action.finished_at = None
            action.outcome = None
            action.retryable = None
        elif action.state == "intent" or action.state == "uncertain":
            # A previous attempt stopped between intent and outcome: the request may have landed.
            action.state = "uncertain"
            action.attempts += 1
            action.last_attempt_at = now
        elif action.state == "failed" and action.retryable:
            action.state = "intent"
            action.attempts += 1
            action.last_attempt_at = now
            action.finished_at = None
        s.flush()
        return _record(ActionRecord, action)

    def complete_action(self, key: str, outcome: Mapping[str, Any] | None = None) -> ActionRecord:
        """The call succeeded (or its effect was found): record the outcome."""
        return self._finish_action(key, state="done", outcome=_jsonable(outcome), error=None, retryable=None)

    def fail_action(self, key: str, error: str, retryable: bool) -> ActionRecord:
        """The call failed for sure; a retryable failure is sent again by the next begin_action."""
        return self._finish_action(key, state="failed", outcome=None, error=error, retryable=retryable)

    def mark_action_uncertain(self, key: str, error: str) -> ActionRecord:
        """The call may or may not have landed (timeout, dropped connection): check before resending."""
        return self._finish_action(key, state="uncertain", outcome=None, error=error, retryable=True)

    def _finish_action(
        self, key: str, state: str, outcome: dict[str, Any] | None, error: str | None, retryable: bool | None
    ) -> ActionRecord:
        with self.session() as s, s.begin():
            return self._finish(s, key, state, outcome, error, retryable, self._now())

    def finish_actions(self, finishes: Sequence[Mapping[str, Any]]) -> list[ActionRecord]:
        """Many outcomes in one transaction: each a mapping of ``key``, ``state`` (done, failed or
        uncertain), ``outcome``, ``error`` and ``retryable``, as the single-action methods record them."""
        now = self._now()
        with self.session() as s, s.begin():
            return [self._finish(s, f["key"], f["state"], _jsonable(f.get("outcome")), f.get("error"),
                                 f.get("retryable"), now) for f in finishes]

    def _finish(self, s: Session, key: str, state: str, outcome: dict[str, Any] | None, error: str | None,
                retryable: bool | None, now: dt.datetime) -> ActionRecord:
        _check_choice("action outcome state", state, ("done", "failed", "uncertain"))
        action = s.execute(select(Action).where(Action.idempotency_key == key).with_for_update()).scalar_one_or_none()
        if action is None:
            raise NotFoundError(f"no action with idempotency key {key!r}; call begin_action first")
        action.state = state
        action.outcome = outcome
        action.error = error
        action.retryable = retryable
        action.finished_at = now
        s.flush()
        return _record(ActionRecord, action)

    def get_action(self, key: str) -> ActionRecord | None:
        with self.session(write=False) as s, s.begin():
            action = s.execute(select(Action).where(Action.idempotency_key == key)).scalar_one_or_none()
            return None if action is None else _record(ActionRecord, action)

    def actions_for_target(self, kind: str, target: str) -> list[ActionRecord]:
        with self.session(write=False) as s, s.begin():
            query = select(Action).where(Action.kind == kind, Action.target == target).order_by(Action.id)
            return [_record(ActionRecord, a) for a in s.execute(query).scalars()]

    def stuck_actions(
        self, older_than: dt.timedelta, marketplace: str | None = None, states: Sequence[str] | None = None
    ) -> list[ActionRecord]:
        """Unfinished actions whose *first* attempt was more than `older_than` ago.

        Unfinished: in intent, uncertain, or failed and due to be retried (an action that fails
        again every cycle is as stuck as one that never answers); `states` narrows it.
        """
        unfinished = Action.state.in_(["intent", "uncertain"]) | ((Action.state == "failed") & Action.retryable.is_(True))
        query = select(Action).where(
            Action.state.in_(list(states)) if states is not None else unfinished,
            Action.started_at < self._now() - older_than,
        )
        if marketplace is not None:
            query = query.where(Action.marketplace == marketplace)
        with self.session(write=False) as s, s.begin():
            return [_record(ActionRecord, a) for a in s.execute(query.order_by(Action.started_at)).scalars()]

    # ---- offer state --------------------------------------------------------------------------

    def upsert_offer_states(self, marketplace: str, rows: Iterable[Mapping[str, Any]]) -> int:
        """Bulk upsert by SKU of the given fields (see OFFER_FIELDS); returns the number of rows."""
        now = self._now()
        prepared = []
        for row in rows:
            if not row.get("sku"):
                raise ValueError(f"every offer state row needs a sku, got {dict(row)!r}")
            _check_fields("offer state", set(row) - {"sku"}, OFFER_FIELDS)
            prepared.append({**row, "marketplace": marketplace, "updated_at": now})
        with self.session() as s, s.begin():
            return self._upsert(s, OfferState.__table__, ("marketplace", "sku"), prepared)

    def mark_offers_pushed(
        self,
        marketplace: str,
        import_id: str,
        quantities: Mapping[str, int] | None = None,
        prices: Mapping[str, Decimal] | None = None,
    ) -> int:
        """Record what one STO01 (quantities) or PRI01 (prices) import sent, pending its result."""
        rows: list[dict[str, Any]] = []
        for sku, quantity in (quantities or {}).items():
            rows.append({"sku": sku, "last_pushed_quantity": quantity, "pending_quantity_import_id": import_id})
        for sku, price in (prices or {}).items():
            rows.append({"sku": sku, "last_pushed_price": price, "pending_price_import_id": import_id})
        return self.upsert_offer_states(marketplace, rows)

    def mark_import_result(self, marketplace: str, import_id: str, rejected: Mapping[str, str]) -> dict[str, int]:
        """Apply an import's report: rejected SKUs keep their error, the others become accepted."""
        t = OfferState.__table__
        now = self._now()
        counts = {"accepted": 0, "rejected": 0}
        with self.session() as s, s.begin():
            conn = s.connection()
            for pending, pushed, accepted in (
                (t.c.pending_quantity_import_id, t.c.last_pushed_quantity, t.c.last_accepted_quantity),
                (t.c.pending_price_import_id, t.c.last_pushed_price, t.c.last_accepted_price),
            ):
                where = (t.c.marketplace == marketplace, pending == import_id)
                pending_skus = set(conn.scalars(select(t.c.sku).where(*where)))
                params = [{"b_sku": sku, "b_error": error} for sku, error in rejected.items() if sku in pending_skus]
                reject = (
                    update(t)
                    .where(*where, t.c.sku == bindparam("b_sku"))
                    .values({pending: None, t.c.last_error: bindparam("b_error"), t.c.updated_at: now})
                )
                for chunk in _chunks(params):
                    conn.execute(reject, list(chunk))
                counts["rejected"] += len(params)
                accept = update(t).where(*where).values({accepted: pushed, pending: None, t.c.last_error: None, t.c.updated_at: now})
                counts["accepted"] += conn.execute(accept).rowcount
        return counts

    def offer_states(self, marketplace: str, skus: Iterable[str] | None = None) -> dict[str, OfferStateRecord]:
        """Offer state by SKU: all of the marketplace's, or only `skus`."""
        t = OfferState.__table__
        base = select(t).where(t.c.marketplace == marketplace)
        with self.session(write=False) as s, s.begin():
            if skus is None:
                result = s.execute(base)
                return {row.sku: _record(OfferStateRecord, row) for row in result}
            states: dict[str, OfferStateRecord] = {}
            for chunk in _chunks(list(dict.fromkeys(skus))):
                for row in s.execute(base.where(t.c.sku.in_(chunk))):
                    states[row.sku] = _record(OfferStateRecord, row)
            return states

    # ---- exceptions ---------------------------------------------------------------------------

    def raise_exception(
        self, kind: str, key: str, detail: Mapping[str, Any] | None, marketplace: str, severity: str = "error"
    ) -> ExceptionRecord:
        """Open an exception, or bump one already open (count, last seen); reopen a resolved one.

        A raise at a higher severity than the open one's (an acceptance deadline going from warning
        to critical) makes it due for one more alert: news for on-call, not a repeat.
        """
        _check_choice("severity", severity, SEVERITIES)
        now = self._now()
        detail = _jsonable(detail)
        with self.session() as s, s.begin():
            inserted = s.connection().execute(
                self._insert(LedgerException.__table__)
                .values(
                    marketplace=marketplace, kind=kind, key=key, detail=detail, severity=severity, status="open",
                    count=1, first_seen=now, last_seen=now, opened_at=now,
                )
                .on_conflict_do_nothing(index_elements=["marketplace", "kind", "key"])
            )
            record = self._exception_for_update(s, kind, key, marketplace)
            if inserted.rowcount == 1:
                return _record(ExceptionRecord, record, newly_opened=True)
            reopened = record.status == "resolved"
            if not reopened and SEVERITIES.index(severity) > SEVERITIES.index(record.severity):
                record.notified_at = None  # escalated: alerts once more (the claim wins it again)
            record.count += 1
            record.last_seen = now
            record.detail = detail
            record.severity = severity
            if reopened:
                record.status = "open"
                record.opened_at = now
                record.resolved_at = None
                record.acknowledged_by = None
                record.acknowledged_at = None
            s.flush()
            return _record(ExceptionRecord, record, newly_opened=reopened)

    def raise_exceptions(self, kind: str, details: Mapping[str, Mapping[str, Any] | None], marketplace: str,
                         severity: str = "error") -> int:
        """:meth:`raise_exception` for many keys of one kind in one transaction (a full comparison
        may find thousands of unmatched SKUs at once); returns how many were newly opened or reopened."""
        _check_choice("severity", severity, SEVERITIES)
        now = self._now()
        t = LedgerException.__table__
        opened = 0
        with self.session() as s, s.begin():
            for chunk in _chunks(list(details)):
                existing = dict(s.execute(select(t.c.key, t.c.status).where(
                    t.c.marketplace == marketplace, t.c.kind == kind, t.c.key.in_(chunk))).all())
                new = [{"marketplace": marketplace, "kind": kind, "key": key, "detail": _jsonable(details[key]),
                        "severity": severity, "status": "open", "count": 1, "first_seen": now, "last_seen": now,
                        "opened_at": now} for key in chunk if key not in existing]
                if new:
                    s.connection().execute(self._insert(t).values(new).on_conflict_do_nothing(
                        index_elements=["marketplace", "kind", "key"]))
                reopen = [k for k, status in existing.items() if status == "resolved"]
                if existing:
                    s.execute(update(t).where(t.c.marketplace == marketplace, t.c.kind == kind,
                                              t.c.key.in_(list(existing)))
                              .values(count=t.c.count + 1, last_seen=now, severity=severity))
                if reopen:
                    s.execute(update(t).where(t.c.marketplace == marketplace, t.c.kind == kind, t.c.key.in_(reopen))
                              .values(status="open", opened_at=now, resolved_at=None, acknowledged_by=None,
                                      acknowledged_at=None))
                opened += len(new) + len(reopen)
        return opened

    def resolve_exception(self, kind: str, key: str, marketplace: str) -> bool:
        """Resolve one exception; False if there was none unresolved."""
        with self.session() as s, s.begin():
            return bool(self._resolve(s, marketplace, kind, [key]))

    def resolve_exceptions(self, kind: str, keys: Iterable[str], marketplace: str) -> list[str]:
        """:meth:`resolve_exception` for many keys in one transaction; returns those resolved."""
        keys = list(keys)
        if not keys:
            return []
        with self.session() as s, s.begin():
            return self._resolve(s, marketplace, kind, keys)

    def resolve_missing(self, kind: str, marketplace: str, still_open_keys: Iterable[str]) -> list[str]:
        """Resolve the exceptions of `kind` whose key was not seen in this run; returns their keys."""
        still_open = set(still_open_keys)
        t = LedgerException.__table__
        with self.session() as s, s.begin():
            unresolved = s.scalars(
                select(t.c.key).where(t.c.marketplace == marketplace, t.c.kind == kind, t.c.status != "resolved")
            ).all()
            return self._resolve(s, marketplace, kind, [k for k in unresolved if k not in still_open])

    def _resolve(self, s: Session, marketplace: str, kind: str, keys: Sequence[str]) -> list[str]:
        t = LedgerException.__table__
        now = self._now()
        resolved: list[str] = []
        for chunk in _chunks(list(keys)):
            result = s.execute(
                update(t)
                .where(t.c.marketplace == marketplace, t.c.kind == kind, t.c.key.in_(chunk), t.c.status != "resolved")
                .values(status="resolved", resolved_at=now)
                .returning(t.c.key)
            )
            resolved.extend(result.scalars())
        return resolved

    def acknowledge(self, exception_id: int, by: str) -> ExceptionRecord:
        """A person has seen it; it stays visible until it clears. A resolved one is left as is."""
        if not by:
            raise ValueError("acknowledge needs the name of who acknowledged")
        with self.session() as s, s.begin():
            record = s.execute(
                select(LedgerException).where(LedgerException.id == exception_id).with_for_update()
            ).scalar_one_or_none()
            if record is None:
                raise NotFoundError(f"no exception with id {exception_id}")
            if record.status != "resolved":
                record.status = "acknowledged"
                record.acknowledged_by = by
                record.acknowledged_at = self._now()
                s.flush()
            return _record(ExceptionRecord, record)

    def mark_exceptions_notified(self, exception_ids: Iterable[int]) -> int:
        """Remember that an alert went out for these (for the alert quiet period)."""
        ids = list(exception_ids)
        now = self._now()
        count = 0
        with self.session() as s, s.begin():
            for chunk in _chunks(ids):
                count += s.execute(
                    update(LedgerException).where(LedgerException.id.in_(chunk)).values(notified_at=now)
                ).rowcount
        return count

    def claim_first_alerts(self, exception_ids: Iterable[int]) -> list[int]:
        """Claim the first alert of each open exception since it (re)opened or escalated; returns the
        ids won.

        One conditional update per id, so of two tasks finishing together only one alerts.
        """
        won: list[int] = []
        t = LedgerException
        now = self._now()
        with self.session() as s, s.begin():
            for exception_id in exception_ids:
                claimed = s.execute(update(t).where(
                    t.id == exception_id, t.status == "open",
                    or_(t.notified_at.is_(None), t.notified_at < t.opened_at),
                ).values(notified_at=now)).rowcount
                if claimed:
                    won.append(exception_id)
        return won

    def release_alerts(self, exception_ids: Iterable[int]) -> int:
        """Undo :meth:`claim_first_alerts` when nothing was delivered: they are due again."""
        ids = list(exception_ids)
        with self.session() as s, s.begin():
            return s.execute(update(LedgerException).where(LedgerException.id.in_(ids))
                             .values(notified_at=None)).rowcount if ids else 0

    def open_exceptions(
        self, marketplace: str | None = None, kind: str | None = None, include_acknowledged: bool = True
    ) -> list[ExceptionRecord]:
        """Unresolved exceptions, oldest first."""
        statuses = ["open", "acknowledged"] if include_acknowledged else ["open"]
        query = select(LedgerException).where(LedgerException.status.in_(statuses))
        if marketplace is not None:
            query = query.where(LedgerException.marketplace == marketplace)
        if kind is not None:
            query = query.where(LedgerException.kind == kind)
        with self.session(write=False) as s, s.begin():
            rows = s.execute(query.order_by(LedgerException.first_seen, LedgerException.id)).scalars()
            return [_record(ExceptionRecord, r) for r in rows]

    def get_exception(self, kind: str, key: str, marketplace: str) -> ExceptionRecord | None:
        with self.session(write=False) as s, s.begin():
            record = s.execute(
                select(LedgerException).where(
                    LedgerException.marketplace == marketplace, LedgerException.kind == kind, LedgerException.key == key
                )
            ).scalar_one_or_none()
            return None if record is None else _record(ExceptionRecord, record)

    def _exception_for_update(self, s: Session, kind: str, key: str, marketplace: str) -> LedgerException:
        return s.execute(
            select(LedgerException)
            .where(LedgerException.marketplace == marketplace, LedgerException.kind == kind, LedgerException.key == key)
            .with_for_update()
        ).scalar_one()

    # ---- cursors and sync runs ----------------------------------------------------------------

    def get_cursor(self, flow: str, marketplace: str, name: str, default: Any = None) -> Any:
        """The JSON value stored by set_cursor, or `default`."""
        with self.session(write=False) as s, s.begin():
            value = s.scalar(
                select(Cursor.value).where(Cursor.flow == flow, Cursor.marketplace == marketplace, Cursor.name == name)
            )
        return default if value is None else json.loads(value)

    def set_cursor(self, flow: str, marketplace: str, name: str, value: Any) -> None:
        """Store a JSON-serialisable value (datetimes are stored as ISO strings)."""
        row = {"flow": flow, "marketplace": marketplace, "name": name, "value": canonical_json(value), "updated_at": self._now()}
        with self.session() as s, s.begin():
            self._upsert(s, Cursor.__table__, ("flow", "marketplace", "name"), [row])

    def record_sync_success(
        self, flow: str, marketplace: str, run_id: str | None = None, summary: Mapping[str, Any] | None = None
    ) -> None:
        now = self._now()
        row = {
            "flow": flow, "marketplace": marketplace, "last_success_at": now, "last_run_id": run_id,
            "last_summary": _jsonable(summary), "updated_at": now,
        }
        with self.session() as s, s.begin():
            self._upsert(s, SyncRun.__table__, ("flow", "marketplace"), [row])

    def record_sync_failure(self, flow: str, marketplace: str, error: str) -> None:
        now = self._now()
        row = {"flow": flow, "marketplace": marketplace, "last_failure_at": now, "last_error": error, "updated_at": now}
        with self.session() as s, s.begin():
            self._upsert(s, SyncRun.__table__, ("flow", "marketplace"), [row])

    def sync_status(self, marketplace: str | None = None) -> list[SyncStatus]:
        query = select(SyncRun).order_by(SyncRun.marketplace, SyncRun.flow)
        if marketplace is not None:
            query = query.where(SyncRun.marketplace == marketplace)
        with self.session(write=False) as s, s.begin():
            return [_record(SyncStatus, r) for r in s.execute(query).scalars()]

    # ---- call budget --------------------------------------------------------------------------

    def acquire_call_slot(
        self, scope: str, operation: str, limits: Sequence[tuple[int, float]], now: dt.datetime
    ) -> dt.datetime | None:
        """Take a call slot if every (max_calls, window_seconds) limit allows it.

        Returns None when the call is allowed (and recorded at `now`), otherwise records nothing and
        returns the earliest time at which a call would be allowed. Atomic across processes.
        """
        if not limits:
            raise ValueError(f"{scope}/{operation}: acquire_call_slot needs at least one (max_calls, window_seconds) limit")
        for max_calls, window in limits:
            if int(max_calls) < 1 or float(window) <= 0:
                raise ValueError(f"{scope}/{operation}: invalid limit ({max_calls}, {window}); need max_calls >= 1, window > 0")
        if now.tzinfo is None:
            raise ValueError("acquire_call_slot needs a timezone-aware `now`")
        calls = CallBudgetCall.__table__
        budget = CallBudget.__table__
        longest = dt.timedelta(seconds=max(float(w) for _, w in limits))
        mine = (calls.c.scope == scope, calls.c.operation == operation)
        with self.session() as s, s.begin():
            conn = s.connection()
            conn.execute(
                self._insert(budget).values(scope=scope, operation=operation).on_conflict_do_nothing(
                    index_elements=["scope", "operation"]
                )
            )
            # The row lock serialises deciders on PostgreSQL; on SQLite BEGIN IMMEDIATE already has.
            conn.execute(
                select(budget.c.scope).where(budget.c.scope == scope, budget.c.operation == operation).with_for_update()
            )
            conn.execute(delete(calls).where(*mine, calls.c.called_at <= now - longest))
            times = sorted(conn.scalars(select(calls.c.called_at).where(*mine)))
            allowed_at = _earliest_allowed(times, limits, now)
            if allowed_at is not None:
                return allowed_at
            conn.execute(calls.insert().values(scope=scope, operation=operation, called_at=now))
            conn.execute(
                update(budget)
                .where(budget.c.scope == scope, budget.c.operation == operation)
                .where((budget.c.last_call_at.is_(None)) | (budget.c.last_call_at < now))
                .values(last_call_at=now)
            )
            return None

    def last_call(self, scope: str, operation: str) -> dt.datetime | None:
        with self.session(write=False) as s, s.begin():
            return s.scalar(select(CallBudget.last_call_at).where(CallBudget.scope == scope, CallBudget.operation == operation))

    def shift_call_times(self, seconds: float) -> None:
        """Move every recorded call time by `seconds` (negative = into the past, as when a simulated clock advances)."""
        delta = dt.timedelta(seconds=seconds)
        with self.session() as s, s.begin():
            conn = s.connection()
            for table, key_cols, time_col in (
                (CallBudgetCall.__table__, ("id",), "called_at"),
                (CallBudget.__table__, ("scope", "operation"), "last_call_at"),
            ):
                rows = conn.execute(select(*[table.c[k] for k in key_cols], table.c[time_col]).where(table.c[time_col].is_not(None))).all()
                if not rows:
                    continue
                stmt = update(table).where(*[table.c[k] == bindparam(f"b_{k}") for k in key_cols]).values(
                    {time_col: bindparam("b_time")}
                )
                params = [{**{f"b_{k}": row[i] for i, k in enumerate(key_cols)}, "b_time": row[-1] + delta} for row in rows]
                for chunk in _chunks(params):
                    conn.execute(stmt, list(chunk))

    # ---- reconciliation -----------------------------------------------------------------------

    def replace_reconciliation_results(
        self, marketplace: str, run_date: dt.date, rows: Iterable[Mapping[str, Any]]
    ) -> int:
        """Replace one day's findings (so a backfill overwrites that day only)."""
        now = self._now()
        prepared = []
        for row in rows:
            _check_fields("reconciliation result", row, RECONCILIATION_FIELDS)
            if not row.get("finding_kind"):
                raise ValueError(f"every reconciliation result needs a finding_kind, got {dict(row)!r}")
            prepared.append(
                {
                    **{f: None for f in RECONCILIATION_FIELDS},
                    **row,
                    "detail": _jsonable(row.get("detail")),
                    "marketplace": marketplace,
                    "run_date": run_date,
                    "created_at": now,
                }
            )
        t = ReconciliationResult.__table__
        with self.session() as s, s.begin():
            conn = s.connection()
            conn.execute(delete(t).where(t.c.marketplace == marketplace, t.c.run_date == run_date))
            for chunk in _chunks(prepared):
                conn.execute(t.insert(), list(chunk))
        return len(prepared)

    def reconciliation_results(self, marketplace: str, run_date: dt.date) -> list[dict[str, Any]]:
        t = ReconciliationResult.__table__
        columns = [t.c.run_date, t.c.marketplace, *[t.c[f] for f in sorted(RECONCILIATION_FIELDS)]]
        with self.session(write=False) as s, s.begin():
            result = s.execute(select(*columns).where(t.c.marketplace == marketplace, t.c.run_date == run_date).order_by(t.c.id))
            return [dict(row._mapping) for row in result]


def _earliest_allowed(
    times: Sequence[dt.datetime], limits: Sequence[tuple[int, float]], now: dt.datetime
) -> dt.datetime | None:
    """None if a call at `now` respects every limit, else the first time at which it would."""
    allowed_at: dt.datetime | None = None
    for max_calls, window_seconds in limits:
        window = dt.timedelta(seconds=float(window_seconds))
        in_window = [t for t in times if t > now - window]
        if len(in_window) >= int(max_calls):
            # The call that must age out before one more fits in this window.
            candidate = in_window[len(in_window) - int(max_calls)] + window
            allowed_at = candidate if allowed_at is None else max(allowed_at, candidate)
    return allowed_at


def get_ledger(conn_id: str = DEFAULT_CONN_ID, clock: Callable[[], dt.datetime] | None = None) -> Ledger:
    """The ledger named by the Airflow connection `conn_id` (one engine per URL per process)."""
    from airflow.sdk import BaseHook  # imported here: models and repository load without Airflow

    return Ledger.from_url(ledger_url_from_connection(BaseHook.get_connection(conn_id)), clock)
