"""OAuth 2 with Mirakl's authentication system: the token endpoint and a token provider shared by workers.

Mirakl documents (developer.mirakl.com, Mirakl Connect "Authentication"/"Authorization" and the MAS
OAuth 2 guide) a token endpoint at ``https://auth.mirakl.net/oauth/token`` taking a form-encoded
``grant_type`` with ``client_id`` and ``client_secret``: ``client_credentials`` for Mirakl Connect,
the authorization-code protocol for integrators (client id, secret and a registered redirect URI).
Answers hold ``token_type: Bearer``, ``access_token`` and ``expires_in``; Mirakl advises renewing
"a few minutes before" expiry. Every URL here is configurable (connection extras).

:class:`TokenProvider` hands out a valid access token: from its own cache while it is fresh, else
from the shared :class:`TokenStore` (the ledger) under a row lock, so when it expires one worker
renews it and the others find the new one; after a 401 the caller invalidates it once and retries.
The store holds access tokens only; the refresh token stays in the connection (a
:class:`RefreshTokenHome`), rewritten there when Mirakl rotates it.
"""
from __future__ import annotations

import hashlib
import logging
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterator, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

from include.woo_mirakl.clients.http import ApiError, ClientError, HttpClient, RetryPolicy

log = logging.getLogger(__name__)

# What Mirakl documents (developer.mirakl.com, read 2026-12):
# - Mirakl Connect, developer guide "Authentication" (/content/product/connect-channel-platform/
#   developer-guide/authentication): POST https://auth.mirakl.net/oauth/token, Content-Type
#   application/x-www-form-urlencoded, grant_type=client_credentials, client_id and client_secret in the
#   body, all mandatory; the answer has token_type "Bearer", access_token, expires_in (3599 in the example),
#   target_app, resource_owner; renew "a few minutes before the expires_in value"; calls send
#   "Authorization: Bearer <access-token>". Guide "Authorization" (same folder): a call without a valid,
#   unexpired token is refused with 401.
# - "MAS OAuth 2 documentation" (/static/doc/mirakl-authentication-system/mas-oauth2-documentation.pdf):
#   integrators use the OAuth 2 Authorization Code protocol with a client id and secret Mirakl creates for
#   them and redirect URIs they register with Mirakl (several allowed, e.g. with a tenant in the query).
# The public text names neither the authorize page nor a revocation endpoint, nor the code-exchange and
# refresh parameters: those follow RFC 6749 (authorization_code, refresh_token at the same token endpoint)
# and RFC 7009 (token=...) at the same host, and every address is a connection setting (token_url,
# authorize_url, revoke_url extras) for when Mirakl gives you others with your client id.
MIRAKL_AUTH = "https://auth.mirakl.net"
DEFAULT_TOKEN_URL = f"{MIRAKL_AUTH}/oauth/token"  # documented
DEFAULT_AUTHORIZE_URL = f"{MIRAKL_AUTH}/oauth/authorize"  # not documented publicly: RFC 6749 naming
DEFAULT_REVOKE_URL = f"{MIRAKL_AUTH}/oauth/revoke"  # not documented publicly: RFC 7009 naming
REFRESH_MARGIN = timedelta(minutes=5)  # "a few minutes before the expires_in value"

CLIENT_CREDENTIALS = "client_credentials"
AUTHORIZATION_CODE = "authorization_code"
GRANTS = (CLIENT_CREDENTIALS, AUTHORIZATION_CODE)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def fingerprint(*parts: str | None) -> str:
    """A one-way digest naming where a stored token came from (never the secret itself)."""
    return hashlib.sha256("\x1f".join(p or "" for p in parts).encode()).hexdigest()[:32]


class OAuthError(ClientError):
    """The authentication system refused a request; ``error`` is the RFC 6749 code (invalid_grant...)."""

    def __init__(self, operation: str, status: int, error: str | None, description: str):
        super().__init__("mirakl-auth", operation, f"HTTP {status} {error or ''}: {description}".replace("  ", " "))
        self.status = status
        self.error = error
        self.description = description


class ReconnectRequired(ClientError):
    """The authorization is gone (refresh token expired or revoked, consent withdrawn): a person must reconnect."""

    def __init__(self, key: str, reason: str):
        super().__init__(
            "mirakl-auth", "token",
            f"the Mirakl authorization of {key} can no longer be renewed ({reason}): "
            "use Reconnect on the operations page",
        )
        self.reason = reason


@dataclass(frozen=True)
class Token:
    """An access token, when it expires, and the refresh token that renews it (if any)."""

    access_token: str = field(repr=False)
    expires_at: datetime
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None

    def fresh(self, now: datetime, margin: timedelta) -> bool:
        return now + margin < self.expires_at

    def shared_part(self) -> dict[str, Any]:
        """What workers share through the token store: never the refresh token (it lives in the connection)."""
        return {"access_token": self.access_token, "scope": self.scope}

    def without_refresh(self) -> "Token":
        return Token(self.access_token, self.expires_at, None, self.scope)


