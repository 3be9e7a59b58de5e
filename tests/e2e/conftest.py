"""End-to-end fixtures: one sandbox and one ledger per test module, DAGs run with dag.test().

The DAGs see only Airflow connections (set here as AIRFLOW_CONN_* variables pointing at
the sandbox), exactly as in production.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from include.sandbox.sinks import MailSink, SlackSink

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sandbox():
    from include.sandbox.core import Sandbox

    sb = Sandbox(seed=7, validate_requests=True).start()
    # exports ready at once: the flows' DAG runs must not sleep through PENDING polls (that phase
    # is covered by tests/integration/test_payout_export_path.py and test_offer_export.py)
    sb.mirakl.configure(export_delay_s=0)
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def ledger_url(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"


@pytest.fixture(scope="module")
def ledger(ledger_url):
    from include.woo_mirakl.ledger import Ledger

    return Ledger.from_url(ledger_url)


@pytest.fixture(scope="module")
def airflow_env(sandbox, ledger_url, airflow_db):
    """Connections for the sandbox marketplace, as environment variables."""
    values = {
        "AIRFLOW_CONN_MIRAKL_SANDBOX": {
            "conn_type": "mirakl", "host": sandbox.mirakl_url, "password": sandbox.mirakl.api_key,
            "extra": {"shop_id": sandbox.mirakl.shop_id, "retry_base_delay": 0.05, "timeout": CLIENT_TIMEOUT},
        },
        "AIRFLOW_CONN_WOOCOMMERCE_DEFAULT": {
            "conn_type": "woocommerce", "host": sandbox.woo_url, "login": sandbox.woo.consumer_key,
            "password": sandbox.woo.consumer_secret, "extra": {"retry_base_delay": 0.05, "timeout": CLIENT_TIMEOUT},
        },
        "AIRFLOW_CONN_WOO_MIRAKL_LEDGER": {
            "conn_type": "generic", "extra": {"sqlalchemy_url": ledger_url},
        },
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update({k: json.dumps(v) for k, v in values.items()})
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def load_dag(dag_id: str):
    """The DAG object from the project's dags/ folder."""
    from airflow.models import DagBag

    flow = dag_id.split("__")[0]
    bag = DagBag(dag_folder=str(ROOT / "dags" / f"{flow}.py"))
    assert not bag.import_errors, bag.import_errors
    return bag.dags[dag_id]


def run_dag(dag_id: str, conf: dict | None = None, retries: bool = True):
    """Run every task of a DAG in-process; return the finished DagRun.

    ``retries`` False: a failed task stays failed, as when the worker died.
    """
    dag = load_dag(dag_id)
    if not retries:
        for task in dag.tasks:
            task.retries = 0
    return dag.test(run_conf=conf)


def land_then_drop(sandbox, service: str, operation: str, count: int = 1) -> None:
    """The next ``count`` calls of ``operation`` are applied, then their connection is dropped.

    This is a worker that never learns what its call did (it died, or the network did): the
    change is made on the remote side and the ledger knows only the intent.
    """
    sandbox.faults.add({"service": service, "operation": operation, "kind": "apply_then_drop", "count": count})


def fail_record(sandbox, service: str, operation: str, contains: str, status: int = 500) -> None:
    """Every call of ``operation`` naming ``contains`` (in its path or body) fails with ``status``,
    before it is applied, until the faults are cleared: one record's persistent failure."""
    sandbox.faults.add({"service": service, "operation": operation, "kind": "status", "status": status,
                        "contains": contains})


CLIENT_TIMEOUT = 3  # seconds, the clients' read timeout in airflow_env; a slow fault answers later


def fault_mix(share: float = 0.2, operations: dict[str, str] | None = None, slow_count: int = 2) -> list[dict]:
    """Faults of every kind on both APIs, ``share`` of the calls in all, most of them *after* the change.

    ``operations`` narrows a service to one operation (e.g. ``{"mirakl": "OR28"}``). The slow
    fault (applied, answered after the client's timeout) is capped at ``slow_count`` calls
    because each one costs a timeout of wall time.
    """
    kinds = [("status", 0.15), ("drop", 0.15), ("apply_then_status", 0.3), ("apply_then_drop", 0.3), ("malformed", 0.1)]
    rules: list[dict] = []
    for service in ("mirakl", "woo"):
        operation = (operations or {}).get(service, "*")
        for kind, weight in kinds:
            rules.append({"service": service, "operation": operation, "kind": kind,
                          "status": 503 if kind == "status" else 500, "probability": share * weight})
        rules.append({"service": service, "operation": operation, "kind": "apply_then_slow",
                      "delay": CLIENT_TIMEOUT + 1, "probability": share * 0.05, "count": slow_count})
    return rules


