"""Orders decided by a person in Airflow, end to end: ingest flags, a required action waits, a person
answers through Airflow's REST API (a real api-server on the same metadata database), and the
decision reaches Mirakl through the usual path (reservation in WooCommerce, OR21 once).

The review DAG runs with dag.test() in this process; it parks its task in Airflow's
``awaiting_input`` state until the api-server records the answer, exactly as in production.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import requests

from include.sandbox.scenarios import customer
from tests.e2e.conftest import ROOT, advance, load_dag, run_dag

INGEST = "mirakl_order_ingest__sandbox"
REVIEW = "mirakl_order_review__sandbox"
NO_DEBIT = 10 * 86400

pytestmark = pytest.mark.usefixtures("airflow_env")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class AirflowApi:
    """The api-server's REST API v2 as a signed-in user."""

    def __init__(self, base_url: str, passwords: dict[str, str]):
        self.base_url = base_url
        self.passwords = passwords

    def headers(self, user: str) -> dict[str, str]:
        reply = requests.post(f"{self.base_url}/auth/token",
                              json={"username": user, "password": self.passwords[user]}, timeout=30)
        reply.raise_for_status()
        return {"Authorization": f"Bearer {reply.json()['access_token']}"}

    def hitl_details(self, user: str, dag_id: str, run_id: str) -> list[dict]:
        reply = requests.get(f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/hitlDetails",
                             headers=self.headers(user), timeout=30)
        reply.raise_for_status()
        return reply.json()["hitl_details"]

    def respond(self, user: str, dag_id: str, run_id: str, task_id: str, map_index: int, chosen: list[str],
                params_input: dict) -> requests.Response:
        return requests.patch(
            f"{self.base_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/{map_index}/hitlDetails",
            json={"chosen_options": chosen, "params_input": params_input}, headers=self.headers(user), timeout=30)


@pytest.fixture(scope="module")
def api(airflow_db, tmp_path_factory):
    """`airflow api-server` on the tests' metadata database, with an admin and an operator, alice."""
    port = _free_port()
    airflow = Path(sys.executable).with_name("airflow")
    env = {**os.environ, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin,alice:op",
           "PATH": os.pathsep.join((str(airflow.parent), os.environ.get("PATH", "")))}
    log = tmp_path_factory.mktemp("api") / "api-server.log"
    with log.open("wb") as out:
        process = subprocess.Popen([str(airflow), "api-server", "--port", str(port)], env=env, cwd=ROOT,
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    passwords_file = Path(os.environ["AIRFLOW_HOME"]) / "simple_auth_manager_passwords.json.generated"
    deadline = time.monotonic() + 180
    try:
        while True:
            try:
                if requests.get(f"{base}/api/v2/monitor/health", timeout=5).ok and passwords_file.exists():
                    passwords = json.loads(passwords_file.read_text())
                    if "alice" in passwords:
                        break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"api-server did not start:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(1)
        yield AirflowApi(base, passwords)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def catalogue(sandbox):
    sandbox.woo.add_simple_product("REV-A", "20.00", 10)
    sandbox.woo.add_simple_product("REV-B", "50.00", 1, backorders="yes")
    with sandbox.lock:
        sandbox.mirakl.add_offer("REV-A", 20.0, 10)
        sandbox.mirakl.add_offer("REV-B", 50.0, 10)


@pytest.fixture
def review_rules(monkeypatch, tmp_path):
    """The sandbox marketplace with every review rule switched on."""
    import yaml

    data = yaml.safe_load((ROOT / "include" / "config" / "marketplaces.yaml").read_text())
    data["marketplaces"][0]["human_review"] = {
        "price_below_woo_share": 0.2, "backorder_short_lines": True, "order_total_above": 1000,
        "timeout_default": "refuse", "decide_before_minutes": 10,
    }
    path = tmp_path / "marketplaces.yaml"
    path.write_text(yaml.safe_dump(data))
    monkeypatch.setenv("WOO_MIRAKL_MARKETPLACES", str(path))
    return path


def place(sandbox, lines, index=0, **kwargs) -> str:
    kwargs.setdefault("debit_delay_s", NO_DEBIT)
    with sandbox.lock:
        return sandbox.mirakl.place_order(lines=lines, customer=customer(index), **kwargs)["order_id"]


def ingest(sandbox, ledger, seconds: float = 61):
    advance(sandbox, ledger, seconds)
    run = run_dag(INGEST)
    assert run.state == "success"
    return run


def run_review_answering(answer) -> tuple[object, list]:
    """Run the review DAG (dag.test) while ``answer(run_id, details)`` plays the person, from a thread."""
    found: list = []
    errors: list = []
    dag = load_dag(REVIEW)

    def person() -> None:
        try:
            found.extend(answer(dag))
        except BaseException as error:  # surfaced by the test, never a hang
            errors.append(error)

    thread = threading.Thread(target=person, daemon=True)
    thread.start()
    run = dag.test()
    thread.join(timeout=60)
    assert not errors, errors
    return run, found


def wait_for_actions(api: AirflowApi, dag_id: str, count: int, timeout: float = 120) -> tuple[str, list[dict]]:
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with create_session() as session:
            run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.state == "running")).first()
            run_id = run.run_id if run else None
        if run_id:
            details = [d for d in api.hitl_details("alice", dag_id, run_id) if d["response_received"] is False]
            if len(details) >= count:
                return run_id, details
        time.sleep(1)
    raise AssertionError(f"no {count} required action(s) appeared in {dag_id}")


