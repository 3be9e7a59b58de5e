"""Faults that land, then fail: the change is applied, then the answer is a 500, a dropped
connection, or later than the client waits. Over real HTTP, on the writes of both APIs."""
from __future__ import annotations

import re

import pytest
import requests

from include.sandbox.core import FAULT_KINDS, FAULTS_AFTER, Clock, Sandbox

API = "/wp-json/wc/v3"
WOO_AUTH = ("ck_sandbox", "cs_sandbox")


@pytest.fixture(scope="module")
def sandbox():
    box = Sandbox(seed=3, clock=Clock(frozen=True)).start(0, 0)
    box.woo.add_simple_product("F-MUG", "10.00", 50)
    with box.lock:
        box.mirakl.add_offer("F-MUG", 10.0, 50)
    yield box
    box.stop()


@pytest.fixture(autouse=True)
def no_faults(sandbox):
    yield
    sandbox.faults.clear()


def mirakl(sandbox, method, path, **kwargs) -> requests.Response:
    headers = {"Authorization": sandbox.mirakl.api_key}
    return requests.request(method, sandbox.mirakl_url + path, headers=headers, timeout=kwargs.pop("timeout", 10), **kwargs)


def woo(sandbox, method, path, **kwargs) -> requests.Response:
    return requests.request(method, sandbox.woo_url + API + path, auth=WOO_AUTH, timeout=kwargs.pop("timeout", 10), **kwargs)


def place(sandbox) -> str:
    with sandbox.lock:
        return sandbox.mirakl.place_order([{"offer_sku": "F-MUG", "quantity": 1}])["order_id"]


def woo_order_count(sandbox) -> int:
    return len(sandbox.woo.orders())


def new_woo_order(sandbox) -> requests.Response:
    return woo(sandbox, "POST", "/orders", json={"status": "on-hold", "line_items": [{"sku": "F-MUG", "quantity": 1}]})


def test_apply_then_status_keeps_the_woocommerce_order_and_answers_500(sandbox):
    before = woo_order_count(sandbox)
    sandbox.faults.set([{"service": "woo", "operation": "woo.orders.create", "kind": "apply_then_status",
                         "status": 500, "count": 1}])
    answer = new_woo_order(sandbox)
    assert answer.status_code == 500
    assert woo_order_count(sandbox) == before + 1  # it landed
    [entry] = sandbox.log.entries("woo", "woo.orders.create")[-1:]
    assert entry["fault"] == "apply_then_status" and entry["applied"] and entry["handled_status"] == 201
    assert new_woo_order(sandbox).status_code == 201  # count used up: the next one is clean


def test_apply_then_drop_accepts_the_mirakl_order_and_drops_the_connection(sandbox):
    order_id = place(sandbox)
    sandbox.faults.set([{"service": "mirakl", "operation": "OR21", "kind": "apply_then_drop", "count": 1}])
    with pytest.raises(requests.ConnectionError):
        mirakl(sandbox, "PUT", f"/api/orders/{order_id}/accept",
               json={"order_lines": [{"id": f"{order_id}-1", "accepted": True}]})
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] == "WAITING_DEBIT_PAYMENT"
    assert len(sandbox.log.landed("mirakl", "OR21", f"/{order_id}/")) == 1


def test_apply_then_slow_answers_after_the_client_gave_up(sandbox):
    order_id = place(sandbox)
    sandbox.faults.set([{"service": "mirakl", "operation": "OR21", "kind": "apply_then_slow", "delay": 1.5, "count": 1}])
    with pytest.raises(requests.Timeout):
        mirakl(sandbox, "PUT", f"/api/orders/{order_id}/accept", timeout=0.5,
               json={"order_lines": [{"id": f"{order_id}-1", "accepted": False}]})
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] == "REFUSED"


