"""The sandbox's bench support: no Nagle stall, and a per-route latency profile taken from the real store."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import requests

from include.sandbox.core import Request, Response, Sandbox, _make_handler
from include.sandbox.latency import LatencyProfile

# (method, route, elapsed_s) of every call in reference/woocommerce-real/transcripts/*.jsonl
TIMINGS = Path(__file__).resolve().parents[1] / "fixtures" / "woo_real_timings.json"


def test_the_server_side_socket_disables_nagle():
    """Headers and body are written separately; with Nagle on, the body waits for a delayed ACK."""
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server_side, _ = listener.accept()
    try:
        box = Sandbox()
        handler_cls = _make_handler(box, box.mirakl)
        handler = handler_cls.__new__(handler_cls)
        handler.request, handler.connection = server_side, server_side
        handler.setup()
        assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
    finally:
        for s in (client, server_side, listener):
            s.close()


def _request(method: str = "GET", **query: str) -> Request:
    return Request(method=method, path="/", query={k: [v] for k, v in query.items()}, headers={}, body=b"")


def test_the_profile_follows_the_real_stores_speed_section():
    profile = LatencyProfile.real_store()
    hundred = Response(200, [{}] * 100)
    assert profile.delay("woo", "woo.products.list", _request(per_page="100"), hundred) == pytest.approx(0.56, abs=0.02)
    fifty = Response(200, [{}] * 50)
    assert profile.delay("woo", "woo.products.list", _request(sku="a,b"), fifty) == pytest.approx(0.54, abs=0.02)
    with_fields = profile.delay("woo", "woo.products.list", _request(sku="a,b", _fields="id,sku"), fifty)
    assert 0.25 <= with_fields <= 0.35  # recorded: 0.29 s
    one = Response(200, [{}])
    assert profile.delay("woo", "woo.products.list", _request(sku="a"), one) == pytest.approx(0.06, abs=0.015)
    batch = Request("POST", "/", {}, {}, json.dumps({"create": [{}] * 50}).encode())
    assert 7 <= profile.delay("woo", "woo.products.batch", batch, Response(200, {})) <= 10
    assert LatencyProfile.real_store(scale=0).delay("woo", "woo.orders.create", _request("POST"), one) == 0


def test_single_item_routes_sit_within_the_recorded_range():
    """Each route's base figure lies between the fastest and slowest recorded answer of that route."""
    recorded: dict[tuple[str, str], list[float]] = {}
    for method, route, elapsed in json.loads(TIMINGS.read_text(encoding="utf-8"))["calls"]:
        recorded.setdefault((method, route), []).append(elapsed)
    profile = LatencyProfile.real_store()
    for (method, route), operation in {
        ("POST", "/orders"): "woo.orders.create", ("PUT", "/orders/{id}"): "woo.orders.update",
        ("GET", "/orders/{id}"): "woo.orders.get", ("POST", "/orders/{id}/refunds"): "woo.refunds.create",
    }.items():
        times = recorded[(method, route)]
        assert min(times) <= profile.delay("woo", operation, _request(method), Response(200, {})) <= max(times)


def test_answers_wait_for_the_profile_and_tests_do_not():
    waited: list[tuple[str, float]] = []
    profile = LatencyProfile.real_store()
    profile.sleep = lambda seconds: waited.append(("sleep", seconds))
    box = Sandbox(latency=profile).start()
    plain = Sandbox().start()
    try:
        auth = {"consumer_key": box.woo.consumer_key, "consumer_secret": box.woo.consumer_secret}
        requests.get(box.woo_url + "/wp-json/wc/v3/system_status", params=auth, timeout=5).raise_for_status()
        assert waited == [("sleep", pytest.approx(0.143))]
        assert plain.latency is None
    finally:
        box.stop()
        plain.stop()
