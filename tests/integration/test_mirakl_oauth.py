"""OAuth 2 against the sandbox's authentication system: grants, Bearer calls, renewal shared by workers.

Real HTTP over loopback to the sandbox (authorize pages, token endpoint, seller API), the shared
token in a real ledger (SQLite, and PostgreSQL when it runs), workers as real processes.
"""
from __future__ import annotations

import multiprocessing
import re
import secrets
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

from include.sandbox.core import Sandbox
from include.woo_mirakl.clients.http import ApiError, RetryPolicy
from include.woo_mirakl.clients.mirakl import MiraklClient
from include.woo_mirakl.clients.oauth import (
    AUTHORIZATION_CODE,
    CLIENT_CREDENTIALS,
    OAuthError,
    OAuthSettings,
    ReconnectRequired,
    TokenEndpoint,
    TokenProvider,
)
from include.woo_mirakl.ledger import Ledger, dispose_engines
from include.woo_mirakl.ledger.oauth_tokens import LedgerTokenStore

FORK = multiprocessing.get_context("fork")
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, timeout=10, connect_timeout=5)
REDIRECT = "http://127.0.0.1:9/woo-mirakl/connect/callback"
WORKERS = 10


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(seed=11).start()
    sb.auth.client().redirect_uris = [REDIRECT]
    yield sb
    sb.stop()


def _settings(sandbox, grant: str, secret: str | None = None) -> OAuthSettings:
    client = sandbox.auth.client()
    base = sandbox.auth_url
    return OAuthSettings(grant, client.client_id, secret or client.client_secret, token_url=f"{base}/oauth/token",
                         authorize_url=f"{base}/oauth/authorize", revoke_url=f"{base}/oauth/revoke")


def _endpoint(sandbox, grant: str, **kwargs) -> TokenEndpoint:
    return TokenEndpoint(_settings(sandbox, grant, **kwargs), retry=FAST, clock=sandbox.clock.now)


def _client(sandbox, provider: TokenProvider) -> MiraklClient:
    return MiraklClient(sandbox.mirakl_url, None, shop_id=sandbox.mirakl.shop_id, retry=FAST, token_provider=provider)


def seller_consents(sandbox, endpoint: TokenEndpoint, state: str, *, password: str | None = None,
                    decision: str = "allow") -> dict[str, str]:
    """What a seller's browser does: open the authorize URL, sign in, (pick the store), consent."""
    user = sandbox.auth.user()
    web = requests.Session()
    page = web.get(endpoint.authorization_url(REDIRECT, state), timeout=10)
    assert page.status_code == 200 and "Sign in to Mirakl" in page.text
    txn = re.search(r'name="txn" value="([^"]+)"', page.text).group(1)
    page = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                    data={"txn": txn, "step": "signin", "email": user.email, "password": password or user.password})
    if page.status_code == 200 and "Choose the store" in page.text:
        page = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                        data={"txn": txn, "step": "store", "shop_id": str(sandbox.mirakl.shop_id)})
    if page.status_code == 200:
        assert "Allow access" in page.text, page.text
        page = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                        data={"txn": txn, "step": "consent", "decision": decision})
    assert page.status_code == 302, page.text
    location = page.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def test_client_credentials_token_is_accepted_as_bearer_and_cached(sandbox, tmp_path):
    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    provider = TokenProvider(_endpoint(sandbox, CLIENT_CREDENTIALS), LedgerTokenStore(ledger), "mirakl_cc",
                             clock=sandbox.clock.now)
    before = sandbox.auth.issued.get("client_credentials", 0)
    client = _client(sandbox, provider)
    assert client.account().shop_id == sandbox.mirakl.shop_id
    assert client.offers_count() >= 0
    assert sandbox.auth.issued["client_credentials"] == before + 1  # fetched once, then cached
    assert provider.expires_at - sandbox.clock.now() > timedelta(minutes=55)
    # stored for the other workers, but never in clear
    status = LedgerTokenStore(ledger).peek("mirakl_cc")
    assert status["status"] == "ok" and status["renewals"] == 1
    raw = open(f"{tmp_path}/ledger.db", "rb").read() + open(f"{tmp_path}/ledger.db-wal", "rb").read()
    assert provider._cached.access_token.encode() not in raw


