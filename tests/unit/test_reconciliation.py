"""The reconciliation join, its findings, the expectation suite and the report files (pure functions)."""
from __future__ import annotations

import itertools
from datetime import date
from decimal import Decimal

import pandas as pd
import pytest

from include.woo_mirakl import finance_reports
from include.woo_mirakl.reconciliation import (
    AmountError,
    Day,
    Inputs,
    Rules,
    SuiteFailed,
    documents_frame,
    invalid_amounts,
    ledger_frame,
    ledger_rows,
    parse_cents,
    reconcile,
    summary_value,
    transactions_frame,
    validate_transactions,
    woo_lines_frame,
    woo_refunds_frame,
)

DAY = Day(date(2026, 3, 10))
RULES = Rules(commission_rate="0.10", commission_tolerance="0.01", grace_days=3, currency="EUR")
_ids = itertools.count(1)


def tl(kind: str, amount: float | str, order: str | None = None, line: str | None = None, when: str = "2026-03-10T10:00:00Z",
       document: str | None = None, cycle: str = "c" * 36, currency: str = "EUR") -> dict:
    entities = {}
    if order:
        entities["order"] = {"id": order}
    if line:
        entities["order_line"] = {"id": line}
    # as the client parses it: the JSON number's text as a Decimal
    return {"id": f"t{next(_ids)}", "type": kind, "amount": Decimal(str(amount)) if isinstance(amount, float) else amount, "currency_iso_code": currency,
            "seller_billing_cycle_id": cycle, "accounting_document_number": document, "date_created": when,
            "entities": entities}


def sale(order: str, price: float, shipping: float, rate: float = 0.10, when: str = "2026-03-10T10:00:00Z") -> list[dict]:
    line = f"{order}-1"
    fee = round((price + shipping) * rate, 2)
    return [tl("ORDER_AMOUNT", price, order, line, when), tl("ORDER_SHIPPING_AMOUNT", shipping, order, line, when),
            tl("COMMISSION_FEE", -fee, order, line, when), tl("COMMISSION_VAT", -round(fee * 0.2, 2), order, line, when)]


def refund(order: str, amount: float, when: str = "2026-03-10T15:00:00Z") -> list[dict]:
    line = f"{order}-1"
    fee = round(amount * 0.10, 2)
    return [tl("REFUND_ORDER_AMOUNT", -amount, order, line, when), tl("REFUND_COMMISSION_FEE", fee, order, line, when),
            tl("REFUND_COMMISSION_VAT", round(fee * 0.2, 2), order, line, when)]


def woo_order(woo_id: int, mirakl_id: str, total: float, status: str = "processing", completed: str | None = None,
              created: str = "2026-03-10T09:00:00") -> dict:
    return {"id": woo_id, "status": status, "total": f"{total:.2f}", "date_created_gmt": created,
            "date_completed_gmt": completed,
            "meta_data": [{"key": "_mirakl_order_id", "value": mirakl_id}, {"key": "_mirakl_marketplace",
                                                                             "value": "sandbox"}],
            "line_items": [{"id": woo_id * 10, "total": f"{total:.2f}",
                            "meta_data": [{"key": "_mirakl_order_line_id", "value": f"{mirakl_id}-1"}]}]}


def inputs(day_lines, woo_orders=(), woo_refunds=(), ledger=(), history=(), cycle=(), documents=()) -> Inputs:
    return Inputs(
        day_lines=transactions_frame(day_lines), history_lines=transactions_frame(history),
        cycle_lines=transactions_frame(cycle), documents=documents_frame(documents),
        woo_lines=woo_lines_frame(woo_orders, "sandbox"), woo_refunds=woo_refunds_frame(woo_refunds),
        ledger_orders=ledger_frame(ledger),
    )


def test_a_clean_day_has_no_findings_and_sums_up():
    lines = sale("A", 100.0, 5.0) + sale("B", 40.0, 0.0)
    result = reconcile(inputs(lines, [woo_order(1, "A", 100.0), woo_order(2, "B", 40.0)]), RULES, DAY)
    assert result.findings.empty
    assert summary_value(result.summary, "sales") == Decimal("145.00")
    assert summary_value(result.summary, "commission_fee") == Decimal("-14.50")
    assert summary_value(result.summary, "commission_tax") == Decimal("-2.90")
    assert summary_value(result.summary, "net_amount") == Decimal("127.60")
    assert list(result.lines["order_id"]) == ["A", "B"]
    assert list(result.lines["woo_order_id"]) == [1, 2]
    assert list(result.lines["commission_difference"]) == [0, 0]  # frames hold integer cents
    assert list(result.commissions.sort_values("woo_order_id")["commission"]) == [1050, 400]


