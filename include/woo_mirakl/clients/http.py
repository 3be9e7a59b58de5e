"""Shared HTTP machinery for the Mirakl and WooCommerce clients.

One :class:`HttpClient` per API: a ``requests.Session`` with bounded exponential
backoff and jitter, ``Retry-After`` honoured on 429, retries of 5xx, timeouts and
dropped connections for idempotent calls only. A write that is not idempotent is
never retried once the server may have received it: the caller gets an
:class:`UncertainWriteError` and resolves the outcome with the ledger.

Credentials never reach an exception, a repr or a log line: every text built from a
URL, a response or a transport error goes through :meth:`Redactor.redact`.
"""
from __future__ import annotations

import email.utils
import json
from decimal import Decimal
import logging
import random
import re
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping

import requests

log = logging.getLogger("woo_mirakl.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_SECRET_QUERY = re.compile(r"(?i)((?:consumer_key|consumer_secret|api_key|apikey|key|token|secret|password)=)[^&\s'\"]+")


class _RedactQueryStringFilter(logging.Filter):
    """urllib3 logs each request line at DEBUG, query string (and so query-string auth) included."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _SECRET_QUERY.sub(r"\1***", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


_urllib3_log = logging.getLogger("urllib3.connectionpool")
if not any(isinstance(f, _RedactQueryStringFilter) for f in _urllib3_log.filters):
    _urllib3_log.addFilter(_RedactQueryStringFilter())


class ClientError(Exception):
    """Base of every error the clients raise; ``service`` and ``operation`` say where."""

    def __init__(self, service: str, operation: str, message: str):
        super().__init__(f"{service} {operation}: {message}")
        self.service = service
        self.operation = operation


class ApiError(ClientError):
    """The API answered with an error: its HTTP status, its own error code and message."""

    def __init__(
        self,
        service: str,
        operation: str,
        status: int,
        code: str | None,
        message: str,
        retry_after: float | None = None,
    ):
        detail = f"HTTP {status}" + (f" {code}" if code else "") + f": {message}"
        super().__init__(service, operation, detail)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"ApiError({self.service!r}, {self.operation!r}, {self.status}, {self.code!r}, {self.message!r})"


class MalformedResponseError(ClientError):
    """The body could not be read as the API's format (truncated JSON, an HTML error page...)."""

    def __init__(self, service: str, operation: str, status: int, detail: str):
        super().__init__(service, operation, f"malformed response (HTTP {status}): {detail}")
        self.status = status
        self.detail = detail


class TransportError(ClientError):
    """The API could not be reached, or kept timing out, after every allowed attempt."""


class UncertainWriteError(ClientError):
    """A non-idempotent write may or may not have been applied: resolve it, don't retry it."""

    def __init__(self, service: str, operation: str, reason: str, status: int | None = None):
        super().__init__(service, operation, f"outcome unknown, not retried: {reason}")
        self.reason = reason
        self.status = status


class WriteRefused(Exception):
    """A client's write guard refused a write before anything was sent (see ``HttpClient.write_guard``).

    Not a ClientError: it concerns every record of the task, never one record's failure.
    """


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: attempts, backoff bounds (seconds) and timeouts (seconds)."""

    max_attempts: int = 5
    base_delay: float = 0.5
    max_delay: float = 30.0
    timeout: float = 60.0
    connect_timeout: float = 10.0
    max_retry_after: float = 120.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.timeout <= 0 or self.connect_timeout <= 0:
            raise ValueError("delays must be >= 0 and timeouts > 0")

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): capped exponential with jitter."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        # "equal jitter": never less than half the step, so retries do not stampede at zero
        return ceiling / 2 + rng.uniform(0, ceiling / 2)


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP-date); None if absent/invalid."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


@dataclass
class Redactor:
    """Removes known secrets (and secret-looking query parameters) from any text."""

    secrets: list[str] = field(default_factory=list)

    def add(self, secret: str | None) -> None:
        if secret and secret not in self.secrets:
            self.secrets.append(secret)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _SECRET_QUERY.sub(r"\1***", text)

    def __repr__(self) -> str:
        return f"Redactor({len(self.secrets)} secrets)"


@dataclass
class Reply:
    """A successful answer: status, headers and the decoded body."""

    status: int
    headers: Mapping[str, str]
    body: Any


def _is_not_sent(error: requests.RequestException) -> bool:
    """True when the request certainly never reached the server (safe to retry any method)."""
    if isinstance(error, requests.ConnectTimeout):
        return True
    if isinstance(error, requests.ConnectionError):
        text = repr(error)
        return any(
            marker in text
            for marker in ("NewConnectionError", "NameResolutionError", "Connection refused", "Failed to resolve")
        )
    return False


def _describe(error: BaseException) -> str:
    if isinstance(error, requests.Timeout):
        return "timed out"
    if isinstance(error, requests.ConnectionError):
        text = repr(error)
        if "Connection refused" in text:
            return "connection refused"
        if "NameResolutionError" in text or "Failed to resolve" in text:
            return "unknown host"
        if "RemoteDisconnected" in text or "Connection aborted" in text or "ConnectionResetError" in text:
            return "connection dropped by the server"
        return "connection error"
    return type(error).__name__


class HttpClient:
    """Base of the API clients: one session, retries, error decoding, redaction."""

    service = "http"

    def __init__(
        self,
        base_url: str,
        *,
        retry: RetryPolicy | None = None,
        verify: bool = True,
        session: requests.Session | None = None,
        secrets: Iterable[str] = (),
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ):
        self.base_url = base_url.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.verify = verify
        self.session = session or requests.Session()
        self.redactor = Redactor()
        for secret in secrets:
            self.redactor.add(secret)
        self._sleep = sleep
        self._rng = rng or random.Random()
        # Asked before every write (any method but GET/HEAD/OPTIONS) with the operation's name;
        # raises WriteRefused to refuse it before anything is sent (see include/woo_mirakl/wiring.py).
        self.write_guard: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # Subclasses say how their API reports errors -----------------------------------
    def error_code_and_message(self, status: int, body: Any) -> tuple[str | None, str]:
        if isinstance(body, dict):
            return body.get("code"), str(body.get("message") or body)
        return None, str(body)

    # The request loop -----------------------------------------------------------------
    def request(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        files: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        data: Mapping[str, Any] | None = None,
        idempotent: bool | None = None,
        expect: str = "json",
        before_attempt: Callable[[], None] | None = None,
    ) -> Reply:
        """Send one API call with retries; ``expect`` is ``json``, ``exact_json`` (decimals as Decimal), ``text`` or ``none``.

        ``idempotent`` defaults to True for GET/HEAD/OPTIONS; pass True for a write
        that is safe to repeat (e.g. an absolute stock update), False otherwise.
        ``before_attempt`` runs before every attempt (the call budget: a retry is a call too).
        """
        method = method.upper()
        if self.write_guard is not None and method not in IDEMPOTENT_METHODS:
            self.write_guard(operation)
        safe_to_repeat = method in IDEMPOTENT_METHODS if idempotent is None else idempotent
        url = self.base_url + path
        policy = self.retry
        attempt = 0
        while True:
            attempt += 1
            last_attempt = attempt >= policy.max_attempts
            if before_attempt is not None:
                before_attempt()
            try:
                response = self.session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    files=files,
                    data=data,
                    headers=headers,
                    timeout=(policy.connect_timeout, policy.timeout),
                    verify=self.verify,
                )
            except requests.RequestException as error:
                reason = _describe(error)
                if not _is_not_sent(error) and not safe_to_repeat:
                    raise UncertainWriteError(self.service, operation, reason) from None
                if last_attempt:
                    raise TransportError(
                        self.service, operation, f"{reason} after {attempt} attempts ({self.redactor.redact(url)})"
                    ) from None
                self._wait(operation, attempt, reason, None)
                continue

            status = response.status_code
            if status == 429:
                retry_after = parse_retry_after(response.headers.get("Retry-After"))
                if last_attempt or (retry_after is not None and retry_after > policy.max_retry_after):
                    raise self._api_error(operation, response, retry_after)
                self._wait(operation, attempt, "HTTP 429", retry_after)
                continue
            if status >= 500:
                if not safe_to_repeat:
                    error = self._api_error(operation, response)
                    raise UncertainWriteError(
                        self.service, operation, f"HTTP {status} {error.code or ''} {error.message}".strip(), status
                    )
                if last_attempt:
                    raise self._api_error(operation, response)
                self._wait(operation, attempt, f"HTTP {status}", None)
                continue
            if status >= 400:
                raise self._api_error(operation, response)
            try:
                body = self._decode(response, expect, operation)
            except MalformedResponseError:
                if not safe_to_repeat:
                    raise UncertainWriteError(
                        self.service, operation, f"HTTP {status} with an unreadable body", status
                    ) from None
                if last_attempt:
                    raise
                self._wait(operation, attempt, "malformed body", None)
                continue
            return Reply(status, response.headers, body)

    def _wait(self, operation: str, attempt: int, reason: str, retry_after: float | None) -> None:
        delay = self.retry.backoff(attempt, self._rng)
        if retry_after is not None:
            delay = max(delay, retry_after)
        log.warning(
            "%s %s: %s, retry %d/%d in %.2fs",
            self.service, operation, reason, attempt, self.retry.max_attempts - 1, delay,
        )
        self._sleep(delay)

    def _decode(self, response: requests.Response, expect: str, operation: str) -> Any:
        if expect == "none":
            return None
        if expect == "text":
            return response.content.decode(response.encoding or "utf-8", errors="replace")
        if not response.content:
            return None
        try:
            if expect == "exact_json":  # numbers with decimals as Decimal: money never passes through float
                return json.loads(response.content.decode("utf-8"), parse_float=Decimal)
            return json.loads(response.content.decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            raise MalformedResponseError(
                self.service, operation, response.status_code, self._snippet(response)
            ) from None

    def _snippet(self, response: requests.Response) -> str:
        ctype = response.headers.get("Content-Type", "unknown type")
        text = response.content[:120].decode("utf-8", errors="replace").replace("\n", " ")
        return self.redactor.redact(f"{ctype}, {len(response.content)} bytes, starts {text!r}")

    def _api_error(
        self, operation: str, response: requests.Response, retry_after: float | None = None
    ) -> ApiError:
        try:
            body: Any = json.loads(response.content.decode("utf-8")) if response.content else None
        except (ValueError, UnicodeDecodeError):
            body = None
        if body is None:
            code, message = None, (response.reason or "no body") + (
                f" ({self._snippet(response)})" if response.content else ""
            )
        else:
            code, message = self.error_code_and_message(response.status_code, body)
        return ApiError(
            self.service,
            operation,
            response.status_code,
            self.redactor.redact(code) if code else None,
            self.redactor.redact(message),
            retry_after,
        )