def test_a_wrong_client_secret_is_a_clear_error_and_no_api_key_fallback(sandbox):
    provider = TokenProvider(_endpoint(sandbox, CLIENT_CREDENTIALS, secret="wrong"), _memory(), "bad",
                             clock=sandbox.clock.now)
    with pytest.raises(ReconnectRequired, match="invalid_client"):
        _client(sandbox, provider).offers_count()
    # and the secret never appears in what the error says
    endpoint = _endpoint(sandbox, CLIENT_CREDENTIALS, secret="wrong-secret-value")
    with pytest.raises(OAuthError) as caught:
        endpoint.client_credentials()
    assert caught.value.error == "invalid_client" and "wrong-secret-value" not in str(caught.value)


def test_sandbox_refuses_unknown_expired_and_foreign_bearer_tokens(sandbox):
    url = f"{sandbox.mirakl_url}/api/offers"
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 401
    token = _endpoint(sandbox, CLIENT_CREDENTIALS).client_credentials()
    auth = {"Authorization": f"Bearer {token.access_token}"}
    assert requests.get(url, headers=auth, timeout=10).status_code == 200
    assert requests.get(url, headers=auth, params={"shop_id": 999}, timeout=10).status_code == 403
    with sandbox.lock:
        sandbox.auth.expire_access_tokens()
    assert requests.get(url, headers=auth, timeout=10).status_code == 401
    # the token endpoint takes forms only
    reply = requests.post(f"{sandbox.auth_url}/oauth/token", json={"grant_type": "client_credentials"}, timeout=10)
    assert reply.status_code == 400 and reply.json()["error"] == "invalid_request"


def test_authorization_code_flow_refresh_and_rotation(sandbox, tmp_path):
    endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
    state = secrets.token_urlsafe(12)
    answer = seller_consents(sandbox, endpoint, state)
    assert answer["state"] == state
    token = endpoint.exchange_code(answer["code"], REDIRECT)
    assert token.refresh_token
    with pytest.raises(OAuthError, match="already used"):  # single use
        endpoint.exchange_code(answer["code"], REDIRECT)
    # ...and the replay revoked what the code had issued: connect again
    answer = seller_consents(sandbox, endpoint, "s2")  # consent remembered: no consent page this time
    token = endpoint.exchange_code(answer["code"], REDIRECT)

    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    provider = TokenProvider(endpoint, LedgerTokenStore(ledger), "mirakl_ac", origin_refresh_token=token.refresh_token,
                             clock=sandbox.clock.now)
    client = _client(sandbox, provider)
    refreshed = sandbox.auth.issued.get("refresh_token", 0)
    client.offers_count()
    assert sandbox.auth.issued["refresh_token"] == refreshed + 1  # first use: a token from the refresh token
    sandbox.clock.advance(3599 - 200)  # inside the renewal margin: renewed before it expires
    client.offers_count()
    assert sandbox.auth.issued["refresh_token"] == refreshed + 2
    client.offers_count()
    assert sandbox.auth.issued["refresh_token"] == refreshed + 2


def test_a_401_renews_once_and_retries_and_a_revoked_consent_asks_to_reconnect(sandbox, tmp_path):
    endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
    token = endpoint.exchange_code(seller_consents(sandbox, endpoint, "s")["code"], REDIRECT)
    provider = TokenProvider(endpoint, _memory(), "k401", origin_refresh_token=token.refresh_token,
                             clock=sandbox.clock.now)
    client = _client(sandbox, provider)
    client.offers_count()
    calls = sandbox.log.count("mirakl", "OF21")
    refreshed = sandbox.auth.issued["refresh_token"]
    with sandbox.lock:
        sandbox.auth.expire_access_tokens()  # expired early, as after a revocation on Mirakl's side
    client.offers_count()
    assert sandbox.auth.issued["refresh_token"] == refreshed + 1
    assert sandbox.log.count("mirakl", "OF21") == calls + 2  # the refused call, then its one retry
    with sandbox.lock:
        sandbox.auth.revoke_consent("seller@example.com")
        sandbox.auth.expire_access_tokens()
    with pytest.raises(ReconnectRequired, match="Reconnect"):
        client.offers_count()
    with pytest.raises(ReconnectRequired):  # remembered: no new call to the token endpoint
        provider._cached = None
        client.offers_count()


