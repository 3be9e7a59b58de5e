"""Airflow hooks: build the Mirakl and WooCommerce clients from Airflow connections.

Connection types ``mirakl`` and ``woocommerce`` are registered by the in-repo provider
(``include/woo_mirakl/provider.py``), so the UI shows their own fields and the Test
button (and ``airflow connections test``) calls :meth:`test_connection` here.
Secrets are registered with Airflow's masker before any client is built.
"""
from __future__ import annotations

import ipaddress
import logging
import os
from typing import Any, Iterable
from urllib.parse import urlsplit

from airflow.sdk import BaseHook

from include.woo_mirakl.budgets import BudgetExceeded, CallBudget, LedgerCallBudget
from include.woo_mirakl.clients.http import (
    ApiError,
    ClientError,
    MalformedResponseError,
    RetryPolicy,
    TransportError,
)
from include.woo_mirakl.clients.mirakl import MiraklClient, mirakl_base_url
from include.woo_mirakl.clients.oauth import (
    MemoryTokenStore,
    OAuthError,
    ReconnectRequired,
    RenewalNotPossibleHere,
    TokenProvider,
)
from include.woo_mirakl.clients.woocommerce import WooCommerceClient, woo_base_url

log = logging.getLogger(__name__)
# Without a ledger (a connection test), tokens are shared by this process's threads only.
_PROCESS_TOKENS = MemoryTokenStore()

# A connection test should answer within seconds, not retry for minutes.
TEST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.5, max_delay=1.0, timeout=20.0, connect_timeout=5.0,
                         max_retry_after=5.0)


def _mask(value: str | None) -> None:
    if value:
        from airflow.sdk.log import mask_secret

        mask_secret(value)


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(f"connection extra {name!r} must be true or false, got {value!r}")


_RETRY_EXTRAS = {
    "timeout": ("timeout", float),
    "connect_timeout": ("connect_timeout", float),
    "retry_max_attempts": ("max_attempts", int),
    "retry_base_delay": ("base_delay", float),
    "retry_max_delay": ("max_delay", float),
}


def retry_from_extra(extra: dict[str, Any], conn_id: str) -> RetryPolicy | None:
    """A retry policy from connection extras (timeout, connect_timeout, retry_*); None if none is set."""
    values: dict[str, Any] = {}
    for key, (field_name, cast) in _RETRY_EXTRAS.items():
        if extra.get(key) not in (None, ""):
            try:
                values[field_name] = cast(extra[key])
            except (TypeError, ValueError):
                raise ValueError(f"connection {conn_id!r}: extra {key!r} must be a number, got {extra[key]!r}") from None
    return RetryPolicy(**values) if values else None


# Hosts other than this machine that may be reached without TLS: the demo's sandbox container
# ("sandbox" in docker-compose.yaml), never a real Mirakl instance or store. Comma-separated.
PLAIN_HOSTS_VARIABLE = "WOO_MIRAKL_PLAIN_HTTP_HOSTS"


def _is_loopback(host: str) -> bool:
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def plain_hosts_allowed() -> frozenset[str]:
    return frozenset(h.strip().lower() for h in os.environ.get(PLAIN_HOSTS_VARIABLE, "").split(",") if h.strip())


def check_transport(conn_id: str, url: str, verify: bool, allowed: Iterable[str] = ()) -> None:
    """Refuse plain ``http://`` or ``verify_ssl`` false to a host other than this machine.

    The API key, the consumer secret or the OAuth secret would cross the network readable (or go to
    whoever answers in the server's place). Loopback (the sandbox) is allowed, and so are the hosts
    of ``allowed`` (with a warning). The message names the connection and the host, never the URL's
    credentials or query.
    """
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if _is_loopback(host):
        return
    problem = None
    if parts.scheme != "https":
        problem = f"uses plain {parts.scheme}:// to {host}: its keys would cross the network unencrypted; use https://"
    elif not verify:
        problem = (f"has verify_ssl false for {host}: anyone in the way could read its keys; remove verify_ssl "
                   "(or give the server a valid certificate)")
    if problem is None:
        return
    if host in {h.lower() for h in allowed}:
        log.warning("connection %r %s (allowed by %s)", conn_id, problem, PLAIN_HOSTS_VARIABLE)
        return
    raise ValueError(f"connection {conn_id!r} {problem}. Plain or unverified connections are allowed only to "
                     f"this machine (127.0.0.1, localhost) or to hosts named in {PLAIN_HOSTS_VARIABLE}.")