def line_ids(ledger, order_id) -> list[str]:
    return [line.mirakl_order_line_id for line in ledger.get_order("sandbox", order_id).lines]


def test_rules_flag_orders_a_person_decides_per_line_through_the_api_and_or21_matches(
        sandbox, ledger, catalogue, review_rules, api, alert_env, mail_sink, slack_sink, monkeypatch):
    cheap = place(sandbox, [{"offer_sku": "REV-A", "quantity": 1, "price": 10.0},
                            {"offer_sku": "REV-B", "quantity": 1}], 0)
    backorder = place(sandbox, [{"offer_sku": "REV-B", "quantity": 3}], 1)
    fine = place(sandbox, [{"offer_sku": "REV-A", "quantity": 1}], 2)
    result = ingest(sandbox, ledger)
    assert ledger.get_order("sandbox", fine).decision == "accepted"  # no rule: decided automatically
    for order_id, why in ((cheap, "more than 20 % below the WooCommerce price 20.00"),
                          (backorder, "3 ordered, 1 in stock, and the product allows backorders")):
        record = ledger.get_order("sandbox", order_id)
        assert record.decision is None and record.detail["review"]["status"] == "pending", order_id
        assert any(why in reason for reason in record.detail["review"]["reasons"]), record.detail["review"]
    assert result  # the ingest ran

    cheap_lines = line_ids(ledger, cheap)

    def alice(dag):
        run_id, details = wait_for_actions(api, dag.dag_id, 2)
        by_order = {d["task_instance"]["rendered_map_index"]: d for d in details}
        assert set(by_order) == {cheap, backorder}
        form = by_order[cheap]
        assert "REV-A" in form["body"] and "WooCommerce stock" in form["body"] and "Decide before" in form["body"]
        assert set(form["params"]) == {f"line_{i}" for i in cheap_lines}
        assert form["defaults"] == ["Refuse every line"]
        ti = form["task_instance"]
        reply = api.respond("alice", dag.dag_id, run_id, "decide", ti["map_index"], ["Apply the line choices"],
                            {f"line_{cheap_lines[0]}": "refuse", f"line_{cheap_lines[1]}": "accept"})
        assert reply.status_code == 200, reply.text
        ti = by_order[backorder]["task_instance"]
        reply = api.respond("admin", dag.dag_id, run_id, "decide", ti["map_index"], ["Accept every line"], {})
        assert reply.status_code == 200, reply.text
        again = api.respond("admin", dag.dag_id, run_id, "decide", ti["map_index"], ["Refuse every line"], {})
        assert again.status_code == 409  # one answer per required action
        return [run_id]

    # the api-server started without it: only the task's links use it (and keep its path)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/ops")
    run, _ = run_review_answering(alice)
    assert run.state == "success"
    assert_ops_told_once_per_order(ledger, mail_sink, slack_sink, run.run_id, {cheap, backorder})
    record = ledger.get_order("sandbox", cheap)
    assert record.decision == "partially"
    assert record.detail["review"]["by"] == "alice" and record.detail["review"]["timed_out"] is False
    reasons = {line.mirakl_order_line_id: line.decision_reason for line in record.lines}
    assert reasons[cheap_lines[0]] == "refused by alice in Airflow"
    assert ledger.get_action(f"sandbox:human.review:{cheap}").outcome["by"] == "alice"

    before = sandbox.log.count("mirakl", "OR21")
    ingest(sandbox, ledger)  # the usual path: reservation, then OR21
    ingest(sandbox, ledger)
    with sandbox.lock:
        lines = {line["offer_sku"]: line["order_line_state"] for line in sandbox.mirakl.order(cheap)["order_lines"]}
        backordered = sandbox.mirakl.order(backorder)["order_state"]
    assert lines == {"REV-A": "REFUSED", "REV-B": "WAITING_DEBIT"} or lines == {"REV-A": "REFUSED",
                                                                               "REV-B": "WAITING_DEBIT_PAYMENT"}
    assert backordered in ("WAITING_DEBIT", "WAITING_DEBIT_PAYMENT")
    assert sandbox.log.count("mirakl", "OR21") - before == 2  # once per order
    assert ledger.get_order("sandbox", cheap).woo_order_id is not None
    assert ledger.get_order("sandbox", backorder).detail["review"]["by"] == "admin"