def test_the_seller_can_deny_consent_and_wrong_redirects_are_refused(sandbox):
    endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
    with sandbox.lock:
        sandbox.auth.revoke_consent("seller@example.com")
    assert seller_consents(sandbox, endpoint, "st", decision="deny") == {
        "error": "access_denied", "error_description": "the seller refused the consent", "state": "st"}
    bad = endpoint.authorization_url("https://evil.example/cb", "x")
    reply = requests.get(bad, allow_redirects=False, timeout=10)
    assert reply.status_code == 400 and "Location" not in reply.headers


def _memory():
    from include.woo_mirakl.clients.oauth import MemoryTokenStore

    return MemoryTokenStore()


@pytest.fixture
def seller_connection(sandbox, airflow_db, monkeypatch):
    """Makes Mirakl connections in Airflow's database, each holding a refresh token a seller just granted."""
    import json

    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    monkeypatch.setenv("_AIRFLOW_PROCESS_CONTEXT", "server")  # connections from the metadata DB, as in a server
    made = []

    def make(conn_id: str) -> tuple[TokenEndpoint, str]:
        endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
        refresh = endpoint.exchange_code(seller_consents(sandbox, endpoint, conn_id)["code"], REDIRECT).refresh_token
        with create_session() as session:
            session.query(Connection).filter(Connection.conn_id == conn_id).delete()
            session.add(Connection(conn_id=conn_id, conn_type="mirakl", host=sandbox.mirakl_url,
                                   extra=json.dumps({"auth_mode": "oauth_authorization_code", "refresh_token": refresh})))
        made.append(conn_id)
        return endpoint, refresh

    yield make
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id.in_(made)).delete()


def _connection_refresh_token(conn_id: str) -> str | None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(Connection).filter(Connection.conn_id == conn_id).one().extra_dejson.get("refresh_token")


def _grant_revoked(sandbox, refresh_token: str) -> bool:
    with sandbox.lock:
        return sandbox.auth.grants[sandbox.auth._refresh[refresh_token]["grant"]].revoked


def _sealed_secrets(ledger, key: str) -> dict:
    """What the ledger's token row holds once decrypted (the test may look; no one else does)."""
    import json

    from airflow.models.crypto import get_fernet
    from sqlalchemy import select

    from include.woo_mirakl.ledger.oauth_tokens import oauth_tokens

    with ledger.session(write=False) as s, s.begin():
        sealed = s.execute(select(oauth_tokens.c.sealed).where(oauth_tokens.c.key == key)).scalar_one()
    return json.loads(get_fernet().decrypt(sealed.encode()))


def _provider(endpoint, ledger, conn_id: str, key: str = "shared", **kwargs) -> TokenProvider:
    from include.woo_mirakl.hooks import ConnectionRefreshToken

    return TokenProvider(endpoint, LedgerTokenStore(ledger), key, refresh_tokens=ConnectionRefreshToken(conn_id),
                         **kwargs)


def _worker(ledger_url, settings, mirakl_url, shop_id, conn_id, barrier, results) -> None:
    try:
        dispose_engines()  # engines never cross a fork
        from airflow import settings as airflow_settings

        airflow_settings.engine.dispose(close=False)
        provider = _provider(TokenEndpoint(settings, retry=FAST), Ledger.from_url(ledger_url), conn_id)
        client = MiraklClient(mirakl_url, None, shop_id=shop_id, retry=FAST, token_provider=provider)
        barrier.wait(timeout=60)
        client.offers_count()
        results.put(("ok", provider.expires_at.isoformat()))
    except BaseException as error:  # report, never hang the parent
        results.put(("error", repr(error)))


