"""The flows on an OAuth connection: verify reports the auth mode and token expiry; orders go through on Bearer tokens."""
from __future__ import annotations

import json
import os

import pytest

from include.sandbox.scenarios import customer
from tests.e2e.conftest import advance, run_dag

pytestmark = pytest.mark.usefixtures("airflow_env")


@pytest.fixture(scope="module")
def oauth_connection(sandbox, airflow_env):
    """The sandbox marketplace's Mirakl connection, switched to a seller-connected OAuth grant."""
    from include.woo_mirakl.clients.oauth import AUTHORIZATION_CODE, OAuthSettings, TokenEndpoint
    from tests.integration.test_mirakl_oauth import REDIRECT, seller_consents

    client = sandbox.auth.client()
    client.redirect_uris = [REDIRECT]
    endpoint = TokenEndpoint(OAuthSettings(AUTHORIZATION_CODE, client.client_id, client.client_secret,
                                           token_url=f"{sandbox.auth_url}/oauth/token",
                                           authorize_url=f"{sandbox.auth_url}/oauth/authorize"))
    refresh_token = endpoint.exchange_code(seller_consents(sandbox, endpoint, "e2e")["code"], REDIRECT).refresh_token
    saved = os.environ["AIRFLOW_CONN_MIRAKL_SANDBOX"]
    value = json.loads(saved)
    value.update(login=client.client_id, password=client.client_secret)
    value["extra"].update(auth_mode="oauth_authorization_code", refresh_token=refresh_token,
                          token_url=f"{sandbox.auth_url}/oauth/token")
    os.environ["AIRFLOW_CONN_MIRAKL_SANDBOX"] = json.dumps(value)
    yield refresh_token
    os.environ["AIRFLOW_CONN_MIRAKL_SANDBOX"] = saved


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


def test_disconnect_revokes_the_authorization_and_verify_then_says_not_connected(sandbox, ledger, oauth_connection):
    """Last in the module: the marketplace ends disconnected, its grant revoked at Mirakl."""
    from sqlalchemy import select

    from include.woo_mirakl.account import revoke_mirakl_authorization
    from include.woo_mirakl.clients.oauth import OAuthError
    from include.woo_mirakl.hooks import MiraklHook
    from include.woo_mirakl.ledger.oauth_tokens import oauth_tokens
    from tests.e2e.test_account import task_states, unpause_flows

    conf = {"action": "disconnect", "offers_policy": "keep", "confirmation": "Disconnect", "dry_run": False}
    try:
        run = run_dag("mirakl_account__sandbox", conf)
        assert run.state == "success", task_states(run)
        revocations = sandbox.log.entries("auth", "auth.revoke")
        # the refresh token the connection holds, its rotated successor and the access token
        assert len(revocations) == 3, revocations
        [grant] = [g for g in sandbox.auth.grants.values() if g.user == "seller@example.com"]
        assert grant.revoked
        with pytest.raises(OAuthError) as refused:  # the refresh token no longer works at Mirakl
            MiraklHook("mirakl_sandbox").oauth_endpoint().refresh(oauth_connection)
        assert refused.value.error == "invalid_grant"
        with ledger.session(write=False) as s, s.begin():
            [row] = s.execute(select(oauth_tokens)).mappings().all()
        assert row["sealed"] is None and row["status"] == "reconnect_required"
        actions = ledger.actions_for_target("oauth_revoke", "mirakl_sandbox")  # recorded before and after
        assert [a.state for a in actions] == ["done"] * 3

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
        again = revoke_mirakl_authorization(MiraklHook("mirakl_sandbox"), ledger, "sandbox")
        assert again["revoked"] == 1 and len(sandbox.log.entries("auth", "auth.revoke")) == len(revocations)
    finally:
        unpause_flows()
