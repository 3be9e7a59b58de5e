"""The operations page inside Airflow's own API app (in-process): registration, auth, content, acknowledge.

The app under test is Airflow's `create_app()`, which mounts the plugin found in plugins/ the way
`airflow api-server` does; requests carry a JWT issued by Airflow's auth manager.
"""
from __future__ import annotations

import datetime as dt
import json

import pytest

MP = "sandbox"
LEDGER_PASSWORD = "ledger-db-secret-pw"


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    from include.woo_mirakl.ledger import Ledger

    url = f"sqlite:///{tmp_path_factory.mktemp('ops') / 'ledger.db'}"
    ledger = Ledger.from_url(url)
    ledger.raise_exception("status_drift", "ORD-1", {"mirakl_state": "SHIPPED", "woo_status": "processing"}, MP,
                           severity="warning")
    ledger.raise_exception("stock_drift", "vs_woocommerce:SKU-7", {"mirakl_quantity": 2, "expected_quantity": 9}, MP,
                           severity="warning")
    ledger.raise_exception("woo_order_missing", "ORD-2", {"decision": "accepted"}, MP, severity="critical")
    for order_id, state in (("A", "WAITING_ACCEPTANCE"), ("B", "SHIPPING"), ("C", "SHIPPING"), ("D", "SHIPPED")):
        ledger.upsert_order(MP, order_id, mirakl_state=state)
    ledger.record_sync_success("mirakl_order_ingest", MP, "scheduled__1", {"orders": 4})
    return ledger, url


@pytest.fixture(scope="module")
def client(ledger, airflow_db):
    import os

    from fastapi.testclient import TestClient

    _, url = ledger
    saved = os.environ.get("AIRFLOW_CONN_WOO_MIRAKL_LEDGER")
    os.environ["AIRFLOW_CONN_WOO_MIRAKL_LEDGER"] = json.dumps(
        {"conn_type": "generic", "password": LEDGER_PASSWORD, "extra": {"sqlalchemy_url": url}})
    from airflow.api_fastapi.app import create_app

    with TestClient(create_app(apps="core"), base_url="http://localhost") as test_client:
        yield test_client
    if saved is None:
        os.environ.pop("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", None)
    else:
        os.environ["AIRFLOW_CONN_WOO_MIRAKL_LEDGER"] = saved


@pytest.fixture(scope="module")
def token(client) -> str:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser

    return get_auth_manager().generate_jwt(SimpleAuthManagerUser(username="admin", role="admin"))


def test_the_plugin_registers_its_app_and_navigation_entry(client, token):
    reply = client.get("/api/v2/plugins", headers={"Authorization": f"Bearer {token}"})

    assert reply.status_code == 200
    plugin = next(p for p in reply.json()["plugins"] if p["name"] == "woo_mirakl_operations")
    assert plugin["fastapi_apps"][0]["url_prefix"] == "/woo-mirakl"
    view = plugin["external_views"][0]
    assert view["destination"] == "nav" and view["href"] == "woo-mirakl/"


def test_the_page_is_behind_airflows_authentication(client):
    assert client.get("/woo-mirakl/").status_code == 401
    assert client.get("/woo-mirakl/", cookies={"_token": "not-a-jwt"}).status_code == 403
    assert client.post("/woo-mirakl/exceptions/1/acknowledge", headers={"X-Woo-Mirakl-Ack": "1"}).status_code == 401


def test_the_page_shows_exceptions_runs_funnel_and_stock_without_secrets(client, token):
    reply = client.get("/woo-mirakl/", cookies={"_token": token})

    assert reply.status_code == 200
    page = reply.text
    assert 'data-marketplace="sandbox"' in page and "3 open exception(s)" in page
    assert "ORD-1" in page and "woo_order_missing" in page and "vs_woocommerce:SKU-7" in page
    assert "mirakl_order_ingest" in page
    assert "shipping: <b>2</b>" in page and "waiting: <b>1</b>" in page and "shipped: <b>1</b>" in page
    assert LEDGER_PASSWORD not in page and "sqlite" not in page


def test_exceptions_filter_by_kind_and_age(client, token):
    headers = {"Authorization": f"Bearer {token}"}

    by_kind = client.get("/woo-mirakl/api/summary", params={"kind": "stock_drift"}, headers=headers).json()
    too_young = client.get("/woo-mirakl/api/summary", params={"min_age_hours": 1}, headers=headers).json()

    assert [e["key"] for e in by_kind[0]["exceptions"]] == ["vs_woocommerce:SKU-7"]
    assert by_kind[0]["open_count"] == 3 and by_kind[0]["stock"][0]["kind"] == "stock_drift"
    assert too_young[0]["exceptions"] == []
    assert client.get("/woo-mirakl/api/summary", params={"min_age_hours": -1}, headers=headers).status_code == 422


