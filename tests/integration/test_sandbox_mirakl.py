"""The simulated Mirakl seller API behaves like Mirakl, over real HTTP on loopback."""
from __future__ import annotations


import pytest
import requests

from include.sandbox.core import Clock, Sandbox

KEY = "sandbox-mirakl-key"


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(seed=7, clock=Clock(frozen=True)).start(0, 0)
    yield box
    box.stop()


class Api:
    def __init__(self, box: Sandbox):
        self.box = box
        self.url = box.mirakl_url

    def call(self, method: str, path: str, key: str | None = KEY, **kwargs) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if key is not None:
            headers["Authorization"] = key
        return requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)

    def ok(self, method: str, path: str, **kwargs) -> dict:
        response = self.call(method, path, **kwargs)
        assert response.status_code < 300, response.text
        return response.json() if response.content else {}

    def order(self, order_id: str) -> dict:
        return self.ok("GET", "/api/orders", params={"order_ids": order_id})["orders"][0]

    def place(self, lines, **kwargs) -> str:
        with self.box.lock:
            return self.box.mirakl.place_order(lines, **kwargs)["order_id"]

    def offer_quantity(self, sku: str) -> int:
        return self.ok("GET", "/api/offers", params={"sku": sku})["offers"][0]["quantity"]


@pytest.fixture(scope="module")
def api(sandbox):
    with sandbox.lock:
        for index in range(1, 6):
            sandbox.mirakl.add_offer(f"SKU-{index}", 10.0 * index, 50)
    return Api(sandbox)


def accept(api: Api, order_id: str, decisions: dict[str, bool]) -> requests.Response:
    lines = [{"id": f"{order_id}-{n}", "accepted": ok} for n, ok in decisions.items()]
    return api.call("PUT", f"/api/orders/{order_id}/accept", json={"order_lines": lines})


def test_requests_without_the_right_key_or_shop_are_refused(api):
    missing = api.call("GET", "/api/account", key=None)
    wrong = api.call("GET", "/api/account", key="Bearer " + KEY)
    assert (missing.status_code, missing.json()) == (401, {"message": "Unauthorized", "status": 401})
    assert wrong.status_code == 401 and KEY not in wrong.text
    assert api.call("GET", "/api/account", params={"shop_id": 9999}).status_code == 403
    account = api.ok("GET", "/api/account", params={"shop_id": 2001})
    assert (account["shop_id"], account["shop_name"], account["currency_iso_code"]) == (2001, "Sandbox Shop", "EUR")


def test_an_order_goes_through_its_whole_life_cycle(api, sandbox):
    customer = {"firstname": "Zoë", "lastname": "Dœuf", "billing_address": {"city": "Besançon", "street_1": "3 rue Émile"}}
    order_id = api.place([{"offer_sku": "SKU-1", "quantity": 2}], customer=customer, debit_delay_s=300,
                         shipping_price=5)
    assert api.offer_quantity("SKU-1") == 48
    order = api.order(order_id)
    assert order["order_state"] == "WAITING_ACCEPTANCE"
    assert order["customer"]["billing_address"] is None and order["customer"]["shipping_address"] is None
    assert order["total_price"] == 25.0 and order["order_lines"][0]["commission_fee"] == 2.5
    assert order["acceptance_decision_date"] > order["created_date"]

    assert accept(api, order_id, {1: True}).status_code == 204
    assert api.order(order_id)["order_state"] == "WAITING_DEBIT_PAYMENT"
    sandbox.clock.advance(299)
    assert api.order(order_id)["order_state"] == "WAITING_DEBIT_PAYMENT"
    sandbox.clock.advance(2)
    order = api.order(order_id)
    assert order["order_state"] == "SHIPPING" and order["can_cancel"] is True
    assert order["customer"]["billing_address"]["city"] == "Besançon"
    assert order["customer"]["shipping_address"]["street_1"] == "3 rue Émile"

    unknown = api.call("PUT", f"/api/orders/{order_id}/tracking", json={"carrier_code": "PIGEON", "tracking_number": "1"})
    assert unknown.status_code == 400 and "PIGEON" in unknown.json()["message"]
    before = api.order(order_id)["last_updated_date"]
    sandbox.clock.advance(5)
    api.ok("PUT", f"/api/orders/{order_id}/tracking", json={"carrier_code": "UPS", "tracking_number": "1Z999"})
    order = api.order(order_id)
    assert order["shipping_tracking"] == "1Z999" and "1Z999" in order["shipping_tracking_url"]
    assert order["last_updated_date"] > before

    assert api.call("PUT", f"/api/orders/{order_id}/ship").status_code == 204
    assert api.order(order_id)["order_state"] == "SHIPPED"
    again = api.call("PUT", f"/api/orders/{order_id}/ship")
    assert again.status_code == 400 and again.json()["errors"][0]["code"] == "ORDER_INVALID_STATE"
    with sandbox.lock:
        assert sandbox.mirakl.receive(order_id)["order_state"] == "RECEIVED"
        assert sandbox.mirakl.close(order_id)["order_state"] == "CLOSED"
    refund = {"refunds": [{"order_line_id": f"{order_id}-1", "amount": 1, "shipping_amount": 0, "quantity": 0,
                           "reason_code": "15"}]}
    assert api.call("PUT", "/api/orders/refund", json=refund).status_code == 400


