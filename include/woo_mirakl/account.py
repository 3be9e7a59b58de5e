"""Connect, verify and disconnect a marketplace: the logic behind ``mirakl_account__<marketplace>``.

*Verify* runs plain-worded checks against both APIs and keeps the result in the ledger.
*Disconnect* plans what happens to the shop's offers (keep, zero their stock, or remove
them), then — only for a confirmed, non-dry run — pauses the marketplace's other flows,
applies the plan through ledger actions (so a re-run never sends a write twice) and marks
the marketplace disconnected. History (orders, actions, reconciliation) is kept.
"""
from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence
from urllib.parse import urlsplit

from include.woo_mirakl.airflow_connections import API_CONN_ID, AirflowApi
from include.woo_mirakl.budgets import BudgetExceeded
from include.woo_mirakl.clients.http import (
    ApiError,
    ClientError,
    MalformedResponseError,
    TransportError,
    UncertainWriteError,
)
from include.woo_mirakl.clients.mirakl import MiraklClient, StockLine
from include.woo_mirakl.clients.mirakl_models import Offer
from include.woo_mirakl.clients.oauth import ReconnectRequired
from include.woo_mirakl.clients.woocommerce import API_PREFIX, WooCommerceClient, parse_version

FLOW = "mirakl_account"
ACTIONS = ("verify", "disconnect", "reconnect")
POLICIES = ("keep", "zero", "remove")
CONFIRMATION = "Disconnect"
# Orders the shop still owes work on: a disconnect leaves them to be handled by hand.
IN_PROGRESS_STATES = ("WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT", "SHIPPING")
DELETE_BATCH = 500  # offers per OF24 request; OF24 may run once a minute, so batches stay large
MIN_WOO_VERSION = (8, 0)

OK, WARNING, FAILED, SKIPPED = "ok", "warning", "failed", "skipped"


# ---- verification -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """One verification step and its verdict, in words a seller understands."""

    key: str
    title: str
    status: str
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "status": self.status, "message": self.message,
                "details": dict(self.details)}


@dataclass
class VerifyReport:
    """All checks of one verification, for the log, the XCom summary and the ledger."""

    marketplace: str
    checked_at: datetime
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.status != FAILED for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == FAILED]

    def summary(self) -> dict[str, Any]:
        return {
            "marketplace": self.marketplace,
            "checked_at": self.checked_at.isoformat(),
            "ok": self.ok,
            "failed": [c.key for c in self.failures],
            "warnings": [c.key for c in self.checks if c.status == WARNING],
            "checks": [c.as_dict() for c in self.checks],
        }

    def render(self) -> str:
        verdict = "PASSED" if self.ok else f"FAILED ({len(self.failures)} check(s))"
        lines = [f"Connection check for marketplace {self.marketplace!r}: {verdict}"]
        marks = {OK: "[ok]  ", WARNING: "[warn]", FAILED: "[FAIL]", SKIPPED: "[skip]"}
        lines += [f"  {marks[c.status]} {c.title}: {c.message}" for c in self.checks]
        return "\n".join(lines)


def _skipped(key: str, title: str, because: str) -> Check:
    return Check(key, title, SKIPPED, f"not checked because {because}")


def _host_of(base_url: str) -> str:
    return urlsplit(base_url).hostname or base_url


def _resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, None)
    except (socket.gaierror, UnicodeError):
        return False
    return True


def verify_mirakl(
    client: MiraklClient,
    *,
    ledger: Any,
    marketplace: str,
    budget_scope: str,
    now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
) -> list[Check]:
    """Host, API key and shop (A01). A01 may run once a day: when its budget says no, the last
    A01 answer stored in the ledger for the same host and shop is shown instead, and says so."""
    where = client.base_url
    host = _host_of(where)
    host_title, key_title, shop_title = "Mirakl host", "Mirakl API key", "Mirakl shop"
    if not _resolves(host):
        return [
            Check("mirakl.host", host_title, FAILED,
                  f"the host name {host!r} does not resolve: use the first part of your back-office URL, "
                  "without https:// (e.g. acme-dev.mirakl.net)"),
            _skipped("mirakl.key", key_title, "the host cannot be reached"),
            _skipped("mirakl.shop", shop_title, "the host cannot be reached"),
        ]
    try:
        offers = client.offers_count()
    except ReconnectRequired as error:  # OAuth: the authorization cannot be renewed any more
        return [
            _skipped("mirakl.host", host_title, "no access token could be obtained"),
            Check("mirakl.auth", "Mirakl authentication", FAILED, str(error)),
            _skipped("mirakl.shop", shop_title, "no access token could be obtained"),
        ]
    except TransportError as error:
        return [
            Check("mirakl.host", host_title, FAILED, f"{where} does not answer ({_reason(error)})"),
            _skipped("mirakl.key", key_title, "the host does not answer"),
            _skipped("mirakl.shop", shop_title, "the host does not answer"),
        ]
    except MalformedResponseError:
        return [
            Check("mirakl.host", host_title, FAILED, f"{where} answers, but not like a Mirakl API: check the host"),
            _skipped("mirakl.key", key_title, "the host is not a Mirakl API"),
            _skipped("mirakl.shop", shop_title, "the host is not a Mirakl API"),
        ]
    except ApiError as error:
        return _mirakl_probe_refused(error, where, client.shop_id)
    checks = [
        Check("mirakl.host", host_title, OK, f"{where} answers"),
        Check("mirakl.key", key_title, OK, f"accepted ({offers} offers in the shop)", {"offers": offers}),
        _auth_check(client),
    ]
    checks.append(_verify_shop(client, ledger=ledger, marketplace=marketplace, scope=budget_scope, now=now))
    return checks


