"""Connect to Mirakl and answering a required action, in a real browser against a real `airflow standalone`.

The sandbox (Mirakl seller API, WooCommerce and Mirakl's authentication system) runs in this process
on loopback; Airflow's components run as `airflow standalone`. Playwright drives Debian's Chromium.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from tests.browser.standalone import (
    CHROMIUM,
    CHROMIUM_ARGS,
    FLOWS_USERS,
    RUN_TIMEOUT,
    UI_TIMEOUT_MS,
    Airflow,
    migrate_and_add_the_flows_user,
    standalone,
)

MARKETPLACE = "sandbox"
CONN_ID = "mirakl_sandbox"
REVIEW_DAG = "mirakl_order_review__sandbox"
ACCOUNT_DAG = "mirakl_account__sandbox"
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
    from include.woo_mirakl.ledger import Ledger

    tmp = tmp_path_factory.mktemp("browser-connect")
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    _seed_flagged_order(Ledger.from_url(ledger_url), sandbox)

    add_the_flows_user = migrate_and_add_the_flows_user(tmp)

    def register_the_callback(env: dict[str, str], base_url: str) -> None:
        sandbox.auth.client().redirect_uris = [f"{base_url}/woo-mirakl-connect/callback"]
        add_the_flows_user(env, base_url)  # the workers save rotated refresh tokens through the REST API

    # the Mirakl connection is created in Airflow's database by the test, as Connect needs
    with standalone(tmp, ledger_url, before_start=register_the_callback,
                    env={"AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": FLOWS_USERS}) as running:
        running.wait_for_dags(REVIEW_DAG, ACCOUNT_DAG)
        for pool, slots in (("mirakl_api", 2), ("woocommerce_api", 4)):  # as airflow_settings.yaml
            reply = running.call("POST", "/api/v2/pools", json={"name": pool, "slots": slots})
            assert reply.status_code == 201, reply.text
        yield running


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
    reply = airflow.call("POST", "/api/v2/connections", json={
        "connection_id": CONN_ID, "conn_type": "mirakl", "host": sandbox.mirakl_url, "login": client.client_id,
        "password": client.client_secret, "extra": json.dumps({
            "auth_mode": "oauth_authorization_code", "shop_id": sandbox.mirakl.shop_id,
            "token_url": f"{sandbox.auth_url}/oauth/token", "authorize_url": f"{sandbox.auth_url}/oauth/authorize",
            "retry_base_delay": 0.05, "timeout": 10})})
    assert reply.status_code in (200, 201), reply.text

    page.goto(f"{airflow.base_url}/woo-mirakl/")
    section = page.locator("section[data-marketplace=sandbox] p.sign-in")
    expect(section).to_contain_text("not connected")
    section.get_by_role("link", name="Connect to Mirakl").click()

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
    page.get_by_role("link", name="Operations page").click()
    section = page.locator("section[data-marketplace=sandbox] p.sign-in")
    expect(section).to_contain_text("connected; access token valid until")
    expect(section.get_by_role("link", name="Reconnect")).to_be_visible()
    page.screenshot(path=str(airflow.workdir / "operations-connected.png"))
    page.get_by_role("link", name="Mirakl connections: Connect to Mirakl / Reconnect").click()
    expect(page.locator("tr[data-marketplace=sandbox]")).to_contain_text("Reconnect")

    reply = airflow.call("GET", f"/api/v2/connections/{CONN_ID}")
    assert "refresh_token" in reply.json()["extra"] and user.password not in reply.text


def test_workers_renew_and_save_each_rotated_refresh_token_in_the_connection(airflow: Airflow, sandbox) -> None:
    """Renewals on real worker processes. Mirakl rotates the refresh token at each renewal and ends the
    grant if a spent one is used again, so every renewal after the first works only if the worker before
    wrote its new refresh token back into the connection (through the REST API, as woo_mirakl_flows)."""
    reply = airflow.call("POST", "/api/v2/connections", json={
        "connection_id": "woocommerce_default", "conn_type": "woocommerce", "host": sandbox.woo_url,
        "login": sandbox.woo.consumer_key, "password": sandbox.woo.consumer_secret,
        "extra": json.dumps({"retry_base_delay": 0.05, "timeout": 10})})
    assert reply.status_code in (200, 201), reply.text
    assert airflow.call("PATCH", f"/api/v2/dags/{ACCOUNT_DAG}", json={"is_paused": False}).ok
    from sqlalchemy import update

    from include.woo_mirakl.ledger import Ledger
    from include.woo_mirakl.ledger.oauth_tokens import oauth_tokens

    ledger = Ledger.from_url(airflow.ledger_url)
    with ledger.session() as s, s.begin():  # an hour on: Connect's access token has expired
        s.execute(update(oauth_tokens).values(expires_at=datetime.now(UTC) - timedelta(seconds=1)))
    with sandbox.lock:
        sandbox.auth.access_token_ttl = 30  # shorter than the renewal margin: every use renews
    try:
        for attempt in (1, 2):
            before = sandbox.auth.issued.get("refresh_token", 0)
            reply = airflow.call("POST", f"/api/v2/dags/{ACCOUNT_DAG}/dagRuns",
                                 json={"logical_date": None, "conf": {"action": "verify"}})
            assert reply.ok, reply.text
            run = airflow.wait_for_run(ACCOUNT_DAG, reply.json()["dag_run_id"])
            assert run["state"] == "success", airflow.log.read_text(errors="replace")[-3000:]
            assert sandbox.auth.issued["refresh_token"] > before, attempt
    finally:
        with sandbox.lock:
            sandbox.auth.access_token_ttl = 3599
    with sandbox.lock:
        grants = [g for g in sandbox.auth.grants.values() if g.user == sandbox.auth.user().email]
    assert grants and not any(g.revoked for g in grants)
    # the workers wrote through the REST API as the flows' own user (Airflow's audit log says who)
    events = airflow.get("/api/v2/eventLogs?event=patch_connection&limit=100").json()["event_logs"]
    assert {e["owner"] for e in events} == {"woo_mirakl_flows"}, events
    assert len(events) >= 2


def test_a_person_answers_the_required_action_in_the_ui(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    from include.woo_mirakl.ledger import Ledger

    # unpaused, the flow's next scheduled run claims the flagged order and opens its required action
    assert airflow.call("PATCH", f"/api/v2/dags/{REVIEW_DAG}", json={"is_paused": False}).ok
    action = None
    deadline = time.monotonic() + 240
    while action is None and time.monotonic() < deadline:
        found = airflow.call("GET", f"/api/v2/dags/{REVIEW_DAG}/dagRuns/~/hitlDetails").json()
        action = next((d for d in found.get("hitl_details", []) if not d["response_received"]), None)
        time.sleep(2)
    assert action is not None, airflow.log.read_text(errors="replace")[-3000:]
    ti = action["task_instance"]
    run_id, map_index = ti["dag_run_id"], ti["map_index"]
    assert ti["rendered_map_index"] == ORDER_ID
    # The action is listed before its task has deferred. Airflow 3.3.2's scheduler fails a task
    # resumed before it has taken in the worker's exit from the deferral (apache/airflow#67287,
    # fixed only for the `scheduled` state): answer, as a person would, once the task waits.
    airflow.wait_until("the decide task deferring", lambda: airflow.get(
        f"/api/v2/dags/{REVIEW_DAG}/dagRuns/{run_id}/taskInstances/decide/{map_index}").json()["state"]
        in ("deferred", "awaiting_input"))
    time.sleep(5)

    page.goto(f"{airflow.base_url}/dags/{REVIEW_DAG}/runs/{run_id}/tasks/decide/mapped/{map_index}/required_actions")
    expect(page.get_by_text("Accept or refuse Mirakl order BROWSER-ORDER-1")).to_be_visible(timeout=UI_TIMEOUT_MS)
    expect(page.get_by_role("columnheader", name="WooCommerce stock")).to_be_visible()
    expect(page.get_by_role("button", name="Refuse every line")).to_be_visible()  # the timeout default
    # refuse the under-priced line, keep the other: the per-line choice
    page.get_by_role("combobox").first.click()
    page.get_by_role("option", name="refuse").click()
    page.screenshot(path=str(airflow.workdir / "required-action.png"), full_page=True)
    page.get_by_role("button", name="Apply the line choices").click()

    # first Airflow takes the answer (the UI's part), then the deferred task resumes on a worker
    # (the scheduler's part, slow on a loaded 2-core machine): two waits, each with its own message
    def answered() -> dict | None:
        found = airflow.call("GET", f"/api/v2/dags/{REVIEW_DAG}/dagRuns/{run_id}/hitlDetails").json()
        return next((d for d in found.get("hitl_details", []) if d["response_received"]), None)

    airflow.wait_until("the person's answer reaching Airflow", answered, timeout=60)
    assert answered()["chosen_options"] == ["Apply the line choices"]
    ledger = Ledger.from_url(airflow.ledger_url)
    airflow.wait_until("the decide task applying the answer",
                       lambda: ledger.get_order(MARKETPLACE, ORDER_ID).decision is not None, timeout=RUN_TIMEOUT)
    record = ledger.get_order(MARKETPLACE, ORDER_ID)
    assert record.decision == "partially", record.detail.get("review")
    assert record.detail["review"]["lines"] == {f"{ORDER_ID}-1": "refuse", f"{ORDER_ID}-2": "accept"}
    assert record.detail["review"]["by"] == "admin" and record.detail["review"]["timed_out"] is False
