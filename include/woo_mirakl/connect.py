"""Connect to Mirakl: the OAuth authorization-code flow behind the operations page's button.

1. :func:`begin` — checks that the marketplace's Mirakl connection can be written (it lives in
   Airflow's metadata database, not an environment variable or a secrets backend), draws a
   ``state`` and returns the authorize URL plus a signed, short-lived value for an HttpOnly cookie
   that binds the state to this browser and this Airflow user (CSRF).
2. :func:`finish` — on the callback: the state must match the cookie and the user; the code is
   exchanged at the token endpoint; the refresh token goes into the connection's extra (Airflow
   encrypts it with its Fernet key), the access token into the shared token store (encrypted); a
   store id given by the user is saved; then the connection is verified (A01, as the Test button does)
   and the outcome is told in plain words. No secret is ever logged, returned or put in the ledger
   in clear.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable

# These pages run in the API server, which may write the metadata database directly.
from include.woo_mirakl.airflow_connections import MetadataDbExtras

log = logging.getLogger(__name__)

STATE_TTL = 600  # seconds a sign-in at Mirakl may take
COOKIE = "woo_mirakl_connect"
CALLBACK_PATH = "/callback"


class ConnectError(Exception):
    """Connecting cannot go on; the message says why, in words a seller understands."""


@dataclass(frozen=True)
class ConnectResult:
    """The outcome of a connection, for the page."""

    ok: bool
    marketplace: str
    message: str
    needs_store: bool = False


def _secret_key() -> bytes:
    """A key every api-server worker shares: derived from Airflow's own JWT secret and Fernet key."""
    from airflow.configuration import conf

    material = (conf.get("api_auth", "jwt_secret", fallback="") or "") + (conf.get("core", "fernet_key", fallback="") or "")
    if not material:
        raise ConnectError("Airflow has neither [api_auth] jwt_secret nor [core] fernet_key: set them first")
    return hashlib.sha256(b"woo-mirakl-connect\x00" + material.encode()).digest()


