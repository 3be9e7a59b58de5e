"""The flows on an OAuth connection: verify reports the auth mode and token expiry; orders go through on Bearer tokens."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager

import pytest

from include.sandbox.scenarios import customer
from tests.e2e.conftest import advance, run_dag

pytestmark = pytest.mark.usefixtures("airflow_env")
CONN_ID = "mirakl_sandbox"


@pytest.fixture(scope="module")
def oauth_connection(sandbox, airflow_env):
    """The sandbox marketplace's Mirakl connection, switched to a seller-connected OAuth grant.

    It lives in Airflow's database, as Connect to Mirakl requires: each renewal saves the refresh
    token Mirakl rotates back into it (an environment variable could not be changed)."""
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    from include.woo_mirakl.clients.oauth import AUTHORIZATION_CODE, OAuthSettings, TokenEndpoint
    from tests.integration.test_mirakl_oauth import REDIRECT, seller_consents

    client = sandbox.auth.client()
    client.redirect_uris = [REDIRECT]
    endpoint = TokenEndpoint(OAuthSettings(AUTHORIZATION_CODE, client.client_id, client.client_secret,
                                           token_url=f"{sandbox.auth_url}/oauth/token",
                                           authorize_url=f"{sandbox.auth_url}/oauth/authorize"))
    refresh_token = endpoint.exchange_code(seller_consents(sandbox, endpoint, "e2e")["code"], REDIRECT).refresh_token
    saved = os.environ.pop("AIRFLOW_CONN_MIRAKL_SANDBOX")
    value = json.loads(saved)
    value["extra"].update(auth_mode="oauth_authorization_code", refresh_token=refresh_token,
                          token_url=f"{sandbox.auth_url}/oauth/token")
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()
        session.add(Connection(conn_id=CONN_ID, conn_type="mirakl", host=value["host"], login=client.client_id,
                               password=client.client_secret, extra=json.dumps(value["extra"])))
    yield refresh_token
    with create_session() as session:
        session.query(Connection).filter(Connection.conn_id == CONN_ID).delete()
    os.environ["AIRFLOW_CONN_MIRAKL_SANDBOX"] = saved


@contextmanager
def outside_a_task():
    """This test process reads connections from Airflow's database as a server does (tasks ask the API)."""
    os.environ["_AIRFLOW_PROCESS_CONTEXT"] = "server"
    try:
        yield
    finally:
        del os.environ["_AIRFLOW_PROCESS_CONTEXT"]


def _connection_refresh_token() -> str | None:
    from airflow.models.connection import Connection
    from airflow.utils.session import create_session

    with create_session() as session:
        return session.query(Connection).filter(Connection.conn_id == CONN_ID).one().extra_dejson.get("refresh_token")


def test_verify_reports_the_auth_mode_and_the_token_expiry(sandbox, ledger, oauth_connection):
    run = run_dag("mirakl_account__sandbox", {"action": "verify"})
    assert run.state == "success"
    checks = {c["key"]: c for c in ledger.get_cursor("mirakl_account", "sandbox", "last_verify")["checks"]}
    auth = checks["mirakl.auth"]
    assert auth["status"] == "ok"
    assert "Mirakl's authentication system (authorization code)" in auth["message"]
    assert auth["details"]["auth_mode"] == "oauth_authorization_code" and auth["details"]["token_expires_at"]
    assert checks["mirakl.shop"]["status"] == "ok"
    assert oauth_connection not in json.dumps(checks)