def assert_ops_told_once_per_order(ledger, mail_sink, slack_sink, run_id: str, orders: set[str]) -> None:
    """One e-mail and one Slack message per order: its id, the decision deadline, the required action's link."""
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.human_review import decision_due, notify_required_action

    with create_session() as session:
        map_index = {ti.rendered_map_index: ti.map_index for ti in session.scalars(select(TaskInstance).where(
            TaskInstance.dag_id == REVIEW, TaskInstance.run_id == run_id, TaskInstance.task_id == "decide"))}
    marketplace = get_marketplace("sandbox")
    mails = [m for m in mail_sink.messages if "waits for a decision" in m["subject"]]
    texts = [t for t in slack_sink.texts() if "waits for a decision" in t]
    assert len(mails) == len(texts) == len(orders), ([m["subject"] for m in mails], texts)
    for order_id in orders:
        due = decision_due(ledger.get_order("sandbox", order_id), marketplace)
        link = (f"https://airflow.example.com/ops/dags/{REVIEW}/runs/{run_id}/tasks/decide/required_actions"
                f"?map_index={map_index[order_id]}")
        [mail] = [m for m in mails if order_id in m["subject"]]
        [text] = [t for t in texts if order_id in t]
        body = mail.get_body(preferencelist=("html", "plain")).get_content()
        assert mail["To"] == "ops@example.com"
        for message in (body, text):
            assert f"Decide before: {due:%Y-%m-%d %H:%M} UTC" in message and link in message, message
    # asked again for the same order (a retried task), nobody is told twice
    record = ledger.get_order("sandbox", sorted(orders)[0])
    assert notify_required_action(ledger, marketplace, record, "x", lambda *_: pytest.fail("sent twice")) is None


