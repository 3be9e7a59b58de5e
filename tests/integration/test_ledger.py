"""The ledger against real databases: an SQLite file and a throw-away PostgreSQL database.

Races run in separate processes that start together behind a barrier, as Airflow tasks on
several workers would.
"""
from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import secrets
import traceback
from decimal import Decimal

import pytest
from airflow.sdk import Connection
from sqlalchemy import event, func, make_url, select
from sqlalchemy.orm import configure_mappers

from include.woo_mirakl.ledger import (
    SCHEMA_VERSION,
    ActionConflictError,
    Ledger,
    LedgerError,
    LedgerUnavailableError,
    NotFoundError,
    dispose_engines,
    ensure_schema,
    get_ledger,
    ledger_url_from_connection,
    request_digest,
)
from include.woo_mirakl.ledger.db import create_ledger_engine
from include.woo_mirakl.ledger.models import CallBudgetCall, SchemaVersion

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
SECRET = "Sup3r-Secret-Pw"
MP = "sandbox"
FORK = multiprocessing.get_context("fork")


class FakeClock:
    """A settable clock for the ledger's own timestamps."""

    def __init__(self, start: dt.datetime = T0):
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += dt.timedelta(**delta)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(ledger_url, clock) -> Ledger:
    return Ledger.from_url(ledger_url, clock=clock)


def _run_racers(target, args_per_process: list[tuple]) -> list:
    """Start one process per args tuple behind a shared barrier; return what each put on the queue."""
    # Airflow's one-off model import on first mapper use would otherwise run in every child at once.
    configure_mappers()
    barrier = FORK.Barrier(len(args_per_process))
    results = FORK.Queue()
    processes = [FORK.Process(target=_racer, args=(target, barrier, results, *args)) for args in args_per_process]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for p in processes:
        p.join(timeout=60)
    errors = [o[1] for o in outcomes if o[0] == "error"]
    assert not errors, "\n".join(errors)
    assert all(p.exitcode == 0 for p in processes)
    return [o[1] for o in outcomes]


def _racer(target, barrier, results, *args) -> None:
    try:
        results.put(("ok", target(barrier, *args)))
    except BaseException:  # noqa: BLE001 - report anything to the parent, which fails the test
        results.put(("error", traceback.format_exc()))


def _open_and_write(barrier, url: str, order_id: str) -> str:
    barrier.wait()
    Ledger.from_url(url).upsert_order(MP, order_id, mirakl_state="WAITING_ACCEPTANCE")
    return order_id


def _take_slot(barrier, url: str, now: dt.datetime) -> dt.datetime | None:
    ledger = Ledger.from_url(url)
    barrier.wait()
    return ledger.acquire_call_slot(MP, "OR11", [(1, 60)], now)


def _begin_same_action(barrier, url: str) -> bool:
    ledger = Ledger.from_url(url)
    barrier.wait()
    return ledger.begin_action("woo.order.create:race-1", "woo.order.create", "race-1", {"lines": [1, 2]}, MP).created


# ---- schema -----------------------------------------------------------------------------------


def test_schema_is_created_once_when_processes_start_together(ledger_url):
    written = _run_racers(_open_and_write, [(ledger_url, f"ORDER-{i}") for i in range(4)])

    ledger = Ledger.from_url(ledger_url)
    assert sorted(written) == [f"ORDER-{i}" for i in range(4)]
    assert sorted(o.mirakl_order_id for o in ledger.orders_in_states(MP, ["WAITING_ACCEPTANCE"])) == sorted(written)
    with ledger.session(write=False) as s, s.begin():
        assert s.scalars(select(SchemaVersion.version)).all() == [SCHEMA_VERSION]


def test_a_schema_newer_than_the_code_is_refused(ledger):
    with ledger.session() as s, s.begin():
        s.add(SchemaVersion(version=SCHEMA_VERSION + 1, description="from the future"))
    engine = create_ledger_engine(ledger._engine.url.render_as_string(hide_password=False))
    try:
        with pytest.raises(LedgerError, match=f"version {SCHEMA_VERSION + 1}, newer than this code"):
            ensure_schema(engine)
    finally:
        engine.dispose()


# ---- orders -----------------------------------------------------------------------------------