def test_orders_flow_on_bearer_tokens_renewed_when_mirakl_expires_them(sandbox, ledger, oauth_connection):
    sandbox.woo.add_simple_product("OAUTH-1", "9.00", 5)
    with sandbox.lock:
        sandbox.mirakl.add_offer("OAUTH-1", 9.0, 5)
        order_id = sandbox.mirakl.place_order(lines=[{"offer_sku": "OAUTH-1", "quantity": 1}], customer=customer(0),
                                              debit_delay_s=10 * 86400)["order_id"]
        sandbox.auth.expire_access_tokens()  # the stored token is refused: renewed once, for every task
    renewals = sandbox.auth.issued.get("refresh_token", 0)
    advance(sandbox, ledger, 61)
    assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    # the refused OR11 counts against its once-a-minute ceiling, so the listing itself waits a minute
    advance(sandbox, ledger, 61)
    assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    record = ledger.get_order("sandbox", order_id)
    assert record is not None and record.decision == "accepted", (record, ledger.open_exceptions("sandbox"))
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] in ("WAITING_DEBIT", "WAITING_DEBIT_PAYMENT")
    assert sandbox.auth.issued["refresh_token"] == renewals + 1  # every task of both runs, one renewal
    # Mirakl rotated the refresh token: the new one is in the connection, and still works
    assert _connection_refresh_token() not in (None, oauth_connection)
    with sandbox.lock:
        sandbox.auth.expire_access_tokens()
    advance(sandbox, ledger, 61)
    assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    assert sandbox.auth.issued["refresh_token"] == renewals + 2
    with sandbox.lock:
        assert not sandbox.auth.grants[sandbox.auth._refresh[oauth_connection]["grant"]].revoked


def test_disconnect_revokes_the_authorization_and_verify_then_says_not_connected(sandbox, ledger, oauth_connection):
    """Last in the module: the marketplace ends disconnected, its grant revoked at Mirakl."""
    from sqlalchemy import select

    from include.woo_mirakl.account import revoke_mirakl_authorization
    from include.woo_mirakl.clients.oauth import OAuthError
    from include.woo_mirakl.hooks import MiraklHook
    from include.woo_mirakl.ledger.oauth_tokens import oauth_tokens
    from tests.e2e.test_account import task_states, unpause_flows

    conf = {"action": "disconnect", "offers_policy": "keep", "confirmation": "Disconnect", "dry_run": False}
    current = _connection_refresh_token()
    try:
        run = run_dag("mirakl_account__sandbox", conf)
        assert run.state == "success", task_states(run)
        revocations = sandbox.log.entries("auth", "auth.revoke")
        # the refresh token the connection holds (the latest rotation) and the shared access token
        assert len(revocations) == 2, revocations
        [grant] = [g for g in sandbox.auth.grants.values() if g.user == "seller@example.com"]
        assert grant.revoked
        with pytest.raises(OAuthError) as refused, outside_a_task():  # the refresh token no longer works at Mirakl
            MiraklHook("mirakl_sandbox").oauth_endpoint().refresh(current)
        assert refused.value.error == "invalid_grant"
        assert _connection_refresh_token() is None  # and is gone from the connection
        with ledger.session(write=False) as s, s.begin():
            [row] = s.execute(select(oauth_tokens)).mappings().all()
        assert row["sealed"] is None and row["status"] == "reconnect_required"
        actions = ledger.actions_for_target("oauth_revoke", "mirakl_sandbox")  # recorded before and after
        assert [a.state for a in actions] == ["done"] * 2

        run = run_dag("mirakl_account__sandbox", {"action": "verify"})
        assert run.state == "failed"
        checks = {c["key"]: c for c in ledger.get_cursor("mirakl_account", "sandbox", "last_verify")["checks"]}
        assert checks["mirakl.auth"]["status"] == "failed"
        assert "not connected" in checks["mirakl.auth"]["message"], checks["mirakl.auth"]
        assert checks["mirakl.shop"]["status"] == "skipped"

        # the whole disconnect run again (as after a later step failed): green, nothing sent twice,
        # no offer listing with the revoked authorization
        mirakl_calls = len(sandbox.log.entries("mirakl"))
        run = run_dag("mirakl_account__sandbox", conf)
        assert run.state == "success", task_states(run)
        assert len(sandbox.log.entries("auth", "auth.revoke")) == len(revocations)
        assert len(sandbox.log.entries("mirakl")) == mirakl_calls
        with outside_a_task():
            again = revoke_mirakl_authorization(MiraklHook("mirakl_sandbox"), ledger, "sandbox")
        assert again["revoked"] == 0 and len(sandbox.log.entries("auth", "auth.revoke")) == len(revocations)  # nothing left
    finally:
        unpause_flows()