def _auth_check(client: MiraklClient) -> Check:
    """How the integration signs in to Mirakl, and until when its access token is valid."""
    provider = client.token_provider
    if provider is None:
        return Check("mirakl.auth", "Mirakl authentication", OK, "shop API key", {"auth_mode": "api_key"})
    expires = provider.expires_at
    return Check("mirakl.auth", "Mirakl authentication", OK,
                 f"Mirakl's authentication system ({provider.grant.replace('_', ' ')}); the access token is valid "
                 f"until {expires:%Y-%m-%d %H:%M} UTC and renews itself",
                 {"auth_mode": f"oauth_{provider.grant}", "token_expires_at": expires.isoformat()})


def _reason(error: ClientError) -> str:
    text = str(error)
    for reason in ("unknown host", "connection refused", "timed out", "connection dropped by the server"):
        if reason in text:
            return reason
    return "connection error"


def _mirakl_probe_refused(error: ApiError, where: str, shop_id: int | None) -> list[Check]:
    host_ok = Check("mirakl.host", "Mirakl host", OK, f"{where} answers")
    if error.status == 401:
        return [
            host_ok,
            Check("mirakl.key", "Mirakl API key", FAILED,
                  "the API key was refused (HTTP 401): copy it again from the back-office (your user menu → API key)"),
            _skipped("mirakl.shop", "Mirakl shop", "the API key was refused"),
        ]
    if error.status == 403 and shop_id is not None:
        return [
            host_ok,
            Check("mirakl.key", "Mirakl API key", OK, "accepted"),
            Check("mirakl.shop", "Mirakl shop", FAILED,
                  f"shop id mismatch: the API key has no access to shop {shop_id} (Mirakl: {error.message}); "
                  "set the shop id shown in the back-office in the connection's extra `shop_id`"),
        ]
    if error.status == 404:
        return [
            Check("mirakl.host", "Mirakl host", FAILED,
                  f"{where} answers but has no Mirakl seller API (HTTP 404 on /api/offers): check the host"),
            _skipped("mirakl.key", "Mirakl API key", "the host is not a Mirakl API"),
            _skipped("mirakl.shop", "Mirakl shop", "the host is not a Mirakl API"),
        ]
    return [
        host_ok,
        Check("mirakl.key", "Mirakl API key", FAILED, f"Mirakl refused the call: HTTP {error.status} {error.message}"),
        _skipped("mirakl.shop", "Mirakl shop", "the API key check failed"),
    ]


def _verify_shop(client: MiraklClient, *, ledger: Any, marketplace: str, scope: str,
                 now: Callable[[], datetime]) -> Check:
    title = "Mirakl shop"
    expected = client.shop_id
    try:
        account = client.account()
    except BudgetExceeded as exceeded:
        stored = ledger.get_cursor(FLOW, marketplace, "a01")
        later = f"A01 may be called once a day; the next call is allowed at {exceeded.retry_at.isoformat()}"
        if not stored or stored.get("scope") != scope:
            return Check("mirakl.shop", title, WARNING,
                         f"not checked now and no earlier answer is stored for this host and shop ({later})")
        check = _shop_check(expected, stored)
        return Check(check.key, title, check.status,
                     f"{check.message} — from the last A01 answer at {stored['checked_at']}, not re-checked "
                     f"({later})", {**check.details, "from_ledger": True})
    except ApiError as error:
        if error.status in (401, 403, 404):
            return Check("mirakl.shop", title, FAILED,
                         f"the API key is not valid for shop {expected} (A01: HTTP {error.status} {error.message})")
        return Check("mirakl.shop", title, FAILED, f"A01 failed: HTTP {error.status} {error.message}")
    except (TransportError, MalformedResponseError) as error:
        return Check("mirakl.shop", title, FAILED, f"A01 failed: {error}")
    answer = {
        "scope": scope, "checked_at": now().isoformat(), "shop_id": account.shop_id, "shop_name": account.shop_name,
        "currency": account.currency_iso_code, "state": account.shop_state,
    }
    ledger.set_cursor(FLOW, marketplace, "a01", answer)
    return _shop_check(expected, answer)


def _shop_check(expected: int | None, answer: Mapping[str, Any]) -> Check:
    """The shop verdict from an A01 answer (fresh or stored)."""
    shown = (f"shop {answer.get('shop_name')!r} (id {answer.get('shop_id')}), currency {answer.get('currency')}, "
             f"state {answer.get('state')}")
    details = {k: answer.get(k) for k in ("shop_id", "shop_name", "currency", "state")}
    if expected is not None and answer.get("shop_id") is not None and answer["shop_id"] != expected:
        return Check("mirakl.shop", "Mirakl shop", FAILED,
                     f"shop id mismatch: the connection says shop {expected}, but the API key belongs to {shown}",
                     details)
    if expected is None:
        return Check("mirakl.shop", "Mirakl shop", WARNING,
                     f"{shown}; the connection has no shop_id: set extra `shop_id` to {answer.get('shop_id')}", details)
    if (answer.get("state") or "OPEN") != "OPEN":
        return Check("mirakl.shop", "Mirakl shop", WARNING, f"{shown}: the shop is not open on the marketplace",
                     details)
    return Check("mirakl.shop", "Mirakl shop", OK, shown, details)