def _transport_hint(error: ClientError) -> str:
    text = str(error)
    if "unknown host" in text:
        return "the host name does not resolve: check the connection's host"
    if "connection refused" in text:
        return "the connection was refused: check the host and port"
    if "timed out" in text:
        return "the server did not answer in time"
    return "the server could not be reached"


API_KEY = "api_key"
OAUTH_AUTHORIZATION_CODE = "oauth_authorization_code"
OAUTH_CLIENT_CREDENTIALS = "oauth_client_credentials"
AUTH_MODES = (API_KEY, OAUTH_AUTHORIZATION_CODE, OAUTH_CLIENT_CREDENTIALS)
AUTH_MODE_WORDS = {
    API_KEY: "API key",
    OAUTH_AUTHORIZATION_CODE: "Mirakl authentication system (connected by a seller, renewed automatically)",
    OAUTH_CLIENT_CREDENTIALS: "Mirakl authentication system (client credentials, renewed automatically)",
}


class ConnectionRefreshToken:
    """The seller's refresh token: the ``refresh_token`` extra of the Mirakl connection, read afresh
    each time and rewritten when Mirakl rotates it (see ``airflow_connections``)."""

    def __init__(self, conn_id: str):
        self.conn_id = conn_id
        self.where = f"the Airflow connection {conn_id!r}"

    def read(self) -> str | None:
        token = (BaseHook.get_connection(self.conn_id).extra_dejson or {}).get("refresh_token") or None
        _mask(token)
        return token

    def write(self, refresh_token: str) -> None:
        from include.woo_mirakl.airflow_connections import update_extra

        _mask(refresh_token)
        update_extra(self.conn_id, {"refresh_token": refresh_token})

    def cannot_write(self) -> str | None:
        from include.woo_mirakl.airflow_connections import defined_outside_the_database

        return defined_outside_the_database(self.conn_id)


