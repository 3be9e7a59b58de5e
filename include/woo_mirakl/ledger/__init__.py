"""The ledger: the integration's own state and audit trail (orders, actions, offers, exceptions, budgets)."""
from __future__ import annotations

from include.woo_mirakl.ledger.db import (
    SCHEMA_VERSION,
    LedgerError,
    LedgerUnavailableError,
    dispose_engines,
    ensure_schema,
    ledger_url_from_connection,
    safe_url,
)
from include.woo_mirakl.ledger.repository import (
    DEFAULT_CONN_ID,
    ActionConflictError,
    ActionRecord,
    ExceptionRecord,
    Ledger,
    NotFoundError,
    OfferStateRecord,
    OrderLineRecord,
    OrderRecord,
    SyncStatus,
    canonical_json,
    get_ledger,
    request_digest,
)

__all__ = [
    "DEFAULT_CONN_ID",
    "SCHEMA_VERSION",
    "ActionConflictError",
    "ActionRecord",
    "ExceptionRecord",
    "Ledger",
    "LedgerError",
    "LedgerUnavailableError",
    "NotFoundError",
    "OfferStateRecord",
    "OrderLineRecord",
    "OrderRecord",
    "SyncStatus",
    "canonical_json",
    "dispose_engines",
    "ensure_schema",
    "get_ledger",
    "ledger_url_from_connection",
    "request_digest",
    "safe_url",
]
