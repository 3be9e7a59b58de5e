"""Alerts end to end: a real SMTP server and a local Slack webhook stand-in receive what is sent.

Task failures of a DAG built by the project's factory, the data-quality digest (once per
opening, again only after the quiet period, critical first), and soft failure when no mail
server answers. No secret may appear in anything that arrives.
"""
from __future__ import annotations

import json
import os
from datetime import timedelta

import pytest

from include.woo_mirakl.alerts import Delivery, send_alert
from include.woo_mirakl.digest import DigestPolicy, alert_critical_now, send_digest

pytestmark = pytest.mark.usefixtures("alert_env")
MARKETPLACE = "sandbox"
DIGEST_MP = "digest_mp"  # exceptions of its own, apart from the failure test's


@pytest.fixture(autouse=True)
def empty_sinks(mail_sink, slack_sink):
    mail_sink.messages.clear()
    slack_sink.payloads.clear()


def secrets(sandbox, slack_sink) -> list[str]:
    return [sandbox.mirakl.api_key, sandbox.woo.consumer_secret, slack_sink.token_path.rsplit("/", 1)[-1]]


def everything_received(mail_sink, slack_sink) -> str:
    mails = [f"{m['subject']}\n{body}" for m, body in zip(mail_sink.messages, mail_sink.bodies())]
    return "\n".join(mails + [json.dumps(p) for p in slack_sink.payloads])


PROBE_DAG = '''"""Fails on purpose: a flow whose task error carries the Mirakl key."""
from airflow.sdk import BaseHook, task

from include.woo_mirakl.dag_factory import marketplace_dags


def build(marketplace):
    @task(pool="mirakl_api", retries=0)
    def call_mirakl():
        key = BaseHook.get_connection(marketplace.mirakl_conn_id).password
        raise RuntimeError(f"Mirakl refused the call (key {key}): 503 maintenance")

    call_mirakl()


globals().update(marketplace_dags("alert_probe", build, schedule=None, doc_md=__doc__))
'''


def failing_dag(folder, monkeypatch):
    """A one-task flow built by the project's factory, in a DAG bundle of its own (dag.test() needs one)."""
    from airflow.models import DagBag

    path = folder / "alert_probe.py"
    path.write_text(PROBE_DAG)
    bundles = [
        {"name": "alert-probe", "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
         "kwargs": {"path": str(folder)}},
    ]
    monkeypatch.setenv("AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST", json.dumps(bundles))
    bag = DagBag(dag_folder=str(path))
    assert not bag.import_errors, bag.import_errors
    return bag.dags["alert_probe__sandbox"]


def test_a_failed_task_alerts_by_email_and_slack_with_dag_task_marketplace_error_and_log(
    sandbox, ledger, mail_sink, slack_sink, tmp_path, monkeypatch
):
    run = failing_dag(tmp_path, monkeypatch).test()

    assert run.state == "failed"
    assert len(mail_sink.messages) == 1 and len(slack_sink.payloads) == 1
    mail, body = mail_sink.messages[0], mail_sink.bodies()[0]
    assert mail["To"] == "ops@example.com"
    assert mail["Subject"] == "[woo-mirakl] alert_probe__sandbox.call_mirakl failed (sandbox)"
    for text in (body, slack_sink.texts()[0]):
        assert "DAG: alert_probe__sandbox" in text
        assert "Task: call_mirakl" in text
        assert "Marketplace: sandbox" in text
        assert "RuntimeError: Mirakl refused the call" in text and "503 maintenance" in text
        assert "/dags/alert_probe__sandbox/runs/" in text and "/tasks/call_mirakl" in text
    received = everything_received(mail_sink, slack_sink)
    for secret in secrets(sandbox, slack_sink):
        assert secret not in received
    recorded = ledger.get_exception("task_failure", "alert_probe__sandbox.call_mirakl", MARKETPLACE)
    assert recorded is not None and recorded.status == "open"
    assert recorded.notified_at is not None, "a sent failure alert must not be repeated by the next digest"


