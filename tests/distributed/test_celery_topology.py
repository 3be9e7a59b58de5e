"""The docker-compose topology, proven as processes: CeleryExecutor, PostgreSQL, Redis, two workers.

Fresh ``airflow_topo_*`` and ``ledger_topo_*`` databases on the local PostgreSQL, a Redis
database of its own as the Celery broker, and the compose file's settings (see
``tests/distributed/topology.py``). The sandbox runs in this process; the workers reach it over
loopback through the connections ``airflow_settings.yaml`` defines, as in ``--profile demo``.
Flows are triggered through the REST API v2 and their end state is read from the sandbox and
the PostgreSQL ledger. The tests share one topology and run in file order.
"""
from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.topology import (
    BIN,
    CELERY_APP,
    EXECUTION_HEALTH_PATH,
    ROOT,
    SCHEDULER_HEALTH_PATH,
    AirflowApi,
    Endpoints,
    Topology,
    compose_drift,
    create_database,
    drop_database,
    flush_redis_db,
    free_port,
    init_script,
    load_compose,
    topology_env,
    wait_until,
)

ORDER_INGEST = "mirakl_order_ingest__sandbox"
INVENTORY_PUSH = "mirakl_inventory_push__sandbox"
WORKERS = ("worker-1", "worker-2")
REDIS_DB = 13  # the broker's own database number, flushed before and after
FINISHED = ("success", "failed")
HEALTHY_PARTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")
UNDECIDED = "WAITING_ACCEPTANCE"


@dataclass
class Stack:
    """One running topology and what the tests need to drive and inspect it."""

    topology: Topology
    api: AirflowApi
    sandbox: Any
    ledger: Any
    world: dict[str, Any]
    home: Path


def test_compose_file_matches_the_topology_the_test_runs():
    assert compose_drift(load_compose()) == []


def _wait_healthy(topo: Topology, api: AirflowApi, scheduler_port: int) -> None:
    import requests

    def alive() -> None:
        if topo.dead():
            raise AssertionError(f"components died during start-up: {topo.dead()}\n{topo.report()}")

    # The workers' compose health check, verbatim: Celery answers a ping addressed to each worker.
    # First, because the workers are up before the api-server: the ping's start-up overlaps its.
    ping = [str(BIN / "celery"), "--app", CELERY_APP, "inspect", "ping", "-d",
            ",".join(f"celery@{w}" for w in WORKERS)]

    def workers_answer() -> bool:
        alive()
        result = subprocess.run(ping, env=topo.env, capture_output=True, text=True, timeout=60, cwd=ROOT)
        return result.returncode == 0 and all(f"celery@{w}" in result.stdout for w in WORKERS)

    wait_until(workers_answer, 180, f"celery inspect ping of {WORKERS}", topo.report, 2)

    def all_healthy() -> bool:
        alive()
        health = api.health()
        return all(health.get(part, {}).get("status") == "healthy" for part in HEALTHY_PARTS)

    wait_until(all_healthy, 240, f"{HEALTHY_PARTS} healthy at /api/v2/monitor/health", topo.report, 1)
    url = f"http://127.0.0.1:{scheduler_port}{SCHEDULER_HEALTH_PATH}"
    wait_until(lambda: requests.get(url, timeout=5).ok, 60, f"scheduler {url}", topo.report)
    # As compose's api-server health check: the execution API (what workers call) is slow to answer
    # its first request; take that hit here rather than in the first task (5 s client timeout).
    wait_until(lambda: requests.get(f"{api.base_url}{EXECUTION_HEALTH_PATH}", timeout=120).ok, 240,
               "the execution API", topo.report)


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    from include.sandbox.core import Sandbox
    from include.sandbox.scenarios import apply_scenario
    from include.woo_mirakl.ledger import Ledger, dispose_engines

    missing = [d for d in (ORDER_INGEST, INVENTORY_PUSH) if not (ROOT / "dags" / f"{d.split('__')[0]}.py").exists()]
    assert not missing, f"the flows {missing} have no DAG file in {ROOT / 'dags'}"
    suffix = secrets.token_hex(4)
    airflow_db, ledger_db = f"airflow_topo_{suffix}", f"ledger_topo_{suffix}"
    home = tmp_path_factory.mktemp("topology")
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(flush_redis_db, REDIS_DB)
        cleanup.callback(drop_database, airflow_db)
        cleanup.callback(drop_database, ledger_db)
        flush_redis_db(REDIS_DB)
        create_database(airflow_db)
        ledger_url = create_database(ledger_db)

        sandbox = Sandbox(seed=1).start(0, 0)
        cleanup.callback(sandbox.stop)
        world = apply_scenario(sandbox, "demo")

        ends = Endpoints(home=home, airflow_db=airflow_db, ledger_db=ledger_db, redis_db=REDIS_DB,
                         api_port=free_port())
        env = topology_env(load_compose(), ends, run_id=suffix)
        mirakl_port, woo_port = (sandbox.mirakl_url.rsplit(":", 1)[1], sandbox.woo_url.rsplit(":", 1)[1])
        env.update(SANDBOX_HOST="127.0.0.1", SANDBOX_MIRAKL_PORT=mirakl_port, SANDBOX_WOO_PORT=woo_port)
        topo = Topology(env, home / "component-logs")

        def stop_and_check_nothing_is_left() -> None:
            topo.stop_all()
            left = topo.leftover_pids()
            assert not left, f"processes left behind after teardown: {left}"

        cleanup.callback(stop_and_check_nothing_is_left)

        # airflow-init's own script: migrate, load the settings file (connections point at the
        # sandbox), write the admin password SimpleAuthManager will read.
        password = secrets.token_urlsafe(16)
        topo.run("airflow-init", ["bash", "-c", init_script(load_compose())], AIRFLOW_ADMIN_PASSWORD=password)

        scheduler_port = free_port()
        topo.start("api-server", topo.airflow("api-server", "--host", "127.0.0.1", "--port", str(ends.api_port)))
        topo.start("scheduler", topo.airflow("scheduler"),
                   AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(scheduler_port))
        topo.start("dag-processor", topo.airflow("dag-processor"))
        topo.start("triggerer", topo.airflow("triggerer"), AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()))
        for worker in WORKERS:
            # One task at a time per worker: two tasks in flight need both workers.
            topo.start(worker, topo.airflow("celery", "worker", "--celery-hostname", f"celery@{worker}",
                                            "--concurrency", "1"),
                       AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()))

        api = AirflowApi(f"http://127.0.0.1:{ends.api_port}")
        _wait_healthy(topo, api, scheduler_port)
        api.login("admin", password)
        ledger = Ledger.from_url(ledger_url)
        cleanup.callback(dispose_engines)
        for dag_id in (ORDER_INGEST, INVENTORY_PUSH):
            wait_until(lambda d=dag_id: api.dag_ready(d), 180, f"{dag_id} parsed by the dag-processor", topo.report, 2)
            api.unpause(dag_id)
        yield Stack(topo, api, sandbox, ledger, world, home)