def test_orders_upsert_only_the_given_fields_and_keep_lines(ledger, clock):
    deadline = T0 + dt.timedelta(hours=24)
    ledger.upsert_order(MP, "A-1", commercial_id="C-1", mirakl_state="WAITING_ACCEPTANCE", acceptance_deadline=deadline,
                        currency="EUR", total_price=Decimal("41.90"), detail={"customer": "Zoë"})
    ledger.upsert_order("other", "A-1", mirakl_state="SHIPPING")  # same id on another marketplace is another order
    ledger.set_order_lines(MP, "A-1", [
        {"mirakl_order_line_id": "A-1-1", "offer_sku": "SKU-1", "quantity": 2, "price": Decimal("10.95")},
        {"mirakl_order_line_id": "A-1-2", "offer_sku": "SKU-2", "quantity": 1, "price": Decimal("20.00")},
    ])
    clock.advance(minutes=5)
    ledger.set_order_lines(MP, "A-1", [{"mirakl_order_line_id": "A-1-2", "decision": "refused", "decision_reason": "short stock"}])
    order = ledger.upsert_order(MP, "A-1", woo_order_id=501, woo_status="on-hold", decision="partially")

    assert (order.commercial_id, order.mirakl_state, order.woo_order_id, order.decision) == ("C-1", "WAITING_ACCEPTANCE", 501, "partially")
    assert order.acceptance_deadline == deadline and order.acceptance_deadline.tzinfo is not None
    assert order.total_price == Decimal("41.90") and order.detail == {"customer": "Zoë"}
    assert order.updated_at == T0 + dt.timedelta(minutes=5)
    assert [(line.offer_sku, line.quantity, line.price, line.decision) for line in order.lines] == [
        ("SKU-1", 2, Decimal("10.95"), None),
        ("SKU-2", 1, Decimal("20.00"), "refused"),
    ]
    assert ledger.get_order("other", "A-1").mirakl_state == "SHIPPING"
    assert ledger.find_order_by_woo_id(501).mirakl_order_id == "A-1"
    assert ledger.find_order_by_woo_id(501, marketplace="other") is None
    assert ledger.get_order(MP, "missing") is None


def test_order_queries_for_the_flows(ledger):
    ledger.upsert_order(MP, "W-1", mirakl_state="WAITING_ACCEPTANCE")
    ledger.upsert_order(MP, "W-2", mirakl_state="WAITING_ACCEPTANCE", woo_order_id=7)  # already reserved in WooCommerce
    ledger.upsert_order(MP, "S-1", mirakl_state="SHIPPING")
    ledger.set_order_lines(MP, "W-1", [
        {"mirakl_order_line_id": "W-1-1", "offer_sku": "SKU-1", "quantity": 3},
        {"mirakl_order_line_id": "W-1-2", "offer_sku": "SKU-2", "quantity": 4, "decision": "refused"},
    ])
    ledger.set_order_lines(MP, "W-2", [{"mirakl_order_line_id": "W-2-1", "offer_sku": "SKU-1", "quantity": 5}])

    assert {o.mirakl_order_id for o in ledger.orders_in_states(MP, ["WAITING_ACCEPTANCE"])} == {"W-1", "W-2"}
    assert ledger.pending_demand(MP, ["WAITING_ACCEPTANCE"]) == {"SKU-1": 3}
    assert ledger.order_counts_by_state(MP) == {"WAITING_ACCEPTANCE": 2, "SHIPPING": 1}


def test_bad_order_input_gets_a_specific_error(ledger):
    with pytest.raises(ValueError, match=r"unknown order field\(s\) \['colour'\]"):
        ledger.upsert_order(MP, "B-1", colour="red")
    with pytest.raises(ValueError, match="order decision must be one of"):
        ledger.upsert_order(MP, "B-1", decision="maybe")
    with pytest.raises(ValueError, match="acceptance_deadline: naive datetime"):
        ledger.upsert_order(MP, "B-1", acceptance_deadline=dt.datetime(2026, 3, 2, 9, 0))
    with pytest.raises(NotFoundError, match="no order 'B-404'"):
        ledger.set_order_lines(MP, "B-404", [{"mirakl_order_line_id": "x", "quantity": 1}])
    ledger.upsert_order(MP, "B-1")
    with pytest.raises(ValueError, match="needs a mirakl_order_line_id"):
        ledger.set_order_lines(MP, "B-1", [{"quantity": 1}])


# ---- actions ----------------------------------------------------------------------------------


