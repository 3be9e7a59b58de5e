"""A payout day read through the transaction export (TL03–TL05) gives the very reports TL02 gives.

One sandbox day with sales (orders created that day and the day before), a refund and a payout,
WooCommerce orders for most of them; the day is extracted, validated, reconciled and reported
twice — through TL02, then through the export — into two report directories compared file by file.
Real HTTP against the sandbox (requests checked against the spec), a real SQLite ledger.
"""
from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests

from include.sandbox import spec
from include.sandbox.core import Clock, Sandbox
from include.sandbox.scenarios import customer
from include.woo_mirakl.budgets import LedgerCallBudget
from include.woo_mirakl.clients.http import RetryPolicy
from include.woo_mirakl.clients.mirakl import MiraklClient
from include.woo_mirakl.clients.woocommerce import WooCommerceClient
from include.woo_mirakl.finance_reports import write_reports
from include.woo_mirakl.ledger import Ledger
from include.woo_mirakl.reconciliation import (
    CURSOR_FLOW, Day, Rules, Stage, extract_mirakl_day, extract_mirakl_history, extract_woocommerce, reconcile,
    validate_transactions,
)

MP = "sandbox"
DAY = date(2026, 3, 10)
RULES = Rules(commission_rate="0.10", commission_tolerance="0.01", grace_days=3)
FAST = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.05, timeout=5.0, connect_timeout=2.0)


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


@pytest.fixture(scope="module")
def sandbox():
    sb = Sandbox(seed=21, clock=Clock(start=at(DAY - timedelta(days=1), 9), frozen=True),
                 validate_requests=True).start()
    with sb.lock:
        sb.mirakl.configure(export_delay_s=25, export_items_per_chunk=7)
        for sku, price in (("EX-A", 20.0), ("EX-B", 35.5)):
            sb.woo.add_simple_product(sku, f"{price:.2f}", 100)
            sb.mirakl.add_offer(sku, price, 100)
        store = sb.mirakl.store

        def paid(sku: str, rate: float = 0.10) -> dict:
            sb.mirakl.configure(commission_rate=rate)
            order = sb.mirakl.place_order(lines=[{"offer_sku": sku, "quantity": 1}], customer=customer(0),
                                          debit_delay_s=10 * 86400)
            store.accept(sb.clock.now(), order["order_id"],
                         [{"id": line["order_line_id"], "accepted": True} for line in order["order_lines"]])
            return order

        yesterday = paid("EX-A")  # created the day before, debited on the day: its history needs TL02
        sb.clock.advance(86400)
        sb.mirakl.debit(yesterday["order_id"])
        orders = [yesterday] + [sb.mirakl.debit(paid(sku, rate)["order_id"]) for sku, rate in
                                (("EX-A", 0.10), ("EX-B", 0.10), ("EX-B", 0.13), ("EX-A", 0.10))]
        store.refund(sb.clock.now(), [{"order_line_id": orders[2]["order_lines"][0]["order_line_id"], "amount": 10.0,
                                       "shipping_amount": 0, "quantity": 0, "reason_code": "15"}])
        sb.clock.advance(3600)
        sb.mirakl.close_billing_cycle()
        for order in orders[:-1]:  # the last one never reached WooCommerce
            line = order["order_lines"][0]
            sb.woo.store.create_order({
                "status": "processing", "payment_method": "mirakl",
                "line_items": [{"sku": line["offer_sku"], "quantity": 1, "subtotal": f"{line['price']:.2f}",
                                "total": f"{line['price']:.2f}",
                                "meta_data": [{"key": "_mirakl_order_line_id", "value": line["order_line_id"]}]}],
                "meta_data": [{"key": "_mirakl_order_id", "value": order["order_id"]},
                              {"key": "_mirakl_marketplace", "value": MP}],
            })
        sb.clock.advance(86400)  # the night after the day
    yield sb
    sb.stop()


@pytest.fixture(autouse=True)
def no_spec_violations(sandbox):
    start = len(sandbox.log.entries("mirakl"))
    yield
    bad = [(e["operation"], e["violations"]) for e in sandbox.log.entries("mirakl")[start:] if e["violations"]]
    assert not bad, f"requests violating the Mirakl spec: {bad}"


