"""The Airflow user and ``airflow_api`` connection the flows reach Airflow's REST API with.

Tasks on Airflow 3 workers may not use the metadata database, so the account flow lists and pauses
DAGs, and the token renewal saves the refresh token Mirakl rotates into the Mirakl connection,
through the REST API as a user of its own (role ``op``: may edit DAGs and connections, not users
or the auth manager's settings; ``user`` could not save the rotated token). For the
SimpleAuthManager setups (``make airflow``, the compose file) this adds that user's password to the
passwords file, keeping the others, and writes the connection into the metadata database:

    python -m include.woo_mirakl.flows_api_user --api-url http://localhost:8080

The user must also be listed in ``[core] simple_auth_manager_users`` (``woo_mirakl_flows:op``).
"""
from __future__ import annotations

import argparse
import json
import secrets
from pathlib import Path

USERNAME = "woo_mirakl_flows"
ROLE = "op"
CONN_ID = "airflow_api"


def ensure_password(passwords_file: Path, username: str = USERNAME) -> str:
    """The user's password from the file, generated and added when missing; other users are kept."""
    passwords = json.loads(passwords_file.read_text() or "{}") if passwords_file.exists() else {}
    if not passwords.get(username):
        passwords[username] = secrets.token_urlsafe(24)
        passwords_file.parent.mkdir(parents=True, exist_ok=True)
        passwords_file.write_text(json.dumps(passwords) + "\n")
        passwords_file.chmod(0o600)
    return passwords[username]


def write_connection(api_url: str, password: str, username: str = USERNAME) -> None:
    """Create or replace the ``airflow_api`` connection in Airflow's metadata database."""
    from airflow.models import Connection
    from airflow.utils.session import create_session
    from sqlalchemy import delete

    with create_session() as session:
        session.execute(delete(Connection).where(Connection.conn_id == CONN_ID))
        session.add(Connection(conn_id=CONN_ID, conn_type="http", host=api_url.rstrip("/"), login=username,
                               password=password, description="Used by the flows to pause DAGs and save rotated Mirakl refresh tokens"))


def main(argv: list[str] | None = None) -> None:
    from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api-url", required=True, help="the API server as the workers reach it")
    args = parser.parse_args(argv)
    password = ensure_password(Path(SimpleAuthManager.get_generated_password_file()))
    write_connection(args.api_url, password)
    print(f"connection {CONN_ID!r}: {args.api_url} as {USERNAME!r} (password in the auth manager's file)")


if __name__ == "__main__":
    main()