def test_partial_refusal_returns_the_refused_quantity(api):
    order_id = api.place([{"offer_sku": "SKU-2", "quantity": 3}, {"offer_sku": "SKU-3", "quantity": 4}])
    assert (api.offer_quantity("SKU-2"), api.offer_quantity("SKU-3")) == (47, 46)
    missing = accept(api, order_id, {1: True})
    assert missing.status_code == 400
    assert missing.json()["errors"][0]["code"] == "ORDER_LINE_ACCEPTANCE_DECISION_MISSING"
    assert accept(api, order_id, {1: True, 2: False}).status_code == 204
    order = api.order(order_id)
    states = [line["order_line_state"] for line in order["order_lines"]]
    assert (order["order_state"], states) == ("WAITING_DEBIT_PAYMENT", ["WAITING_DEBIT_PAYMENT", "REFUSED"])
    assert (api.offer_quantity("SKU-2"), api.offer_quantity("SKU-3")) == (47, 50)
    assert accept(api, order_id, {1: True, 2: True}).json()["errors"][0]["code"] == "ORDER_INVALID_STATE"


def test_refusing_every_line_refuses_the_order(api):
    order_id = api.place([{"offer_sku": "SKU-4", "quantity": 1}, {"offer_sku": "SKU-5", "quantity": 2}])
    assert accept(api, order_id, {1: False, 2: False}).status_code == 204
    assert api.order(order_id)["order_state"] == "REFUSED"
    assert (api.offer_quantity("SKU-4"), api.offer_quantity("SKU-5")) == (50, 50)


def test_an_order_not_accepted_in_time_is_canceled(api, sandbox):
    order_id = api.place([{"offer_sku": "SKU-4", "quantity": 5}], acceptance_delay_s=60)
    assert api.offer_quantity("SKU-4") == 45
    sandbox.clock.advance(61)
    order = api.order(order_id)
    assert order["order_state"] == "CANCELED"
    assert order["last_updated_date"] == order["acceptance_decision_date"]
    assert api.offer_quantity("SKU-4") == 50
    assert accept(api, order_id, {1: True}).status_code == 400


def test_shop_cancel_only_when_allowed(api, sandbox):
    order_id = api.place([{"offer_sku": "SKU-5", "quantity": 1}])
    assert api.call("PUT", f"/api/orders/{order_id}/cancel").status_code == 400
    accept(api, order_id, {1: True})
    with sandbox.lock:
        sandbox.mirakl.debit(order_id)
    assert api.call("PUT", f"/api/orders/{order_id}/cancel").status_code == 204
    assert api.order(order_id)["order_state"] == "CANCELED"
    assert api.offer_quantity("SKU-5") == 50


def test_or11_filters_and_pages_by_creation_date(api, sandbox):
    sandbox.clock.advance(3600)
    marker = api.ok("GET", "/api/orders", params={"max": 1})["total_count"]
    start = sandbox.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    created = []
    for _ in range(7):
        sandbox.clock.advance(1)
        created.append(api.place([{"offer_sku": "SKU-1", "quantity": 1}]))
    recent = api.ok("GET", "/api/orders", params={"start_date": start, "max": 3})
    assert recent["total_count"] == 7 and [o["order_id"] for o in recent["orders"]] == created[:3]
    second = api.ok("GET", "/api/orders", params={"start_date": start, "max": 3, "offset": 3})
    assert [o["order_id"] for o in second["orders"]] == created[3:6]
    everything = api.ok("GET", "/api/orders", params={"paginate": "false"})
    assert len(everything["orders"]) == everything["total_count"] == marker + 7
    capped = api.ok("GET", "/api/orders", params={"max": 500})
    assert len(capped["orders"]) == min(100, capped["total_count"])
    by_id = api.ok("GET", "/api/orders", params={"order_ids": f"{created[1]},{created[4]}"})
    assert [o["order_id"] for o in by_id["orders"]] == [created[1], created[4]]

    sandbox.clock.advance(10)
    changed_since = sandbox.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    accept(api, created[2], {1: True})
    changed = api.ok("GET", "/api/orders", params={"start_update_date": changed_since})
    assert [o["order_id"] for o in changed["orders"]] == [created[2]]
    waiting = api.ok("GET", "/api/orders", params={"order_state_codes": "WAITING_ACCEPTANCE,WAITING_DEBIT_PAYMENT",
                                                   "start_date": start, "max": 100})
    assert {o["order_state"] for o in waiting["orders"]} == {"WAITING_ACCEPTANCE", "WAITING_DEBIT_PAYMENT"}
    assert api.call("GET", "/api/orders", params={"order_state_codes": "LOST"}).status_code == 400
    assert api.call("GET", "/api/orders", params={"max": "ten"}).status_code == 400


