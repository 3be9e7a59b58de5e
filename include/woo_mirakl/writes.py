"""The one write path of every flow: record the intent, make the call, classify the outcome.

Every mutating call to Mirakl or WooCommerce goes through :class:`Writer`, so the rules are
the same everywhere:

``done``       the call succeeded, or an earlier attempt's effect was found: outcome recorded.
``uncertain``  it may have landed (dropped connection, timeout, an error answer to a write that
               is not safe to repeat): never sent again before its effect is looked for.
``retry``      it failed for sure and is sent again by a later cycle (5xx or 429 on a repeatable
               write, transport error before sending, call budget used up).
``final``      refused for good (4xx): the caller records an exception against its record.

An absolute update (``supersede``) whose content changed since an unfinished attempt starts a new
generation of its action instead of being blocked by the old one.

A failure is one record's (an exception on it, the batch goes on) unless it concerns every record
(:func:`concerns_every_record`: credentials refused, the API unreachable): then the task fails.
A write still not done after :data:`PERSISTENT_AFTER` attempts is :attr:`WriteResult.persistent`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.http import ApiError, ClientError, TransportError, UncertainWriteError, WriteRefused
from include.woo_mirakl.ledger.repository import ActionRecord, Ledger

DONE, UNCERTAIN, RETRY, FINAL = "done", "uncertain", "retry", "final"
PERSISTENT_AFTER = 3  # attempts of one write before its failure becomes an exception on its record


def concerns_every_record(error: BaseException | None) -> bool:
    """A failure no other record would escape: the credentials refused (401), the API unreachable."""
    return (isinstance(error, ApiError) and error.status == 401) or isinstance(error, TransportError)


def _no_outcome(_: Any) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Write:
    """One mutating call: its idempotency key, what it *is* (``request``, digested) and how to send it.

    ``repeatable``: sending it twice leaves the same state (an absolute update), so an uncertain
    attempt is simply sent again. ``landed_if_rejected``: when an earlier attempt is uncertain, a 4xx
    answer most likely means it landed (e.g. OR21 on an order no longer waiting): stay uncertain and
    let the remote state tell, rather than fail for good.
    """

    key: str
    kind: str
    target: str | None
    request: Mapping[str, Any]
    send: Callable[[], Any]
    outcome: Callable[[Any], Mapping[str, Any] | None] = _no_outcome
    supersede: bool = False
    repeatable: bool = False
    landed_if_rejected: bool = False


@dataclass(frozen=True)
class WriteResult:
    """How a write ended: ``status`` (see the module docstring), its outcome or error."""

    status: str
    action: ActionRecord
    outcome: Mapping[str, Any] | None = None
    error: str | None = None
    exception: BaseException | None = field(default=None, repr=False, compare=False)
    sent: bool = False  # a request went out in this call (as opposed to already done / left alone)
    recovered: bool = False  # an earlier attempt's effect was found

    @property
    def ok(self) -> bool:
        return self.status == DONE

    @property
    def persistent(self) -> bool:
        """Not done after :data:`PERSISTENT_AFTER` attempts: an exception on its record, still retried.

        A call budget used up is not the record's failure: it is only deferred."""
        return (self.status in (RETRY, UNCERTAIN) and self.action.attempts >= PERSISTENT_AFTER
                and not isinstance(self.exception, BudgetExceeded))


