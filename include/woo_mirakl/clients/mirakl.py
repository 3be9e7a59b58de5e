"""Client of Mirakl's seller API (MMP): the calls the flows use, typed, paginated, budgeted.

Auth is the shop API key in the ``Authorization`` header (no "Bearer"), or with OAuth a
``Bearer`` token from a :class:`~include.woo_mirakl.clients.oauth.TokenProvider`; ``shop_id`` is
added to every call for users with several shops. Before each attempt of an operation
with a published maximum frequency the client asks its :class:`CallBudget`, which raises
:class:`BudgetExceeded` instead of letting a call exceed the maximum.

Listings are iterators that stream pages as the spec defines them: offset pagination
(``offset``/``max`` ≤ 100, ``total_count``) for OR11, OF21 and IV01; seek pagination
(``limit``/``page_token``/``next_page_token``) for TL02, PRI02 and M11.
"""
from __future__ import annotations

import csv
import email.utils
import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any, Callable, Iterable, Iterator, Mapping
from urllib.parse import quote, urlsplit

from include.woo_mirakl.budgets import BudgetExceeded, CallBudget, CallLimits, default_limits
from include.woo_mirakl.clients.http import ApiError, HttpClient, MalformedResponseError, RetryPolicy, UncertainWriteError
from include.woo_mirakl.clients.mirakl_models import (
    Account,
    AccountingDocument,
    Carrier,
    ErrorReportLine,
    ExportStatus,
    ImportStatus,
    MessageThread,
    Offer,
    Order,
    ProductImportStatus,
    RefundLine,
    RefundResult,
    Transaction,
    parse_csv_report,
    parse_datetime,
    parse_error_report,
    parse_offer_error_report,
)

MAX_PAGE_SIZE = 100  # offset pagination: "max" may not exceed 100
ORDER_IDS_PER_CALL = 100  # OR11 order_ids: at most 100 values


def mirakl_base_url(host: str, port: int | None = None) -> str:
    """``https://<host>`` from what a seller knows: a bare hostname, a back-office URL or a full URL.

    A bare hostname (``acme-dev.mirakl.net``) gets https; an explicit scheme
    (``http://127.0.0.1:8081``) is kept; any path (``/mmp/shop``, ``/api``) is dropped.
    """
    host = (host or "").strip()
    if not host:
        raise ValueError("Mirakl host is empty: set the connection's host, e.g. acme-dev.mirakl.net")
    parts = urlsplit(host if "://" in host else f"https://{host}")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Mirakl host {host!r} is not a hostname or an http(s) URL")
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}"


def _iso(value: datetime | str | None) -> str | None:
    """Mirakl dates: ISO 8601 in UTC with ``Z``."""
    if value is None or isinstance(value, str):
        return value
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class StockLine:
    """One line of a STO01 stock file: an absolute quantity for an offer (optionally per warehouse)."""

    offer_sku: str
    quantity: int
    warehouse_code: str | None = None
    delete: bool = False

    def __post_init__(self) -> None:
        if not self.offer_sku or not str(self.offer_sku).strip():
            raise ValueError("stock line without an offer SKU")
        if not self.delete and (not isinstance(self.quantity, int) or self.quantity < 0):
            raise ValueError(f"stock quantity for {self.offer_sku!r} must be an integer >= 0, got {self.quantity!r}")


@dataclass(frozen=True)
class PriceLine:
    """One line of a PRI01 price file."""

    offer_sku: str
    price: Decimal
    discount_price: Decimal | None = None
    discount_start_date: datetime | None = None
    discount_end_date: datetime | None = None

    def __post_init__(self) -> None:
        if not self.offer_sku or not str(self.offer_sku).strip():
            raise ValueError("price line without an offer SKU")
        if Decimal(self.price) < 0:
            raise ValueError(f"price for {self.offer_sku!r} must be >= 0, got {self.price}")


STOCK_COLUMNS = ("offer-sku", "quantity", "warehouse-code", "update-delete")


