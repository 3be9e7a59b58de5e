"""Connect to Mirakl inside Airflow's own API app (in-process), against the sandbox's authentication system.

The plugin is mounted by Airflow's `create_app()` as `airflow api-server` mounts it; requests carry
a JWT of Airflow's auth manager; the Mirakl connection lives in Airflow's metadata database.
"""
from __future__ import annotations

import html
import json
import re

import pytest
import requests

BASE = "http://localhost"
CALLBACK = f"{BASE}/woo-mirakl-connect/callback"
CONN_ID = "mirakl_sandbox"


@pytest.fixture(scope="module")
def sandbox():
    from include.sandbox.core import Sandbox

    sb = Sandbox(seed=5).start()
    sb.auth.client().redirect_uris = [CALLBACK]
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def connection(sandbox, airflow_db, tmp_path_factory):
    import os

    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    client = sandbox.auth.client()
    ledger_url = f"sqlite:///{tmp_path_factory.mktemp('connect') / 'ledger.db'}"
    saved = {k: os.environ.pop(k, None) for k in ("AIRFLOW_CONN_MIRAKL_SANDBOX", "AIRFLOW_CONN_WOO_MIRAKL_LEDGER",
                                                  "_AIRFLOW_PROCESS_CONTEXT")}
    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"  # as in the api-server: connections from the metadata DB
    os.environ["AIRFLOW_CONN_WOO_MIRAKL_LEDGER"] = json.dumps({"conn_type": "generic",
                                                                "extra": {"sqlalchemy_url": ledger_url}})
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()
        session.add(Connection(conn_id=CONN_ID, conn_type="mirakl", host=sandbox.mirakl_url, login=client.client_id,
                               password=client.client_secret, extra=json.dumps({
                                   "auth_mode": "oauth_authorization_code", "shop_id": sandbox.mirakl.shop_id,
                                   "token_url": f"{sandbox.auth_url}/oauth/token",
                                   "authorize_url": f"{sandbox.auth_url}/oauth/authorize",
                                   "retry_base_delay": 0.01, "timeout": 5})))
    yield ledger_url
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()
    for key, value in saved.items():
        os.environ.pop(key, None)
        if value is not None:
            os.environ[key] = value


@pytest.fixture(scope="module")
def app(connection):
    from airflow.api_fastapi.app import create_app
    from fastapi.testclient import TestClient

    with TestClient(create_app(apps="core"), base_url=BASE) as client:
        yield client


def token(name: str = "admin", role: str = "admin") -> dict[str, str]:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return {"Authorization": f"Bearer {get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=name, role=role))}"}


def seller(sandbox, authorize_url: str) -> str:
    """The seller's browser at Mirakl: sign in, consent; returns where Mirakl sends it back."""
    user = sandbox.auth.user()
    web = requests.Session()
    page = web.get(authorize_url, timeout=10)
    txn = re.search(r'name="txn" value="([^"]+)"', page.text).group(1)
    page = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                    data={"txn": txn, "step": "signin", "email": user.email, "password": user.password})
    if page.status_code == 200:
        assert "Allow access" in page.text and "Read your orders" in page.text
        page = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                        data={"txn": txn, "step": "consent", "decision": "allow"})
    assert page.status_code == 302
    return page.headers["Location"]


def _start(app) -> str:
    reply = app.get("/woo-mirakl-connect/sandbox/start", headers=token(), follow_redirects=False)
    assert reply.status_code == 302, reply.text
    assert "woo_mirakl_connect" in reply.cookies
    return reply.headers["location"]


