"""Changing an Airflow connection's extras from a task: the REST API, else the metadata database.

Mirakl rotates refresh tokens: each renewal spends the one the connection holds and returns the
next, which must be back in the connection before anyone renews again. Airflow 3 workers may not
use the metadata database, so a worker goes through the REST API (``PATCH /api/v2/connections/{id}``)
as the ``airflow_api`` connection's user, whose role must allow editing connections (``op``). Where
the ORM is allowed (``dag.test()``, the API server's plugin) and there is no ``airflow_api``
connection, the metadata database is written directly.

A connection defined by an environment variable or a secrets backend cannot be changed from here:
:class:`ConnectionNotWritable` says so before anything is spent.
"""
from __future__ import annotations

import json
import os
from typing import Any, Protocol, Sequence

API_CONN_ID = "airflow_api"


class ConnectionNotWritable(RuntimeError):
    """The connection cannot be changed by the integration; the message says why and what to do."""


def api_session(base_url: str, username: str, password: str, timeout: float = 30.0) -> Any:
    """A ``requests`` session holding a JWT of Airflow's API server for this user."""
    import requests

    session = requests.Session()
    answer = session.post(f"{base_url.rstrip('/')}/auth/token", json={"username": username, "password": password},
                          timeout=timeout)
    if answer.status_code >= 400:
        raise RuntimeError(f"Airflow API at {base_url} refused the credentials (HTTP {answer.status_code})")
    session.headers["Authorization"] = f"Bearer {answer.json()['access_token']}"
    return session


class ExtrasWriter(Protocol):
    """Sets and removes keys of a connection's extra, keeping the others."""

    how: str

    def update_extra(self, conn_id: str, changes: dict[str, Any], remove: Sequence[str] = ()) -> None: ...


class AirflowApi:
    """A signed-in session with Airflow's API server (works from any worker)."""

    how = "Airflow REST API"

    def __init__(self, base_url: str, username: str, password: str, timeout: float = 30.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.session = api_session(self.base_url, username, password, timeout)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


class RestApiExtras(AirflowApi):
    """Through Airflow's REST API. Masked values in the answer ("***") are merged back by the API
    server from the stored connection, so sending them back keeps them."""

    def update_extra(self, conn_id: str, changes: dict[str, Any], remove: Sequence[str] = ()) -> None:
        url = f"{self.base_url}/api/v2/connections/{conn_id}"
        answer = self.session.get(url, timeout=self.timeout)
        if answer.status_code == 404:
            raise ConnectionNotWritable(f"the connection {conn_id!r} is not in Airflow's database (it may come from "
                                        "an environment variable or a secrets backend, which Airflow cannot change)")
        _raise_unless_allowed(answer)
        current = answer.json()
        extra = _changed(json.loads(current.get("extra") or "{}"), changes, remove)
        _raise_unless_allowed(self.session.patch(url, params={"update_mask": "extra"}, timeout=self.timeout, json={
            "connection_id": conn_id, "conn_type": current["conn_type"], "extra": json.dumps(extra)}))


def _raise_unless_allowed(answer: Any) -> None:
    if answer.status_code in (401, 403):
        raise ConnectionNotWritable(f"the '{API_CONN_ID}' user may not edit connections (HTTP {answer.status_code}): "
                                    "give it the op role")
    answer.raise_for_status()


def _changed(extra: dict[str, Any], changes: dict[str, Any], remove: Sequence[str]) -> dict[str, Any]:
    """The extra with ``changes`` set and ``remove`` dropped, every other key kept."""
    extra = {**extra, **changes}
    for key in remove:
        extra.pop(key, None)
    return extra


class MetadataDbExtras:
    """Through Airflow's ORM, where a task may use it (``dag.test()``, the API server)."""

    how = "Airflow metadata database"

    def update_extra(self, conn_id: str, changes: dict[str, Any], remove: Sequence[str] = ()) -> None:
        from airflow.models.connection import Connection
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            conn = session.scalar(select(Connection).where(Connection.conn_id == conn_id))
            if conn is None:
                raise ConnectionNotWritable(f"the connection {conn_id!r} is not in Airflow's database")
            conn.set_extra(json.dumps(_changed(conn.extra_dejson or {}, changes, remove)))


def defined_outside_the_database(conn_id: str) -> str | None:
    """Why the connection cannot be changed by Airflow, when it is defined by an environment variable."""
    name = f"AIRFLOW_CONN_{conn_id.upper()}"
    if os.environ.get(name):
        return (f"the connection {conn_id!r} is defined by the environment variable {name}, which Airflow cannot "
                "change: keep it in Airflow's connection list instead")
    return None


def api_credentials() -> tuple[str, str, str] | None:
    """The API server URL, user and password of the ``airflow_api`` connection, or None without one."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        conn = BaseHook.get_connection(API_CONN_ID)
    except AirflowNotFoundException:
        return None
    return conn.host or "", conn.login or "", conn.password or ""


def default_extras_writer() -> ExtrasWriter:
    """The REST API when an ``airflow_api`` connection exists, else the metadata database."""
    credentials = api_credentials()
    return RestApiExtras(*credentials) if credentials else MetadataDbExtras()


def update_extra(conn_id: str, changes: dict[str, Any], remove: Sequence[str] = (),
                 writer: ExtrasWriter | None = None) -> str:
    """Change the connection's extra; returns how. Raises :class:`ConnectionNotWritable` with the reason."""
    problem = defined_outside_the_database(conn_id)
    if problem:
        raise ConnectionNotWritable(problem)
    writer = writer or default_extras_writer()
    try:
        writer.update_extra(conn_id, changes, remove)
    except RuntimeError as error:
        if "ORM is not allowed" in str(error):
            raise ConnectionNotWritable(
                f"there is no '{API_CONN_ID}' connection and tasks on Airflow 3 workers may not use Airflow's "
                f"metadata database (add the '{API_CONN_ID}' connection: `make airflow` and the compose file "
                "create one)") from None
        raise
    return writer.how