def test_every_kind_of_discrepancy_is_found_with_its_amounts():
    day_lines = (
        sale("OK", 100.0, 5.0)
        + sale("NOWOO", 50.0, 4.0)
        + sale("HIGH", 200.0, 0.0, rate=0.12)
        + refund("OK", 30.0)
        + refund("MIRONLY", 20.0)
        + refund("DIFF", 15.0)
    )
    woo = [woo_order(1, "OK", 105.0), woo_order(3, "HIGH", 200.0), woo_order(4, "MIRONLY", 60.0),
           woo_order(5, "DIFF", 60.0), woo_order(6, "WOOONLY", 80.0),
           woo_order(7, "GHOST", 33.0, status="completed", completed="2026-03-07T12:00:00"),
           woo_order(8, "LATE", 44.0, status="completed", completed="2026-03-07T13:00:00"),
           woo_order(9, "RECENT", 55.0, status="completed", completed="2026-03-08T13:00:00")]
    refunds = [{"id": 90, "parent_id": 1, "amount": "30.00", "date_created_gmt": "2026-03-10T14:00:00"},
               {"id": 91, "parent_id": 5, "amount": "12.50", "date_created_gmt": "2026-03-10T14:00:00"},
               {"id": 92, "parent_id": 6, "amount": "80.00", "date_created_gmt": "2026-03-10T14:00:00"},
               {"id": 93, "parent_id": 6, "amount": "1.00", "date_created_gmt": "2026-03-09T14:00:00"}]
    history = sale("LATE", 44.0, 0.0, when="2026-03-08T10:00:00Z")
    documents = [{"id": "d1", "invoice_id": 1, "payment_voucher_number": "000000000001",
                  "seller_billing_cycle_id": "c" * 36, "currency_iso_code": "EUR", "date_created": "2026-03-10T20:00:00Z"}]
    cycle = [dict(t, accounting_document_number="000000000001") for t in sale("OLD", 10.0, 0.0, when="2026-03-02T10:00:00Z")]
    payment = tl("PAYMENT", -10.0, document="000000000001", when="2026-03-10T20:00:00Z")  # lines add up to 8.80
    result = reconcile(inputs(day_lines + [payment], woo, refunds, history=history, cycle=cycle, documents=documents),
                       RULES, DAY)
    found = {(r["kind"], r["order_id"] if isinstance(r["order_id"], str) else r["document_number"]):
             (r["amount_mirakl"], r["amount_woo"], r["difference"]) for r in result.findings.to_dict("records")}
    assert found == {  # integer cents
        ("order_missing_in_woocommerce", "NOWOO"): (5400, 0, 5400),
        ("order_missing_in_mirakl", "GHOST"): (0, 3300, -3300),
        ("commission_off_rate", "HIGH"): (2400, 2000, 400),
        ("refund_missing_in_woocommerce", "MIRONLY"): (2000, 0, 2000),
        ("refund_missing_in_mirakl", "WOOONLY"): (0, 8000, -8000),
        ("refund_amount_mismatch", "DIFF"): (1500, 1250, 250),
        ("payout_mismatch", "000000000001"): (1000, 880, 120),
    }
    ghost = result.findings[result.findings["kind"] == "order_missing_in_mirakl"].iloc[0]
    assert ghost["woo_order_id"] == 7
    high = result.findings[result.findings["kind"] == "commission_off_rate"].iloc[0]
    assert high["line_id"] == "HIGH-1" and high["woo_order_id"] == 3
    rows = ledger_rows(result.findings)
    assert {r["finding_kind"] for r in rows} == {k for k, _ in found}
    assert all(set(r) == {"finding_kind", "order_id", "line_id", "amount_mirakl", "amount_woo", "difference",
                          "currency", "detail"} for r in rows)
    assert next(r for r in rows if r["finding_kind"] == "payout_mismatch")["difference"] == Decimal("1.20")
    assert summary_value(result.summary, "payout_paid") == Decimal("10.00")
    assert summary_value(result.summary, "payout_expected") == Decimal("8.80")
    assert summary_value(result.summary, "findings") == 7


