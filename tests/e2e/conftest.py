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
            "extra": {"shop_id": sandbox.mirakl.shop_id, "retry_base_delay": 0.05, "timeout": 5},
        },
        "AIRFLOW_CONN_WOOCOMMERCE_DEFAULT": {
            "conn_type": "woocommerce", "host": sandbox.woo_url, "login": sandbox.woo.consumer_key,
            "password": sandbox.woo.consumer_secret, "extra": {"retry_base_delay": 0.05, "timeout": 5},
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


def run_dag(dag_id: str, conf: dict | None = None):
    """Run every task of a DAG in-process; return the finished DagRun."""
    return load_dag(dag_id).test(run_conf=conf)


def crash_before_recording(monkeypatch, action: str, why: str) -> list[str]:
    """Make the first ``complete_action`` of ``action`` (e.g. ``mirakl.OR28``) raise.

    Simulates a worker that dies after the external call succeeded but before the ledger
    recorded it; returns the list the crashed action key is appended to.
    """
    from include.woo_mirakl.ledger.repository import Ledger

    real_complete = Ledger.complete_action
    crashes: list[str] = []

    def crash_once(self, key, outcome=None):
        if f":{action}:" in key and not crashes:
            crashes.append(key)
            raise RuntimeError(why)
        return real_complete(self, key, outcome)

    monkeypatch.setattr(Ledger, "complete_action", crash_once)
    return crashes


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
