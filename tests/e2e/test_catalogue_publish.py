"""End to end: `mirakl_catalogue_publish__sandbox` against the sandbox, run by dag.test().

The tests share one sandbox and one ledger and run in order, like the cycles of one shop's
day. The sandbox operator knows only the products registered here (``unknown_products:
reject``), so an EAN it lacks is refused by OF24 and goes through the product import (P41).
Each cycle is one DAG run followed by simulated time.
"""
from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest
import yaml

from include.sandbox.core import parse_iso
from tests.e2e.conftest import advance, run_dag

DAG_ID = "mirakl_catalogue_publish__sandbox"
MARKETPLACE = "sandbox"
MARKUP = "10"
SHOES = {"id": 21, "name": "Shoes", "slug": "shoes"}
HATS = {"id": 22, "name": "Hats", "slug": "hats"}
# Valid EAN-13 check digits; NEW_EAN is unknown to the operator until the product import.
EANS = {"RUN-1": "4006381333931", "RUN-2": "5901234123457", "TEE-S": "0012345678905", "TEE-M": "4012345678901"}
NEW_EAN = "9780201379624"
BAD_EAN = "9780201379625"  # wrong check digit: the operator refuses the product


@pytest.fixture(scope="module", autouse=True)
def marketplace_config(tmp_path_factory):
    """The sandbox marketplace: shoes and one extra SKU selected, EAN from WooCommerce, P41 on."""
    path = Path(tmp_path_factory.mktemp("config")) / "marketplaces.yaml"
    path.write_text(yaml.safe_dump({"marketplaces": [{
        "name": MARKETPLACE, "mirakl_conn_id": "mirakl_sandbox", "woocommerce_conn_id": "woocommerce_default",
        "price_rule": {"markup_percent": MARKUP, "rounding": "0.01"},
        "catalogue": {
            "select": {"categories": ["shoes"], "skus": ["CAP"]},
            "product_id": {"source": "global_unique_id", "type": "EAN"},
            "defaults": {"state_code": "11", "leadtime_to_ship": 3, "logistic_class": "M"},
            "retire": "delete",
            "product_import": {"enabled": True},
        },
    }]}))
    saved = os.environ.get("WOO_MIRAKL_MARKETPLACES")
    os.environ["WOO_MIRAKL_MARKETPLACES"] = str(path)
    yield path
    if saved is None:
        os.environ.pop("WOO_MIRAKL_MARKETPLACES", None)
    else:
        os.environ["WOO_MIRAKL_MARKETPLACES"] = saved


@pytest.fixture(scope="module")
def shop(sandbox, airflow_env):
    """Shoes (simple products and a variable T-shirt), a hat outside the selection, and defects."""
    woo, mirakl = sandbox.woo, sandbox.mirakl
    with sandbox.lock:
        mirakl.configure(unknown_products="reject", import_delay_s=3600, import_complete_after_polls=1)
        for ean in EANS.values():
            mirakl.add_product(ean, "EAN")
    woo.add_simple_product("RUN-1", "50.00", 7, global_unique_id=EANS["RUN-1"], categories=[SHOES],
                           short_description="<p>Light <b>running</b> shoe</p>")
    woo.add_simple_product("RUN-2", "80.00", 3, global_unique_id=EANS["RUN-2"], categories=[SHOES],
                           meta_data=[{"key": "_mirakl_leadtime_to_ship", "value": "6"}])
    woo.add_simple_product("HAT-1", "20.00", 5, global_unique_id="4000000000006", categories=[HATS])
    woo.add_simple_product("CAP", "15.00", 9, global_unique_id=NEW_EAN, categories=[HATS],
                           meta_data=[{"key": "_brand", "value": "Capco"}])
    woo.add_simple_product("NOREF", "12.00", 4, categories=[SHOES])
    parent = woo.add_variable_product("Trail tee", [
        {"sku": "TEE-S", "price": "30.00", "stock_quantity": 4, "attributes": [{"name": "Size", "option": "S"}]},
        {"sku": "TEE-M", "price": "30.00", "stock_quantity": 0, "attributes": [{"name": "Size", "option": "M"}]},
        {"sku": "", "price": "30.00", "stock_quantity": 2, "attributes": [{"name": "Size", "option": "L"}]},
    ])
    with sandbox.lock:
        store = woo.store
        store.update_item(store.item(parent["id"]), {"categories": [SHOES], "description": "Breathable tee"})
        for variation_id in parent["variations"]:
            record = store.item(variation_id)
            if record["sku"]:
                store.update_item(record, {"global_unique_id": EANS[record["sku"]]})
    no_sku = next(v for v in parent["variations"] if not woo.store.item(v)["sku"])
    return {"parent": parent["id"], "no_sku": no_sku}


