"""`make demo` end to end: `python -m include.demo` with the project's own airflow_settings.yaml,
as the Makefile runs it, in a scratch home.

The connections come from airflow_settings.yaml (as `make settings` would load them), handed to
the demo as AIRFLOW_CONN_* variables; only the ports differ, free ones rather than the fixed demo
ports another process on the machine may hold. The demo must end green, with a backfill of three
reconciliation days whose reports all hold Mirakl transaction lines and whose chart shows the three.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest

from tests.browser.standalone import free_port

ROOT = Path(__file__).resolve().parents[2]
MP = "sandbox"

pytestmark = pytest.mark.slow


def demo_environment(home: Path) -> dict[str, str]:
    from include.woo_mirakl.settings_loader import parse_settings

    ports = {"SANDBOX_HOST": "127.0.0.1", "SANDBOX_MIRAKL_PORT": str(free_port()),
             "SANDBOX_WOO_PORT": str(free_port()), "WOO_MIRAKL_HOME": str(home)}
    env = {**os.environ, **ports}
    env.pop("WOO_MIRAKL_REPORTS_DIR", None)  # the reports go under WOO_MIRAKL_HOME, as with `make demo`
    saved = {k: os.environ.get(k) for k in ports}
    os.environ.update(ports)  # parse_settings expands ${VAR} from the environment
    try:
        settings = parse_settings((ROOT / "airflow_settings.yaml").read_text(encoding="utf-8"))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    for conn in settings.connections:
        if conn["conn_id"] == "smtp_alerts":
            conn["port"] = free_port()
        if conn["conn_id"] == "slack_alerts":
            conn["password"] = re.sub(r":\d+/", f":{free_port()}/", conn["password"])
        body = {"conn_type": conn["type"], "host": conn["host"], "login": conn["login"],
                "password": conn["password"], "schema": conn["schema"], "port": conn["port"],
                "extra": json.loads(conn["extra"]) if conn["extra"] else None}
        env[f"AIRFLOW_CONN_{conn['conn_id'].upper()}"] = json.dumps({k: v for k, v in body.items() if v is not None})
    for variable in settings.variables:
        env[f"AIRFLOW_VAR_{variable['key'].upper()}"] = variable["value"]
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory, airflow_db) -> tuple[subprocess.CompletedProcess, Path]:
    home = tmp_path_factory.mktemp("demo-home")
    (home / "var").mkdir()
    done = subprocess.run([sys.executable, "-m", "include.demo"], cwd=ROOT, env=demo_environment(home),
                          capture_output=True, text=True, timeout=900)
    return done, home


def summary(directory: Path) -> dict[str, str]:
    with open(directory / "summary.csv", encoding="utf-8", newline="") as fh:
        return {row["metric"]: row["value"] for row in csv.DictReader(fh)}


def test_the_demo_ends_green_with_a_backfill_of_three_reconciled_days(demo):
    done, _home = demo
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    runs = re.findall(r"▶ Reconcile (\d{4}-\d{2}-\d{2}): .*\n(?:.*\n)*?  run: (\w+)", done.stdout)
    days = [date.fromisoformat(day) for day, _state in runs]
    assert [state for _day, state in runs] == ["success"] * 3, done.stdout[-4000:]
    assert days == [days[0] + timedelta(days=n) for n in range(3)]
    for day in days:  # each day's finance e-mail reached the demo's mail server
        assert f"e-mail: [woo-mirakl] Mirakl reconciliation {MP} {day.isoformat()}" in done.stdout


def test_each_backfilled_day_has_mirakl_transactions_and_the_chart_shows_all_three(demo):
    done, home = demo
    days = re.findall(r"▶ Reconcile (\d{4}-\d{2}-\d{2})", done.stdout)
    assert len(days) == 3, done.stdout[-4000:]
    reports = home / "reports" / "reconciliation" / MP
    for day in days:
        figures = summary(reports / day)
        assert figures["date"] == day
        assert int(figures["transaction_lines"]) > 0 and int(figures["orders"]) > 0, (day, figures)
        with open(reports / day / "lines.csv", encoding="utf-8", newline="") as fh:
            lines = list(csv.DictReader(fh))
        assert len({line["order_id"] for line in lines}) == int(figures["orders"])
    chart = (reports / days[-1] / "index.html").read_text(encoding="utf-8")
    trend = chart[chart.index('id="chart-trend"'):chart.index("</svg>", chart.index('id="chart-trend"'))]
    for day in days:
        assert f"<title>{day} Sales: " in trend