def verify_woocommerce(client: WooCommerceClient) -> list[Check]:
    """Store reachable, keys can read and write, version, SKUs unique, Shipment Tracking installed."""
    where = client.base_url
    titles = {"woo.store": "WooCommerce store", "woo.read": "WooCommerce keys can read",
              "woo.write": "WooCommerce keys can write", "woo.version": "WooCommerce version",
              "woo.skus": "SKUs unique", "woo.tracking": "Shipment Tracking"}

    def skip_rest(after: list[Check], because: str) -> list[Check]:
        done = {c.key for c in after}
        return after + [_skipped(k, t, because) for k, t in titles.items() if k not in done]

    host = _host_of(where)
    if not _resolves(host):
        return skip_rest([Check("woo.store", titles["woo.store"], FAILED,
                                f"the host name {host!r} does not resolve: check the store URL")],
                         "the store cannot be reached")
    try:
        status = client.system_status(refresh=True)
    except TransportError as error:
        return skip_rest([Check("woo.store", titles["woo.store"], FAILED, f"{where} does not answer ({_reason(error)})")],
                         "the store does not answer")
    except MalformedResponseError:
        return skip_rest([Check("woo.store", titles["woo.store"], FAILED,
                                f"{where} answers, but not like the WooCommerce REST API: check the store URL")],
                         "the store is not a WooCommerce REST API")
    except ApiError as error:
        if error.status == 401 and "read permission" in error.message:
            return skip_rest([
                Check("woo.store", titles["woo.store"], OK, f"{where} answers and accepts the keys"),
                Check("woo.read", titles["woo.read"], FAILED,
                      "the keys cannot read (write-only): create keys with Read/Write permission"),
            ], "the keys cannot read")
        if error.status == 401:
            return skip_rest([Check("woo.store", titles["woo.store"], FAILED,
                                    f"the consumer key or secret was refused ({error.message}): create new keys in "
                                    "WooCommerce → Settings → Advanced → REST API")],
                             "the keys were refused")
        if error.status == 404:
            return skip_rest([Check("woo.store", titles["woo.store"], FAILED,
                                    f"{where} has no WooCommerce REST API (HTTP 404): check the store URL and that "
                                    "pretty permalinks are on")], "the store has no REST API")
        return skip_rest([Check("woo.store", titles["woo.store"], FAILED,
                                f"the store answered HTTP {error.status}: {error.message}")], "the store failed")
    checks = [
        Check("woo.store", titles["woo.store"], OK, f"{where} answers and accepts the keys"),
        Check("woo.read", titles["woo.read"], OK, "read access confirmed (system status)"),
        _check_write(client, titles["woo.write"]),
        _check_version(status, titles["woo.version"]),
        _check_skus(client, titles["woo.skus"]),
        _check_tracking(status, titles["woo.tracking"]),
    ]
    return checks


def _check_write(client: WooCommerceClient, title: str) -> Check:
    # An empty batch is a write request WooCommerce accepts and applies nothing for; a read-only key is
    # rejected before any handler runs ("does not have write permissions").
    try:
        client.request("POST", API_PREFIX + "/products/batch", "woo.products.batch", json_body={}, idempotent=True)
    except ApiError as error:
        if error.status == 401 and "write permission" in error.message:
            return Check("woo.write", title, FAILED,
                         "the keys are read-only: create keys with Read/Write permission (orders and stock are written)")
        return Check("woo.write", title, FAILED, f"a harmless write was refused: HTTP {error.status} {error.message}")
    except ClientError as error:
        return Check("woo.write", title, FAILED, f"a harmless write failed: {error}")
    return Check("woo.write", title, OK, "write access confirmed (an empty product batch, which changes nothing)")


def _check_version(status: Mapping[str, Any], title: str) -> Check:
    version = str((status.get("environment") or {}).get("version") or "")
    parsed = parse_version(version)
    if not parsed:
        return Check("woo.version", title, WARNING, "the store did not report its version", {"version": None})
    notes = []
    if parsed < (9, 0):
        notes.append("refunds are read order by order (GET /refunds needs 9.0)")
    if parsed < (10, 3):
        notes.append("variations are read per product (GET /variations needs 10.3)")
    message = f"WooCommerce {version}" + (f"; {'; '.join(notes)}" if notes else "")
    status_word = WARNING if parsed < MIN_WOO_VERSION else OK
    if status_word == WARNING:
        message += f"; versions before {'.'.join(map(str, MIN_WOO_VERSION))} are not supported"
    return Check("woo.version", title, status_word, message, {"version": version})


def find_duplicate_skus(items: Iterable[Mapping[str, Any]]) -> tuple[dict[str, list[str]], int]:
    """SKUs used more than once across products and variations, each with who uses it; and how many
    sellable items have no SKU. Items: ``{"id", "sku", "type", "parent_id"}``; variable parents are
    containers, not sold, and are ignored when they have no SKU."""
    owners: dict[str, list[str]] = {}
    missing = 0
    for item in items:
        sku = str(item.get("sku") or "").strip()
        kind = "variation" if item.get("type") == "variation" or item.get("parent_id") else "product"
        if not sku:
            if item.get("type") != "variable":
                missing += 1
            continue
        label = f"{kind} {item.get('id')}" + (f" of product {item['parent_id']}" if kind == "variation" else "")
        owners.setdefault(sku, []).append(label)
    return {sku: who for sku, who in owners.items() if len(who) > 1}, missing


def _scan_skus(client: WooCommerceClient) -> Iterable[dict]:
    fields = "id,sku,type,parent_id"
    for product in client.iter_products(_fields=fields, status="any"):
        yield product
        if product.get("type") == "variable":
            for variation in client.iter_variations(int(product["id"]), _fields="id,sku,parent_id"):
                yield {**variation, "type": "variation", "parent_id": variation.get("parent_id") or product["id"]}


def _check_skus(client: WooCommerceClient, title: str) -> Check:
    try:
        items = list(_scan_skus(client))
    except ClientError as error:
        return Check("woo.skus", title, FAILED, f"could not scan the catalogue: {error}")
    duplicates, missing = find_duplicate_skus(items)
    details = {"items": len(items), "duplicates": len(duplicates), "without_sku": missing}
    if duplicates:
        shown = "; ".join(f"{sku!r} used by {', '.join(who)}" for sku, who in sorted(duplicates.items())[:5])
        more = f" (and {len(duplicates) - 5} more)" if len(duplicates) > 5 else ""
        return Check("woo.skus", title, FAILED,
                     f"{len(duplicates)} SKU(s) are not unique across products and variations: {shown}{more}. "
                     "Offers are joined on SKU, so each must be unique", details)
    if missing:
        return Check("woo.skus", title, WARNING,
                     f"{len(items)} products and variations scanned, SKUs unique; {missing} have no SKU and "
                     "cannot be offered on Mirakl", details)
    return Check("woo.skus", title, OK, f"{len(items)} products and variations scanned, every SKU unique", details)