@dataclass(frozen=True)
class OAuthSettings:
    """A Mirakl OAuth client: which grant, its credentials and the authentication system's URLs."""

    grant: str
    client_id: str
    client_secret: str = field(repr=False)
    token_url: str = DEFAULT_TOKEN_URL
    authorize_url: str = DEFAULT_AUTHORIZE_URL
    revoke_url: str = DEFAULT_REVOKE_URL
    scope: str | None = None
    audience: str | None = None

    def __post_init__(self) -> None:
        if self.grant not in GRANTS:
            raise ValueError(f"OAuth grant {self.grant!r} must be one of {list(GRANTS)}")
        if not self.client_id or not self.client_secret:
            raise ValueError("OAuth needs the client id (login) and client secret (password) Mirakl issued")


class TokenEndpoint(HttpClient):
    """Calls of the authentication system: token (three grants), revocation, the authorize URL."""

    service = "mirakl-auth"

    def __init__(self, settings: OAuthSettings, *, retry: RetryPolicy | None = None, verify: bool = True,
                 clock: Callable[[], datetime] = _utcnow, **http_options: Any):
        parts = urlsplit(settings.token_url)
        super().__init__(f"{parts.scheme}://{parts.netloc}", retry=retry, verify=verify,
                         secrets=[settings.client_secret], **http_options)
        self.settings = settings
        self._clock = clock

    def error_code_and_message(self, status: int, body: Any) -> tuple[str | None, str]:
        if isinstance(body, dict) and "error" in body:
            return str(body["error"]), str(body.get("error_description") or body["error"])
        return super().error_code_and_message(status, body)

    def authorization_url(self, redirect_uri: str, state: str, code_challenge: str | None = None) -> str:
        """Where to send the seller's browser to sign in, pick the store and consent."""
        params = {"response_type": "code", "client_id": self.settings.client_id, "redirect_uri": redirect_uri,
                  "state": state}
        if self.settings.scope:
            params["scope"] = self.settings.scope
        if code_challenge:
            params.update(code_challenge=code_challenge, code_challenge_method="S256")
        parts = urlsplit(self.settings.authorize_url)
        query = "&".join(filter(None, (parts.query, urlencode(params))))
        return urlunsplit(parts._replace(query=query))

    def client_credentials(self) -> Token:
        return self._token({"grant_type": CLIENT_CREDENTIALS, **self._scope()}, idempotent=True)

    def exchange_code(self, code: str, redirect_uri: str, code_verifier: str | None = None) -> Token:
        form = {"grant_type": AUTHORIZATION_CODE, "code": code, "redirect_uri": redirect_uri}
        if code_verifier:
            form["code_verifier"] = code_verifier
        return self._token(form, idempotent=False)

    def refresh(self, refresh_token: str) -> Token:
        # Not repeated after an unknown outcome: a rotated refresh token used twice ends the grant.
        return self._token({"grant_type": "refresh_token", "refresh_token": refresh_token}, idempotent=False)

    def revoke(self, token: str) -> None:
        self.redactor.add(token)
        path = urlsplit(self.settings.revoke_url).path
        self._send(path, "revoke", {"token": token}, idempotent=True, expect="none")

    def _scope(self) -> dict[str, str]:
        extra = {}
        if self.settings.scope:
            extra["scope"] = self.settings.scope
        if self.settings.audience:
            extra["audience"] = self.settings.audience
        return extra

    def _token(self, form: dict[str, str], idempotent: bool) -> Token:
        for key in ("code", "refresh_token"):
            self.redactor.add(form.get(key))
        asked_at = self._clock()
        body = self._send(urlsplit(self.settings.token_url).path, "token", form, idempotent=idempotent)
        if not isinstance(body, dict) or not body.get("access_token"):
            raise OAuthError("token", 200, "invalid_response", "the answer carries no access_token")
        if str(body.get("token_type", "")).lower() != "bearer":
            raise OAuthError("token", 200, "invalid_response", f"token_type {body.get('token_type')!r} is not Bearer")
        try:
            lifetime = float(body["expires_in"])
        except (KeyError, TypeError, ValueError):
            raise OAuthError("token", 200, "invalid_response", "the answer carries no usable expires_in") from None
        token = Token(str(body["access_token"]), asked_at + timedelta(seconds=lifetime),
                      body.get("refresh_token") or None, body.get("scope"))
        self.redactor.add(token.access_token)
        self.redactor.add(token.refresh_token)
        return token

    def _send(self, path: str, operation: str, form: dict[str, str], *, idempotent: bool, expect: str = "json") -> Any:
        data = {**form, "client_id": self.settings.client_id, "client_secret": self.settings.client_secret}
        try:
            return self.request("POST", path, operation, data=data, idempotent=idempotent, expect=expect,
                                headers={"Accept": "application/json"}).body
        except ApiError as error:
            raise OAuthError(operation, error.status, error.code, error.message) from None