def build_stock_csv(lines: Iterable[StockLine]) -> bytes:
    """The STO01 file: ``offer-sku;quantity;warehouse-code;update-delete``, one line per offer quantity.

    Lines of one offer are kept together (the spec asks for per-warehouse quantities of
    the same offer to be listed together).
    """
    ordered = sorted(lines, key=lambda line: (line.offer_sku, line.warehouse_code or ""))
    if not ordered:
        raise ValueError("a stock file needs at least one line")
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(STOCK_COLUMNS)
    for line in ordered:
        writer.writerow(
            [line.offer_sku, "" if line.delete else line.quantity, line.warehouse_code or "", "delete" if line.delete else ""]
        )
    return out.getvalue().encode("utf-8")


def build_price_csv(lines: Iterable[PriceLine]) -> bytes:
    """The PRI01 file: ``offer-sku;price`` plus discount columns when any line has a discount."""
    lines = list(lines)
    if not lines:
        raise ValueError("a price file needs at least one line")
    with_discount = any(line.discount_price is not None for line in lines)
    columns = ["offer-sku", "price"] + (
        ["discount-price", "discount-start-date", "discount-end-date"] if with_discount else []
    )
    out = io.StringIO()
    writer = csv.writer(out, delimiter=";", lineterminator="\n")
    writer.writerow(columns)
    for line in lines:
        row = [line.offer_sku, f"{Decimal(line.price):f}"]
        if with_discount:
            row += [
                "" if line.discount_price is None else f"{Decimal(line.discount_price):f}",
                _iso(line.discount_start_date) or "",
                _iso(line.discount_end_date) or "",
            ]
        writer.writerow(row)
    return out.getvalue().encode("utf-8")