def test_action_intent_outcome_and_dedupe(ledger, clock):
    request = {"lines": [{"id": "L1", "accepted": True}], "amount": Decimal("10.50")}
    first = ledger.begin_action("mirakl.OR21:A-1", "mirakl.OR21", "A-1", request, MP)
    assert (first.created, first.state, first.attempts) == (True, "intent", 1)
    assert first.request_digest == request_digest({"amount": Decimal("10.50"), "lines": [{"accepted": True, "id": "L1"}]})

    # A crash before the outcome: the next attempt must check the remote side first.
    clock.advance(minutes=1)
    again = ledger.begin_action("mirakl.OR21:A-1", "mirakl.OR21", "A-1", dict(reversed(request.items())), MP)
    assert (again.created, again.state, again.attempts) == (False, "uncertain", 2)
    assert (again.started_at, again.last_attempt_at) == (first.started_at, clock.now)  # first kept, last added

    done = ledger.complete_action("mirakl.OR21:A-1", {"status": 204})
    assert (done.state, done.outcome, done.finished_at) == ("done", {"status": 204}, clock.now)
    replay = ledger.begin_action("mirakl.OR21:A-1", "mirakl.OR21", "A-1", request, MP)
    assert (replay.state, replay.outcome, replay.attempts) == ("done", {"status": 204}, 2)
    assert ledger.get_action("mirakl.OR21:A-1") == replay
    assert ledger.actions_for_target("mirakl.OR21", "A-1") == [replay]


def test_an_action_is_never_begun_again_with_different_content(ledger):
    ledger.begin_action("mirakl.OR21:A-2", "mirakl.OR21", "A-2", {"lines": [{"id": "L1", "accepted": True}]}, MP)
    with pytest.raises(ActionConflictError, match="'mirakl.OR21:A-2'.*never sent twice with different content"):
        ledger.begin_action("mirakl.OR21:A-2", "mirakl.OR21", "A-2", {"lines": [{"id": "L1", "accepted": False}]}, MP)
    assert ledger.get_action("mirakl.OR21:A-2").state == "intent"


def test_failed_actions_are_retried_only_when_retryable(ledger):
    ledger.begin_action("woo.order.create:F-1", "woo.order.create", "F-1", {"n": 1}, MP)
    ledger.fail_action("woo.order.create:F-1", "HTTP 503", retryable=True)
    retry = ledger.begin_action("woo.order.create:F-1", "woo.order.create", "F-1", {"n": 1}, MP)
    assert (retry.state, retry.attempts, retry.finished_at) == ("intent", 2, None)

    ledger.begin_action("mirakl.OR28:R-1", "mirakl.OR28", "R-1", {"n": 1}, MP)
    ledger.fail_action("mirakl.OR28:R-1", "HTTP 400 refund exceeds paid amount", retryable=False)
    final = ledger.begin_action("mirakl.OR28:R-1", "mirakl.OR28", "R-1", {"n": 1}, MP)
    assert (final.state, final.attempts, final.error) == ("failed", 1, "HTTP 400 refund exceeds paid amount")

    ledger.mark_action_uncertain("woo.order.create:F-1", "read timeout")
    assert ledger.begin_action("woo.order.create:F-1", "woo.order.create", "F-1", {"n": 1}, MP).state == "uncertain"
    with pytest.raises(NotFoundError, match="call begin_action first"):
        ledger.complete_action("never-begun", {})


def test_stuck_actions_are_found_for_data_quality(ledger, clock):
    ledger.begin_action("k-old", "woo.order.create", "O-1", {}, MP)
    ledger.begin_action("k-done", "woo.order.create", "O-2", {}, MP)
    ledger.complete_action("k-done", {"id": 1})
    clock.advance(minutes=30)
    ledger.begin_action("k-new", "woo.order.create", "O-3", {}, "other")
    assert [a.idempotency_key for a in ledger.stuck_actions(dt.timedelta(minutes=10))] == ["k-old"]
    assert ledger.stuck_actions(dt.timedelta(minutes=10), marketplace="other") == []


def test_an_action_retried_every_cycle_still_looks_as_old_as_it_is(ledger, clock):
    """Issue #15: begin_action used to overwrite started_at, so a stuck action never looked stuck."""
    first = ledger.begin_action("mirakl.OR24:S-1", "mirakl.OR24", "S-1", {"n": 1}, MP)
    for _ in range(12):  # an hour of five-minute cycles, each failing with a 503
        ledger.fail_action("mirakl.OR24:S-1", "HTTP 503", retryable=True)
        clock.advance(minutes=5)
        retried = ledger.begin_action("mirakl.OR24:S-1", "mirakl.OR24", "S-1", {"n": 1}, MP)
    ledger.fail_action("mirakl.OR24:S-1", "HTTP 503", retryable=True)
    assert (retried.started_at, retried.last_attempt_at, retried.attempts) == (first.started_at, clock.now, 13)
    assert [a.idempotency_key for a in ledger.stuck_actions(dt.timedelta(minutes=30))] == ["mirakl.OR24:S-1"]
    assert ledger.stuck_actions(dt.timedelta(minutes=30), states=["uncertain"]) == []


