"""Catalogue publishing, the pure parts: selection, complete offers, planning, product files, configuration."""
from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from include.woo_mirakl.catalogue import (
    AttributeMapping,
    Desired,
    Unit,
    build_offer,
    offer_digest,
    plain_text,
    plan_changes,
    product_reference,
    retire_line,
    selected,
)
from include.woo_mirakl.config import (
    CataloguePolicy,
    CatalogueSelection,
    ConfigError,
    Marketplace,
    PriceRule,
    load_marketplaces,
)

SHOES = {"id": 21, "name": "Running Shoes", "slug": "running-shoes"}
POLICY = CataloguePolicy(selection=CatalogueSelection(categories=("running-shoes",)), logistic_class="M",
                         leadtime_to_ship=3)
MARKETPLACE = Marketplace(name="m", mirakl_conn_id="c", price_rule=PriceRule(Decimal("10"), Decimal("0.01")),
                          safety_buffer=1, catalogue=POLICY)


def product(**fields):
    base = {"id": 1, "sku": "RUN-1", "type": "simple", "status": "publish", "price": "50.00", "manage_stock": True,
            "stock_quantity": 7, "stock_status": "instock", "global_unique_id": "4006381333931",
            "short_description": "<p>Light &amp; <b>fast</b></p>", "categories": [SHOES], "meta_data": []}
    return {**base, **fields}


@pytest.mark.parametrize("selection, expected", [
    (CatalogueSelection(categories=("running-shoes",)), True),
    (CatalogueSelection(categories=("21",)), True),
    (CatalogueSelection(categories=("RUNNING SHOES",)), True),
    (CatalogueSelection(tags=("sale",)), False),
    (CatalogueSelection(skus=("RUN-1",)), True),
    (CatalogueSelection(), False),
])
def test_selection_by_category_id_slug_or_name_tag_or_sku(selection, expected):
    assert selected(product(), selection) is expected


def test_product_reference_sources():
    item = product(meta_data=[{"key": "_ean", "value": " 123 "}])
    assert product_reference(item, None, POLICY) == "4006381333931"
    assert product_reference(item, None, replace(POLICY, product_id_source="meta", product_id_meta_key="_ean")) == "123"
    assert product_reference(item, None, replace(POLICY, product_id_source="shop_sku")) == "RUN-1"
    assert product_reference(product(global_unique_id=""), None, POLICY) == ""


def test_complete_offer_with_defaults_price_rule_and_plain_description():
    offer = build_offer(Unit(product()), MARKETPLACE, "4006381333931", 6)
    assert offer == {"shop_sku": "RUN-1", "product_id": "4006381333931", "product_id_type": "EAN", "price": 55.0,
                     "quantity": 6, "state_code": "11", "update_delete": "update", "description": "Light & fast",
                     "leadtime_to_ship": 3, "logistic_class": "M"}


def test_variation_inherits_description_and_own_leadtime():
    parent = product(id=9, type="variable", sku="", description="Breathable tee", short_description="")
    variation = {"id": 10, "sku": "TEE-S", "type": "variation", "status": "publish", "price": "30", "manage_stock": True,
                 "stock_quantity": 2, "description": "", "meta_data": [{"key": "_mirakl_leadtime_to_ship", "value": "6"}]}
    offer = build_offer(Unit(variation, parent), MARKETPLACE, "0012345678905", 2)
    assert (offer["description"], offer["leadtime_to_ship"], offer["price"]) == ("Breathable tee", 6, 33.0)
    assert not Unit(variation, {**parent, "status": "draft"}).sellable


def test_offer_without_price_is_refused():
    with pytest.raises(ValueError, match="has no price"):
        build_offer(Unit(product(price="")), MARKETPLACE, "x", 1)


def test_plain_text_strips_html_and_truncates():
    assert plain_text("<h2>Title</h2>\n<p>a&nbsp;b</p>") == "Title a b"
    assert len(plain_text("x" * 5000)) == 2000


def test_digest_ignores_quantity_but_not_price():
    offer = build_offer(Unit(product()), MARKETPLACE, "e", 6)
    assert offer_digest(offer) == offer_digest({**offer, "quantity": 0})
    assert offer_digest(offer) != offer_digest({**offer, "price": 56.0})


def want(sku: str, price: float = 10.0, reference: str = "E") -> Desired:
    offer = {"shop_sku": sku, "product_id": reference, "product_id_type": "EAN", "price": price, "quantity": 1,
             "state_code": "11", "update_delete": "update"}
    return Desired(sku, Unit({"id": 1, "sku": sku}), reference, offer)