def test_stock_import_has_to_be_polled_and_reports_unknown_skus(api):
    csv_file = "offer-sku;quantity;warehouse-code;update-delete\nSKU-1;7;;\nGHOST-9;3;;\nSKU-2;-4;;\n"
    created = api.call("POST", "/api/offers/stock/imports", files={"file": ("stock.csv", csv_file, "text/csv")})
    assert created.status_code == 201
    import_id = created.json()["import_id"]
    assert created.headers["Location"].endswith(f"/{import_id}/status")
    first = api.ok("GET", f"/api/offers/stock/imports/{import_id}/status")
    assert first["status"] in ("WAITING", "RUNNING") and api.offer_quantity("SKU-1") != 7
    second = api.ok("GET", f"/api/offers/stock/imports/{import_id}/status")
    assert (second["status"], second["lines_in_success"], second["lines_in_error"]) == ("COMPLETE", 1, 2)
    assert second["has_error_report"] is True and api.offer_quantity("SKU-1") == 7
    report = api.call("GET", f"/api/offers/stock/imports/{import_id}/error_report")
    assert report.headers["Content-Type"].startswith("text/csv")
    lines = report.text.strip().split("\n")
    assert lines[0] == "line-number;error-message;offer-sku;quantity;warehouse-code;update-delete"
    assert lines[1].startswith("3;") and "GHOST-9" in lines[1] and lines[2].startswith("4;")
    assert api.call("POST", "/api/offers/stock/imports", data=b"x").status_code == 400
    assert api.call("GET", "/api/offers/stock/imports/nope/status").status_code == 404


def test_stock_import_completes_after_its_sandbox_delay(api, sandbox):
    created = api.ok("POST", "/api/offers/stock/imports", files={"file": ("s.csv", "offer-sku;quantity\nSKU-3;9\n")})
    sandbox.clock.advance(3)
    assert api.offer_quantity("SKU-3") == 9
    assert api.ok("GET", f"/api/offers/stock/imports/{created['import_id']}/status")["status"] == "COMPLETE"


def test_price_import_with_status_and_error_report(api):
    csv_file = "offer-sku;price;discount-price;discount-start-date;discount-end-date\nSKU-5;55.5;;;\nNOPE;1;;;\n"
    import_id = api.ok("POST", "/api/offers/pricing/imports", files={"file": ("p.csv", csv_file)})["import_id"]
    statuses = [api.ok("GET", "/api/offers/pricing/imports", params={"import_id": import_id})["data"][0]
                for _ in range(2)]
    assert statuses[0]["status"] != "COMPLETE" and statuses[1]["status"] == "COMPLETE"
    assert (statuses[1]["lines_in_success"], statuses[1]["lines_in_error"]) == (1, 1)
    assert api.ok("GET", "/api/offers", params={"sku": "SKU-5"})["offers"][0]["price"] == 55.5
    report = api.call("GET", f"/api/offers/pricing/imports/{import_id}/error_report").text
    assert report.split("\n")[1].startswith("3;") and "NOPE" in report


def test_of24_resets_fields_not_sent_and_deletes(api):
    offer = {"shop_sku": "OF24-1", "product_id": "3700000000001", "product_id_type": "EAN", "price": 12.5,
             "quantity": 3, "state_code": "11", "update_delete": "update", "description": "Blue", "leadtime_to_ship": 5}
    created = api.call("POST", "/api/offers", json={"offers": [offer]})
    assert created.status_code == 201 and isinstance(created.json()["import_id"], int)
    bare = {k: v for k, v in offer.items() if k not in ("description", "leadtime_to_ship", "quantity")}
    api.ok("POST", "/api/offers", json={"offers": [bare]})
    shown = api.ok("GET", "/api/offers", params={"sku": "OF24-1"})["offers"][0]
    assert (shown["description"], shown["leadtime_to_ship"], shown["quantity"]) == ("", 2, 0)
    api.ok("POST", "/api/offers", json={"offers": [{**bare, "update_delete": "delete"}]})
    assert api.ok("GET", "/api/offers", params={"sku": "OF24-1"})["total_count"] == 0
    assert api.call("POST", "/api/offers", json={"offers": [{"shop_sku": "x"}]}).status_code == 400