class MiraklHook(BaseHook):
    """A Mirakl seller API connection: host, optional ``shop_id`` extra, and one of three auth modes.

    ``auth_mode`` extra: ``api_key`` (the default: the API key is the password),
    ``oauth_authorization_code`` (client id = login, client secret = password, ``refresh_token``
    extra written by Connect to Mirakl) or ``oauth_client_credentials`` (client id and secret).
    ``token_url``, ``authorize_url``, ``revoke_url``, ``scope`` and ``audience`` extras point at
    Mirakl's authentication system (https://auth.mirakl.net by default). Only the token endpoint is
    in Mirakl's public documents; the authorize and revoke defaults are RFC 6749/7009 names at the
    same host (see ``clients/oauth.py``): set the addresses Mirakl gives you with your client id.
    """

    conn_name_attr = "mirakl_conn_id"
    default_conn_name = "mirakl_default"
    conn_type = "mirakl"
    hook_name = "Mirakl"

    def __init__(self, mirakl_conn_id: str = default_conn_name, *, retry: RetryPolicy | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.mirakl_conn_id = mirakl_conn_id
        self.retry = retry

    def _settings(self) -> dict[str, Any]:
        conn = self.get_connection(self.mirakl_conn_id)
        _mask(conn.password)
        extra = conn.extra_dejson or {}
        _mask(extra.get("refresh_token"))
        auth_mode = str(extra.get("auth_mode") or API_KEY)
        if auth_mode not in AUTH_MODES:
            raise ValueError(f"connection {self.mirakl_conn_id!r}: auth_mode {auth_mode!r} must be one of {list(AUTH_MODES)}")
        if not conn.password:
            what = "API key" if auth_mode == API_KEY else "OAuth client secret"
            raise ValueError(f"connection {self.mirakl_conn_id!r} has no {what} (set its password)")
        shop_id = extra.get("shop_id")
        if shop_id not in (None, ""):
            try:
                shop_id = int(shop_id)
            except (TypeError, ValueError):
                raise ValueError(f"connection {self.mirakl_conn_id!r}: shop_id must be a number, got {shop_id!r}") from None
        else:
            shop_id = None
        verify = _as_bool(extra.get("verify_ssl", True), "verify_ssl")
        allowed = plain_hosts_allowed()
        check_transport(self.mirakl_conn_id, mirakl_base_url(conn.host or "", conn.port), verify, allowed)
        for key in ("token_url", "authorize_url", "revoke_url"):  # the OAuth secret and tokens go there
            if extra.get(key):
                check_transport(self.mirakl_conn_id, str(extra[key]), verify, allowed)
        return {"host": conn.host or "", "port": conn.port, "api_key": conn.password, "shop_id": shop_id,
                "verify": verify,
                "retry": retry_from_extra(extra, self.mirakl_conn_id), "auth_mode": auth_mode,
                "client_id": conn.login, "extra": extra}

    @property
    def auth_mode(self) -> str:
        return self._settings()["auth_mode"]

    def oauth_endpoint(self, retry: RetryPolicy | None = None) -> Any:
        """The authentication system's token endpoint for this connection's OAuth client."""
        from include.woo_mirakl.clients.oauth import (
            AUTHORIZATION_CODE, CLIENT_CREDENTIALS, DEFAULT_AUTHORIZE_URL, DEFAULT_REVOKE_URL, DEFAULT_TOKEN_URL,
            OAuthSettings, TokenEndpoint,
        )

        s = self._settings()
        extra = s["extra"]
        grant = AUTHORIZATION_CODE if s["auth_mode"] == OAUTH_AUTHORIZATION_CODE else CLIENT_CREDENTIALS
        if not s["client_id"]:
            raise ValueError(f"connection {self.mirakl_conn_id!r} has no OAuth client id (set its login)")
        settings = OAuthSettings(
            grant, s["client_id"], s["api_key"],
            token_url=extra.get("token_url") or DEFAULT_TOKEN_URL,
            authorize_url=extra.get("authorize_url") or DEFAULT_AUTHORIZE_URL,
            revoke_url=extra.get("revoke_url") or DEFAULT_REVOKE_URL,
            scope=extra.get("scope") or None, audience=extra.get("audience") or None,
        )
        return TokenEndpoint(settings, retry=retry or self.retry or s["retry"], verify=s["verify"])

    def token_provider(self, ledger: Any = None, retry: RetryPolicy | None = None) -> Any:
        """The shared token of this connection (kept in the ledger, or in this process without one)."""
        s = self._settings()
        if s["auth_mode"] == API_KEY:
            return None
        if ledger is None:
            try:
                from include.woo_mirakl.ledger import get_ledger

                ledger = get_ledger()
            except Exception as error:  # a connection test without a ledger: this process only
                log.info("no ledger for the shared OAuth token (%s); keeping it in this process", type(error).__name__)
        if ledger is not None:
            from include.woo_mirakl.ledger.oauth_tokens import LedgerTokenStore

            store: Any = LedgerTokenStore(ledger)
        else:
            store = _PROCESS_TOKENS
        return TokenProvider(self.oauth_endpoint(retry), store, f"{self.mirakl_conn_id}|{s['client_id']}",
                             refresh_tokens=ConnectionRefreshToken(self.mirakl_conn_id))

    def get_client(self, budget: CallBudget | None = None, retry: RetryPolicy | None = None,
                   ledger: Any = None) -> MiraklClient:
        """A client for this connection; pass a budget (see :meth:`get_budget`) to honour call ceilings."""
        s = self._settings()
        provider = None
        if s["auth_mode"] != API_KEY:
            provider = self.token_provider(ledger=ledger if ledger is not None else getattr(budget, "ledger", None),
                                           retry=retry)
        return MiraklClient(s["host"], None if provider else s["api_key"], shop_id=s["shop_id"], port=s["port"],
                            budget=budget, retry=retry or self.retry or s["retry"], verify=s["verify"],
                            token_provider=provider)

    get_conn = get_client

    def budget_scope(self) -> str:
        """Who a call ceiling belongs to: one shop on one Mirakl instance."""
        s = self._settings()
        return f"mirakl:{mirakl_base_url(s['host'], s['port'])}:shop={s['shop_id'] or 'default'}"

    def get_budget(self, ledger: Any = None, max_wait: float = 0.0) -> LedgerCallBudget:
        """A call budget kept in the ledger (the ``woo_mirakl_ledger`` connection by default)."""
        if ledger is None:
            from include.woo_mirakl.ledger import get_ledger

            ledger = get_ledger()
        return LedgerCallBudget(ledger, self.budget_scope(), max_wait=max_wait)

    def _budget_if_available(self) -> LedgerCallBudget | None:
        try:
            return self.get_budget()
        except Exception as error:  # no ledger configured: test without a ceiling check
            log.info("no ledger for the A01 call budget (%s); calling A01 without it", type(error).__name__)
            return None

    def test_connection(self) -> tuple[bool, str]:
        """A01: shop name, currency and state. A01 may run once a day; when its budget is used
        up, OF21 (no ceiling) proves the key instead."""
        try:
            settings = self._settings()
            client = self.get_client(budget=self._budget_if_available(), retry=TEST_RETRY)
        except ValueError as error:
            return False, str(error)
        where = client.base_url
        try:
            try:
                account = client.account()
            except BudgetExceeded as exceeded:
                unbudgeted = self.get_client(budget=None, retry=TEST_RETRY)
                count = unbudgeted.offers_count()
                return True, (
                    f"Mirakl {'API key' if settings['auth_mode'] == API_KEY else 'access token'} accepted by {where} "
                    f"({count} offers, via OF21). The A01 account check was "
                    f"skipped: Mirakl allows it once a day and it already ran; next allowed at "
                    f"{exceeded.retry_at.isoformat()}."
                )
        except ReconnectRequired as error:
            return False, str(error)
        except RenewalNotPossibleHere as error:
            # the Test button tests a copy of the connection in an environment variable
            return False, ("The access token needs renewing, which spends the seller's refresh token; Mirakl "
                           "rotates it and the next one could not be saved from here, so nothing was renewed "
                           f"({error.reason}). Verify this connection on the operations page's Mirakl "
                           "connections page instead, which renews, saves and checks it.")
        except OAuthError as error:
            return False, (f"Mirakl's authentication system refused the OAuth client ({error.error}: "
                           f"{error.description}): check the client id (login) and secret (password).")
        except ApiError as error:
            if error.status == 401 and settings["auth_mode"] != API_KEY:
                return False, f"Mirakl at {where} refused the access token even after renewing it (HTTP 401)."
            if error.status == 401:
                return False, f"Mirakl at {where} rejected the API key (HTTP 401): check the connection's password."
            if error.status == 403 and settings["shop_id"] is not None:
                return False, (
                    f"Mirakl at {where} refused access to shop {settings['shop_id']} (HTTP 403: {error.message}): "
                    "check the connection's shop_id against the shops of this API key."
                )
            if error.status == 403:
                return False, f"Mirakl at {where} refused access (HTTP 403): {error.message}"
            if error.status == 404:
                return False, f"{where} has no Mirakl seller API (HTTP 404 on /api/account): check the host."
            return False, f"Mirakl at {where} answered {error}"
        except MalformedResponseError:
            return False, f"{where} answered, but not like a Mirakl API: check the host."
        except TransportError as error:
            return False, f"Cannot reach Mirakl at {where}: {_transport_hint(error)}."
        expected = settings["shop_id"]
        if expected is not None and account.shop_id is not None and account.shop_id != expected:
            return False, (
                f"Shop id mismatch: the connection says shop {expected}, but the API key belongs to shop "
                f"{account.shop_id} ({account.shop_name})."
            )
        return True, (
            f"Connected to Mirakl shop {account.shop_name!r} (id {account.shop_id}) at {where}: "
            f"currency {account.currency_iso_code}, state {account.shop_state}." + auth_words(client)
        )


def auth_words(client: MiraklClient) -> str:
    """The sentence " Signed in through Mirakl's authentication system; token valid until …" (empty for an API key)."""
    provider = client.token_provider
    if provider is None or provider.expires_at is None:
        return ""
    return (f" Signed in through Mirakl's authentication system ({provider.grant.replace('_', ' ')}); "
            f"the access token is valid until {provider.expires_at:%Y-%m-%d %H:%M} UTC and renews itself.")


class WooCommerceHook(BaseHook):
    """A WooCommerce store: URL (host), consumer key (login) and secret (password)."""

    conn_name_attr = "woocommerce_conn_id"
    default_conn_name = "woocommerce_default"
    conn_type = "woocommerce"
    hook_name = "WooCommerce"

    def __init__(
        self, woocommerce_conn_id: str = default_conn_name, *, retry: RetryPolicy | None = None, **kwargs: Any
    ):
        super().__init__(**kwargs)
        self.woocommerce_conn_id = woocommerce_conn_id
        self.retry = retry

    def get_client(self, retry: RetryPolicy | None = None) -> WooCommerceClient:
        conn = self.get_connection(self.woocommerce_conn_id)
        _mask(conn.password)
        _mask(conn.login)
        if not conn.login or not conn.password:
            raise ValueError(
                f"connection {self.woocommerce_conn_id!r} needs the consumer key (login) and secret (password)"
            )
        extra = conn.extra_dejson or {}
        policy = retry or self.retry or retry_from_extra(extra, self.woocommerce_conn_id)
        verify = _as_bool(extra.get("verify_ssl", True), "verify_ssl")
        check_transport(self.woocommerce_conn_id, woo_base_url(conn.host or "", conn.port), verify,
                        plain_hosts_allowed())
        return WooCommerceClient(
            conn.host or "", conn.login, conn.password, port=conn.port,
            query_string_auth=_as_bool(extra.get("query_string_auth", False), "query_string_auth"),
            verify=verify, retry=policy,
        )

    get_conn = get_client

    def test_connection(self) -> tuple[bool, str]:
        """``system_status``: proves the URL, the keys and their read permission; shows the version."""
        try:
            client = self.get_client(retry=TEST_RETRY)
        except ValueError as error:
            return False, str(error)
        where = client.base_url
        try:
            status = client.system_status()
        except ApiError as error:
            if error.status == 401:
                return False, f"WooCommerce at {where} rejected the API keys (HTTP 401 {error.code}): {error.message}"
            if error.status == 404:
                return False, f"{where} has no WooCommerce REST API (HTTP 404 {error.code}): check the store URL."
            return False, f"WooCommerce at {where} answered {error}"
        except MalformedResponseError:
            return False, f"{where} answered, but not like the WooCommerce REST API: check the store URL."
        except TransportError as error:
            return False, f"Cannot reach WooCommerce at {where}: {_transport_hint(error)}."
        environment = status.get("environment") or {}
        return True, (
            f"Connected to WooCommerce {environment.get('version', 'unknown')} at {where} "
            f"(WordPress {environment.get('wp_version', 'unknown')})."
        )