def cycle(sandbox, ledger, conf: dict | None = None, seconds: float = 61) -> dict:
    """One DAG run, then simulated time; returns what publish returned."""
    run = run_dag(DAG_ID, conf)
    assert run.state == "success", run.state
    advance(sandbox, ledger, seconds)
    sandbox.tick()
    return ledger_summary(ledger)


def ledger_summary(ledger) -> dict:
    """What the last publish did (also when it coalesced), as the flow records it."""
    return ledger.get_cursor("mirakl_catalogue_publish", MARKETPLACE, "last_cycle") or {}


def sent_lines(sandbox, import_id: str) -> dict[str, dict]:
    """The offers of one OF24 call, as the sandbox received them."""
    return {line["shop_sku"]: line for line in sandbox.mirakl.store.imports[import_id]["lines"]}


def xcom(run, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(XComModel).where(
            XComModel.dag_id == run.dag_id, XComModel.run_id == run.run_id, XComModel.task_id == task_id,
            XComModel.key == "return_value")).one()
        return XComModel.deserialize_value(row)


def open_keys(ledger, kind: str) -> set[str]:
    return {e.key for e in ledger.open_exceptions(MARKETPLACE, kind)}


def live(sandbox) -> dict[str, dict]:
    return {o["shop_sku"]: o for o in sandbox.mirakl.offers()}


def test_dry_run_lists_without_sending(sandbox, ledger, shop):
    run = run_dag(DAG_ID, {"dry_run": True})
    assert run.state == "success"
    report = xcom(run, "publish")
    assert report["create"] == ["CAP", "RUN-1", "RUN-2", "TEE-M", "TEE-S"]
    assert report["update"] == report["retire"] == []
    assert report["exceptions"]["catalogue_product_reference_missing"] == ["NOREF"]
    assert sandbox.log.count("mirakl") == 0
    assert ledger.get_cursor("mirakl_catalogue_publish", MARKETPLACE, "offers") is None
    assert ledger.open_exceptions(MARKETPLACE) == []


def test_selected_units_become_complete_offers(sandbox, ledger, shop):
    summary = cycle(sandbox, ledger)
    assert summary["create"] == 5 and summary["offer_import"], summary  # RUN-1, RUN-2, TEE-S, TEE-M, CAP
    sent = sent_lines(sandbox, summary["offer_import"])
    assert set(sent) == {"RUN-1", "RUN-2", "TEE-S", "TEE-M", "CAP"}  # not HAT-1, not the parent, not NOREF
    assert sent["RUN-1"] == {
        "shop_sku": "RUN-1", "product_id": EANS["RUN-1"], "product_id_type": "EAN", "price": 55.0, "quantity": 7,
        "state_code": "11", "update_delete": "update", "description": "Light running shoe",
        "leadtime_to_ship": 3, "logistic_class": "M",
    }
    assert sent["RUN-2"]["leadtime_to_ship"] == 6  # the product's own lead time
    assert sent["TEE-S"]["description"] == "Breathable tee" and sent["TEE-M"]["quantity"] == 0
    offers = live(sandbox)
    assert set(offers) == {"RUN-1", "RUN-2", "TEE-S", "TEE-M"}  # CAP's EAN is unknown to the operator
    assert (offers["RUN-1"]["price"], offers["RUN-1"]["quantity"], offers["RUN-1"]["logistic_class"]["code"]) == (55.0, 7, "M")
    # a unit without a SKU, and one without a product reference, are exceptions; the rest went on
    assert open_keys(ledger, "catalogue_sku_missing") == {str(shop["no_sku"])}
    assert open_keys(ledger, "catalogue_product_reference_missing") == {"NOREF"}


