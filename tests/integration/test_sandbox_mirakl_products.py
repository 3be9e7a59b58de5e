"""The sandbox's OF24 validation, offer import follow-up (OF02, OF03) and product import (P41, P42, P44, P45),
driven through MiraklClient over loopback; requests and answers are checked against the official spec."""
from __future__ import annotations

from typing import Iterator

import pytest
import requests

from include.sandbox import spec
from include.sandbox.core import Clock, Sandbox
from include.woo_mirakl.clients.http import RetryPolicy
from include.woo_mirakl.clients.mirakl import MiraklClient

KEY = "sandbox-mirakl-key"
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, timeout=2.0, connect_timeout=1.0)
KNOWN_EAN = "4006381333931"
NEW_EAN = "5901234123457"


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(seed=5, clock=Clock(frozen=True), validate_requests=True).start(0, 0)
    with box.lock:
        box.mirakl.configure(unknown_products="reject", import_complete_after_polls=2)
        box.mirakl.add_product(KNOWN_EAN)
        box.mirakl.add_offer("OLD", 9.0, 3, product_id="3000000000007", product_id_type="EAN")
    yield box
    box.stop()


@pytest.fixture()
def client(sandbox: Sandbox) -> MiraklClient:
    return MiraklClient(sandbox.mirakl_url, KEY, shop_id=sandbox.mirakl.shop_id, retry=FAST)


@pytest.fixture(autouse=True)
def conforms(sandbox: Sandbox) -> Iterator[None]:
    """Every request a test meant to be valid met the spec (the refused ones are the point of their test)."""
    start = len(sandbox.log.entries("mirakl"))
    yield
    bad = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl")[start:]
           if e["violations"] and e["status"] != 400]
    assert not bad


def offer(sku: str, **fields) -> dict:
    return {"shop_sku": sku, "product_id": KNOWN_EAN, "product_id_type": "EAN", "price": 12.5, "quantity": 4,
            "state_code": "11", "update_delete": "update", **fields}


def test_of24_applies_good_lines_and_reports_refused_ones_with_the_reason(sandbox, client):
    import_id = client.import_offers([
        offer("GOOD", description="Blue", logistic_class="M"),
        offer("UNKNOWN", product_id="9999999999994"),
        offer("BADSTATE", state_code="99"),
        offer("BADCLASS", logistic_class="HUGE"),
        offer("FREE", price=0),
        offer("OLD", update_delete=""),  # empty means update; but OLD points at another product
    ])
    status = client.offer_import_status(import_id)
    assert status.finished and status.status == "COMPLETE"
    assert (status.lines_in_success, status.lines_in_error, status.has_error_report) == (1, 5, True)
    assert status.raw["offer_inserted"] == 1
    refused = {line.offer_sku: (line.line_number, line.error) for line in client.offer_error_report(import_id)}
    assert refused == {
        "UNKNOWN": (2, "The product does not exist"),
        "BADSTATE": (3, "The state of the product is unknown: '99'"),
        "BADCLASS": (4, "The logistic class 'HUGE' is unknown"),
        "FREE": (5, "The price must be greater than 0"),
        "OLD": (6, "The product linked to the new offer is different from the product linked to the existing offer"),
    }
    good = sandbox.mirakl.offer("GOOD")
    assert (good["description"], good["logistic_class"]["code"], good["quantity"]) == ("Blue", "M", 4)
    assert sandbox.mirakl.offer("UNKNOWN") is None and sandbox.mirakl.offer("OLD")["price"] == 9.0


def test_of24_without_a_required_field_is_refused_whole(sandbox, client):
    from include.woo_mirakl.clients.http import ApiError

    with pytest.raises(ApiError) as error:
        client.import_offers([{k: v for k, v in offer("X").items() if k != "update_delete"}])
    assert error.value.status == 400
    assert any("update_delete" in v for v in sandbox.log.entries("mirakl", "OF24")[-1]["violations"])
    assert sandbox.mirakl.offer("X") is None


def test_product_import_integrates_valid_products_and_reports_the_rest(sandbox, client):
    product_file = ("sku;ean;title;category;brand\n"
                    f"CAP;{NEW_EAN};Cap;Hats;Capco\n"
                    "BAD;5901234123458;Bad;Hats;\n"
                    "NOCAT;4012345678901;No category;;\n").encode()
    import_id = client.import_products(product_file)
    first = client.product_import_status(import_id)
    assert not first.finished and first.status == "RUNNING"
    done = client.product_import_status(import_id)
    assert done.finished and done.status == "COMPLETE" and done.has_error_report and done.has_new_product_report
    errors = {row["sku"]: row["errors"] for row in client.product_error_report(import_id)}
    assert errors == {"BAD": "The EAN '5901234123458' is invalid (wrong length or check digit)",
                      "NOCAT": "Attribute 'category' is required"}
    added = client.product_integration_report(import_id)
    assert [(row["sku"], row["ean"]) for row in added] == [("CAP", NEW_EAN)] and added[0]["product-sku"]
    # the integrated product can now carry an offer
    created = client.import_offers([offer("CAP", product_id=NEW_EAN)])
    assert client.offer_import_status(created).lines_in_success == 1
    assert sandbox.mirakl.offer("CAP")["product_sku"] == added[0]["product-sku"]


def test_reports_before_completion_are_not_found(sandbox, client):
    from include.woo_mirakl.clients.http import ApiError

    import_id = client.import_products(f"sku;ean;title;category\nX;{KNOWN_EAN};X;Hats\n".encode())
    with pytest.raises(ApiError) as error:
        client.product_error_report(import_id)
    assert error.value.status == 404


def test_the_product_catalogue_survives_save_and_load(sandbox):
    state = sandbox.mirakl.to_state()
    other = Sandbox(seed=5, clock=Clock(frozen=True))
    other.mirakl.load_state(state)
    assert other.mirakl.store.known_product("EAN", NEW_EAN) is not None
    assert set(other.mirakl.store.product_imports) == set(sandbox.mirakl.store.product_imports)


def test_new_operations_answer_as_the_spec_says(sandbox):
    url, headers = sandbox.mirakl_url, {"Authorization": KEY}
    of24 = requests.post(f"{url}/api/offers", json={"offers": [offer("SPEC-1"), offer("SPEC-2", state_code="0")]},
                         headers=headers, timeout=5)
    p41 = requests.post(f"{url}/api/products/imports", headers=headers, timeout=5,
                        files={"file": ("p.csv", f"sku;ean;title;category\nS;{KNOWN_EAN};S;Hats\nT;1;T;Hats\n")})
    offer_import, product_import = of24.json()["import_id"], p41.json()["import_id"]
    for _ in range(2):
        requests.get(f"{url}/api/products/imports/{product_import}", headers=headers, timeout=5)
    checks = [("POST", "/api/offers", of24), ("POST", "/api/products/imports", p41)]
    for path in (f"/api/offers/imports/{offer_import}", f"/api/offers/imports/{offer_import}/error_report",
                 f"/api/products/imports/{product_import}", f"/api/products/imports/{product_import}/error_report",
                 f"/api/products/imports/{product_import}/new_product_report"):
        checks.append(("GET", path, requests.get(url + path, headers=headers, timeout=5)))
    failures = {}
    for method, path, response in checks:
        assert response.status_code < 300, (path, response.text)
        errors = spec.validate_response(method, path, response.status_code, response.content,
                                        response.headers.get("Content-Type", "application/json"))
        if errors:
            failures[path] = errors[:3]
    assert failures == {}
