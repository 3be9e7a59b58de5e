"""The sandbox's Mirakl answers conform to the official spec, and the validator can fail."""
from __future__ import annotations

import json

import pytest
import requests

from include.sandbox import spec
from include.sandbox.core import Clock, Sandbox

KEY = "sandbox-mirakl-key"
HEADERS = {"Authorization": KEY}


@pytest.fixture(scope="module")
def world():
    """A shop with an order in each interesting stage, imports, refunds and a closed cycle."""
    box = Sandbox(seed=11, clock=Clock(frozen=True), validate_requests=True).start(0, 0)
    url = box.mirakl_url
    mirakl = box.mirakl
    with box.lock:
        for index in range(3):
            mirakl.add_offer(f"C-{index}", 19.9 + index, 30, discount_price=15.0 if index == 0 else None)
        waiting = mirakl.place_order([{"offer_sku": "C-0", "quantity": 1}], customer_message="Gift wrap please")
        shipped = mirakl.place_order([{"offer_sku": "C-1", "quantity": 2}, {"offer_sku": "C-2", "quantity": 1}])
    sid = shipped["order_id"]
    requests.put(f"{url}/api/orders/{sid}/accept", headers=HEADERS, timeout=5,
                 json={"order_lines": [{"id": f"{sid}-1", "accepted": True}, {"id": f"{sid}-2", "accepted": False}]})
    with box.lock:
        mirakl.debit(sid)
    requests.put(f"{url}/api/orders/{sid}/tracking", headers=HEADERS, timeout=5,
                 json={"carrier_code": "DHL", "tracking_number": "JD0001"})
    requests.put(f"{url}/api/orders/refund", headers=HEADERS, timeout=5, json={"refunds": [
        {"order_line_id": f"{sid}-1", "amount": 5, "shipping_amount": 1, "quantity": 1, "reason_code": "15"}]})
    requests.put(f"{url}/api/orders/{sid}/ship", headers=HEADERS, timeout=5)
    stock = requests.post(f"{url}/api/offers/stock/imports", headers=HEADERS, timeout=5,
                          files={"file": ("s.csv", "offer-sku;quantity\nC-1;4\nMISSING;1\n")}).json()["import_id"]
    price = requests.post(f"{url}/api/offers/pricing/imports", headers=HEADERS, timeout=5,
                          files={"file": ("p.csv", "offer-sku;price\nC-2;25\nMISSING;1\n")}).json()["import_id"]
    box.clock.advance(5)
    with box.lock:
        mirakl.close_billing_cycle()
    export = requests.post(f"{url}/api/sellerpayment/transactions_logs/async", headers=HEADERS, timeout=5,
                           json={"date_created_from": "2020-01-01T00:00:00Z"}).json()["tracking_id"]
    offers = requests.post(f"{url}/api/offers/export/async", headers=HEADERS, timeout=5,
                           json={"export_type": "application/json"}).json()["tracking_id"]
    order_export = requests.post(f"{url}/api/orders/async-export", headers=HEADERS, timeout=5, json={
        "start_update_date": "2020-01-01T00:00:00Z", "end_update_date": "2099-01-01T00:00:00Z"}).json()["tracking_id"]
    yield {"box": box, "url": url, "waiting": waiting["order_id"], "shipped": sid, "stock": stock, "price": price,
           "export": export, "offer_export": offers, "order_export": order_export}
    box.stop()


