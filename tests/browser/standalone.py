"""A real `airflow standalone` for the browser tests: started on free ports, stopped with its children.

Both browser modules start one each (module scope): the environment, the start-up waits and the
stop live here once, so the two cannot drift apart or collide on a port.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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
STARTUP_TIMEOUT = 180.0
UI_TIMEOUT_MS = 30_000
RUN_TIMEOUT = 420.0  # a DAG run through the real scheduler on a busy 2-core machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Airflow:
    """A running `airflow standalone` and what the test needs to talk to it."""

    base_url: str
    password: str
    ledger_url: str
    workdir: Path  # holds standalone.log
    process: subprocess.Popen
    reports: Path | None = None
    slack: object | None = None  # the Slack webhook stand-in, where the module has one

    @property
    def log(self) -> Path:
        return self.workdir / "standalone.log"

    def token(self) -> str:
        reply = requests.post(f"{self.base_url}/auth/token", json={"username": "admin", "password": self.password},
                              timeout=30)
        reply.raise_for_status()
        return reply.json()["access_token"]

    def get(self, path: str) -> requests.Response:
        return self.call("GET", path)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        return requests.request(method, f"{self.base_url}{path}", headers={"Authorization": f"Bearer {self.token()}"},
                                timeout=30, **kwargs)

    def wait_until(self, what: str, ready: Callable[[], object], timeout: float = STARTUP_TIMEOUT) -> None:
        wait_until(what, ready, timeout, self.log, self.process)

    def wait_for_dags(self, *dag_ids: str) -> None:
        """The UI can only open a DAG's trigger form once the dag-processor has parsed it."""
        for dag_id in dag_ids:
            self.wait_until(f"DAG {dag_id}", lambda: self.get(f"/api/v2/dags/{dag_id}").ok)

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> dict:
        deadline = time.monotonic() + timeout
        run: dict = {}
        while time.monotonic() < deadline:
            run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}").json()
            if run.get("state") in ("success", "failed"):
                return run
            time.sleep(3)
        raise AssertionError(f"{dag_id} {run_id} did not finish in {timeout:.0f}s: {run}")

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value"):
        reply = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}")
        assert reply.status_code == 200, reply.text
        return reply.json()["value"]


def wait_until(what: str, ready: Callable[[], object], timeout: float, log: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if ready():
                return
        except (requests.RequestException, OSError, ValueError):  # not up yet, or a file half written
            pass
        time.sleep(1)
    tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
    raise AssertionError(f"{what} not ready (exit code {process.poll()}, {timeout:.0f}s allowed); airflow standalone log tail:\n{tail}")


def stop(process: subprocess.Popen) -> None:
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


# As `make airflow`: the REST API user the flows pause DAGs and save rotated refresh tokens as.
FLOWS_USERS = "admin:admin,woo_mirakl_flows:op"


def migrate_and_add_the_flows_user(cwd: Path) -> Callable[[dict[str, str], str], None]:
    """A ``before_start``: the metadata DB, then the user and ``airflow_api`` connection of the flows."""

    def run(env: dict[str, str], base_url: str) -> None:
        for command in ([str(Path(sys.executable).with_name("airflow")), "db", "migrate"],
                        [sys.executable, "-m", "include.woo_mirakl.flows_api_user", "--api-url", base_url]):
            done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
            assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    return run


@contextmanager
def standalone(tmp: Path, ledger_url: str, *, env: dict[str, str] | None = None,
               before_start: Callable[[dict[str, str], str], None] | None = None, **extra) -> Iterator[Airflow]:
    """Start `airflow standalone` in ``tmp`` on free ports with this repo's DAGs and plugins.

    ``env`` adds to (or overrides) the environment; ``before_start(env, base_url)`` runs first (a
    migration, a user); ``extra`` goes to :class:`Airflow` (reports, slack).
    """
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install-browser.sh")
    home = tmp / "airflow"
    home.mkdir()
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    airflow_bin = Path(sys.executable).with_name("airflow")
    full_env = {
        # the connections a test wants are given here or created through the API, never inherited
        **{k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW_CONN_")},
        # standalone starts its components as `airflow ...` from PATH: this venv's.
        "PATH": os.pathsep.join((str(airflow_bin.parent), os.environ.get("PATH", ""))),
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ROOT / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": base_url,
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
        # Ports of their own, so a developer's Airflow or another test cannot collide with this one.
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
        "AIRFLOW_CONN_WOO_MIRAKL_LEDGER": json.dumps({"conn_type": "generic", "extra": {"sqlalchemy_url": ledger_url}}),
        "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
        "WOO_MIRAKL_HOME": str(ROOT),
        **(env or {}),
    }
    if before_start is not None:
        before_start(full_env, base_url)
    log = tmp / "standalone.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(airflow_bin), "standalone"], cwd=tmp, env=full_env, stdout=out,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until("the API server", lambda: requests.get(f"{base_url}/api/v2/monitor/health", timeout=5).ok,
                   STARTUP_TIMEOUT, log, process)
        passwords = home / "simple_auth_manager_passwords.json.generated"
        wait_until("the admin password", lambda: "admin" in json.loads(passwords.read_text() or "{}"), 30, log,
                   process)
        yield Airflow(base_url, json.loads(passwords.read_text())["admin"], ledger_url, tmp, process, **extra)
    finally:
        stop(process)