def test_plan_creates_updates_retires_and_skips_what_is_in_flight_or_refused_unchanged():
    desired = {s: want(s) for s in ("NEW", "SAME", "CHANGED", "FLIGHT", "REFUSED")}
    desired["CHANGED"] = want("CHANGED", price=12.0)
    states = {
        "SAME": {"offer": {**want("SAME").offer, "quantity": 9}},
        "CHANGED": {"offer": want("CHANGED").offer},
        "FLIGHT": {"pending": {"batch": "k"}},
        "REFUSED": {"refused": {"digest": offer_digest(want("REFUSED").offer)}},
        "GONE": {"offer": want("GONE").offer},
        "GONE_ALREADY": {"offer": want("GONE_ALREADY").offer, "retired": True},
    }
    plan = plan_changes(desired, states, "delete", product_import=False)
    assert set(plan.create) == {"NEW"} and set(plan.update) == {"CHANGED"}
    assert plan.retire == {"GONE": retire_line(want("GONE").offer, "delete")}
    assert plan.retire["GONE"]["update_delete"] == "delete" and plan.retire["GONE"]["product_id"] == "E"
    assert [a for a, _, _ in plan.lines()] == ["create", "update", "retire"]


def test_zero_policy_keeps_the_complete_offer_without_stock():
    line = retire_line(want("A").offer, "zero")
    assert (line["quantity"], line["update_delete"], line["price"]) == (0, "update", 10.0)


def test_unknown_products_go_to_the_product_import_until_integrated():
    needed = {"product": "needed", "refused_reference": "E"}
    assert set(plan_changes({"A": want("A")}, {"A": needed}, "delete", product_import=True).products) == {"A"}
    assert not plan_changes({"A": want("A")}, {"A": needed}, "delete", product_import=False).lines()
    # a corrected reference is tried again as an offer
    assert set(plan_changes({"A": want("A", reference="F")}, {"A": needed}, "delete", False).create) == {"A"}
    integrated = {"product": "integrated"}
    assert set(plan_changes({"A": want("A")}, {"A": integrated}, "delete", True).create) == {"A"}


def test_attribute_mapping_builds_the_product_file(tmp_path):
    path = tmp_path / "attributes.yaml"
    path.write_text("identifier: sku\nattributes:\n  sku: sku\n  ean: product_id\n  title: name\n"
                    "  category: category\n  brand: meta:_brand\n  size: attribute:Size\n")
    mapping = AttributeMapping.load(str(path))
    parent = {"id": 9, "name": "Tee", "categories": [SHOES], "meta_data": [{"key": "_brand", "value": "Acme"}]}
    variation = {"id": 10, "sku": "TEE-S", "name": "", "attributes": [{"name": "Size", "option": "S"}]}
    row = mapping.row(Unit(variation, parent), "0012345678905")
    assert row == {"sku": "TEE-S", "ean": "0012345678905", "title": "Tee", "category": "Running Shoes",
                   "brand": "Acme", "size": "S"}
    assert mapping.file([row]).decode() == "sku;ean;title;category;brand;size\nTEE-S;0012345678905;Tee;Running Shoes;Acme;S\n"


def test_attribute_mapping_needs_an_identifier_mapped_to_the_sku(tmp_path):
    path = tmp_path / "attributes.yaml"
    path.write_text("identifier: code\nattributes:\n  sku: sku\n")
    with pytest.raises(ConfigError, match="identifier"):
        AttributeMapping.load(str(path))
    assert AttributeMapping.load("product_attributes.yaml").identifier == "sku"  # the shipped file


def test_catalogue_configuration_defaults_to_nothing_selected(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("marketplaces:\n  - {name: a, mirakl_conn_id: x}\n")
    (marketplace,) = load_marketplaces(path)
    assert marketplace.catalogue.selection.empty and marketplace.catalogue.retire == "delete"


@pytest.mark.parametrize("catalogue, message", [
    ("{retire: archive}", "retire 'archive' must be one of"),
    ("{product_id: {source: meta}}", "no product_id.meta_key"),
    ("{product_id: {source: barcode}}", "product_id.source 'barcode'"),
    ("{select: {brands: [x]}}", "unknown keys \\['brands'\\]"),
    ("{select: {skus: A}}", "skus must be a list"),
    ("{defaults: {leadtime_to_ship: -1}}", "leadtime_to_ship must be 0 or more"),
])
def test_invalid_catalogue_configuration_is_refused_with_the_reason(tmp_path, catalogue, message):
    path = tmp_path / "m.yaml"
    path.write_text(f"marketplaces:\n  - {{name: a, mirakl_conn_id: x, catalogue: {catalogue}}}\n")
    with pytest.raises(ConfigError, match=message):
        load_marketplaces(path)


def test_shop_sku_references_default_to_the_shop_sku_type(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("marketplaces:\n  - {name: a, mirakl_conn_id: x, catalogue: {select: {skus: [A, B]}, "
                    "product_id: {source: shop_sku}, retire: zero}}\n")
    (marketplace,) = load_marketplaces(path)
    policy = marketplace.catalogue
    assert (policy.selection.skus, policy.product_id_type, policy.retire) == (("A", "B"), "SHOP_SKU", "zero")