def test_a_fault_before_the_request_changes_nothing(sandbox):
    before = woo_order_count(sandbox)
    sandbox.faults.set([{"service": "woo", "operation": "woo.orders.create", "kind": "status", "status": 500, "count": 1},
                        {"service": "woo", "operation": "woo.orders.create", "kind": "drop", "count": 1}])
    assert new_woo_order(sandbox).status_code == 500
    with pytest.raises(requests.ConnectionError):
        new_woo_order(sandbox)
    assert woo_order_count(sandbox) == before
    assert [e["applied"] for e in sandbox.log.entries("woo", "woo.orders.create")[-2:]] == [False, False]


def test_a_rejected_request_is_not_applied_even_under_an_after_fault(sandbox):
    order_id = place(sandbox)
    sandbox.faults.set([{"service": "mirakl", "operation": "OR21", "kind": "apply_then_status", "count": 1}])
    answer = mirakl(sandbox, "PUT", f"/api/orders/{order_id}/accept", json={"order_lines": []})
    assert answer.status_code == 500
    entry = sandbox.log.entries("mirakl", "OR21")[-1]
    assert entry["applied"] is False and entry["handled_status"] == 400
    with sandbox.lock:
        assert sandbox.mirakl.order(order_id)["order_state"] == "WAITING_ACCEPTANCE"


def test_a_fault_can_target_one_record_by_path_or_body(sandbox):
    first, second = place(sandbox), place(sandbox)
    sandbox.faults.set([{"service": "mirakl", "operation": "OR21", "kind": "status", "status": 503,
                         "contains": f"{first}-1"}])  # in the body of the first order's OR21 only
    for _ in range(2):  # no count: persistent
        answer = mirakl(sandbox, "PUT", f"/api/orders/{first}/accept",
                        json={"order_lines": [{"id": f"{first}-1", "accepted": True}]})
        assert answer.status_code == 503
    answer = mirakl(sandbox, "PUT", f"/api/orders/{second}/accept",
                    json={"order_lines": [{"id": f"{second}-1", "accepted": True}]})
    assert answer.status_code == 204
    sandbox.faults.set([{"service": "mirakl", "operation": "OR11", "kind": "status", "status": 404,
                         "contains": "/api/orders/nowhere"}])  # a path no call of this test has
    assert mirakl(sandbox, "GET", "/api/orders", params={"order_ids": first}).status_code == 200


@pytest.mark.parametrize("kind", FAULTS_AFTER)
def test_every_mutating_route_can_land_then_fail(sandbox, kind):
    """Each write route (PUT/POST/PATCH/DELETE) of both services: the fault fires *after* its handler ran."""
    routes = [(name, route) for name, service in sandbox.services.items() for route in service.routes
              if route.method not in ("GET", "HEAD")]
    assert len({r.operation for _, r in routes}) >= 20  # OR21/23/24/28/29, OF24, P41, STO01, PRI01, woo writes...
    for name, route in routes:
        sandbox.faults.set([{"service": name, "operation": route.operation, "kind": kind, "delay": 0.0}])
        path = re.sub(r"\{\w+\}", "0", route.template)
        url = {"mirakl": sandbox.mirakl_url, "woo": sandbox.woo_url, "auth": sandbox.auth_url}[name] + path
        headers = {"Authorization": sandbox.mirakl.api_key}
        started = len(sandbox.log.entries(name, route.operation))
        try:
            requests.request(route.method, url, headers=headers, auth=WOO_AUTH if name == "woo" else None,
                             json={}, timeout=5)
        except requests.RequestException:
            pass
        entries = sandbox.log.entries(name, route.operation)[started:]
        assert entries and entries[-1]["fault"] == kind, (route.method, route.template)
        assert "handled_status" in entries[-1], (route.method, route.template)  # the handler ran first


def test_unknown_fault_kinds_are_refused(sandbox):
    assert set(FAULT_KINDS) >= {"apply_then_status", "apply_then_drop", "apply_then_slow"}
    with pytest.raises(ValueError, match="unknown fault kind"):
        sandbox.faults.add({"kind": "apply_then_explode"})
