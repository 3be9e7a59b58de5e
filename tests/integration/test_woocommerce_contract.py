"""The sandbox's WooCommerce answers the recorded requests of a real store as the store did.

``woocommerce_real/probe.jsonl`` holds every request a probe made to a real WooCommerce 10.0.2
store and its answer (copied from ``shared/reference/woocommerce-real/transcripts``). Each request
is replayed, in order, against a fresh sandbox configured as that store was; the status code, the
WordPress header names and the JSON shape (keys and value types, recursively; values aside) must
match. Every remaining difference is listed with its reason in ``woocommerce_contract_allowlist.yaml``;
an unlisted difference fails, and so does an allow-list entry that no longer matches anything.
"""
from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests
import yaml

from include.sandbox.core import Sandbox

HERE = Path(__file__).parent
PROBE = HERE / "woocommerce_real" / "probe.jsonl"
ALLOWLIST = HERE / "woocommerce_contract_allowlist.yaml"
# The headers the WordPress REST server itself sets (the HTTP server's own are not the API's).
API_HEADERS = {"content-type", "link", "allow", "x-wp-total", "x-wp-totalpages"}


def kind(value) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if value is None:
        return "null"
    return "array" if isinstance(value, list) else "object"


def shape_differences(real, sim, path: str = "$") -> list[str]:
    """Where two JSON values differ in keys, types or list lengths."""
    if kind(real) != kind(sim):
        # dates are null until they happen: a string/null difference on a date is a value, not a shape
        if path.rsplit(".", 1)[-1].startswith("date_") and {kind(real), kind(sim)} <= {"string", "null"}:
            return []
        return [f"{path}: type {kind(real)} in the real answer, {kind(sim)} in the sandbox"]
    if isinstance(real, dict):
        out = [f"{path}.{k}: missing in the sandbox" for k in real if k not in sim]
        out += [f"{path}.{k}: not in the real answer" for k in sim if k not in real]
        for key in real:
            if key in sim:
                out += shape_differences(real[key], sim[key], f"{path}.{key}")
        return out
    if isinstance(real, list):
        out = [] if len(real) == len(sim) else [f"{path}: {len(real)} items in the real answer, {len(sim)} in the sandbox"]
        skus = [x.get("sku") if isinstance(x, dict) else None for x in real]
        by_sku = {x.get("sku"): x for x in sim if isinstance(x, dict)}
        if real and all(skus) and len(set(skus)) == len(skus) and set(skus) <= set(by_sku):
            # products are compared by SKU; their order is a difference of its own
            ordered = [by_sku[s] for s in skus]
            if ordered != sim:
                out.append(f"{path}: same products in another order")
            sim = ordered
        for index, (a, b) in enumerate(zip(real, sim)):
            out += shape_differences(a, b, f"{path}[{index}]")
        return out
    return []


class IdMap:
    """Real ids → sandbox ids, learnt from the answers (resources and order items apart)."""

    def __init__(self) -> None:
        self.resources: dict[int, int] = {}
        self.items: dict[int, int] = {}

    def learn(self, real, sim) -> None:
        if isinstance(real, list) and isinstance(sim, list):
            by_sku = {x.get("sku"): x for x in sim if isinstance(x, dict) and x.get("sku")}
            for index, entry in enumerate(real):
                if isinstance(entry, dict):
                    twin = by_sku.get(entry.get("sku")) if entry.get("sku") else None
                    if twin is None and index < len(sim):
                        twin = sim[index]
                    self.learn(entry, twin)
            return
        if not (isinstance(real, dict) and isinstance(sim, dict)):
            return
        if isinstance(real.get("id"), int) and isinstance(sim.get("id"), int):
            self.resources.setdefault(real["id"], sim["id"])
        for key in ("line_items", "shipping_lines", "fee_lines"):
            for a, b in zip(real.get(key) or [], sim.get(key) or []):
                if isinstance(a, dict) and isinstance(b, dict) and "id" in a and "id" in b:
                    self.items.setdefault(a["id"], b["id"])
        for key in ("create", "update", "delete"):
            if isinstance(real.get(key), list) and isinstance(sim.get(key), list):
                self.learn(real[key], sim[key])

    def path(self, path: str) -> str:
        return re.sub(r"/(\d+)(?=/|$)", lambda m: f"/{self.resources.get(int(m.group(1)), m.group(1))}", path)

    def body(self, body):
        if not isinstance(body, dict):
            return body
        out = dict(body)
        for key in ("create", "update"):
            if isinstance(out.get(key), list):
                out[key] = [{**x, "id": self.resources.get(x["id"], x["id"])} if isinstance(x, dict) and "id" in x
                            else x for x in out[key]]
        if isinstance(out.get("line_items"), list):
            out["line_items"] = [{**x, "id": self.items.get(x["id"], x["id"])} if isinstance(x, dict) and "id" in x
                                 else x for x in out["line_items"]]
        return out


