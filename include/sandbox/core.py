"""The sandbox's machinery shared by both simulated APIs.

A :class:`Sandbox` owns one clock, one call log, one fault injector and one lock, and
serves two :class:`Service` objects (Mirakl and WooCommerce) on their own loopback
ports. Services register routes with an *operation* name (Mirakl's codes such as
``OR11``; ``woo.<resource>.<verb>`` for WooCommerce) so faults and call counts can be
expressed per operation. Every route handler runs under the sandbox lock, so handlers
see and change state atomically, like a database transaction would.
"""
from __future__ import annotations

import json
import random
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

UTC = timezone.utc


def iso(dt: datetime | None) -> str | None:
    """Render a datetime as the APIs do: ISO 8601 in UTC with a ``Z``."""
    if dt is None:
        return None
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(value: str | None) -> datetime | None:
    """Parse an ISO 8601 timestamp (``Z`` or offset, or naive meaning UTC)."""
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


class Clock:
    """Sandbox time: real time plus an offset, or frozen; tests advance it at will."""

    def __init__(self, start: datetime | None = None, frozen: bool = False):
        self._lock = threading.Lock()
        self._offset = timedelta(0)
        self._frozen_at: datetime | None = None
        if start is not None:
            self._offset = start - datetime.now(UTC)
        if frozen:
            self._frozen_at = self.now()

    def now(self) -> datetime:
        with self._lock:
            if self._frozen_at is not None:
                return self._frozen_at
            return datetime.now(UTC) + self._offset

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            delta = timedelta(seconds=seconds)
            if self._frozen_at is not None:
                self._frozen_at += delta
            else:
                self._offset += delta
        return self.now()

    def freeze(self, at: datetime | None = None) -> datetime:
        current = self.now()
        with self._lock:
            self._frozen_at = at or current
        return self.now()

    def unfreeze(self) -> datetime:
        current = self.now()
        with self._lock:
            self._frozen_at = None
            self._offset = current - datetime.now(UTC)
        return self.now()

    @property
    def frozen(self) -> bool:
        return self._frozen_at is not None


@dataclass
class Request:
    """One HTTP request as a route handler sees it."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: Message
    body: bytes = b""
    path_params: dict[str, str] = field(default_factory=dict)

    def arg(self, name: str, default: str | None = None) -> str | None:
        values = self.query.get(name)
        return values[0] if values else default

    def args(self, name: str) -> list[str]:
        """All values of a repeated or comma-separated query parameter."""
        out: list[str] = []
        for value in self.query.get(name, []):
            out.extend(v for v in value.split(",") if v != "")
        return out

    def json(self) -> Any:
        if not self.body:
            return None
        return json.loads(self.body.decode("utf-8"))

    def multipart_file(self, field_name: str = "file") -> bytes | None:
        """The content of one file part of a multipart/form-data body."""
        ctype = self.headers.get("Content-Type", "")
        match = re.search(r"boundary=\"?([^\";]+)\"?", ctype)
        if not ctype.startswith("multipart/form-data") or not match:
            return None
        boundary = b"--" + match.group(1).encode()
        for part in self.body.split(boundary):
            head, sep, content = part.partition(b"\r\n\r\n")
            if not sep:
                continue
            if re.search(rb'name="' + field_name.encode() + rb'"', head):
                return content.rstrip(b"\r\n").removesuffix(b"--").rstrip(b"\r\n")
        return None


@dataclass
class Response:
    """What a route handler returns; ``body`` is JSON-encoded unless bytes or str."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"

    def encode(self) -> bytes:
        if self.body is None:
            return b""
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body, ensure_ascii=False).encode("utf-8")