def test_of51_exports_all_offers_then_only_changes(api, sandbox):
    full = api.call("GET", "/api/offers/export").text.strip().split("\n")
    header = full[0].split(";")
    assert header[0] == "offer-id" and "shop-sku" in header and len(full) >= 6
    sandbox.clock.advance(60)
    since = sandbox.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
    with sandbox.lock:
        sandbox.mirakl.add_offer("SKU-2", 21.0, 12)
    delta = api.call("GET", "/api/offers/export", params={"last_request_date": since}).text.strip().split("\n")
    rows = [dict(zip(header, line.split(";"))) for line in delta[1:]]
    assert [(r["shop-sku"], r["quantity"]) for r in rows] == [("SKU-2", "12")]


def test_refunds_are_checked_and_listed_on_their_line(api, sandbox):
    order_id = api.place([{"offer_sku": "SKU-1", "quantity": 2, "price": 10}], shipping_price=4, debit_delay_s=1)
    accept(api, order_id, {1: True})
    sandbox.clock.advance(2)
    line_id = f"{order_id}-1"
    too_much = {"refunds": [{"order_line_id": line_id, "amount": 20.01, "shipping_amount": 0, "quantity": 1,
                             "reason_code": "15"}]}
    response = api.call("PUT", "/api/orders/refund", json=too_much)
    assert response.status_code == 400 and "20.00" in response.json()["message"]
    first = api.ok("PUT", "/api/orders/refund", json={"refunds": [
        {"order_line_id": line_id, "amount": 10, "shipping_amount": 2, "quantity": 1, "reason_code": "15"}]})
    refund_id = first["refunds"][0]["refund_id"]
    twice = {"refunds": [{"order_line_id": line_id, "amount": 6, "shipping_amount": 0, "quantity": 1,
                          "reason_code": "15"}] * 2}
    assert api.call("PUT", "/api/orders/refund", json=twice).status_code == 400
    line = api.order(order_id)["order_lines"][0]
    assert [(r["id"], r["amount"], r["shipping_amount"]) for r in line["refunds"]] == [(refund_id, 10.0, 2.0)]
    types = [t["type"] for t in api.ok("GET", "/api/sellerpayment/transactions_logs",
                                        params={"order_line_id": line_id, "limit": 50})["data"]]
    assert sorted(types) == sorted(["ORDER_AMOUNT", "ORDER_SHIPPING_AMOUNT", "COMMISSION_FEE", "COMMISSION_VAT",
                                    "REFUND_ORDER_AMOUNT", "REFUND_ORDER_SHIPPING_AMOUNT", "REFUND_COMMISSION_FEE",
                                    "REFUND_COMMISSION_VAT"])


def test_tl02_seek_pagination_neither_skips_nor_repeats(api, sandbox):
    for _ in range(3):
        order_id = api.place([{"offer_sku": "SKU-3", "quantity": 1}], debit_delay_s=1)
        accept(api, order_id, {1: True})
    sandbox.clock.advance(2)
    total = len(api.ok("GET", "/api/sellerpayment/transactions_logs", params={"limit": 2000})["data"])
    seen, token, pages = [], None, 0
    while True:
        params = {"limit": 5, **({"page_token": token} if token else {})}
        page = api.ok("GET", "/api/sellerpayment/transactions_logs", params=params)
        seen += [t["id"] for t in page["data"]]
        pages += 1
        if pages == 1:  # new lines arrive while the client pages through (newest first)
            extra = api.place([{"offer_sku": "SKU-3", "quantity": 1}], debit_delay_s=1)
            accept(api, extra, {1: True})
            sandbox.clock.advance(2)
        token = page.get("next_page_token")
        if not token:
            break
    assert len(seen) == len(set(seen)) == total and pages > 2
    assert api.call("GET", "/api/sellerpayment/transactions_logs", params={"limit": 2001}).status_code == 400