def test_a_task_failing_again_within_the_quiet_period_is_counted_not_alerted_again(ledger, mail_sink, slack_sink):
    from types import SimpleNamespace

    from include.woo_mirakl.alerts import FailureAlert

    ti = SimpleNamespace(dag_id="alert_probe__sandbox", task_id="call_mirakl", run_id="manual__2", try_number=1,
                         log_url="http://localhost:8080/dags/alert_probe__sandbox/runs/manual__2/tasks/call_mirakl")
    FailureAlert(MARKETPLACE).notify({"ti": ti, "exception": RuntimeError("503 again")})

    assert mail_sink.messages == [] and slack_sink.payloads == []
    assert ledger.get_exception("task_failure", "alert_probe__sandbox.call_mirakl", MARKETPLACE).count == 2


def test_findings_alert_once_as_one_digest_then_again_only_after_the_quiet_period(ledger, mail_sink, slack_sink):
    ledger.raise_exception("status_drift", "ORD-D1", {"mirakl_state": "SHIPPED", "woo_status": "processing"},
                           DIGEST_MP, severity="warning")
    ledger.raise_exception("stock_drift", "SKU-D1", {"mirakl_quantity": 4, "expected": 7}, DIGEST_MP,
                           severity="warning")
    ledger.raise_exception("acceptance_deadline_near", "ORD-D2", {"hours_left": 1.5}, DIGEST_MP,
                           severity="critical")
    acked = ledger.raise_exception("stuck_action", "KEY-D1", {}, DIGEST_MP, severity="warning")
    ledger.acknowledge(acked.id, by="ops")
    policy = DigestPolicy(quiet_period=timedelta(hours=1))

    first = send_digest(ledger, DIGEST_MP, policy, run_id="dq-1")

    assert len(mail_sink.messages) == 1 and len(slack_sink.payloads) == 1
    body = mail_sink.bodies()[0]
    subject = mail_sink.messages[0]["Subject"]
    assert "1 critical" in subject
    assert body.index("CRITICAL acceptance_deadline_near ORD-D2") < body.index("status_drift ORD-D1")
    assert "stock_drift SKU-D1" in body and "KEY-D1" not in body, "acknowledged exceptions do not alert"
    assert "status_drift ORD-D1" in slack_sink.texts()[0]
    assert first["sent"] == 1 and first["critical"] == 1

    again = send_digest(ledger, DIGEST_MP, policy, run_id="dq-2")
    assert again["alerted"] == 0 and len(mail_sink.messages) == 1 and len(slack_sink.payloads) == 1

    later = send_digest(ledger, DIGEST_MP, policy, now=_now() + timedelta(hours=2), run_id="dq-3")
    assert later["alerted"] == 3 and len(mail_sink.messages) == 2 and len(slack_sink.payloads) == 2
    assert "(still open)" in mail_sink.bodies()[1]


def test_a_critical_exception_raised_between_digests_alerts_at_once(ledger, mail_sink, slack_sink):
    record = ledger.raise_exception("order_reservation_failed", "ORD-C1", {"error": "woo 500"}, DIGEST_MP)
    ordinary = ledger.raise_exception("unmatched_sku_missing_in_mirakl", "SKU-C1", {}, DIGEST_MP, severity="warning")

    alerted = alert_critical_now(ledger, DIGEST_MP, [record, ordinary])

    assert alerted == 1
    assert len(mail_sink.messages) == 1 and len(slack_sink.payloads) == 1
    assert "CRITICAL order_reservation_failed ORD-C1" in mail_sink.bodies()[0]
    assert "SKU-C1" not in mail_sink.bodies()[0]
    assert ledger.get_exception("order_reservation_failed", "ORD-C1", DIGEST_MP).notified_at is not None
    assert ledger.get_exception("unmatched_sku_missing_in_mirakl", "SKU-C1", DIGEST_MP).notified_at is None


