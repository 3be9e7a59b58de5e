"""Marketplace configuration: defaults, overrides and the errors a seller would make."""
from __future__ import annotations

from decimal import Decimal

import pytest

from include.woo_mirakl.config import ConfigError, PriceRule, get_marketplace, load_marketplaces, normalise_carrier


def write(tmp_path, text):
    path = tmp_path / "marketplaces.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_default_file_has_the_sandbox_marketplace():
    sandbox = get_marketplace("sandbox")
    assert sandbox.mirakl_conn_id == "mirakl_sandbox"
    assert sandbox.woocommerce_conn_id == "woocommerce_default"
    assert sandbox.order_policy.refuse_unknown_sku and sandbox.order_policy.refuse_short_stock


def test_env_var_points_to_another_file(tmp_path, monkeypatch):
    path = write(tmp_path, "marketplaces:\n  - {name: alpha, mirakl_conn_id: mirakl_alpha, safety_buffer: 2}\n"
                           "  - {name: beta, mirakl_conn_id: mirakl_beta, schedules: {mirakl_order_ingest: '*/2 * * * *'}}\n")
    monkeypatch.setenv("WOO_MIRAKL_MARKETPLACES", str(path))
    alpha, beta = load_marketplaces()
    assert (alpha.name, alpha.safety_buffer) == ("alpha", 2)
    assert beta.schedule("mirakl_order_ingest", "* * * * *") == "*/2 * * * *"
    assert beta.schedule("mirakl_inventory_push", "* * * * *") == "* * * * *"


@pytest.mark.parametrize(
    "text, message",
    [
        ("marketplaces:\n  - {name: Bad-Name, mirakl_conn_id: x}\n", "must be lower-case"),
        ("marketplaces:\n  - {name: a}\n", "has no mirakl_conn_id"),
        ("marketplaces:\n  - {name: a, mirakl_conn_id: x}\n  - {name: a, mirakl_conn_id: y}\n", "repeated: a"),
        ("marketplaces:\n  - {name: a, mirakl_conn_id: x, safety_buffer: -1}\n", "negative safety_buffer"),
        ("marketplaces: [\n", "not valid YAML"),
    ],
)
def test_invalid_files_are_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_marketplaces(write(tmp_path, text))


def test_price_rule_marks_up_and_rounds():
    assert PriceRule(Decimal("10"), Decimal("0.05")).apply("19.99") == Decimal("22.00")
    assert PriceRule(Decimal("0"), Decimal("0.01")).apply("5.005") == Decimal("5.01")
    assert PriceRule(Decimal("-10"), Decimal("1")).apply(10) == Decimal("9.00")


def test_carrier_names_match_whatever_the_case_and_spacing():
    carriers = get_marketplace("sandbox").carrier_map()
    assert carriers[normalise_carrier("la-poste")] == "LAPOSTE"
    assert carriers[normalise_carrier("  DHL express ")] == "DHL"
    assert normalise_carrier("Chrono Post") == normalise_carrier("chronopost")
