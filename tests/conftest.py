"""Test-wide setup: an Airflow home of the tests' own, and shared fixtures.

The environment is set before anything imports Airflow, so every test (and every
subprocess a test starts) sees the project's DAGs and no example DAGs.
"""
from __future__ import annotations

import base64
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest
from sqlalchemy import URL

ROOT = Path(__file__).resolve().parents[1]
_HOME = Path(tempfile.mkdtemp(prefix="woo-mirakl-airflow-"))

os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(ROOT / "dags")
os.environ["AIRFLOW__CORE__PLUGINS_FOLDER"] = str(ROOT / "plugins")
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__TEST_CONNECTION"] = "Enabled"
os.environ["AIRFLOW__LOGGING__LOGGING_LEVEL"] = "WARNING"
os.environ["WOO_MIRAKL_HOME"] = str(ROOT)
# As in production: connection secrets and the shared OAuth tokens are stored encrypted.
os.environ.setdefault("AIRFLOW__CORE__FERNET_KEY", base64.urlsafe_b64encode(os.urandom(32)).decode())
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated Airflow metadata database (SQLite) for dag.test() runs."""
    airflow = Path(sys.executable).with_name("airflow")
    result = subprocess.run([str(airflow), "db", "migrate"], capture_output=True, text=True, env=os.environ.copy())
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return _HOME


PG = {"host": "127.0.0.1", "port": 5432, "user": "postgres"}


@pytest.fixture(scope="module")
def pg_ledger_url():
    """A factory of empty ledgers in one throw-away PostgreSQL database, dropped at the end.

    Each ledger is its own schema (via search_path): far cheaper than a database per test.
    """
    from include.woo_mirakl.ledger import dispose_engines

    try:
        admin = psycopg2.connect(dbname="postgres", connect_timeout=3, **PG)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG['host']}:{PG['port']} is unreachable ({str(exc).strip()}); CI starts it")
    admin.autocommit = True
    database = f"ledger_test_{secrets.token_hex(6)}"
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}"')
    base = URL.create("postgresql+psycopg2", username=PG["user"], host=PG["host"], port=PG["port"], database=database)

    def new_ledger_url() -> URL:
        schema = f"ledger_{secrets.token_hex(6)}"
        with psycopg2.connect(dbname=database, **PG) as conn, conn.cursor() as cur:
            cur.execute(f'CREATE SCHEMA "{schema}"')
        conn.close()
        return base.set(query={"options": f"-csearch_path={schema}"})

    yield new_ledger_url
    dispose_engines()
    with admin.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    admin.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request, tmp_path):
    """A fresh, empty ledger database (no schema yet) on each backend."""
    from include.woo_mirakl.ledger import dispose_engines

    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/ledger.db"
    else:
        yield request.getfixturevalue("pg_ledger_url")().render_as_string(hide_password=False)
    dispose_engines()
