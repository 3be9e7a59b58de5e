"""The simulated WooCommerce wc/v3 API over real HTTP: auth, collections, stock, refunds, tracking."""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import pytest
import requests

from include.sandbox.core import Sandbox

API = "/wp-json/wc/v3"
_skus = itertools.count(1)


def sku(prefix: str = "T") -> str:
    return f"{prefix}-{next(_skus):05d}"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox().start(0, 0)
    yield box
    box.stop()


@pytest.fixture(scope="module")
def http(sandbox: Sandbox) -> requests.Session:
    session = requests.Session()
    session.auth = ("ck_sandbox", "cs_sandbox")
    return session


@pytest.fixture
def woo(sandbox: Sandbox):
    """The service, with settings and version restored after each test."""
    service = sandbox.woo
    saved = (dict(service.settings), service.version)
    yield service
    service.settings.clear()
    service.settings.update(saved[0])
    service.version = saved[1]


def url(sandbox: Sandbox, path: str) -> str:
    return sandbox.woo_url + path


# Auth ---------------------------------------------------------------------------------------
def test_missing_auth_is_cannot_view(sandbox: Sandbox) -> None:
    response = requests.get(url(sandbox, API + "/products"))
    assert response.status_code == 401
    assert response.json() == {"code": "woocommerce_rest_cannot_view",
                               "message": "Sorry, you cannot list resources.", "data": {"status": 401}}


def test_wrong_secret_and_wrong_key(sandbox: Sandbox) -> None:
    bad_secret = requests.get(url(sandbox, API + "/products"), auth=("ck_sandbox", "cs_wrong"))
    assert bad_secret.status_code == 401
    assert bad_secret.json()["code"] == "woocommerce_rest_authentication_error"
    assert bad_secret.json()["message"] == "Consumer secret is invalid."
    assert "cs_wrong" not in bad_secret.text
    bad_key = requests.get(url(sandbox, API + "/products"), auth=("ck_other", "cs_sandbox"))
    assert bad_key.status_code == 401 and bad_key.json()["message"] == "Consumer key is invalid."


def test_query_string_auth_is_checked_first(sandbox: Sandbox) -> None:
    ok = requests.get(url(sandbox, API + "/products"), auth=("ck_sandbox", "cs_wrong"),
                      params={"consumer_key": "ck_sandbox", "consumer_secret": "cs_sandbox"})
    assert ok.status_code == 200
    calls = sandbox.log.entries("woo", "woo.products.list")
    assert all("consumer_secret" not in c["query"] for c in calls)


def test_read_only_key_cannot_write(sandbox: Sandbox, http: requests.Session, woo) -> None:
    woo.settings["key_permissions"] = "read"
    assert http.get(url(sandbox, API + "/products")).status_code == 200
    response = http.post(url(sandbox, API + "/products"), json={"name": "x"})
    assert response.status_code == 401
    assert response.json()["message"] == "The API key provided does not have write permissions."


# Index and version ---------------------------------------------------------------------------
def test_index_and_system_status_follow_version(sandbox: Sandbox, http: requests.Session, woo) -> None:
    status = http.get(url(sandbox, API + "/system_status")).json()
    assert status["environment"]["version"] == "9.8.0"
    routes = http.get(url(sandbox, API)).json()["routes"]
    assert "/wc/v3/refunds" in routes and "/wc/v3/variations" not in routes
    woo.version = "10.3.1"
    routes = http.get(url(sandbox, API)).json()["routes"]
    assert "/wc/v3/variations" in routes
    assert http.get(url(sandbox, API + "/variations")).status_code == 200


def test_refunds_route_absent_before_9(sandbox: Sandbox, http: requests.Session, woo) -> None:
    woo.version = "8.9.3"
    response = http.get(url(sandbox, API + "/refunds"))
    assert response.status_code == 404
    assert response.json()["code"] == "rest_no_route"
    assert http.get(url(sandbox, API + "/variations")).json()["code"] == "rest_no_route"