class MiraklClient(HttpClient):
    """The Mirakl seller API for one shop. Thread-unsafe like ``requests.Session``: one per task."""

    service = "mirakl"

    def __init__(
        self,
        host: str,
        api_key: str,
        *,
        shop_id: int | str | None = None,
        port: int | None = None,
        budget: CallBudget | None = None,
        limits: CallLimits | None = None,
        retry: RetryPolicy | None = None,
        verify: bool = True,
        page_size: int = MAX_PAGE_SIZE,
        token_provider: Any = None,
        **http_options: Any,
    ):
        if not api_key and token_provider is None:
            raise ValueError("Mirakl API key is empty: set it as the connection's password")
        if not 2 <= page_size <= MAX_PAGE_SIZE:
            raise ValueError(f"page_size must be between 2 and {MAX_PAGE_SIZE}")
        super().__init__(mirakl_base_url(host, port), retry=retry, verify=verify, secrets=[api_key], **http_options)
        self.session.headers.update({"Accept": "application/json"})
        if token_provider is None:
            self.session.headers["Authorization"] = api_key
        # OAuth: a Bearer token per call from the provider (include/woo_mirakl/clients/oauth.py)
        self.token_provider = token_provider
        self.shop_id = int(shop_id) if shop_id not in (None, "") else None
        self.budget = budget
        self.limits = limits or default_limits()
        self.page_size = page_size
        self.server_time: datetime | None = None  # Mirakl's clock (its Date header) at the last answer

    def error_code_and_message(self, status: int, body: Any) -> tuple[str | None, str]:
        if isinstance(body, dict):
            errors = [e for e in body.get("errors") or [] if isinstance(e, dict)]
            code = body.get("code") or (errors[0].get("code") if errors else None)
            message = body.get("message") or (errors[0].get("message") if errors else None) or body
            return (str(code) if code else None), str(message)
        return None, str(body)

    # Plumbing -------------------------------------------------------------------------
    def _params(self, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in (params or {}).items():
            if value is None:
                continue
            if isinstance(value, bool):
                value = "true" if value else "false"
            elif isinstance(value, datetime):
                value = _iso(value)
            elif isinstance(value, (list, tuple, set, frozenset)):
                # array parameters are form/explode: the key repeats (comma lists are joined by the caller)
                value = [str(v) for v in value]
            out[key] = value
        if self.shop_id is not None:
            out["shop_id"] = self.shop_id
        return out

    def _budget_hook(self, operation: str, variant: str | None, charge: bool) -> Callable[[], None] | None:
        if self.budget is None or not charge or not self.limits.windows(operation, variant):
            return None
        budget = self.budget
        attempts = 0

        def acquire() -> None:
            nonlocal attempts
            attempts += 1
            try:
                budget.acquire(operation, variant)
            except BudgetExceeded as error:
                error.retry_stopped = attempts > 1  # an earlier attempt of this very call failed
                raise

        return acquire

    def _call(
        self,
        method: str,
        path: str,
        operation: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        files: Mapping[str, Any] | None = None,
        expect: str = "json",
        idempotent: bool | None = None,
        variant: str | None = None,
        charge_budget: bool = True,
    ) -> Any:
        def send(headers: Mapping[str, str] | None) -> Any:
            reply = self.request(
                method,
                path,
                operation,
                params=self._params(params),
                json_body=json_body,
                files=files,
                headers=headers,
                expect=expect,
                idempotent=idempotent,
                before_attempt=self._budget_hook(operation, variant, charge_budget),
            )
            self.server_time = _date_header(reply.headers) or self.server_time
            return reply.body

        if self.token_provider is None:
            return send(None)
        token = self._bearer()
        try:
            return send({"Authorization": f"Bearer {token}"})
        except ApiError as error:
            if error.status != 401:
                raise
            # expired or revoked early: renew once (for every worker) and try again, once
            self.token_provider.invalidate(token)
            return send({"Authorization": f"Bearer {self._bearer()}"})

    def _bearer(self) -> str:
        token = self.token_provider.token()
        self.redactor.add(token)
        return token

    def _import_id(self, answer: Any, operation: str) -> str:
        """The id an import call answers with (PRI01 also has a camel-case twin).

        Without it the import exists but cannot be followed: as uncertain as a lost answer.
        """
        value = (answer.get("import_id") or answer.get("importId")) if isinstance(answer, dict) else None
        if value in (None, ""):
            raise UncertainWriteError(self.service, operation, "the answer carries no import_id", 201)
        return str(value)

    def _iter_offset(
        self,
        operation: str,
        path: str,
        params: Mapping[str, Any],
        items_key: str,
        id_of: Callable[[dict], str],
        sort_key: Callable[[dict], Any] | None = None,
        start: int = 0,
        expect: str = "json",
    ) -> Iterator[dict]:
        """Offset pagination (from ``start``) that neither misses nor repeats items when the data moves.

        Each page after the first re-reads the last item of the previous one (the
        anchor). If the anchor is not on the new page, items moved towards the start
        between the two calls (e.g. an order left the filtered set, so ``total_count``
        shrank): step back, doubling the step, until the page overlaps what was read. A
        page that starts before the anchor in sort order also proves the overlap (the
        anchor itself left the set). Items are de-duplicated by id.
        """
        pages_free = self.limits.pages_free(operation)
        seen: set[str] = set()
        offset, step_back, anchor, first = max(0, start), 1, None, True
        while True:
            body = self._call(
                "GET", path, operation,
                params={**params, "offset": offset, "max": self.page_size},
                charge_budget=first or not pages_free, expect=expect,
            ) or {}
            first = False
            items = [i for i in (body.get(items_key) or []) if isinstance(i, dict)]
            total = int(body.get("total_count") or 0)
            if anchor is not None and offset > 0 and not self._overlaps(items, anchor, id_of, sort_key):
                offset, step_back = max(0, offset - step_back), step_back * 2
                continue
            step_back = 1
            for item in items:
                key = id_of(item)
                if key not in seen:
                    seen.add(key)
                    yield item
            if not items or offset + len(items) >= total:
                return
            anchor = items[-1]
            offset += len(items) - 1

    @staticmethod
    def _overlaps(items: list[dict], anchor: dict, id_of: Callable[[dict], str], sort_key: Any) -> bool:
        if any(id_of(item) == id_of(anchor) for item in items):
            return True
        return bool(items) and sort_key is not None and sort_key(items[0]) < sort_key(anchor)

    def _iter_seek(
        self,
        operation: str,
        path: str,
        params: Mapping[str, Any],
        id_of: Callable[[dict], str],
        limit: int,
        items_key: str = "data",
        expect: str = "json",
    ) -> Iterator[dict]:
        """Seek pagination: follow ``next_page_token`` until there is none (ids de-duplicated)."""
        seen: set[str] = set()
        token: str | None = None
        while True:
            # the filters are repeated with the token: harmless where Mirakl ignores them, needed where not
            page_params = {**params, "limit": limit, "page_token": token}
            body = self._call("GET", path, operation, params=page_params, expect=expect) or {}
            for item in body.get(items_key) or []:
                if isinstance(item, dict) and id_of(item) not in seen:
                    seen.add(id_of(item))
                    yield item
            token = body.get("next_page_token")
            if not token:
                return

    # Account --------------------------------------------------------------------------
    def account(self) -> Account:
        """A01 (at most once a day): the shop behind the key."""
        return Account.from_api(self._call("GET", "/api/account", "A01") or {})

    # Orders ---------------------------------------------------------------------------
    def iter_orders(
        self,
        *,
        states: Iterable[str] | None = None,
        start_update_date: datetime | None = None,
        end_update_date: datetime | None = None,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        order_ids: Iterable[str] | None = None,
        customer_debited: bool | None = None,
        offset: int = 0,
    ) -> Iterator[Order]:
        """OR11, oldest first (creation date, then id): every matching order exactly once.

        ``offset`` skips that many orders of the listing (to resume inside one creation second).
        """
        ids = [str(i) for i in order_ids or []]
        if len(ids) > ORDER_IDS_PER_CALL:
            raise ValueError(f"OR11 accepts at most {ORDER_IDS_PER_CALL} order ids; use get_orders() to chunk")
        params = {
            "order_state_codes": ",".join(states) if states else None,
            "start_update_date": start_update_date,
            "end_update_date": end_update_date,
            "start_date": start_date,
            "end_date": end_date,
            "order_ids": ",".join(ids) if ids else None,
            "customer_debited": customer_debited,
            "sort": "dateCreated",
            "order": "asc",
        }
        for raw in self._iter_offset(
            "OR11", "/api/orders", params, "orders",
            id_of=lambda o: str(o.get("order_id")),
            sort_key=lambda o: (parse_datetime(o.get("created_date")) or datetime.min.replace(tzinfo=timezone.utc),
                                str(o.get("order_id"))),
            start=offset,
        ):
            yield Order.from_api(raw)

    def get_orders(self, order_ids: Iterable[str]) -> list[Order]:
        """OR11 by id, in chunks of 100 (one OR11 call per chunk)."""
        ids = list(dict.fromkeys(order_ids))
        out: list[Order] = []
        for start in range(0, len(ids), ORDER_IDS_PER_CALL):
            out.extend(self.iter_orders(order_ids=ids[start:start + ORDER_IDS_PER_CALL]))
        return out

    def get_order(self, order_id: str) -> Order:
        """OR12 (deprecated by Mirakl in favour of OR11 order_ids, still served)."""
        return Order.from_api(self._call("GET", f"/api/orders/{_seg(order_id)}", "OR12") or {})

    def accept_order(self, order_id: str, decisions: Mapping[str, bool]) -> None:
        """OR21: accept (True) or refuse (False) each line; every line of the order must be decided."""
        if not decisions:
            raise ValueError(f"OR21 for order {order_id}: no line decisions given")
        body = {"order_lines": [{"id": str(line_id), "accepted": bool(ok)} for line_id, ok in decisions.items()]}
        self._call("PUT", f"/api/orders/{_seg(order_id)}/accept", "OR21", json_body=body, expect="none")

    def update_tracking(
        self,
        order_id: str,
        *,
        tracking_number: str | None = None,
        carrier_code: str | None = None,
        carrier_name: str | None = None,
        carrier_url: str | None = None,
    ) -> None:
        """OR23: a known ``carrier_code``, or an unknown carrier as ``carrier_name`` (+ ``carrier_url``)."""
        if not carrier_code and not carrier_name:
            raise ValueError(f"OR23 for order {order_id}: give a carrier_code or a carrier_name")
        body = {
            key: value
            for key, value in (
                ("carrier_code", carrier_code),
                ("carrier_name", None if carrier_code else carrier_name),
                ("carrier_url", None if carrier_code else carrier_url),
                ("tracking_number", tracking_number),
            )
            if value
        }
        # Setting the same tracking twice leaves the same state: safe to retry.
        self._call("PUT", f"/api/orders/{_seg(order_id)}/tracking", "OR23", json_body=body, expect="none",
                   idempotent=True)

    def ship_order(self, order_id: str) -> None:
        """OR24: confirm the shipment (SHIPPING → SHIPPED)."""
        self._call("PUT", f"/api/orders/{_seg(order_id)}/ship", "OR24", expect="none")

    def refund(self, lines: Iterable[RefundLine], order_tax_mode: str | None = None) -> list[RefundResult]:
        """OR28: refund order lines; never retried blindly (a refund must happen once)."""
        refunds = [line.to_api() for line in lines]
        if not refunds:
            raise ValueError("OR28: no refund lines")
        body: dict[str, Any] = {"refunds": refunds}
        if order_tax_mode:
            body["order_tax_mode"] = order_tax_mode
        answer = self._call("PUT", "/api/orders/refund", "OR28", json_body=body) or {}
        return [RefundResult.from_api(r) for r in answer.get("refunds") or [] if isinstance(r, dict)]

    def cancel_order(self, order_id: str) -> None:
        """OR29: cancel a whole order (only when ``can_cancel``)."""
        self._call("PUT", f"/api/orders/{_seg(order_id)}/cancel", "OR29", expect="none")

    # Offers, stock, prices ------------------------------------------------------------
    def iter_offers(self, *, offer_state_codes: str | None = None, sku: str | None = None) -> Iterator[Offer]:
        """OF21: the shop's offers. For a consistent full snapshot prefer :meth:`export_offers`."""
        params = {"offer_state_codes": offer_state_codes, "sku": sku}
        for raw in self._iter_offset("OF21", "/api/offers", params, "offers", id_of=lambda o: str(o.get("offer_id"))):
            yield Offer.from_api(raw)

    def offers_count(self) -> int:
        """OF21 with ``max=1``: the number of offers (a cheap call with no published ceiling)."""
        body = self._call("GET", "/api/offers", "OF21", params={"offset": 0, "max": 1}) or {}
        return int(body.get("total_count") or 0)

    def import_offers(self, offers: list[dict]) -> str:
        """OF24: create/update/delete offers. Fields not sent are reset: not for stock updates."""
        if not offers:
            raise ValueError("OF24: no offers")
        answer = self._call("POST", "/api/offers", "OF24", json_body={"offers": offers})
        return self._import_id(answer, "OF24")

    def offer_import_status(self, import_id: str) -> ImportStatus:
        """OF02 (at most once a minute): where an OF24 import stands."""
        return ImportStatus.from_api(self._call("GET", f"/api/offers/imports/{_seg(import_id)}", "OF02") or {})

    def offer_error_report(self, import_id: str) -> list[ErrorReportLine]:
        """OF03 (at most once a minute): the refused lines of an OF24 import and why."""
        text = self._call("GET", f"/api/offers/imports/{_seg(import_id)}/error_report", "OF03", expect="text")
        return parse_offer_error_report(text or "")

    def import_products(self, product_file: bytes, filename: str = "products.csv") -> str:
        """P41 (at most every 15 minutes): a product file in the operator's attribute codes."""
        if not product_file:
            raise ValueError("P41: empty product file")
        answer = self._call("POST", "/api/products/imports", "P41",
                            files={"file": (filename, product_file, "text/csv")})
        return self._import_id(answer, "P41")

    def product_import_status(self, import_id: str) -> ProductImportStatus:
        """P42 (at most once a minute)."""
        return ProductImportStatus.from_api(
            self._call("GET", f"/api/products/imports/{_seg(import_id)}", "P42") or {}
        )

    def product_error_report(self, import_id: str) -> list[dict[str, str]]:
        """P44: the products the operator did not integrate, each with its columns and the reason."""
        text = self._call("GET", f"/api/products/imports/{_seg(import_id)}/error_report", "P44", expect="text")
        return parse_csv_report(text or "")

    def product_integration_report(self, import_id: str) -> list[dict[str, str]]:
        """P45: the products the operator integrated."""
        text = self._call("GET", f"/api/products/imports/{_seg(import_id)}/new_product_report", "P45",
                          expect="text")
        return parse_csv_report(text or "")

    def import_stock(self, lines: Iterable[StockLine]) -> str:
        """STO01: upload one stock file (absolute quantities); returns the import id."""
        payload = build_stock_csv(lines)
        answer = self._call(
            "POST", "/api/offers/stock/imports", "STO01",
            files={"file": ("stock.csv", payload, "text/csv")},
        )
        return self._import_id(answer, "STO01")

    def stock_import_status(self, import_id: str) -> ImportStatus:
        """STO02 (at most every 15 s)."""
        return ImportStatus.from_api(
            self._call("GET", f"/api/offers/stock/imports/{_seg(import_id)}/status", "STO02") or {}
        )

    def stock_error_report(self, import_id: str) -> list[ErrorReportLine]:
        """STO03: the rejected lines of a stock import and why."""
        text = self._call("GET", f"/api/offers/stock/imports/{_seg(import_id)}/error_report", "STO03", expect="text")
        return parse_error_report(text or "")

    def import_prices(self, lines: Iterable[PriceLine]) -> str:
        """PRI01: upload one price file; returns the import id."""
        payload = build_price_csv(lines)
        answer = self._call(
            "POST", "/api/offers/pricing/imports", "PRI01",
            files={"file": ("prices.csv", payload, "text/csv")},
        )
        return self._import_id(answer, "PRI01")

    def iter_price_imports(
        self, *, import_ids: Iterable[str] | None = None, status: str | None = None, limit: int = 100
    ) -> Iterator[ImportStatus]:
        """PRI02: price imports, newest first (seek pagination)."""
        params = {"import_id": list(import_ids) if import_ids else None, "status": status}
        for raw in self._iter_seek("PRI02", "/api/offers/pricing/imports", params,
                                   id_of=lambda d: str(d.get("import_id")), limit=limit):
            yield ImportStatus.from_api(raw)

    def price_import_status(self, import_id: str) -> ImportStatus:
        """PRI02 filtered on one import."""
        for status in self.iter_price_imports(import_ids=[import_id]):
            if status.import_id == str(import_id):
                return status
        raise LookupError(f"PRI02: price import {import_id!r} not found")

    def price_error_report(self, import_id: str) -> list[ErrorReportLine]:
        """PRI03: the rejected lines of a price import and why."""
        text = self._call("GET", f"/api/offers/pricing/imports/{_seg(import_id)}/error_report", "PRI03", expect="text")
        return parse_error_report(text or "")

    def export_offers(
        self, *, last_request_date: datetime | None = None, include_inactive: bool = False
    ) -> list[dict[str, str]]:
        """OF51: every offer (full, once a day) or those changed since ``last_request_date``
        (differential, once a minute), as CSV rows keyed by column name."""
        variant = "differential" if last_request_date else "full"
        text = self._call(
            "GET", "/api/offers/export", "OF51",
            params={"last_request_date": last_request_date, "include_inactive_offers": include_inactive or None},
            expect="text", variant=variant,
        ) or ""
        text = text.lstrip("\ufeff")
        if not text.strip():
            return []
        return list(csv.DictReader(io.StringIO(text), delimiter=";"))

    # Shipping, accounting, messages ---------------------------------------------------
    def carriers(self) -> list[Carrier]:
        """SH21 (at most once a day): carrier codes accepted by OR23."""
        answer = self._call("GET", "/api/shipping/carriers", "SH21") or {}
        return [Carrier.from_api(c) for c in answer.get("carriers") or [] if isinstance(c, dict)]

    def iter_transactions(
        self,
        *,
        seller_billing_cycle_id: Iterable[str] | None = None,
        date_created_from: datetime | None = None,
        date_created_to: datetime | None = None,
        last_updated_from: datetime | None = None,
        transaction_type: Iterable[str] | None = None,
        payment_state: Iterable[str] | None = None,
        order_id: Iterable[str] | None = None,
        limit: int = 1000,
    ) -> Iterator[Transaction]:
        """TL02 transaction lines (seek pagination; 20 calls a minute, 60 an hour at most)."""
        if not 1 <= limit <= 2000:
            raise ValueError("TL02 limit must be between 1 and 2000")
        params = {
            "seller_billing_cycle_id": _list_or_none(seller_billing_cycle_id),
            "date_created_from": date_created_from,
            "date_created_to": date_created_to,
            "last_updated_from": last_updated_from,
            "transaction_type": _list_or_none(transaction_type),
            "payment_state": _list_or_none(payment_state),
            "order_id": _list_or_none(order_id),
        }
        # amounts as Decimal from the JSON text: the reconciliation sums them to the cent
        for raw in self._iter_seek("TL02", "/api/sellerpayment/transactions_logs", params,
                                   id_of=lambda d: str(d.get("id")), limit=limit, expect="exact_json"):
            yield Transaction.from_api(raw)

    def iter_accounting_documents(
        self,
        *,
        start_date: datetime | None = None,
        end_date: datetime | None = None,
        seller_billing_cycle_id: Iterable[str] | None = None,
        document_type: str | None = None,
    ) -> Iterator[AccountingDocument]:
        """IV01 accounting documents (once a day, plus as many pages as there are)."""
        params = {
            "start_date": start_date,
            "end_date": end_date,
            "seller_billing_cycle_id": _list_or_none(seller_billing_cycle_id),
            "type": document_type,
        }
        for raw in self._iter_offset(
            "IV01", "/api/invoices", params, "invoices",
            id_of=lambda d: str(d.get("id") or d.get("invoice_id")),
            sort_key=lambda d: (parse_datetime(d.get("date_created")) or datetime.min.replace(tzinfo=timezone.utc),
                                str(d.get("id") or d.get("invoice_id"))),
            expect="exact_json",  # totals as Decimal: compared with the payout's lines to the cent
        ):
            yield AccountingDocument.from_api(raw)

    # Asynchronous exports ---------------------------------------------------------------
    def request_transaction_export(
        self,
        *,
        date_created_from: datetime | None = None,
        date_created_to: datetime | None = None,
        last_updated_from: datetime | None = None,
        seller_billing_cycle_id: Iterable[str] | None = None,
        transaction_type: Iterable[str] | None = None,
        order_id: Iterable[str] | None = None,
        items_per_chunk: int | None = None,
        export_format: str = "JSON",
    ) -> str:
        """TL03 (once a day at most): export the transaction lines matching the filters; returns
        the tracking id for TL04. Not retried after it may have landed: a second request would
        spend the day's only call. ``export_format`` NDJSON lets :meth:`iter_export_file` parse
        the chunks one line at a time."""
        body = {
            "date_created_from": _iso(date_created_from), "date_created_to": _iso(date_created_to),
            "last_updated_from": _iso(last_updated_from),
            "seller_billing_cycle_id": _list_or_none(seller_billing_cycle_id),
            "transaction_type": _list_or_none(transaction_type), "order_id": _list_or_none(order_id),
            "items_per_chunk": items_per_chunk, "format": export_format,
        }
        answer = self._call("POST", "/api/sellerpayment/transactions_logs/async", "TL03",
                            json_body={k: v for k, v in body.items() if v is not None}, idempotent=False) or {}
        return self._tracking_id(answer, "TL03")

    def transaction_export_status(self, tracking_id: str) -> ExportStatus:
        """TL04 (every 10 s at most): PENDING, then COMPLETED with the URL of every chunk."""
        path = f"/api/sellerpayment/transactions_logs/async/status/{_seg(tracking_id)}"
        return ExportStatus.from_api(self._call("GET", path, "TL04") or {})

    def request_offer_export(self, *, last_request_date: datetime | None = None,
                             items_per_chunk: int = 100_000) -> str:
        """OF52: every offer, inactive ones too (full, once a day), or every offer changed since
        ``last_request_date`` with deleted ones (differential, once a minute), as JSON chunks;
        returns the tracking id for OF53."""
        if not 10_000 <= items_per_chunk <= 1_000_000:
            raise ValueError("OF52 items_per_chunk must be between 10000 and 1000000")
        body: dict[str, Any] = {"export_type": "application/json", "items_per_chunk": items_per_chunk}
        if last_request_date is not None:
            body["last_request_date"] = _iso(last_request_date)
        else:
            body["include_inactive_offers"] = True  # offers at zero are offers too: not "missing in Mirakl"
        variant = "differential" if last_request_date is not None else "full"
        answer = self._call("POST", "/api/offers/export/async", "OF52", json_body=body, idempotent=False,
                            variant=variant) or {}
        return self._tracking_id(answer, "OF52")

    def offer_export_status(self, tracking_id: str) -> ExportStatus:
        """OF53 (every 10 s at most): PENDING, then COMPLETED with the URL of every chunk (OF54)."""
        return ExportStatus.from_api(
            self._call("GET", f"/api/offers/export/async/status/{_seg(tracking_id)}", "OF53") or {})

    def request_order_export(self, *, start_update_date: datetime, end_update_date: datetime,
                             states: Iterable[str] | None = None, items_per_chunk: int = 100_000) -> str:
        """OR13 differential (every 5 minutes at most): the orders updated in the window, whatever
        their number, as JSON chunks (OR15); returns the tracking id for OR14."""
        body: dict[str, Any] = {"start_update_date": _iso(start_update_date),
                                "end_update_date": _iso(end_update_date), "items_per_chunk": items_per_chunk}
        if states:
            body["order_state_codes"] = list(states)
        answer = self._call("POST", "/api/orders/async-export", "OR13", json_body=body, idempotent=False,
                            variant="differential") or {}
        return self._tracking_id(answer, "OR13")

    def order_export_status(self, tracking_id: str) -> ExportStatus:
        """OR14 (every 2 s at most): PENDING, then COMPLETED with the URL of every chunk (OR15)."""
        return ExportStatus.from_api(
            self._call("GET", f"/api/orders/async-export/status/{_seg(tracking_id)}", "OR14") or {})

    def iter_order_export(self, url: str) -> Iterator[Order]:
        """OR15: the orders of one chunk of a completed order export."""
        for raw in self.iter_export_file(url, "OR15"):
            yield Order.from_api(raw)

    def iter_export_file(self, url: str, operation: str, *, exact: bool = False) -> Iterator[dict]:
        """TL05 / OF54: the items of one chunk of a completed export, from the URL its status gave;
        with ``exact``, numbers with decimals as Decimal (money that is summed never passes through float).

        The URL must be on this client's Mirakl host: the API key is sent with the download and
        must never go anywhere else.
        """
        target, base = urlsplit(url), urlsplit(self.base_url)
        if (target.scheme, target.netloc) != (base.scheme, base.netloc):
            raise ValueError(f"{operation}: export file {target.scheme}://{target.netloc}/... is not on the "
                             f"Mirakl host {base.netloc}; refusing to send the API key there")
        path = target.path + (f"?{target.query}" if target.query else "")
        text = self._call("GET", path, operation, expect="text") or ""
        stripped = text.lstrip("\ufeff").strip()
        if not stripped:
            return
        parse_float = Decimal if exact else float
        try:
            data = json.loads(stripped, parse_float=parse_float)
        except ValueError:  # NDJSON: one item a line, parsed as read (a chunk's items are never all held)
            yield from _ndjson_items(stripped, self.service, operation, parse_float)
            return
        if isinstance(data, dict) and isinstance(data.get("orders"), list):
            data = {"data": data["orders"]}  # OR15's file: {"orders": [...]}
        if isinstance(data, dict) and "data" not in data:
            data = [data]  # NDJSON of a single item
        items = data.get("data") if isinstance(data, dict) else data
        yield from (i for i in items or [] if isinstance(i, dict))

    def _tracking_id(self, answer: Any, operation: str) -> str:
        value = answer.get("tracking_id") if isinstance(answer, dict) else None
        if value in (None, ""):
            raise UncertainWriteError(self.service, operation, "the answer carries no tracking_id", 200)
        return str(value)

    def iter_order_threads(self, order_id: str, *, with_messages: bool = True, limit: int = 50) -> Iterator[MessageThread]:
        """M11: message threads on one order (e.g. the customer's message)."""
        params = {"entity_type": "MMP_ORDER", "entity_id": [order_id], "with_messages": with_messages}
        for raw in self._iter_seek("M11", "/api/inbox/threads", params,
                                   id_of=lambda d: str(d.get("id")), limit=limit):
            yield MessageThread.from_api(raw)


def _ndjson_items(text: str, service: str, operation: str, parse_float: Callable[[str], Any] = float) -> Iterator[dict]:
    # by offsets, not io.StringIO (which copies the text at four bytes a character)
    start, number = 0, 0
    while start < len(text):
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        line, start, number = text[start:end], end + 1, number + 1
        if not line.strip():
            continue
        try:
            item = json.loads(line, parse_float=parse_float)
        except ValueError:
            raise MalformedResponseError(service, operation, 200,
                                         f"line {number} is not JSON ({len(text)} characters, not JSON nor NDJSON)"
                                         ) from None
        if isinstance(item, dict):
            yield item


def _date_header(headers: Mapping[str, str]) -> datetime | None:
    try:
        value = email.utils.parsedate_to_datetime(headers.get("Date") or "")
    except (TypeError, ValueError):
        return None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def _list_or_none(values: Iterable[str] | None) -> list[str] | None:
    return list(values) if values else None


def _seg(value: str) -> str:
    """A path segment: ids are opaque strings and must not break the URL."""
    text = str(value)
    if not text:
        raise ValueError("empty id in a Mirakl URL")
    return quote(text, safe="")
