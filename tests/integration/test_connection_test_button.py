"""The connection list's Test button, as the UI sends it, inside Airflow's own API app (in-process).

The UI builds the request from the list row: ``port: Number(connection.port)`` (0 for a connection
without a port) and the masked password. Each of the project's connection types must answer green
with its own message, without the credentials being sent again.
"""
from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from include.sandbox.core import Sandbox
from include.sandbox.sinks import SlackSink

MIRAKL_KEY = "sandbox-mirakl-key"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(seed=5).start()
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def slack() -> Iterator[SlackSink]:
    sink = SlackSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory) -> Iterator[tuple]:
    import os

    from airflow.api_fastapi.app import create_app, get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
    from fastapi.testclient import TestClient

    ledger = f"sqlite:///{tmp_path_factory.mktemp('button') / 'ledger.db'}"
    os.environ["AIRFLOW_CONN_WOO_MIRAKL_LEDGER"] = json.dumps({"conn_type": "generic",
                                                              "extra": {"sqlalchemy_url": ledger}})
    with TestClient(create_app(apps="core"), base_url="http://localhost") as client:
        token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))
        yield client, {"Authorization": f"Bearer {token}"}
    os.environ.pop("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", None)


def ui_test_body(row: dict) -> dict:
    """What the list row's Test button posts (Airflow 3.3.2 UI, connections list)."""
    return {"conn_type": row["conn_type"], "connection_id": row["connection_id"],
            "description": row.get("description") or "", "extra": row.get("extra") or "{}",
            "host": row.get("host") or "", "login": row.get("login") or "", "password": row.get("password") or "",
            "port": int(row["port"] or 0), "schema": row.get("schema") or ""}


def stored(api, body: dict) -> dict:
    client, auth = api
    client.delete(f"/api/v2/connections/{body['connection_id']}", headers=auth)
    created = client.post("/api/v2/connections", json=body, headers=auth)
    assert created.status_code == 201, created.text
    return client.get(f"/api/v2/connections/{body['connection_id']}", headers=auth).json()


def press_test(api, row: dict):
    client, auth = api
    return client.post("/api/v2/connections/test", json=ui_test_body(row), headers=auth)


@pytest.mark.parametrize("kind", ["mirakl", "woocommerce", "slack"])
def test_the_list_rows_test_button_is_green_for_each_connection_type(api, sandbox, slack, kind):
    bodies = {
        "mirakl": {"connection_id": "mirakl_button", "conn_type": "mirakl", "host": sandbox.mirakl_url,
                   "password": MIRAKL_KEY, "extra": json.dumps({"shop_id": "2001"})},
        "woocommerce": {"connection_id": "woo_button", "conn_type": "woocommerce", "host": sandbox.woo_url,
                        "login": "ck_sandbox", "password": "cs_sandbox"},
        "slack": {"connection_id": "slack_button", "conn_type": "woo_mirakl_slack_webhook",
                  "password": slack.url, "extra": json.dumps({"timeout": 5})},
    }
    expected = {"mirakl": "Mirakl", "woocommerce": "Connected to WooCommerce", "slack": "nothing was posted"}
    row = stored(api, bodies[kind])
    assert row["port"] is None and row["password"] != bodies[kind]["password"]  # what the UI gets: masked

    reply = press_test(api, row)

    assert reply.status_code == 200, reply.text
    assert reply.json()["status"] is True, reply.json()
    assert expected[kind] in reply.json()["message"]
    assert slack.payloads == []  # testing the webhook posted nothing to the channel


def test_a_wrong_key_is_still_reported_and_a_changed_port_still_needs_credentials(api, sandbox):
    row = stored(api, {"connection_id": "mirakl_wrong", "conn_type": "mirakl", "host": sandbox.mirakl_url,
                       "password": "not-the-sandbox-key", "extra": json.dumps({"shop_id": "2001"})})
    reply = press_test(api, row)
    assert reply.status_code == 200 and reply.json()["status"] is False
    assert "rejected the API key" in reply.json()["message"]

    # Only port 0 is taken for "no port": another port is another destination, as Airflow decides.
    elsewhere = press_test(api, {**row, "port": 9})
    assert elsewhere.status_code == 400 and "differs from the stored connection" in elsewhere.text


def test_a_dead_slack_webhook_is_red(api, slack):
    row = stored(api, {"connection_id": "slack_dead", "conn_type": "woo_mirakl_slack_webhook",
                       "password": slack.url.replace("/services/", "/services/REVOKED/")})
    reply = press_test(api, row)
    assert reply.json()["status"] is False and "HTTP 404 no_service" in reply.json()["message"]


def test_the_middleware_leaves_other_bodies_alone():
    from include.woo_mirakl.connection_test_fix import without_port_zero

    assert json.loads(without_port_zero(b'{"port": 0, "host": "h"}')) == {"host": "h"}
    assert without_port_zero(b'{"port": 8080}') == b'{"port": 8080}'
    assert without_port_zero(b'{"port": false}') == b'{"port": false}'
    assert without_port_zero(b"not json") == b"not json"