def _check_tracking(status: Mapping[str, Any], title: str) -> Check:
    plugins = status.get("active_plugins") or []
    installed = any("shipment-tracking" in str(p.get("plugin", "")) or "Shipment Tracking" in str(p.get("name", ""))
                    for p in plugins if isinstance(p, Mapping))  # the official extension or Advanced Shipment Tracking
    if installed:
        return Check("woo.tracking", title, OK, "installed: tracking numbers are read from it", {"installed": True})
    return Check("woo.tracking", title, WARNING,
                 "not installed (neither Shipment Tracking nor Advanced Shipment Tracking): tracking is read from "
                 "core fulfillments where the store has them (10.1+), else shipments are confirmed to Mirakl "
                 "without tracking numbers", {"installed": False})


def record_verification(ledger: Any, report: VerifyReport, run_id: str | None = None) -> None:
    """Keep the last verification in the ledger (cursor ``last_verify``) and in the sync status."""
    summary = report.summary()
    ledger.set_cursor(FLOW, report.marketplace, "last_verify", summary)
    if report.ok:
        ledger.record_sync_success(FLOW, report.marketplace, run_id, {"action": "verify", "ok": True})
    else:
        failed = "; ".join(f"{c.title}: {c.message}" for c in report.failures)
        ledger.record_sync_failure(FLOW, report.marketplace, f"verify failed: {failed}"[:2000])


# ---- disconnect: request and plan ---------------------------------------------------------------

class RequestRefused(ValueError):
    """The trigger form's values do not allow the requested action."""


@dataclass(frozen=True)
class AccountRequest:
    """What the trigger form asked for, validated."""

    action: str
    offers_policy: str
    dry_run: bool
    confirmed: bool


def check_request(action: Any, offers_policy: Any, confirmation: Any, dry_run: Any) -> AccountRequest:
    """Validate the form. A real disconnect needs the confirmation to read exactly ``Disconnect``;
    a dry run and a verify do not (the form cannot make one field depend on another)."""
    if action not in ACTIONS:
        raise RequestRefused(f"action must be one of {', '.join(ACTIONS)}; got {action!r}")
    if offers_policy is None and action != "disconnect":
        pass  # only a disconnect uses the policy
    elif offers_policy is None:
        raise RequestRefused(f"choose what happens to the offers on disconnect: one of {', '.join(POLICIES)}")
    elif offers_policy not in POLICIES:
        raise RequestRefused(f"offers_policy must be one of {', '.join(POLICIES)}; got {offers_policy!r}")
    if not isinstance(dry_run, bool):
        raise RequestRefused(f"dry_run must be true or false; got {dry_run!r}")
    confirmed = confirmation == CONFIRMATION
    if action == "disconnect" and not dry_run and not confirmed:
        given = "nothing" if confirmation in (None, "") else repr(confirmation)
        raise RequestRefused(
            f"refused to disconnect: the confirmation must read exactly {CONFIRMATION!r} (case-sensitive), "
            f"got {given}. Nothing was sent to Mirakl and no flow was paused."
        )
    return AccountRequest(action, offers_policy, dry_run, confirmed)


@dataclass(frozen=True)
class OfferRef:
    """What a disconnect needs of one offer (from OF21)."""

    shop_sku: str
    quantity: int
    price: str
    state_code: str
    product_id: str
    product_id_type: str

    @classmethod
    def from_offer(cls, offer: Offer) -> "OfferRef":
        references = offer.raw.get("product_references") or []
        first = references[0] if references and isinstance(references[0], Mapping) else {}
        if first.get("reference") and first.get("reference_type"):
            product_id, product_id_type = str(first["reference"]), str(first["reference_type"])
        else:  # the product's Mirakl SKU identifies it too
            product_id, product_id_type = str(offer.product_sku or offer.shop_sku), "SKU"
        return cls(
            shop_sku=str(offer.shop_sku), quantity=int(offer.quantity or 0),
            price=str(offer.price if offer.price is not None else "0"), state_code=str(offer.state_code or "11"),
            product_id=product_id, product_id_type=product_id_type,
        )


@dataclass(frozen=True)
class DisconnectPlan:
    """What a disconnect does: the offers policy's writes, the flows to pause, the open orders."""

    marketplace: str
    policy: str
    offers: tuple[OfferRef, ...]
    open_orders: tuple[Mapping[str, Any], ...]
    flows: tuple[str, ...]

    @property
    def stock_lines(self) -> list[StockLine]:
        return [StockLine(o.shop_sku, 0) for o in self.offers] if self.policy == "zero" else []

    @property
    def delete_batches(self) -> list[list[dict[str, Any]]]:
        if self.policy != "remove":
            return []
        rows = [
            {"shop_sku": o.shop_sku, "product_id": o.product_id, "product_id_type": o.product_id_type,
             "price": float(o.price), "state_code": o.state_code, "update_delete": "delete"}
            for o in self.offers
        ]
        return [rows[i:i + DELETE_BATCH] for i in range(0, len(rows), DELETE_BATCH)]

    def counts(self) -> dict[str, int]:
        return {
            "offers": len(self.offers),
            "offers_in_stock": sum(1 for o in self.offers if o.quantity > 0),
            "stock_files": 1 if self.stock_lines else 0,
            "delete_requests": len(self.delete_batches),
            "flows_to_pause": len(self.flows),
            "orders_in_progress": len(self.open_orders),
        }

    def describe(self) -> list[str]:
        counts = self.counts()
        effect = {
            "keep": f"keep all {counts['offers']} offers on Mirakl as they are (nothing is sent to Mirakl)",
            "zero": f"set the stock of all {counts['offers']} offers to 0 ({counts['offers_in_stock']} have stock "
                    "now) with one STO01 stock file",
            "remove": f"delete all {counts['offers']} offers from Mirakl with {counts['delete_requests']} OF24 "
                      "request(s)",
        }[self.policy]
        lines = [f"Offers policy {self.policy!r}: {effect}.",
                 f"Pause {counts['flows_to_pause']} flow(s): {', '.join(self.flows) or 'none found'}.",
                 "Mark the marketplace disconnected in the ledger; its history is kept."]
        if self.open_orders:
            shown = ", ".join(f"{o['order_id']} ({o['state']})" for o in self.open_orders[:20])
            more = f" and {len(self.open_orders) - 20} more" if len(self.open_orders) > 20 else ""
            lines.append(f"WARNING: {len(self.open_orders)} order(s) still in progress will no longer be handled "
                         f"by the integration: {shown}{more}.")
        return lines

    def to_state(self) -> dict[str, Any]:
        return {"policy": self.policy, "offers": [asdict(o) for o in self.offers],
                "open_orders": list(self.open_orders), "flows": list(self.flows)}

    @classmethod
    def from_state(cls, marketplace: str, state: Mapping[str, Any]) -> "DisconnectPlan":
        return cls(marketplace, state["policy"], tuple(OfferRef(**o) for o in state["offers"]),
                   tuple(state.get("open_orders") or ()), tuple(state.get("flows") or ()))


