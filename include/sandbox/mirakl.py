"""The simulated Mirakl seller API: routes, authentication, error format and admin routes.

Routes carry the spec's operationIds (A01, OR11, ...) as their operation names, so faults
and call counts are expressed the way Mirakl documents its calls. Business rules live in
:mod:`include.sandbox.mirakl_data`; this module turns HTTP into calls on that store.
"""
from __future__ import annotations

from dataclasses import asdict, fields
from datetime import datetime
from typing import Any

from include.sandbox import spec
from include.sandbox.core import ApiError, Request, Response, Route, Service, iso, parse_iso
from include.sandbox.mirakl_data import CARRIERS, ORDER_STATES, MiraklSettings, MiraklStore

MAX_PAGE = 100
DEFAULT_PAGE = 10
MAX_SEEK_LIMIT = 2000
DEFAULT_SEEK_LIMIT = 10
ORDER_ACTIONS = ("debit", "receive", "close")
TL05_PATH = "/api/sellerpayment/transactions_logs/export/async/file"
OF54_PATH = "/api/offers/export/async/file"
OR15_PATH = "/api/orders/async-export/file"
DOWNLOADS = ("TL05", "OF54", "OR15")  # files at the URL a status call gives: the spec routes them nowhere


class MiraklService(Service):
    """The Mirakl seller API of one shop, served by :class:`~include.sandbox.core.Sandbox`."""

    name = "mirakl"

    def __init__(self, sandbox: Any):
        super().__init__(sandbox)
        self.store = MiraklStore(seed=getattr(sandbox, "seed", 42))
        self._admin_routes = self._build_admin_routes()
        for method, template, operation, handler in (
            ("GET", "/api/account", "A01", self._a01),
            ("GET", "/api/orders", "OR11", self._or11),
            ("PUT", "/api/orders/refund", "OR28", self._or28),
            ("POST", "/api/orders/async-export", "OR13", self._or13),
            ("GET", "/api/orders/async-export/status/{tracking_id}", "OR14", self._or14),
            ("GET", OR15_PATH + "/{tracking_id}", "OR15", self._or15),
            ("GET", "/api/orders/{order_id}", "OR12", self._or12),
            ("PUT", "/api/orders/{order_id}/accept", "OR21", self._or21),
            ("PUT", "/api/orders/{order_id}/tracking", "OR23", self._or23),
            ("PUT", "/api/orders/{order_id}/ship", "OR24", self._or24),
            ("PUT", "/api/orders/{order_id}/cancel", "OR29", self._or29),
            ("GET", "/api/offers", "OF21", self._of21),
            ("POST", "/api/offers", "OF24", self._of24),
            ("GET", "/api/offers/imports/{import_id}", "OF02", self._of02),
            ("GET", "/api/offers/imports/{import_id}/error_report", "OF03", self._of03),
            ("POST", "/api/products/imports", "P41", self._p41),
            ("GET", "/api/products/imports/{import_id}", "P42", self._p42),
            ("GET", "/api/products/imports/{import_id}/error_report", "P44", self._p44),
            ("GET", "/api/products/imports/{import_id}/new_product_report", "P45", self._p45),
            ("GET", "/api/offers/export", "OF51", self._of51),
            ("POST", "/api/offers/export/async", "OF52", self._of52),
            ("GET", "/api/offers/export/async/status/{tracking_id}", "OF53", self._of53),
            ("GET", OF54_PATH + "/{tracking_id}", "OF54", self._of54),
            ("POST", "/api/offers/stock/imports", "STO01", self._sto01),
            ("GET", "/api/offers/stock/imports/{import_id}/status", "STO02", self._sto02),
            ("GET", "/api/offers/stock/imports/{import_id}/error_report", "STO03", self._sto03),
            ("POST", "/api/offers/pricing/imports", "PRI01", self._pri01),
            ("GET", "/api/offers/pricing/imports", "PRI02", self._pri02),
            ("GET", "/api/offers/pricing/imports/{import_id}/error_report", "PRI03", self._pri03),
            ("GET", "/api/shipping/carriers", "SH21", self._sh21),
            ("GET", "/api/sellerpayment/transactions_logs", "TL02", self._tl02),
            ("POST", "/api/sellerpayment/transactions_logs/async", "TL03", self._tl03),
            ("GET", "/api/sellerpayment/transactions_logs/async/status/{tracking_id}", "TL04", self._tl04),
            # TL05's URL is whatever TL04 answers (the spec has only a placeholder path): this is ours
            ("GET", TL05_PATH + "/{tracking_id}", "TL05", self._tl05),
            ("GET", "/api/invoices", "IV01", self._iv01),
            ("GET", "/api/inbox/threads", "M11", self._m11),
        ):
            self.add_route(method, template, operation, handler)

    # Identity -------------------------------------------------------------------------------
    @property
    def api_key(self) -> str:
        return self.store.settings.api_key

    @api_key.setter
    def api_key(self, value: str) -> None:
        self.store.settings.api_key = value

    @property
    def shop_id(self) -> int:
        return self.store.settings.shop_id

    @shop_id.setter
    def shop_id(self, value: int) -> None:
        self.store.settings.shop_id = int(value)

    def _now(self) -> datetime:
        return self.sandbox.clock.now()

    # Service hooks ----------------------------------------------------------------------------
    def authenticate(self, request: Request) -> None:
        key = request.headers.get("Authorization")
        if key and key.startswith("Bearer ") and hasattr(self.sandbox, "auth"):
            # a token of the sandbox's authentication system acts on the stores it was granted for
            shops = self.sandbox.auth.bearer_shops(key[len("Bearer "):])
            asked = request.arg("shop_id")
            if asked is None and len(shops) > 1:
                raise ApiError(400, "shop_id is required: this token gives access to several shops")
            if asked is None and shops != [self.shop_id]:
                raise ApiError(403, f"Access denied: the token gives access to shop {shops[0] if shops else 'none'}, "
                                    "not this one")
            if asked is not None and asked.strip().isdigit() and int(asked) not in shops:
                raise ApiError(403, f"Access denied: the token has no access to shop {asked}")
        elif not key or key != self.api_key:
            raise ApiError(401, "Unauthorized")
        shop = request.arg("shop_id")
        if shop is not None:
            try:
                requested = int(shop)
            except ValueError as error:
                raise ApiError(400, f"Invalid shop_id {shop!r}: must be an integer") from error
            if requested != self.shop_id:
                raise ApiError(403, f"Access denied: your API key has no access to shop {requested}")

    def render_error(self, error: ApiError) -> Response:
        body: dict[str, Any] = {"message": error.message, "status": error.status}
        if error.code:
            body["errors"] = [{"code": error.code, "message": error.message}]
        return Response(error.status, body)

    def validate_request(self, request: Request, route: Route) -> list[str]:
        if route.operation in DOWNLOADS:
            return spec.validate_download(route.operation, request.query, dict(request.headers.items()))
        return spec.validate_request(
            request.method, request.path, request.query, dict(request.headers.items()), request.body,
            request.headers.get("Content-Type") or "application/json",
        )

    def call_variant(self, request: Request, operation: str) -> str | None:
        if operation == "OF51":
            return "differential" if request.arg("last_request_date") else "full"
        if operation in ("OF52", "OR13"):
            try:
                body = request.json() or {}
            except ValueError:
                return None
            dated = isinstance(body, dict) and (body.get("last_request_date") or body.get("start_update_date"))
            return "differential" if dated else "full"
        return None

    def tick(self, now: datetime) -> None:
        self.store.tick(now)

    def to_state(self) -> dict:
        return self.store.to_state()

    def load_state(self, state: dict) -> None:
        self.store.load_state(state)

    # Python API for tests, scenarios and the admin routes (call under sandbox.lock) ------------
    def add_offer(self, shop_sku: str, price: float, quantity: int, product_id: str | None = None,
                  product_id_type: str = "SHOP_SKU", **fields_: Any) -> dict:
        return self.store.offer_json(self.store.add_offer(self._now(), shop_sku, price, quantity, product_id,
                                                          product_id_type, **fields_))

    def add_product(self, reference: str, reference_type: str = "EAN", title: str | None = None) -> dict:
        """Make a product known to the operator catalogue (as if another seller had created it)."""
        return dict(self.store.register_product(reference_type, reference, title=title))

    def offer(self, shop_sku: str) -> dict | None:
        found = self.store.live_offer(shop_sku)
        return self.store.offer_json(found) if found else None

    def offers(self) -> list[dict]:
        return [self.store.offer_json(o) for o in self.store.offers.values() if not o["deleted"]]

    def override_order_json(self, order_id: str, fields_: dict | None = None, lines: dict[int, dict] | None = None) -> None:
        """Show an order differently from its state (e.g. ``{"currency_iso_code": 978}``; lines by index)."""
        order = self.store.get_order(order_id)
        order["json_override"] = {**(order.get("json_override") or {}), **(fields_ or {})}
        for index, override in (lines or {}).items():
            line = order["lines"][index]
            line["json_override"] = {**(line.get("json_override") or {}), **override}
        order["last_updated"] = iso(self._now())

    def place_order(self, lines: list[dict], customer: dict | None = None, customer_message: str | None = None,
                    acceptance_delay_s: float = 86400, debit_delay_s: float = 600, shipping_price: float = 4.99,
                    order_id: str | None = None) -> dict:
        order = self.store.place_order(self._now(), lines, customer, customer_message, acceptance_delay_s,
                                       debit_delay_s, shipping_price, order_id)
        return self.store.order_json(order)

    def order(self, order_id: str) -> dict:
        return self.store.order_json(self.store.get_order(order_id))

    def debit(self, order_id: str) -> dict:
        self.store.debit(self._now(), order_id)
        return self.order(order_id)

    def receive(self, order_id: str) -> dict:
        self.store.receive(self._now(), order_id)
        return self.order(order_id)

    def close(self, order_id: str) -> dict:
        self.store.close(self._now(), order_id)
        return self.order(order_id)

    def close_billing_cycle(self) -> dict:
        return self.store.close_billing_cycle(self._now())

    def configure(self, **settings: Any) -> dict:
        """Change settings (api_key, commission_rate, import_delay_s, ...); returns them without the key."""
        known = {f.name: f.type for f in fields(MiraklSettings)}
        for name, value in settings.items():
            if name not in known:
                raise ApiError(400, f"Unknown Mirakl setting {name!r}; known: {', '.join(sorted(known))}")
            current = getattr(self.store.settings, name)
            setattr(self.store.settings, name, type(current)(value))
        return {k: v for k, v in asdict(self.store.settings).items() if k != "api_key"}

    # Parameters ---------------------------------------------------------------------------------
    @staticmethod
    def _int(request: Request, name: str, default: int, low: int = 0, high: int | None = None) -> int:
        raw = request.arg(name)
        if raw in (None, ""):
            return default
        try:
            value = int(raw)
        except ValueError as error:
            raise ApiError(400, f"Invalid {name} {raw!r}: must be an integer") from error
        if value < low:
            raise ApiError(400, f"Invalid {name} {value}: must be at least {low}")
        return min(value, high) if high is not None else value

    @staticmethod
    def _date(request: Request, name: str) -> str | None:
        raw = request.arg(name)
        if not raw:
            return None
        try:
            return iso(parse_iso(raw))
        except ValueError as error:
            raise ApiError(400, f"Invalid {name} {raw!r}: expected an ISO 8601 date-time") from error

    @staticmethod
    def _bool(request: Request, name: str, default: bool) -> bool:
        raw = request.arg(name)
        if raw in (None, ""):
            return default
        if raw.lower() not in ("true", "false"):
            raise ApiError(400, f"Invalid {name} {raw!r}: must be true or false")
        return raw.lower() == "true"

    def _offset_page(self, request: Request, items: list) -> tuple[list, int]:
        if not self._bool(request, "paginate", True):
            return items, len(items)
        offset = self._int(request, "offset", 0)
        limit = self._int(request, "max", DEFAULT_PAGE, low=1, high=MAX_PAGE)
        return items[offset:offset + limit], len(items)

    @staticmethod
    def _descending(request: Request, default: str) -> bool:
        order = (request.arg("order") or default).lower()
        if order not in ("asc", "desc"):
            raise ApiError(400, f"Invalid order {order!r}: use asc or desc")
        return order == "desc"

    def _body(self, request: Request) -> dict:
        try:
            body = request.json()
        except ValueError as error:
            raise ApiError(400, f"Invalid JSON body: {error}") from error
        if not isinstance(body, dict):
            raise ApiError(400, "The request body must be a JSON object")
        return body

    # Account, carriers ----------------------------------------------------------------------------
    def _a01(self, request: Request) -> Response:
        settings = self.store.settings
        account = spec.response_example("A01")
        for unrelated in ("banner", "logo", "closed_from", "closed_to", "kyc", "suspension_type",
                          "recycling_policy", "producer_identifiers", "grade", "approval_delay", "approval_rate"):
            account.pop(unrelated, None)
        contact = {"city": "Lyon", "civility": "Mme", "country": "FRA", "email": "shop@example.com",
                   "firstname": "Camille", "lastname": "Martin", "phone": "+33 4 00 00 00 00",
                   "street1": "1 quai du Rhône", "zip_code": "69001"}
        account.update(
            shop_id=settings.shop_id, shop_name=settings.shop_name, shop_state="OPEN",
            currency_iso_code=settings.currency, channels=[], domains=["PRODUCT"], description="Sandbox shop",
            date_created="2024-01-01T00:00:00Z", last_updated_date="2024-01-01T00:00:00Z",
            offers_count=sum(1 for o in self.store.offers.values() if not o["deleted"]),
            orders_count=len(self.store.orders), evaluations_count=0, contact_informations=contact,
            billing_info={"bank_name": "Sandbox Bank", "iban": "FR7630006000011234567890189", "bic": "AGRIFRPPXXX",
                          "owner": settings.shop_name},
            shipping_types=["STD"], shipping_zones=["DOM1"], shipping_country="FRA",
            pro_details={"corporate_name": settings.shop_name, "identification_number": "12345678900011",
                         "tax_identification_number": "FR00123456789"},
            payment_details=self._balances(),
            shippings=[{"additional_fields": [], "shipping_free_amount": 0, "shipping_type_code": "STD",
                        "shipping_type_label": "Standard", "shipping_type_standard_code": "CU_ADD-STD",
                        "shipping_zone_code": "DOM1", "shipping_zone_label": "Domestic 1"}],
            shop_additional_fields=[], return_policy="Returns accepted within 14 days.",
        )
        account["default_billing_information"]["registration_address"] = {
            "city": "Lyon", "country_iso_code": "FRA", "street_1": "1 quai du Rhône", "zip_code": "69001"}
        return Response(200, account)

    def _balances(self) -> dict:
        payable = round(sum(t["amount"] for t in self.store.transactions if t["payment_state"] == "PAYABLE"), 2)
        paid = round(sum(t["amount"] for t in self.store.transactions if t["payment_state"] == "PAID"), 2)
        return {"paid_balance": paid, "payable_balance": payable, "pending_balance": 0, "reserve_balance": 0,
                "reserve_target": 0, "sub_balances": [{"paid": paid, "pay_out_psp_code": "NOT_SPECIFIED",
                                                       "payable": payable, "pending": 0}]}

    def _sh21(self, request: Request) -> Response:
        return Response(200, {"carriers": [dict(c) for c in CARRIERS]})

    # Orders -----------------------------------------------------------------------------------------
    def _or11(self, request: Request) -> Response:
        states = request.args("order_state_codes")
        unknown = [s for s in states if s not in ORDER_STATES]
        if unknown:
            raise ApiError(400, f"Invalid order_state_codes {', '.join(unknown)}")
        sort = request.arg("sort") or "dateCreated"
        if sort != "dateCreated":
            raise ApiError(400, f"Invalid sort {sort!r}: OR11 sorts by dateCreated only")
        found = self.store.query_orders(
            request.args("order_ids"), states, self._date(request, "start_date"), self._date(request, "end_date"),
            self._date(request, "start_update_date"), self._date(request, "end_update_date"),
        )
        if self._descending(request, "asc"):
            found.reverse()
        page, total = self._offset_page(request, found)
        return Response(200, {"orders": [self.store.order_json(o) for o in page], "total_count": total})

    def _or13(self, request: Request) -> Response:
        record = self.store.export_orders_async(self._now(), self._body(request))
        return Response(200, {"tracking_id": record["tracking_id"]})

    def _or14(self, request: Request) -> Response:
        record = self.store.export_record("orders", request.path_params["tracking_id"])
        url = self._file_url(request, f"{OR15_PATH}/{record['tracking_id']}")
        return Response(200, self.store.export_status_json(self._now(), record, url))

    def _or15(self, request: Request) -> Response:
        record = self.store.export_record("orders", request.path_params["tracking_id"])
        content, content_type = self.store.export_chunk(self._now(), record, request.arg("file"))
        return Response(200, content, content_type=content_type)

    def _or12(self, request: Request) -> Response:
        order = self.store.get_order(request.path_params["order_id"])
        return Response(200, self.store.order_json(order, single=True))

    def _or21(self, request: Request) -> Response:
        body = self._body(request)
        if "order_lines" not in body:
            raise ApiError(400, "order_lines is required", "VALIDATION_ERROR")
        self.store.accept(self._now(), request.path_params["order_id"], body["order_lines"])
        return Response(204)

    def _or23(self, request: Request) -> Response:
        self.store.set_tracking(self._now(), request.path_params["order_id"], self._body(request))
        return Response(204)

    def _or24(self, request: Request) -> Response:
        self.store.ship(self._now(), request.path_params["order_id"])
        return Response(204)

    def _or28(self, request: Request) -> Response:
        body = self._body(request)
        refunds = self.store.refund(self._now(), body.get("refunds"))
        return Response(200, {"order_tax_mode": body.get("order_tax_mode") or "TAX_INCLUDED", "refunds": refunds})

    def _or29(self, request: Request) -> Response:
        self.store.cancel(self._now(), request.path_params["order_id"])
        return Response(204)

    def _m11(self, request: Request) -> Response:
        ids = request.args("entity_id")
        threads = self.store.threads(request.arg("entity_type"), ids, self._bool(request, "with_messages", False),
                                     self._date(request, "updated_since"))
        limit = self._int(request, "limit", 50, low=1, high=100)
        start = int(request.arg("page_token") or 0) if (request.arg("page_token") or "0").isdigit() else 0
        body: dict[str, Any] = {"data": threads[start:start + limit]}
        if start + limit < len(threads):
            body["next_page_token"] = str(start + limit)
        return Response(200, body)

    # Offers -------------------------------------------------------------------------------------------
    def _of21(self, request: Request) -> Response:
        paginate = self._bool(request, "paginate", True)
        offset = self._int(request, "offset", 0)
        limit = self._int(request, "max", DEFAULT_PAGE, low=1, high=MAX_PAGE) if paginate else None
        offers, total = self.store.offers_page(
            offset if paginate else 0, limit, sort=request.arg("sort") or "totalPrice",
            descending=self._descending(request, "asc"), sku=request.arg("sku"),
            product_id=request.arg("product_id"), state_codes=request.args("offer_state_codes"),
        )
        return Response(200, {"offers": [self.store.offer_json(o) for o in offers], "total_count": total})

    def _of24(self, request: Request) -> Response:
        body = self._body(request)
        import_id = self.store.import_offers_json(self._now(), body.get("offers"))
        return Response(201, {"import_id": import_id})

    def _of02(self, request: Request) -> Response:
        record = self.store.get_import("offer", request.path_params["import_id"])
        return Response(200, self.store.offer_import_status_json(record))

    def _of03(self, request: Request) -> Response:
        record = self.store.get_import("offer", request.path_params["import_id"])
        return Response(200, self.store.offer_error_report_csv(record), content_type="application/octet-stream")

    # Products ------------------------------------------------------------------------------------------
    def _p41(self, request: Request) -> Response:
        record = self.store.create_product_import(self._now(), request.multipart_file("file"))
        return Response(201, {"import_id": int(record["import_id"])})

    def _p42(self, request: Request) -> Response:
        record = self.store.poll_product_import(self._now(), request.path_params["import_id"])
        return Response(200, self.store.product_import_status_json(record))

    def _p44(self, request: Request) -> Response:
        record = self.store.get_product_import(request.path_params["import_id"])
        return Response(200, self.store.product_report_csv(record, "errors"), content_type="application/octet-stream")

    def _p45(self, request: Request) -> Response:
        record = self.store.get_product_import(request.path_params["import_id"])
        return Response(200, self.store.product_report_csv(record, "added"), content_type="application/octet-stream")

    def _of51(self, request: Request) -> Response:
        csv_text = self.store.export_csv(self._date(request, "last_request_date"),
                                         self._bool(request, "include_inactive_offers", False))
        return Response(200, csv_text, content_type="text/csv; charset=UTF-8")

    def _of52(self, request: Request) -> Response:
        record = self.store.export_offers_async(self._now(), self._body(request))
        return Response(200, {"tracking_id": record["tracking_id"]})

    def _of53(self, request: Request) -> Response:
        record = self.store.export_record("offers", request.path_params["tracking_id"])
        url = self._file_url(request, f"{OF54_PATH}/{record['tracking_id']}")
        return Response(200, self.store.export_status_json(self._now(), record, url))

    def _of54(self, request: Request) -> Response:
        record = self.store.export_record("offers", request.path_params["tracking_id"])
        content, content_type = self.store.export_chunk(self._now(), record, request.arg("file"))
        return Response(200, content, content_type=content_type)

    # Imports --------------------------------------------------------------------------------------------
    def _create_import(self, request: Request, kind: str, status_path: str) -> Response:
        record = self.store.create_import(self._now(), kind, request.multipart_file("file"))
        location = status_path.format(import_id=record["import_id"])
        return Response(201, {"import_id": record["import_id"]}, headers={"Location": location})

    def _sto01(self, request: Request) -> Response:
        return self._create_import(request, "stock", "/api/offers/stock/imports/{import_id}/status")

    def _sto02(self, request: Request) -> Response:
        record = self.store.poll_import(self._now(), "stock", request.path_params["import_id"])
        return Response(200, self.store.import_status_json(record))

    def _sto03(self, request: Request) -> Response:
        record = self.store.get_import("stock", request.path_params["import_id"])
        return Response(200, self.store.error_report_csv(record), content_type="text/csv; charset=UTF-8")

    def _pri01(self, request: Request) -> Response:
        return self._create_import(request, "price", "/api/offers/pricing/imports?import_id={import_id}")

    def _pri02(self, request: Request) -> Response:
        ids = request.args("import_id")
        now = self._now()
        for import_id in ids:  # asking for an import's status is what moves it along
            if import_id in self.store.imports and self.store.imports[import_id]["kind"] == "price":
                self.store.poll_import(now, "price", import_id)
        status = request.arg("status")
        rows = self.store.price_imports(ids, status)
        limit = self._int(request, "limit", DEFAULT_SEEK_LIMIT, low=1, high=MAX_SEEK_LIMIT)
        token = request.arg("page_token")
        start = int(token) if token and token.isdigit() else 0
        body: dict[str, Any] = {"data": [self.store.import_status_json(r) for r in rows[start:start + limit]]}
        if start + limit < len(rows):
            body["next_page_token"] = str(start + limit)
        if start > 0:
            body["previous_page_token"] = str(max(0, start - limit))
        return Response(200, body)

    def _pri03(self, request: Request) -> Response:
        record = self.store.get_import("price", request.path_params["import_id"])
        return Response(200, self.store.error_report_csv(record), content_type="text/csv; charset=UTF-8")

    # Finance ----------------------------------------------------------------------------------------------
    def _tl02(self, request: Request) -> Response:
        filters: dict[str, Any] = {
            name: request.args(name) for name in ("seller_billing_cycle_id", "payment_state", "transaction_type",
                                                  "order_id", "order_line_id")
        }
        filters["accounting_document_number"] = request.arg("accounting_document_number")
        for name in ("date_created_from", "date_created_to", "transaction_date_from", "transaction_date_to",
                     "last_updated_from"):
            filters[name] = self._date(request, name)
        limit = self._int(request, "limit", DEFAULT_SEEK_LIMIT, low=1)
        if limit > MAX_SEEK_LIMIT:
            raise ApiError(400, f"Invalid limit {limit}: the maximum is {MAX_SEEK_LIMIT}")
        rows, next_token, previous = self.store.transactions_page(
            filters, limit, request.arg("page_token"), request.arg("sort") or "dateCreated",
            self._descending(request, "desc"),
        )
        body: dict[str, Any] = {"data": rows}
        if next_token:
            body["next_page_token"] = next_token
        if previous:
            body["previous_page_token"] = previous
        return Response(200, body)

    def _tl03(self, request: Request) -> Response:
        record = self.store.export_transactions(self._now(), self._body(request))
        return Response(200, {"tracking_id": record["tracking_id"]})

    def _file_url(self, request: Request, path: str) -> str:
        """Where a chunk is downloaded: an absolute URL on the host the client called."""
        return f"http://{request.headers.get('Host') or 'localhost'}{path}"

    def _tl04(self, request: Request) -> Response:
        record = self.store.export_record("transactions", request.path_params["tracking_id"])
        url = self._file_url(request, f"{TL05_PATH}/{record['tracking_id']}")
        return Response(200, self.store.export_status_json(self._now(), record, url))

    def _tl05(self, request: Request) -> Response:
        record = self.store.export_record("transactions", request.path_params["tracking_id"])
        content, content_type = self.store.export_chunk(self._now(), record, request.arg("file"))
        return Response(200, content, content_type=content_type)

    def _iv01(self, request: Request) -> Response:
        start, end = self._date(request, "start_date"), self._date(request, "end_date")
        cycles, ids = request.args("seller_billing_cycle_id"), request.args("invoice_id")
        kind = request.arg("type")
        found = [
            {k: v for k, v in inv.items() if k != "payout"} for inv in self.store.invoices
            if (not start or inv["date_created"] >= start) and (not end or inv["date_created"] <= end)
            and (not cycles or inv["seller_billing_cycle_id"] in cycles)
            and (not ids or str(inv["invoice_id"]) in ids)
            and (not kind or kind == "ALL" or inv["type"] == kind)
        ]
        if self._descending(request, "asc"):
            found.reverse()
        page, total = self._offset_page(request, found)
        return Response(200, {"invoices": page, "total_count": total})

    # Admin routes ------------------------------------------------------------------------------------------
    def admin_routes(self) -> list[Route]:
        return self._admin_routes

    def _build_admin_routes(self) -> list[Route]:
        prefix = "/_admin/mirakl"
        return [
            Route("POST", f"{prefix}/offers", "admin", self._admin_add_offers),
            Route("GET", f"{prefix}/offers/{{sku}}", "admin", self._admin_get_offer),
            Route("POST", f"{prefix}/orders", "admin", self._admin_place_order),
            Route("GET", f"{prefix}/orders/{{order_id}}", "admin", self._admin_get_order),
            Route("POST", f"{prefix}/orders/{{order_id}}/{{action}}", "admin", self._admin_order_action),
            Route("POST", f"{prefix}/billing/close", "admin", self._admin_close_cycle),
            Route("POST", f"{prefix}/settings", "admin", self._admin_settings),
            Route("GET", f"{prefix}/settings", "admin", self._admin_settings),
        ]

    def _admin_add_offers(self, request: Request) -> Response:
        body = self._body(request)
        items = body["offers"] if "offers" in body else [body]
        created = [self.add_offer(**item) for item in items]
        return Response(201, {"offers": created} if "offers" in body else created[0])

    def _admin_get_offer(self, request: Request) -> Response:
        found = self.offer(request.path_params["sku"])
        if found is None:
            raise ApiError(404, f"No offer {request.path_params['sku']!r}")
        return Response(200, found)

    def _admin_place_order(self, request: Request) -> Response:
        return Response(201, self.place_order(**self._body(request)))

    def _admin_get_order(self, request: Request) -> Response:
        return Response(200, self.order(request.path_params["order_id"]))

    def _admin_order_action(self, request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ORDER_ACTIONS:
            raise ApiError(404, f"Unknown order action {action!r}; use one of {', '.join(ORDER_ACTIONS)}")
        return Response(200, getattr(self, action)(request.path_params["order_id"]))

    def _admin_close_cycle(self, request: Request) -> Response:
        return Response(200, self.close_billing_cycle())

    def _admin_settings(self, request: Request) -> Response:
        body = self._body(request) if request.method == "POST" and request.body else {}
        return Response(200, self.configure(**body))