def test_an_absolute_update_supersedes_an_unfinished_one_with_other_content(ledger, clock):
    """Issue #15 item 3: the address changed after a failed completion; the new content wins."""
    key, kind = "woo.orders.complete:C-1", "woo.orders.complete"
    ledger.begin_action(key, kind, "7", {"city": "Lyon"}, MP)
    ledger.fail_action(key, "HTTP 503", retryable=True)
    clock.advance(minutes=1)
    with pytest.raises(ActionConflictError):
        ledger.begin_action(key, kind, "7", {"city": "Paris"}, MP)
    newer = ledger.begin_action(key, kind, "7", {"city": "Paris"}, MP, supersede=True)
    assert (newer.state, newer.generation, newer.attempts, newer.started_at) == ("intent", 2, 1, clock.now)
    assert newer.request_digest == request_digest({"city": "Paris"})
    ledger.complete_action(key, {"ok": True})
    same = ledger.begin_action(key, kind, "7", {"city": "Paris"}, MP, supersede=True)
    assert (same.state, same.generation) == ("done", 2)  # the same content again is still done
    corrected = ledger.begin_action(key, kind, "7", {"city": "Nice"}, MP, supersede=True)
    assert (corrected.state, corrected.generation, corrected.outcome) == ("intent", 3, None)


def test_a_version_1_ledger_is_upgraded_in_place(ledger_url):
    """Schema 2 adds the actions' last attempt time and generation; existing rows keep their times."""
    from sqlalchemy import create_engine, text

    first = Ledger.from_url(ledger_url)
    first.begin_action("k-v1", "woo.order.create", "O-1", {}, MP)
    dispose_engines()
    engine = create_engine(ledger_url)
    with engine.begin() as conn:  # back to version 1: without the two columns
        conn.execute(text("UPDATE schema_version SET version = 1"))
        conn.execute(text("ALTER TABLE actions DROP COLUMN generation"))
        conn.execute(text("ALTER TABLE actions DROP COLUMN last_attempt_at"))
    engine.dispose()
    upgraded = Ledger.from_url(ledger_url)
    action = upgraded.get_action("k-v1")
    assert action.generation == 1 and action.last_attempt_at == action.started_at
    with upgraded.session(write=False) as s, s.begin():
        assert sorted(s.scalars(select(SchemaVersion.version)).all()) == [1, 2]


def test_concurrent_begins_of_one_action_record_one_intent(ledger, ledger_url):
    created = _run_racers(_begin_same_action, [(ledger_url,)] * 4)
    assert sorted(created) == [False, False, False, True]
    assert ledger.get_action("woo.order.create:race-1").attempts == 4


# ---- exceptions -------------------------------------------------------------------------------