def plan_disconnect(
    marketplace: str,
    policy: str,
    offers: Iterable[OfferRef],
    open_orders: Iterable[Mapping[str, Any]],
    flows: Iterable[str],
) -> DisconnectPlan:
    """The plan, sorted so the same shop always yields the same requests (and idempotency keys)."""
    if policy not in POLICIES:
        raise RequestRefused(f"offers_policy must be one of {', '.join(POLICIES)}; got {policy!r}")
    unique = {o.shop_sku: o for o in offers}
    return DisconnectPlan(
        marketplace, policy, tuple(unique[s] for s in sorted(unique)),
        tuple(sorted(open_orders, key=lambda o: str(o["order_id"]))), tuple(sorted(set(flows))),
    )


def open_orders_from_ledger(ledger: Any, marketplace: str) -> list[dict[str, Any]]:
    """Orders accepted or awaiting a decision and not shipped, as the ledger knows them (no Mirakl call)."""
    return [
        {"order_id": o.mirakl_order_id, "state": o.mirakl_state, "woo_order_id": o.woo_order_id}
        for o in ledger.orders_in_states(marketplace, IN_PROGRESS_STATES)
    ]


def marketplace_flow_ids(dag_ids: Iterable[str], marketplace: str) -> list[str]:
    """The DAGs of this marketplace that a disconnect pauses: every flow but the account flow itself."""
    suffix = f"__{marketplace}"
    return sorted(d for d in dag_ids if d.endswith(suffix) and d.split("__", 1)[0] != FLOW)


# ---- disconnect: connection state in the ledger -------------------------------------------------

def connection_state(ledger: Any, marketplace: str) -> dict[str, Any]:
    """``{"status": "connected"|"disconnecting"|"disconnected", "generation": n, ...}``.

    ``generation`` counts connections: a reconnect starts a new one, so the idempotency keys of an
    earlier disconnect never block a later one.
    """
    return ledger.get_cursor(FLOW, marketplace, "connection") or {"status": "connected", "generation": 1}


def is_disconnected(ledger: Any, marketplace: str) -> bool:
    """True while a marketplace is (being) disconnected: other flows should not write to Mirakl."""
    return connection_state(ledger, marketplace)["status"] != "connected"


def _set_connection(ledger: Any, marketplace: str, **changes: Any) -> dict[str, Any]:
    state = {**connection_state(ledger, marketplace), **changes}
    ledger.set_cursor(FLOW, marketplace, "connection", state)
    return state


def _plan_cursor(ledger: Any, marketplace: str, policy: str) -> str:
    generation = connection_state(ledger, marketplace)["generation"]
    return f"disconnect_plan:g{generation}:{policy}"


def stored_plan(ledger: Any, marketplace: str, policy: str) -> DisconnectPlan | None:
    """The plan frozen by an earlier real run of this generation and policy, if any."""
    stored = ledger.get_cursor(FLOW, marketplace, _plan_cursor(ledger, marketplace, policy))
    return DisconnectPlan.from_state(marketplace, stored) if stored else None


def freeze_plan(ledger: Any, plan: DisconnectPlan) -> DisconnectPlan:
    """The plan of the first real run of this generation and policy; later runs reuse it, so their
    requests (and idempotency keys) are the same and nothing already sent is sent again."""
    stored = stored_plan(ledger, plan.marketplace, plan.policy)
    if stored is not None:
        return stored
    ledger.set_cursor(FLOW, plan.marketplace, _plan_cursor(ledger, plan.marketplace, plan.policy), plan.to_state())
    return plan


def load_frozen_plan(ledger: Any, marketplace: str, policy: str) -> DisconnectPlan:
    plan = stored_plan(ledger, marketplace, policy)
    if plan is None:
        raise RuntimeError(f"no disconnect plan for {marketplace!r} ({policy}) in the ledger: run plan_disconnect first")
    return plan


# ---- disconnect: pausing the flows --------------------------------------------------------------

class FlowPauser(Protocol):
    """Pauses and resumes DAGs; ``how`` names the mechanism for the report."""

    how: str

    def list_dags(self) -> dict[str, bool]:
        """Every DAG id and whether it is paused."""

    def pause(self, dag_ids: Sequence[str]) -> list[str]: ...

    def unpause(self, dag_ids: Sequence[str]) -> list[str]: ...