def _calls(world: dict) -> list[tuple[str, str, str, dict, dict | None]]:
    """(operation, method, path, query, json body) for every operation the sandbox serves."""
    waiting, shipped = world["waiting"], world["shipped"]
    line = f"{shipped}-1"
    return [
        ("A01", "GET", "/api/account", {}, None),
        ("OR11", "GET", "/api/orders", {"max": "100"}, None),
        ("OR12", "GET", f"/api/orders/{shipped}", {}, None),
        ("OR12", "GET", f"/api/orders/{waiting}", {}, None),
        ("OR21", "PUT", f"/api/orders/{waiting}/accept", {}, {"order_lines": [{"id": f"{waiting}-1", "accepted": True}]}),
        ("OR28", "PUT", "/api/orders/refund", {}, {"refunds": [{"order_line_id": line, "amount": 1, "shipping_amount": 0,
                                                                 "quantity": 0, "reason_code": "15"}]}),
        ("OF21", "GET", "/api/offers", {"max": "10"}, None),
        ("OF24", "POST", "/api/offers", {}, {"offers": [{"shop_sku": "C-9", "product_id": "C-9",
                                                          "product_id_type": "SHOP_SKU", "price": 9.5,
                                                          "state_code": "11", "update_delete": "update"}]}),
        ("OF51", "GET", "/api/offers/export", {}, None),
        ("STO02", "GET", f"/api/offers/stock/imports/{world['stock']}/status", {}, None),
        ("STO03", "GET", f"/api/offers/stock/imports/{world['stock']}/error_report", {}, None),
        ("PRI02", "GET", "/api/offers/pricing/imports", {"import_id": world["price"]}, None),
        ("PRI03", "GET", f"/api/offers/pricing/imports/{world['price']}/error_report", {}, None),
        ("SH21", "GET", "/api/shipping/carriers", {}, None),
        ("TL02", "GET", "/api/sellerpayment/transactions_logs", {"limit": "2000"}, None),
        ("TL03", "POST", "/api/sellerpayment/transactions_logs/async", {},
         {"date_created_from": "2020-01-01T00:00:00Z", "items_per_chunk": 1000, "format": "JSON"}),
        ("TL04", "GET", f"/api/sellerpayment/transactions_logs/async/status/{world['export']}", {}, None),
        ("OF52", "POST", "/api/offers/export/async", {},
         {"export_type": "application/json", "items_per_chunk": 10000, "last_request_date": "2020-01-01T00:00:00Z"}),
        ("OF53", "GET", f"/api/offers/export/async/status/{world['offer_export']}", {}, None),
        ("OR14", "GET", f"/api/orders/async-export/status/{world['order_export']}", {}, None),
        ("IV01", "GET", "/api/invoices", {}, None),
        ("M11", "GET", "/api/inbox/threads", {"entity_type": "MMP_ORDER", "entity_id": waiting,
                                              "with_messages": "true"}, None),
    ]


def test_every_served_operation_answers_as_the_spec_says(world):
    served = {route.operation for route in world["box"].mirakl.routes}
    covered = {call[0] for call in _calls(world)} | {"STO01", "PRI01", "OR23", "OR24", "OR29"} \
        | {"OF02", "OF03", "P41", "P42", "P44", "P45"} \
        | {"OR13"} | {"TL05", "OF54", "OR15"}  # answers checked below, in test_sandbox_mirakl_products.py,
    # test_payout_export_path.py
    # and test_offer_export.py
    assert served <= covered, f"operations without a contract check: {served - covered}"
    failures = {}
    for operation, method, path, query, body in _calls(world):
        response = requests.request(method, world["url"] + path, params=query, json=body, headers=HEADERS, timeout=5)
        assert response.status_code < 300, (operation, response.text)
        errors = spec.validate_response(method, path, response.status_code, response.content,
                                        response.headers.get("Content-Type", "application/json"))
        if errors:
            failures[f"{operation} {path}"] = errors[:5]
    assert failures == {}


