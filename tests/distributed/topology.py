"""Airflow's distributed topology as local processes, configured from ``docker-compose.yaml``.

Docker does not run on the CI machine, so the compose topology is reproduced with processes:
the environment every component gets is the compose file's ``x-airflow-common`` block, with
only the values that name Docker hosts, container paths or ``.env`` secrets replaced by their
local equivalents (:data:`LOCAL_OVERRIDES`). A setting added to the compose file therefore
reaches the test without anyone copying it, and :func:`compose_drift` reports what no longer
lines up.
"""
from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yaml"
BIN = Path(sys.executable).parent
PG_ADMIN_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
REDIS_URL = "redis://127.0.0.1:6379"
CELERY_APP = "airflow.providers.celery.executors.celery_executor.app"
# Marks every process a Topology starts, so teardown can find forked children that left the group.
MARKER_VAR = "WOO_MIRAKL_TOPOLOGY_RUN"
HOSTNAME_VAR = "WOO_MIRAKL_TOPOLOGY_HOSTNAME"

# Compose service -> the `airflow` sub-command it runs (the long-running components).
SERVICE_COMMANDS: dict[str, list[str]] = {
    "airflow-apiserver": ["api-server"],
    "airflow-scheduler": ["scheduler"],
    "airflow-dag-processor": ["dag-processor"],
    "airflow-triggerer": ["triggerer"],
    "airflow-worker": ["celery", "worker"],
}
# Where compose mounts the project; the harness runs airflow-init's own script with the repo here.
CONTAINER_PROJECT = "/opt/airflow/project"
API_HEALTH_PATH = "/api/v2/monitor/health"
EXECUTION_HEALTH_PATH = "/execution/health"
SCHEDULER_HEALTH_PATH = "/health"
SCHEDULER_HEALTH_PORT = 8974  # compose's scheduler health check; the harness uses a free port instead

# The compose values that only make sense inside Docker, and what replaces them here.
LOCAL_OVERRIDES: tuple[str, ...] = (
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN",  # host `postgres`
    "AIRFLOW__CELERY__RESULT_BACKEND",  # host `postgres`
    "AIRFLOW__CELERY__BROKER_URL",  # host `redis`
    "AIRFLOW__CORE__FERNET_KEY",  # from .env
    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL",  # host `airflow-apiserver`
    "AIRFLOW__API_AUTH__JWT_SECRET",  # from .env
    "AIRFLOW__CORE__DAGS_FOLDER",  # container path
    "AIRFLOW__CORE__PLUGINS_FOLDER",  # container path
    "PYTHONPATH",  # container path
    "WOO_MIRAKL_HOME",  # container path
    "AIRFLOW_CONN_WOO_MIRAKL_LEDGER",  # host `postgres`
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE",  # container path
)
# Settings the test adds on top, and why; none changes how the flows behave.
TEST_ONLY: dict[str, str] = {
    # All processes share one machine: each worker needs a hostname of its own, as each
    # container has in compose, so task instances show which worker ran them.
    "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.distributed.topology.component_hostname",
    # A killed worker's task is noticed after 30 s instead of 5 minutes.
    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "30",
}
# Compose services that are not long-running Airflow components.
ONE_SHOT_SERVICES = {"airflow-init", "sandbox"}


def component_hostname() -> str:
    """Hostname of the current component (Airflow's ``[core] hostname_callable`` in the test)."""
    return os.environ.get(HOSTNAME_VAR) or socket.getfqdn()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Compose file ------------------------------------------------------------------------------


def load_compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def compose_common_env(compose: dict[str, Any]) -> dict[str, str]:
    """The ``x-airflow-common`` environment, as strings."""
    return {k: str(v) for k, v in compose["x-airflow-common"]["environment"].items()}


def init_script(compose: dict[str, Any]) -> str:
    """airflow-init's bash script, with the container's project path replaced by this checkout."""
    command = _command(compose["services"]["airflow-init"])
    if compose["services"]["airflow-init"].get("entrypoint") != "/bin/bash" or command[:1] != ["-c"]:
        raise ValueError(f"airflow-init is expected to run `/bin/bash -c <script>`, it runs {command!r}")
    return command[-1].replace(CONTAINER_PROJECT, str(ROOT))


def _ledger_database(env: dict[str, str]) -> str | None:
    from sqlalchemy import make_url

    url = json.loads(env.get("AIRFLOW_CONN_WOO_MIRAKL_LEDGER", "{}")).get("extra", {}).get("sqlalchemy_url")
    return make_url(url).database if url else None


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else list(command)