def run_day(sandbox, tmp: Path, ledger: Ledger, export_above: int, scope: str) -> dict:
    """Extract, validate, reconcile and report the day; returns what each step said and the calls."""
    day = Day(DAY)
    now = [sandbox.clock.now()]
    budget = LedgerCallBudget(ledger, scope, clock=lambda: now[0])
    mirakl = MiraklClient(sandbox.mirakl_url, sandbox.mirakl.api_key, shop_id=sandbox.mirakl.shop_id,
                          budget=budget, retry=FAST)
    woo = WooCommerceClient(sandbox.woo_url, sandbox.woo.consumer_key, sandbox.woo.consumer_secret, retry=FAST)

    def wait(seconds: float) -> None:  # the export's polling: both clocks move on
        sandbox.clock.advance(seconds)
        now[0] += timedelta(seconds=seconds)

    stage = Stage(tmp / "stage")
    before = len(sandbox.log.entries("mirakl"))
    extracted = extract_mirakl_day(mirakl, ledger, MP, day, stage, export_above=export_above, sleep=wait)
    extract_woocommerce(woo, ledger, MP, day, RULES.grace_days, stage)
    history = extract_mirakl_history(mirakl, MP, day, RULES.grace_days, stage)
    validate_transactions(stage.all_transaction_lines())
    write_reports(reconcile(stage.inputs(MP), RULES, day), MP, DAY, root=tmp / "reports")
    calls = [e for e in sandbox.log.entries("mirakl")[before:]]
    return {"extracted": extracted, "history": history, "calls": calls,
            "reports": snapshot(tmp / "reports" / "reconciliation" / MP / DAY.isoformat())}


def snapshot(directory: Path) -> dict:
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix in (".csv", ".html")}
    files["workbook"] = {name: frame.astype(object).where(frame.notna(), None).to_dict("split") for name, frame in
                         pd.read_excel(directory / "reconciliation.xlsx", sheet_name=None).items()}
    return files


def ops(calls: list[dict]) -> list[str]:
    return [e["operation"] for e in calls if e["operation"] in ("TL02", "TL03", "TL04", "TL05")]


@pytest.fixture(scope="module")
def both(sandbox, tmp_path_factory):
    ledger = Ledger.from_url(f"sqlite:///{tmp_path_factory.mktemp('ledger')}/ledger.db")
    by_tl02 = run_day(sandbox, tmp_path_factory.mktemp("tl02"), ledger, export_above=10**6, scope="a")
    # the ledger now knows the day's size: above the threshold, the next read goes straight to the export
    by_export = run_day(sandbox, tmp_path_factory.mktemp("export"), ledger, export_above=10, scope="b")
    return by_tl02, by_export, ledger


def test_the_reports_are_identical_whichever_path_fed_them(both):
    by_tl02, by_export, _ = both
    assert by_tl02["extracted"]["source"] == "TL02" and by_export["extracted"]["source"] == "TL03"
    assert by_tl02["reports"].keys() == by_export["reports"].keys()
    for name, content in by_tl02["reports"].items():
        assert by_export["reports"][name] == content, name
    findings = pd.read_csv(pd.io.common.BytesIO(by_export["reports"]["findings.csv"]))
    assert set(findings["kind"]) == {"commission_off_rate", "order_missing_in_woocommerce",
                                     "refund_missing_in_woocommerce"}


