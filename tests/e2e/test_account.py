"""The account flow end to end: dag.test() runs of mirakl_account__sandbox against the sandbox."""
from __future__ import annotations

import json
import os

import pytest

from tests.e2e.conftest import advance, run_dag

DAG_ID = "mirakl_account__sandbox"
MARKETPLACE = "sandbox"
SKUS = [f"ACC-{i}" for i in range(1, 6)]


@pytest.fixture(scope="module", autouse=True)
def catalogue(sandbox, airflow_env):
    """Five products in WooCommerce (one variable, with two variations) and their five offers on Mirakl."""
    sandbox.woo.settings["shipment_tracking_installed"] = True  # this store has the extension
    sandbox.woo.add_simple_product("ACC-1", "10.00", 5)
    sandbox.woo.add_simple_product("ACC-2", "12.00", 0)
    sandbox.woo.add_simple_product("ACC-3", "8.00", 9)
    sandbox.woo.add_variable_product("Shirt", [
        {"sku": "ACC-4", "price": "20.00", "stock_quantity": 3, "attributes": [{"name": "Size", "option": "S"}]},
        {"sku": "ACC-5", "price": "20.00", "stock_quantity": 4, "attributes": [{"name": "Size", "option": "M"}]},
    ])
    with sandbox.lock:
        for quantity, sku in zip((5, 0, 9, 3, 4), SKUS):
            sandbox.mirakl.add_offer(sku, 10.0, quantity)


def last_verify(ledger) -> dict:
    return ledger.get_cursor("mirakl_account", MARKETPLACE, "last_verify")


def checks(ledger) -> dict[str, dict]:
    return {c["key"]: c for c in last_verify(ledger)["checks"]}


def connection(monkeypatch, name: str, **changes) -> None:
    """Change fields of a connection (``extra`` is merged) for one test."""
    value = json.loads(os.environ[name])
    extra = {**value.get("extra", {}), **changes.pop("extra", {})}
    monkeypatch.setenv(name, json.dumps({**value, **changes, "extra": extra}))


def task_states(run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in run.get_task_instances()}


def flows_paused() -> dict[str, bool]:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        return {d.dag_id: d.is_paused for d in session.scalars(select(DagModel))
                if d.dag_id.endswith(f"__{MARKETPLACE}") and not d.dag_id.startswith("mirakl_account")}


def unpause_flows() -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import update

    with create_session() as session:
        session.execute(update(DagModel).where(DagModel.dag_id.like(f"%__{MARKETPLACE}"))
                        .values(is_paused=False))


def xcom(run, task_id: str, key: str = "return_value"):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(XComModel).where(
            XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id, XComModel.task_id == task_id,
            XComModel.key == key)).one()
        return XComModel.deserialize_value(row)


def live_quantities(sandbox) -> dict[str, int]:
    with sandbox.lock:
        return {o["shop_sku"]: o["quantity"] for o in sandbox.mirakl.offers()}


# ---- verify -------------------------------------------------------------------------------------

def test_verify_good_setup_shows_the_shop(sandbox, ledger):
    run = run_dag(DAG_ID, {"action": "verify"})
    assert run.state == "success", task_states(run)
    found = checks(ledger)
    assert last_verify(ledger)["ok"] is True
    assert found["mirakl.shop"]["status"] == "ok"
    assert "'Sandbox Shop' (id 2001), currency EUR, state OPEN" in found["mirakl.shop"]["message"]
    assert found["woo.write"]["status"] == "ok"
    assert found["woo.version"]["details"]["version"] == sandbox.woo.version
    assert found["woo.skus"]["details"] == {"items": 6, "duplicates": 0, "without_sku": 0}
    assert found["woo.tracking"]["status"] == "ok"
    assert task_states(run)["plan_disconnect"] == "skipped"
    assert sandbox.log.count("mirakl", "A01") == 1
    summary = json.dumps(last_verify(ledger))
    assert sandbox.mirakl.api_key not in summary and sandbox.woo.consumer_secret not in summary


