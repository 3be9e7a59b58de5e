"""The shared write path's batch form (``Writer.write_all``) against a real SQLite ledger.

The calls are plain functions here (the end-to-end order tests send them to the sandbox): what is
proved is the ledger's side, that every intent is committed before any call, that the calls
overlap when workers allow, and that outcomes are recorded whatever a neighbour did.
"""
from __future__ import annotations

import threading

import pytest

from include.woo_mirakl.clients.http import ApiError, UncertainWriteError
from include.woo_mirakl.ledger import Ledger
from include.woo_mirakl.writes import DONE, FINAL, RETRY, UNCERTAIN, Write, Writer

MP = "sandbox"


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")


def _write(key: str, send, **options) -> Write:
    return Write(key=key, kind="mirakl.OR21", target=key, request={"key": key}, send=send,
                 outcome=lambda value: {"value": value}, **options)


def test_every_intent_is_committed_before_any_call_and_no_outcome_before_every_call_returned(ledger):
    """Each call looks, from its own session, at every write of the batch: all are in intent."""
    keys = [f"k{i}" for i in range(6)]
    seen: dict[str, list[str]] = {}

    def send(key):
        seen[key] = [ledger.get_action(k).state for k in keys]
        return key

    results = Writer(ledger, MP).write_all([_write(k, lambda k=k: send(k)) for k in keys], workers=3)
    assert [r.status for r in results] == [DONE] * 6
    assert seen == {k: ["intent"] * 6 for k in keys}
    assert [ledger.get_action(k).outcome for k in keys] == [{"value": k} for k in keys]


def test_calls_overlap_up_to_the_number_of_workers(ledger):
    """Four calls meet at a barrier of four: they only pass it if all four are out at once."""
    barrier = threading.Barrier(4, timeout=30)
    results = Writer(ledger, MP).write_all(
        [_write(f"k{i}", lambda: barrier.wait() is not None) for i in range(4)], workers=4)
    assert [r.status for r in results] == [DONE] * 4 and not barrier.broken


def test_one_worker_sends_one_call_at_a_time(ledger):
    """With one worker a barrier of two is never met: the first call breaks it (and fails for sure)."""
    barrier = threading.Barrier(2, timeout=0.2)

    def send():
        try:
            barrier.wait()
        except threading.BrokenBarrierError:
            raise ApiError("mirakl", "OR21", 400, "ALONE", "no other call was out") from None

    results = Writer(ledger, MP).write_all([_write(f"k{i}", send) for i in range(2)], workers=1)
    assert [r.status for r in results] == [FINAL, FINAL]


def test_each_outcome_is_classified_as_a_single_write_would_be(ledger):
    def fail(error):
        def send():
            raise error
        return send

    writes = [
        _write("ok", lambda: 1),
        _write("lost", fail(UncertainWriteError("mirakl", "OR21", "connection dropped"))),
        _write("busy", fail(ApiError("mirakl", "OR21", 503, None, "try later"))),
        _write("bad", fail(ApiError("mirakl", "OR21", 400, "BAD", "refused"))),
    ]
    results = Writer(ledger, MP).write_all(writes, workers=2)
    assert [r.status for r in results] == [DONE, UNCERTAIN, RETRY, FINAL]
    assert [r.sent for r in results] == [True] * 4
    assert [ledger.get_action(k).state for k in ("ok", "lost", "busy", "bad")] == ["done", "uncertain", "failed",
                                                                                     "failed"]
    assert ledger.get_action("busy").retryable is True and ledger.get_action("bad").retryable is False

    # Again: done stays done, failed for good is not sent, the uncertain one is not repeated blindly
    # (OR21 is sent again only when a 4xx would tell it landed: ``landed_if_rejected``).
    calls: list[str] = []
    again = Writer(ledger, MP).write_all(
        [_write(k, lambda k=k: calls.append(k)) for k in ("ok", "lost", "busy", "bad")], workers=2)
    assert [r.status for r in again] == [DONE, UNCERTAIN, DONE, FINAL]
    assert calls == ["busy"]


def test_an_unexpected_error_still_lets_the_others_outcomes_be_recorded(ledger):
    def boom():
        raise RuntimeError("a bug in an outcome handler")

    with pytest.raises(RuntimeError, match="a bug"):
        Writer(ledger, MP).write_all([_write("a", lambda: 1), _write("b", boom), _write("c", lambda: 3)], workers=2)
    assert [ledger.get_action(k).state for k in "abc"] == ["done", "intent", "done"]
