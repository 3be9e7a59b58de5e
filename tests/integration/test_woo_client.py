"""WooCommerceClient against the running sandbox store over loopback HTTP."""
from __future__ import annotations

import logging
import time
from datetime import timedelta
from typing import Any, Callable, Iterator

import pytest

from include.sandbox.core import Sandbox
from include.woo_mirakl.clients.http import ApiError, MalformedResponseError, RetryPolicy, UncertainWriteError
from include.woo_mirakl.clients.woocommerce import WooCommerceClient

KEY, SECRET = "ck_sandbox", "cs_sandbox"
FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, timeout=1.0, connect_timeout=1.0)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(seed=11).start()
    yield sb
    sb.stop()


@pytest.fixture(autouse=True)
def clean_faults(sandbox: Sandbox) -> Iterator[None]:
    sandbox.faults.clear()
    yield
    sandbox.faults.clear()


@pytest.fixture()
def client(sandbox: Sandbox) -> WooCommerceClient:
    return WooCommerceClient(sandbox.woo_url, KEY, SECRET, retry=FAST)


def calls(sandbox: Sandbox, operation: str) -> int:
    return sandbox.log.count("woo", operation)


def on_response(client: WooCommerceClient, path: str, action: Callable[[int], None]) -> None:
    seen = {"n": 0}

    def hook(response: Any, *args: Any, **kwargs: Any) -> None:
        if response.request.path_url.split("?")[0].endswith(path):
            seen["n"] += 1
            action(seen["n"])

    client.session.hooks["response"].append(hook)


def new_order(client: WooCommerceClient, sku: str, **fields: Any) -> dict:
    return client.create_order({"status": "on-hold", "line_items": [{"sku": sku, "quantity": 1}], **fields})


def test_version_is_detected_once_per_client(sandbox: Sandbox, client: WooCommerceClient) -> None:
    before = calls(sandbox, "woo.system_status")
    assert client.version() == (9, 8, 0) and client.version_string() == "9.8.0"
    assert client.has_refunds_endpoint()
    assert calls(sandbox, "woo.system_status") == before + 1