def test_second_verify_the_same_day_reuses_the_stored_a01_answer(sandbox, ledger):
    run = run_dag(DAG_ID, {"action": "verify"})
    assert run.state == "success", task_states(run)
    assert sandbox.log.count("mirakl", "A01") == 1  # A01 is once a day: not called again
    shop = checks(ledger)["mirakl.shop"]
    assert shop["status"] == "ok" and shop["details"]["from_ledger"] is True
    assert "from the last A01 answer" in shop["message"] and "once a day" in shop["message"]


def test_wrong_api_key_is_named(monkeypatch, ledger):
    connection(monkeypatch, "AIRFLOW_CONN_MIRAKL_SANDBOX", password="not-the-key")
    run = run_dag(DAG_ID, {"action": "verify"})
    assert run.state == "failed"
    found = checks(ledger)
    assert found["mirakl.host"]["status"] == "ok"
    assert found["mirakl.key"]["status"] == "failed" and "API key was refused (HTTP 401)" in found["mirakl.key"]["message"]
    assert found["mirakl.shop"]["status"] == "skipped"
    assert "not-the-key" not in json.dumps(last_verify(ledger))


def test_unreachable_host_is_named(monkeypatch, ledger):
    import socket

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    connection(monkeypatch, "AIRFLOW_CONN_MIRAKL_SANDBOX", host=f"http://127.0.0.1:{port}")
    run = run_dag(DAG_ID, {"action": "verify"})
    assert run.state == "failed"
    host = checks(ledger)["mirakl.host"]
    assert host["status"] == "failed" and "does not answer (connection refused)" in host["message"]


def test_unresolvable_host_is_named(monkeypatch, ledger):
    connection(monkeypatch, "AIRFLOW_CONN_MIRAKL_SANDBOX", host="no-such-instance.invalid")
    run = run_dag(DAG_ID, {"action": "verify"})
    assert run.state == "failed"
    assert "'no-such-instance.invalid' does not resolve" in checks(ledger)["mirakl.host"]["message"]


def test_shop_id_mismatch_is_named(monkeypatch, ledger):
    connection(monkeypatch, "AIRFLOW_CONN_MIRAKL_SANDBOX", extra={"shop_id": "9999"})
    run = run_dag(DAG_ID, {"action": "verify"})
    assert run.state == "failed"
    found = checks(ledger)
    assert found["mirakl.key"]["status"] == "ok"
    assert found["mirakl.shop"]["status"] == "failed"
    assert "shop id mismatch: the API key has no access to shop 9999" in found["mirakl.shop"]["message"]


def test_read_only_woocommerce_key_is_named(sandbox, ledger):
    sandbox.woo.settings["key_permissions"] = "read"
    try:
        run = run_dag(DAG_ID, {"action": "verify"})
    finally:
        sandbox.woo.settings["key_permissions"] = "read_write"
    assert run.state == "failed"
    found = checks(ledger)
    assert found["woo.read"]["status"] == "ok"
    assert found["woo.write"]["status"] == "failed" and "keys are read-only" in found["woo.write"]["message"]
    assert last_verify(ledger)["failed"] == ["woo.write"]


def test_missing_shipment_tracking_is_a_warning(sandbox, ledger):
    sandbox.woo.settings["shipment_tracking_installed"] = False
    try:
        run = run_dag(DAG_ID, {"action": "verify"})
    finally:
        sandbox.woo.settings["shipment_tracking_installed"] = True
    assert run.state == "success"
    tracking = checks(ledger)["woo.tracking"]
    assert tracking["status"] == "warning" and tracking["message"].startswith("not installed")


# ---- disconnect ---------------------------------------------------------------------------------

@pytest.mark.parametrize("confirmation", [None, "disconnect"])
def test_disconnect_without_the_exact_confirmation_is_refused_before_any_call(sandbox, ledger, confirmation,
                                                                             alert_env, mail_sink, slack_sink):
    before = sandbox.log.count("mirakl")
    mail_sink.messages.clear()
    slack_sink.payloads.clear()
    conf = {"action": "disconnect", "offers_policy": "remove", "dry_run": False}
    if confirmation is not None:
        conf["confirmation"] = confirmation
    run = run_dag(DAG_ID, conf)
    assert run.state == "failed"
    assert task_states(run)["plan_disconnect"] == "failed"
    assert sandbox.log.count("mirakl") == before
    assert ledger.get_cursor("mirakl_account", MARKETPLACE, "connection") is None
    # The user's typo: the run says why, and nothing reaches on-call.
    assert [e for e in ledger.open_exceptions(MARKETPLACE) if e.kind == "task_failure"] == []
    assert mail_sink.messages == [] and slack_sink.payloads == []