class ApiError(Exception):
    """Raised by handlers; the service renders it in its API's own error format."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code


Handler = Callable[[Request], Response]


@dataclass
class Route:
    method: str
    template: str
    operation: str
    handler: Handler
    regex: re.Pattern = field(init=False)

    def __post_init__(self) -> None:
        pattern = re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", self.template)
        self.regex = re.compile("^" + pattern + "$")


class Service:
    """A simulated API: routes, authentication and error format. Subclasses fill these in."""

    name = "service"

    def __init__(self, sandbox: "Sandbox"):
        self.sandbox = sandbox
        self.routes: list[Route] = []

    def add_route(self, method: str, template: str, operation: str, handler: Handler) -> None:
        self.routes.append(Route(method.upper(), template, operation, handler))

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        allowed = False
        for route in self.routes:
            found = route.regex.match(path)
            if found:
                allowed = True
                if route.method == method:
                    return route, found.groupdict()
        if allowed:
            return None
        return None

    # Hooks for subclasses -------------------------------------------------------
    def authenticate(self, request: Request) -> None:
        """Raise :class:`ApiError` when the request is not authorised."""

    def render_error(self, error: ApiError) -> Response:
        return Response(error.status, {"message": error.message, "status": error.status})

    def validate_request(self, request: Request, route: Route) -> list[str]:
        """Return contract violations of a request (recorded in the call log)."""
        return []

    def admin_routes(self) -> list[Route]:
        """Extra routes under ``/_admin/<service>/...`` for tests and the demo."""
        return []

    def to_state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass

    def tick(self, now: datetime) -> None:
        """Apply time-driven transitions (deadlines, delays) up to ``now``."""

    def call_variant(self, request: Request, operation: str) -> str | None:
        """Which of an operation's published ceilings a call falls under (e.g. a full or a
        differential export), for checking the call log against them; None when one ceiling."""
        return None


@dataclass
class FaultRule:
    """One fault of a ``kind`` (see :data:`FAULT_KINDS`) on calls of ``service`` and ``operation``.

    ``*`` matches every service or operation; the fault fires with ``probability``, and at
    most ``count`` times when a count is given. ``status`` is the HTTP status of the
    ``status`` and ``apply_then_status`` kinds, ``delay`` the seconds of the slow kinds.
    ``contains``: only calls whose path, query or body contains this text (one record's calls).
    """

    service: str = "*"
    operation: str = "*"
    kind: str = "status"
    status: int = 500
    probability: float = 1.0
    count: int | None = None
    retry_after: float | None = None
    delay: float = 0.0
    contains: str | None = None

    def matches(self, service: str, operation: str, text: str = "") -> bool:
        return (self.service in ("*", service) and self.operation in ("*", operation)
                and (self.contains is None or self.contains in text))


# Faults before the request is applied (the harmless case for a retry) and faults after it:
# the change is made, then the answer is an error, a dropped connection or later than any
# client waits. Only the second kind tells a blind retry of a write from a safe one.
FAULTS_BEFORE = ("status", "slow", "drop")
FAULTS_AFTER = ("apply_then_status", "apply_then_drop", "apply_then_slow", "malformed")
FAULT_KINDS = FAULTS_BEFORE + FAULTS_AFTER


class FaultInjector:
    """Decides, per call, whether to inject a fault; seeded so runs repeat."""

    KINDS = frozenset(FAULT_KINDS)

    def __init__(self, seed: int = 0):
        self._lock = threading.Lock()
        self._rules: list[FaultRule] = []
        self._random = random.Random(seed)

    def set(self, rules: list[FaultRule | dict]) -> None:
        parsed = [r if isinstance(r, FaultRule) else FaultRule(**r) for r in rules]
        for rule in parsed:
            if rule.kind not in self.KINDS:
                raise ValueError(f"unknown fault kind {rule.kind!r}")
        with self._lock:
            self._rules = parsed

    def add(self, rule: FaultRule | dict) -> None:
        parsed = rule if isinstance(rule, FaultRule) else FaultRule(**rule)
        if parsed.kind not in self.KINDS:
            raise ValueError(f"unknown fault kind {parsed.kind!r}")
        with self._lock:
            self._rules.append(parsed)

    def clear(self) -> None:
        with self._lock:
            self._rules = []

    def pick(self, service: str, operation: str, text: str = "") -> FaultRule | None:
        """``text``: the call's path and body, for rules that target one record (``contains``)."""
        with self._lock:
            for rule in self._rules:
                if not rule.matches(service, operation, text):
                    continue
                if rule.count is not None and rule.count <= 0:
                    continue
                if self._random.random() >= rule.probability:
                    continue
                if rule.count is not None:
                    rule.count -= 1
                return rule
        return None

    def describe(self) -> list[dict]:
        with self._lock:
            return [r.__dict__.copy() for r in self._rules]


class CallLog:
    """Every request either server received: for counting calls and checking ceilings."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: list[dict] = []

    def record(self, entry: dict) -> None:
        with self._lock:
            entry["seq"] = len(self._entries) + 1
            self._entries.append(entry)

    def entries(self, service: str | None = None, operation: str | None = None) -> list[dict]:
        with self._lock:
            return [
                dict(e)
                for e in self._entries
                if (service is None or e["service"] == service)
                and (operation is None or e["operation"] == operation)
            ]

    def count(
        self, service: str | None = None, operation: str | None = None, ok_only: bool = False, landed: bool = False
    ) -> int:
        """Calls of ``service``/``operation``; ``ok_only``: answered below 400; ``landed``: applied.

        A call *landed* when its handler succeeded, whatever the client was told afterwards.
        """
        return sum(
            1
            for e in self.entries(service, operation)
            if (not ok_only or (e["status"] is not None and e["status"] < 400)) and (not landed or e["applied"])
        )

    def landed(self, service: str, operation: str, path_contains: str | None = None) -> list[dict]:
        """The calls of one operation that changed the sandbox's state (see :meth:`count`)."""
        return [e for e in self.entries(service, operation)
                if e["applied"] and (path_contains is None or path_contains in e["path"])]

    def clear(self) -> None:
        with self._lock:
            self._entries = []


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


def _make_handler(sandbox: "Sandbox", service: Service):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = f"sandbox-{service.name}"

        def log_message(self, *args: Any) -> None:  # the call log replaces stderr noise
            pass

        def date_time_string(self, timestamp: float | None = None) -> str:
            # The Date header shows the sandbox's clock, as a real server shows its own.
            from email.utils import format_datetime

            return format_datetime(sandbox.clock.now(), usegmt=True)
        def setup(self) -> None:
            super().setup()
            # headers and body are two writes: without this, Nagle holds the body back until the
            # client's delayed ACK (~40 ms on Linux), which would dwarf most answers' real cost
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def _serve(self) -> None:
            split = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = Request(
                method=self.command,
                path=split.path,
                query=parse_qs(split.query, keep_blank_values=True),
                headers=self.headers,
                body=body,
            )
            response = sandbox.handle(service, request)
            if response is None:  # a dropped connection
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            payload = response.encode()
            self.send_response(response.status)
            self.send_header("Content-Type", response.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for key, value in response.headers.items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                try:
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # the client gave up first (a slow fault beyond its timeout): nothing to answer
                    self.close_connection = True

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

    return Handler


class Sandbox:
    """Both simulated APIs, their shared clock, call log and faults, on loopback ports."""

    def __init__(
        self,
        seed: int = 42,
        state_file: str | None = None,
        clock: Clock | None = None,
        validate_requests: bool = False,
        latency: Any = None,
    ):
        from include.sandbox.mirakl import MiraklService
        from include.sandbox.mirakl_auth import MiraklAuthService
        from include.sandbox.woocommerce import WooService

        self.seed = seed
        self.random = random.Random(seed)
        self.state_file = state_file
        self.clock = clock or Clock()
        self.log = CallLog()
        self.faults = FaultInjector(seed)
        self.lock = threading.RLock()
        self.validate_requests = validate_requests
        self.latency = latency  # a latency.LatencyProfile (benches) or None (tests: answer at once)
        self.mirakl = MiraklService(self)
        self.woo = WooService(self)
        self.auth = MiraklAuthService(self)  # Mirakl's authentication system (OAuth 2)
        self.services: dict[str, Service] = {"mirakl": self.mirakl, "woo": self.woo, "auth": self.auth}
        self._servers: dict[str, _Server] = {}
        self._threads: list[threading.Thread] = []
        if state_file:
            self.load()

    # Life cycle ------------------------------------------------------------------
    def start(self, mirakl_port: int = 0, woo_port: int = 0, host: str = "127.0.0.1",
              auth_port: int = 0) -> "Sandbox":
        for name, port in (("mirakl", mirakl_port), ("woo", woo_port), ("auth", auth_port)):
            server = _Server((host, port), _make_handler(self, self.services[name]))
            thread = threading.Thread(target=server.serve_forever, name=f"sandbox-{name}", daemon=True)
            thread.start()
            self._servers[name] = server
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers.values():
            server.shutdown()
            server.server_close()
        self._servers.clear()
        if self.state_file:
            self.save()

    def url(self, service: str) -> str:
        host, port = self._servers[service].server_address[:2]
        return f"http://{host}:{port}"

    @property
    def mirakl_url(self) -> str:
        return self.url("mirakl")

    @property
    def woo_url(self) -> str:
        return self.url("woo")

    @property
    def auth_url(self) -> str:
        return self.url("auth")

    # State -----------------------------------------------------------------------
    def now(self) -> datetime:
        return self.clock.now()

    def tick(self) -> None:
        with self.lock:
            now = self.clock.now()
            for service in self.services.values():
                service.tick(now)

    def save(self) -> None:
        with self.lock:
            state = {
                "clock": iso(self.clock.now()),
                "services": {name: s.to_state() for name, s in self.services.items()},
            }
        with open(self.state_file, "w", encoding="utf-8") as fh:
            json.dump(state, fh)

    def load(self) -> None:
        try:
            with open(self.state_file, encoding="utf-8") as fh:
                state = json.load(fh)
        except FileNotFoundError:
            return
        with self.lock:
            saved_now = parse_iso(state.get("clock"))
            if saved_now and saved_now > self.clock.now():
                self.clock.advance((saved_now - self.clock.now()).total_seconds())
            for name, service_state in state.get("services", {}).items():
                self.services[name].load_state(service_state)

    # Requests --------------------------------------------------------------------
    def handle(self, service: Service, request: Request) -> Response | None:
        if request.path.startswith("/_admin"):
            return self._handle_admin(service, request)
        matched = service.match(request.method, request.path)
        operation = matched[0].operation if matched else "unknown"
        entry = {
            "at": iso(self.clock.now()),
            "wall": time.time(),
            "service": service.name,
            "operation": operation,
            "method": request.method,
            "path": request.path,
            "query": {k: v for k, v in request.query.items() if k not in ("consumer_key", "consumer_secret")},
            "status": None,
            "fault": None,
            "violations": [],
            "variant": service.call_variant(request, operation),
            "applied": False,
        }
        query = " ".join(f"{k}={v}" for k, v in entry["query"].items())  # a look-up names its records here
        fault = self.faults.pick(service.name, operation,
                                 f"{request.path} {query} {request.body.decode('utf-8', errors='replace')}")
        if fault is not None:
            entry["fault"] = fault.kind
            if fault.kind == "slow":
                time.sleep(fault.delay)
            elif fault.kind == "drop":
                self.log.record(entry)
                return None
            elif fault.kind == "status":
                entry["status"] = fault.status
                self.log.record(entry)
                headers = {}
                if fault.retry_after is not None:
                    headers["Retry-After"] = str(int(fault.retry_after))
                err = service.render_error(ApiError(fault.status, "injected fault"))
                err.headers.update(headers)
                return err
        try:
            if matched is None:
                raise ApiError(404, f"No route for {request.method} {request.path}", "rest_no_route")
            route, params = matched
            request.path_params = params
            service.authenticate(request)
            if self.validate_requests:
                entry["violations"] = service.validate_request(request, route)
            with self.lock:
                now = self.clock.now()
                for svc in self.services.values():
                    svc.tick(now)
                response = route.handler(request)
        except ApiError as error:
            response = service.render_error(error)
        except Exception as error:  # a sandbox bug must look like a 500, not hang the client
            response = service.render_error(ApiError(500, f"sandbox error: {error!r}"))
        entry["status"] = response.status
        entry["applied"] = response.status < 400 and request.method not in ("GET", "HEAD")
        if self.latency is not None:  # outside the lock: slow answers overlap as on a real server
            entry["latency_s"] = self.latency.wait(service.name, operation, request, response)
        if fault is None or fault.kind in FAULTS_BEFORE:
            self.log.record(entry)
            return response
        return self._fail_after_applying(service, fault, response, entry)

    def _fail_after_applying(self, service: Service, fault: FaultRule, response: Response, entry: dict) -> Response | None:
        """The handler ran (its change is kept); now the answer goes wrong."""
        entry["handled_status"] = response.status
        if fault.kind == "apply_then_status":
            entry["status"] = fault.status
            self.log.record(entry)
            return service.render_error(ApiError(fault.status, "injected fault after the request was applied"))
        if fault.kind == "apply_then_drop":
            self.log.record(entry)
            return None
        self.log.record(entry)
        if fault.kind == "apply_then_slow":
            time.sleep(fault.delay)  # longer than the client waits: it gave up, the change stays
            return response
        body = response.encode()  # malformed: a body cut in half
        return Response(response.status, body[: max(1, len(body) // 2)], response.headers, response.content_type)

    def _handle_admin(self, service: Service, request: Request) -> Response:
        try:
            return self._admin(service, request)
        except ApiError as error:
            return Response(error.status, {"error": error.message})
        except (ValueError, TypeError, KeyError) as error:
            return Response(400, {"error": f"{type(error).__name__}: {error}"})

    def _admin(self, service: Service, request: Request) -> Response:
        path, method = request.path, request.method
        body = request.json() or {}
        if path == "/_admin/clock":
            if method == "POST":
                if "freeze_at" in body:
                    self.clock.freeze(parse_iso(body["freeze_at"]))
                if body.get("freeze"):
                    self.clock.freeze()
                if body.get("unfreeze"):
                    self.clock.unfreeze()
                if "advance_seconds" in body:
                    self.clock.advance(float(body["advance_seconds"]))
                self.tick()
            return Response(200, {"now": iso(self.clock.now()), "frozen": self.clock.frozen})
        if path == "/_admin/faults":
            if method == "POST":
                self.faults.set(body.get("rules", []))
            elif method == "DELETE":
                self.faults.clear()
            return Response(200, {"rules": self.faults.describe()})
        if path == "/_admin/calls":
            if method == "DELETE":
                self.log.clear()
                return Response(200, {"calls": []})
            return Response(200, {"calls": self.log.entries(request.arg("service"), request.arg("operation"))})
        if path == "/_admin/scenario" and method == "POST":
            from include.sandbox.scenarios import apply_scenario

            with self.lock:
                result = apply_scenario(self, body["name"], **body.get("params", {}))
            return Response(200, result)
        if path == "/_admin/save" and method == "POST":
            self.save()
            return Response(200, {"saved": self.state_file})
        for svc in self.services.values():
            for route in svc.admin_routes():
                found = route.regex.match(path)
                if found and route.method == method:
                    request.path_params = found.groupdict()
                    with self.lock:
                        svc.tick(self.clock.now())
                        return route.handler(request)
        return Response(404, {"error": f"no admin route {method} {path}"})