def test_listing_pages_while_products_change(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        made = [sandbox.woo.add_simple_product(f"PG-{i:04d}", 10, 5)["id"] for i in range(250)]
    other = WooCommerceClient(sandbox.woo_url, KEY, SECRET, retry=FAST)
    deleted, added = [], []

    def change(page: int) -> None:
        if page == 1:  # products already read disappear: the rest moves towards the start
            for product_id in made[5:8]:
                other.request("DELETE", f"/wp-json/wc/v3/products/{product_id}", "woo.products.delete",
                              params={"force": "true"})
                deleted.append(product_id)
            with sandbox.lock:
                added.append(sandbox.woo.add_simple_product("PG-NEW", 10, 5)["id"])

    on_response(client, "/products", change)
    seen = [p["id"] for p in client.iter_products(search="PG-")]
    assert len(seen) == len(set(seen))
    missing = set(made) - set(deleted) - set(seen)
    assert not missing, f"products missed: {sorted(missing)[:5]}"
    assert set(added) <= set(seen)


def test_modified_after_with_overlap_window(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        sandbox.woo.add_simple_product("MOD-OLD", 10, 5)
        sandbox.woo.add_simple_product("MOD-NEW", 10, 5)
    sandbox.clock.advance(3600)
    cursor = sandbox.now()
    sandbox.clock.advance(60)
    with sandbox.lock:
        sandbox.woo.set_stock("MOD-NEW", 9)
    changed = list(client.iter_products(modified_after=cursor, overlap=timedelta(seconds=30)))
    skus = [p["sku"] for p in changed]
    assert "MOD-NEW" in skus and "MOD-OLD" not in skus
    [entry] = [e for e in sandbox.log.entries("woo", "woo.products.list")][-1:]
    assert entry["query"]["dates_are_gmt"] == ["true"] and entry["query"]["orderby"] == ["id"]
    assert entry["query"]["per_page"] == ["100"]


def test_sku_lookup_covers_simple_products_and_variations(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        sandbox.woo.add_simple_product("SKU-SIMPLE", "12.50", 4)
        parent = sandbox.woo.add_variable_product("Shirt", [
            {"sku": "SKU-VAR-S", "price": 20, "stock_quantity": 2, "attributes": [{"name": "Size", "option": "S"}]},
            {"sku": "SKU-VAR-M", "price": 20, "stock_quantity": 3, "attributes": [{"name": "Size", "option": "M"}]},
        ])
        many = [sandbox.woo.add_simple_product(f"BULK-{i:03d}", 1, 1)["sku"] for i in range(60)]
    before = calls(sandbox, "woo.products.list")
    found = client.products_by_sku(["SKU-SIMPLE", "SKU-VAR-M", "NO-SUCH-SKU", *many])
    assert calls(sandbox, "woo.products.list") == before + 2  # 63 SKUs in chunks of 50
    assert found["SKU-SIMPLE"].type == "simple" and found["SKU-SIMPLE"].stock_quantity == 4
    variation = found["SKU-VAR-M"]
    assert variation.is_variation and variation.parent_id == parent["id"] and variation.stock_quantity == 3
    assert "NO-SUCH-SKU" not in found and set(many) <= set(found)
    with pytest.raises(ValueError, match="comma"):
        client.products_by_sku(["A,B"])


def test_batch_updates_in_chunks_with_per_item_errors(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        ids = [sandbox.woo.add_simple_product(f"BT-{i:03d}", 5, 1)["id"] for i in range(150)]
    before = calls(sandbox, "woo.products.batch")
    updates = [{"id": pid, "manage_stock": True, "stock_quantity": 7} for pid in ids] + [{"id": 999999999,
                                                                                        "stock_quantity": 1}]
    result = client.batch_products(updates)
    assert calls(sandbox, "woo.products.batch") == before + 2
    assert len(result.updated) == 150 and not result.ok
    [error] = result.errors
    assert error.id == 999999999 and error.code and error.action == "update"
    with sandbox.lock:
        assert sandbox.woo.product_by_sku("BT-149")["stock_quantity"] == 7


def test_variation_batch(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        parent = sandbox.woo.add_variable_product("Cap", [
            {"sku": "CAP-RED", "price": 9, "stock_quantity": 1, "attributes": [{"name": "Color", "option": "Red"}]}])
    ref = client.products_by_sku(["CAP-RED"])["CAP-RED"]
    result = client.batch_variations(parent["id"], [{"id": ref.product_id, "stock_quantity": 6}])
    assert result.ok and client.products_by_sku(["CAP-RED"])["CAP-RED"].stock_quantity == 6


def test_orders_notes_meta_lookup_and_refunds(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        sandbox.woo.add_simple_product("ORD-1", "20.00", 10)
    started = sandbox.now() - timedelta(seconds=1)
    order = new_order(client, "ORD-1", meta_data=[{"key": "_mirakl_order_id", "value": "MKP-42-A"}])
    assert client.get_order(order["id"])["status"] == "on-hold"
    client.update_order(order["id"], {"status": "processing"})
    client.add_note(order["id"], "Marketplace order MKP-42-A")
    assert any(n["note"] == "Marketplace order MKP-42-A" for n in client.list_notes(order["id"]))

    [found] = client.find_orders_with_meta("_mirakl_order_id", "MKP-42-A", started)
    assert found["id"] == order["id"]
    assert client.find_orders_with_meta("_mirakl_order_id", "MKP-OTHER", started) == []

    item = client.get_order(order["id"])["line_items"][0]
    refund = client.create_refund(order["id"], {"amount": "5.00", "reason": "damaged",
                                                "line_items": [{"id": item["id"], "quantity": 0,
                                                                "refund_total": "5.00"}]})
    assert refund["amount"] == "5.00"
    listed = [r for r in client.iter_refunds(modified_after=started) if r.get("parent_id") == order["id"]]
    assert [r["id"] for r in listed] == [refund["id"]]

    # before 9.0 there is no /refunds: the client reads them per order
    sandbox.woo.version = "8.9.3"
    try:
        old_store = WooCommerceClient(sandbox.woo_url, KEY, SECRET, retry=FAST)
        before = calls(sandbox, "woo.refunds.all")
        old = [r for r in old_store.iter_refunds(modified_after=started) if r["parent_id"] == order["id"]]
        assert [r["id"] for r in old] == [refund["id"]] and calls(sandbox, "woo.refunds.all") == before
    finally:
        sandbox.woo.version = "9.8.0"


def test_shipments_from_the_extension_or_from_meta(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        sandbox.woo.add_simple_product("SHIP-1", "20.00", 10)
        sandbox.woo.settings["shipment_tracking_installed"] = True  # the plugin, installed for this part
    order = new_order(client, "SHIP-1")
    with sandbox.lock:
        sandbox.woo.ship_order(order["id"], tracking_provider="Colissimo", tracking_number="6A123")
    [shipment] = client.shipments(order["id"])
    assert (shipment.tracking_number, shipment.source) == ("6A123", "shipment-tracking")

    sandbox.woo.settings["shipment_tracking_installed"] = False
    try:
        no_plugin = WooCommerceClient(sandbox.woo_url, KEY, SECRET, retry=FAST)
        meta_order = new_order(no_plugin, "SHIP-1", meta_data=[{"key": "_wc_shipment_tracking_items", "value": [
            {"tracking_provider": "", "custom_tracking_provider": "Local Courier",
             "custom_tracking_link": "https://courier.example/t/77", "tracking_number": "77",
             "date_shipped": "1767225600", "tracking_id": "abc"}]}])
        [shipment] = no_plugin.shipments(meta_order["id"])
        assert (shipment.tracking_number, shipment.provider, shipment.source) == ("77", "Local Courier", "meta")
        before = calls(sandbox, "woo.tracking.list")
        no_plugin.shipments(meta_order["id"])
        assert calls(sandbox, "woo.tracking.list") == before  # the missing route is remembered
    finally:
        sandbox.woo.settings["shipment_tracking_installed"] = False


def test_shipments_from_core_fulfillments_come_first(sandbox: Sandbox) -> None:
    with sandbox.lock:
        sandbox.woo.add_simple_product("FUL-1", "20.00", 10)
    sandbox.woo.settings["fulfillments_enabled"] = True
    try:
        client = WooCommerceClient(sandbox.woo_url, KEY, SECRET, retry=FAST)
        order = new_order(client, "FUL-1")
        assert client.shipments(order["id"]) == []  # not shipped yet: nothing anywhere
        with sandbox.lock:
            sandbox.woo.ship_order(order["id"], tracking_provider="UPS", tracking_number="1Z999")
        [shipment] = client.shipments(order["id"])
        assert (shipment.tracking_number, shipment.source) == ("1Z999", "fulfillments")
        assert shipment.provider and shipment.date_shipped
    finally:
        sandbox.woo.settings["fulfillments_enabled"] = False


def test_read_retries_on_429_5xx_drop_slow_and_malformed(sandbox: Sandbox, client: WooCommerceClient) -> None:
    for fault in ({"kind": "status", "status": 429, "retry_after": 1}, {"kind": "status", "status": 502},
                  {"kind": "drop"}, {"kind": "slow", "delay": 1.5}, {"kind": "malformed"}):
        sandbox.faults.set([{"service": "woo", "operation": "woo.system_status", "count": 1, **fault}])
        started = time.monotonic()
        assert client.system_status(refresh=True)["environment"]["version"] == "9.8.0", fault
        if fault.get("retry_after"):
            assert time.monotonic() - started >= 1.0
    sandbox.faults.set([{"service": "woo", "operation": "woo.system_status", "kind": "malformed"}])
    with pytest.raises(MalformedResponseError):
        client.system_status(refresh=True)


def test_creating_an_order_is_never_retried_blindly(sandbox: Sandbox, client: WooCommerceClient) -> None:
    with sandbox.lock:
        sandbox.woo.add_simple_product("UNC-1", "20.00", 10)
    for fault in ({"kind": "status", "status": 500}, {"kind": "drop"}):
        sandbox.faults.set([{"service": "woo", "operation": "woo.orders.create", "count": 1, **fault}])
        before = calls(sandbox, "woo.orders.create")
        with pytest.raises(UncertainWriteError):
            new_order(client, "UNC-1")
        assert calls(sandbox, "woo.orders.create") == before + 1
    # a timeout: the store may well have created it, and a blind retry would create a second one
    sandbox.faults.set([{"service": "woo", "operation": "woo.orders.create", "kind": "slow", "delay": 1.5,
                         "count": 1}])
    started = sandbox.now() - timedelta(seconds=1)
    with pytest.raises(UncertainWriteError, match="timed out"):
        new_order(client, "UNC-1", meta_data=[{"key": "_mirakl_order_id", "value": "UNC-ORDER"}])
    time.sleep(0.8)
    assert len(client.find_orders_with_meta("_mirakl_order_id", "UNC-ORDER", started)) == 1


def test_bad_secret_is_an_api_error_without_credentials(
    sandbox: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for query_string_auth in (False, True):
        bad = WooCommerceClient(sandbox.woo_url, KEY, "cs_wrong_5e1f", query_string_auth=query_string_auth,
                                retry=FAST)
        with pytest.raises(ApiError) as error:
            bad.system_status()
        assert error.value.status == 401 and error.value.code == "woocommerce_rest_authentication_error"
        assert error.value.message == "Consumer secret is invalid."
        for text in (str(error.value), repr(error.value), repr(bad), caplog.text):
            assert "cs_wrong_5e1f" not in text


def test_query_string_auth(sandbox: Sandbox) -> None:
    client = WooCommerceClient(sandbox.woo_url, KEY, SECRET, query_string_auth=True, retry=FAST)
    assert client.version() == (9, 8, 0)
    entry = sandbox.log.entries("woo", "woo.system_status")[-1]
    assert entry["status"] == 200
