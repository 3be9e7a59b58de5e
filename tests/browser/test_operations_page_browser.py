"""The operations page and a DAG's trigger form in a real browser, against a real `airflow standalone`.

Playwright drives Debian's Chromium (scripts/install-browser.sh installs it; Playwright's own
browser download is not used). One Airflow per module: it is the slow part.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
MARKETPLACE = "sandbox"
SKU = "SKU-BROWSER-1"
DAG_ID = "mirakl_account__sandbox"
PAGE_TITLE = "Woo ⇄ Mirakl operations"  # the nav entry and the iframe's title
STARTUP_TIMEOUT = 180.0
UI_TIMEOUT_MS = 30_000

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Airflow:
    """A running `airflow standalone` and what the test needs to talk to it."""

    base_url: str
    password: str
    ledger_url: str
    workdir: Path  # the standalone log and the screenshots

    def token(self) -> str:
        reply = requests.post(f"{self.base_url}/auth/token", json={"username": "admin", "password": self.password},
                              timeout=30)
        reply.raise_for_status()
        return reply.json()["access_token"]

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.base_url}{path}", headers={"Authorization": f"Bearer {self.token()}"},
                            timeout=30)


def _wait_until(what: str, ready, timeout: float, log: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    raise AssertionError(f"{what} not ready (exit code {process.poll()}, {timeout:.0f}s allowed); airflow standalone log tail:\n{tail}")


@pytest.fixture(scope="module")
def airflow(tmp_path_factory) -> Iterator[Airflow]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser.sh")
    from include.woo_mirakl.ledger import Ledger

    tmp = tmp_path_factory.mktemp("browser")
    home = tmp / "airflow"
    home.mkdir()
    ledger_url = f"sqlite:///{tmp / 'ledger.db'}"
    Ledger.from_url(ledger_url).raise_exception(
        "stock_drift", SKU, {"mirakl_quantity": 3, "expected_quantity": 7}, marketplace=MARKETPLACE)

    port = _free_port()
    airflow_bin = Path(sys.executable).with_name("airflow")
    env = {
        **os.environ,
        # standalone starts its components as `airflow ...` from PATH: this venv's.
        "PATH": os.pathsep.join((str(airflow_bin.parent), os.environ.get("PATH", ""))),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        # Ports of their own, so a developer's Airflow or another test cannot collide with this one.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW_CONN_WOO_MIRAKL_LEDGER": json.dumps(
            {"conn_type": "generic", "extra": {"sqlalchemy_url": ledger_url}}),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "WOO_MIRAKL_HOME": str(ROOT),
    }
    log = tmp / "standalone.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(airflow_bin), "standalone"], cwd=tmp, env=env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until("the API server", lambda: requests.get(f"{base_url}/api/v2/monitor/health", timeout=5).ok,
                    STARTUP_TIMEOUT, log, process)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        _wait_until("the admin password", passwords.exists, 30, log, process)
        running = Airflow(base_url, json.loads(passwords.read_text())["admin"], ledger_url, tmp)
        # The UI can only open the trigger form once the dag-processor has parsed the DAG.
        _wait_until(f"DAG {DAG_ID}", lambda: running.get(f"/api/v2/dags/{DAG_ID}").ok, STARTUP_TIMEOUT, log, process)
        yield running
    finally:
        _stop(process)


def _stop(process: subprocess.Popen) -> None:
    """Stop standalone and everything it started: the whole process group, not just its leader."""
    for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            process.poll()  # reap the leader so the group can empty
            try:
                os.killpg(process.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
    process.wait(timeout=10)


@pytest.fixture(scope="module")
def page(airflow: Airflow):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(UI_TIMEOUT_MS)
        yield page
        browser.close()


def test_an_operator_logs_in_acknowledges_an_exception_and_triggers_a_verify(airflow: Airflow, page) -> None:
    from playwright.sync_api import expect

    from include.woo_mirakl.ledger import Ledger

    # Log in through Airflow's own login form.
    page.goto(f"{airflow.base_url}/")
    page.fill("input[name=username]", "admin")
    page.fill("input[name=password]", airflow.password)
    page.click("button[type=submit]")
    page.wait_for_url(lambda url: "/auth/login" not in url)

    # The operations page, reached through its navigation entry, shows the seeded exception.
    page.get_by_role("button", name="Browse").click()
    page.get_by_role("menuitem", name=PAGE_TITLE).click()
    operations = page.frame_locator(f"iframe[title='{PAGE_TITLE}']")
    row = operations.locator("table.exceptions tr", has_text=SKU)
    expect(row).to_contain_text("stock_drift")
    expect(row).to_contain_text("expected_quantity=7 mirakl_quantity=3")

    # Acknowledge with the page's own button (it sends the CSRF header with the session cookie).
    row.get_by_role("button", name="Acknowledge").click()
    expect(row).to_contain_text("acknowledged by admin")
    expect(row.get_by_role("button", name="Acknowledge")).to_have_count(0)
    page.screenshot(path=str(airflow.workdir / "operations-page.png"))
    [record] = [e for e in Ledger.from_url(airflow.ledger_url).open_exceptions(MARKETPLACE) if e.key == SKU]
    assert (record.status, record.acknowledged_by) == ("acknowledged", "admin")

    # Trigger the account DAG with its parameter form: action "verify", a run id of our own.
    page.goto(f"{airflow.base_url}/dags/{DAG_ID}")
    page.get_by_role("button", name="Trigger").click()
    dialog = page.get_by_role("dialog")
    expect(dialog.get_by_text("Run Parameters")).to_be_visible()
    dialog.get_by_role("combobox", name="Action").click()
    page.get_by_role("option", name="Verify the connection").click()
    expect(dialog.locator("input[name=element_action]")).to_have_value("verify")
    dialog.get_by_role("button", name="Advanced Options").click()
    run_id = f"browser_verify_{int(time.time())}"
    dialog.locator("input[name=dagRunId]").fill(run_id)
    page.screenshot(path=str(airflow.workdir / "trigger-form.png"))
    dialog.get_by_test_id("trigger-dag-submit").click()
    expect(dialog).to_be_hidden()

    reply = airflow.get(f"/api/v2/dags/{DAG_ID}/dagRuns/{run_id}")
    assert reply.status_code == 200, reply.text
    run = reply.json()
    assert run["run_type"] == "manual"
    assert run["conf"]["action"] == "verify"
    assert run["conf"]["dry_run"] is True