def _race(ledger_url, settings, sandbox, conn_id) -> list[str]:
    barrier = FORK.Barrier(WORKERS)
    results = FORK.Queue()
    processes = [FORK.Process(target=_worker, args=(ledger_url, settings, sandbox.mirakl_url, sandbox.mirakl.shop_id,
                                                    conn_id, barrier, results)) for _ in range(WORKERS)]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=90) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert all(o[0] == "ok" for o in outcomes), outcomes
    return [o[1] for o in outcomes]


def test_ten_workers_renew_a_rotating_token_once(sandbox, ledger_url, seller_connection):
    ledger = Ledger.from_url(ledger_url)  # schema before the fork
    LedgerTokenStore(ledger)
    endpoint, granted = seller_connection("mirakl_race")
    # real time for the workers: the sandbox clock must not run ahead of it
    sandbox.clock.unfreeze()
    before = sandbox.auth.issued["refresh_token"]
    first = _race(ledger_url, endpoint.settings, sandbox, "mirakl_race")
    assert sandbox.auth.issued["refresh_token"] == before + 1  # ten workers, one renewal
    assert len(set(first)) == 1
    rotated = _connection_refresh_token("mirakl_race")
    assert rotated and rotated != granted  # the rotated refresh token went back into the connection
    with sandbox.lock:
        sandbox.auth.expire_access_tokens()  # every worker now gets a 401 on its stored token
    _race(ledger_url, endpoint.settings, sandbox, "mirakl_race")
    # once more, one renewal; had two workers used the same rotating refresh token, the grant would be revoked
    assert sandbox.auth.issued["refresh_token"] == before + 2
    assert _connection_refresh_token("mirakl_race") not in (granted, rotated)
    assert not _grant_revoked(sandbox, granted)
    # the ledger shares the access token only: the refresh token lives in the connection
    assert set(_sealed_secrets(ledger, "shared")) == {"access_token", "scope"}


def test_a_worker_that_started_before_a_rotation_renews_with_the_rotated_token(sandbox, tmp_path, seller_connection):
    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    endpoint, granted = seller_connection("mirakl_stale")
    early = _provider(endpoint, ledger, "mirakl_stale", key="stale", clock=sandbox.clock.now)
    late = _provider(endpoint, ledger, "mirakl_stale", key="stale", clock=sandbox.clock.now)
    _client(sandbox, early).offers_count()  # renewal 1: the granted token is spent, its successor saved
    first = _connection_refresh_token("mirakl_stale")
    _client(sandbox, late).offers_count()  # finds the shared access token: no renewal
    sandbox.clock.advance(3599 - 200)  # both caches inside the renewal margin
    issued = sandbox.auth.issued["refresh_token"]
    _client(sandbox, late).offers_count()  # renews with the connection's token of now, not the one it began with
    assert sandbox.auth.issued["refresh_token"] == issued + 1
    assert _connection_refresh_token("mirakl_stale") not in (granted, first)
    assert not _grant_revoked(sandbox, granted)
    _client(sandbox, early).offers_count()  # and the other worker uses the token the late one renewed
    assert sandbox.auth.issued["refresh_token"] == issued + 1


def test_a_rotated_token_that_cannot_be_saved_stops_renewals_before_the_spent_one_is_reused(sandbox, tmp_path):
    from include.woo_mirakl.clients.oauth import HeldRefreshToken

    class FullDisk(HeldRefreshToken):
        def write(self, refresh_token: str) -> None:
            raise OSError("No space left on device")

    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
    granted = endpoint.exchange_code(seller_consents(sandbox, endpoint, "full")["code"], REDIRECT).refresh_token
    failing = TokenProvider(endpoint, LedgerTokenStore(ledger), "unsaved", refresh_tokens=FullDisk(granted),
                            clock=sandbox.clock.now)
    with pytest.raises(ReconnectRequired, match="could not be saved in this process .*No space left on device"):
        _client(sandbox, failing).offers_count()
    issued = sandbox.auth.issued["refresh_token"]
    other = TokenProvider(endpoint, LedgerTokenStore(ledger), "unsaved", refresh_tokens=HeldRefreshToken(granted),
                          clock=sandbox.clock.now)
    with pytest.raises(ReconnectRequired, match="Reconnect"):
        _client(sandbox, other).offers_count()
    assert sandbox.auth.issued["refresh_token"] == issued  # the spent token was not offered again
    assert not _grant_revoked(sandbox, granted)  # which would have ended the seller's grant
    assert LedgerTokenStore(ledger).peek("unsaved")["status"] == "reconnect_required"