def test_follow_up_records_outcomes_and_sends_the_unknown_product_through_p41(sandbox, ledger, shop):
    summary = cycle(sandbox, ledger, seconds=901)
    assert sandbox.log.count("mirakl", "OF02") == 1 and sandbox.log.count("mirakl", "OF03") == 1
    assert summary["create"] == 0 and summary["update"] == 0 and summary["offer_import"] is None
    assert summary["product_import"], summary
    record = sandbox.mirakl.store.product_imports[summary["product_import"]]
    assert record["header"][:3] == ["sku", "ean", "title"]
    rows = [dict(zip(record["header"], raw)) for raw in record["raw_rows"]]
    assert rows == [{"sku": "CAP", "ean": NEW_EAN, "title": "Product CAP", "description": "", "category": "Hats",
                     "brand": "Capco", "image": "", "size": "", "colour": ""}]
    states = ledger.get_cursor("mirakl_catalogue_publish", MARKETPLACE, "offers")
    assert states["RUN-1"]["offer"]["price"] == 55.0 and "pending" not in states["RUN-1"]
    assert ledger.offer_states(MARKETPLACE, ["RUN-1"])["RUN-1"].last_accepted_quantity == 7


def test_an_integrated_product_becomes_an_offer(sandbox, ledger, shop):
    cycle(sandbox, ledger)  # P42 (COMPLETE), P45: integrated; then OF24 creates the offer
    assert sandbox.log.count("mirakl", "P42") >= 1 and sandbox.log.count("mirakl", "P45") == 1
    assert sandbox.mirakl.store.live_offer("CAP")["product_id"] == NEW_EAN
    cycle(sandbox, ledger)
    assert "catalogue_product_unknown" not in {e.kind for e in ledger.open_exceptions(MARKETPLACE)}


def test_a_second_run_sends_nothing(sandbox, ledger, shop):
    before = sandbox.log.count("mirakl", "OF24")
    summary = cycle(sandbox, ledger)
    assert sandbox.log.count("mirakl", "OF24") == before
    assert (summary["create"], summary["update"], summary["retire"]) == (0, 0, 0)


def test_a_price_change_resends_that_offer_complete_with_the_quantity_mirakl_holds(sandbox, ledger, shop):
    # the inventory flow moved RUN-2's stock to 2 (STO01) in the meantime: OF24 must not undo it
    ledger.upsert_offer_states(MARKETPLACE, [{"sku": "RUN-2", "last_accepted_quantity": 2, "last_pushed_quantity": 2}])
    with sandbox.lock:
        sandbox.mirakl.store.offers["RUN-2"]["quantity"] = 2
    sandbox.woo.set_price("RUN-2", "90.00")
    summary = cycle(sandbox, ledger)
    assert summary["update"] == 1, summary
    (line,) = sent_lines(sandbox, summary["offer_import"]).values()
    assert line == {"shop_sku": "RUN-2", "product_id": EANS["RUN-2"], "product_id_type": "EAN", "price": 99.0,
                    "quantity": 2, "state_code": "11", "update_delete": "update", "description": "",
                    "leadtime_to_ship": 6, "logistic_class": "M"}
    assert live(sandbox)["RUN-2"]["price"] == 99.0 and live(sandbox)["RUN-2"]["quantity"] == 2


