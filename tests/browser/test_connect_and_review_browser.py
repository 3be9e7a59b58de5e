"""Connect to Mirakl and answering a required action, in a real browser against a real `airflow standalone`.

The sandbox (Mirakl seller API, WooCommerce and Mirakl's authentication system) runs in this process
on loopback; Airflow's components run as `airflow standalone`. Playwright drives Debian's Chromium.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from tests.browser.test_operations_page_browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    STARTUP_TIMEOUT,
    UI_TIMEOUT_MS,
    Airflow,
    _free_port,
    _stop,
    _wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
MARKETPLACE = "sandbox"
CONN_ID = "mirakl_sandbox"
REVIEW_DAG = "mirakl_order_review__sandbox"
ORDER_ID = "BROWSER-ORDER-1"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sandbox():
    from include.sandbox.core import Sandbox

    sb = Sandbox(seed=3).start()
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def airflow(tmp_path_factory, sandbox) -> Iterator[Airflow]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser.sh")
    from include.woo_mirakl.ledger import Ledger

    tmp = tmp_path_factory.mktemp("browser-connect")
    home = tmp / "airflow"
    home.mkdir()
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    _seed_flagged_order(Ledger.from_url(ledger_url), sandbox)
    port = _free_port()
    base_url = f"http://127.0.0.1:{port}"
    sandbox.auth.client().redirect_uris = [f"{base_url}/woo-mirakl-connect/callback"]
    airflow_bin = Path(sys.executable).with_name("airflow")
    env = {
        **os.environ,
        "PATH": os.pathsep.join((str(airflow_bin.parent), os.environ.get("PATH", ""))),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW_CONN_WOO_MIRAKL_LEDGER": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": ledger_url}}),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "WOO_MIRAKL_HOME": str(ROOT),
    }
    env.pop("AIRFLOW_CONN_MIRAKL_SANDBOX", None)  # the connection lives in Airflow's database, as Connect needs
    log = tmp / "standalone.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(airflow_bin), "standalone"], cwd=tmp, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_until("the API server", lambda: requests.get(f"{base_url}/api/v2/monitor/health", timeout=5).ok,
                    STARTUP_TIMEOUT, log, process)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        _wait_until("the admin password", passwords.exists, 30, log, process)
        running = Airflow(base_url, json.loads(passwords.read_text())["admin"], ledger_url, tmp)
        _wait_until(f"DAG {REVIEW_DAG}", lambda: running.get(f"/api/v2/dags/{REVIEW_DAG}").ok, STARTUP_TIMEOUT,
                    log, process)
        yield running
    finally:
        _stop(process)


def _seed_flagged_order(ledger, sandbox) -> None:
    """An order the ingest flagged for a person (as `decide_and_reserve` leaves it)."""
    now = sandbox.clock.now()
    payload = {"order_id": ORDER_ID, "order_state": "WAITING_ACCEPTANCE", "currency_iso_code": "EUR",
               "total_price": "45.00", "created_date": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
               "order_lines": [{"order_line_id": f"{ORDER_ID}-1", "offer_sku": "BR-A", "quantity": 1, "price": "5.00",
                                "price_unit": "5.00"},
                               {"order_line_id": f"{ORDER_ID}-2", "offer_sku": "BR-B", "quantity": 2, "price": "40.00",
                                "price_unit": "20.00"}]}
    ledger.upsert_order(MARKETPLACE, ORDER_ID, mirakl_state="WAITING_ACCEPTANCE", currency="EUR",
                        acceptance_deadline=now + timedelta(days=1), detail={"payload": payload, "problems": [], "review": {
                            "status": "pending", "reasons": ["line BROWSER-ORDER-1-1 (BR-A): unit price 5.00 is more "
                                                             "than 20 % below the WooCommerce price 20.00"],
                            "woo": {"BR-A": {"quantity": 4, "price": "20.00", "backorders_allowed": False},
                                    "BR-B": {"quantity": 9, "price": "20.00", "backorders_allowed": False}}}})
    ledger.set_order_lines(MARKETPLACE, ORDER_ID, [
        {"mirakl_order_line_id": line["order_line_id"], "offer_sku": line["offer_sku"], "quantity": line["quantity"],
         "price": line["price"], "mirakl_state": "WAITING_ACCEPTANCE"} for line in payload["order_lines"]])


def _api(airflow: Airflow, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{airflow.base_url}{path}", timeout=30,
                            headers={"Authorization": f"Bearer {airflow.token()}"}, **kwargs)


@pytest.fixture(scope="module")
def page(airflow: Airflow):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(UI_TIMEOUT_MS)
        page.goto(f"{airflow.base_url}/")
        page.fill("input[name=username]", "admin")
        page.fill("input[name=password]", airflow.password)
        page.click("button[type=submit]")
        page.wait_for_url(lambda url: "/auth/login" not in url)
        yield page
        browser.close()


def test_connect_to_mirakl_from_the_operations_page(airflow: Airflow, sandbox, page) -> None:
    from playwright.sync_api import expect

    client = sandbox.auth.client()
    reply = _api(airflow, "POST", "/api/v2/connections", json={
        "connection_id": CONN_ID, "conn_type": "mirakl", "host": sandbox.mirakl_url, "login": client.client_id,
        "password": client.client_secret, "extra": json.dumps({
            "auth_mode": "oauth_authorization_code", "shop_id": sandbox.mirakl.shop_id,
            "token_url": f"{sandbox.auth_url}/oauth/token", "authorize_url": f"{sandbox.auth_url}/oauth/authorize",
            "retry_base_delay": 0.05, "timeout": 10})})
    assert reply.status_code in (200, 201), reply.text

    page.goto(f"{airflow.base_url}/woo-mirakl/")
    page.get_by_role("link", name="Mirakl connections: Connect to Mirakl / Reconnect").click()
    row = page.locator("tr[data-marketplace=sandbox]")
    expect(row).to_contain_text("not connected")
    row.get_by_role("link", name="Connect to Mirakl").click()

    # Mirakl's side: sign in, consent (one store, so no store choice)
    page.wait_for_url(lambda url: url.startswith(sandbox.auth_url))
    expect(page.get_by_role("heading", name="Sign in to Mirakl")).to_be_visible()
    user = sandbox.auth.user()
    page.fill("input[name=email]", user.email)
    page.fill("input[name=password]", user.password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Allow access")).to_be_visible()
    expect(page.locator("ul.scopes")).to_contain_text("Read your orders")
    page.get_by_role("button", name="Allow").click()

    # back in Airflow: verified with A01, in plain words
    page.wait_for_url(lambda url: url.startswith(f"{airflow.base_url}/woo-mirakl-connect/callback"))
    result = page.locator("#result")
    expect(result).to_contain_text(f"Connected to Mirakl shop")
    expect(result).to_contain_text(f"(id {sandbox.mirakl.shop_id})")
    expect(result).to_contain_text("the access token is valid until")
    page.screenshot(path=str(airflow.workdir / "connected.png"))
    assert sandbox.log.count("mirakl", "A01") >= 1
    page.get_by_role("link", name="Mirakl connections").click()
    expect(page.locator("tr[data-marketplace=sandbox]")).to_contain_text("Reconnect")

    reply = _api(airflow, "GET", f"/api/v2/connections/{CONN_ID}")
    assert "refresh_token" in reply.json()["extra"] and user.password not in reply.text


def test_a_person_answers_the_required_action_in_the_ui(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    from include.woo_mirakl.ledger import Ledger

    # unpaused, the flow's next scheduled run claims the flagged order and opens its required action
    assert _api(airflow, "PATCH", f"/api/v2/dags/{REVIEW_DAG}", json={"is_paused": False}).ok
    action = None
    deadline = time.monotonic() + 240
    while action is None and time.monotonic() < deadline:
        found = _api(airflow, "GET", f"/api/v2/dags/{REVIEW_DAG}/dagRuns/~/hitlDetails").json()
        action = next((d for d in found.get("hitl_details", []) if not d["response_received"]), None)
        time.sleep(2)
    assert action is not None, (airflow.workdir / "standalone.log").read_text(errors="replace")[-3000:]
    ti = action["task_instance"]
    run_id, map_index = ti["dag_run_id"], ti["map_index"]
    assert ti["rendered_map_index"] == ORDER_ID

    page.goto(f"{airflow.base_url}/dags/{REVIEW_DAG}/runs/{run_id}/tasks/decide/mapped/{map_index}/required_actions")
    expect(page.get_by_text("Accept or refuse Mirakl order BROWSER-ORDER-1")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("columnheader", name="WooCommerce stock")).to_be_visible()
    expect(page.get_by_role("button", name="Refuse every line")).to_be_visible()  # the timeout default
    # refuse the under-priced line, keep the other: the per-line choice
    page.get_by_role("combobox").first.click()
    page.get_by_role("option", name="refuse").click()
    page.screenshot(path=str(airflow.workdir / "required-action.png"), full_page=True)
    page.get_by_role("button", name="Apply the line choices").click()

    ledger = Ledger.from_url(airflow.ledger_url)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ledger.get_order(MARKETPLACE, ORDER_ID).decision is None:
        time.sleep(1)
    record = ledger.get_order(MARKETPLACE, ORDER_ID)
    assert record.decision == "partially", record.detail.get("review")
    assert record.detail["review"]["lines"] == {f"{ORDER_ID}-1": "refuse", f"{ORDER_ID}-2": "accept"}
    assert record.detail["review"]["by"] == "admin" and record.detail["review"]["timed_out"] is False