# Helpers -------------------------------------------------------------------------------------


def _task_logs(home: Path, dag_id: str, run_id: str, lines: int = 25) -> str:
    parts = []
    for log in sorted((home / "logs").glob(f"dag_id={dag_id}/run_id={run_id}/task_id=*/**/*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"----- {log.relative_to(home)} -----\n" + "\n".join(text))
    return "\n".join(parts) or "(no task logs)"


def _finish(stack: Stack, dag_id: str, run_id: str, timeout: float = 300) -> list[dict[str, Any]]:
    """Wait for a run; assert it succeeded (else show task states, task logs and component logs)."""
    api, topo = stack.api, stack.topology

    def report() -> str:
        try:
            states = [(t["task_id"], t["state"], t["hostname"], t["try_number"]) for t in api.task_instances(dag_id, run_id)]
        except Exception as error:  # the report must not hide the original failure
            states = [repr(error)]
        return f"task instances: {states}\n{_task_logs(stack.home, dag_id, run_id)}\n{topo.report()}"

    state = wait_until(lambda: (s := api.run_state(dag_id, run_id)) in FINISHED and s, timeout,
                       f"{dag_id} run {run_id} to finish", report, 2)
    assert state == "success", f"{dag_id} run {run_id} ended {state}\n{report()}"
    return api.task_instances(dag_id, run_id)


def _mirakl_state(sandbox, order_id: str) -> str:
    with sandbox.lock:
        return sandbox.mirakl.order(order_id)["order_state"]


def _woo_orders_by_mirakl_id(sandbox) -> dict[str, list[dict]]:
    found: dict[str, list[dict]] = {}
    with sandbox.lock:
        orders = sandbox.woo.orders()
    for order in orders:
        mirakl_id = next((m["value"] for m in order["meta_data"] if m["key"] == "_mirakl_order_id"), None)
        if mirakl_id:
            found.setdefault(mirakl_id, []).append(order)
    return found


# The distributed runs ------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.postgres
def test_flows_run_on_two_celery_workers_against_the_sandbox(stack: Stack):
    api, sandbox, ledger = stack.api, stack.sandbox, stack.ledger
    runs = {dag_id: api.trigger(dag_id) for dag_id in (ORDER_INGEST, INVENTORY_PUSH)}
    for dag_id, run_id in runs.items():
        _finish(stack, dag_id, run_id)

    # Order ingest: every demo order was decided on Mirakl and recorded in the PostgreSQL ledger;
    # accepted ones have exactly one WooCommerce order. A scheduled run may have done the work
    # before the triggered one, which then finds nothing new: the end state is what counts.
    orders = stack.world["orders"]
    wait_until(lambda: all(_mirakl_state(sandbox, o) != UNDECIDED for o in orders), 180,
               "every demo order decided", stack.topology.report, 2)
    woo = _woo_orders_by_mirakl_id(sandbox)
    decided = {o: _mirakl_state(sandbox, o) for o in orders}
    accepted = [o for o, state in decided.items() if state != "REFUSED"]
    assert accepted and set(woo) == set(accepted), (decided, sorted(woo))
    # on-hold, or processing once the sandbox operator has debited the customer (120 s)
    assert all(len(found) == 1 and found[0]["status"] in ("on-hold", "processing") for found in woo.values())
    recorded = {o: ledger.get_order("sandbox", o) for o in orders}
    assert all(r is not None for r in recorded.values()), recorded
    assert {o: r.woo_order_id for o, r in recorded.items() if o in accepted} == {o: woo[o][0]["id"] for o in accepted}

    # Inventory push: one stock file went to Mirakl and the offers are tracked in the ledger.
    assert sandbox.log.count("mirakl", "STO01", ok_only=True) >= 1
    offers = ledger.offer_states("sandbox")
    offered = set(stack.world["skus"]) - set(stack.world["without_offer"])
    assert offers and set(offers) <= offered | set(stack.world["orphan_offers"]), sorted(offers)

    # Both Celery workers ran tasks (each has concurrency 1, and the flows' tasks overlap).
    everything = api.call("GET", "/dags/~/dagRuns/~/taskInstances", params={"limit": 1000})["task_instances"]
    hosts = {ti["hostname"] for ti in everything if ti["state"] == "success"}
    assert hosts == set(WORKERS), [(ti["dag_id"], ti["task_id"], ti["hostname"]) for ti in everything]


@pytest.mark.slow
@pytest.mark.postgres
def test_killed_worker_mid_order_ingest_retries_on_the_other_without_duplicate_order(stack: Stack):
    from include.sandbox.scenarios import place_orders

    api, sandbox, topo = stack.api, stack.sandbox, stack.topology
    offered = [s for s in stack.world["skus"] if s not in stack.world["without_offer"]]
    with sandbox.lock:
        in_stock = [s for s in offered if sandbox.woo.product_by_sku(s)["stock_quantity"] >= 4]
    new_orders = place_orders(sandbox, 1, in_stock, seed=5, max_lines=1, debit_delay_s=10 * 86400)
    # The WooCommerce create is received, then held: the worker dies before it hears the answer,
    # and the sandbox still creates the order - the crash the ledger's intent record is for.
    sandbox.faults.add({"service": "woo", "operation": "woo.orders.create", "kind": "slow", "delay": 15, "count": 1})
    stack.ledger.shift_call_times(-60)  # OR11 may be called again now, not at the next minute
    api.trigger(ORDER_INGEST)  # a scheduled run may get there first; either is fine

    def held_create() -> bool:
        return any(r["operation"] == "woo.orders.create" and r["count"] == 0 for r in sandbox.faults.describe())

    wait_until(held_create, 240, "a WooCommerce order create to reach the sandbox", topo.report, 0.5)
    running = [ti for ti in api.call("GET", f"/dags/{ORDER_INGEST}/dagRuns/~/taskInstances",
                                     params={"state": "running", "limit": 100})["task_instances"]
               if ti["task_id"] == "decide_and_reserve"]
    assert len(running) == 1, running
    victim, run_id = running[0]["hostname"], running[0]["dag_run_id"]
    assert victim in WORKERS, running
    topo.kill(victim)

    # The scheduler sees the task's heartbeat stop, schedules a retry, and the other worker runs it.
    task_instances = _finish(stack, ORDER_INGEST, run_id, timeout=420)
    decide = next(ti for ti in task_instances if ti["task_id"] == "decide_and_reserve")
    survivor = next(w for w in WORKERS if w != victim)
    assert decide["try_number"] >= 2 and decide["hostname"] == survivor, decide

    woo = _woo_orders_by_mirakl_id(sandbox)
    for order_id in new_orders:
        assert _mirakl_state(sandbox, order_id) != UNDECIDED
        assert len(woo.get(order_id, [])) == 1, (order_id, woo.get(order_id))
    assert all(len(found) == 1 for found in woo.values()), {k: len(v) for k, v in woo.items()}