def test_deselected_deleted_and_draft_products_are_retired(sandbox, ledger, shop):
    store = sandbox.woo.store
    with sandbox.lock:
        store.update_item(store.by_sku("RUN-1"), {"categories": [HATS]})  # deselected
        store.update_item(store.by_sku("TEE-M"), {"status": "private"})  # no longer for sale
        store.delete_item(store.by_sku("CAP"))  # deleted
    summary = cycle(sandbox, ledger)
    assert summary["retire"] == 3, summary
    lines = sent_lines(sandbox, summary["offer_import"])
    assert {sku: line["update_delete"] for sku, line in lines.items()} == {
        "RUN-1": "delete", "TEE-M": "delete", "CAP": "delete"}
    assert lines["RUN-1"]["product_id"] == EANS["RUN-1"]  # the complete offer, marked for deletion
    assert set(live(sandbox)) == {"RUN-2", "TEE-S"}
    before = sandbox.log.count("mirakl", "OF24")
    cycle(sandbox, ledger)  # follow-up, then a publish: nothing is retired twice
    assert sandbox.log.count("mirakl", "OF24") == before


def test_a_rejected_product_surfaces_the_operators_reason(sandbox, ledger, shop):
    sandbox.woo.add_simple_product("BAD", "10.00", 2, global_unique_id=BAD_EAN, categories=[SHOES])
    cycle(sandbox, ledger, seconds=901)  # OF24 refuses the line: product unknown
    summary = cycle(sandbox, ledger)  # OF03 read; BAD goes to P41
    assert summary["product_import"], summary
    cycle(sandbox, ledger)  # P42 COMPLETE, P44: rejected
    (exception,) = ledger.open_exceptions(MARKETPLACE, "catalogue_product_rejected")
    assert exception.key == "BAD" and "EAN" in exception.detail["reason"] and "invalid" in exception.detail["reason"]
    before = (sandbox.log.count("mirakl", "P41"), sandbox.log.count("mirakl", "OF24"))
    cycle(sandbox, ledger, seconds=901)
    assert (sandbox.log.count("mirakl", "P41"), sandbox.log.count("mirakl", "OF24")) == before  # not resent unchanged


def test_no_of24_within_a_minute_of_the_previous_one(sandbox, ledger, shop):
    sandbox.woo.set_price("TEE-S", "31.00")
    assert run_dag(DAG_ID).state == "success"
    assert ledger_summary(ledger)["update"] == 1 and ledger_summary(ledger)["offer_import"]
    sandbox.woo.set_price("RUN-2", "95.00")
    assert run_dag(DAG_ID).state == "success"  # at once: coalesced, nothing sent
    assert ledger_summary(ledger)["reason"].startswith("coalesced: OF24"), ledger_summary(ledger)
    advance(sandbox, ledger, 61)
    summary = cycle(sandbox, ledger)  # the next allowed cycle sends it
    assert set(sent_lines(sandbox, summary["offer_import"])) == {"RUN-2"}
    assert (live(sandbox)["TEE-S"]["price"], live(sandbox)["RUN-2"]["price"]) == (34.1, 104.5)
    times = [parse_iso(e["at"]) for e in sandbox.log.entries("mirakl", "OF24") if e["status"] == 201]
    assert all(b - a >= timedelta(seconds=60) for a, b in zip(times, times[1:])), times


def test_an_offer_import_whose_answer_was_lost_is_checked_before_it_is_sent_again(sandbox, ledger, shop):
    sandbox.woo.set_price("TEE-S", "33.00")
    sandbox.faults.add({"service": "mirakl", "operation": "OF24", "kind": "drop", "count": 1})
    summary = cycle(sandbox, ledger)
    assert "outcome unknown" in summary["reason"], summary
    assert live(sandbox)["TEE-S"]["price"] == 34.1  # the request never reached Mirakl
    summary = cycle(sandbox, ledger)  # OF21 shows it did not land: sent again, once
    assert sandbox.log.count("mirakl", "OF21") >= 1 and summary["update"] == 1 and summary["offer_import"]
    assert live(sandbox)["TEE-S"]["price"] == 36.3
    cycle(sandbox, ledger)
    assert ledger_summary(ledger)["update"] == 0
