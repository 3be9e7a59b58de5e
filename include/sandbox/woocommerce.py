"""The simulated WooCommerce REST API (``/wp-json/wc/v3``) and its admin routes.

Answers follow the shapes of ``shared/reference/woocommerce-examples`` and the error
format ``{"code", "message", "data": {"status"}}``. Route availability follows the
store's version and extensions: ``GET /variations`` from 10.3, ``GET /refunds``
from 9.0, the Shipment Tracking namespace when that extension is installed and
``/orders/{id}/fulfillments`` when core fulfillments are enabled (settings).

Deliberate relaxations, documented because they differ from a real store:

* Authentication: a real store only tries HTTP Basic / query-string keys over HTTPS
  (``is_ssl()``) and wants OAuth 1.0a over plain HTTP. The sandbox is plain HTTP on
  loopback, so it accepts Basic and query-string keys anyway (query string checked
  first, as core does).
* Dates: the sandbox site's timezone is UTC, so ``date_x`` equals ``date_x_gmt`` and
  ``dates_are_gmt`` true or false filter identically.
* An order line whose SKU or product id is unknown is refused (400
  ``woocommerce_rest_invalid_product_id``); core would create a line without a product.
* Refund line items carry ``_refunded_item_id`` in their ``meta_data`` (unverified
  whether a live store shows this hidden meta).
* ``DELETE`` of a product or variation needs ``force=true`` (501 otherwise); a real
  store would move a product to the trash. ``_fields`` applies to collections only.
* No taxes, coupons or customers: order totals are the sum of line, shipping and fee totals.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Callable, Iterable
from urllib.parse import urlencode

from include.sandbox.core import ApiError, Request, Response, Route, Service, parse_iso
from include.sandbox.woo_data import (
    ORDER_STATUSES, PRODUCT_STATUSES, STOCK_STATUSES, Query, WooError, WooStore, as_bool,
    epoch, fmt_money, invalid_param, money, one_of, page_of, select, tracking_link, wp_date,
)

API = "/wp-json/wc/v3"
TRACKING_API = "/wp-json/wc-shipment-tracking/v3"
NO_ROUTE = "No route was found matching the URL and request method."
WRITE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}
DEFAULT_SETTINGS: dict[str, Any] = {
    "key_permissions": "read_write",            # read | write | read_write
    "shipment_tracking_installed": False,       # a plugin: a store has it only when a scenario installs it
    "fulfillments_enabled": False,
    "order_stock_moves_product_modified": True,  # recorded on 10.0.2 (woocommerce-real README, 2)
    "batch_limit": 100,
    "currency": "EUR",
    "manage_stock": True,                       # the woocommerce_manage_stock option
    "refund_gateways": [],                      # gateways able to refund money (api_refund=true)
    # Taxes (woocommerce_calc_taxes, woocommerce_prices_include_tax, woocommerce_tax_based_on, the
    # store's base country) and rates as POST /taxes takes them: {"country", "rate", "name", "shipping"}.
    "calc_taxes": False,
    "prices_include_tax": False,
    "tax_based_on": "shipping",
    "base_country": "US",
    "tax_rates": [],
    # Transactional e-mails: kept in store.emails, and sent over SMTP to smtp_host:smtp_port when set.
    "emails_enabled": True,
    "admin_email": "admin@store.sandbox",
    "email_from": "shop@store.sandbox",
    "site_title": "Sandbox Store",
    "smtp_host": "127.0.0.1",
    "smtp_port": None,
}
PRODUCT_ORDERBY = ["date", "id", "include", "title", "slug", "modified", "price", "popularity", "rating",
                   "menu_order"]
ORDER_ORDERBY = ["date", "id", "include", "title", "slug", "modified"]
PERMISSION_ERRORS = {
    "list": ("woocommerce_rest_cannot_view", "Sorry, you cannot list resources."),
    "create": ("woocommerce_rest_cannot_create", "Sorry, you are not allowed to create resources."),
    "update": ("woocommerce_rest_cannot_edit", "Sorry, you are not allowed to edit this resource."),
    "delete": ("woocommerce_rest_cannot_delete", "Sorry, you are not allowed to delete this resource."),
    "batch": ("woocommerce_rest_cannot_batch", "Sorry, you are not allowed to batch manipulate this resource."),
}
VIEW_ERROR = ("woocommerce_rest_cannot_view", "Sorry, you cannot view this resource.")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


class WooService(Service):
    """A WooCommerce store: products, variations, orders, notes, refunds, tracking."""

    name = "woo"

    def __init__(self, sandbox: Any):
        super().__init__(sandbox)
        self.consumer_key = "ck_sandbox"
        self.consumer_secret = "cs_sandbox"
        self.version = "9.8.0"
        self.settings: dict[str, Any] = dict(DEFAULT_SETTINGS)
        self.store = WooStore(sandbox.now, self.settings)
        self.store.mailer = self._send_mail
        self._register_routes()
        self._admin = self._build_admin_routes()

    def __repr__(self) -> str:  # never show the secret
        return f"WooService(version={self.version!r}, products={len(self.store.products)})"

    # Routes ------------------------------------------------------------------
    def add_route(self, method: str, template: str, operation: str, handler: Callable[[Request], Response]) -> None:
        super().add_route(method, template, operation, self._wordpress(template, handler))

    def _wordpress(self, template: str, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """What the WordPress REST server adds to every answer: ``Link`` to the API root, ``Allow``
        with the route's methods, ``_fields`` on any JSON answer, and its JSON content type."""
        def serve(request: Request) -> Response:
            try:
                response = handler(request)
            except ApiError as error:
                response = self.render_error(error)
            fields = request.args("_fields")
            if fields and response.status < 400 and isinstance(response.body, dict):
                response.body = filter_fields(response.body, fields)
            allowed = [] if response.body and isinstance(response.body, dict) and \
                response.body.get("code") == "rest_no_route" else \
                [r.method for r in self.routes if r.template == template and r.method != "HEAD"]
            if response.content_type == "application/json":
                response.content_type = "application/json; charset=UTF-8"
            response.headers.setdefault("Link", f'<{self._base(request)}/wp-json/>; rel="https://api.w.org/"')
            if allowed:
                response.headers["Allow"] = ", ".join(dict.fromkeys(allowed))
            return response
        return serve

    def _send_mail(self, message: dict) -> None:
        """Deliver a store e-mail to the configured SMTP server (a test's sink), as wp_mail would."""
        port = self.settings.get("smtp_port")
        if not port:
            return
        import smtplib
        from email.message import EmailMessage

        mail = EmailMessage()
        mail["From"], mail["To"], mail["Subject"] = message["from"], message["to"], message["subject"]
        mail["X-WC-Email"] = message["template"]
        mail.set_content(message["body"])
        with smtplib.SMTP(str(self.settings.get("smtp_host") or "127.0.0.1"), int(port), timeout=5) as smtp:
            smtp.send_message(mail)

    def _register_routes(self) -> None:
        r = self.add_route
        r("GET", "/wp-json", "woo.root", self._root)
        r("GET", API, "woo.index", self._index)
        r("GET", API + "/system_status", "woo.system_status", self._system_status)
        r("POST", API + "/products/batch", "woo.products.batch", self._products_batch)
        r("PUT", API + "/products/batch", "woo.products.batch", self._products_batch)
        r("PATCH", API + "/products/batch", "woo.products.batch", self._products_batch)
        r("GET", API + "/products", "woo.products.list", self._products_list)
        r("POST", API + "/products", "woo.products.create", self._products_create)
        r("GET", API + "/products/{id}", "woo.products.get", self._products_get)
        for method in ("POST", "PUT", "PATCH"):
            r(method, API + "/products/{id}", "woo.products.update", self._products_update)
        r("DELETE", API + "/products/{id}", "woo.products.delete", self._products_delete)
        for method in ("POST", "PUT", "PATCH"):
            r(method, API + "/products/{product_id}/variations/batch", "woo.variations.batch",
              self._variations_batch)
        r("GET", API + "/products/{product_id}/variations", "woo.variations.list", self._variations_list)
        r("POST", API + "/products/{product_id}/variations", "woo.variations.create", self._variations_create)
        r("GET", API + "/products/{product_id}/variations/{id}", "woo.variations.get", self._variations_get)
        for method in ("POST", "PUT", "PATCH"):
            r(method, API + "/products/{product_id}/variations/{id}", "woo.variations.update",
              self._variations_update)
        r("DELETE", API + "/products/{product_id}/variations/{id}", "woo.variations.delete",
          self._variations_delete)
        r("GET", API + "/variations", "woo.variations.all", self._variations_all)
        for method in ("POST", "PUT", "PATCH"):
            r(method, API + "/orders/batch", "woo.orders.batch", self._orders_batch)
        r("GET", API + "/orders", "woo.orders.list", self._orders_list)
        r("POST", API + "/orders", "woo.orders.create", self._orders_create)
        r("GET", API + "/orders/{id}", "woo.orders.get", self._orders_get)
        for method in ("POST", "PUT", "PATCH"):
            r(method, API + "/orders/{id}", "woo.orders.update", self._orders_update)
        r("DELETE", API + "/orders/{id}", "woo.orders.delete", self._orders_delete)
        r("GET", API + "/orders/{order_id}/notes", "woo.notes.list", self._notes_list)
        r("POST", API + "/orders/{order_id}/notes", "woo.notes.create", self._notes_create)
        r("GET", API + "/orders/{order_id}/notes/{id}", "woo.notes.get", self._notes_get)
        r("GET", API + "/orders/{order_id}/refunds", "woo.refunds.list", self._refunds_list)
        r("POST", API + "/orders/{order_id}/refunds", "woo.refunds.create", self._refunds_create)
        r("GET", API + "/orders/{order_id}/refunds/{id}", "woo.refunds.get", self._refunds_get)
        r("GET", API + "/refunds", "woo.refunds.all", self._refunds_all)
        r("GET", API + "/orders/{order_id}/fulfillments", "woo.fulfillments.list", self._fulfillments_list)
        tracking = TRACKING_API + "/orders/{order_id}/shipment-trackings"
        r("GET", tracking, "woo.tracking.list", self._tracking_list)
        r("POST", tracking, "woo.tracking.create", self._tracking_create)
        r("GET", tracking + "/{tracking_id}", "woo.tracking.get", self._tracking_get)
        r("DELETE", tracking + "/{tracking_id}", "woo.tracking.delete", self._tracking_delete)

    def _available(self, operation: str) -> bool:
        if operation == "woo.variations.all":
            return version_tuple(self.version) >= (10, 3)
        if operation == "woo.refunds.all":
            return version_tuple(self.version) >= (9, 0)
        if operation.startswith("woo.tracking."):
            return bool(self.settings["shipment_tracking_installed"])
        if operation == "woo.fulfillments.list":
            return bool(self.settings["fulfillments_enabled"])
        return True

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        found = super().match(method, path)
        if found is None:
            return None
        route, params = found
        # WordPress route patterns only accept numeric ids.
        if any(name.endswith("id") and name != "tracking_id" and not value.isdigit()
               for name, value in params.items()):
            return None
        return found

    # Auth and errors -----------------------------------------------------------
    def authenticate(self, request: Request) -> None:
        found = self.match(request.method, request.path)
        if found is not None and not self._available(found[0].operation):
            return  # the handler answers rest_no_route, as a store without that route would
        key, secret = request.arg("consumer_key"), request.arg("consumer_secret")
        if not (key and secret):
            key, secret = _basic_credentials(request.headers.get("Authorization", ""))
        if not key:
            verb = found[0].operation.rsplit(".", 1)[-1] if found else "list"
            code, message = PERMISSION_ERRORS.get(verb, VIEW_ERROR)
            raise WooError(401, code, message)
        if key != self.consumer_key:
            raise WooError(401, "woocommerce_rest_authentication_error", "Consumer key is invalid.")
        if secret != self.consumer_secret:
            raise WooError(401, "woocommerce_rest_authentication_error", "Consumer secret is invalid.")
        permissions = self.settings["key_permissions"]
        if request.method in WRITE_METHODS and permissions not in ("write", "read_write"):
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "The API key provided does not have write permissions.")
        if request.method in ("GET", "HEAD") and permissions not in ("read", "read_write"):
            raise WooError(401, "woocommerce_rest_authentication_error",
                           "The API key provided does not have read permissions.")

    def render_error(self, error: ApiError) -> Response:
        code = error.code or ("rest_too_many_requests" if error.status == 429 else
                              "internal_server_error" if error.status >= 500 else "rest_error")
        message = NO_ROUTE if code == "rest_no_route" else error.message
        if getattr(error, "bare_status", False):
            data: Any = error.status
        else:
            data = {"status": error.status, **getattr(error, "data", {})}
        return Response(error.status, {"code": code, "message": message, "data": data},
                        content_type="application/json; charset=UTF-8")

    def _require(self, operation: str) -> None:
        if not self._available(operation):
            raise WooError(404, "rest_no_route", NO_ROUTE)

    # Index and status ------------------------------------------------------------
    def _root(self, request: Request) -> Response:
        namespaces = ["wp/v2", "wc/v3", "wc/v2", "wc/v1", "wc/store/v1"]
        if self.settings["shipment_tracking_installed"]:
            namespaces.append("wc-shipment-tracking/v3")
        return Response(200, {"name": "Sandbox Store", "url": self._base(request), "namespaces": namespaces})

    def _index(self, request: Request) -> Response:
        routes: dict[str, dict] = {}
        for route in self.routes:
            if not route.template.startswith(API) or not self._available(route.operation):
                continue
            key = "/wc/v3" + re.sub(r"\{(\w+)\}", lambda m: f"(?P<{m.group(1)}>[\\d]+)",
                                     route.template[len(API):])
            entry = routes.setdefault(key, {"namespace": "wc/v3", "methods": [], "endpoints": []})
            if route.method not in entry["methods"]:
                entry["methods"].append(route.method)
                entry["endpoints"].append({"methods": [route.method], "args": {}})
        return Response(200, {"namespace": "wc/v3", "routes": routes,
                              "_links": {"up": [{"href": self._base(request) + "/wp-json/"}]}})

    def _system_status(self, request: Request) -> Response:
        base = self._base(request)
        plugins = [{"plugin": "woocommerce/woocommerce.php", "name": "WooCommerce", "version": self.version,
                    "author_name": "Automattic"}]
        if self.settings["shipment_tracking_installed"]:
            plugins.append({"plugin": "woocommerce-shipment-tracking/woocommerce-shipment-tracking.php",
                            "name": "WooCommerce Shipment Tracking", "version": "2.6.0",
                            "author_name": "WooCommerce"})
        return Response(200, {
            "environment": {"home_url": base, "site_url": base, "version": self.version, "wp_version": "6.8.1",
                            "wp_multisite": False, "wp_debug_mode": False, "language": "en_US",
                            "server_info": "sandbox", "php_version": "8.3.0", "default_timezone": "UTC",
                            "external_object_cache": False},
            "database": {"wc_database_version": self.version, "database_prefix": "wp_"},
            "active_plugins": plugins,
            "settings": {"api_enabled": True, "force_ssl": False, "currency": self.settings["currency"],
                         "currency_symbol": "&euro;", "thousand_separator": ",", "decimal_separator": ".",
                         "number_of_decimals": 2, "woocommerce_manage_stock": self.settings["manage_stock"]},
            "security": {"secure_connection": False, "hide_errors": True},
        })

    # Products --------------------------------------------------------------------
    def _products_list(self, request: Request) -> Response:
        query = parse_query(request, PRODUCT_ORDERBY)
        store = self.store
        skus = request.args("sku")
        candidates = None
        if skus:  # with sku the query also covers variations, as core does
            candidates = [r for r in (store.by_sku(s) for s in dict.fromkeys(skus)) if r is not None]
        predicate = product_predicate(request, with_type_filter=True, trashed=bool(store.trashed))
        items = select(store.products, query, candidates, predicate, PRODUCT_SORT_KEYS)
        return self._collection_response(request, items, query, self.render_product)

    def _products_create(self, request: Request) -> Response:
        return Response(201, self._render_edited_product(self.store.create_product(body_of(request)), request))

    def _products_get(self, request: Request) -> Response:
        return Response(200, self.render_product(self._product_or_variation(request), request))

    def _products_update(self, request: Request) -> Response:
        record = self.store.update_item(self._product_or_variation(request), body_of(request))
        return Response(200, self.render_product(record, request))

    def _products_delete(self, request: Request) -> Response:
        record = self._product_or_variation(request)
        if not as_bool(request.arg("force", "false"), "force"):
            if record["kind"] == "variation":  # variations cannot be trashed (core answers 501)
                raise WooError(501, "woocommerce_rest_trash_not_supported", "Resource does not support trashing.")
            return Response(200, self.render_product(self.store.trash_item(record), request))
        rendered = self.render_product(record, request)
        self.store.delete_item(record)
        return Response(200, rendered)

    def _product_or_variation(self, request: Request) -> dict:
        record = self.store.item(int(request.path_params["id"]))
        if record is None:
            raise WooError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return record

    def _products_batch(self, request: Request) -> Response:
        store = self.store

        def get(item_id: int) -> dict:
            record = store.item(item_id)
            if record is None:
                raise WooError(400, "woocommerce_rest_product_invalid_id", "Invalid ID.")
            return record

        return self._batch(request, create=store.create_product, get=get, update=store.update_item,
                           delete=store.delete_item, render=self._render_edited_product)

    def _render_edited_product(self, record: dict, request: Request | None = None) -> dict:
        """A product as a write answers it: the edit context adds the permalink template and slug."""
        body = self.render_product(record, request)
        body.update(permalink_template=f"{self._base(request)}/product/%pagename%/", generated_slug=body["slug"])
        return body

    # Variations --------------------------------------------------------------------
    def _parent(self, request: Request) -> dict:
        parent = self.store.products.get(int(request.path_params["product_id"]))
        if parent is None:
            raise WooError(404, "woocommerce_rest_product_invalid_id", "Invalid ID.")
        return parent

    def _variations_list(self, request: Request) -> Response:
        parent = self._parent(request)
        query = parse_query(request, PRODUCT_ORDERBY)
        candidates = [self.store.variations.records[i] for i in parent["variations"]]
        items = select(self.store.variations, query, candidates,
                       product_predicate(request, False, bool(self.store.trashed)), PRODUCT_SORT_KEYS)
        return self._collection_response(request, items, query, self.render_variation)

    def _variations_all(self, request: Request) -> Response:
        self._require("woo.variations.all")
        query = parse_query(request, PRODUCT_ORDERBY)
        parents = {int(p) for p in request.args("parent")}
        predicate = product_predicate(request, False, bool(self.store.trashed))
        if parents:
            base = predicate
            predicate = lambda r: r["parent_id"] in parents and (base is None or base(r))  # noqa: E731
        items = select(self.store.variations, query, None, predicate, PRODUCT_SORT_KEYS)
        return self._collection_response(request, items, query, self.render_variation)

    def _variations_create(self, request: Request) -> Response:
        record = self.store.create_variation(self._parent(request), body_of(request))
        return Response(201, self.render_variation(record, request))

    def _variations_get(self, request: Request) -> Response:
        record = self.store.variation(self._parent(request)["id"], int(request.path_params["id"]))
        return Response(200, self.render_variation(record, request))

    def _variations_update(self, request: Request) -> Response:
        record = self.store.variation(self._parent(request)["id"], int(request.path_params["id"]))
        return Response(200, self.render_variation(self.store.update_item(record, body_of(request)), request))

    def _variations_delete(self, request: Request) -> Response:
        record = self.store.variation(self._parent(request)["id"], int(request.path_params["id"]))
        if not as_bool(request.arg("force", "false"), "force"):
            raise WooError(501, "woocommerce_rest_trash_not_supported", "Resource does not support trashing.")
        rendered = self.render_variation(record, request)
        self.store.delete_item(record)
        return Response(200, rendered)

    def _variations_batch(self, request: Request) -> Response:
        parent = self._parent(request)
        store = self.store

        def get(item_id: int) -> dict:
            try:
                return store.variation(parent["id"], item_id)
            except WooError:
                raise WooError(400, "woocommerce_rest_product_variation_invalid_id", "Invalid ID.") from None

        return self._batch(request, create=lambda data: store.create_variation(parent, data), get=get,
                           update=store.update_item, delete=store.delete_item, render=self.render_variation)

    # Batch ------------------------------------------------------------------------
    def _batch(self, request: Request, create: Callable[[dict], dict], get: Callable[[int], dict],
               update: Callable[[dict, dict], dict], delete: Callable[[dict], dict],
               render: Callable[[dict, Request], dict]) -> Response:
        body = body_of(request)
        groups = {name: body.get(name) or [] for name in ("create", "update", "delete")}
        for name, items in groups.items():
            if not isinstance(items, list):
                raise invalid_param(name, f"{name} is not of type array.")
        limit = int(self.settings["batch_limit"])
        if sum(len(items) for items in groups.values()) > limit:
            raise WooError(413, "woocommerce_rest_request_entity_too_large",
                           f"Unable to accept more than {limit} items for this request.")
        result: dict[str, list] = {}
        if groups["create"]:
            result["create"] = [self._batch_item(0, lambda d=data: render(create(d), request))
                                for data in groups["create"]]
        if groups["update"]:
            out = []
            for data in groups["update"]:
                item_id = data.get("id") if isinstance(data, dict) else None
                out.append(self._batch_item(item_id or 0, lambda d=data, i=item_id: render(
                    update(get(_batch_id(i)), {k: v for k, v in d.items() if k != "id"}), request)))
            result["update"] = out
        if groups["delete"]:
            out = []
            for item_id in groups["delete"]:
                def remove(i: Any = item_id) -> dict:
                    record = get(_batch_id(i))
                    rendered = render(record, request)
                    delete(record)
                    return rendered
                out.append(self._batch_item(item_id, remove))
            result["delete"] = out
        return Response(200, result)

    @staticmethod
    def _batch_item(item_id: Any, action: Callable[[], dict]) -> dict:
        """One batch entry: the resource, or ``{id, error}`` inside the 200 as core answers."""
        try:
            return action()
        except WooError as error:
            return {"id": item_id, "error": {"code": error.code, "message": error.message,
                                             "data": {"status": error.status, **error.data}}}

    # Orders ------------------------------------------------------------------------
    def _orders_list(self, request: Request) -> Response:
        query = parse_query(request, ORDER_ORDERBY)
        statuses = request.args("status") or ["any"]
        for status in statuses:
            if status not in ORDER_STATUSES + ("any",):
                raise invalid_param("status", one_of("status[0]", ORDER_STATUSES + ("any",)))
        wanted = None if "any" in statuses else set(statuses)
        search = (request.arg("search") or "").lower()
        customer = request.arg("customer")
        product = request.arg("product")

        def predicate(r: dict) -> bool:
            if wanted is None and r["status"] == "trash" or wanted is not None and r["status"] not in wanted:
                return False
            if customer is not None and str(r["customer_id"]) != customer:
                return False
            if product is not None and not any(str(li["product_id"]) == product or str(li["variation_id"]) == product
                                               for li in r["line_items"]):
                return False
            return not search or _order_matches(r, search)

        items = select(self.store.orders, query, None, predicate)
        return self._collection_response(request, items, query, self.render_order)

    def _orders_create(self, request: Request) -> Response:
        return Response(201, self.render_order(self.store.create_order(body_of(request)), request))

    def _orders_get(self, request: Request) -> Response:
        return Response(200, self.render_order(self.store.order(int(request.path_params["id"])), request))

    def _orders_update(self, request: Request) -> Response:
        record = self.store.order(int(request.path_params["id"]))
        return Response(200, self.render_order(self.store.update_order(record, body_of(request)), request))

    def _orders_delete(self, request: Request) -> Response:
        record = self.store.order(int(request.path_params["id"]))
        force = as_bool(request.arg("force", "false"), "force")
        rendered = self.render_order(record, request)
        self.store.delete_order(record, force)
        return Response(200, rendered if force else self.render_order(record, request))

    def _orders_batch(self, request: Request) -> Response:
        store = self.store

        def get(item_id: int) -> dict:
            record = store.orders.get(item_id)
            if record is None:
                raise WooError(400, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
            return record

        def delete(record: dict) -> dict:
            return store.delete_order(record, force=True)

        return self._batch(request, create=store.create_order, get=get, update=store.update_order,
                           delete=delete, render=self.render_order)

    # Notes ---------------------------------------------------------------------------
    def _notes_list(self, request: Request) -> Response:
        order = self.store.order(int(request.path_params["order_id"]))
        kind = request.arg("type", "any")
        notes = [n for n in reversed(self.store.notes.get(order["id"], []))
                 if kind == "any" or (kind == "customer") == n["customer_note"]]
        return Response(200, [self.render_note(order, n, request) for n in notes])

    def _notes_create(self, request: Request) -> Response:
        order = self.store.order(int(request.path_params["order_id"]))
        body = body_of(request)
        if not body.get("note"):
            raise WooError(400, "woocommerce_rest_missing_note", "Cannot create order note, please provide a note.")
        author = "admin" if as_bool(body.get("added_by_user", False), "added_by_user") else "WooCommerce"
        note = self.store.add_note(order, str(body["note"]),
                                   as_bool(body.get("customer_note", False), "customer_note"), author)
        return Response(201, self.render_note(order, note, request))

    def _notes_get(self, request: Request) -> Response:
        order = self.store.order(int(request.path_params["order_id"]))
        note_id = int(request.path_params["id"])
        note = next((n for n in self.store.notes.get(order["id"], []) if n["id"] == note_id), None)
        if note is None:
            raise WooError(404, "woocommerce_rest_order_invalid_id", "Invalid resource ID.")
        return Response(200, self.render_note(order, note, request))

    # Refunds ---------------------------------------------------------------------------
    def _refunds_list(self, request: Request) -> Response:
        order = self.store.order(int(request.path_params["order_id"]))
        query = parse_query(request, ORDER_ORDERBY)
        candidates = [self.store.refunds.records[i] for i in order["refund_ids"] if i in self.store.refunds.records]
        items = select(self.store.refunds, query, candidates)
        return self._collection_response(request, items, query, self.render_refund)

    def _refunds_all(self, request: Request) -> Response:
        self._require("woo.refunds.all")
        query = parse_query(request, ORDER_ORDERBY)
        parents = {int(p) for p in request.args("parent")}
        predicate = (lambda r: r["parent_id"] in parents) if parents else None
        items = select(self.store.refunds, query, None, predicate)
        return self._collection_response(
            request, items, query, lambda r, req: {"id": r["id"], "parent_id": r["parent_id"],
                                                   **self.render_refund(r, req)})

    def _refunds_create(self, request: Request) -> Response:
        order = self.store.order(int(request.path_params["order_id"]))
        return Response(201, self.render_refund(self.store.create_refund(order, body_of(request)), request))

    def _refunds_get(self, request: Request) -> Response:
        order = self.store.order(int(request.path_params["order_id"]))
        refund = self.store.refunds.get(int(request.path_params["id"]))
        if refund is None or refund["parent_id"] != order["id"]:
            raise WooError(404, "woocommerce_rest_invalid_id", "Invalid ID.")
        return Response(200, self.render_refund(refund, request))

    # Tracking and fulfillments -----------------------------------------------------------
    def _tracking_list(self, request: Request) -> Response:
        self._require("woo.tracking.list")
        order = self.store.order(int(request.path_params["order_id"]))
        return Response(200, [self.render_tracking(order, t, request) for t in self.store.tracking_items(order)])

    def _tracking_create(self, request: Request) -> Response:
        self._require("woo.tracking.create")
        order = self.store.order(int(request.path_params["order_id"]))
        return Response(201, self.render_tracking(order, self.store.add_tracking(order, body_of(request)), request))

    def _tracking_get(self, request: Request) -> Response:
        self._require("woo.tracking.get")
        order = self.store.order(int(request.path_params["order_id"]))
        entry = next((t for t in self.store.tracking_items(order)
                      if t["tracking_id"] == request.path_params["tracking_id"]), None)
        if entry is None:
            raise WooError(404, "woocommerce_rest_order_invalid_id", "Invalid tracking ID.")
        return Response(200, self.render_tracking(order, entry, request))

    def _tracking_delete(self, request: Request) -> Response:
        self._require("woo.tracking.delete")
        order = self.store.order(int(request.path_params["order_id"]))
        entry = self.store.delete_tracking(order, request.path_params["tracking_id"])
        return Response(200, self.render_tracking(order, entry, request))

    def _fulfillments_list(self, request: Request) -> Response:
        self._require("woo.fulfillments.list")
        order = self.store.order(int(request.path_params["order_id"]))
        return Response(200, [render_fulfillment(f) for f in self.store.fulfillments.get(order["id"], [])])

    # Rendering -------------------------------------------------------------------------
    def _collection_response(self, request: Request, items: Sequence, query: Query,
                             render: Callable[[dict, Request], dict]) -> Response:
        page, total, pages = page_of(items, query)
        fields = request.args("_fields")
        body = [filter_fields(render(r, request), fields) for r in page]
        headers = {"X-WP-Total": str(total), "X-WP-TotalPages": str(pages)}
        links = []
        # WordPress keeps the request's parameters in their order, page in its place (else last)
        params = {k: v[-1] for k, v in request.query.items() if k not in ("consumer_key", "consumer_secret")}
        url = self._base(request) + request.path
        if query.page > 1:
            links.append(f'<{url}?{urlencode({**params, "page": min(query.page - 1, max(pages, 1))})}>; rel="prev"')
        if pages > query.page:
            links.append(f'<{url}?{urlencode({**params, "page": query.page + 1})}>; rel="next"')
        if links:
            headers["Link"] = ", ".join(links)
        return Response(200, body, headers)

    @staticmethod
    def _base(request: Request | None) -> str:
        host = request.headers.get("Host") if request is not None else None
        return f"http://{host or 'woo.sandbox'}"

    def _children(self, record: dict) -> list[dict]:
        variations = self.store.variations.records
        return [variations[i] for i in record["variations"] if i in variations]

    def _fields_of(self, record: dict) -> dict:
        """The fields products and variations share, in one literal (rendering is on the bulk-load path)."""
        extra = record["extra"]
        created, modified = wp_date(record["created"]), wp_date(record["modified"])
        price, regular, sale, status = (record["sale_price"] or record["regular_price"], record["regular_price"],
                                        record["sale_price"], record["stock_status"])
        if record["type"] == "variable":
            children = self._children(record)
            prices = [money(c["sale_price"] or c["regular_price"]) for c in children
                      if c["sale_price"] or c["regular_price"]]
            price, regular, sale = (fmt_money(min(prices)) if prices else ""), "", ""
            if children and not record["manage_stock"]:
                states = {c["stock_status"] for c in children}
                status = next(s for s in ("instock", "onbackorder", "outofstock") if s in states)
        managed, backorders, quantity = record["manage_stock"], record["backorders"], record["stock_quantity"]
        owner = self.store.stock_owner(record)
        if owner is not record:  # stock managed by the parent: its pool shows through
            managed, backorders, quantity, status = "parent", owner["backorders"], owner["stock_quantity"], \
                owner["stock_status"]
        return {
            "date_created": created, "date_created_gmt": created, "date_modified": modified,
            "date_modified_gmt": modified, "description": extra.get("description", ""), "sku": record["sku"],
            "global_unique_id": record["global_unique_id"], "price": price, "regular_price": regular,
            "sale_price": sale, "date_on_sale_from": None, "date_on_sale_from_gmt": None,
            "date_on_sale_to": None, "date_on_sale_to_gmt": None, "on_sale": bool(sale),
            "status": record["status"], "purchasable": bool(price), "virtual": extra.get("virtual", False),
            "downloadable": extra.get("downloadable", False), "downloads": [], "download_limit": -1,
            "download_expiry": -1, "tax_status": extra.get("tax_status", "taxable"),
            "tax_class": extra.get("tax_class", ""), "manage_stock": managed,
            "stock_quantity": quantity, "stock_status": status, "backorders": backorders,
            "backorders_allowed": backorders != "no",
            "backordered": bool(managed and backorders != "no" and (quantity or 0) < 0),
            "low_stock_amount": extra.get("low_stock_amount"), "weight": extra.get("weight", ""),
            "dimensions": extra.get("dimensions") or {"length": "", "width": "", "height": ""},
            "shipping_class": extra.get("shipping_class", ""), "shipping_class_id": 0,
            "menu_order": extra.get("menu_order", 0), "meta_data": [dict(m) for m in record["meta_data"]],
        }

    def render_product(self, record: dict, request: Request | None = None) -> dict:
        """A product (or, via ``/products?sku=``, a variation) in the products-endpoint shape."""
        base = self._base(request)
        extra = record["extra"]
        name = self.store._display_name(record)
        slug = extra.get("slug") or "-".join(name.lower().split()) or str(record["id"])
        common = self._fields_of(record)
        price = common["price"]
        links = {"self": [_self(f"{base}{API}/products/{record['id']}", "GET, POST, PUT, PATCH, DELETE")],
                 "collection": [{"href": f"{base}{API}/products"}]}
        variation = record["kind"] == "variation"
        if record["parent_id"]:
            links["up"] = [{"href": f"{base}{API}/products/{record['parent_id']}"}]
        return {
            "id": record["id"], "name": name, "slug": slug, "permalink": f"{base}/product/{slug}/",
            "date_created": common["date_created"], "date_created_gmt": common["date_created_gmt"],
            "date_modified": common["date_modified"], "date_modified_gmt": common["date_modified_gmt"],
            "type": record["type"], "status": record["status"], "featured": extra.get("featured", False),
            "catalog_visibility": extra.get("catalog_visibility", "visible"),
            "description": common["description"], "short_description": extra.get("short_description", ""),
            **common,
            "price_html": f'<span class="woocommerce-Price-amount amount">{price}</span>' if price else "",
            # a variation read through /products is a post of its own kind: meta comes back as strings
            "total_sales": str(record["total_sales"]) if variation else record["total_sales"],
            "external_url": "", "button_text": "",
            "sold_individually": False, "shipping_required": not extra.get("virtual", False),
            "shipping_taxable": True, "reviews_allowed": not variation, "average_rating": "0", "rating_count": 0,
            "related_ids": [], "upsell_ids": [], "cross_sell_ids": [], "parent_id": record["parent_id"],
            "purchase_note": "", "categories": list(record["categories"]), "brands": [], "tags": list(record["tags"]),
            "images": extra.get("images", []), "attributes": list(record["attributes"]),
            "default_attributes": list(record["default_attributes"]), "variations": list(record["variations"]),
            "grouped_products": [], "has_options": record["type"] == "variable", "post_password": "",
            "_links": links,
        }

    def render_variation(self, record: dict, request: Request | None = None) -> dict:
        """A variation in the variations-endpoint shape (with ``parent_id``, as 10.3+ answers)."""
        base = self._base(request)
        parent_id = record["parent_id"]
        options = ", ".join(str(a.get("option", "")) for a in record["attributes"])
        return {"id": record["id"], "name": options or self.store._display_name(record), "type": "variation",
                "parent_id": parent_id, **self._fields_of(record),
                "permalink": f"{base}/product/{parent_id}/?variation={record['id']}",
                "image": record["extra"].get("image"), "attributes": list(record["attributes"]),
                "_links": {"self": [_self(f"{base}{API}/products/{parent_id}/variations/{record['id']}",
                                          "GET, POST, PUT, PATCH, DELETE")],
                           "collection": [{"href": f"{base}{API}/products/{parent_id}/variations"}],
                           "up": [{"href": f"{base}{API}/products/{parent_id}"}]}}

    def render_order(self, record: dict, request: Request | None = None) -> dict:
        base = self._base(request)
        store = self.store
        created, modified = wp_date(record["created"]), wp_date(record["modified"])
        paid, completed = wp_date(record["date_paid"]), wp_date(record["date_completed"])
        shipping_total = sum((money(s["total"]) for s in record["shipping_lines"]), Decimal("0"))
        shipping_tax = sum((money(s.get("total_tax")) for s in record["shipping_lines"]), Decimal("0"))
        cart_tax = sum((money(li.get("total_tax")) for li in record["line_items"] + record["fee_lines"]),
                       Decimal("0"))
        meta = [dict(m) for m in record["meta_data"]]
        if request is not None:
            include, exclude = request.args("include_meta"), request.args("exclude_meta")
            if include:
                meta = [m for m in meta if m["key"] in include]
            if exclude:
                meta = [m for m in meta if m["key"] not in exclude]
        refunds = [store.refunds.records[i] for i in record["refund_ids"] if i in store.refunds.records]
        needs_payment = record["status"] in ("pending", "failed") and store.order_total(record) > 0
        return {
            "id": record["id"], "parent_id": record["parent_id"], "number": str(record["id"]),
            "order_key": record["order_key"], "created_via": record["created_via"], "version": self.version,
            "status": record["status"], "currency": record["currency"], "date_created": created,
            "date_created_gmt": created, "date_modified": modified, "date_modified_gmt": modified,
            "discount_total": "0.00", "discount_tax": "0.00", "shipping_total": fmt_money(shipping_total),
            "shipping_tax": fmt_money(shipping_tax), "cart_tax": fmt_money(cart_tax),
            "total": fmt_money(store.order_total(record)),
            "total_tax": fmt_money(cart_tax + shipping_tax), "prices_include_tax": record.get("prices_include_tax", False),
            "customer_id": record["customer_id"],
            "customer_ip_address": "", "customer_user_agent": "", "customer_note": record["customer_note"],
            "billing": dict(record["billing"]), "shipping": dict(record["shipping"]),
            "payment_method": record["payment_method"], "payment_method_title": record["payment_method_title"],
            "transaction_id": record["transaction_id"], "date_paid": paid, "date_paid_gmt": paid,
            "date_completed": completed, "date_completed_gmt": completed, "cart_hash": "", "meta_data": meta,
            "line_items": [render_line_item(li, store) for li in record["line_items"]],
            "tax_lines": [dict(t) for t in record.get("tax_lines", [])],
            "shipping_lines": [render_shipping_line(s) for s in record["shipping_lines"]],
            "fee_lines": [render_fee_line(f) for f in record["fee_lines"]],
            "coupon_lines": [],
            "refunds": [{"id": r["id"], "reason": r["reason"], "total": fmt_money(-money(r["amount"]))}
                        for r in refunds],
            "payment_url": f"{base}/checkout/order-pay/{record['id']}/?pay_for_order=true&key={record['order_key']}",
            "is_editable": record["status"] in ("pending", "on-hold", "auto-draft", "checkout-draft"),
            "needs_payment": needs_payment,
            "needs_processing": True,
            "currency_symbol": CURRENCY_SYMBOLS.get(record["currency"], record["currency"]),
            "_links": {"self": [_self(f"{base}{API}/orders/{record['id']}", "GET, POST, PUT, PATCH, DELETE")],
                       "collection": [{"href": f"{base}{API}/orders"}],
                       "email_templates": [{"embeddable": True,
                                            "href": f"{base}{API}/orders/{record['id']}/actions/email_templates"}]},
        }

    def render_note(self, order: dict, note: dict, request: Request | None = None) -> dict:
        base = self._base(request)
        created = wp_date(note["created"])
        author = "WooCommerce" if note["author"] == "system" else note["author"]
        return {"id": note["id"], "author": author, "date_created": created, "date_created_gmt": created,
                "note": note["note"], "customer_note": note["customer_note"],
                "_links": {"self": [_self(f"{base}{API}/orders/{order['id']}/notes/{note['id']}", "GET, DELETE")],
                           "collection": [{"href": f"{base}{API}/orders/{order['id']}/notes"}],
                           "up": [{"href": f"{base}{API}/orders/{order['id']}"}]}}

    def render_refund(self, refund: dict, request: Request | None = None) -> dict:
        base = self._base(request)
        created = wp_date(refund["created"])
        oid = refund["parent_id"]
        return {"id": refund["id"], "date_created": created, "date_created_gmt": created,
                "amount": refund["amount"], "reason": refund["reason"], "refunded_by": refund["refunded_by"],
                "refunded_payment": refund["refunded_payment"], "meta_data": [dict(m) for m in refund["meta_data"]],
                "line_items": [render_line_item(li, self.store) for li in refund["line_items"]],
                "shipping_lines": [render_shipping_line(s) for s in refund.get("shipping_lines", [])],
                "tax_lines": [dict(t) for t in refund.get("tax_lines", [])],
                "fee_lines": [render_fee_line(f) for f in refund.get("fee_lines", [])],
                "_links": {"self": [_self(f"{base}{API}/orders/{oid}/refunds/{refund['id']}", "GET, DELETE")],
                           "collection": [{"href": f"{base}{API}/orders/{oid}/refunds"}],
                           "up": [{"href": f"{base}{API}/orders/{oid}"}]}}

    def render_tracking(self, order: dict, entry: dict, request: Request | None = None) -> dict:
        base = self._base(request)
        url = f"{base}{TRACKING_API}/orders/{order['id']}/shipment-trackings"
        return {"tracking_id": entry["tracking_id"],
                "tracking_provider": entry["tracking_provider"] or entry["custom_tracking_provider"],
                "custom_tracking_provider": entry["custom_tracking_provider"],
                "tracking_link": tracking_link(entry), "tracking_number": entry["tracking_number"],
                "date_shipped": wp_date(entry["date_shipped"])[:10],
                "_links": {"self": [{"href": f"{url}/{entry['tracking_id']}"}], "collection": [{"href": url}],
                           "up": [{"href": f"{base}{API}/orders/{order['id']}"}]}}

    # Python API for in-process tests and scenarios ------------------------------------------
    def add_simple_product(self, sku: str, price: Any, stock_quantity: int | None, manage_stock: bool = True,
                           name: str | None = None, stock_status: str = "instock", **fields: Any) -> dict:
        with self.sandbox.lock:
            data = {"type": "simple", "sku": sku, "name": name or f"Product {sku}",
                    "regular_price": _price_str(price), "manage_stock": manage_stock,
                    "stock_quantity": stock_quantity, "stock_status": stock_status, **fields}
            return self.render_product(self.store.create_product(data))

    def add_simple_products(self, rows: Iterable[dict]) -> int:
        """Bulk load for large catalogues: rows of ``add_simple_product`` arguments; returns the count.

        Skips rendering each new product, which is about a third of the per-product cost.
        """
        count = 0
        with self.sandbox.lock:
            for row in rows:
                row = dict(row)
                sku, price = row.pop("sku"), row.pop("price")
                self.store.create_product({
                    "type": "simple", "sku": sku, "name": row.pop("name", None) or f"Product {sku}",
                    "regular_price": _price_str(price), "manage_stock": row.pop("manage_stock", True),
                    "stock_quantity": row.pop("stock_quantity", None), **row})
                count += 1
        return count

    def add_variable_product(self, name: str, variations: list[dict], sku: str | None = None,
                             stock_quantity: int | None = None) -> dict:
        """A variable product; with ``stock_quantity`` the parent manages one stock pool that
        variations without a quantity of their own share (``manage_stock: "parent"``)."""
        with self.sandbox.lock:
            options: dict[str, list[str]] = {}
            for variation in variations:
                for attr in variation.get("attributes", []):
                    values = options.setdefault(attr["name"], [])
                    if attr["option"] not in values:
                        values.append(attr["option"])
            attributes = [{"id": 0, "name": n, "position": i, "visible": True, "variation": True, "options": o}
                          for i, (n, o) in enumerate(options.items())]
            for variation in variations:  # fail before creating anything
                if variation["sku"] in self.store.sku_index:
                    raise WooError(400, "product_invalid_sku", "Invalid or duplicated SKU.")
            parent = self.store.create_product({"type": "variable", "name": name, "sku": sku or "",
                                                "attributes": attributes,
                                                **({"manage_stock": True, "stock_quantity": stock_quantity}
                                                   if stock_quantity is not None else {})})
            for variation in variations:
                quantity = variation.get("stock_quantity")
                self.store.create_variation(parent, {
                    "sku": variation["sku"], "regular_price": _price_str(variation["price"]),
                    "manage_stock": quantity is not None, "stock_quantity": quantity,
                    "attributes": [{"id": 0, "name": a["name"], "option": a["option"]}
                                   for a in variation.get("attributes", [])]})
            return self.render_product(parent)

    def product_by_sku(self, sku: str) -> dict | None:
        with self.sandbox.lock:
            record = self.store.by_sku(sku)
            return self.render_product(record) if record is not None else None

    def _sku_record(self, sku: str) -> dict:
        record = self.store.by_sku(sku)
        if record is None:
            raise ApiError(404, f"unknown SKU {sku!r}", "woocommerce_rest_product_invalid_sku")
        return record

    def set_stock(self, sku: str, quantity: int) -> dict:
        with self.sandbox.lock:
            record = self._sku_record(sku)
            return self.render_product(self.store.update_item(record, {"manage_stock": True,
                                                                       "stock_quantity": int(quantity)}))

    def set_price(self, sku: str, price: Any) -> dict:
        with self.sandbox.lock:
            record = self._sku_record(sku)
            return self.render_product(self.store.update_item(record, {"regular_price": _price_str(price)}))

    def direct_sale(self, sku: str, quantity: int) -> dict:
        """A web-shop checkout: a paid ``processing`` order that takes the stock."""
        with self.sandbox.lock:
            record = self._sku_record(sku)
            if (record["manage_stock"] and record["backorders"] == "no"
                    and (record["stock_quantity"] or 0) < quantity):
                raise ApiError(409, f"not enough stock for {sku!r}: {record['stock_quantity']} < {quantity}",
                               "woocommerce_rest_insufficient_stock")
            order = self.store.create_order({
                "status": "processing", "payment_method": "stripe", "payment_method_title": "Credit Card (Stripe)",
                "billing": {"first_name": "Web", "last_name": "Customer", "email": "customer@example.com",
                            "country": "FR"},
                "line_items": [{"sku": sku, "quantity": int(quantity)}]}, created_via="checkout")
            return self.render_order(order)

    def order(self, order_id: int) -> dict:
        with self.sandbox.lock:
            return self.render_order(self.store.order(int(order_id)))

    def orders(self) -> list[dict]:
        with self.sandbox.lock:
            return [self.render_order(self.store.orders.records[i]) for i in self.store.orders.ids]

    def ship_order(self, order_id: int, tracking_provider: str | None = None, tracking_number: str | None = None,
                   custom_tracking_provider: str | None = None, custom_tracking_link: str | None = None) -> dict:
        """A warehouse ships: tracking (when a number is given) and status ``completed``."""
        with self.sandbox.lock:
            order = self.store.order(int(order_id))
            tracking = None
            if tracking_number and self.settings["shipment_tracking_installed"]:
                tracking = self.store.add_tracking(order, {
                    "tracking_provider": tracking_provider, "tracking_number": tracking_number,
                    "custom_tracking_provider": custom_tracking_provider,
                    "custom_tracking_link": custom_tracking_link})
            if self.settings["fulfillments_enabled"]:
                if tracking is None and tracking_number:
                    tracking = {"tracking_provider": (tracking_provider or "").lower(),
                                "custom_tracking_provider": custom_tracking_provider or "",
                                "custom_tracking_link": custom_tracking_link or "",
                                "tracking_number": tracking_number}
                self.store.add_fulfillment(order, tracking)
            return self.render_order(self.store.update_order(order, {"status": "completed"}))

    def refund_order(self, order_id: int, line_items: list[dict] | None = None, amount: Any = None,
                     reason: str = "") -> dict:
        """A refund made in the shop's back office (no gateway call, items restocked).

        ``line_items`` take the REST form ``{id, quantity, refund_total}`` or ``{sku, quantity}``
        (refunded at the line's unit price); with neither lines nor amount the whole
        remaining amount is refunded with every line.
        """
        with self.sandbox.lock:
            order = self.store.order(int(order_id))
            lines = []
            for posted in line_items or []:
                item = next((li for li in order["line_items"] if li["id"] == posted.get("id")
                             or (posted.get("sku") and li["sku"] == posted["sku"])), None)
                if item is None:
                    raise ApiError(400, f"no line item matches {posted!r}", "woocommerce_rest_invalid_item_id")
                quantity = int(posted.get("quantity", item["quantity"]))
                total = posted.get("refund_total", fmt_money(Decimal(str(item["price"])) * quantity))
                lines.append({"id": item["id"], "quantity": quantity, "refund_total": str(total)})
            if line_items is None and amount is None:
                lines = [{"id": li["id"], "quantity": li["quantity"], "refund_total": li["total"]}
                         for li in order["line_items"]]
                amount = fmt_money(self.store.order_total(order) - self.store.refunded_total(order))
            data = {"reason": reason, "line_items": lines, "api_refund": False, "api_restock": True}
            if amount is not None:
                data["amount"] = _price_str(amount)
            return self.render_refund(self.store.create_refund(order, data))

    # Admin routes ------------------------------------------------------------------------
    def admin_routes(self) -> list[Route]:
        return self._admin

    def _build_admin_routes(self) -> list[Route]:
        def route(method: str, template: str, handler: Callable[[Request], Response]) -> Route:
            return Route(method, "/_admin/woo" + template, "admin", handler)

        return [
            route("POST", "/products", self._admin_add_product),
            route("GET", "/products/by-sku/{sku}", self._admin_product_by_sku),
            route("POST", "/stock", lambda r: Response(200, self.set_stock(_need(r, "sku"), int(_need(r, "quantity"))))),
            route("POST", "/price", lambda r: Response(200, self.set_price(_need(r, "sku"), _need(r, "price")))),
            route("POST", "/sales", lambda r: Response(201, self.direct_sale(_need(r, "sku"), int(_need(r, "quantity"))))),
            route("POST", "/orders/{order_id}/ship", self._admin_ship),
            route("POST", "/orders/{order_id}/refund", self._admin_refund),
            route("GET", "/orders/{order_id}", lambda r: Response(200, self.order(int(r.path_params["order_id"])))),
            route("GET", "/orders", lambda r: Response(200, self.orders())),
            route("GET", "/settings", lambda r: Response(200, self._settings_view())),
            route("POST", "/settings", self._admin_settings),
        ]

    def _admin_add_product(self, request: Request) -> Response:
        body = dict(request.json() or {})
        if body.pop("type", "simple") == "variable":
            return Response(201, self.add_variable_product(body["name"], body["variations"], body.get("sku"),
                                                           body.get("stock_quantity")))
        sku, price = body.pop("sku"), body.pop("price")
        return Response(201, self.add_simple_product(sku, price, body.pop("stock_quantity", None), **body))

    def _admin_product_by_sku(self, request: Request) -> Response:
        product = self.product_by_sku(request.path_params["sku"])
        if product is None:
            return Response(404, {"error": f"no product or variation with SKU {request.path_params['sku']!r}"})
        return Response(200, product)

    def _admin_ship(self, request: Request) -> Response:
        body = request.json() or {}
        allowed = {"tracking_provider", "tracking_number", "custom_tracking_provider", "custom_tracking_link"}
        return Response(200, self.ship_order(int(request.path_params["order_id"]),
                                             **{k: v for k, v in body.items() if k in allowed}))

    def _admin_refund(self, request: Request) -> Response:
        body = request.json() or {}
        return Response(201, self.refund_order(int(request.path_params["order_id"]), body.get("line_items"),
                                               body.get("amount"), body.get("reason", "")))

    def _admin_settings(self, request: Request) -> Response:
        body = dict(request.json() or {})
        for name in ("version", "consumer_key", "consumer_secret"):
            if name in body:
                setattr(self, name, str(body.pop(name)))
        unknown = set(body) - set(self.settings)
        if unknown:
            raise ApiError(400, f"unknown settings: {', '.join(sorted(unknown))}")
        self.settings.update(body)
        return Response(200, self._settings_view())

    def _settings_view(self) -> dict:
        return {"version": self.version, "consumer_key": self.consumer_key, "settings": dict(self.settings)}

    # State ---------------------------------------------------------------------------------
    def to_state(self) -> dict:
        return {"version": self.version, "settings": dict(self.settings), "store": self.store.to_state()}

    def load_state(self, state: dict) -> None:
        self.version = state.get("version", self.version)
        self.settings.update(state.get("settings", {}))
        self.store.load_state(state.get("store", {}))


# Helpers -------------------------------------------------------------------------------------
PRODUCT_SORT_KEYS: dict[str, Callable[[dict], Any]] = {
    "title": lambda r: (r["name"].lower(), r["id"]),
    "slug": lambda r: (r["extra"].get("slug") or r["name"].lower(), r["id"]),
    "price": lambda r: (money(r["sale_price"] or r["regular_price"]), r["id"]),
    "popularity": lambda r: (r["total_sales"], r["id"]),
    "menu_order": lambda r: (r["extra"].get("menu_order", 0), r["id"]),
    "rating": lambda r: r["id"],
}


def _basic_credentials(header: str) -> tuple[str | None, str | None]:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None, None
    try:
        user, sep, password = base64.b64decode(encoded.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None, None
    return (user, password) if sep else (None, None)


def body_of(request: Request) -> dict:
    try:
        body = request.json()
    except (ValueError, UnicodeDecodeError):
        raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.") from None
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise WooError(400, "rest_invalid_json", "Invalid JSON body passed.")
    return body


def _batch_id(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise WooError(400, "woocommerce_rest_invalid_id", "Invalid ID.") from None


def _need(request: Request, name: str) -> Any:
    body = request.json() or {}
    if name not in body:
        raise ApiError(400, f"missing field {name!r}")
    return body[name]


def _price_str(price: Any) -> str:
    if isinstance(price, str):
        return price
    return str(Decimal(str(price)))


def _int_param(request: Request, name: str, default: int | None, minimum: int | None = None,
               maximum: int | None = None) -> int | None:
    raw = request.arg(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise invalid_param(name, f"{name} is not of type integer.") from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        if maximum is None:
            reason = f"{name} must be greater than or equal to {minimum}"
        else:
            reason = f"{name} must be between {minimum} (inclusive) and {maximum} (inclusive)"
        raise invalid_param(name, reason)
    return value


def _date_param(request: Request, name: str) -> int | None:
    raw = request.arg(name)
    if not raw:
        return None
    try:
        parsed = parse_iso(raw)
    except ValueError:
        raise invalid_param(name, "Invalid date.") from None
    # Second granularity, as the post/order tables store dates.
    return epoch(parsed)


def parse_query(request: Request, orderby_allowed: list[str]) -> Query:
    """The CRUD controller's collection params, validated like the WordPress schema."""
    order = request.arg("order", "desc")
    if order not in ("asc", "desc"):
        raise invalid_param("order", one_of("order", ("asc", "desc")))
    orderby = request.arg("orderby", "date")
    if orderby not in orderby_allowed:
        raise invalid_param("orderby", one_of("orderby", orderby_allowed))
    as_bool(request.arg("dates_are_gmt", "false"), "dates_are_gmt")  # site timezone is UTC: same result
    include = request.args("include")
    exclude = request.args("exclude")
    try:
        include_ids = [int(i) for i in include] if include else None
        exclude_ids = {int(i) for i in exclude}
    except ValueError:
        raise invalid_param("include" if include else "exclude", "Ids must be integers.") from None
    return Query(
        page=_int_param(request, "page", 1, 1),
        per_page=_int_param(request, "per_page", 10, 1, 100),
        offset=_int_param(request, "offset", None, 0),
        order_desc=order == "desc",
        orderby=orderby,
        created_after=_date_param(request, "after"),
        created_before=_date_param(request, "before"),
        modified_after=_date_param(request, "modified_after"),
        modified_before=_date_param(request, "modified_before"),
        include=include_ids,
        exclude=exclude_ids,
    )


def product_predicate(request: Request, with_type_filter: bool, trashed: bool = False) -> Callable[[dict], bool] | None:
    """Linear filters (status, type, stock_status, search, ...) — only built when asked for."""
    checks: list[Callable[[dict], bool]] = []
    status = request.arg("status")
    if status and status != "any":
        if status not in PRODUCT_STATUSES + ("trash",):
            raise invalid_param("status", one_of("status", ("any",) + PRODUCT_STATUSES + ("trash",)))
        checks.append(lambda r: r["status"] == status)
    elif trashed:  # "any" leaves the trash out
        checks.append(lambda r: r["status"] != "trash")
    ptype = request.arg("type")
    if with_type_filter and ptype:
        if ptype not in ("simple", "grouped", "external", "variable"):
            raise invalid_param("type", one_of("type", ("simple", "grouped", "external", "variable")))
        checks.append(lambda r: r["type"] == ptype)
    stock_status = request.arg("stock_status")
    if stock_status:
        if stock_status not in STOCK_STATUSES:
            raise invalid_param("stock_status", one_of("stock_status", STOCK_STATUSES))
        checks.append(lambda r: r["stock_status"] == stock_status)
    skus = request.args("sku")
    if skus and not with_type_filter:
        wanted = set(skus)
        checks.append(lambda r: r["sku"] in wanted)
    parents = request.args("parent")
    if parents and with_type_filter:
        wanted_parents = {int(p) for p in parents if p.isdigit()}
        checks.append(lambda r: r["parent_id"] in wanted_parents)
    category = request.arg("category")
    if category:
        checks.append(lambda r: any(str(c.get("id")) == category for c in r["categories"]))
    gtin = request.arg("global_unique_id")
    if gtin:
        checks.append(lambda r: r["global_unique_id"] == gtin)
    search = (request.arg("search") or "").lower()
    if search:
        checks.append(lambda r: search in r["name"].lower()
                      or search in str(r["extra"].get("description", "")).lower())
    if not checks:
        return None
    return lambda r: all(check(r) for check in checks)


def _order_matches(record: dict, term: str) -> bool:
    # HPOS search: the id, item names, and the address indexes.
    if term == str(record["id"]):
        return True
    if any(term in li["name"].lower() for li in record["line_items"] + record["fee_lines"] if "name" in li):
        return True
    return any(term in str(v).lower() for v in list(record["billing"].values()) + list(record["shipping"].values()))


CURRENCY_SYMBOLS = {"EUR": "\u20ac", "USD": "$", "GBP": "\u00a3", "CHF": "CHF", "SEK": "kr", "PLN": "z\u0142"}


def _self(href: str, allow: str) -> dict:
    return {"href": href, "targetHints": {"allow": allow.split(", ")}}


def render_meta(meta: list[dict]) -> list[dict]:
    """Order item meta as core shows it: with ``display_key`` (an attribute's label) and ``display_value``."""
    return [{"id": m["id"], "key": m["key"], "value": m["value"], "display_key": m.get("display_key", m["key"]),
             "display_value": m["value"] if isinstance(m["value"], str) else m["value"]} for m in meta]


def render_shipping_line(line: dict) -> dict:
    return {"id": line["id"], "method_title": line.get("method_title", ""), "method_id": line.get("method_id", ""),
            "instance_id": str(line.get("instance_id", "")), "total": line["total"],
            "total_tax": line.get("total_tax", "0.00"), "taxes": [dict(t) for t in line.get("taxes", [])],
            "tax_status": line.get("tax_status", "taxable"), "meta_data": render_meta(line["meta_data"])}


def render_fee_line(fee: dict) -> dict:
    return {"id": fee["id"], "name": fee.get("name", ""), "tax_class": fee.get("tax_class", ""),
            "tax_status": fee.get("tax_status", "taxable"), "amount": fee["total"], "total": fee["total"],
            "total_tax": fee.get("total_tax", "0.00"), "taxes": [dict(t) for t in fee.get("taxes", [])],
            "meta_data": render_meta(fee["meta_data"])}


def _price_number(value: Any) -> int | float:
    number = float(value or 0)
    return int(number) if number.is_integer() else number


def render_line_item(item: dict, store: WooStore) -> dict:
    body = {"id": item["id"], "name": item["name"], "product_id": item["product_id"],
            "variation_id": item["variation_id"], "quantity": item["quantity"], "tax_class": "",
            "subtotal": item["subtotal"], "subtotal_tax": item.get("subtotal_tax", "0.00"), "total": item["total"],
            "total_tax": item.get("total_tax", "0.00"), "taxes": [dict(t) for t in item.get("taxes", [])],
            "meta_data": render_meta(item["meta_data"]), "sku": item["sku"] if item["product_id"] else None,
            "price": _price_number(item["price"]),
            "image": {"id": "" if item["product_id"] and not item["variation_id"] else 0, "src": ""},
            "parent_name": None}
    if item["variation_id"]:
        parent = store.products.get(item["product_id"])
        body["parent_name"] = parent["name"] if parent else None
    return body


def render_fulfillment(fulfillment: dict) -> dict:
    updated = wp_date(fulfillment["updated"]).replace("T", " ")
    return {"id": fulfillment["id"], "entity_type": fulfillment["entity_type"],
            "entity_id": fulfillment["entity_id"], "status": fulfillment["status"],
            "is_fulfilled": fulfillment["is_fulfilled"], "date_updated": updated,
            "date_deleted": fulfillment["date_deleted"], "meta_data": [dict(m) for m in fulfillment["meta_data"]]}


def filter_fields(body: dict, fields: list[str]) -> dict:
    """WordPress ``_fields``: keep the named top-level fields (``a.b`` keeps a nested part)."""
    if not fields:
        return body
    out: dict = {}
    for spec in fields:
        head, _, rest = spec.partition(".")
        if head not in body:
            continue
        if rest and isinstance(body[head], dict):
            nested = filter_fields(body[head], [rest])
            existing = out.get(head)
            out[head] = {**existing, **nested} if isinstance(existing, dict) else nested
        else:
            out[head] = body[head]
    return out