def test_exception_life_cycle(ledger, clock):
    opened = ledger.raise_exception("unmatched_sku", "SKU-9", {"missing_in": "mirakl"}, MP, severity="warning")
    assert (opened.newly_opened, opened.status, opened.count, opened.first_seen) == (True, "open", 1, T0)

    clock.advance(minutes=15)
    seen_again = ledger.raise_exception("unmatched_sku", "SKU-9", {"missing_in": "mirakl", "runs": 2}, MP, severity="warning")
    assert (seen_again.newly_opened, seen_again.count, seen_again.last_seen, seen_again.first_seen) == (False, 2, clock.now, T0)
    assert seen_again.detail == {"missing_in": "mirakl", "runs": 2}

    ledger.raise_exception("unmatched_sku", "SKU-7", None, MP)
    ledger.raise_exception("carrier_unmapped", "Colis Rapide", {"order": "A-1"}, MP)
    acked = ledger.acknowledge(seen_again.id, by="ops@example.com")
    assert (acked.status, acked.acknowledged_by) == ("acknowledged", "ops@example.com")
    assert ledger.raise_exception("unmatched_sku", "SKU-9", None, MP, severity="warning").status == "acknowledged"

    clock.advance(minutes=15)
    assert ledger.resolve_missing("unmatched_sku", MP, still_open_keys=["SKU-7"]) == ["SKU-9"]
    assert [(e.kind, e.key) for e in ledger.open_exceptions(MP)] == [("unmatched_sku", "SKU-7"), ("carrier_unmapped", "Colis Rapide")]
    assert [e.key for e in ledger.open_exceptions(MP, kind="carrier_unmapped")] == ["Colis Rapide"]
    assert ledger.get_exception("unmatched_sku", "SKU-9", MP).resolved_at == clock.now

    clock.advance(minutes=15)
    reopened = ledger.raise_exception("unmatched_sku", "SKU-9", {"missing_in": "woocommerce"}, MP)
    assert (reopened.newly_opened, reopened.status, reopened.count, reopened.opened_at) == (True, "open", 4, clock.now)
    assert (reopened.first_seen, reopened.resolved_at, reopened.acknowledged_by) == (T0, None, None)

    assert ledger.resolve_exception("carrier_unmapped", "Colis Rapide", MP) is True
    assert ledger.resolve_exception("carrier_unmapped", "Colis Rapide", MP) is False
    assert ledger.mark_exceptions_notified([reopened.id]) == 1
    assert ledger.get_exception("unmatched_sku", "SKU-9", MP).notified_at == clock.now
    assert ledger.open_exceptions(marketplace="other") == []


def _claim_alert(barrier, url: str, exception_id: int) -> list[int]:
    ledger = Ledger.from_url(url)
    barrier.wait()
    return ledger.claim_first_alerts([exception_id])


def test_the_first_alert_of_an_opening_is_claimed_once_even_by_racing_tasks(ledger, ledger_url, clock):
    record = ledger.raise_exception("order_reservation_failed", "ORD-R1", None, MP, severity="critical")

    won = _run_racers(_claim_alert, [(ledger_url, record.id) for _ in range(4)])

    assert sorted(won, key=len) == [[], [], [], [record.id]]
    assert ledger.claim_first_alerts([record.id]) == [], "alerted since it opened"
    ledger.release_alerts([record.id])  # nothing was delivered
    assert ledger.claim_first_alerts([record.id]) == [record.id]
    clock.advance(minutes=5)
    ledger.resolve_exception("order_reservation_failed", "ORD-R1", MP)
    assert ledger.claim_first_alerts([record.id]) == [], "resolved: nothing to alert"
    clock.advance(minutes=5)
    ledger.raise_exception("order_reservation_failed", "ORD-R1", None, MP, severity="critical")
    assert ledger.claim_first_alerts([record.id]) == [record.id], "reopened: a new first alert"


def test_exception_input_is_checked(ledger):
    with pytest.raises(ValueError, match="severity must be one of"):
        ledger.raise_exception("x", "k", None, MP, severity="bad")
    with pytest.raises(NotFoundError, match="no exception with id 999"):
        ledger.acknowledge(999, by="ops")


# ---- offer state ------------------------------------------------------------------------------