# Collections ---------------------------------------------------------------------------------
def test_pagination_headers_links_and_limits(sandbox: Sandbox, http: requests.Session, woo) -> None:
    for _ in range(25):
        woo.add_simple_product(sku("PG"), "5.00", 3)
    first = http.get(url(sandbox, API + "/products"), params={"per_page": 10})
    total = int(first.headers["X-WP-Total"])
    assert total >= 25
    assert int(first.headers["X-WP-TotalPages"]) == -(-total // 10)
    assert 'rel="next"' in first.headers["Link"] and 'rel="prev"' not in first.headers["Link"]
    second = http.get(url(sandbox, API + "/products"), params={"per_page": 10, "page": 2})
    assert 'rel="prev"' in second.headers["Link"] and "page=3" in second.headers["Link"]
    assert not {p["id"] for p in first.json()} & {p["id"] for p in second.json()}
    beyond = http.get(url(sandbox, API + "/products"), params={"per_page": 10, "page": 999})
    assert beyond.status_code == 200 and beyond.json() == []
    assert beyond.headers["X-WP-Total"] == str(total)
    too_many = http.get(url(sandbox, API + "/products"), params={"per_page": 101})
    assert too_many.status_code == 400 and too_many.json()["code"] == "rest_invalid_param"
    assert http.get(url(sandbox, API + "/products"), params={"page": 0}).status_code == 400


def test_order_and_fields(sandbox: Sandbox, http: requests.Session, woo) -> None:
    created = [woo.add_simple_product(sku("OF"), "1.00", 1)["id"] for _ in range(3)]
    body = http.get(url(sandbox, API + "/products"),
                    params={"include": ",".join(map(str, created)), "orderby": "id", "order": "asc",
                            "_fields": "id,sku,stock_quantity"}).json()
    assert [p["id"] for p in body] == created
    assert set(body[0]) == {"id", "sku", "stock_quantity"}


def test_sku_lookup_finds_variations(sandbox: Sandbox, http: requests.Session, woo) -> None:
    var_skus = [sku("VAR"), sku("VAR")]
    parent = woo.add_variable_product("Shirt", variations=[
        {"sku": var_skus[0], "price": "20.00", "stock_quantity": 4, "attributes": [{"name": "Size", "option": "S"}]},
        {"sku": var_skus[1], "price": "22.00", "stock_quantity": 0, "attributes": [{"name": "Size", "option": "M"}]},
    ])
    simple = woo.add_simple_product(sku("SIM"), "9.99", 2)
    found = http.get(url(sandbox, API + "/products"), params={"sku": f"{var_skus[1]},{simple['sku']}"}).json()
    by_sku = {p["sku"]: p for p in found}
    assert by_sku[var_skus[1]]["type"] == "variation"
    assert by_sku[var_skus[1]]["parent_id"] == parent["id"]
    assert by_sku[var_skus[1]]["stock_status"] == "outofstock"
    assert by_sku[simple["sku"]]["price"] == "9.99"
    variations = http.get(url(sandbox, f"{API}/products/{parent['id']}/variations")).json()
    assert sorted(v["sku"] for v in variations) == sorted(var_skus)
    assert http.get(url(sandbox, API + "/products"), params={"sku": "NOPE-404"}).json() == []
    assert woo.product_by_sku(var_skus[0])["parent_id"] == parent["id"]
    parent_view = http.get(url(sandbox, f"{API}/products/{parent['id']}")).json()
    assert parent_view["type"] == "variable" and parent_view["price"] == "20.00"


def test_duplicate_sku_is_rejected(sandbox: Sandbox, http: requests.Session, woo) -> None:
    existing = woo.add_simple_product(sku("DUP"), "1.00", 1)
    response = http.post(url(sandbox, API + "/products"), json={"name": "again", "sku": existing["sku"]})
    assert response.status_code == 400 and response.json()["code"] == "product_invalid_sku"


def test_modified_after_is_exclusive_and_second_grained(sandbox: Sandbox, http: requests.Session, woo) -> None:
    old = woo.add_simple_product(sku("MA"), "3.00", 3)
    sandbox.clock.advance(5)
    changed = woo.add_simple_product(sku("MA"), "3.00", 3)
    sandbox.clock.advance(5)
    response = http.put(url(sandbox, f"{API}/products/{changed['id']}"), json={"regular_price": "4.00"})
    stamp = response.json()["date_modified_gmt"]
    assert stamp > changed["date_modified_gmt"]
    since = http.get(url(sandbox, API + "/products"),
                     params={"modified_after": old["date_modified_gmt"], "dates_are_gmt": "true",
                             "orderby": "modified", "order": "asc", "per_page": 100}).json()
    ids = [p["id"] for p in since]
    assert changed["id"] in ids and old["id"] not in ids
    assert http.get(url(sandbox, API + "/products"), params={"modified_after": stamp}).json() == []


def test_stock_quantity_ignored_without_manage_stock(sandbox: Sandbox, http: requests.Session, woo) -> None:
    product = woo.add_simple_product(sku("MS"), "2.00", None, manage_stock=False)
    body = http.put(url(sandbox, f"{API}/products/{product['id']}"), json={"stock_quantity": 7}).json()
    assert body["manage_stock"] is False and body["stock_quantity"] is None
    body = http.put(url(sandbox, f"{API}/products/{product['id']}"),
                    json={"manage_stock": True, "stock_quantity": 7}).json()
    assert body["stock_quantity"] == 7 and body["stock_status"] == "instock"
    bad = http.put(url(sandbox, f"{API}/products/{product['id']}"), json={"regular_price": 5})
    assert bad.status_code == 400 and bad.json()["code"] == "rest_invalid_param"


# Batch ---------------------------------------------------------------------------------------
def test_batch_limit_and_item_errors(sandbox: Sandbox, http: requests.Session, woo) -> None:
    product = woo.add_simple_product(sku("BT"), "1.00", 1)
    other = woo.add_simple_product(sku("BT"), "1.00", 1)
    too_big = http.post(url(sandbox, API + "/products/batch"),
                        json={"update": [{"id": product["id"], "stock_quantity": n} for n in range(101)]})
    assert too_big.status_code == 413
    assert too_big.json()["code"] == "woocommerce_rest_request_entity_too_large"
    result = http.post(url(sandbox, API + "/products/batch"), json={
        "create": [{"name": "dup", "sku": other["sku"]}],
        "update": [{"id": product["id"], "stock_quantity": 42}, {"id": 99999999, "stock_quantity": 1}],
        "delete": [other["id"]],
    })
    assert result.status_code == 200
    body = result.json()
    assert body["create"][0]["error"]["code"] == "product_invalid_sku"
    assert body["update"][0]["stock_quantity"] == 42
    assert body["update"][1]["id"] == 99999999
    assert body["update"][1]["error"]["code"] == "woocommerce_rest_product_invalid_id"
    assert body["delete"][0]["id"] == other["id"]
    assert woo.product_by_sku(other["sku"]) is None


def test_variation_batch_updates_stock(sandbox: Sandbox, http: requests.Session, woo) -> None:
    s = sku("VB")
    parent = woo.add_variable_product("Cap", variations=[
        {"sku": s, "price": "10.00", "stock_quantity": 1, "attributes": [{"name": "Color", "option": "Red"}]}])
    variation_id = parent["variations"][0]
    body = http.post(url(sandbox, f"{API}/products/{parent['id']}/variations/batch"),
                     json={"update": [{"id": variation_id, "stock_quantity": 9, "regular_price": "11.00"}]}).json()
    assert body["update"][0]["stock_quantity"] == 9 and body["update"][0]["price"] == "11.00"
    assert woo.product_by_sku(s)["stock_quantity"] == 9


# Orders and stock ------------------------------------------------------------------------------
def test_order_on_hold_reduces_and_cancel_restores(sandbox: Sandbox, http: requests.Session, woo) -> None:
    var_sku = sku("OS")
    woo.add_variable_product("Jacket", variations=[
        {"sku": var_sku, "price": "50.00", "stock_quantity": 10, "attributes": [{"name": "Size", "option": "L"}]}])
    simple = woo.add_simple_product(sku("OS"), "5.00", 4)
    response = http.post(url(sandbox, API + "/orders"), json={
        "status": "on-hold", "currency": "EUR", "payment_method": "mirakl",
        "line_items": [{"sku": var_sku, "quantity": 3, "total": "140.00", "subtotal": "150.00",
                        "meta_data": [{"key": "mirakl_order_line_id", "value": "X-1"}]},
                       {"product_id": simple["id"], "quantity": 1}],
        "shipping_lines": [{"method_id": "flat_rate", "method_title": "Mirakl", "total": "4.50"}],
        "meta_data": [{"key": "_mirakl_order_id", "value": "X"}],
    })
    assert response.status_code == 201
    order = response.json()
    assert order["status"] == "on-hold" and order["created_via"] == "rest-api"
    assert order["total"] == "149.50" and order["shipping_total"] == "4.50"
    line = order["line_items"][0]
    assert line["sku"] == var_sku and line["variation_id"] and line["quantity"] == 3
    assert woo.product_by_sku(var_sku)["stock_quantity"] == 7
    assert woo.product_by_sku(simple["sku"])["stock_quantity"] == 3
    # Moving between reducing statuses does not reduce twice.
    http.put(url(sandbox, f"{API}/orders/{order['id']}"), json={"status": "processing"})
    assert woo.product_by_sku(var_sku)["stock_quantity"] == 7
    # Editing a line of an order whose stock is taken moves the stock by the difference.
    edited = http.put(url(sandbox, f"{API}/orders/{order['id']}"),
                      json={"line_items": [{"id": line["id"], "quantity": 1}]}).json()
    assert edited["line_items"][0]["quantity"] == 1
    assert woo.product_by_sku(var_sku)["stock_quantity"] == 9
    cancelled = http.put(url(sandbox, f"{API}/orders/{order['id']}"), json={"status": "cancelled"}).json()
    assert cancelled["status"] == "cancelled"
    assert woo.product_by_sku(var_sku)["stock_quantity"] == 10
    assert woo.product_by_sku(simple["sku"])["stock_quantity"] == 4
    notes = http.get(url(sandbox, f"{API}/orders/{order['id']}/notes")).json()
    assert any("Stock levels increased" in n["note"] for n in notes)


def test_pending_order_keeps_stock_and_needs_a_product(sandbox: Sandbox, http: requests.Session, woo) -> None:
    simple = woo.add_simple_product(sku("PD"), "5.00", 4)
    order = http.post(url(sandbox, API + "/orders"), json={"line_items": [{"sku": simple["sku"], "quantity": 2}]}).json()
    assert order["status"] == "pending" and order["total"] == "10.00"
    assert woo.product_by_sku(simple["sku"])["stock_quantity"] == 4
    missing = http.post(url(sandbox, API + "/orders"), json={"line_items": [{"quantity": 2}]})
    assert missing.status_code == 400
    assert missing.json()["code"] == "woocommerce_rest_required_product_reference"
    # a real store keeps a line whose SKU it does not know, without a product (woocommerce-real README, 6)
    unknown = http.post(url(sandbox, API + "/orders"), json={
        "status": "on-hold", "line_items": [{"sku": "NOPE-X", "quantity": 1, "total": "10.00"}]})
    assert unknown.status_code == 201
    [line] = unknown.json()["line_items"]
    assert (line["product_id"], line["name"], line["sku"], line["total"]) == (0, "", None, "10.00")
    assert not any(m["key"] == "_reduced_stock" for m in line["meta_data"])


def test_order_stock_moves_product_modified_setting(sandbox: Sandbox, http: requests.Session, woo) -> None:
    # recorded on a real store: a stock change made by an order moves the product's date_modified
    moved = woo.add_simple_product(sku("SM"), "5.00", 9)
    sandbox.clock.advance(3)
    woo.direct_sale(moved["sku"], 1)
    after = woo.product_by_sku(moved["sku"])
    assert after["stock_quantity"] == 8 and after["date_modified_gmt"] > moved["date_modified_gmt"]
    woo.settings["order_stock_moves_product_modified"] = False  # kept to model an older store, harsher
    sandbox.clock.advance(3)
    woo.direct_sale(moved["sku"], 1)
    assert woo.product_by_sku(moved["sku"])["date_modified_gmt"] == after["date_modified_gmt"]


def test_orders_list_filters(sandbox: Sandbox, http: requests.Session, woo) -> None:
    simple = woo.add_simple_product(sku("OL"), "5.00", 50)
    sale = woo.direct_sale(simple["sku"], 1)
    assert sale["created_via"] == "checkout" and sale["status"] == "processing"
    sandbox.clock.advance(2)
    marker = woo.order(sale["id"])["date_modified_gmt"]
    sandbox.clock.advance(2)
    created = http.post(url(sandbox, API + "/orders"), json={
        "status": "on-hold", "line_items": [{"sku": simple["sku"], "quantity": 1}],
        "meta_data": [{"key": "_mirakl_order_id", "value": "M-1"}, {"key": "other", "value": "x"}]}).json()
    listed = http.get(url(sandbox, API + "/orders"), params={
        "modified_after": marker, "status": "on-hold,processing", "include_meta": "_mirakl_order_id",
        "per_page": 100}).json()
    ids = [o["id"] for o in listed]
    assert created["id"] in ids and sale["id"] not in ids
    mine = next(o for o in listed if o["id"] == created["id"])
    assert [m["key"] for m in mine["meta_data"]] == ["_mirakl_order_id"]
    assert http.get(url(sandbox, API + "/orders"), params={"status": "bogus"}).status_code == 400


def test_order_notes(sandbox: Sandbox, http: requests.Session, woo) -> None:
    simple = woo.add_simple_product(sku("NT"), "5.00", 5)
    order = woo.direct_sale(simple["sku"], 1)
    note = http.post(url(sandbox, f"{API}/orders/{order['id']}/notes"),
                     json={"note": "Mirakl message", "customer_note": True})
    assert note.status_code == 201 and note.json()["customer_note"] is True
    listed = http.get(url(sandbox, f"{API}/orders/{order['id']}/notes"), params={"type": "customer"}).json()
    assert [n["note"] for n in listed] == ["Mirakl message"]


# Refunds -------------------------------------------------------------------------------------
def test_refunds(sandbox: Sandbox, http: requests.Session, woo) -> None:
    simple = woo.add_simple_product(sku("RF"), "10.00", 10)
    order = http.post(url(sandbox, API + "/orders"), json={
        "status": "processing", "payment_method": "mirakl",
        "line_items": [{"sku": simple["sku"], "quantity": 3}]}).json()
    assert woo.product_by_sku(simple["sku"])["stock_quantity"] == 7
    item_id = order["line_items"][0]["id"]
    refunds_url = url(sandbox, f"{API}/orders/{order['id']}/refunds")
    gateway = http.post(refunds_url, json={"amount": "10.00"})
    assert gateway.status_code == 500
    assert gateway.json()["code"] == "woocommerce_rest_cannot_create_order_refund"
    refund = http.post(refunds_url, json={
        "amount": "10.00", "reason": "damaged", "api_refund": False,
        "line_items": [{"id": item_id, "quantity": 1, "refund_total": "10.00"}]})
    assert refund.status_code == 201
    body = refund.json()
    assert body["amount"] == "10.00" and body["refunded_payment"] is False
    assert body["line_items"][0]["quantity"] == -1 and body["line_items"][0]["total"] == "-10.00"
    assert woo.product_by_sku(simple["sku"])["stock_quantity"] == 8
    over = http.post(refunds_url, json={"amount": "25.00", "api_refund": False})
    assert over.status_code == 500 and over.json()["code"] == "woocommerce_rest_cannot_create_order_refund"
    assert [r["id"] for r in http.get(refunds_url).json()] == [body["id"]]
    everywhere = http.get(url(sandbox, API + "/refunds"), params={"per_page": 100}).json()
    assert {"id": body["id"], "parent_id": order["id"]}.items() <= next(
        r for r in everywhere if r["id"] == body["id"]).items()
    refreshed = http.get(url(sandbox, f"{API}/orders/{order['id']}")).json()
    assert refreshed["refunds"] == [{"id": body["id"], "reason": "damaged", "total": "-10.00"}]
    rest = woo.refund_order(order["id"])
    assert rest["amount"] == "20.00" and woo.order(order["id"])["status"] == "refunded"


# Tracking and fulfillments ---------------------------------------------------------------------
def test_shipment_tracking_extension(sandbox: Sandbox, http: requests.Session, woo) -> None:
    woo.settings["shipment_tracking_installed"] = True  # a plugin: not there unless installed
    simple = woo.add_simple_product(sku("TR"), "10.00", 10)
    order = woo.direct_sale(simple["sku"], 1)
    tracking_url = url(sandbox, f"/wp-json/wc-shipment-tracking/v3/orders/{order['id']}/shipment-trackings")
    created = http.post(tracking_url, json={"custom_tracking_provider": "Colis Prive",
                                            "custom_tracking_link": "https://example.com/t/ABC",
                                            "tracking_number": "ABC", "date_shipped": "2025-07-01"})
    assert created.status_code == 201
    assert created.json()["tracking_number"] == "ABC" and created.json()["date_shipped"] == "2025-07-01"
    assert http.post(tracking_url, json={"tracking_provider": "UPS"}).status_code == 400
    shipped = woo.ship_order(order["id"], tracking_provider="UPS", tracking_number="1Z999")
    assert shipped["status"] == "completed"
    listed = http.get(tracking_url).json()
    assert [t["tracking_number"] for t in listed] == ["ABC", "1Z999"]
    assert "1Z999" in listed[1]["tracking_link"]
    meta = {m["key"]: m["value"] for m in shipped["meta_data"]}
    assert [t["tracking_number"] for t in meta["_wc_shipment_tracking_items"]] == ["ABC", "1Z999"]
    woo.settings["shipment_tracking_installed"] = False
    assert http.get(tracking_url).json()["code"] == "rest_no_route"


def test_core_fulfillments_behind_setting(sandbox: Sandbox, http: requests.Session, woo) -> None:
    simple = woo.add_simple_product(sku("FF"), "10.00", 10)
    order = woo.direct_sale(simple["sku"], 1)
    fulfillments_url = url(sandbox, f"{API}/orders/{order['id']}/fulfillments")
    assert http.get(fulfillments_url).status_code == 404
    woo.settings["fulfillments_enabled"] = True
    woo.ship_order(order["id"], tracking_provider="DHL", tracking_number="JD0001")
    fulfillments = http.get(fulfillments_url).json()
    assert fulfillments[0]["is_fulfilled"] is True
    meta = {m["key"]: m["value"] for m in fulfillments[0]["meta_data"]}
    assert meta["_tracking_number"] == "JD0001"


# Admin API and state -----------------------------------------------------------------------------
def test_admin_routes(sandbox: Sandbox) -> None:
    admin = sandbox.woo_url + "/_admin/woo"
    s = sku("AD")
    assert requests.post(admin + "/products", json={"sku": s, "price": "7.50", "stock_quantity": 5}).status_code == 201
    assert requests.post(admin + "/stock", json={"sku": s, "quantity": 12}).json()["stock_quantity"] == 12
    assert requests.post(admin + "/price", json={"sku": s, "price": "8.00"}).json()["price"] == "8.00"
    sale = requests.post(admin + "/sales", json={"sku": s, "quantity": 2}).json()
    assert requests.get(f"{admin}/products/by-sku/{s}").json()["stock_quantity"] == 10
    shipped = requests.post(f"{admin}/orders/{sale['id']}/ship", json={"tracking_number": "T1",
                                                                      "tracking_provider": "DPD"}).json()
    assert shipped["status"] == "completed"
    refund = requests.post(f"{admin}/orders/{sale['id']}/refund",
                           json={"line_items": [{"sku": s, "quantity": 1}], "reason": "r"}).json()
    assert refund["amount"] == "8.00"
    assert requests.get(f"{admin}/orders/{sale['id']}").json()["refunds"][0]["total"] == "-8.00"
    assert requests.get(f"{admin}/products/by-sku/NOPE").status_code == 404
    assert requests.post(admin + "/settings", json={"nonsense": 1}).status_code == 400
    too_much = requests.post(admin + "/sales", json={"sku": s, "quantity": 1000})
    assert too_much.status_code == 409


def test_state_survives_a_restart(sandbox: Sandbox, woo) -> None:
    s = sku("ST")
    woo.add_simple_product(s, "3.00", 3)
    order = woo.direct_sale(s, 1)
    woo.ship_order(order["id"], tracking_provider="UPS", tracking_number="1Z1")
    state = json.loads(json.dumps(woo.to_state()))  # Sandbox.save writes JSON
    other = Sandbox()
    other.woo.load_state(state)
    assert other.woo.product_by_sku(s)["stock_quantity"] == 2
    assert other.woo.order(order["id"])["line_items"][0]["sku"] == s
    assert other.woo.order(order["id"])["status"] == "completed"
    assert other.woo.product_by_sku(s)["date_modified_gmt"] == woo.product_by_sku(s)["date_modified_gmt"]
    fresh = other.woo.add_simple_product(sku("ST"), "1.00", 1)
    assert fresh["id"] > order["id"]


def test_large_catalogue_loads_and_pages() -> None:
    box = Sandbox().start(0, 0)
    try:
        loaded = box.woo.add_simple_products(
            {"sku": f"BIG-{n:06d}", "price": "12.00", "stock_quantity": n % 7} for n in range(100_000))
        assert loaded == 100_000
        http = requests.Session()
        http.auth = ("ck_sandbox", "cs_sandbox")
        page = http.get(box.woo_url + API + "/products",
                        params={"per_page": 100, "page": 500, "orderby": "id", "order": "asc",
                                "_fields": "id,sku"})
        lookup = http.get(box.woo_url + API + "/products", params={"sku": "BIG-099999"})
        modified = http.get(box.woo_url + API + "/products",
                            params={"modified_after": "2000-01-01T00:00:00", "per_page": 100})
        assert page.headers["X-WP-Total"] == "100000" and page.headers["X-WP-TotalPages"] == "1000"
        assert page.json()[0]["sku"] == "BIG-049900"
        assert lookup.json()[0]["stock_quantity"] == 99_999 % 7
        assert len(modified.json()) == 100
    finally:
        box.stop()
