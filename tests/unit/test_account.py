"""The account flow's pure parts: form validation, disconnect plans, SKU uniqueness, shop verdicts."""
from __future__ import annotations

import importlib.util
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest

from include.woo_mirakl.account import (
    ACTIONS,
    DELETE_BATCH,
    FAILED,
    OK,
    POLICIES,
    WARNING,
    Check,
    DisconnectPlan,
    OfferRef,
    RequestRefused,
    VerifyReport,
    _shop_check,
    check_request,
    find_duplicate_skus,
    marketplace_flow_ids,
    plan_disconnect,
)
from include.woo_mirakl.clients.mirakl import build_stock_csv
from include.woo_mirakl.clients.mirakl_models import Offer

ROOT = Path(__file__).resolve().parents[2]


def offer(sku: str, quantity: int = 5) -> OfferRef:
    return OfferRef(sku, quantity, "10.5", "11", sku, "SHOP_SKU")


# ---- the trigger form ---------------------------------------------------------------------------

@pytest.mark.parametrize("confirmation", [None, "", "disconnect", "DISCONNECT", " Disconnect", "Disconnect ", "yes"])
def test_real_disconnect_needs_the_exact_confirmation(confirmation):
    with pytest.raises(RequestRefused, match="must read exactly 'Disconnect'") as refused:
        check_request("disconnect", "zero", confirmation, False)
    assert "Nothing was sent to Mirakl" in str(refused.value)


def test_confirmed_disconnect_is_accepted():
    request = check_request("disconnect", "remove", "Disconnect", False)
    assert (request.action, request.offers_policy, request.dry_run, request.confirmed) == (
        "disconnect", "remove", False, True)


def test_dry_run_and_verify_need_no_confirmation():
    assert check_request("disconnect", "zero", "", True).dry_run is True
    assert check_request("verify", "keep", None, False).confirmed is False


@pytest.mark.parametrize(
    "args, message",
    [
        (("pause", "keep", "", True), "action must be one of verify, disconnect"),
        (("disconnect", "burn", "", True), "offers_policy must be one of keep, zero, remove"),
        (("disconnect", "keep", "", "false"), "dry_run must be true or false"),
    ],
)
def test_bad_form_values_are_named(args, message):
    with pytest.raises(RequestRefused, match=message):
        check_request(*args)