def test_dry_run_reports_and_changes_nothing(sandbox, ledger):
    unpause_flows()
    ledger.upsert_order(MARKETPLACE, "ACC-ORDER-1", mirakl_state="SHIPPING", woo_order_id=500)
    before_offers, before_calls = live_quantities(sandbox), sandbox.log.count("mirakl")
    run = run_dag(DAG_ID, {"action": "disconnect", "offers_policy": "zero"})  # dry_run defaults to on
    assert run.state == "success", task_states(run)
    assert task_states(run)["disconnect"] == "skipped"
    report = xcom(run, "plan_disconnect")
    assert report["dry_run"] is True and report["open_orders"] == ["ACC-ORDER-1"]
    assert report["counts"]["offers"] == 5 and report["counts"]["offers_in_stock"] == 4
    assert "set the stock of all 5 offers to 0 (4 have stock now) with one STO01 stock file" in report["plan"][0]
    assert any("WARNING: 1 order(s) still in progress" in line for line in report["plan"])
    assert sorted(report["flows"]) == sorted(flows_paused())
    assert live_quantities(sandbox) == before_offers
    writes = [e for e in sandbox.log.entries("mirakl")[before_calls:] if e["method"] != "GET"]
    assert writes == []
    assert flows_paused() and not any(flows_paused().values())
    assert ledger.get_cursor("mirakl_account", MARKETPLACE, "connection") is None


def test_zero_sets_every_offer_to_zero_with_one_stock_file_and_pauses_the_flows(sandbox, ledger):
    unpause_flows()
    advance(sandbox, ledger, 61)
    run = run_dag(DAG_ID, {"action": "disconnect", "offers_policy": "zero", "confirmation": "Disconnect",
                           "dry_run": False})
    assert run.state == "success", task_states(run)
    assert sandbox.log.count("mirakl", "STO01") == 1
    assert live_quantities(sandbox) == {sku: 0 for sku in SKUS}
    paused = flows_paused()
    assert paused and all(paused.values()), paused
    state = ledger.get_cursor("mirakl_account", MARKETPLACE, "connection")
    assert state["status"] == "disconnected" and sorted(state["paused_flows"]) == sorted(paused)


def test_rerunning_zero_sends_nothing_twice(sandbox, ledger):
    calls = sandbox.log.count("mirakl")
    run = run_dag(DAG_ID, {"action": "disconnect", "offers_policy": "zero", "confirmation": "Disconnect",
                           "dry_run": False})
    assert run.state == "success", task_states(run)
    new = sandbox.log.entries("mirakl")[calls:]
    assert [e["operation"] for e in new if e["method"] != "GET"] == []
    assert sandbox.log.count("mirakl", "STO02") == 1  # the earlier import's result comes from the ledger


def test_remove_deletes_every_offer_and_a_rerun_sends_nothing_twice(sandbox, ledger):
    advance(sandbox, ledger, 61)
    conf = {"action": "disconnect", "offers_policy": "remove", "confirmation": "Disconnect", "dry_run": False}
    run = run_dag(DAG_ID, conf)
    assert run.state == "success", task_states(run)
    assert live_quantities(sandbox) == {}
    assert sandbox.log.count("mirakl", "OF24") == 1
    advance(sandbox, ledger, 61)
    run = run_dag(DAG_ID, conf)
    assert run.state == "success", task_states(run)
    assert sandbox.log.count("mirakl", "OF24") == 1


def test_reconnect_verifies_then_resumes_the_paused_flows(sandbox, ledger):
    paused_by_disconnect = ledger.get_cursor("mirakl_account", MARKETPLACE, "connection")["paused_flows"]
    run = run_dag(DAG_ID, {"action": "reconnect"})
    assert run.state == "success", task_states(run)
    paused = flows_paused()
    assert paused_by_disconnect and not any(paused[d] for d in paused_by_disconnect)
    state = ledger.get_cursor("mirakl_account", MARKETPLACE, "connection")
    assert (state["status"], state["generation"]) == ("connected", 2)
    assert ledger.get_cursor("mirakl_account", MARKETPLACE, "full_comparison_requested")["generation"] == 2