def label(number: int, entry: dict) -> str:
    split = urlsplit(entry["url"])
    path = re.sub(r"/\d+(?=/|$)", "/{id}", split.path.replace("/wp-json", ""))
    return f"#{number:02d} {entry['method']} {path}"


@pytest.fixture(scope="module")
def replay():
    """Every probe request replayed in order: (label, real entry, sandbox response) per request."""
    entries = [json.loads(line) for line in PROBE.read_text().splitlines() if line.strip()]
    box = Sandbox(seed=3).start(0, 0)
    woo = box.woo
    with box.lock:  # as the recorded store: 10.0.2, USD, taxes off, no tracking plugin, no fulfillments
        woo.version = "10.0.2"
        woo.settings.update(currency="USD", calc_taxes=False, shipment_tracking_installed=False,
                            fulfillments_enabled=False)
    session = requests.Session()
    session.auth = (woo.consumer_key, woo.consumer_secret)
    ids = IdMap()
    out = []
    try:
        for number, entry in enumerate(entries):
            split = urlsplit(entry["url"])
            target = box.woo_url + ids.path(split.path) + (f"?{split.query}" if split.query else "")
            response = session.request(entry["method"], target, json=ids.body(entry["request_json"]), timeout=10)
            body = response.json() if response.content else None
            ids.learn(entry["body"], body)
            out.append((label(number, entry), entry, response, body))
    finally:
        box.stop()
    return out


def differences(replay) -> list[str]:
    found = []
    for name, entry, response, body in replay:
        if response.status_code != entry["status"]:
            found.append(f"{name} status: {entry['status']} in the real answer, {response.status_code} in the sandbox")
        real_headers = {h.lower() for h in entry["headers"]} & API_HEADERS
        sim_headers = {h.lower() for h in response.headers} & API_HEADERS
        for header in sorted(real_headers - sim_headers):
            found.append(f"{name} header {header}: missing in the sandbox")
        for header in sorted(sim_headers - real_headers):
            found.append(f"{name} header {header}: not in the real answer")
        found += [f"{name} body {d}" for d in shape_differences(entry["body"], body)]
    return found


def allowlist() -> list[dict]:
    entries = yaml.safe_load(ALLOWLIST.read_text()) or []
    for entry in entries:
        assert entry.get("match") and entry.get("reason"), f"allow-list entry without match or reason: {entry}"
    return entries


def test_probe_replayed_every_request(replay) -> None:
    lines = [line for line in PROBE.read_text().splitlines() if line.strip()]
    assert len(replay) == len(lines) > 40


def test_sandbox_answers_as_the_real_store(replay) -> None:
    allowed = allowlist()
    unexplained = [d for d in differences(replay) if not any(fnmatch.fnmatchcase(d, a["match"]) for a in allowed)]
    assert not unexplained, "differences from the real store not in the allow-list:\n" + "\n".join(unexplained)


def test_allowlist_has_no_stale_entry(replay) -> None:
    found = differences(replay)
    stale = [a["match"] for a in allowlist() if not any(fnmatch.fnmatchcase(d, a["match"]) for d in found)]
    assert not stale, f"allow-list entries matching no difference (remove them): {stale}"


def test_comparison_catches_a_changed_shape() -> None:
    real = {"id": 1, "line_items": [{"sku": "A", "price": 12.5, "meta_data": []}], "date_paid": None}
    assert shape_differences(real, {"id": 2, "line_items": [{"sku": "B", "price": 20, "meta_data": []}],
                                    "date_paid": "2026-01-01T00:00:00"}) == []
    assert shape_differences(real, {"id": 2, "line_items": [{"sku": None, "price": 20}], "date_paid": None,
                                    "x": 1}) == [
        "$.x: not in the real answer",
        "$.line_items[0].meta_data: missing in the sandbox",
        "$.line_items[0].sku: type string in the real answer, null in the sandbox",
    ]