class RestApiPauser(AirflowApi):
    """Airflow's REST API (``PATCH /api/v2/dags/{id}``), through an ``airflow_api`` HTTP connection
    (host = the API server URL, login/password of a user allowed to edit DAGs). Works from any worker."""

    def list_dags(self) -> dict[str, bool]:
        dags: dict[str, bool] = {}
        while True:
            answer = self.session.get(f"{self.base_url}/api/v2/dags", params={"limit": 100, "offset": len(dags)},
                                      timeout=self.timeout)
            answer.raise_for_status()
            body = answer.json()
            dags.update({d["dag_id"]: bool(d.get("is_paused")) for d in body.get("dags") or []})
            if not body.get("dags") or len(dags) >= int(body.get("total_entries") or 0):
                return dags

    def pause(self, dag_ids: Sequence[str]) -> list[str]:
        return self._set_paused(dag_ids, True)

    def unpause(self, dag_ids: Sequence[str]) -> list[str]:
        return self._set_paused(dag_ids, False)

    def _set_paused(self, dag_ids: Sequence[str], paused: bool) -> list[str]:
        done = []
        for dag_id in dag_ids:
            answer = self.session.patch(f"{self.base_url}/api/v2/dags/{dag_id}", params={"update_mask": "is_paused"},
                                        json={"is_paused": paused}, timeout=self.timeout)
            if answer.status_code == 404:  # the flow no longer exists
                continue
            answer.raise_for_status()
            done.append(dag_id)
        return done


class MetadataDbPauser:
    """Airflow's ORM: works where the task may use the metadata database (``dag.test()``,
    ``airflow tasks test``); Airflow 3 workers may not, so production uses :class:`RestApiPauser`."""

    how = "Airflow metadata database"

    def list_dags(self) -> dict[str, bool]:
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session
        from sqlalchemy import select

        with create_session() as session:
            return {dag_id: bool(paused) for dag_id, paused in session.execute(select(DagModel.dag_id, DagModel.is_paused))}

    def pause(self, dag_ids: Sequence[str]) -> list[str]:
        return self._set_paused(dag_ids, True)

    def unpause(self, dag_ids: Sequence[str]) -> list[str]:
        return self._set_paused(dag_ids, False)

    @staticmethod
    def _set_paused(dag_ids: Sequence[str], paused: bool) -> list[str]:
        from airflow.models.dag import DagModel
        from airflow.utils.session import create_session
        from sqlalchemy import select, update

        with create_session() as session:
            existing = sorted(session.scalars(select(DagModel.dag_id).where(DagModel.dag_id.in_(list(dag_ids)))))
            session.execute(update(DagModel).where(DagModel.dag_id.in_(existing)).values(is_paused=paused))
            return existing


def default_pauser() -> FlowPauser:
    """The REST API when an ``airflow_api`` connection exists, else the metadata database."""
    from include.woo_mirakl.airflow_connections import api_credentials

    credentials = api_credentials()
    return RestApiPauser(*credentials) if credentials else MetadataDbPauser()


@dataclass(frozen=True)
class FlowListing:
    """The flows a disconnect would pause, how they were found, and whether a real disconnect can pause them."""

    flows: tuple[str, ...]
    how: str
    problem: str | None = None  # why a real disconnect could not pause them, in plain words
    already_paused: tuple[str, ...] = ()  # someone paused them before: a disconnect leaves them (and a reconnect)

    @property
    def can_pause(self) -> bool:
        return self.problem is None


def project_flow_ids(marketplace: str, dags_folder: str | None = None) -> list[str]:
    """The marketplace's DAG ids as the DAG files define them (one ``<flow>.py`` per flow), without Airflow."""
    from pathlib import Path

    if dags_folder is None:
        from airflow.configuration import conf

        dags_folder = conf.get("core", "dags_folder")
    return marketplace_flow_ids((f"{p.stem}__{marketplace}" for p in Path(dags_folder).glob("mirakl_*.py")),
                                marketplace)


def list_flows_to_pause(marketplace: str, pauser_factory: Callable[[], FlowPauser] | None = None,
                        dags_folder: str | None = None) -> FlowListing:
    """The running flows a disconnect pauses. When Airflow cannot be asked (an Airflow 3 worker may
    not use the metadata database, and there is no ``airflow_api`` connection), the flows the DAG
    files define, and a plain statement that a real disconnect could not pause them."""
    try:
        pauser = (pauser_factory or default_pauser)()
        dags = pauser.list_dags()
    except Exception as error:  # noqa: BLE001 - reported to the user, who decides what to do
        flows = tuple(project_flow_ids(marketplace, dags_folder))
        if isinstance(error, RuntimeError) and "ORM is not allowed" in str(error):
            why = (f"there is no '{API_CONN_ID}' connection and tasks on Airflow 3 workers may not use "
                   "Airflow's metadata database")
        else:
            why = f"asking Airflow for its DAGs failed ({type(error).__name__}: {error})"
        return FlowListing(flows, "the DAG files", (
            f"A real disconnect could NOT pause these {len(flows)} flow(s): {why}. Add the '{API_CONN_ID}' "
            "connection (type HTTP: host = the Airflow API server URL, login and password of a user allowed "
            "to edit DAGs; `make airflow` and the compose file create one) or pause them by hand first."))
    flows = marketplace_flow_ids(dags, marketplace)
    return FlowListing(tuple(d for d in flows if not dags[d]), pauser.how,
                       already_paused=tuple(d for d in flows if dags[d]))


def pause_flows(pauser: FlowPauser, marketplace: str) -> list[str]:
    """Pause the running flows of the marketplace (not the account flow); returns the DAG ids it paused.
    Flows someone had paused already are left out, so a reconnect does not resume them."""
    dags = pauser.list_dags()
    running = [d for d in marketplace_flow_ids(dags, marketplace) if not dags[d]]
    return pauser.pause(running) if running else []


# ---- disconnect: applying the offers policy -----------------------------------------------------

@dataclass
class PolicyOutcome:
    """What applying the offers policy did, request by request."""

    policy: str
    sent: list[str] = field(default_factory=list)          # idempotency keys sent in this run
    already_done: list[str] = field(default_factory=list)  # sent by an earlier run: not sent again
    imports: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"policy": self.policy, "sent": len(self.sent), "already_done": len(self.already_done),
                "imports": self.imports, "failures": self.failures}


