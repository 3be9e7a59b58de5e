"""Apply an Astro-CLI ``airflow_settings.yaml`` to a plain Airflow, idempotently.

``airflow connections import`` does not read the Astro format, so this loader converts
it: connections are replaced, pools and variables created or updated. Values may use
``${VAR}`` environment references (e.g. ``${WOO_MIRAKL_HOME}``) so paths and real
secrets stay out of the file.

Usage: ``python -m include.woo_mirakl.settings_loader airflow_settings.yaml``
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import yaml

_CONN_FIELDS = ("conn_type", "conn_host", "conn_login", "conn_password", "conn_schema", "conn_port")


@dataclass(frozen=True)
class Settings:
    """The three sections of the file, converted to plain values."""

    connections: list[dict[str, Any]]
    pools: list[dict[str, Any]]
    variables: list[dict[str, Any]]


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expandvars(value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


def parse_settings(text: str) -> Settings:
    """Validate and convert the Astro settings format; errors name the entry at fault."""
    data = yaml.safe_load(text) or {}
    section = _expand(data.get("airflow") or {})
    connections = []
    for entry in section.get("connections") or []:
        conn_id = entry.get("conn_id")
        if not conn_id or not (entry.get("conn_type") or entry.get("conn_uri")):
            raise ValueError(f"connection {conn_id!r}: conn_id and conn_type (or conn_uri) are required")
        extra = entry.get("conn_extra")
        if isinstance(extra, str) and extra.strip():
            extra = json.loads(extra)
        conn = {"conn_id": conn_id, "uri": entry.get("conn_uri")}
        for field in _CONN_FIELDS:
            conn[field.removeprefix("conn_")] = entry.get(field)
        if conn["port"] not in (None, ""):
            conn["port"] = int(conn["port"])
        conn["extra"] = json.dumps(extra) if extra else None
        connections.append(conn)
    pools = []
    for entry in section.get("pools") or []:
        if not entry.get("pool_name") or entry.get("pool_slot") is None:
            raise ValueError(f"pool {entry!r}: pool_name and pool_slot are required")
        pools.append(
            {
                "name": entry["pool_name"],
                "slots": int(entry["pool_slot"]),
                "description": entry.get("pool_description") or "",
            }
        )
    variables = []
    for entry in section.get("variables") or []:
        if not entry.get("variable_name") or "variable_value" not in entry:
            raise ValueError(f"variable {entry!r}: variable_name and variable_value are required")
        variables.append({"key": entry["variable_name"], "value": str(entry["variable_value"])})
    return Settings(connections, pools, variables)


def apply_settings(settings: Settings) -> dict[str, int]:
    """Write the settings into Airflow's metadata database (replace, never duplicate)."""
    from airflow.models import Connection, Pool, Variable
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        for conn in settings.connections:
            session.execute(delete(Connection).where(Connection.conn_id == conn["conn_id"]))
            if conn["uri"] and not conn["type"]:
                new = Connection(conn_id=conn["conn_id"], uri=conn["uri"])
            else:
                new = Connection(
                    conn_id=conn["conn_id"],
                    conn_type=conn["type"],
                    host=conn["host"],
                    login=conn["login"],
                    password=conn["password"],
                    schema=conn["schema"],
                    port=conn["port"],
                    extra=conn["extra"],
                )
            session.add(new)
        for pool in settings.pools:
            Pool.create_or_update_pool(
                pool["name"], pool["slots"], pool["description"], include_deferred=False, session=session
            )
        for variable in settings.variables:
            Variable.set(variable["key"], variable["value"], session=session)
    return {
        "connections": len(settings.connections),
        "pools": len(settings.pools),
        "variables": len(settings.variables),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    path = argv[0] if argv else "airflow_settings.yaml"
    with open(path, encoding="utf-8") as fh:
        counts = apply_settings(parse_settings(fh.read()))
    print(
        f"settings loaded from {path}: {counts['connections']} connections, "
        f"{counts['pools']} pools, {counts['variables']} variables"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
