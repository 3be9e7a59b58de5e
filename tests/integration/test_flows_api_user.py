"""The account flow's REST API user and connection (``make airflow``, compose's airflow-init)."""
from __future__ import annotations

import json


def test_the_users_password_is_added_once_and_the_admins_kept(tmp_path):
    from include.woo_mirakl.flows_api_user import USERNAME, ensure_password

    file = tmp_path / "passwords.json"
    file.write_text(json.dumps({"admin": "admin-pw"}))
    first = ensure_password(file)
    assert ensure_password(file) == first and len(first) >= 24
    assert json.loads(file.read_text()) == {"admin": "admin-pw", USERNAME: first}
    assert oct(file.stat().st_mode)[-3:] == "600"


def test_the_connection_is_written_to_the_metadata_database(airflow_db):
    from airflow.models import Connection

    from include.woo_mirakl.flows_api_user import CONN_ID, USERNAME, write_connection

    write_connection("http://old:8080", "first-password")
    write_connection("http://airflow-apiserver:8080/", "second-password")
    conn = Connection.get_connection_from_secrets(CONN_ID)
    assert (conn.conn_type, conn.host, conn.login, conn.password) == (
        "http", "http://airflow-apiserver:8080", USERNAME, "second-password")


def test_compose_and_make_list_the_user_with_a_role_that_may_pause_dags_and_edit_connections():
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[2]
    compose = yaml.safe_load((root / "docker-compose.yaml").read_text())
    users = compose["x-airflow-common"]["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
    assert "woo_mirakl_flows:op" in users.split(",")
    assert "flows_api_user" in compose["services"]["airflow-init"]["command"][-1]
    assert "SIMPLE_AUTH_MANAGER_USERS := admin:admin,woo_mirakl_flows:op" in (root / "Makefile").read_text()