class Writer:
    """Record intent → call → classify, for one marketplace's ledger."""

    def __init__(self, ledger: Ledger, marketplace: str):
        self.ledger = ledger
        self.marketplace = marketplace

    def begin(self, write: Write) -> ActionRecord:
        """Record the intent (or find the earlier attempt): see :class:`ActionRecord` for its states."""
        return self.ledger.begin_action(
            write.key, write.kind, write.target, write.request, self.marketplace, supersede=write.supersede
        )

    def write(self, write: Write, settle: Callable[[ActionRecord], Mapping[str, Any] | None] | None = None) -> WriteResult:
        """Begin, and send unless already done, failed for good, or uncertain with no way to settle.

        ``settle`` looks for the effect of an uncertain earlier attempt: its outcome when found,
        None when it did not land (then the write is sent again).
        """
        action = self.begin(write)
        known = self._without_call(write, action, settle)
        return known if known is not None else self.send(write, action)

    def _without_call(self, write: Write, action: ActionRecord,
                      settle: Callable[[ActionRecord], Mapping[str, Any] | None] | None = None) -> WriteResult | None:
        """The result of a begun action that needs no call (done, failed for good, uncertain and
        settled or with no way to settle); None when it is to be sent."""
        if action.state == "done":
            return WriteResult(DONE, action, action.outcome)
        if action.state == "failed":
            return WriteResult(FINAL, action, error=action.error)
        if action.state == "uncertain" and not write.repeatable:
            found = settle(action) if settle is not None else None
            if found is not None:
                return self.settled(write, action, found)
            if settle is None and not write.landed_if_rejected:
                return WriteResult(UNCERTAIN, action, error=action.error)
        return None

    def settled(self, write: Write, action: ActionRecord, outcome: Mapping[str, Any]) -> WriteResult:
        """An uncertain attempt's effect was found: record it as done."""
        done = self.ledger.complete_action(write.key, outcome)
        return WriteResult(DONE, done, done.outcome, recovered=True)

    def send(self, write: Write, action: ActionRecord) -> WriteResult:
        """Make the call of a begun action and record what it tells."""
        finish, result = self._call(write, action)
        return result(self.ledger.finish_actions([finish])[0])

    def write_all(self, writes: Sequence[Write], workers: int = 1) -> list[WriteResult]:
        """:meth:`write` for many writes (without ``settle``), in three steps whatever their number:
        every intent in one transaction, the calls by at most ``workers`` threads at once, every
        outcome in one transaction. A crash between the calls and the outcomes leaves the intents,
        which the next attempt treats as uncertain, exactly as for a single write."""
        writes = list(writes)
        if not writes:
            return []
        actions = self.begin_all(writes)
        results: list[WriteResult | None] = [None] * len(writes)
        to_send: list[int] = []
        for i, (write, action) in enumerate(zip(writes, actions)):
            results[i] = self._without_call(write, action)
            if results[i] is None:
                to_send.append(i)
        for i, result in zip(to_send, self.send_all([(writes[i], actions[i]) for i in to_send], workers)):
            results[i] = result
        return [r for r in results if r is not None]

    def begin_all(self, writes: Sequence[Write]) -> list[ActionRecord]:
        """:meth:`begin` for many writes in one transaction."""
        return self.ledger.begin_actions(
            [{"key": w.key, "kind": w.kind, "target": w.target, "request": w.request, "supersede": w.supersede}
             for w in writes], self.marketplace)

    def send_all(self, begun: Sequence[tuple[Write, ActionRecord]], workers: int = 1) -> list[WriteResult]:
        """:meth:`send` for many begun actions: calls by at most ``workers`` threads, outcomes in one
        transaction. A thread writes the ledger only to release its action before re-raising (a 401,
        a write refused while disconnected), each in a transaction of its own."""
        if not begun:
            return []
        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(begun))), thread_name_prefix="write") as pool:
            futures = [pool.submit(self._call, write, action) for write, action in begun]
        calls = [f.result() for f in futures if f.exception() is None]
        finished = self.ledger.finish_actions([finish for finish, _ in calls])
        for future in futures:  # an unexpected error: the others' outcomes are recorded first
            if future.exception() is not None:
                raise future.exception()  # type: ignore[misc]
        return [result(action) for (_, result), action in zip(calls, finished)]

    def _call(self, write: Write, action: ActionRecord) -> tuple[dict[str, Any], Callable[[ActionRecord], WriteResult]]:
        """Make the call; returns the outcome to record and how to build the result from the recorded action."""
        key = write.key

        def end(state: str, status: str, error: BaseException | None = None, *, retryable: bool | None,
                sent: bool = True, outcome: Mapping[str, Any] | None = None):
            message = None if error is None else str(error)
            finish = {"key": key, "state": state, "outcome": outcome, "error": message, "retryable": retryable}
            if isinstance(error, BudgetExceeded):
                finish["error"] = f"call budget used up: {error}"
            return finish, lambda recorded: WriteResult(
                status, recorded, recorded.outcome if status == DONE else None,
                error=message, exception=error, sent=sent)

        try:
            value = write.send()
        except WriteRefused as error:
            # Refused before sending (a disconnected marketplace): a fresh intent is released so that
            # it goes out once allowed; an uncertain one stays uncertain (it may still have landed).
            if action.state != "uncertain":
                self.ledger.fail_action(key, f"not sent: {error}", retryable=True)
            raise
        except BudgetExceeded as error:
            return end("failed", RETRY, error, retryable=True, sent=False)
        except UncertainWriteError as error:
            return end("uncertain", UNCERTAIN, error, retryable=True)
        except ApiError as error:
            if error.status == 401:  # refused for every record, not for this one: the task fails
                self.ledger.fail_action(key, str(error), retryable=True)
                raise
            if error.status >= 500 or error.status == 429:
                return end("failed", RETRY, error, retryable=True)
            if write.landed_if_rejected and action.state == "uncertain":
                return end("uncertain", UNCERTAIN, error, retryable=True)
            return end("failed", FINAL, error, retryable=False)
        except ClientError as error:  # never reached the API, or a repeatable write: safe to send again
            return end("failed", RETRY, error, retryable=True)
        return end("done", DONE, retryable=None, outcome=write.outcome(value))

__all__ = ["DONE", "FINAL", "PERSISTENT_AFTER", "RETRY", "UNCERTAIN", "Write", "WriteResult", "Writer",
           "concerns_every_record"]