def test_import_creation_and_order_actions_answer_as_the_spec_says(world):
    url = world["url"]
    created = requests.post(f"{url}/api/offers/stock/imports", headers=HEADERS, timeout=5,
                            files={"file": ("s.csv", "offer-sku;quantity\nC-0;3\n")})
    assert spec.validate_response("POST", "/api/offers/stock/imports", created.status_code, created.content) == []
    created = requests.post(f"{url}/api/offers/pricing/imports", headers=HEADERS, timeout=5,
                            files={"file": ("p.csv", "offer-sku;price\nC-0;30\n")})
    assert spec.validate_response("POST", "/api/offers/pricing/imports", created.status_code, created.content) == []
    with world["box"].lock:
        order_id = world["box"].mirakl.place_order([{"offer_sku": "C-0", "quantity": 1}])["order_id"]
    requests.put(f"{url}/api/orders/{order_id}/accept", headers=HEADERS, timeout=5,
                 json={"order_lines": [{"id": f"{order_id}-1", "accepted": True}]})
    with world["box"].lock:
        world["box"].mirakl.debit(order_id)
    for action, body in (("tracking", {"carrier_name": "Coursier Léon", "carrier_url": "https://leon.example/t/1",
                                       "tracking_number": "L1"}), ("cancel", None)):
        response = requests.put(f"{url}/api/orders/{order_id}/{action}", json=body, headers=HEADERS, timeout=5)
        assert response.status_code == 204, response.text
        assert spec.validate_response("PUT", f"/api/orders/{order_id}/{action}", 204, b"") == []


def test_answers_carry_every_field_of_the_spec_examples(world):
    """Built from the spec's examples: what a real answer has, the sandbox's answer has too."""
    order = requests.get(f"{world['url']}/api/orders", params={"order_ids": world["shipped"]},
                         headers=HEADERS, timeout=5).json()["orders"][0]
    example = spec.response_example("OR11")["orders"][0]
    # B2B, pick-up point and multi-channel details a plain marketplace order does not have.
    not_applicable = {"channel", "delivery_date", "invoice_details", "shipping_pudo_id"}
    assert set(example) - set(order) - not_applicable == set()
    # One-Creditor purchase details, tax notices without taxes, and a reception that has not happened yet.
    line_not_applicable = {"purchase_information", "tax_legal_notice", "received_date"}
    assert set(example["order_lines"][0]) - set(order["order_lines"][0]) - line_not_applicable == set()
    offer = requests.get(f"{world['url']}/api/offers", headers=HEADERS, timeout=5).json()["offers"][0]
    assert set(spec.response_example("OF21")["offers"][0]) - set(offer) - {"available_start_date",
                                                                           "available_end_date", "discount",
                                                                           "favorite_rank"} == set()


def test_the_sandbox_records_request_violations_when_asked(world):
    box = world["box"]
    box.log.clear()
    requests.get(f"{world['url']}/api/orders", params={"order_state_codes": "SHIPPING,SHIPPED"}, headers=HEADERS,
                 timeout=5)
    requests.put(f"{world['url']}/api/orders/{world['waiting']}/accept", headers=HEADERS, timeout=5,
                 json={"order_lines": [{"id": "x", "accepted": "yes"}]})
    good, bad = box.log.entries("mirakl")
    assert good["violations"] == []
    assert any("accepted" in v for v in bad["violations"])


# The validator must be able to fail ---------------------------------------------------------
def test_strict_request_validation_catches_wrong_requests():
    assert spec.validate_request("GET", "/api/orders", {}, {}) != []  # no Authorization header
    assert spec.validate_request("GET", "/api/orders", {"order_state_codes": ["SHIPED"]}, HEADERS) != []
    assert spec.validate_request("GET", "/api/orders", {"start_update_date": ["yesterday"]}, HEADERS) != []
    wrong_type = json.dumps({"order_lines": [{"id": "A-1", "accepted": "true"}]}).encode()
    assert spec.validate_request("PUT", "/api/orders/A/accept", {}, HEADERS, wrong_type) != []
    misspelt = json.dumps({"refunds": [{"order_line_id": "A-1", "amount": 1, "shiping_amount": 0,
                                        "reason_code": "15"}]}).encode()
    assert spec.validate_request("PUT", "/api/orders/refund", {}, HEADERS, misspelt) != []
    right = json.dumps({"refunds": [{"order_line_id": "A-1", "amount": 1, "shipping_amount": 0,
                                     "reason_code": "15"}]}).encode()
    assert spec.validate_request("PUT", "/api/orders/refund", {}, HEADERS, right) == []


