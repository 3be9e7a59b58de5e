"""Pure pieces of the HTTP layer: backoff bounds, Retry-After, redaction, URLs, CSV files."""
from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from email.utils import format_datetime

import pytest

from include.woo_mirakl.clients.http import ApiError, Redactor, RetryPolicy, parse_retry_after
from include.woo_mirakl.clients.mirakl import PriceLine, StockLine, build_price_csv, build_stock_csv, mirakl_base_url
from include.woo_mirakl.clients.mirakl_models import Order, parse_error_report
from include.woo_mirakl.clients.woocommerce import parse_version, tracking_from_meta, woo_base_url


def test_backoff_grows_exponentially_with_jitter_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (5, 8.0), (9, 8.0)]:
        delays = {policy.backoff(attempt, rng) for _ in range(50)}
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (attempt, delays)
        assert len(delays) > 1  # jittered, not a fixed step


def test_retry_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValueError):
        RetryPolicy(timeout=0)


def test_parse_retry_after_seconds_and_http_date() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0 ") == 0.0
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=timezone.utc)
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now) == 0.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None


def test_redactor_hides_known_secrets_and_secret_query_parameters() -> None:
    redactor = Redactor()
    redactor.add("my-api-key-123")
    text = redactor.redact("GET https://x/api?consumer_key=ck_abc&consumer_secret=cs_def&page=2 key my-api-key-123")
    assert "my-api-key-123" not in text and "ck_abc" not in text and "cs_def" not in text
    assert "page=2" in text
    assert "my-api-key" not in repr(redactor)


def test_api_error_message_carries_code_and_message() -> None:
    error = ApiError("woo", "woo.orders.get", 404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID.")
    assert str(error) == "woo woo.orders.get: HTTP 404 woocommerce_rest_shop_order_invalid_id: Invalid ID."
    assert error.status == 404 and error.code == "woocommerce_rest_shop_order_invalid_id"


@pytest.mark.parametrize(
    ("host", "port", "expected"),
    [
        ("acme-dev.mirakl.net", None, "https://acme-dev.mirakl.net"),
        ("https://acme-dev.mirakl.net/mmp/shop", None, "https://acme-dev.mirakl.net"),
        ("http://127.0.0.1", 8081, "http://127.0.0.1:8081"),
        ("http://127.0.0.1:8081/", None, "http://127.0.0.1:8081"),
    ],
)
def test_mirakl_base_url(host: str, port: int | None, expected: str) -> None:
    assert mirakl_base_url(host, port) == expected


def test_mirakl_base_url_rejects_empty_and_odd_hosts() -> None:
    with pytest.raises(ValueError, match="empty"):
        mirakl_base_url("  ")
    with pytest.raises(ValueError, match="not a hostname"):
        mirakl_base_url("ftp://acme.mirakl.net")


def test_woo_base_url_keeps_subdirectory_and_drops_api_prefix() -> None:
    assert woo_base_url("shop.example.com") == "https://shop.example.com"
    assert woo_base_url("https://example.com/shop/wp-json/wc/v3/") == "https://example.com/shop"
    assert woo_base_url("http://127.0.0.1", 8082) == "http://127.0.0.1:8082"
    assert parse_version("9.8.0") == (9, 8, 0) and parse_version(None) == ()


def test_stock_csv_has_the_spec_columns_and_separator() -> None:
    payload = build_stock_csv([StockLine("SKU-B", 3), StockLine("SKU-A", 0, "WH1"), StockLine("SKU;C", 1)])
    assert payload.decode().splitlines() == [
        "offer-sku;quantity;warehouse-code;update-delete",
        "SKU-A;0;WH1;",
        "SKU-B;3;;",
        '"SKU;C";1;;',
    ]
    with pytest.raises(ValueError, match="integer >= 0"):
        StockLine("SKU-A", -1)
    with pytest.raises(ValueError, match="at least one line"):
        build_stock_csv([])


def test_price_csv() -> None:
    assert build_price_csv([PriceLine("A", Decimal("19.90"))]).decode() == "offer-sku;price\nA;19.90\n"


def test_error_report_parsing() -> None:
    report = '\ufeffline-number;error-message;offer-sku;quantity\n2;The offer does not exist;GHOST-1;5\n\n'
    [line] = parse_error_report(report)
    assert line.line_number == 2 and line.error == "The offer does not exist" and line.offer_sku == "GHOST-1"
    assert parse_error_report("") == []


def test_order_tolerates_nulls() -> None:
    order = Order.from_api({"order_id": "X-1", "customer": None, "order_lines": None, "total_price": None,
                            "acceptance_decision_date": None, "created_date": "2026-01-01T10:00:00.123Z"})
    assert order.customer is None and order.order_lines == [] and order.total_price is None
    assert order.created_date == datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)


def test_tracking_from_meta() -> None:
    order = {"meta_data": [{"key": "_wc_shipment_tracking_items", "value": [
        {"tracking_provider": "", "custom_tracking_provider": "Colis Express", "custom_tracking_link": "https://t/1",
         "tracking_number": "TRK1", "date_shipped": "1767225600"}]}]}
    [shipment] = tracking_from_meta(order)
    assert (shipment.tracking_number, shipment.provider, shipment.source) == ("TRK1", "Colis Express", "meta")
    assert shipment.date_shipped == "2026-01-01T00:00:00Z"