def test_acknowledge_needs_the_page_header_then_records_who(client, token, ledger):
    store, _ = ledger
    target = store.get_exception("status_drift", "ORD-1", MP)
    url = f"/woo-mirakl/exceptions/{target.id}/acknowledge"
    auth = {"Authorization": f"Bearer {token}"}

    refused = client.post(url, headers=auth)
    done = client.post(url, headers={**auth, "X-Woo-Mirakl-Ack": "1"})
    missing = client.post("/woo-mirakl/exceptions/999999/acknowledge", headers={**auth, "X-Woo-Mirakl-Ack": "1"})

    assert refused.status_code == 400
    assert done.status_code == 200 and done.json() == {"id": target.id, "status": "acknowledged", "acknowledged_by": "admin"}
    assert missing.status_code == 404
    assert store.get_exception("status_drift", "ORD-1", MP).status == "acknowledged"
    page = client.get("/woo-mirakl/", cookies={"_token": token}).text
    assert "acknowledged by admin" in page


def test_the_summary_counts_only_recent_orders_in_the_funnel(ledger):
    from plugins.operations_page import marketplace_summary

    store, _ = ledger
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=30)

    assert set(marketplace_summary(store, MP, now=later)["funnel"].values()) == {0}


def test_each_kind_says_what_happened_and_what_to_do_and_a_log_link(ledger):
    from plugins.operations_page import marketplace_summary

    store, _ = ledger
    store.raise_exception("unmatched_sku_missing_in_woocommerce", "SKU-GHOST", {"sku": "SKU-GHOST"}, MP,
                          severity="warning")
    body = ("DAG: mirakl_inventory_push__sandbox\nTask: push_stock\nMarketplace: sandbox\n"
            "Run: scheduled__2026-12-03T08:00:00+00:00\nTry: 4\nError: ApiError: HTTP 500 from STO01\nLog: \n")
    store.raise_exception("task_failure", "mirakl_inventory_push__sandbox.push_stock", {"subject": "s", "body": body}, MP)
    runs = {"mirakl_order_ingest__sandbox": {"success": {"at": "2026-12-03T08:01:00", "run_id": "scheduled__x"}},
            "mirakl_payout_reconciliation__sandbox": {"failed": {"at": "2026-12-03T02:31:00", "run_id": "scheduled__y"}}}

    summary = marketplace_summary(store, MP, runs=lambda dag_ids: runs)

    rows = {e["key"]: e for e in summary["exceptions"]}
    ghost = rows["SKU-GHOST"]
    assert "has no WooCommerce product" in ghost["guidance"]["what"] and "Mirakl back-office" in ghost["guidance"]["todo"]
    assert "SKU-GHOST" in {e["sku"] for e in summary["stock"]}
    failure = rows["mirakl_inventory_push__sandbox.push_stock"]
    assert "ApiError: HTTP 500 from STO01" in failure["guidance"]["what"] and "clear the task" in failure["guidance"]["todo"]
    assert failure["log_path"] == ("/dags/mirakl_inventory_push__sandbox/runs/scheduled__2026-12-03T08%3A00%3A00%2B00%3A00"
                                   "/tasks/push_stock")
    assert rows["vs_woocommerce:SKU-7"]["guidance"]["what"] == "Mirakl shows 2 for SKU SKU-7; WooCommerce stock says 9."
    flows = {r["flow"]: r for r in summary["runs"]}
    assert {"mirakl_order_ingest", "mirakl_payout_reconciliation", "mirakl_account", "mirakl_inventory_push"} <= set(flows)
    assert flows["mirakl_order_ingest"]["last_success_at"] == "2026-12-03T08:01:00"
    assert flows["mirakl_payout_reconciliation"]["last_failure_run_id"] == "scheduled__y"
    assert flows["mirakl_inventory_push"]["last_success_at"] is None


