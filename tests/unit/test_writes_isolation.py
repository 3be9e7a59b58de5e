"""Which failures concern every record (the task fails) and which only one (an exception on it)."""
from __future__ import annotations

import pytest

from include.woo_mirakl.clients.http import ApiError, MalformedResponseError, TransportError, UncertainWriteError
from include.woo_mirakl.writes import concerns_every_record


@pytest.mark.parametrize("error", [
    ApiError("mirakl", "OR28", 401, None, "Unauthorized"),
    TransportError("mirakl", "OR24", "connection refused after 5 attempts"),
])
def test_refused_credentials_and_an_unreachable_api_concern_every_record(error):
    assert concerns_every_record(error)


@pytest.mark.parametrize("error", [
    ApiError("mirakl", "OR28", 403, None, "Forbidden"),
    ApiError("woo", "woo.orders.get", 404, "woocommerce_rest_shop_order_invalid_id", "Invalid ID."),
    ApiError("mirakl", "OR24", 500, None, "Internal error"),
    UncertainWriteError("mirakl", "OR28", "HTTP 500", 500),
    MalformedResponseError("woo", "woo.orders.get", 200, "truncated"),
    None,
])
def test_one_records_404_403_5xx_or_bad_answer_does_not(error):
    assert not concerns_every_record(error)