def test_a_save_that_lands_but_loses_its_answer_heals_at_the_next_renewal(sandbox, tmp_path):
    """The connection took the rotated token, then the answer was lost (a dropped connection): this
    worker stops, but the next one finds the new token in the connection and renews with it."""
    from include.woo_mirakl.clients.oauth import HeldRefreshToken

    class LandsThenDrops(HeldRefreshToken):
        def write(self, refresh_token: str) -> None:
            super().write(refresh_token)
            raise ConnectionError("Connection aborted: RemoteDisconnected")

    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
    granted = endpoint.exchange_code(seller_consents(sandbox, endpoint, "drop")["code"], REDIRECT).refresh_token
    connection = LandsThenDrops(granted)
    first = TokenProvider(endpoint, LedgerTokenStore(ledger), "dropped", refresh_tokens=connection,
                          clock=sandbox.clock.now)
    with pytest.raises(ReconnectRequired, match="could not be saved .*RemoteDisconnected"):
        _client(sandbox, first).offers_count()
    saved = connection.value
    assert saved != granted  # it did land
    issued = sandbox.auth.issued["refresh_token"]
    healed = TokenProvider(endpoint, LedgerTokenStore(ledger), "dropped", refresh_tokens=HeldRefreshToken(saved),
                           clock=sandbox.clock.now)
    assert _client(sandbox, healed).offers_count() >= 0
    assert sandbox.auth.issued["refresh_token"] == issued + 1  # renewed with the saved token
    assert not _grant_revoked(sandbox, granted)


def test_a_connection_in_an_environment_variable_is_never_renewed_so_its_token_is_never_spent(
        sandbox, tmp_path, monkeypatch):
    import json

    from include.woo_mirakl.clients.oauth import RenewalNotPossibleHere
    from include.woo_mirakl.hooks import MiraklHook

    endpoint = _endpoint(sandbox, AUTHORIZATION_CODE)
    granted = endpoint.exchange_code(seller_consents(sandbox, endpoint, "env")["code"], REDIRECT).refresh_token
    client = sandbox.auth.client()
    monkeypatch.setenv("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", json.dumps(
        {"conn_type": "generic", "extra": {"sqlalchemy_url": f"sqlite:///{tmp_path}/ledger.db"}}))
    monkeypatch.setenv("AIRFLOW_CONN_MIRAKL_ENV", json.dumps({
        "conn_type": "mirakl", "host": sandbox.mirakl_url, "login": client.client_id, "password": client.client_secret,
        "extra": {"auth_mode": "oauth_authorization_code", "refresh_token": granted, "shop_id": sandbox.mirakl.shop_id,
                  "token_url": f"{sandbox.auth_url}/oauth/token", "retry_base_delay": 0.01}}))
    issued = sandbox.auth.issued["refresh_token"]
    with pytest.raises(RenewalNotPossibleHere, match="AIRFLOW_CONN_MIRAKL_ENV, which Airflow cannot change"):
        MiraklHook("mirakl_env").get_client().offers_count()
    ok, message = MiraklHook("mirakl_env").test_connection()  # what the Test button shows (it tests such a copy)
    assert not ok and "nothing was renewed" in message and "Mirakl connections page" in message
    assert granted not in message
    assert sandbox.auth.issued["refresh_token"] == issued
    assert endpoint.refresh(granted).access_token  # still unspent