def test_the_form_offers_exactly_the_validated_choices():
    spec = importlib.util.spec_from_file_location("mirakl_account_dag", ROOT / "dags" / "mirakl_account.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert tuple(module.PARAMS["action"].schema["enum"]) == ACTIONS
    assert tuple(p for p in module.PARAMS["offers_policy"].schema["enum"] if p is not None) == POLICIES
    assert module.PARAMS["dry_run"].value is True


def test_the_form_requires_only_what_every_action_needs_and_describes_the_action():
    spec = importlib.util.spec_from_file_location("mirakl_account_dag", ROOT / "dags" / "mirakl_account.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    policy = module.PARAMS["offers_policy"].schema
    assert "null" in policy["type"] and None in policy["enum"]  # the UI marks a field without null "required"
    assert "verify" in module.PARAMS["action"].description
    assert "disconnect" in module.PARAMS["offers_policy"].description.lower()


def test_verify_needs_no_offers_policy_but_a_disconnect_does():
    assert check_request("verify", None, None, True).offers_policy is None
    assert check_request("reconnect", None, None, True).action == "reconnect"
    with pytest.raises(RequestRefused, match="choose what happens to the offers"):
        check_request("disconnect", None, None, True)


# ---- disconnect plans ---------------------------------------------------------------------------

def test_zero_plan_is_one_stock_file_with_every_offer_at_zero():
    plan = plan_disconnect("mp", "zero", [offer("B", 3), offer("A", 0), offer("B", 3)], [], [])
    assert [(line.offer_sku, line.quantity) for line in plan.stock_lines] == [("A", 0), ("B", 0)]
    assert plan.delete_batches == []
    assert build_stock_csv(plan.stock_lines).decode().splitlines()[1:] == ["A;0;;", "B;0;;"]
    assert plan.counts()["stock_files"] == 1 and plan.counts()["offers_in_stock"] == 1


def test_remove_plan_deletes_every_offer_in_batches():
    offers = [offer(f"SKU-{i:04d}") for i in range(DELETE_BATCH + 3)]
    plan = plan_disconnect("mp", "remove", reversed(offers), [], [])
    batches = plan.delete_batches
    assert [len(b) for b in batches] == [DELETE_BATCH, 3]
    assert batches[0][0] == {"shop_sku": "SKU-0000", "product_id": "SKU-0000", "product_id_type": "SHOP_SKU",
                             "price": 10.5, "state_code": "11", "update_delete": "delete"}
    assert all(row["update_delete"] == "delete" for batch in batches for row in batch)
    assert plan.stock_lines == []


def test_keep_plan_sends_nothing():
    plan = plan_disconnect("mp", "keep", [offer("A")], [], ["x__mp"])
    assert plan.stock_lines == [] and plan.delete_batches == []
    assert "nothing is sent to Mirakl" in plan.describe()[0]


def test_plan_warns_about_orders_in_progress_and_names_the_flows():
    orders = [{"order_id": "O-2", "state": "SHIPPING", "woo_order_id": 7},
              {"order_id": "O-1", "state": "WAITING_ACCEPTANCE", "woo_order_id": None}]
    plan = plan_disconnect("mp", "zero", [offer("A")], orders, ["b__mp", "a__mp"])
    text = "\n".join(plan.describe())
    assert "WARNING: 2 order(s) still in progress" in text
    assert "O-1 (WAITING_ACCEPTANCE), O-2 (SHIPPING)" in text
    assert "Pause 2 flow(s): a__mp, b__mp" in text


def test_plan_survives_the_ledger_round_trip():
    plan = plan_disconnect("mp", "remove", [offer("A"), offer("B", 0)], [{"order_id": "1", "state": "SHIPPING"}],
                           ["f__mp"])
    assert DisconnectPlan.from_state("mp", plan.to_state()) == plan


def test_unknown_policy_is_refused():
    with pytest.raises(RequestRefused):
        plan_disconnect("mp", "shred", [], [], [])


def test_flows_of_the_marketplace_exclude_the_account_flow_and_other_marketplaces():
    ids = ["mirakl_order_ingest__mp", "mirakl_account__mp", "mirakl_order_ingest__mp2", "mirakl_inventory_push__mp",
           "other"]
    assert marketplace_flow_ids(ids, "mp") == ["mirakl_inventory_push__mp", "mirakl_order_ingest__mp"]


def test_offer_ref_uses_the_offer_product_reference_for_deletes():
    raw = {"shop_sku": "S1", "quantity": 4, "price": 12.0, "state_code": "11", "product_sku": "MKP1",
           "product_references": [{"reference": "EAN123", "reference_type": "EAN"}]}
    ref = OfferRef.from_offer(Offer.from_api(raw))
    assert (ref.product_id, ref.product_id_type, ref.quantity, Decimal(ref.price)) == ("EAN123", "EAN", 4, 12)
    fallback = OfferRef.from_offer(Offer.from_api({**raw, "product_references": [], "quantity": None}))
    assert (fallback.product_id, fallback.product_id_type, fallback.quantity) == ("MKP1", "SKU", 0)


# ---- verification verdicts ----------------------------------------------------------------------

def test_duplicate_skus_across_products_and_variations_are_found():
    items = [
        {"id": 1, "sku": "A", "type": "simple"},
        {"id": 2, "sku": "", "type": "variable"},
        {"id": 3, "sku": "A", "type": "variation", "parent_id": 2},
        {"id": 4, "sku": "B", "type": "variation", "parent_id": 2},
        {"id": 5, "sku": " ", "type": "simple"},
    ]
    duplicates, missing = find_duplicate_skus(items)
    assert duplicates == {"A": ["product 1", "variation 3 of product 2"]}
    assert missing == 1  # the simple product; the variable parent is not sold itself


def test_shop_check_shows_name_currency_and_state_or_the_mismatch():
    answer = {"shop_id": 2001, "shop_name": "Sandbox Shop", "currency": "EUR", "state": "OPEN"}
    good = _shop_check(2001, answer)
    assert good.status == OK and "'Sandbox Shop' (id 2001), currency EUR, state OPEN" in good.message
    bad = _shop_check(9999, answer)
    assert bad.status == FAILED and "connection says shop 9999, but the API key belongs to shop 'Sandbox Shop'" in bad.message
    assert _shop_check(None, answer).status == WARNING
    assert _shop_check(2001, {**answer, "state": "SUSPENDED"}).status == WARNING


def test_report_fails_only_on_failed_checks_and_renders_each_check():
    checks = [Check("a", "First", OK, "fine"), Check("b", "Second", WARNING, "hmm")]
    report = VerifyReport("mp", datetime(2026, 1, 1, tzinfo=timezone.utc), checks)
    assert report.ok and report.summary()["warnings"] == ["b"]
    report.checks.append(Check("c", "Third", FAILED, "broken"))
    assert not report.ok and report.summary()["failed"] == ["c"]
    assert "[FAIL] Third: broken" in report.render() and "FAILED (1 check(s))" in report.render()