def test_the_export_path_reads_the_day_in_chunks_and_polls_within_tl04s_ceiling(both, sandbox):
    by_tl02, by_export, _ = both
    lines = by_tl02["extracted"]["day_lines"]
    assert lines > 14  # three chunks of seven at least
    export_calls = ops(by_export["calls"])
    chunks = -(-lines // 7)
    # one request, PENDING for 25 s then COMPLETED: TL04 at 0, 10, 20 and 30 s; then every chunk once
    assert export_calls[:1 + 4 + chunks] == ["TL03"] + ["TL04"] * 4 + ["TL05"] * chunks
    tl04 = [datetime.fromisoformat(e["at"].replace("Z", "+00:00")) for e in by_export["calls"] if e["operation"] == "TL04"]
    assert all((b - a).total_seconds() >= 10 for a, b in zip(tl04, tl04[1:]))
    # the day's lines were not read through TL02 again; TL02 only serves the payout cycle and older orders
    day_tl02 = [e for e in by_export["calls"] if e["operation"] == "TL02" and e["query"].get("date_created_from")]
    assert day_tl02 == []


def test_orders_created_during_the_day_need_no_history_call(both):
    by_tl02, _, _ = both
    # five orders; only the one created the day before is read by order id
    assert by_tl02["history"] == {"history_lines": by_tl02["history"]["history_lines"], "orders": 5,
                                  "read_by_tl02": 1}
    by_order = [e for e in by_tl02["calls"] if e["operation"] == "TL02" and e["query"].get("order_id")]
    assert len(by_order) == 1 and len(by_order[0]["query"]["order_id"]) == 1


def test_a_day_bigger_than_expected_switches_to_the_export_midway(sandbox, tmp_path):
    ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")  # nothing known about the day's size
    result = run_day(sandbox, tmp_path, ledger, export_above=3, scope="c")
    assert result["extracted"]["source"] == "TL03"
    assert ops(result["calls"])[:2] == ["TL02", "TL03"]
    assert ledger.get_cursor(CURSOR_FLOW, MP, "day_lines_last") == result["extracted"]["day_lines"]


def test_a_retried_extract_follows_the_export_it_already_asked_for(sandbox, tmp_path, both):
    _, by_export, ledger = both
    again = run_day(sandbox, tmp_path, ledger, export_above=10, scope="b")  # TL03 is spent for the day
    assert "TL03" not in ops(again["calls"])
    assert again["reports"] == by_export["reports"]


def test_export_files_are_what_the_spec_describes(sandbox, both):
    with sandbox.lock:
        record = next(r for r in sandbox.mirakl.store.exports.values() if r["kind"] == "transactions")
        items = [{k: v for k, v in t.items() if k != "seq"} for t in record["chunks"][0]]
    assert spec.validate_file_items("TL05_Response_200_Ext_FileStructure", items) == []
    wrong = [dict(items[0], amount="12.50")]
    assert spec.validate_file_items("TL05_Response_200_Ext_FileStructure", wrong) != []
    assert spec.validate_download("TL05", {}, {"Authorization": "k"}) == ["query parameter file is required"]
    path = f"/api/sellerpayment/transactions_logs/async/status/{record['tracking_id']}"
    answer = requests.get(sandbox.mirakl_url + path, headers={"Authorization": sandbox.mirakl.api_key}, timeout=5)
    assert answer.json()["status"] == "COMPLETED" and answer.json()["urls"]
    assert spec.validate_response("GET", path, 200, answer.content) == []


def test_a_download_url_on_another_host_never_gets_the_key(sandbox):
    mirakl = MiraklClient(sandbox.mirakl_url, sandbox.mirakl.api_key, retry=FAST)
    with pytest.raises(ValueError, match="refusing to send the API key"):
        list(mirakl.iter_export_file("https://files.example.com/x?file=0.json", "TL05"))


def test_chunks_of_a_single_ndjson_line_keep_their_line(sandbox, tmp_path, both):
    """One NDJSON line is a whole JSON object: it is the chunk's one item, not a chunk without items."""
    by_tl02, _, _ = both
    with sandbox.lock:
        sandbox.mirakl.configure(export_items_per_chunk=1)
    try:
        ledger = Ledger.from_url(f"sqlite:///{tmp_path}/ledger.db")
        result = run_day(sandbox, tmp_path, ledger, export_above=3, scope="d")
    finally:
        with sandbox.lock:
            sandbox.mirakl.configure(export_items_per_chunk=7)
    assert result["extracted"]["source"] == "TL03"
    assert ops(result["calls"]).count("TL05") == result["extracted"]["day_lines"] == by_tl02["extracted"]["day_lines"]
    assert result["reports"] == by_tl02["reports"]