def test_closing_a_billing_cycle_pays_lines_and_issues_a_document(api, sandbox):
    with sandbox.lock:
        closed = sandbox.mirakl.close_billing_cycle()
    cycle = closed["seller_billing_cycle_id"]
    lines = api.ok("GET", "/api/sellerpayment/transactions_logs",
                   params={"seller_billing_cycle_id": cycle, "limit": 2000})["data"]
    assert lines and {t["payment_state"] for t in lines} == {"PAID"}
    assert {t["accounting_document_number"] for t in lines} == {closed["payment_voucher_number"]}
    assert "PAYMENT" in {t["type"] for t in lines}
    assert sum(t["amount"] for t in lines) == pytest.approx(0, abs=0.01)
    invoices = api.ok("GET", "/api/invoices", params={"seller_billing_cycle_id": cycle})
    assert invoices["total_count"] == 1 and invoices["invoices"][0]["total_amount_excl_taxes"] > 0


def test_customer_message_is_an_inbox_thread_on_the_order(api):
    order_id = api.place([{"offer_sku": "SKU-1", "quantity": 1}], customer_message="Sonnez deux fois, merci !")
    assert api.order(order_id)["has_customer_message"] is True
    threads = api.ok("GET", "/api/inbox/threads", params={"entity_type": "MMP_ORDER", "entity_id": order_id,
                                                          "with_messages": "true"})["data"]
    assert [m["body"] for m in threads[0]["messages"]] == ["Sonnez deux fois, merci !"]
    assert threads[0]["messages"][0]["from"]["type"] == "CUSTOMER_USER"
    assert api.call("GET", "/api/inbox/threads", params={"entity_id": order_id}).status_code == 400


def test_carriers_list(api):
    codes = {c["code"] for c in api.ok("GET", "/api/shipping/carriers")["carriers"]}
    assert {"DHL", "UPS", "COLISSIMO", "CHRONOPOST", "DPD", "GLS", "LAPOSTE", "FEDEX"} <= codes


def test_core_faults_are_served_on_mirakl_routes(api, sandbox):
    sandbox.faults.set([{"service": "mirakl", "operation": "OR11", "status": 429, "retry_after": 3, "count": 1},
                        {"service": "mirakl", "operation": "A01", "kind": "drop", "count": 1}])
    try:
        limited = api.call("GET", "/api/orders")
        assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
        assert limited.json()["status"] == 429
        with pytest.raises(requests.ConnectionError):
            api.call("GET", "/api/account")
        assert api.call("GET", "/api/orders").status_code == 200
    finally:
        sandbox.faults.clear()
    assert sandbox.log.count("mirakl", "OR11") >= 2


def test_admin_routes_drive_the_shop_from_another_process(api, sandbox):
    admin = sandbox.mirakl_url + "/_admin/mirakl"
    assert requests.post(f"{admin}/offers", json={"shop_sku": "ADM-1", "price": 5, "quantity": 4}).status_code == 201
    assert requests.get(f"{admin}/offers/ADM-1").json()["quantity"] == 4
    order = requests.post(f"{admin}/orders", json={"lines": [{"offer_sku": "ADM-1", "quantity": 1}]}).json()
    accept(api, order["order_id"], {1: True})
    debited = requests.post(f"{admin}/orders/{order['order_id']}/debit").json()
    assert debited["order_state"] == "SHIPPING"
    assert requests.post(f"{admin}/orders/{order['order_id']}/explode").status_code == 404
    settings = requests.post(f"{admin}/settings", json={"commission_rate": 0.15}).json()
    assert settings["commission_rate"] == 0.15 and "api_key" not in settings
    requests.post(f"{admin}/settings", json={"commission_rate": 0.10})
    assert requests.post(f"{admin}/settings", json={"colour": "red"}).status_code == 400


def test_state_survives_a_restart(sandbox, api):
    with sandbox.lock:
        state = sandbox.mirakl.to_state()
    other = Sandbox(seed=1, clock=Clock(frozen=True))
    other.mirakl.load_state(state)
    assert other.mirakl.offer("SKU-1") == sandbox.mirakl.offer("SKU-1")
    order_id = next(iter(sandbox.mirakl.store.orders))
    assert other.mirakl.order(order_id) == sandbox.mirakl.order(order_id)


def test_a_large_catalogue_loads_and_pages():
    box = Sandbox(seed=3, clock=Clock(frozen=True)).start(0, 0)
    try:
        with box.lock:
            for index in range(100_000):
                box.mirakl.store.add_offer(box.clock.now(), f"BIG-{index:06d}", 1 + index % 997, index % 50)
        api = Api(box)
        api.ok("GET", "/api/offers", params={"max": 100})  # builds the sort index once
        page = api.ok("GET", "/api/offers", params={"max": 100, "offset": 99_900})
        assert page["total_count"] == 100_000 and len(page["offers"]) == 100
        prices = [o["total_price"] for o in page["offers"]]
        assert prices == sorted(prices)
    finally:
        box.stop()