def test_connect_stores_the_tokens_verifies_and_then_the_connection_works(sandbox, app, connection):
    listing = app.get("/woo-mirakl-connect/", headers=token())
    assert listing.status_code == 200 and "Connect to Mirakl" in listing.text and "not connected" in listing.text

    authorize = _start(app)
    assert authorize.startswith(f"{sandbox.auth_url}/oauth/authorize?")
    back = seller(sandbox, authorize)
    assert back.startswith(CALLBACK + "?")
    reply = app.get(back.removeprefix(BASE), headers=token())
    assert reply.status_code == 200, reply.text
    assert "Connected to Mirakl shop" in reply.text and f"(id {sandbox.mirakl.shop_id})" in reply.text
    assert "valid until" in reply.text

    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.query(Connection).filter(Connection.conn_id == CONN_ID).one()
        refresh_token = row.extra_dejson["refresh_token"]
        stored_extra = row._extra
    assert refresh_token and refresh_token not in stored_extra and row.is_extra_encrypted  # Fernet-encrypted
    assert refresh_token not in reply.text
    ledger_file = connection.removeprefix("sqlite:///")
    raw = open(ledger_file, "rb").read() + open(ledger_file + "-wal", "rb").read()
    assert refresh_token.encode() not in raw

    # the flows' clients now sign in with it, the first token already stored (no renewal needed)
    from include.woo_mirakl.hooks import MiraklHook

    issued = dict(sandbox.auth.issued)
    MiraklHook(CONN_ID).get_client().offers_count()
    assert sandbox.auth.issued == issued
    listing = app.get("/woo-mirakl-connect/", headers=token())
    assert "Reconnect" in listing.text and ">connected<" in listing.text


def test_the_callback_refuses_a_state_it_did_not_start(sandbox, app):
    authorize = _start(app)
    back = seller(sandbox, authorize)
    forged = re.sub(r"state=[^&]+", "state=forged", back)
    reply = app.get(forged.removeprefix(BASE), headers=token())
    assert reply.status_code == 400 and "state mismatch" in reply.text
    # the cookie is gone after one answer: the genuine answer cannot be replayed either
    reply = app.get(back.removeprefix(BASE), headers=token())
    assert reply.status_code == 400 and "no state cookie" in reply.text


def test_another_user_cannot_finish_my_sign_in(sandbox, app):
    back = seller(sandbox, _start(app))
    reply = app.get(back.removeprefix(BASE), headers=token("mallory", "admin"))
    assert reply.status_code == 400 and "another Airflow user" in reply.text


def test_a_viewer_cannot_connect(app):
    reply = app.get("/woo-mirakl-connect/sandbox/start", headers=token("val", "viewer"), follow_redirects=False)
    assert reply.status_code == 403
    assert app.get("/woo-mirakl-connect/sandbox/start", follow_redirects=False).status_code in (401, 403)


def test_consent_refused_is_said_in_plain_words(sandbox, app):
    with sandbox.lock:
        sandbox.auth.revoke_consent("seller@example.com")
    authorize = _start(app)
    user = sandbox.auth.user()
    web = requests.Session()
    txn = re.search(r'name="txn" value="([^"]+)"', web.get(authorize, timeout=10).text).group(1)
    web.post(f"{sandbox.auth_url}/oauth/authorize", data={"txn": txn, "step": "signin", "email": user.email,
                                                          "password": user.password}, timeout=10)
    back = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                    data={"txn": txn, "step": "consent", "decision": "deny"}).headers["Location"]
    reply = app.get(back.removeprefix(BASE), headers=token())
    assert reply.status_code == 400
    assert "you did not give the integration access on Mirakl's consent page" in html.unescape(reply.text)


def test_a_seller_with_several_stores_is_asked_which_one(sandbox, app):
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    user = sandbox.auth.user()
    with sandbox.lock:
        sandbox.auth.revoke_consent(user.email)
        user.stores.append({"shop_id": 2777, "shop_name": "Other shop", "marketplace": "Sandbox marketplace"})
    with create_session() as session:  # a first connection: no store id yet
        row = session.query(Connection).filter(Connection.conn_id == CONN_ID).one()
        extra = row.extra_dejson
        extra.pop("shop_id", None)
        row.set_extra(json.dumps(extra))
    try:
        web = requests.Session()
        page = web.get(_start(app), timeout=10)
        txn = re.search(r'name="txn" value="([^"]+)"', page.text).group(1)
        page = web.post(f"{sandbox.auth_url}/oauth/authorize", timeout=10,
                        data={"txn": txn, "step": "signin", "email": user.email, "password": user.password})
        assert "Choose the store" in page.text and "Other shop" in page.text and "All my stores" in page.text
        page = web.post(f"{sandbox.auth_url}/oauth/authorize", timeout=10,
                        data={"txn": txn, "step": "store", "shop_id": "all"})
        assert "all your stores" in page.text
        back = web.post(f"{sandbox.auth_url}/oauth/authorize", allow_redirects=False, timeout=10,
                        data={"txn": txn, "step": "consent", "decision": "allow"}).headers["Location"]
        reply = app.get(back.removeprefix(BASE), headers=token())
        # Mirakl cannot tell which store without a shop_id: the page asks for it
        assert reply.status_code == 400 and "shop_id is required" in reply.text
        assert 'name="shop_id"' in reply.text
        reply = app.post("/woo-mirakl-connect/sandbox/store", data={"shop_id": str(sandbox.mirakl.shop_id)},
                         headers=token())
        assert reply.status_code == 200, reply.text
        # A01 ran once today already (the first connection): OF21 proves the token for the chosen store
        assert "Mirakl access token accepted by" in reply.text and "A01 account check was skipped" in reply.text
        with create_session() as session:
            row = session.query(Connection).filter(Connection.conn_id == CONN_ID).one()
            assert row.extra_dejson["shop_id"] == sandbox.mirakl.shop_id
    finally:
        with sandbox.lock:
            user.stores.pop()