def test_a_rounding_cent_is_within_tolerance_but_two_cents_are_not():
    lines = sale("A", 10.05, 0.0)  # 1.005 -> 1.01 by Mirakl's rounding
    ok = reconcile(inputs(lines, [woo_order(1, "A", 10.05)]), RULES, DAY)
    assert ok.findings.empty
    lines[2]["amount"] = Decimal("-1.03")
    off = reconcile(inputs(lines, [woo_order(1, "A", 10.05)]), RULES, DAY)
    assert list(off.findings["kind"]) == ["commission_off_rate"]
    assert off.findings["difference"].iloc[0] == 2


def test_an_order_created_in_woocommerce_after_the_day_counts_as_missing_that_day():
    lines = sale("A", 10.0, 0.0)
    late = woo_order(1, "A", 10.0, created="2026-03-11T00:00:05")
    result = reconcile(inputs(lines, [late]), RULES, DAY)
    assert list(result.findings["kind"]) == ["order_missing_in_woocommerce"]


def test_the_suite_accepts_good_lines_and_rejects_unknown_types_missing_ids_wrong_signs_and_mixed_currencies():
    good = transactions_frame(sale("A", 10.0, 1.0) + [tl("PAYMENT", -5.0, document="D1")])
    report = validate_transactions(good)
    assert report["success"] and report["rows"] == 5
    bad_rows = sale("A", 10.0, 1.0) + [
        tl("BOGUS_FEE", 1.0, "A", "A-1"),
        tl("ORDER_AMOUNT", 3.0, None, None),
        tl("COMMISSION_FEE", 2.0, "B", "B-1"),
        tl("ORDER_AMOUNT", 1.0, "C", "C-1", document="D9"),
        tl("ORDER_AMOUNT", 1.0, "C", "C-1", document="D9", currency="USD"),
    ]
    with pytest.raises(SuiteFailed) as failed:
        validate_transactions(transactions_frame(bad_rows))
    by_check = {(f["expectation"], f["column"]): f for f in failed.value.failures}
    assert by_check[("expect_column_values_to_be_in_set", "type")]["examples"] == ["BOGUS_FEE"]
    assert by_check[("expect_column_values_to_not_be_null", "order_id")]["unexpected_count"] == 1
    assert ("expect_column_values_to_be_between", "amount") in by_check
    assert by_check[("expect_column_values_to_be_between", "currencies_per_payout")]["unexpected_count"] == 2
    assert "BOGUS_FEE" in str(failed.value)


def test_reports_have_every_file_sheet_and_chart_and_a_rerun_replaces_only_that_day(tmp_path):
    lines = sale("A", 100.0, 5.0) + sale("NOWOO", 50.0, 0.0)
    result = reconcile(inputs(lines, [woo_order(1, "A", 105.0)]), RULES, DAY)
    other = finance_reports.write_reports(result, "sandbox", date(2026, 3, 9), tmp_path)
    paths = finance_reports.write_reports(result, "sandbox", DAY.day, tmp_path)
    for path in (paths.summary_csv, paths.lines_csv, paths.findings_csv, paths.payouts_csv, paths.workbook, paths.html):
        assert path.exists(), path
    sheets = pd.read_excel(paths.workbook, sheet_name=None)
    assert list(sheets) == ["summary", "lines", "findings", "payouts"]
    assert sheets["lines"]["order_amount"].sum() == pytest.approx(150.0)
    assert list(sheets["findings"]["kind"]) == ["order_missing_in_woocommerce"]
    page = paths.html.read_text()
    assert 'id="chart-trend"' in page and 'id="chart-findings"' in page
    assert page.count('class="bar sales"') == 2  # yesterday's report feeds the trend
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    before = other.summary_csv.read_bytes()
    again = finance_reports.write_reports(reconcile(inputs(sale("A", 100.0, 5.0), [woo_order(1, "A", 105.0)]),
                                                    RULES, DAY), "sandbox", DAY.day, tmp_path)
    assert pd.read_csv(again.findings_csv).empty
    assert other.summary_csv.read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "reconciliation" / "sandbox").iterdir()) == ["2026-03-09", "2026-03-10"]