# ---- uncertain writes: applying the policy straight from the library ----------------------------

@pytest.fixture
def direct_client(sandbox):
    from include.woo_mirakl.clients.http import RetryPolicy
    from include.woo_mirakl.clients.mirakl import MiraklClient

    return MiraklClient(sandbox.mirakl_url, sandbox.mirakl.api_key, shop_id=sandbox.mirakl.shop_id,
                        retry=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))


def fresh_offers(sandbox, prefix: str) -> list:
    from include.woo_mirakl.account import OfferRef

    with sandbox.lock:
        for i in range(3):
            sandbox.mirakl.add_offer(f"{prefix}-{i}", 10.0, 4)
    return [OfferRef(f"{prefix}-{i}", 4, "10.0", "11", f"{prefix}-{i}", "SHOP_SKU") for i in range(3)]


def test_a_delete_whose_answer_was_lost_is_not_sent_again(sandbox, ledger, direct_client):
    """OF24 landed but its answer was cut: the re-run finds the offers gone and completes the action."""
    from include.woo_mirakl.account import apply_offers_policy, plan_disconnect
    from include.woo_mirakl.clients.http import UncertainWriteError

    plan = plan_disconnect("acc_lost", "remove", fresh_offers(sandbox, "LOST"), [], [])
    sent_before = sandbox.log.count("mirakl", "OF24")
    sandbox.faults.set([{"service": "mirakl", "operation": "OF24", "kind": "malformed", "count": 1}])
    try:
        with pytest.raises(UncertainWriteError):
            apply_offers_policy(plan, direct_client, ledger, import_wait=0)
    finally:
        sandbox.faults.clear()
    assert ledger.get_action("mirakl_account:acc_lost:g1:remove:delete:1of1").state == "uncertain"
    outcome = apply_offers_policy(plan, direct_client, ledger, import_wait=0)
    assert sandbox.log.count("mirakl", "OF24") == sent_before + 1
    assert outcome.sent == [] and outcome.failures == []
    assert ledger.get_action("mirakl_account:acc_lost:g1:remove:delete:1of1").state == "done"
    assert not any(sku.startswith("LOST-") for sku in live_quantities(sandbox))


def test_a_stock_file_that_never_arrived_is_sent_on_the_rerun(sandbox, ledger, direct_client):
    """STO01's connection dropped before Mirakl read it: the re-run sees no effect and sends it (once)."""
    from include.woo_mirakl.account import apply_offers_policy, plan_disconnect
    from include.woo_mirakl.clients.http import UncertainWriteError

    plan = plan_disconnect("acc_drop", "zero", fresh_offers(sandbox, "DROP"), [], [])
    applied_before = sandbox.log.count("mirakl", "STO01", ok_only=True)
    sandbox.faults.set([{"service": "mirakl", "operation": "STO01", "kind": "drop", "count": 1}])
    try:
        with pytest.raises(UncertainWriteError):
            apply_offers_policy(plan, direct_client, ledger, first_poll_after=2.5)
    finally:
        sandbox.faults.clear()
    outcome = apply_offers_policy(plan, direct_client, ledger, first_poll_after=2.5)
    assert len(outcome.sent) == 1 and outcome.failures == []
    assert outcome.imports[0]["status"] == "COMPLETE" and outcome.imports[0]["lines_in_success"] == 3
    assert sandbox.log.count("mirakl", "STO01", ok_only=True) == applied_before + 1
    assert {sku: q for sku, q in live_quantities(sandbox).items() if sku.startswith("DROP-")} == {
        "DROP-0": 0, "DROP-1": 0, "DROP-2": 0}
    again = apply_offers_policy(plan, direct_client, ledger)
    assert again.already_done == outcome.sent and again.sent == []
    assert sandbox.log.count("mirakl", "STO01", ok_only=True) == applied_before + 1