def compose_drift(compose: dict[str, Any]) -> list[str]:
    """What in the compose file no longer matches the topology the harness runs (empty: in step)."""
    problems: list[str] = []
    env = compose_common_env(compose)
    services = compose.get("services", {})
    for key in LOCAL_OVERRIDES:
        if key not in env:
            problems.append(f"x-airflow-common has no {key} (the harness overrides it: stale override?)")
    for key in TEST_ONLY.keys() & env.keys():
        problems.append(f"{key} is set in compose but the test overrides it")
    if env.get("AIRFLOW__CORE__EXECUTOR") != "CeleryExecutor":
        problems.append(f"compose executor is {env.get('AIRFLOW__CORE__EXECUTOR')!r}, the test proves CeleryExecutor")
    for name, argv in SERVICE_COMMANDS.items():
        service = services.get(name)
        if service is None:
            problems.append(f"compose has no service {name}")
            continue
        if _command(service) != argv:
            problems.append(f"{name} runs {_command(service)}, the harness runs {argv}")
        if "healthcheck" not in service:
            problems.append(f"{name} has no health check")
        if (service.get("environment") or {}).keys() - env.keys() - {"DUMB_INIT_SETSID"}:
            extra = sorted((service.get("environment") or {}).keys() - env.keys())
            problems.append(f"{name} sets {extra} beyond x-airflow-common; the harness does not")
    image = compose["x-airflow-common"].get("image")
    airflow_services = {name for name, service in services.items() if service.get("image") == image}
    for name in sorted(airflow_services - SERVICE_COMMANDS.keys() - ONE_SHOT_SERVICES):
        problems.append(f"compose service {name} is not started by the harness")
    api = " ".join(map(str, services.get("airflow-apiserver", {}).get("healthcheck", {}).get("test", [])))
    for path in (API_HEALTH_PATH, EXECUTION_HEALTH_PATH):
        if path not in api:
            problems.append(f"api-server health check does not call {path}")
    sched = " ".join(map(str, services.get("airflow-scheduler", {}).get("healthcheck", {}).get("test", [])))
    if f":{SCHEDULER_HEALTH_PORT}{SCHEDULER_HEALTH_PATH}" not in sched:
        problems.append(f"scheduler health check does not call :{SCHEDULER_HEALTH_PORT}{SCHEDULER_HEALTH_PATH}")
    try:
        script = init_script(compose)
        for step in ("airflow db migrate", "include.woo_mirakl.settings_loader", "AIRFLOW_ADMIN_PASSWORD"):
            if step not in script:
                problems.append(f"airflow-init no longer runs {step!r}")
    except (KeyError, ValueError) as error:
        problems.append(f"airflow-init: {error}")
    ledger_db = _ledger_database(env)
    created = " ".join(str(c.get("content", "")) for c in (compose.get("configs") or {}).values())
    if not ledger_db or f"CREATE DATABASE {ledger_db}" not in created:
        problems.append(f"the ledger database {ledger_db!r} is not created by the postgres service's init config")
    sandbox = services.get("sandbox", {})
    if "demo" not in (sandbox.get("profiles") or []):
        problems.append("the sandbox service is not under the `demo` profile")
    return problems


# Databases ---------------------------------------------------------------------------------


def create_database(name: str) -> str:
    """Create a PostgreSQL database on the local server; return its SQLAlchemy URL."""
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
    finally:
        conn.close()
    return f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


def flush_redis_db(db: int) -> None:
    import redis

    redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()


# Environment -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoints:
    """Where this run's components find each other and their state."""

    home: Path
    airflow_db: str
    ledger_db: str
    redis_db: int
    api_port: int
    dags_folder: Path = ROOT / "dags"