def _action_key(plan: DisconnectPlan, generation: int, what: str) -> str:
    return f"{FLOW}:{plan.marketplace}:g{generation}:{plan.policy}:{what}"


def apply_offers_policy(
    plan: DisconnectPlan,
    client: MiraklClient,
    ledger: Any,
    *,
    import_wait: float = 300.0,
    first_poll_after: float = 3.0,
    sleep: Callable[[float], None] = time.sleep,
) -> PolicyOutcome:
    """Send the plan's writes through ledger actions (recorded before sending, never re-sent once
    done), then follow them to the end and report rejected lines."""
    generation = connection_state(ledger, plan.marketplace)["generation"]
    outcome = PolicyOutcome(plan.policy)
    if plan.policy == "zero" and plan.stock_lines:
        lines = plan.stock_lines
        request = {"operation": "STO01", "lines": [[line.offer_sku, line.quantity] for line in lines]}
        key = _action_key(plan, generation, "stock")
        result = _send_once(ledger, plan.marketplace, key, "STO01", request, outcome,
                            send=lambda: {"import_id": client.import_stock(lines)},
                            landed=lambda: _all_zero(client, {line.offer_sku for line in lines}))
        if result and result.get("final"):
            outcome.imports.append(result["final"])
        elif result and result.get("import_id"):
            final = _follow_stock_import(client, result["import_id"], import_wait, first_poll_after, sleep)
            # Kept with the action, so a re-run reports it without asking Mirakl again.
            ledger.complete_action(key, {**result, "final": final})
            outcome.imports.append(final)
    elif plan.policy == "remove":
        batches = plan.delete_batches
        for index, batch in enumerate(batches, start=1):
            skus = {row["shop_sku"] for row in batch}
            key = _action_key(plan, generation, f"delete:{index}of{len(batches)}")
            _send_once(ledger, plan.marketplace, key, "OF24", {"operation": "OF24", "offers": batch}, outcome,
                       send=lambda b=batch: {"import_id": client.import_offers(b)},
                       landed=lambda s=skus: not _live_skus(client, s))
        if batches:
            outcome.imports.append(_follow_deletes(client, {o.shop_sku for o in plan.offers}, import_wait, sleep))
    for item in outcome.imports:
        if item.get("problem"):
            outcome.failures.append(item["problem"])
    return outcome


def _send_once(
    ledger: Any, marketplace: str, key: str, kind: str, request: Mapping[str, Any], outcome: PolicyOutcome,
    *, send: Callable[[], dict[str, Any]], landed: Callable[[], bool],
) -> dict[str, Any] | None:
    action = ledger.begin_action(key, kind, marketplace, request, marketplace)
    if action.state == "done":
        outcome.already_done.append(key)
        return action.outcome
    if action.state == "failed":
        outcome.failures.append(f"{kind} {key} failed earlier and is not retried: {action.error}")
        return None
    if action.state == "uncertain" and landed():
        # An earlier attempt may have landed: its effect is there, so it is not sent again.
        return ledger.complete_action(key, {"resolved": "effect found on Mirakl"}).outcome
    try:
        result = send()
    except BudgetExceeded as error:
        ledger.fail_action(key, str(error), retryable=True)
        raise
    except UncertainWriteError as error:
        ledger.mark_action_uncertain(key, str(error))
        raise
    except TransportError as error:
        ledger.fail_action(key, str(error), retryable=True)
        raise
    except ApiError as error:
        retryable = error.status == 429 or error.status >= 500
        ledger.fail_action(key, str(error), retryable=retryable)
        if retryable:
            raise
        outcome.failures.append(f"{kind} was rejected: HTTP {error.status} {error.message}")
        return None
    ledger.complete_action(key, result)
    outcome.sent.append(key)
    return result


def _live_skus(client: MiraklClient, skus: set[str]) -> set[str]:
    return {o.shop_sku for o in client.iter_offers() if o.shop_sku in skus}


def _all_zero(client: MiraklClient, skus: set[str]) -> bool:
    return all((o.quantity or 0) == 0 for o in client.iter_offers() if o.shop_sku in skus)


def _follow_stock_import(client: MiraklClient, import_id: str, wait: float, first_poll_after: float,
                         sleep: Callable[[float], None]) -> dict[str, Any]:
    """STO02 until the import ends (the client's budget spaces the calls), then STO03 if lines failed."""
    deadline = time.monotonic() + wait
    sleep(first_poll_after)
    while True:
        status = client.stock_import_status(import_id)
        if status.finished or time.monotonic() >= deadline:
            break
        sleep(1.0)
    report: dict[str, Any] = {"operation": "STO01", "import_id": import_id, "status": status.status,
                              "lines_in_success": status.lines_in_success, "lines_in_error": status.lines_in_error}
    if not status.finished:
        report["problem"] = f"stock import {import_id} still {status.status} after {wait:.0f}s: check it in Mirakl"
    elif (status.status or "").upper() != "COMPLETE":
        report["problem"] = f"stock import {import_id} ended {status.status}: {status.reason_status or 'no reason'}"
    elif status.lines_in_error:
        errors = client.stock_error_report(import_id) if status.has_error_report else []
        report["errors"] = [{"sku": e.values.get("offer-sku"), "error": e.error} for e in errors[:50]]
        report["problem"] = f"stock import {import_id}: {status.lines_in_error} line(s) rejected"
    return report