def test_after_the_seller_withdraws_consent_reconnect_brings_the_flows_back(sandbox, app):
    """Consent withdrawn at Mirakl: the flows stop with "Reconnect", the page says so, and Reconnect heals it."""
    from include.woo_mirakl.clients.oauth import ReconnectRequired
    from include.woo_mirakl.hooks import MiraklHook

    if "refresh_token" not in MiraklHook(CONN_ID).get_connection(CONN_ID).extra_dejson:  # run alone
        assert app.get(seller(sandbox, _start(app)).removeprefix(BASE), headers=token()).status_code == 200
    MiraklHook(CONN_ID).get_client().offers_count()
    with sandbox.lock:
        sandbox.auth.revoke_consent(sandbox.auth.user().email)  # the seller withdrew it in Mirakl's back office
        sandbox.auth.expire_access_tokens()
    with pytest.raises(ReconnectRequired, match="use Reconnect on the operations page"):
        MiraklHook(CONN_ID).get_client().offers_count()
    issued = dict(sandbox.auth.issued)
    with pytest.raises(ReconnectRequired):  # every worker after it is told at once, nothing spent
        MiraklHook(CONN_ID).get_client().offers_count()
    assert sandbox.auth.issued == issued
    listing = html.unescape(app.get("/woo-mirakl-connect/", headers=token()).text)
    assert "reconnect needed" in listing and "Reconnect" in listing

    reply = app.get(seller(sandbox, _start(app)).removeprefix(BASE), headers=token())  # consent given again
    assert reply.status_code == 200 and "Mirakl access token accepted by" in reply.text, reply.text  # A01 ran today
    assert MiraklHook(CONN_ID).get_client().offers_count() >= 0
    assert "reconnect needed" not in html.unescape(app.get("/woo-mirakl-connect/", headers=token()).text)


def test_disconnecting_revokes_the_tokens_and_removes_the_refresh_token_from_the_connection(sandbox, app):
    """Last: the account flow's disconnect ends the seller's authorization (here on a connection in the DB)."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    from include.woo_mirakl.account import revoke_mirakl_authorization
    from include.woo_mirakl.clients.oauth import ReconnectRequired
    from include.woo_mirakl.hooks import MiraklHook
    from include.woo_mirakl.ledger import get_ledger

    if "refresh_token" not in MiraklHook(CONN_ID).get_connection(CONN_ID).extra_dejson:  # run alone
        reply = app.get(seller(sandbox, _start(app)).removeprefix(BASE), headers=token())
        assert reply.status_code == 200, reply.text
    MiraklHook(CONN_ID).get_client().offers_count()  # a working token first
    before = len(sandbox.log.entries("auth", "auth.revoke"))
    outcome = revoke_mirakl_authorization(MiraklHook(CONN_ID), get_ledger(), "sandbox")
    assert outcome["removed_from_connection"] is True and outcome["revoked"] >= 2
    assert len(sandbox.log.entries("auth", "auth.revoke")) - before == outcome["revoked"]
    with create_session() as session:
        assert "refresh_token" not in session.query(Connection).filter(Connection.conn_id == CONN_ID).one().extra_dejson
    with pytest.raises(ReconnectRequired, match="not connected"):
        MiraklHook(CONN_ID).get_client().offers_count()
    listing = app.get("/woo-mirakl-connect/", headers=token())
    assert "not connected" in listing.text and "Connect to Mirakl" in listing.text