class TokenSlot(Protocol):
    """The shared row of one connection's token, held under a lock while it is open."""

    token: Token | None
    origin: str | None
    status: str

    def save(self, token: Token, origin: str) -> None: ...
    def expire(self) -> None: ...
    def needs_reconnect(self, reason: str, origin: str) -> None: ...


class RefreshTokenHome(Protocol):
    """Where the seller's refresh token lives (the Airflow connection): read afresh under the store's
    lock, written back when Mirakl rotates it. ``where`` names it for messages."""

    where: str

    def read(self) -> str | None: ...
    def write(self, refresh_token: str) -> None: ...
    def cannot_write(self) -> str | None: ...  # why a rotated token could not be saved, known beforehand


@dataclass
class HeldRefreshToken:
    """A refresh token this process alone holds (a connection test, a test): a rotation stays in memory."""

    value: str | None = field(default=None, repr=False)
    where: str = "this process"

    def read(self) -> str | None:
        return self.value

    def write(self, refresh_token: str) -> None:
        self.value = refresh_token

    def cannot_write(self) -> str | None:
        return None


class RenewalNotPossibleHere(ClientError):
    """Renewing would spend the seller's refresh token where its rotated successor cannot be saved."""

    def __init__(self, key: str, reason: str):
        super().__init__("mirakl-auth", "token", f"the Mirakl access token of {key} is not renewed here, so as not "
                         f"to spend the seller's refresh token: {reason}")
        self.reason = reason


class TokenStore(Protocol):
    """Where workers share the current token: one lockable slot per key."""

    def locked(self, key: str) -> Any: ...  # a context manager yielding a TokenSlot
    def peek(self, key: str) -> dict[str, Any] | None: ...  # status without secrets
    def forget(self, key: str) -> None: ...  # drop the key's token (disconnect)


@dataclass
class _MemorySlot:
    token: Token | None = None
    origin: str | None = None
    status: str = "none"
    reason: str | None = None

    def save(self, token: Token, origin: str) -> None:
        self.token, self.origin, self.status, self.reason = token.without_refresh(), origin, "ok", None

    def expire(self) -> None:
        if self.token is not None:
            self.token = Token(self.token.access_token, datetime.min.replace(tzinfo=timezone.utc), None,
                               self.token.scope)

    def needs_reconnect(self, reason: str, origin: str) -> None:
        self.status, self.reason, self.origin = "reconnect_required", reason, origin


class MemoryTokenStore:
    """One process's store (threads share it): for a connection test without a ledger."""

    def __init__(self) -> None:
        self._slots: dict[str, _MemorySlot] = {}
        self._lock = threading.Lock()

    @contextmanager
    def locked(self, key: str) -> Iterator[_MemorySlot]:
        with self._lock:
            yield self._slots.setdefault(key, _MemorySlot())

    def forget(self, key: str) -> None:
        with self._lock:
            self._slots.pop(key, None)

    def peek(self, key: str) -> dict[str, Any] | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        return {"expires_at": slot.token.expires_at if slot.token else None, "status": slot.status,
                "reason": slot.reason}