def topology_env(compose: dict[str, Any], ends: Endpoints, run_id: str) -> dict[str, str]:
    """The environment of every component: compose's, with local hosts, paths and fresh secrets."""
    from cryptography.fernet import Fernet

    inherited = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("AIRFLOW", "SANDBOX_", "WOO_MIRAKL_", "_AIRFLOW")) and k != "PYTHONPATH"
    }
    pg = "postgres@127.0.0.1:5432"
    local = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg}/{ends.airflow_db}",
        "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql://{pg}/{ends.airflow_db}",
        "AIRFLOW__CELERY__BROKER_URL": f"{REDIS_URL}/{ends.redis_db}",
        "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{ends.api_port}/execution/",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
        "AIRFLOW__CORE__DAGS_FOLDER": str(ends.dags_folder),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(ROOT / "plugins"),
        "PYTHONPATH": str(ROOT),
        "WOO_MIRAKL_HOME": str(ROOT),
        "AIRFLOW_CONN_WOO_MIRAKL_LEDGER": json.dumps(
            {"conn_type": "generic", "extra": {"sqlalchemy_url": f"postgresql+psycopg2://{pg}/{ends.ledger_db}"}}
        ),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(ends.home / "simple_auth_manager_passwords.json"),
    }
    assert set(local) == set(LOCAL_OVERRIDES)
    return {
        **inherited,
        **compose_common_env(compose),
        **local,
        **TEST_ONLY,
        "AIRFLOW_HOME": str(ends.home),
        "AIRFLOW__API__PORT": str(ends.api_port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{ends.api_port}",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        MARKER_VAR: run_id,
    }


# Processes ---------------------------------------------------------------------------------


@dataclass
class Component:
    """One running Airflow component (its own process group) and its log file."""

    name: str
    argv: list[str]
    process: subprocess.Popen
    log: Path
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


class Topology:
    """Starts, kills and stops Airflow components; every failure message carries their logs."""

    def __init__(self, env: dict[str, str], log_dir: Path):
        self.env = env
        self.log_dir = log_dir
        self.components: dict[str, Component] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def run(self, name: str, argv: list[str], timeout: float = 300, **extra_env: str) -> str:
        """Run a one-shot command (like airflow-init); its output, or AssertionError."""
        log = self.log_dir / f"{name}.log"
        with open(log, "ab") as out:
            result = subprocess.run(argv, env={**self.env, **extra_env}, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
                                    cwd=ROOT, start_new_session=True)
        text = log.read_text(errors="replace")
        assert result.returncode == 0, f"{name} failed ({result.returncode}):\n{text[-4000:]}"
        return text

    def airflow(self, *args: str) -> list[str]:
        return [str(BIN / "airflow"), *args]

    def start(self, name: str, argv: list[str], **extra_env: str) -> Component:
        log = self.log_dir / f"{name}.log"
        env = {**self.env, HOSTNAME_VAR: name, **extra_env}
        out = open(log, "ab")  # noqa: SIM115 - stays open for the life of the process
        try:
            process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                       start_new_session=True)
        finally:
            out.close()
        component = Component(name, argv, process, log, extra_env)
        self.components[name] = component
        return component

    def kill(self, name: str) -> None:
        """SIGKILL a component's whole process group, as when its machine dies."""
        component = self.components[name]
        _signal_group(component.process.pid, signal.SIGKILL)
        component.process.wait(timeout=30)

    def stop_all(self, grace: float = 8) -> None:
        """SIGTERM every component, SIGKILL what is left after ``grace`` seconds, then any stray child."""
        for component in self.components.values():
            if component.alive:
                _signal_group(component.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for component in self.components.values():
            try:
                component.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(component.process.pid, signal.SIGKILL)
            try:
                component.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        for pid in self.leftover_pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def leftover_pids(self) -> list[int]:
        """Processes still running that this topology started (found by the marker in their environment)."""
        marker = f"{MARKER_VAR}={self.env[MARKER_VAR]}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
                    if state != "Z":
                        found.append(int(entry.name))
            except (FileNotFoundError, PermissionError, ProcessLookupError, IndexError):
                continue
        return found

    def dead(self) -> list[str]:
        return [name for name, c in self.components.items() if not c.alive]

    def tail(self, name: str, lines: int = 40) -> str:
        log = self.log_dir / f"{name}.log"
        if not log.exists():
            return "(no log)"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

    def report(self, lines: int = 30) -> str:
        """The tail of every component's log, for failure messages."""
        parts = []
        for name, component in self.components.items():
            state = "running" if component.alive else f"exited {component.process.returncode}"
            parts.append(f"----- {name} ({state}) -----\n{self.tail(name, lines)}")
        return "\n".join(parts)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_until(check: Callable[[], Any], timeout: float, what: str, report: Callable[[], str],
               interval: float = 1.0) -> Any:
    """Poll ``check`` until it returns something truthy; on timeout fail with ``report()``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (requests.RequestException, ValueError, KeyError) as error:
            last_error = error
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error!r})\n{report()}")


# REST API ------------------------------------------------------------------------------------


class AirflowApi:
    """The api-server's public REST API v2, authenticated with a SimpleAuthManager JWT."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.session = requests.Session()

    def health(self) -> dict[str, Any]:
        return self.session.get(f"{self.base_url}{API_HEALTH_PATH}", timeout=10).json()

    def login(self, username: str, password: str) -> None:
        response = self.session.post(f"{self.base_url}/auth/token", json={"username": username, "password": password},
                                     timeout=30)
        response.raise_for_status()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def call(self, method: str, path: str, ok: Iterable[int] = (200,), **kwargs: Any) -> Any:
        response = self.session.request(method, f"{self.base_url}/api/v2{path}", timeout=30, **kwargs)
        if response.status_code not in ok:
            raise AssertionError(f"{method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json() if response.content else None

    def dag_ready(self, dag_id: str) -> bool:
        response = self.session.get(f"{self.base_url}/api/v2/dags/{dag_id}", timeout=30)
        return response.status_code == 200

    def unpause(self, dag_id: str) -> None:
        self.call("PATCH", f"/dags/{dag_id}", json={"is_paused": False})

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None) -> str:
        body = {"logical_date": None, "conf": conf or {}}
        return self.call("POST", f"/dags/{dag_id}/dagRuns", json=body)["dag_run_id"]

    def run_state(self, dag_id: str, run_id: str) -> str:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        return self.call("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 1000})[
            "task_instances"]
