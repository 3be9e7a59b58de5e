"""The Astro settings file converts and applies to a plain Airflow, idempotently."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from include.woo_mirakl.settings_loader import parse_settings

ROOT = Path(__file__).resolve().parents[2]


def test_project_settings_parse_with_env_expansion(monkeypatch):
    monkeypatch.setenv("SANDBOX_HOST", "127.0.0.1")
    monkeypatch.setenv("SANDBOX_MIRAKL_PORT", "9991")
    monkeypatch.setenv("SANDBOX_WOO_PORT", "9992")
    settings = parse_settings((ROOT / "airflow_settings.yaml").read_text())
    conns = {c["conn_id"]: c for c in settings.connections}
    assert conns["mirakl_sandbox"]["host"] == "http://127.0.0.1:9991"
    assert conns["mirakl_sandbox"]["type"] == "mirakl"
    assert json.loads(conns["mirakl_sandbox"]["extra"]) == {"shop_id": 2001}
    assert conns["woocommerce_default"]["login"] == "ck_sandbox"
    assert json.loads(conns["woo_mirakl_ledger"]["extra"])["sqlalchemy_url"].endswith("/var/ledger.db")
    assert {p["name"] for p in settings.pools} == {"mirakl_api", "woocommerce_api"}


def test_missing_required_fields_name_the_entry():
    with pytest.raises(ValueError, match="connection 'x'"):
        parse_settings("airflow:\n  connections:\n    - conn_id: x\n")
    with pytest.raises(ValueError, match="pool_name and pool_slot"):
        parse_settings("airflow:\n  pools:\n    - pool_name: p\n")


def test_loader_applies_twice_without_duplicates(airflow_db, monkeypatch):
    monkeypatch.setenv("SANDBOX_HOST", "127.0.0.1")
    monkeypatch.setenv("SANDBOX_MIRAKL_PORT", "9991")
    monkeypatch.setenv("SANDBOX_WOO_PORT", "9992")
    airflow = str(Path(sys.executable).with_name("airflow"))
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "include.woo_mirakl.settings_loader",
                               str(ROOT / "airflow_settings.yaml")], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 0, done.stderr[-2000:]
    pools = subprocess.run([airflow, "pools", "list", "-o", "json"], capture_output=True, text=True)
    assert pools.returncode == 0, pools.stderr[-2000:]
    slots = {p["pool"]: int(p["slots"]) for p in json.loads(pools.stdout)}
    assert slots["mirakl_api"] == 2 and slots["woocommerce_api"] == 4
    conns = subprocess.run([airflow, "connections", "list", "-o", "json"], capture_output=True, text=True)
    ids = [c["conn_id"] for c in json.loads(conns.stdout)]
    assert ids.count("mirakl_sandbox") == 1 and ids.count("woocommerce_default") == 1
    assert "sandbox-mirakl-key" not in conns.stdout  # listing never shows the password