def sign(payload: dict[str, Any], key: bytes | None = None) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, sort_keys=True).encode()).decode()
    mac = hmac.new(key or _secret_key(), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def unsign(value: str | None, key: bytes | None = None, now: Callable[[], float] = time.time) -> dict[str, Any]:
    if not value or "." not in value:
        raise ConnectError("this sign-in was not started from this browser (no state cookie): start again")
    body, mac = value.rsplit(".", 1)
    expected = hmac.new(key or _secret_key(), body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, expected):
        raise ConnectError("the state cookie is not ours: start again from the operations page")
    payload = json.loads(base64.urlsafe_b64decode(body.encode()))
    if payload.get("exp", 0) < now():
        raise ConnectError("the sign-in at Mirakl took longer than 10 minutes: start again")
    return payload


def _connection_row(conn_id: str) -> Any:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        conn = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
        if conn is not None:
            session.expunge(conn)
        return conn


def redirect_uri(conn: Any, base_url: str) -> str:
    """The callback Mirakl sends the browser back to: the connection's ``redirect_uri`` extra, else ours."""
    return (conn.extra_dejson or {}).get("redirect_uri") or base_url.rstrip("/") + CALLBACK_PATH


def _oauth_conn(marketplace_name: str) -> tuple[Any, Any]:
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.hooks import OAUTH_AUTHORIZATION_CODE

    marketplace = get_marketplace(marketplace_name)
    conn = _connection_row(marketplace.mirakl_conn_id)
    if conn is None:
        raise ConnectError(
            f"the Mirakl connection {marketplace.mirakl_conn_id!r} is not in Airflow's connection list (it may come "
            "from an environment variable or a secrets backend, which Airflow cannot change): create it under "
            "Admin → Connections, type Mirakl, with the client id and secret Mirakl gave you")
    mode = (conn.extra_dejson or {}).get("auth_mode")
    if mode != OAUTH_AUTHORIZATION_CODE:
        raise ConnectError(
            f"the Mirakl connection {marketplace.mirakl_conn_id!r} is set to authenticate with "
            f"{mode or 'an API key'}; set Authentication to oauth_authorization_code to use Connect to Mirakl")
    return marketplace, conn


def begin(marketplace_name: str, user_id: str, base_url: str, now: Callable[[], float] = time.time) -> tuple[str, str]:
    """The authorize URL to send the browser to, and the cookie value binding the state to it."""
    from include.woo_mirakl.hooks import MiraklHook

    marketplace, conn = _oauth_conn(marketplace_name)
    endpoint = MiraklHook(marketplace.mirakl_conn_id).oauth_endpoint()
    state = secrets.token_urlsafe(24)
    callback = redirect_uri(conn, base_url)
    cookie = sign({"state": state, "marketplace": marketplace.name, "user": user_id, "redirect_uri": callback,
                   "exp": int(now()) + STATE_TTL})
    return endpoint.authorization_url(callback, state), cookie


def finish(cookie: str | None, query: dict[str, str], user_id: str, now: Callable[[], float] = time.time) -> ConnectResult:
    """The callback: check the state, exchange the code, keep the tokens, verify, say what happened."""
    from include.woo_mirakl.hooks import MiraklHook
    from include.woo_mirakl.ledger import get_ledger
    from include.woo_mirakl.ledger.oauth_tokens import LedgerTokenStore

    bound = unsign(cookie, now=now)
    if not query.get("state") or not hmac.compare_digest(str(query["state"]), str(bound["state"])):
        raise ConnectError("the answer from Mirakl does not belong to the sign-in started here (state mismatch)")
    if bound["user"] != user_id:
        raise ConnectError("this sign-in was started by another Airflow user: start again")
    name = bound["marketplace"]
    if query.get("error"):
        words = {"access_denied": "you did not give the integration access on Mirakl's consent page"}
        return ConnectResult(False, name, "Not connected: " + words.get(
            query["error"], f"Mirakl answered {query['error']}: {query.get('error_description') or ''}".strip()))
    if not query.get("code"):
        raise ConnectError("Mirakl sent no authorization code back")
    marketplace, _conn = _oauth_conn(name)
    hook = MiraklHook(marketplace.mirakl_conn_id)
    endpoint = hook.oauth_endpoint()
    try:
        token = endpoint.exchange_code(query["code"], bound["redirect_uri"])
    except Exception as error:  # OAuthError or transport: told in words, never the code itself
        log.warning("Mirakl code exchange failed for %s: %s", name, type(error).__name__)
        return ConnectResult(False, name, f"Not connected: Mirakl's authentication system refused the exchange ({error})")
    if not token.refresh_token:
        return ConnectResult(False, name, "Not connected: Mirakl gave no refresh token, so access could not be renewed")
    MetadataDbExtras().update_extra(marketplace.mirakl_conn_id, {"refresh_token": token.refresh_token})
    provider = hook.token_provider()
    with LedgerTokenStore(get_ledger()).locked(provider.key) as slot:
        slot.save(token, provider.origin)  # the first calls use this token; renewals start from the connection
    return verify(name)


def choose_store(marketplace_name: str, shop_id: int) -> ConnectResult:
    """The seller has several stores: keep the one they picked and verify it."""
    marketplace, _conn = _oauth_conn(marketplace_name)
    MetadataDbExtras().update_extra(marketplace.mirakl_conn_id, {"shop_id": int(shop_id)})
    return verify(marketplace_name)


def verify(marketplace_name: str) -> ConnectResult:
    """A01 through the connection, as its Test button does; a missing store id is asked for."""
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.hooks import MiraklHook

    hook = MiraklHook(get_marketplace(marketplace_name).mirakl_conn_id)
    ok, message = hook.test_connection()
    needs_store = not ok and ("shop" in message.lower() and ("403" in message or "400" in message))
    return ConnectResult(ok, marketplace_name, message, needs_store=needs_store)


def status(marketplace_name: str) -> dict[str, Any]:
    """What the Connect page shows per marketplace: auth mode, token expiry and state (never a token)."""
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.hooks import API_KEY, AUTH_MODE_WORDS, MiraklHook

    marketplace = get_marketplace(marketplace_name)
    conn = _connection_row(marketplace.mirakl_conn_id)
    extra = (conn.extra_dejson or {}) if conn else {}
    mode = extra.get("auth_mode") or API_KEY
    out: dict[str, Any] = {"marketplace": marketplace.name, "conn_id": marketplace.mirakl_conn_id,
                           "in_airflow": conn is not None, "auth_mode": mode,
                           "auth_words": AUTH_MODE_WORDS.get(mode, mode), "connected": bool(extra.get("refresh_token")),
                           "expires_at": None, "state": "not connected" if mode != API_KEY else "API key"}
    if conn is not None and mode != API_KEY and extra.get("refresh_token"):
        try:
            info = MiraklHook(marketplace.mirakl_conn_id).token_provider().status()
        except Exception as error:  # shown, never raised: the page must load
            out["state"] = f"cannot read the token state ({type(error).__name__})"
        else:
            out["expires_at"] = info.get("expires_at")
            out["state"] = ("reconnect needed: " + (info.get("reason") or "") if info.get("status") == "reconnect_required"
                            else "connected")
    return out