class TokenProvider:
    """A valid Bearer token for one Mirakl connection, renewed once for all workers.

    The access token is shared through ``store`` (the ledger, encrypted); the refresh token lives
    only in ``refresh_tokens`` (the connection). Under the store's lock the refresh token is read
    afresh, so a worker that started before another one's renewal never spends a token Mirakl has
    already rotated (which would end the seller's grant); a rotated token is written back to the
    connection before the lock is released. A stored access token is used only when it descends
    from the refresh token the connection holds now: after a Reconnect, the old chain is dropped.
    """

    def __init__(self, endpoint: TokenEndpoint, store: TokenStore, key: str, *,
                 refresh_tokens: RefreshTokenHome | None = None, origin_refresh_token: str | None = None,
                 margin: timedelta = REFRESH_MARGIN, clock: Callable[[], datetime] = _utcnow):
        self.endpoint = endpoint
        self.store = store
        self.key = key
        self.grant = endpoint.settings.grant
        self.margin = margin
        self.refresh_tokens = refresh_tokens or HeldRefreshToken(origin_refresh_token)
        self._clock = clock
        self._cached: Token | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"TokenProvider({self.key!r}, {self.grant})"

    @property
    def origin_refresh_token(self) -> str | None:
        """The refresh token the connection holds now (a disconnect revokes it)."""
        if self.grant == CLIENT_CREDENTIALS:
            return None
        token = self.refresh_tokens.read()
        self.endpoint.redactor.add(token)
        return token

    @property
    def origin(self) -> str:
        """Names the credentials a stored token must descend from (a digest, never a secret)."""
        return self._origin_of(self.origin_refresh_token)

    def _origin_of(self, refresh_token: str | None) -> str:
        settings = self.endpoint.settings
        if self.grant == CLIENT_CREDENTIALS:
            return fingerprint(settings.token_url, settings.client_id, settings.client_secret)
        return fingerprint(settings.token_url, refresh_token)

    @property
    def expires_at(self) -> datetime | None:
        return self._cached.expires_at if self._cached else None

    def token(self) -> str:
        """The current access token, renewing it (under the shared lock) when it is about to expire."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and self._cached.fresh(now, self.margin):
                return self._cached.access_token
            problem: ReconnectRequired | None = None
            with self.store.locked(self.key) as slot:
                held = self.origin_refresh_token  # afresh: another worker may have rotated it
                origin = self._origin_of(held)
                current = slot.token if slot.origin == origin else None
                if slot.origin == origin and slot.status == "reconnect_required":
                    problem = ReconnectRequired(self.key, getattr(slot, "reason", None) or "refused before")
                elif current is not None and current.fresh(now, self.margin):
                    self._cached = current.without_refresh()  # another worker renewed it
                else:
                    problem = self._renew(slot, current, origin, held)
            if problem is not None:
                raise problem
            self.endpoint.redactor.add(self._cached.access_token)
            return self._cached.access_token

    def _renew(self, slot: Any, current: Token | None, origin: str, held: str | None) -> ReconnectRequired | None:
        if self.grant == AUTHORIZATION_CODE:
            unsaved = self.refresh_tokens.cannot_write()
            if unsaved:
                raise RenewalNotPossibleHere(self.key, unsaved)
        # a row written before refresh tokens moved to the connection still carries the live one
        spent = (current.refresh_token if current else None) or held
        try:
            fresh = self._obtain(spent)
        except OAuthError as error:
            if error.error not in ("invalid_grant", "invalid_client", "unauthorized_client"):
                raise
            problem = ReconnectRequired(self.key, f"{error.error}: {error.description}")
            slot.needs_reconnect(problem.reason, origin)
            return problem
        if self.grant == AUTHORIZATION_CODE and fresh.refresh_token != held:
            try:
                self.refresh_tokens.write(fresh.refresh_token)
            except Exception as error:  # noqa: BLE001 - the grant now hangs on this process: say so
                reason = (f"Mirakl rotated the refresh token and it could not be saved in {self.refresh_tokens.where} "
                          f"({type(error).__name__}: {self.endpoint.redactor.redact(str(error))})")
                log.error("%s: %s", self.key, reason)
                # the connection's token is spent: nobody may use it again, or Mirakl ends the grant
                slot.needs_reconnect(reason, origin)
                return ReconnectRequired(self.key, reason)
            origin = self._origin_of(fresh.refresh_token)
            log.info("%s: Mirakl rotated the refresh token; saved in %s", self.key, self.refresh_tokens.where)
        slot.save(fresh, origin)
        self._cached = fresh.without_refresh()
        log.info("%s: new Mirakl access token, valid until %s", self.key, fresh.expires_at.isoformat())
        return None

    def invalidate(self, rejected: str) -> None:
        """Mirakl answered 401 to ``rejected``: forget it here and, if still current, for every worker."""
        with self._lock:
            if self._cached is not None and self._cached.access_token == rejected:
                self._cached = None
            with self.store.locked(self.key) as slot:
                if slot.token is not None and slot.token.access_token == rejected:
                    slot.expire()

    def _obtain(self, refresh_token: str | None) -> Token:
        if self.grant == CLIENT_CREDENTIALS:
            return self.endpoint.client_credentials()
        if not refresh_token:
            raise OAuthError("token", 400, "invalid_grant", "not connected: the connection holds no refresh token (use Connect to Mirakl)")
        token = self.endpoint.refresh(refresh_token)
        if token.refresh_token is None:  # servers that do not rotate keep the old one valid
            token = Token(token.access_token, token.expires_at, refresh_token, token.scope)
        return token

    def status(self) -> dict[str, Any]:
        """Auth mode, expiry and state for the verify step (no secret)."""
        stored = self.store.peek(self.key) or {}
        return {"grant": self.grant, "expires_at": stored.get("expires_at") or self.expires_at,
                "status": stored.get("status", "none"), "reason": stored.get("reason")}
