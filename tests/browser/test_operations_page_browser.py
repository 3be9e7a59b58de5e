"""The users' paths through the Airflow UI in a real browser, against a real `airflow standalone`
(api-server, scheduler, dag-processor, LocalExecutor workers) and the sandbox over loopback.

Ops: the Test button of each connection type from the connection list; a backfill of three
reconciliation days from the dialog, ending green. On-call: the operations page with the last run
of every flow and an exception with its guidance, acknowledged. Finance: the reports page opening
a day's HTML report. The account form: verify, a dry run listing the flows, a mistyped confirmation
refused without paging anyone. Screenshots of each step go to ``var/browser-screenshots/``.

Playwright drives Debian's Chromium (scripts/install-browser.sh installs it; Playwright's own
browser download is not used). One Airflow per module: it is the slow part; the tests run in order.
"""
from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

from datetime import UTC, datetime, time as dtime, timedelta

import pytest
import requests

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

ROOT = Path(__file__).resolve().parents[2]
MARKETPLACE = "sandbox"
SKU = "SKU-BROWSER-1"
DAG_ID = "mirakl_account__sandbox"
PAGE_TITLE = "Woo ⇄ Mirakl operations"  # the nav entry and the iframe's title
SHOTS = ROOT / "var" / "browser-screenshots"
RECONCILIATION = "mirakl_payout_reconciliation__sandbox"
# The day of the reconciliation's latest scheduled run (daily at 02:30 UTC): once unpaused, the
# scheduler creates that run itself, so the backfilled runs must all come before it; before 02:30
# that is yesterday's run, and a range ending yesterday would hold only two missing runs.
LATEST_RUN_DAY = (datetime.now(UTC) - timedelta(hours=2, minutes=30)).date()
DAYS = [LATEST_RUN_DAY - timedelta(days=n) for n in (4, 3, 2)]  # the three reconciled (backfilled) days

pytestmark = pytest.mark.slow


def _sandbox_with_three_days_of_sales():
    """The sandbox, its clock four days back: one paid Mirakl order on each of the three days."""
    from include.sandbox.core import Clock, Sandbox
    from include.sandbox.scenarios import customer

    sandbox = Sandbox(seed=17, clock=Clock(start=datetime.combine(DAYS[0], dtime(9), tzinfo=UTC))).start()
    with sandbox.lock:
        sandbox.woo.settings["shipment_tracking_installed"] = True
        sandbox.woo.add_simple_product("BRW-MUG", "20.00", 50)
        sandbox.mirakl.add_offer("BRW-MUG", 20.0, 50)
        for index, day in enumerate(DAYS):
            sandbox.clock.advance((datetime.combine(day, dtime(10), tzinfo=UTC) - sandbox.clock.now()).total_seconds())
            order = sandbox.mirakl.place_order(lines=[{"offer_sku": "BRW-MUG", "quantity": 1 + index}],
                                               customer=customer(index), debit_delay_s=864000)
            sandbox.mirakl.store.accept(sandbox.clock.now(), order["order_id"],
                                        [{"id": line["order_line_id"], "accepted": True} for line in order["order_lines"]])
            sandbox.mirakl.debit(order["order_id"])
        sandbox.clock.advance((datetime.now(UTC) - sandbox.clock.now()).total_seconds())
    return sandbox


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Iterator[Airflow]:
    from include.sandbox.sinks import SlackSink
    from include.woo_mirakl.ledger import Ledger

    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    tmp = tmp_path_factory.mktemp("browser")
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    Ledger.from_url(ledger_url).raise_exception(
        "stock_drift", SKU, {"mirakl_quantity": 3, "expected_quantity": 7}, marketplace=MARKETPLACE)
    sandbox = _sandbox_with_three_days_of_sales()
    slack = SlackSink()

    env = {
        "AIRFLOW__CORE__TEST_CONNECTION": "Enabled",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": FLOWS_USERS,
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
        "WOO_MIRAKL_REPORTS_DIR": str(tmp / "reports"),
    }
    try:
        with standalone(tmp, ledger_url, env=env, before_start=migrate_and_add_the_flows_user(tmp),
                        reports=tmp / "reports", slack=slack) as running:
            running.wait_for_dags(DAG_ID, RECONCILIATION)
            for pool, slots in (("mirakl_api", 2), ("woocommerce_api", 4)):  # as airflow_settings.yaml
                reply = running.call("POST", "/api/v2/pools", json={"name": pool, "slots": slots})
                assert reply.status_code == 201, reply.text
            # The connections an operator creates in Admin → Connections (the list shows only these, not env vars).
            for body in (
                {"connection_id": "mirakl_sandbox", "conn_type": "mirakl", "host": sandbox.mirakl_url,
                 "password": sandbox.mirakl.api_key, "extra": json.dumps({"shop_id": sandbox.mirakl.shop_id})},
                {"connection_id": "woocommerce_default", "conn_type": "woocommerce", "host": sandbox.woo_url,
                 "login": sandbox.woo.consumer_key, "password": sandbox.woo.consumer_secret},
                {"connection_id": "slack_alerts", "conn_type": "woo_mirakl_slack_webhook", "password": slack.url},
            ):
                reply = running.call("POST", "/api/v2/connections", json=body)
                assert reply.status_code == 201, reply.text
            yield running
    finally:
        sandbox.stop()
        slack.stop()