def _follow_deletes(client: MiraklClient, skus: set[str], wait: float, sleep: Callable[[float], None]) -> dict[str, Any]:
    """OF24 imports run asynchronously on Mirakl: watch OF21 until the offers are gone."""
    deadline = time.monotonic() + wait
    while True:
        remaining = _live_skus(client, skus)
        if not remaining or time.monotonic() >= deadline:
            break
        sleep(5.0)
    report: dict[str, Any] = {"operation": "OF24", "deleted": len(skus) - len(remaining), "remaining": len(remaining)}
    if remaining:
        report["problem"] = (f"{len(remaining)} offer(s) still on Mirakl after {wait:.0f}s, e.g. "
                             f"{', '.join(sorted(remaining)[:10])}")
    return report


# ---- disconnect: ending the OAuth authorization --------------------------------------------------

NOT_CONNECTED = "not connected: the marketplace was disconnected, connect it again with Connect to Mirakl"


def revoke_mirakl_authorization(hook: Any, ledger: Any, marketplace: str) -> dict[str, Any]:
    """On an OAuth connection: revoke its tokens at Mirakl's authentication system, drop them.

    Each token (the refresh token the connection holds, the shared access token from the ledger)
    is revoked through a ledger action (RFC 7009 revocation is idempotent, so a re-run simply sends
    it again). Then the ledger's token row is emptied and marked "not connected", and the refresh
    token is removed from the connection (through ``airflow_connections``; a connection in an
    environment variable or a secrets backend cannot be changed from here: the answer says so, the
    token is revoked anyway). API-key connections are left as they are.
    Raises :class:`RuntimeError` when a revocation did not go through, so the task can be re-run.
    """
    from include.woo_mirakl.clients.oauth import fingerprint
    from include.woo_mirakl.airflow_connections import ConnectionNotWritable, update_extra
    from include.woo_mirakl.writes import Write, Writer

    provider = hook.token_provider(ledger=ledger)
    if provider is None:
        return {"auth_mode": "api_key", "revoked": 0}
    with provider.store.locked(provider.key) as slot:
        stored = slot.token
    tokens = [t for t in (stored.refresh_token if stored else None, provider.origin_refresh_token,
                          stored.access_token if stored else None) if t]  # refresh tokens first: they end the grant
    generation = connection_state(ledger, marketplace)["generation"]
    writer = Writer(ledger, marketplace)
    revoked, problems = 0, []
    for token in dict.fromkeys(tokens):
        digest = fingerprint(provider.key, token)
        result = writer.write(Write(
            key=f"{FLOW}:{marketplace}:g{generation}:revoke:{digest}", kind="oauth_revoke", target=hook.mirakl_conn_id,
            request={"operation": "revoke", "token": digest}, send=lambda t=token: provider.endpoint.revoke(t),
            repeatable=True))
        if result.ok:
            revoked += 1
        else:
            problems.append(f"{result.status}: {result.error}")
    if problems:
        raise RuntimeError(f"Mirakl's authentication system did not revoke {len(problems)} token(s) of "
                           f"{hook.mirakl_conn_id!r} ({'; '.join(problems)}): run the disconnect again")
    removed, note = False, None
    if provider.origin_refresh_token:
        try:
            update_extra(hook.mirakl_conn_id, {}, remove=("refresh_token",))
            removed = True
        except ConnectionNotWritable as error:
            note = f"{error}; so its refresh token stays there, revoked at Mirakl: it no longer works"
    provider.store.forget(provider.key)
    after = hook.token_provider(ledger=ledger)  # the origin the connection now gives its tokens
    with after.store.locked(after.key) as slot:
        slot.needs_reconnect(NOT_CONNECTED, after.origin)
    return {"auth_mode": f"oauth_{provider.grant}", "revoked": revoked, "removed_from_connection": removed,
            "note": note}


def clear_not_connected(hook: Any, ledger: Any) -> bool:
    """Before a reconnect's verify: lift the "not connected" mark a disconnect left (a client-credentials
    connection then fetches a token again; a seller's grant still needs Connect to Mirakl)."""
    provider = hook.token_provider(ledger=ledger)
    if provider is None:
        return False
    peek = provider.store.peek(provider.key) or {}
    if peek.get("reason") != NOT_CONNECTED:
        return False
    provider.store.forget(provider.key)
    return True


def mark_disconnecting(ledger: Any, marketplace: str, policy: str) -> dict[str, Any]:
    return _set_connection(ledger, marketplace, status="disconnecting", offers_policy=policy)


def record_paused(ledger: Any, marketplace: str, paused: Sequence[str], how: str) -> dict[str, Any]:
    """Remember which flows were paused at once, so a reconnect resumes exactly those even if the
    disconnect stops half-way."""
    earlier = connection_state(ledger, marketplace).get("paused_flows") or []
    return _set_connection(ledger, marketplace, paused_flows=sorted({*earlier, *paused}), paused_via=how)


def mark_disconnected(ledger: Any, marketplace: str, policy: str, now: datetime | None = None) -> dict[str, Any]:
    return _set_connection(ledger, marketplace, status="disconnected", offers_policy=policy,
                           since=(now or datetime.now(timezone.utc)).isoformat())


def reconnect(ledger: Any, marketplace: str, pauser: FlowPauser, now: datetime | None = None) -> dict[str, Any]:
    """Resume the flows a disconnect paused and start a new connection generation.

    The inventory flow is asked for a full comparison first (cursor ``full_comparison_requested``),
    since Mirakl's offers may have changed while the marketplace was disconnected.
    """
    state = connection_state(ledger, marketplace)
    if state["status"] == "connected":
        return {"status": "connected", "generation": state["generation"], "resumed": [],
                "note": "the marketplace was not disconnected: nothing to resume"}
    resumed = pauser.unpause(state.get("paused_flows") or [])
    stamp = (now or datetime.now(timezone.utc)).isoformat()
    generation = int(state["generation"]) + 1
    ledger.set_cursor(FLOW, marketplace, "full_comparison_requested", {"at": stamp, "generation": generation})
    fresh = {"status": "connected", "generation": generation, "since": stamp, "resumed_flows": resumed,
             "resumed_via": pauser.how}
    ledger.set_cursor(FLOW, marketplace, "connection", fresh)
    return fresh