def test_acknowledged_exceptions_leave_the_open_list_and_its_count(ledger):
    from plugins.operations_page import marketplace_summary

    store, _ = ledger
    before = marketplace_summary(store, MP, runs=lambda ids: {})
    target = next(e for e in before["exceptions"] if e["kind"] == "woo_order_missing")
    store.acknowledge(target["id"], by="oncall")
    after = marketplace_summary(store, MP, runs=lambda ids: {})
    assert after["open_count"] == before["open_count"] - 1
    assert target["id"] not in [e["id"] for e in after["exceptions"]]
    assert [e["acknowledged_by"] for e in after["acknowledged"] if e["id"] == target["id"]] == ["oncall"]


def test_finance_reaches_each_days_report_files_from_the_reports_page(client, token, tmp_path, monkeypatch):
    monkeypatch.setenv("WOO_MIRAKL_REPORTS_DIR", str(tmp_path))
    day = tmp_path / "reconciliation" / MP / "2026-11-30"
    day.mkdir(parents=True)
    (day / "summary.csv").write_text("metric,value\ncurrency,EUR\nsales,120.50\ncommissions,-12.05\nrefunds,0.00\n"
                                     "payout_paid,0.00\nfindings,1\nfindings_refund_missing_in_woocommerce,1\n")
    (day / "index.html").write_text("<html><h1>Mirakl reconciliation — sandbox — 2026-11-30</h1></html>")
    (day / "reconciliation.xlsx").write_bytes(b"PK\x03\x04")
    (tmp_path / "reconciliation" / MP / ".staging-not-a-day").mkdir()
    cookies = {"_token": token}

    page = client.get("/woo-mirakl/reports/", cookies=cookies)

    assert page.status_code == 200
    assert 'data-day="2026-11-30"' in page.text and "Sales (items and shipping)" in page.text and "120.50 EUR" in page.text
    assert 'href="sandbox/2026-11-30/index.html">HTML report<' in page.text and "Excel workbook" in page.text
    assert "findings_" not in page.text and "staging" not in page.text
    html = client.get("/woo-mirakl/reports/sandbox/2026-11-30/index.html", cookies=cookies)
    assert html.status_code == 200 and "Mirakl reconciliation — sandbox — 2026-11-30" in html.text
    workbook = client.get("/woo-mirakl/reports/sandbox/2026-11-30/reconciliation.xlsx", cookies=cookies)
    assert workbook.status_code == 200 and "attachment" in workbook.headers["content-disposition"]
    for path in ("sandbox/2026-11-30/secret.txt", "other/2026-11-30/index.html", "sandbox/..%2F..%2Fx/index.html",
                 "sandbox/2026-11-30/lines.csv"):
        assert client.get(f"/woo-mirakl/reports/{path}", cookies=cookies).status_code == 404, path
    assert client.get("/woo-mirakl/reports/").status_code == 401


def test_each_marketplace_says_how_it_signs_in_with_connect_or_reconnect(ledger):
    from fastapi.testclient import TestClient

    from plugins.operations_page import create_app, reader

    states = {
        "key": {"auth_mode": "api_key", "auth_words": "API key", "state": "API key", "connected": False,
                "expires_at": None},
        "new": {"auth_mode": "oauth_authorization_code", "auth_words": "Mirakl authentication system",
                "state": "not connected", "connected": False, "expires_at": None},
        "lost": {"auth_mode": "oauth_authorization_code", "auth_words": "Mirakl authentication system",
                 "state": "reconnect needed: invalid_grant: consent withdrawn", "connected": True,
                 "expires_at": dt.datetime(2026, 12, 6, 9, 30, tzinfo=dt.timezone.utc)},
    }
    app = create_app(ledger_factory=lambda: ledger[0], marketplaces=lambda: list(states) + ["gone"],
                     runs=lambda dag_ids: {}, sign_in=states.get)
    app.dependency_overrides[reader] = lambda: None
    page = TestClient(app).get("/").text
    sections = {name: page.split(f'data-marketplace="{name}"')[1].split("<h3>")[0] for name in (*states, "gone")}
    assert "Mirakl sign-in: API key</p>" in sections["key"] and "button" not in sections["key"]
    assert "not connected" in sections["new"]
    assert 'href="/woo-mirakl-connect/new/start" target="_top">Connect to Mirakl</a>' in sections["new"]
    assert "reconnect needed: invalid_grant: consent withdrawn" in sections["lost"]
    assert "access token valid until 2026-12-06 09:30 UTC" in sections["lost"]
    assert 'href="/woo-mirakl-connect/lost/start" target="_top">Reconnect</a>' in sections["lost"]
    assert "Mirakl sign-in" not in sections["gone"]  # state unknown: the page still loads, without the line