@pytest.fixture(scope="module")
def page(airflow: Airflow):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        yield page
        browser.close()




def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_ops_logs_in_and_the_test_button_of_each_connection_type_is_green(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    for dag_id in (DAG_ID, RECONCILIATION, "mirakl_refund_sync__sandbox"):  # the flows this session runs
        assert airflow.call("PATCH", f"/api/v2/dags/{dag_id}", json={"is_paused": False}).ok
    page.goto(f"{airflow.base_url}/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", airflow.password)
    shot(page, "01-login")
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)

    page.goto(f"{airflow.base_url}/connections")
    for conn_id, message in (("mirakl_sandbox", "Connected to Mirakl shop"),
                             ("woocommerce_default", "Connected to WooCommerce"),
                             ("slack_alerts", "nothing was posted")):
        row = page.get_by_role("row").filter(has_text=conn_id)
        row.get_by_role("button", name="Test Connection").click()
        toast = page.get_by_role("status").filter(has_text="Test Connection Successful").filter(has_text=message)
        expect(toast.first).to_be_visible()
        shot(page, f"02-test-button-{conn_id}")
        page.keyboard.press("Escape")
    assert airflow.slack.payloads == []


def trigger_account(page, airflow: Airflow, action: str, run_id: str, *, confirmation: str | None = None,
                    real: bool = False) -> None:
    """The account DAG's Trigger form: the action, optionally the confirmation and dry run off."""
    from playwright.sync_api import expect

    page.goto(f"{airflow.base_url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Run Parameters")).to_be_visible()
    dialog.get_by_role("combobox", name="Action").click()
    page.get_by_role("option", name=action).click()
    if confirmation is not None:
        dialog.locator("[name=element_confirmation]").fill(confirmation)
    if real:
        # The switch's input is hidden: click the switch itself, as a person does.
        switch = dialog.get_by_role("checkbox", name="Dry run")
        switch.locator("xpath=..").click()
        expect(switch).not_to_be_checked()
    dialog.get_by_role("button", name="Advanced Options").click()
    dialog.locator("input[name=dagRunId]").fill(run_id)
    shot(page, f"03-trigger-{run_id.rsplit('_', 1)[0]}")
    dialog.get_by_test_id("trigger-dag-submit").click()
    expect(dialog).to_be_hidden()