def test_offer_state_bulk_upsert_of_100000_rows(ledger):
    statements: list[str] = []
    event.listen(ledger._engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    skus = [f"SKU-{i:06d}" for i in range(100_000)]
    assert ledger.upsert_offer_states(MP, ({"sku": s, "last_accepted_quantity": i % 50} for i, s in enumerate(skus))) == 100_000
    assert len(statements) < 150, "offer state must be written in batches, not row by row"

    changed = {s: 7 for s in skus[:1000]}
    ledger.mark_offers_pushed(MP, "IMP-1", quantities=changed, prices={skus[0]: Decimal("19.99")})
    result = ledger.mark_import_result(MP, "IMP-1", rejected={skus[1]: "offer not found", "SKU-unknown": "x"})
    assert result == {"accepted": 1000, "rejected": 1}

    states = ledger.offer_states(MP)
    assert len(states) == 100_000
    assert (states[skus[0]].last_accepted_quantity, states[skus[0]].last_accepted_price) == (7, Decimal("19.99"))
    assert (states[skus[1]].last_pushed_quantity, states[skus[1]].last_accepted_quantity) == (7, 1)
    assert (states[skus[1]].last_error, states[skus[1]].pending_quantity_import_id) == ("offer not found", None)
    assert (states[skus[2000]].last_pushed_quantity, states[skus[2000]].last_accepted_quantity) == (None, 0)
    assert set(ledger.offer_states(MP, [skus[5], "nope"])) == {skus[5]}
    with pytest.raises(ValueError, match=r"unknown offer state field\(s\) \['stock'\]"):
        ledger.upsert_offer_states(MP, [{"sku": "x", "stock": 1}])


# ---- call budget ------------------------------------------------------------------------------


def test_processes_racing_for_a_one_per_minute_slot_get_exactly_one(ledger, ledger_url):
    results = _run_racers(_take_slot, [(ledger_url, T0)] * 4)
    granted = [r for r in results if r is None]
    assert len(granted) == 1
    assert sorted(r for r in results if r is not None) == [T0 + dt.timedelta(seconds=60)] * 3
    assert ledger.last_call(MP, "OR11") == T0


def test_multi_window_limits_hold_20_a_minute_and_60_an_hour(ledger):
    limits = [(20, 60), (60, 3600)]
    granted: list[dt.datetime] = []
    waits: list[dt.datetime] = []
    now = T0
    while len(granted) < 61:
        wait_until = ledger.acquire_call_slot(MP, "TL02", limits, now)
        if wait_until is None:
            granted.append(now)
            now += dt.timedelta(seconds=1)
        else:
            assert wait_until > now
            waits.append(wait_until)
            now = wait_until

    assert waits[:3] == [T0 + dt.timedelta(seconds=60), T0 + dt.timedelta(seconds=120), T0 + dt.timedelta(seconds=3600)]
    assert granted[60] == T0 + dt.timedelta(seconds=3600)
    for t in granted:
        assert sum(t - dt.timedelta(seconds=60) < g <= t for g in granted) <= 20
        assert sum(t - dt.timedelta(seconds=3600) < g <= t for g in granted) <= 60
    with ledger.session(write=False) as s, s.begin():
        # Calls older than the longest window are pruned.
        assert s.scalar(select(func.min(CallBudgetCall.called_at))) > granted[60] - dt.timedelta(seconds=3600)


def test_shifting_call_times_follows_a_simulated_clock(ledger):
    assert ledger.acquire_call_slot(MP, "STO01", [(1, 60)], T0) is None
    assert ledger.acquire_call_slot(MP, "STO01", [(1, 60)], T0 + dt.timedelta(seconds=10)) == T0 + dt.timedelta(seconds=60)
    ledger.shift_call_times(-60)
    assert ledger.last_call(MP, "STO01") == T0 - dt.timedelta(seconds=60)
    assert ledger.acquire_call_slot(MP, "STO01", [(1, 60)], T0 + dt.timedelta(seconds=10)) is None
    assert ledger.acquire_call_slot("other", "STO01", [(1, 60)], T0 + dt.timedelta(seconds=10)) is None
    assert ledger.last_call(MP, "OR11") is None


def test_call_slot_input_is_checked(ledger):
    with pytest.raises(ValueError, match="at least one"):
        ledger.acquire_call_slot(MP, "OR11", [], T0)
    with pytest.raises(ValueError, match=r"invalid limit \(0, 60\)"):
        ledger.acquire_call_slot(MP, "OR11", [(0, 60)], T0)
    with pytest.raises(ValueError, match="timezone-aware"):
        ledger.acquire_call_slot(MP, "OR11", [(1, 60)], dt.datetime(2026, 3, 2))


# ---- cursors, sync runs, reconciliation -------------------------------------------------------


def test_cursors_and_last_successful_sync(ledger, clock):
    assert ledger.get_cursor("mirakl_order_ingest", MP, "updated_since", default="1970") == "1970"
    ledger.set_cursor("mirakl_order_ingest", MP, "updated_since", {"at": T0, "page": 2})
    ledger.set_cursor("mirakl_order_ingest", "other", "updated_since", "elsewhere")
    assert ledger.get_cursor("mirakl_order_ingest", MP, "updated_since") == {"at": T0.isoformat(), "page": 2}
    ledger.set_cursor("mirakl_order_ingest", MP, "updated_since", None)
    assert ledger.get_cursor("mirakl_order_ingest", MP, "updated_since", default="x") is None
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        ledger.set_cursor("f", MP, "n", object())

    ledger.record_sync_success("mirakl_order_ingest", MP, run_id="run-1", summary={"orders": 3})
    clock.advance(minutes=1)
    ledger.record_sync_failure("mirakl_order_ingest", MP, "HTTP 500 from OR11")
    [status] = ledger.sync_status(MP)
    assert (status.last_success_at, status.last_run_id, status.last_summary) == (T0, "run-1", {"orders": 3})
    assert (status.last_failure_at, status.last_error) == (clock.now, "HTTP 500 from OR11")


def test_reconciliation_results_are_replaced_per_day(ledger):
    day1, day2 = dt.date(2026, 3, 1), dt.date(2026, 3, 2)
    finding = {"finding_kind": "commission_mismatch", "order_id": "A-1", "line_id": "A-1-1", "amount_mirakl": Decimal("1.50"),
               "amount_woo": Decimal("1.20"), "difference": Decimal("0.30"), "currency": "EUR", "detail": {"rate": "0.12"}}
    ledger.replace_reconciliation_results(MP, day1, [finding, {**finding, "order_id": "A-2"}])
    ledger.replace_reconciliation_results(MP, day2, [{"finding_kind": "missing_in_woo", "order_id": "B-1"}])
    assert ledger.replace_reconciliation_results(MP, day1, [finding]) == 1

    [row] = ledger.reconciliation_results(MP, day1)
    assert (row["order_id"], row["difference"], row["currency"], row["detail"]) == ("A-1", Decimal("0.30"), "EUR", {"rate": "0.12"})
    assert [r["finding_kind"] for r in ledger.reconciliation_results(MP, day2)] == ["missing_in_woo"]


# ---- connection and secrets -------------------------------------------------------------------


def test_url_from_airflow_connections():
    sqlite_conn = Connection(conn_id="woo_mirakl_ledger", conn_type="sqlite", host="/var/lib/woo-mirakl/ledger.db")
    assert ledger_url_from_connection(sqlite_conn) == "sqlite:////var/lib/woo-mirakl/ledger.db"
    from_uri = Connection.from_uri("sqlite:////var/lib/woo-mirakl/ledger.db", conn_id="woo_mirakl_ledger")
    assert ledger_url_from_connection(from_uri) == "sqlite:////var/lib/woo-mirakl/ledger.db"

    pg_conn = Connection(conn_id="woo_mirakl_ledger", conn_type="postgres", host="db", port=5433, login="wm",
                         password="p@ss:w/rd", schema="ledger", extra=json.dumps({"sslmode": "require"}))
    url = make_url(ledger_url_from_connection(pg_conn))
    assert (url.drivername, url.username, url.password, url.host, url.port, url.database) == (
        "postgresql+psycopg2", "wm", "p@ss:w/rd", "db", 5433, "ledger")
    assert url.query == {"sslmode": "require"}

    explicit = Connection(conn_id="x", conn_type="postgres", host="ignored", extra=json.dumps({"sqlalchemy_url": "sqlite:////tmp/l.db"}))
    assert ledger_url_from_connection(explicit) == "sqlite:////tmp/l.db"
    with pytest.raises(LedgerError, match="absolute path"):
        ledger_url_from_connection(Connection(conn_id="x", conn_type="sqlite", host="ledger.db"))
    with pytest.raises(LedgerError, match="unsupported ledger connection type 'mysql'"):
        ledger_url_from_connection(Connection(conn_id="x", conn_type="mysql", host="h", password=SECRET))


def test_get_ledger_reads_the_airflow_connection(tmp_path, monkeypatch):
    path = tmp_path / "from-connection.db"
    monkeypatch.setenv("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    ledger = get_ledger()
    ledger.set_cursor("f", MP, "n", 1)
    assert repr(ledger) == f"Ledger(sqlite:///{path})"
    assert get_ledger()._engine is ledger._engine and path.exists()
    dispose_engines()


@pytest.mark.postgres
def test_the_password_never_shows(pg_ledger_url):
    with_password = pg_ledger_url().set(password=SECRET)
    ledger = Ledger.from_url(with_password.render_as_string(hide_password=False))  # trust auth ignores it
    assert SECRET not in repr(ledger) and SECRET not in str(ledger) and "***" in repr(ledger)

    for unreachable in (with_password.set(database=f"ledger_missing_{secrets.token_hex(4)}"), with_password.set(port=1)):
        with pytest.raises(LedgerUnavailableError) as raised:
            Ledger.from_url(unreachable.render_as_string(hide_password=False))
        shown = "".join(traceback.format_exception(raised.value)) + repr(raised.value)
        assert SECRET not in shown and "cannot open the ledger at postgresql+psycopg2://postgres:***@127.0.0.1" in shown
    with pytest.raises(LedgerError) as bad:
        Ledger.from_url(f"mysql://root:{SECRET}@db/ledger")
    assert SECRET not in str(bad.value)
    dispose_engines()


def test_many_orders_and_lines_in_one_transaction(ledger, clock):
    """The order flow's bulk forms: what upsert_order / set_order_lines would store, for many orders."""
    ledger.upsert_order(MP, "B-1", mirakl_state="WAITING_ACCEPTANCE", detail={"kept": True})
    ledger.set_order_lines(MP, "B-1", [{"mirakl_order_line_id": "B-1-1", "offer_sku": "SKU-1", "quantity": 1}])
    clock.advance(minutes=1)
    saved = ledger.upsert_orders(
        MP,
        {"B-1": {"decision": "partially", "decided_at": clock.now}, "B-2": {"mirakl_state": "SHIPPING"}},
        {"B-1": [{"mirakl_order_line_id": "B-1-1", "decision": "accepted"},
                 {"mirakl_order_line_id": "B-1-2", "offer_sku": "SKU-2", "quantity": 3, "decision": "refused"}],
         "B-2": [{"mirakl_order_line_id": "B-2-1", "offer_sku": "SKU-1", "quantity": 2}]},
    )
    assert set(saved) == {"B-1", "B-2"}
    one = saved["B-1"]
    assert (one.mirakl_state, one.decision, one.detail, one.updated_at) == (
        "WAITING_ACCEPTANCE", "partially", {"kept": True}, clock.now)
    assert [(line.offer_sku, line.quantity, line.decision) for line in one.lines] == [
        ("SKU-1", 1, "accepted"), ("SKU-2", 3, "refused")]
    assert saved["B-2"].mirakl_state == "SHIPPING" and len(saved["B-2"].lines) == 1
    assert ledger.get_orders(MP, ["B-1", "B-2", "missing"]) == {"B-1": ledger.get_order(MP, "B-1"),
                                                               "B-2": ledger.get_order(MP, "B-2")}
    with pytest.raises(ValueError, match="decision"):
        ledger.upsert_orders(MP, {"B-3": {"decision": "maybe"}})
    with pytest.raises(ValueError, match="mirakl_order_line_id"):
        ledger.upsert_orders(MP, {}, {"B-1": [{"offer_sku": "SKU-9"}]})
    assert ledger.get_order(MP, "B-3") is None  # nothing of a refused batch is stored


def test_many_actions_begun_and_finished_in_one_transaction(ledger, clock):
    writes = [{"key": f"OR21:{i}", "kind": "mirakl.OR21", "target": str(i), "request": {"i": i}} for i in range(3)]
    begun = ledger.begin_actions(writes, MP)
    assert [(a.created, a.state) for a in begun] == [(True, "intent")] * 3
    finished = ledger.finish_actions([
        {"key": "OR21:0", "state": "done", "outcome": {"amount": Decimal("1.50")}},
        {"key": "OR21:1", "state": "uncertain", "error": "dropped", "retryable": True},
        {"key": "OR21:2", "state": "failed", "error": "HTTP 400", "retryable": False},
    ])
    assert [a.state for a in finished] == ["done", "uncertain", "failed"]
    assert finished[0].outcome == {"amount": "1.50"} and finished[0].finished_at == clock.now
    # begun again, each as begin_action would: done stays done, an unfinished one is uncertain
    assert [a.state for a in ledger.begin_actions(writes, MP)] == ["done", "uncertain", "failed"]
    with pytest.raises(ActionConflictError):
        ledger.begin_actions([{**writes[0], "request": {"i": "other"}}], MP)
    with pytest.raises(NotFoundError):
        ledger.finish_actions([{"key": "never-begun", "state": "done"}])
    with pytest.raises(ValueError, match="state"):
        ledger.finish_actions([{"key": "OR21:0", "state": "intent"}])


def test_many_exceptions_resolved_at_once(ledger):
    for key in ("X-1", "X-2", "X-3"):
        ledger.raise_exception("order_invalid", key, {"key": key}, MP)
    assert sorted(ledger.resolve_exceptions("order_invalid", ["X-1", "X-3", "unknown"], MP)) == ["X-1", "X-3"]
    assert ledger.resolve_exceptions("order_invalid", [], MP) == []
    assert [ledger.get_exception("order_invalid", k, MP).status for k in ("X-1", "X-2", "X-3")] == [
        "resolved", "open", "resolved"]
