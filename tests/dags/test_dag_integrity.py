"""Every DAG imports cleanly, parses fast, and keeps the project's contract."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAGS = ROOT / "dags"
FLOWS = {
    "mirakl_order_ingest",
    "mirakl_inventory_push",
    "mirakl_shipment_confirm",
    "mirakl_refund_sync",
    "mirakl_payout_reconciliation",
    "mirakl_data_quality",
    "mirakl_account",
    "mirakl_catalogue_publish",
    "mirakl_order_review",
}
# Runs of the review flow wait for people (each for the orders it claimed): several may be open.
MANY_RUNS = {"mirakl_order_review"}
KNOWN_POOLS = {"default_pool", "mirakl_api", "woocommerce_api"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.models import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}


def test_every_dag_file_defines_dags(dagbag):
    files = {Path(d.fileloc).name for d in dagbag.dags.values()}
    assert files == {p.name for p in DAGS.glob("*.py") if not p.name.startswith("_")}


def test_dag_ids_are_flow_and_marketplace(dagbag):
    from include.woo_mirakl.config import load_marketplaces

    names = {m.name for m in load_marketplaces()}
    assert dagbag.dags, "no DAG found"
    for dag_id in dagbag.dags:
        flow, _, marketplace = dag_id.partition("__")
        assert flow in FLOWS, dag_id
        assert marketplace in names, dag_id


def test_contract(dagbag):
    for dag_id, dag in dagbag.dags.items():
        assert "woo-mirakl" in dag.tags, dag_id
        assert any(t.startswith("marketplace:") for t in dag.tags), dag_id
        assert dag.catchup is False or dag_id.startswith("mirakl_payout_reconciliation"), dag_id
        assert dag.max_active_runs == 1 or dag_id.split("__")[0] in MANY_RUNS, dag_id
        assert dag.doc_md, f"{dag_id} has no documentation"
        for task in dag.tasks:
            assert task.owner == "woo-mirakl", (dag_id, task.task_id)
            assert task.retries >= 2, (dag_id, task.task_id)
            assert task.pool in KNOWN_POOLS, (dag_id, task.task_id, task.pool)
            assert task.on_failure_callback, (dag_id, task.task_id)


AREAS = {"orders", "stock", "catalogue", "shipping", "finance", "quality", "account"}


def test_the_dag_list_explains_and_filters(dagbag):
    for dag_id, dag in dagbag.dags.items():
        flow = dag_id.split("__")[0]
        assert dag.description and "\n" not in dag.description and len(dag.description) <= 120, dag_id
        others = set(dag.tags) - {"woo-mirakl", "manual", "human-review"}
        areas = others - {t for t in dag.tags if t.startswith("marketplace:")}
        assert areas and areas <= AREAS, (dag_id, dag.tags)
        assert flow not in dag.tags, (dag_id, "the flow name repeated as a tag")
        manual = dag.schedule is None
        assert ("manual" in dag.tags) is manual and dag.description.startswith("Manual") is manual, dag_id


def test_pools_used_exist_in_settings(dagbag):
    from include.woo_mirakl.settings_loader import parse_settings

    settings = parse_settings((ROOT / "airflow_settings.yaml").read_text())
    configured = {p["name"] for p in settings.pools} | {"default_pool"}
    used = {t.pool for d in dagbag.dags.values() for t in d.tasks}
    assert used <= configured


@pytest.mark.parametrize("dag_file", sorted(p.name for p in DAGS.glob("*.py") if not p.name.startswith("_")))
def test_dag_file_parses_without_heavy_imports(dag_file):
    """Each file parses on its own without pulling in the heavy libraries the tasks use.

    The parse *time* is a figure of bench/marketplaces.py, not an assertion: a timed test fails on
    a loaded machine and proves nothing about the code.
    """
    path = DAGS / dag_file
    heavy = subprocess.run(
        [sys.executable, "-c",
         "import sys, runpy; runpy.run_path(sys.argv[1]); "
         "bad=[m for m in ('great_expectations','pandas','openapi_core','psycopg2') if m in sys.modules]; print(bad)",
         str(path)],
        capture_output=True, text=True,
    )
    assert heavy.returncode == 0, heavy.stderr[-2000:]
    assert heavy.stdout.strip().splitlines()[-1] == "[]", f"{dag_file} imports {heavy.stdout.strip()}"