def fault_kinds_seen(sandbox) -> set[str]:
    return {e["fault"] for e in sandbox.log.entries() if e["fault"]}


@pytest.fixture
def blind_write_retry(monkeypatch):
    """The clients retry every write as if it were safe to repeat (the bug the fault tests must catch)."""
    from include.woo_mirakl.clients.http import HttpClient

    real_request = HttpClient.request

    def blind(self, method, path, operation, **kwargs):
        kwargs["idempotent"] = True
        return real_request(self, method, path, operation, **kwargs)

    monkeypatch.setattr(HttpClient, "request", blind)


def assert_within_ceilings(sandbox) -> dict[tuple[str, str | None], list]:
    """No Mirakl call in the sandbox's log broke the spec or a published ceiling; returns the calls
    by (operation, variant) (OF52's full and differential exports have ceilings of their own)."""
    from collections import defaultdict
    from datetime import datetime

    from include.woo_mirakl.budgets import default_limits

    limits = default_limits()
    calls: dict[tuple[str, str | None], list[datetime]] = defaultdict(list)
    for entry in sandbox.log.entries("mirakl"):
        assert entry["violations"] == [], entry
        calls[(entry["operation"], entry.get("variant"))].append(
            datetime.fromisoformat(entry["at"].replace("Z", "+00:00")))
    for (operation, variant), times in calls.items():
        for max_calls, window in limits.windows(operation, variant):
            for i, start in enumerate(times):
                inside = [t for t in times[i:] if (t - start).total_seconds() < window]
                assert len(inside) <= max_calls, (operation, max_calls, window, inside)
    return calls


def advance(sandbox, ledger, seconds: float) -> None:
    """Let simulated time pass for both the sandbox and the call budgets in the ledger."""
    sandbox.clock.advance(seconds)
    ledger.shift_call_times(-seconds)


# ---- alert sinks (issue #8): a real SMTP server and a local stand-in for the Slack webhook ----

@pytest.fixture(scope="module")
def mail_sink():
    sink = MailSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def slack_sink():
    sink = SlackSink()
    yield sink
    sink.stop()


@pytest.fixture(scope="module")
def alert_env(mail_sink, slack_sink, airflow_env):
    """The smtp_alerts and slack_alerts connections and the alert address, pointing at the sinks."""
    values = {
        "AIRFLOW_CONN_SMTP_ALERTS": json.dumps({
            "conn_type": "smtp", "host": "127.0.0.1", "port": mail_sink.port,
            "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@localhost",
                      "retry_limit": 0, "timeout": 5},
        }),
        "AIRFLOW_CONN_SLACK_ALERTS": json.dumps({"conn_type": "slackwebhook", "password": slack_sink.url}),
        "AIRFLOW_VAR_WOO_MIRAKL_ALERT_EMAIL": "ops@example.com",
    }
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    yield values
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


NO_DEBIT = 10 * 86400  # the operator debits only when a test says so


def orders_in_shipping(sandbox, ledger, orders: list[list[tuple[str, int]]], debit: bool = True) -> list[tuple[str, int]]:
    """Place Mirakl orders and let the orders flow take them to SHIPPING (WooCommerce ``processing``).

    Returns ``(mirakl order id, WooCommerce order id)`` per order; with ``debit`` False they stay
    accepted and ``WAITING_DEBIT_PAYMENT`` (WooCommerce ``on-hold``).
    """
    from include.sandbox.scenarios import customer

    with sandbox.lock:
        ids = [
            sandbox.mirakl.place_order(lines=[{"offer_sku": sku, "quantity": qty} for sku, qty in lines],
                                       customer=customer(index), debit_delay_s=NO_DEBIT)["order_id"]
            for index, lines in enumerate(orders)
        ]
    advance(sandbox, ledger, 61)
    assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    if debit:
        with sandbox.lock:
            for order_id in ids:
                sandbox.mirakl.debit(order_id)
        advance(sandbox, ledger, 61)
        assert run_dag("mirakl_order_ingest__sandbox").state == "success"
    found = [(order_id, ledger.get_order("sandbox", order_id).woo_order_id) for order_id in ids]
    assert all(woo_id for _, woo_id in found), found
    return found