def open_task_log(page, airflow: Airflow, run_id: str, task_id: str, text: str) -> None:
    """The task's log page until the line shows: the log view can load after the page on a busy machine."""
    for attempt in range(3):
        page.goto(f"{airflow.base_url}/dags/{DAG_ID}/runs/{run_id}/tasks/{task_id}")
        try:
            page.get_by_text(text).first.wait_for()
            return
        except Exception:
            shot(page, f"log-not-yet-{task_id}-{attempt}")
    page.get_by_text(text).first.wait_for()


def test_the_account_form_verifies_lists_the_flows_and_refuses_a_typo_without_paging(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    from include.woo_mirakl.ledger import Ledger

    stamp = int(time.time())
    trigger_account(page, airflow, "Verify the connection", f"browser_verify_{stamp}")
    run = airflow.wait_for_run(DAG_ID, f"browser_verify_{stamp}")
    assert run["conf"]["action"] == "verify" and run["state"] == "success", run
    summary = airflow.xcom(DAG_ID, run["dag_run_id"], "report_verification", "summary")
    assert summary["ok"] is True and "mirakl.shop" in {c["key"] for c in summary["checks"]}

    trigger_account(page, airflow, "Disconnect the marketplace", f"browser_dryrun_{stamp}")
    run = airflow.wait_for_run(DAG_ID, f"browser_dryrun_{stamp}")
    assert run["state"] == "success", run
    plan = airflow.xcom(DAG_ID, run["dag_run_id"], "plan_disconnect")
    assert plan["dry_run"] is True and plan["flows_listed_via"] == "Airflow REST API" and plan["can_pause"] is True
    running = sorted([RECONCILIATION, "mirakl_refund_sync__sandbox"])  # the ones unpaused above
    assert plan["flows"] == running and len(plan["flows"]) + len(plan["already_paused"]) >= 7
    assert f"Pause 2 flow(s): {', '.join(running)}." in plan["plan"]
    open_task_log(page, airflow, run["dag_run_id"], "plan_disconnect", "DRY RUN")
    # the plan's lines too, in the task's own section of the log, not inside the collapsed "Post Execute"
    pause_line = page.get_by_text(re.compile(r"^\s*- Pause 2 flow\(s\): "))
    expect(pause_line).to_be_visible()
    expect(pause_line).to_have_text(re.compile(re.escape(f"Pause 2 flow(s): {', '.join(running)}.")))
    shot(page, "04-dry-run-log")

    trigger_account(page, airflow, "Disconnect the marketplace", f"browser_typo_{stamp}", confirmation="disconnect",
                    real=True)
    run = airflow.wait_for_run(DAG_ID, f"browser_typo_{stamp}")
    assert run["conf"]["dry_run"] is False and run["conf"]["confirmation"] == "disconnect"
    assert run["state"] == "failed"
    open_task_log(page, airflow, run["dag_run_id"], "plan_disconnect", "must read exactly 'Disconnect'")
    shot(page, "05-typo-refused-log")
    failures = [e for e in Ledger.from_url(airflow.ledger_url).open_exceptions(MARKETPLACE) if e.kind == "task_failure"]
    assert failures == [] and airflow.slack.payloads == []


def pick_date(page, dialog, index: int, day, clock: str) -> None:
    """Airflow's date picker: open its popover, type the date and the time, click away to close it."""
    dialog.get_by_test_id("datetime-input").nth(index).click()
    page.locator("input[placeholder='YYYY/MM/DD']:visible").last.fill(day.strftime("%Y/%m/%d"))
    page.locator("input[placeholder='HH:mm']:visible").last.fill(clock)
    dialog.get_by_role("heading").first.click()


def test_ops_backfills_three_reconciliation_days_from_the_dialog_and_they_end_green(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    page.goto(f"{airflow.base_url}/dags/{RECONCILIATION}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_text("Backfill", exact=True).first.click()
    # Runs dated D+1 02:30 reconcile D: the three runs after the three sales days.
    pick_date(page, dialog, 0, DAYS[0] + timedelta(days=1), "00:00")
    pick_date(page, dialog, 1, DAYS[-1] + timedelta(days=1), "23:59")
    expect(dialog.get_by_text("3 runs will be triggered.")).to_be_visible()
    shot(page, "06-backfill-dialog")
    dialog.get_by_role("button", name="Run Backfill").click()
    expect(page.get_by_text("Backfill generated").first).to_be_visible()

    deadline = time.monotonic() + 3 * RUN_TIMEOUT
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = airflow.get(f"/api/v2/dags/{RECONCILIATION}/dagRuns?run_type=backfill").json()["dag_runs"]
        if len(runs) == 3 and all(r["state"] in ("success", "failed") for r in runs):
            break
        time.sleep(5)
    assert sorted(r["state"] for r in runs) == ["success"] * 3, runs
    page.goto(f"{airflow.base_url}/dags/{RECONCILIATION}")
    shot(page, "07-backfill-green")
    for day in DAYS:
        assert (airflow.reports / "reconciliation" / MARKETPLACE / day.isoformat() / "index.html").exists(), day


def open_plugin_page(page, airflow: Airflow, title: str):
    page.goto(f"{airflow.base_url}/")
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name=title).click()
    return page.frame_locator(f"iframe[title='{title}']")


def test_on_call_sees_every_flows_last_run_and_an_exception_with_guidance_and_acknowledges_it(
        airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    from include.woo_mirakl.ledger import Ledger

    operations = open_plugin_page(page, airflow, PAGE_TITLE)
    heading = operations.locator("section[data-marketplace=sandbox] h2")
    expect(heading).to_contain_text("1 open exception(s)")
    runs = operations.locator("table.runs")
    for flow in ("mirakl_order_ingest", "mirakl_inventory_push", "mirakl_payout_reconciliation", "mirakl_account",
                 "mirakl_refund_sync", "mirakl_data_quality", "mirakl_shipment_confirm", "mirakl_catalogue_publish"):
        expect(runs.locator(f"tr[data-flow={flow}]")).to_have_count(1)
    expect(runs.locator("tr[data-flow=mirakl_payout_reconciliation] td").nth(1)).to_contain_text(str(LATEST_RUN_DAY.year))
    expect(runs.locator("tr[data-flow=mirakl_account] a.failed")).to_have_count(1)  # the refused typo
    row = operations.locator("table.exceptions tr", has_text=SKU)
    expect(row).to_contain_text("Mirakl shows 3 for SKU SKU-BROWSER-1; WooCommerce stock says 7.")
    expect(row).to_contain_text("What to do:")
    shot(page, "08-operations-page")

    row.get_by_role("button", name="Acknowledge").click()
    expect(heading).to_contain_text("0 open exception(s)")
    expect(operations.locator("table.exceptions tr", has_text=SKU)).to_have_count(0)
    operations.get_by_text("Acknowledged, not yet resolved (1)").click()
    expect(operations.locator("table.acknowledged")).to_contain_text("acknowledged by admin")
    shot(page, "09-operations-acknowledged")
    [record] = [e for e in Ledger.from_url(airflow.ledger_url).open_exceptions(MARKETPLACE) if e.key == SKU]
    assert (record.status, record.acknowledged_by) == ("acknowledged", "admin")


def test_finance_opens_a_days_html_report_from_the_reports_page(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    title = "Woo ⇄ Mirakl finance reports"
    reports = open_plugin_page(page, airflow, title)
    day = reports.locator(f"tr[data-day='{DAYS[-1]}']")
    expect(day).to_contain_text("EUR")
    expect(reports.locator("table.reports")).not_to_contain_text("findings_")
    shot(page, "10-reports-page")
    day.get_by_role("link", name="HTML report").click()
    expect(reports.locator("h1")).to_contain_text(f"Mirakl reconciliation — sandbox — {DAYS[-1]}")
    expect(reports.locator("#chart-trend")).to_be_visible()
    shot(page, "11-html-report")