def test_a_token_row_from_before_the_move_hands_its_refresh_token_to_the_connection(sandbox, tmp_path,
                                                                                    seller_connection):
    """Earlier versions sealed the rotated refresh token into the ledger and left the spent one in the connection."""
    import json

    from airflow.models.crypto import get_fernet
    from sqlalchemy import update

    from include.woo_mirakl.clients.oauth import fingerprint
    from include.woo_mirakl.ledger.oauth_tokens import oauth_tokens

    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
    endpoint, granted = seller_connection("mirakl_legacy")
    live = endpoint.refresh(granted)  # what the old version did: the connection's token is now spent
    store = LedgerTokenStore(ledger)
    with store.locked("legacy"):
        pass
    sealed = get_fernet().encrypt(json.dumps({"access_token": live.access_token, "refresh_token": live.refresh_token,
                                              "scope": None}).encode()).decode()
    with ledger.session() as s, s.begin():
        s.execute(update(oauth_tokens).where(oauth_tokens.c.key == "legacy").values(
            sealed=sealed, status="ok", origin=fingerprint(endpoint.settings.token_url, granted),
            expires_at=sandbox.clock.now() - timedelta(seconds=1)))
    _client(sandbox, _provider(endpoint, ledger, "mirakl_legacy", key="legacy", clock=sandbox.clock.now)).offers_count()
    moved = _connection_refresh_token("mirakl_legacy")
    assert moved not in (granted, live.refresh_token)
    assert not _grant_revoked(sandbox, granted)  # the spent token in the connection was not used
    assert set(_sealed_secrets(ledger, "legacy")) == {"access_token", "scope"}


def test_api_errors_other_than_401_are_not_retried_with_a_new_token(sandbox):
    provider = TokenProvider(_endpoint(sandbox, CLIENT_CREDENTIALS), _memory(), "k403", clock=sandbox.clock.now)
    client = MiraklClient(sandbox.mirakl_url, None, shop_id=999, retry=FAST, token_provider=provider)
    issued = sandbox.auth.issued["client_credentials"]
    with pytest.raises(ApiError) as caught:
        client.offers_count()
    assert caught.value.status == 403
    assert sandbox.auth.issued["client_credentials"] == issued + 1


def test_hook_builds_a_bearer_client_from_an_oauth_connection(sandbox, tmp_path, monkeypatch):
    import json

    from include.woo_mirakl.hooks import MiraklHook

    client = sandbox.auth.client()
    monkeypatch.setenv("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", json.dumps(
        {"conn_type": "generic", "extra": {"sqlalchemy_url": f"sqlite:///{tmp_path}/ledger.db"}}))
    good = json.dumps({
        "conn_type": "mirakl", "host": sandbox.mirakl_url, "login": client.client_id, "password": client.client_secret,
        "extra": {"auth_mode": "oauth_client_credentials", "shop_id": str(sandbox.mirakl.shop_id),
                  "token_url": f"{sandbox.auth_url}/oauth/token", "retry_base_delay": 0.01},
    })
    monkeypatch.setenv("AIRFLOW_CONN_MIRAKL_OAUTH", good)
    ok, message = MiraklHook("mirakl_oauth").test_connection()
    assert ok, message
    assert "Signed in through Mirakl's authentication system (client credentials)" in message
    assert "valid until" in message and client.client_secret not in message
    # the next client of any worker reuses the stored token
    issued = sandbox.auth.issued["client_credentials"]
    MiraklHook("mirakl_oauth").get_client().offers_count()
    assert sandbox.auth.issued["client_credentials"] == issued

    monkeypatch.setenv("AIRFLOW_CONN_MIRAKL_OAUTH", json.dumps({
        "conn_type": "mirakl", "host": sandbox.mirakl_url, "login": client.client_id, "password": "not-the-secret",
        "extra": {"auth_mode": "oauth_client_credentials", "token_url": f"{sandbox.auth_url}/oauth/token"},
    }))
    ok, message = MiraklHook("mirakl_oauth").test_connection()
    assert not ok and "invalid_client" in message and "not-the-secret" not in message
    monkeypatch.setenv("AIRFLOW_CONN_MIRAKL_OAUTH", good)
    assert MiraklHook("mirakl_oauth").get_client().offers_count() >= 0  # the right secret works again

    monkeypatch.setenv("AIRFLOW_CONN_MIRAKL_OAUTH", json.dumps({
        "conn_type": "mirakl", "host": sandbox.mirakl_url, "password": "x", "extra": {"auth_mode": "oauth_magic"}}))
    ok, message = MiraklHook("mirakl_oauth").test_connection()
    assert not ok and "auth_mode 'oauth_magic' must be one of" in message