def test_an_exception_escalating_to_critical_alerts_once_more_and_only_once(ledger, mail_sink, slack_sink):
    """The orders flow raises acceptance_deadline as a warning at 50 % of the window and as critical
    at 80 %: the escalation is news for on-call, each cycle after it is not."""
    def deadline(severity, share):
        record = ledger.raise_exception("acceptance_deadline", "ORD-E1", {"share_used": share}, DIGEST_MP,
                                        severity=severity)
        return alert_critical_now(ledger, DIGEST_MP, [record])

    assert [deadline("warning", 0.5), deadline("warning", 0.6)] == [1, 0]
    assert [deadline("critical", 0.8), deadline("critical", 0.9)] == [1, 0]

    mails = [body for body in mail_sink.bodies() if "ORD-E1" in body]
    posts = [text for text in slack_sink.texts() if "ORD-E1" in text]
    assert len(mails) == 2 and len(posts) == 2, (mails, posts)
    assert "share_used=0.8" in mails[1] and "share_used=0.8" in posts[1]
    assert ledger.get_exception("acceptance_deadline", "ORD-E1", DIGEST_MP).notified_at is not None


def test_sending_fails_soft_and_keeps_findings_due_when_nothing_answers(ledger, slack_sink, monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    smtp = json.loads(os.environ["AIRFLOW_CONN_SMTP_ALERTS"])
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({**smtp, "port": closed_port}))
    monkeypatch.setenv("AIRFLOW_CONN_SLACK_ALERTS", json.dumps(
        {"conn_type": "slackwebhook", "password": slack_sink.url.replace("/services/", "/wrong/")}))
    ledger.raise_exception("status_drift", "ORD-F1", {}, "soft_mp", severity="warning")
    ledger.raise_exception("order_reservation_failed", "ORD-F2", {}, "soft_mp", severity="critical")

    delivery = send_alert("subject", "body")
    alerted_now = alert_critical_now(ledger, "soft_mp")
    summary = send_digest(ledger, "soft_mp", DigestPolicy())

    assert delivery == Delivery(email=False, slack=False)
    assert alerted_now == 0  # and its claim released, so the digest still carries it
    assert summary == {"alerted": 2, "critical": 1, "sent": 0}
    assert ledger.get_exception("status_drift", "ORD-F1", "soft_mp").notified_at is None
    assert ledger.get_exception("order_reservation_failed", "ORD-F2", "soft_mp").notified_at is None


def test_without_alert_connections_nothing_is_sent_and_nothing_breaks(monkeypatch):
    monkeypatch.delenv("AIRFLOW_CONN_SMTP_ALERTS")
    monkeypatch.delenv("AIRFLOW_CONN_SLACK_ALERTS")

    assert send_alert("subject", "body") == Delivery(email=None, slack=None)


def test_a_critical_exception_a_flow_raises_alerts_when_its_task_ends_once_per_opening(
    sandbox, ledger, mail_sink, slack_sink
):
    """An order accepted and shipped in the Mirakl back office has no WooCommerce order: the orders
    flow raises a critical exception, and that run alerts it, not the next digest; later cycles
    raise it again and alert nothing."""
    from include.sandbox.scenarios import customer
    from tests.e2e.conftest import advance, run_dag

    sandbox.woo.add_simple_product("CRIT-1", "9.00", 10)
    with sandbox.lock:
        sandbox.mirakl.add_offer("CRIT-1", 9.0, 10)
        order_id = sandbox.mirakl.place_order(lines=[{"offer_sku": "CRIT-1", "quantity": 1}],
                                              customer=customer(0))["order_id"]
        store, now = sandbox.mirakl.store, sandbox.clock.now()
        store.accept(now, order_id, [{"id": f"{order_id}-1", "accepted": True}])
        store.debit(now, order_id)
        store.ship(now, order_id)

    for _ in range(2):
        advance(sandbox, ledger, 61)
        assert run_dag(f"mirakl_order_ingest__{MARKETPLACE}").state == "success"

    recorded = ledger.get_exception("order_without_woo_order", order_id, MARKETPLACE)
    assert recorded.severity == "critical" and recorded.count >= 2 and recorded.notified_at is not None
    mails = [body for body in mail_sink.bodies() if order_id in body]
    posts = [text for text in slack_sink.texts() if order_id in text]
    assert len(mails) == 1 and len(posts) == 1, (mails, posts)
    assert f"CRITICAL order_without_woo_order {order_id}" in mails[0]
    received = everything_received(mail_sink, slack_sink)
    for secret in secrets(sandbox, slack_sink):
        assert secret not in received


def _now():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)