def test_nobody_answers_and_airflow_applies_the_default_before_the_deadline(
        sandbox, ledger, catalogue, review_rules, api):
    from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    # 10 minutes before the deadline is the due time: this order leaves a person ~20 s
    order_id = place(sandbox, [{"offer_sku": "REV-A", "quantity": 1, "price": 1.0}], 3, acceptance_delay_s=620 + 61)
    ingest(sandbox, ledger)
    assert ledger.get_order("sandbox", order_id).detail["review"]["status"] == "pending"
    deadline = ledger.get_order("sandbox", order_id).acceptance_deadline

    def nobody(dag):
        run_id, details = wait_for_actions(api, dag.dag_id, 1)
        with create_session() as session:
            ti = session.scalars(select(TaskInstance).where(TaskInstance.dag_id == dag.dag_id,
                                                            TaskInstance.run_id == run_id,
                                                            TaskInstance.task_id == "decide")).one()
            timeout_at = ti.trigger_timeout
        # the required action times out before Mirakl's deadline, by the configured margin
        assert (deadline - timeout_at).total_seconds() >= 600 - 2, (deadline, timeout_at)
        while time.time() < timeout_at.timestamp() + 1:
            time.sleep(0.5)
        # the scheduler's own awaiting-input sweep (what its loop runs every few seconds)
        SchedulerJobRunner.check_awaiting_input_timeouts(SimpleNamespace(log=logging.getLogger("sweep")))
        return [run_id]

    run, _ = run_review_answering(nobody)
    assert run.state == "success"
    record = ledger.get_order("sandbox", order_id)
    assert record.decision == "refused"
    assert record.detail["review"]["timed_out"] is True
    assert record.detail["review"]["by"] == "timeout default (no answer in time)"
    ingest(sandbox, ledger)
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] == "REFUSED"


def unanswered_past_its_due_time(sandbox, ledger, review_rules, default: str, index: int) -> str:
    """An under-priced order flagged for a person, nobody answering; then an ingest past its due time."""
    import yaml

    data = yaml.safe_load(review_rules.read_text())
    data["marketplaces"][0]["human_review"]["timeout_default"] = default
    review_rules.write_text(yaml.safe_dump(data))
    order_id = place(sandbox, [{"offer_sku": "REV-A", "quantity": 1, "price": 1.0}], index, acceptance_delay_s=900)
    ingest(sandbox, ledger)
    assert ledger.get_order("sandbox", order_id).detail["review"]["status"] == "pending"
    advance(sandbox, ledger, 900 - 600 - 61 + 5)  # past the due time, before the deadline
    place(sandbox, [{"offer_sku": "REV-A", "quantity": 1}], index + 1)  # activity: OR11 shows Mirakl's clock
    ingest(sandbox, ledger, 0)
    return order_id


def test_without_airflow_answering_the_ingest_applies_the_default_at_the_due_time(
        sandbox, ledger, catalogue, review_rules, monkeypatch):
    order_id = unanswered_past_its_due_time(sandbox, ledger, review_rules, "accept", 4)
    record = ledger.get_order("sandbox", order_id)
    assert record.decision == "accepted" and record.detail["review"]["timed_out"] is True
    assert "no decision before the deadline" in record.detail["review"]["by"]
    ingest(sandbox, ledger)
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] in ("WAITING_DEBIT", "WAITING_DEBIT_PAYMENT")

    # a late answer changes nothing
    from include.woo_mirakl.config import get_marketplace
    from include.woo_mirakl.human_review import REFUSE_ALL, record_decision

    late = record_decision(ledger, get_marketplace("sandbox"), order_id, REFUSE_ALL, None, "bob")
    assert late["kept"] is False and late["because"] == "already decided"
    assert ledger.get_order("sandbox", order_id).decision == "accepted"


def test_left_to_mirakl_on_timeout_nothing_is_sent_and_mirakl_cancels_at_its_deadline(
        sandbox, ledger, catalogue, review_rules):
    order_id = unanswered_past_its_due_time(sandbox, ledger, review_rules, "leave", 6)
    record = ledger.get_order("sandbox", order_id)
    assert record.decision is None, record
    assert record.detail["review"]["status"] == "left_to_mirakl" and record.detail["review"]["timed_out"] is True
    # the next cycles leave it too: no reservation, no OR21; Mirakl's own deadline ends it
    advance(sandbox, ledger, 600)
    ingest(sandbox, ledger)
    assert not [e for e in sandbox.log.entries("mirakl", "OR21") if order_id in e["path"]]
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] == "CANCELED"
    record = ledger.get_order("sandbox", order_id)
    assert record.decision is None and record.woo_order_id is None
    assert record.mirakl_state == "CANCELED"
