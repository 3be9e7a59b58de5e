"""The shared OAuth token of each Mirakl connection, in the ledger, under a row lock.

Workers renew a token one at a time: the row is locked (``SELECT … FOR UPDATE`` on PostgreSQL,
SQLite's write lock taken by ``BEGIN IMMEDIATE``) while one of them asks the authentication
system, and the others then read the token it stored. The row holds the access token only,
encrypted with Airflow's Fernet key (the one that encrypts connection passwords and extras), next to
its expiry and a fingerprint of the refresh token it came from; the refresh token itself lives in
the Airflow connection. (Rows written before then may still carry one, sealed: it is used for the
next renewal, whose rotated successor goes to the connection, and is dropped with that save.)

The table has its own metadata and is created on first use, so it does not touch the ledger's
schema versions.
"""
from __future__ import annotations

import datetime as dt
import json
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from sqlalchemy import Column, Integer, MetaData, String, Table, Text, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from include.woo_mirakl.clients.oauth import Token
from include.woo_mirakl.ledger.models import UTCDateTime

UTC = dt.timezone.utc
metadata = MetaData()
oauth_tokens = Table(
    "oauth_tokens", metadata,
    Column("key", String(200), primary_key=True),
    Column("sealed", Text, nullable=True),  # Fernet ciphertext of the access token
    Column("expires_at", UTCDateTime(), nullable=True),
    Column("origin", String(64), nullable=True),
    Column("status", String(32), nullable=False, default="none"),
    Column("reason", Text, nullable=True),
    Column("renewals", Integer, nullable=False, default=0),
    Column("updated_at", UTCDateTime(), nullable=True),
)


class TokenEncryptionUnavailable(RuntimeError):
    """Airflow has no Fernet key, so a token could only be stored in clear: refused."""


def _fernet() -> Any:
    from airflow.models.crypto import get_fernet

    fernet = get_fernet()
    if not getattr(fernet, "is_encrypted", False):
        raise TokenEncryptionUnavailable(
            "OAuth tokens are kept only encrypted: set Airflow's [core] fernet_key (AIRFLOW__CORE__FERNET_KEY), "
            "the key that also encrypts connection passwords"
        )
    return fernet


@dataclass
class _LedgerSlot:
    """The locked row as the token provider sees it."""

    token: Token | None
    origin: str | None
    status: str
    reason: str | None
    changes: dict[str, Any]

    def save(self, token: Token, origin: str) -> None:
        self.token, self.origin, self.status, self.reason = token.without_refresh(), origin, "ok", None
        sealed = _fernet().encrypt(json.dumps(token.shared_part()).encode()).decode()
        self.changes = {"sealed": sealed, "expires_at": token.expires_at, "origin": origin, "status": "ok",
                        "reason": None, "renew": True}

    def expire(self) -> None:
        if self.token is not None:
            self.changes.setdefault("expires_at", dt.datetime.now(UTC) - dt.timedelta(seconds=1))

    def needs_reconnect(self, reason: str, origin: str) -> None:
        # the refused credentials now own the row: a worker with the right ones fetches anew
        self.status, self.reason, self.origin = "reconnect_required", reason, origin
        self.changes.update(status="reconnect_required", reason=reason, origin=origin)


class LedgerTokenStore:
    """A :class:`~include.woo_mirakl.clients.oauth.TokenStore` in the ledger's database."""

    def __init__(self, ledger: Any):
        self.ledger = ledger
        self._insert = postgresql.insert if ledger.dialect == "postgresql" else sqlite.insert
        self._ensure_table()

    def _ensure_table(self) -> None:
        try:
            with self.ledger.session() as s, s.begin():
                oauth_tokens.create(s.connection(), checkfirst=True)
        except DBAPIError:
            # another process created it between our check and our CREATE
            with self.ledger.session(write=False) as s, s.begin():
                s.execute(select(oauth_tokens.c.key).limit(1))

    @contextmanager
    def locked(self, key: str) -> Iterator[_LedgerSlot]:
        with self.ledger.session() as s, s.begin():
            conn = s.connection()
            conn.execute(self._insert(oauth_tokens).values(key=key, status="none", renewals=0)
                         .on_conflict_do_nothing(index_elements=["key"]))
            row = conn.execute(select(oauth_tokens).where(oauth_tokens.c.key == key).with_for_update()).mappings().one()
            token = None
            if row["sealed"]:
                secret = json.loads(_fernet().decrypt(row["sealed"].encode()))
                token = Token(secret["access_token"], row["expires_at"], secret.get("refresh_token"), secret.get("scope"))
            slot = _LedgerSlot(token, row["origin"], row["status"], row["reason"], {})
            yield slot
            if slot.changes:
                values = {k: v for k, v in slot.changes.items() if k != "renew"}
                if slot.changes.get("renew"):
                    values["renewals"] = oauth_tokens.c.renewals + 1
                values["updated_at"] = dt.datetime.now(UTC)
                conn.execute(update(oauth_tokens).where(oauth_tokens.c.key == key).values(**values))

    def peek(self, key: str) -> dict[str, Any] | None:
        """Expiry, state and renewal count of a key's token (never the token)."""
        with self.ledger.session(write=False) as s, s.begin():
            row = s.execute(
                select(oauth_tokens.c.expires_at, oauth_tokens.c.status, oauth_tokens.c.reason,
                       oauth_tokens.c.renewals, oauth_tokens.c.updated_at).where(oauth_tokens.c.key == key)
            ).mappings().one_or_none()
        return dict(row) if row else None

    def forget(self, key: str) -> None:
        """Drop a key's token (after a disconnect or a new consent)."""
        with self.ledger.session() as s, s.begin():
            s.execute(oauth_tokens.delete().where(oauth_tokens.c.key == key))