def test_relaxed_response_validation_still_catches_real_mistakes(world):
    answer = requests.get(f"{world['url']}/api/orders", headers=HEADERS, timeout=5).json()
    assert spec.validate_response("GET", "/api/orders", 200, answer) == []

    wrong_type = json.loads(json.dumps(answer))
    wrong_type["orders"][0]["total_price"] = "12.50"
    assert any("total_price" in e for e in spec.validate_response("GET", "/api/orders", 200, wrong_type))

    misspelt = json.loads(json.dumps(answer))
    misspelt["orders"][0]["order_lines"][0]["order_line_sate"] = misspelt["orders"][0]["order_lines"][0].pop(
        "order_line_state")
    assert any("order_line_state" in e for e in spec.validate_response("GET", "/api/orders", 200, misspelt))

    wrong_enum = json.loads(json.dumps(answer))
    wrong_enum["orders"][0]["order_state"] = "SHIPPPED"
    assert spec.validate_response("GET", "/api/orders", 200, wrong_enum) != []

    transactions = requests.get(f"{world['url']}/api/sellerpayment/transactions_logs", headers=HEADERS,
                                timeout=5).json()
    transactions["data"][0]["type"] = "ORDER_AMOUNTS"  # an enum documented only in the description
    assert spec.validate_response("GET", "/api/sellerpayment/transactions_logs", 200, transactions) != []

    not_nullable = json.loads(json.dumps(answer))
    not_nullable["orders"][0]["order_id"] = None
    assert spec.validate_response("GET", "/api/orders", 200, not_nullable) != []


def test_relaxation_is_small_and_explicit():
    nullable = spec.nullable_fields()
    assert ("OR11_Response_200_Orders_OrderLines", "description") in nullable
    assert ("OR11_Response_200_Orders", "order_id") not in nullable
    assert sum(len(v) for v in spec.OMITTABLE_REQUIRED.values()) <= 8


def test_the_order_export_answers_as_the_spec_says(world):
    """OR13's rules as the spec states them, OR14 until COMPLETED, OR15's orders item by item."""
    url, box = world["url"], world["box"]
    window = {"start_update_date": "2020-01-01T00:00:00Z", "end_update_date": "2099-01-01T00:00:00Z"}
    busy = requests.post(f"{url}/api/orders/async-export", headers=HEADERS, timeout=5, json=window)
    assert busy.status_code == 400 and "already in progress" in busy.json()["message"]  # one at a time per shop
    box.clock.advance(box.mirakl.store.settings.export_delay_s + 1)
    for body, error in (({"start_update_date": "2020-01-01T00:00:00Z"}, "must be used with end_update_date"),
                        ({"order_state_codes": ["SHIPPING"]}, "At least one date range"),
                        ({**window, "items_per_chunk": 10}, "items_per_chunk")):
        refused = requests.post(f"{url}/api/orders/async-export", headers=HEADERS, timeout=5, json=body)
        assert refused.status_code == 400 and error in refused.json()["message"], refused.text
    created = requests.post(f"{url}/api/orders/async-export", headers=HEADERS, timeout=5,
                            json={**window, "order_state_codes": ["SHIPPED"]})
    assert spec.validate_response("POST", "/api/orders/async-export", 200, created.content) == []
    status_path = f"/api/orders/async-export/status/{created.json()['tracking_id']}"
    pending = requests.get(url + status_path, headers=HEADERS, timeout=5)
    assert pending.json()["status"] == "PENDING"
    box.clock.advance(box.mirakl.store.settings.export_delay_s + 1)
    done = requests.get(url + status_path, headers=HEADERS, timeout=5)
    assert spec.validate_response("GET", status_path, 200, done.content) == []
    assert done.json()["status"] == "COMPLETED"
    chunk = requests.get(done.json()["urls"][0], headers=HEADERS, timeout=5)
    assert spec.validate_download("OR15", {}, HEADERS) == []
    orders = chunk.json()["orders"]
    assert [o["order_id"] for o in orders] == [world["shipped"]]  # the SHIPPED filter: not the waiting one
    assert spec.validate_file_items("OR15_Response_200_Ext_FileStructure_Orders", orders) == []
    assert spec.validate_file_items("OR15_Response_200_Ext_FileStructure_Orders",
                                    [dict(orders[0], total_price="12.5")]) != []