def test_a_day_too_long_for_an_excel_sheet_fails_clearly_and_keeps_the_earlier_report(tmp_path, monkeypatch):
    lines = sale("A", 100.0, 5.0) + sale("B", 20.0, 0.0)
    result = reconcile(inputs(lines, [woo_order(1, "A", 105.0), woo_order(2, "B", 20.0)]), RULES, DAY)
    paths = finance_reports.write_reports(result, "sandbox", DAY.day, tmp_path)
    before = {p.name: p.read_bytes() for p in paths.directory.iterdir()}
    monkeypatch.setattr(finance_reports, "EXCEL_MAX_ROWS", len(result.lines))  # the header row is one more
    with pytest.raises(ValueError, match=r"'lines'.*\] exceed Excel's 2 rows"):
        finance_reports.write_reports(result, "sandbox", DAY.day, tmp_path)
    assert {p.name: p.read_bytes() for p in paths.directory.iterdir()} == before
    assert [p.name for p in paths.directory.parent.iterdir()] == [DAY.day.isoformat()]  # no half-written report


def test_totals_are_exact_to_the_cent_where_float_sums_drift():
    """9,000 small lines on top of a large one: summed as floats they end two cents off
    (98,765,432,649.89); as integer cents they are exact."""
    small = [tl("MANUAL_CREDIT", amount) for amount in ("0.10", "0.01", "0.07") for _ in range(3000)]
    big = tl("RESERVE_SETTLEMENT", "98765432109.87")
    result = reconcile(inputs(sale("A", 10.05, 0.0) + small + [big], [woo_order(1, "A", 10.05)]), RULES, DAY)
    assert summary_value(result.summary, "other_fees") == Decimal("98765432649.87")
    assert summary_value(result.summary, "net_amount") == Decimal("98765432649.87") + Decimal("10.05") - Decimal(
        "1.01") - Decimal("0.20")
    # 10% of 10.05 is 1.005: rounded half away from zero to the 1.01 Mirakl charged, exactly
    assert list(result.lines["commission_expected"]) == [101]
    assert result.findings.empty


def test_an_unreadable_amount_is_a_finding_of_its_own_line_and_the_rest_of_the_day_is_exact():
    bad = {"abc": tl("ORDER_AMOUNT", "abc", "A", "A-1"), "NaN": tl("MANUAL_CREDIT", "NaN"),
           "empty": tl("MANUAL_CREDIT", ""), "sub-cent": tl("COMMISSION_FEE", "-0.005", "A", "A-1")}
    bad["missing"] = {**tl("MANUAL_CREDIT", "1"), "amount": None}
    lines = transactions_frame(sale("A", 100.0, 5.0) + list(bad.values()))
    report = validate_transactions(lines)  # the suite checks the readable lines: the night goes on
    assert report["success"] and report["rows"] == 9
    result = reconcile(Inputs(**{**inputs([], [woo_order(1, "A", 100.0)]).__dict__, "day_lines": lines}), RULES, DAY)
    invalid = result.findings[result.findings["kind"] == "transaction_amount_invalid"]
    assert len(invalid) == len(result.findings) == 5
    details = " | ".join(invalid["detail"])
    for text in ("'abc' is not a number", "'NaN' is not a finite number", "'' is not a number",
                 "'-0.005' has a fraction of a cent", "no amount"):
        assert text in details
    assert set(invalid["line_id"].dropna()) == {"A-1"}
    assert summary_value(result.summary, "sales") == Decimal("105.00")  # neither rounded nor counted as 0
    assert summary_value(result.summary, "commission_fee") == Decimal("-10.50")
    assert summary_value(result.summary, "transaction_lines") == 9
    assert summary_value(result.summary, "findings_transaction_amount_invalid") == 5
    exceptions = invalid_amounts(lines)
    assert {e["reason"] for e in exceptions.values()} == {
        "'abc' is not a number", "'NaN' is not a finite number", "'' is not a number", "no amount",
        "'-0.005' has a fraction of a cent (more than two decimals): it cannot be booked exactly"}
    assert all(r["amount_mirakl"] is None for r in ledger_rows(invalid))


def test_money_never_passes_through_float():
    assert parse_cents(Decimal("1234567.89")) == 123456789 and parse_cents("0.10") == 10 and parse_cents("1.500") == 150
    with pytest.raises(TypeError, match="float"):
        parse_cents(0.1)
    with pytest.raises(TypeError, match="float"):
        Rules(commission_rate=0.1, commission_tolerance="0.01", grace_days=3)
    for value in ("1e999", "Infinity", "0.001", True):
        with pytest.raises(AmountError):
            parse_cents(value)
