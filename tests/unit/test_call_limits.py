"""The call limits file matches the spec, and the extraction reads each phrasing right."""
from __future__ import annotations

import json

import pytest

from include.woo_mirakl.budgets import DEFAULT_LIMITS_FILE, CallLimits
from scripts.extract_call_limits import DEFAULT_SPEC, parse_max_usage, parse_windows, render


@pytest.fixture(scope="module")
def spec() -> dict:
    return json.loads(DEFAULT_SPEC.read_text(encoding="utf-8"))


def test_committed_yaml_is_what_the_spec_generates(spec: dict) -> None:
    assert DEFAULT_LIMITS_FILE.read_text(encoding="utf-8") == render(spec), (
        "include/config/mirakl_call_limits.yaml is stale: run scripts/extract_call_limits.py"
    )


def test_limits_of_the_operations_the_flows_use() -> None:
    limits = CallLimits.from_file()
    day, minute, hour = 86400.0, 60.0, 3600.0
    assert limits.windows("A01") == ((1, day),)
    assert limits.windows("OR11") == ((1, minute),)
    assert limits.windows("STO01") == ((1, minute),)
    assert limits.windows("PRI01") == ((1, minute),)
    assert limits.windows("OF24") == ((1, minute),)
    assert limits.windows("SH21") == ((1, day),)
    assert limits.windows("STO02") == ((1, 15.0),)
    assert limits.windows("TL02") == ((20, minute), (60, hour))
    assert limits.windows("IV01") == ((1, day),) and limits.pages_free("IV01")
    assert not limits.pages_free("OR11")
    # "at each ..." is no frequency: no ceiling
    for op in ("OR21", "OR23", "OR24", "OR28", "OR29", "OF21", "OR12"):
        assert limits.windows(op) == (), op


def test_variants_and_their_union() -> None:
    limits = CallLimits.from_file()
    assert limits.windows("OF51", "differential") == ((1, 60.0),)
    assert limits.windows("OF51", "full") == ((1, 86400.0),)
    assert limits.windows("OF51") == ((1, 60.0), (1, 86400.0))
    assert limits.windows("OR11", "synchronous") == ()
    with pytest.raises(ValueError, match="no call-frequency variant 'weekly'"):
        limits.windows("OF51", "weekly")


@pytest.mark.parametrize(
    ("clause", "expected"),
    [
        ("Once per day", [[1, 86400]]),
        ("once per minute", [[1, 60]]),
        ("Every hour", [[1, 3600]]),
        ("Every 5 minutes", [[1, 300]]),
        ("Once every 15 seconds", [[1, 15]]),
        ("20 times per min", [[20, 60]]),
        ("60 per hour", [[60, 3600]]),
        ("5 calls per second", [[5, 1]]),
        ("every 24 hours", [[1, 86400]]),
        ("at each order page display", []),
        ("100 order lines per call", []),
    ],
)
def test_parse_windows(clause: str, expected: list) -> None:
    assert parse_windows(clause) == expected


def test_parse_max_usage_labels_and_pages() -> None:
    entry = parse_max_usage(
        '<div class="max-call-frequency">Maximum usage: <br/>- Asynchronous: once per minute '
        "<br/>- Synchronous: at each order page display</div>"
    )
    assert entry["limits"] == [[1, 60]]
    assert entry["variants"] == {"asynchronous": [[1, 60]], "synchronous": []}
    paged = parse_max_usage(
        '<div class="max-call-frequency">Maximum usage: Once per day and as many times as there are '
        "invoice pages returned</div>"
    )
    assert paged["limits"] == [[1, 86400]] and paged["pages_free"] is True
    assert parse_max_usage("no frequency block here") is None
