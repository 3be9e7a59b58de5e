"""The nightly payout reconciliation, end to end: a sandbox period with seeded discrepancies of every
kind, nightly runs, a backfill of three past days, bad transaction data, reports and e-mail.

The sandbox's clock starts eight days ago, so every reconciled day lies in the past, as for a
backfill. Orders are seeded straight into both simulated systems and the ledger (the orders and
refunds flows have their own tests); each discrepancy is made on purpose and nothing else differs.
"""
from __future__ import annotations

import os
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pandas as pd
import pytest

from tests.e2e.conftest import advance, load_dag

MP = "sandbox"
DAG_ID = f"mirakl_payout_reconciliation__{MP}"
START = (datetime.now(UTC) - timedelta(days=8)).replace(hour=8, minute=0, second=0, microsecond=0)
D1, D2, D3, D4, D5 = (START.date() + timedelta(days=i) for i in range(5))
PRICES = {"REC-A": 20.00, "REC-B": 35.50, "REC-C": 50.00}
SHIPPING = 4.99


@pytest.fixture(scope="module")
def sandbox():
    from include.sandbox.core import Clock, Sandbox

    sb = Sandbox(seed=11, clock=Clock(start=START), validate_requests=True).start()
    with sb.lock:
        for sku, price in PRICES.items():
            sb.woo.add_simple_product(sku, f"{price:.2f}", 100)
            sb.mirakl.add_offer(sku, price, 100)
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    root = tmp_path_factory.mktemp("reports")
    saved = os.environ.get("WOO_MIRAKL_REPORTS_DIR")
    os.environ["WOO_MIRAKL_REPORTS_DIR"] = str(root)
    yield root
    if saved is None:
        os.environ.pop("WOO_MIRAKL_REPORTS_DIR", None)
    else:
        os.environ["WOO_MIRAKL_REPORTS_DIR"] = saved


def move_to(sandbox, ledger, when: datetime) -> None:
    advance(sandbox, ledger, (when - sandbox.clock.now()).total_seconds())


def at(day: date, hour: int) -> datetime:
    return datetime.combine(day, time(hour), tzinfo=UTC)


def paid_mirakl_order(sandbox, sku: str, commission_rate: float | None = None) -> dict:
    """A Mirakl order accepted and debited (its sale lines are written at debit)."""
    from include.sandbox.scenarios import customer

    with sandbox.lock:
        if commission_rate is not None:
            sandbox.mirakl.configure(commission_rate=commission_rate)
        order = sandbox.mirakl.place_order(lines=[{"offer_sku": sku, "quantity": 1}], customer=customer(0),
                                           shipping_price=SHIPPING, debit_delay_s=10 * 86400)
        if commission_rate is not None:
            sandbox.mirakl.configure(commission_rate=0.10)
        sandbox.mirakl.store.accept(sandbox.clock.now(), order["order_id"],
                                    [{"id": line["order_line_id"], "accepted": True} for line in order["order_lines"]])
        return sandbox.mirakl.debit(order["order_id"])


def woo_order(sandbox, ledger, mirakl_order: dict | None, status: str = "processing", mirakl_id: str | None = None,
              sku: str = "REC-A") -> int:
    """The WooCommerce order the orders flow would have made, and the ledger's map to it."""
    lines = mirakl_order["order_lines"] if mirakl_order else [
        {"offer_sku": sku, "quantity": 1, "price": PRICES[sku], "order_line_id": f"{mirakl_id}-1"}]
    order_id = mirakl_order["order_id"] if mirakl_order else mirakl_id
    with sandbox.lock:
        record = sandbox.woo.store.create_order({
            "status": status, "payment_method": "mirakl", "payment_method_title": "Mirakl marketplace sandbox",
            "line_items": [{"sku": line["offer_sku"], "quantity": line["quantity"], "subtotal": f"{line['price']:.2f}",
                            "total": f"{line['price']:.2f}",
                            "meta_data": [{"key": "_mirakl_order_line_id", "value": line["order_line_id"]}]}
                           for line in lines],
            "shipping_lines": [{"method_id": "mirakl", "method_title": "Marketplace", "total": f"{SHIPPING:.2f}"}],
            "meta_data": [{"key": "_mirakl_order_id", "value": order_id}, {"key": "_mirakl_marketplace", "value": MP}],
        })
    if mirakl_order:
        ledger.upsert_order(MP, order_id, woo_order_id=record["id"], mirakl_state="SHIPPING")
    return record["id"]


def mirakl_refund(sandbox, order: dict, amount: float) -> None:
    with sandbox.lock:
        sandbox.mirakl.store.refund(sandbox.clock.now(), [{
            "order_line_id": order["order_lines"][0]["order_line_id"], "amount": amount, "shipping_amount": 0,
            "quantity": 0, "reason_code": "15"}])


def run_for(day: date):
    """One run whose data interval is ``day`` (the nightly run, or one run of a backfill)."""
    return load_dag(DAG_ID).test(logical_date=at(day + timedelta(days=1), 2) + timedelta(minutes=30))


def findings(root, day: date) -> dict[tuple[str, str], tuple[float, float, float]]:
    frame = pd.read_csv(root / "reconciliation" / MP / day.isoformat() / "findings.csv", dtype={"order_id": str,
                                                                                                "document_number": str})
    return {(row["kind"], row["order_id"] if isinstance(row["order_id"], str) else row["document_number"]):
            (row["amount_mirakl"], row["amount_woo"], row["difference"]) for row in frame.to_dict("records")}


def snapshot(root, day: date) -> dict:
    directory = root / "reconciliation" / MP / day.isoformat()
    files = {p.name: p.read_bytes() for p in directory.iterdir() if p.suffix in (".csv", ".html")}
    files["workbook"] = {name: frame.astype(object).where(frame.notna(), None).to_dict("split") for name, frame in
                         pd.read_excel(directory / "reconciliation.xlsx", sheet_name=None).items()}
    return files


def commission_meta(sandbox, woo_id: int) -> dict[str, str]:
    return {m["key"]: m["value"] for m in sandbox.woo.order(woo_id)["meta_data"] if m["key"].startswith("mirakl_")}


@pytest.fixture(scope="module")
def period(sandbox, ledger, reports, airflow_env, alert_env, mail_sink):
    """Four days of business, reconciled each night; returns what was seeded and what the nights produced."""
    seeded: dict = {}
    move_to(sandbox, ledger, at(D1, 9))
    # Day 1: sales. One shipped at once, one charged at 13 %, one Mirakl debited that WooCommerce never got.
    orders = {name: paid_mirakl_order(sandbox, sku) for name, sku in
              (("ok", "REC-A"), ("ref", "REC-B"), ("wooref", "REC-A"), ("mirref", "REC-A"), ("diff", "REC-B"))}
    orders["high"] = paid_mirakl_order(sandbox, "REC-C", commission_rate=0.13)
    orders["nowoo"] = paid_mirakl_order(sandbox, "REC-C")
    woo_ids = {name: woo_order(sandbox, ledger, order, status="completed" if name == "ok" else "processing")
               for name, order in orders.items() if name != "nowoo"}
    woo_ids["ghost"] = woo_order(sandbox, ledger, None, status="completed", mirakl_id="SBX-GHOST-A", sku="REC-B")
    seeded.update(orders=orders, woo_ids=woo_ids)
    nightly: dict = {}
    move_to(sandbox, ledger, at(D2, 3))
    nightly[D1] = run_for(D1).state
    # Day 2: refunds — in both systems alike, in WooCommerce only, on Mirakl only, and for different amounts.
    move_to(sandbox, ledger, at(D2, 10))
    mirakl_refund(sandbox, orders["ref"], 10.00)
    sandbox.woo.refund_order(woo_ids["ref"], amount="10.00")
    sandbox.woo.refund_order(woo_ids["wooref"], amount="5.00")
    mirakl_refund(sandbox, orders["mirref"], 6.00)
    mirakl_refund(sandbox, orders["diff"], 10.00)
    sandbox.woo.refund_order(woo_ids["diff"], amount="7.00")
    move_to(sandbox, ledger, at(D3, 3))
    nightly[D2] = run_for(D2).state
    seeded["meta_after_d2"] = commission_meta(sandbox, woo_ids["ref"])
    # Day 3: the billing cycle closes; the payout is one euro more than its lines.
    move_to(sandbox, ledger, at(D3, 18))
    with sandbox.lock:
        invoice = sandbox.mirakl.close_billing_cycle()
        payment = sandbox.mirakl.store.transactions[-1]
        assert payment["type"] == "PAYMENT"
        payment["amount"] = round(payment["amount"] - 1.00, 2)
    seeded.update(invoice=invoice)
    move_to(sandbox, ledger, at(D4, 3))
    nightly[D3] = run_for(D3).state
    # Day 4: quiet; the WooCommerce order shipped on day 1 has still not reached Mirakl.
    move_to(sandbox, ledger, at(D5, 3))
    nightly[D4] = run_for(D4).state
    seeded.update(nightly=nightly, snapshots={d: snapshot(reports, d) for d in (D1, D2, D3)},
                  mails=list(mail_sink.messages))
    return seeded


def test_each_night_reports_exactly_the_seeded_discrepancies_with_their_amounts(period, reports):
    assert period["nightly"] == {D1: "success", D2: "success", D3: "success", D4: "success"}
    orders = period["orders"]
    high_fee = float((Decimal("54.99") * Decimal("0.13")).quantize(Decimal("0.01")))
    assert findings(reports, D1) == {
        ("commission_off_rate", orders["high"]["order_id"]): (high_fee, 5.50, round(high_fee - 5.50, 2)),
        ("order_missing_in_woocommerce", orders["nowoo"]["order_id"]): (54.99, 0.0, 54.99),
    }
    assert findings(reports, D2) == {
        ("refund_missing_in_mirakl", orders["wooref"]["order_id"]): (0.0, 5.00, -5.00),
        ("refund_missing_in_woocommerce", orders["mirref"]["order_id"]): (6.00, 0.0, 6.00),
        ("refund_amount_mismatch", orders["diff"]["order_id"]): (10.00, 7.00, 3.00),
    }
    payout = period["invoice"]["payout"]
    number = period["invoice"]["payment_voucher_number"]
    assert findings(reports, D3) == {("payout_mismatch", number): (round(payout + 1.00, 2), payout, 1.00)}
    assert findings(reports, D4) == {("order_missing_in_mirakl", "SBX-GHOST-A"): (0.0, 35.50 + SHIPPING,
                                                                                 -(35.50 + SHIPPING))}


def test_findings_are_kept_in_the_ledger_per_day(period, ledger):
    kinds = {d: sorted(r["finding_kind"] for r in ledger.reconciliation_results(MP, d)) for d in (D1, D2, D3, D4)}
    assert kinds == {
        D1: ["commission_off_rate", "order_missing_in_woocommerce"],
        D2: ["refund_amount_mismatch", "refund_missing_in_mirakl", "refund_missing_in_woocommerce"],
        D3: ["payout_mismatch"],
        D4: ["order_missing_in_mirakl"],
    }
    nowoo = next(r for r in ledger.reconciliation_results(MP, D1) if r["finding_kind"] == "order_missing_in_woocommerce")
    assert nowoo["amount_mirakl"] == Decimal("54.99") and nowoo["currency"] == "EUR"


def test_the_workbook_has_a_sheet_each_with_the_day_totals(period, reports):
    sheets = pd.read_excel(reports / "reconciliation" / MP / D1.isoformat() / "reconciliation.xlsx", sheet_name=None)
    assert list(sheets) == ["summary", "lines", "findings", "payouts"]
    summary = dict(zip(sheets["summary"]["metric"], sheets["summary"]["value"]))
    sales = sum(PRICES[s] for s in ("REC-A", "REC-B", "REC-A", "REC-A", "REC-B", "REC-C", "REC-C")) + 7 * SHIPPING
    assert float(summary["sales"]) == pytest.approx(sales)
    assert float(summary["findings"]) == 2
    lines = sheets["lines"]
    assert len(lines) == 7
    assert (lines["order_amount"] + lines["shipping_amount"]).sum() == pytest.approx(sales)
    assert lines["commission"].sum() == pytest.approx(float(summary["commission_fee"]))
    payouts = pd.read_excel(reports / "reconciliation" / MP / D3.isoformat() / "reconciliation.xlsx",
                            sheet_name="payouts")
    assert payouts["paid"].tolist() == [pytest.approx(period["invoice"]["payout"] + 1.00)]
    assert payouts["invoice_id"].tolist() == [period["invoice"]["invoice_id"]]


def test_the_html_page_is_self_contained_with_both_charts(period, reports):
    page = (reports / "reconciliation" / MP / D3.isoformat() / "index.html").read_text()
    assert page.count("<svg") == 2 and 'id="chart-trend"' in page and 'id="chart-findings"' in page
    assert page.count('class="bar sales"') == 3  # days 1 to 3 in the trend
    assert 'data-kind="payout_mismatch"' in page
    assert ">Payout differs from its lines</text>" in page and "Findings: Refunded on Mirakl only" in page
    assert ">findings_" not in page  # plain words for people; the CSVs keep the names
    assert "<script" not in page and "src=" not in page


def test_finance_gets_the_summary_and_the_workbook_by_email(period):
    finance = [m for m in period["mails"] if "Mirakl reconciliation sandbox" in m["Subject"]]
    assert len(finance) == 4
    d2 = next(m for m in finance if D2.isoformat() in m["Subject"])
    attachments = [part.get_filename() for part in d2.iter_attachments()]
    assert attachments == ["reconciliation.xlsx"]
    body = d2.get_body(preferencelist=("html",)).get_content()
    assert "Findings: Refunded for a different amount</td><td>1" in body and "findings_" not in body


def test_commission_is_written_back_to_the_woocommerce_orders(period, sandbox):
    orders, woo_ids = period["orders"], period["woo_ids"]
    ref = orders["ref"]["order_lines"][0]
    fee = round((35.50 + SHIPPING) * 0.10, 2) - 1.00  # its 10.00 refund gave 1.00 of commission back
    assert period["meta_after_d2"] == {"mirakl_commission": f"{fee:.2f}",
                                       "mirakl_commission_tax": f"{round(fee * 0.2, 2):.2f}",
                                       "mirakl_commission_currency": "EUR",
                                       "mirakl_commission_as_of": D2.isoformat()}
    assert ref["offer_sku"] == "REC-B"
    high = commission_meta(sandbox, woo_ids["high"])
    assert high["mirakl_commission"] == f"{round(54.99 * 0.13, 2):.2f}" and high["mirakl_commission_as_of"] == D1.isoformat()


def test_a_backfill_of_three_past_days_reproduces_the_nightly_reports(period, sandbox, reports):
    states = [run_for(day).state for day in (D1, D2, D3)]
    assert states == ["success"] * 3
    for day in (D1, D2, D3):
        again = snapshot(reports, day)
        assert again.keys() == period["snapshots"][day].keys()
        for name, content in again.items():
            assert content == period["snapshots"][day][name], (day, name)
    # the day-1 re-run did not overwrite the newer day-2 commission on the refunded order
    assert commission_meta(sandbox, period["woo_ids"]["ref"]) == period["meta_after_d2"]


def test_without_a_mail_server_the_run_is_green_the_report_written_and_finance_warned_in_the_log(
        period, reports, monkeypatch, caplog):
    import json
    import shutil
    import socket

    with socket.socket() as probe:  # a port nothing listens on: the mail server is down
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]
    monkeypatch.setenv("AIRFLOW_CONN_SMTP_ALERTS", json.dumps({
        "conn_type": "smtp", "host": "127.0.0.1", "port": dead,
        "extra": {"disable_tls": True, "disable_ssl": True, "from_email": "airflow@localhost", "retry_limit": 0,
                  "timeout": 5}}))
    directory = reports / "reconciliation" / MP / D4.isoformat()
    shutil.rmtree(directory)

    with caplog.at_level("WARNING"):
        run = run_for(D4)

    assert run.state == "success"
    email = next(ti for ti in run.get_task_instances() if ti.task_id == "email_finance")
    assert (email.state, email.try_number) == ("success", 1)  # no retry with growing delays
    assert (directory / "index.html").exists() and (directory / "reconciliation.xlsx").exists()
    assert any("finance e-mail" in r.getMessage() and "not sent" in r.getMessage() and D4.isoformat() in r.getMessage()
               for r in caplog.records)


def test_each_run_shows_the_business_date_it_reconciles_among_its_rendered_fields(period):
    from airflow.models.renderedtifields import RenderedTaskInstanceFields
    from airflow.utils.session import create_session

    run = run_for(D3)  # dated D4 02:30: reconciles D3
    assert run.logical_date.date() == D4
    ti = next(t for t in run.get_task_instances() if t.task_id == "extract_mirakl_day")
    with create_session() as session:
        rendered = RenderedTaskInstanceFields.get_templated_fields(ti, session=session)
    assert rendered["op_kwargs"] == {"reconciles": D3.isoformat()}


def test_the_report_is_an_asset_event(period):
    from sqlalchemy import select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session

    with create_session() as session:
        events = session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == f"mirakl_reconciliation_report__{MP}")
        ).all()
        extras = [e.extra for e in events]
    days = {x.get("date") for x in extras}
    assert {D1.isoformat(), D2.isoformat(), D3.isoformat(), D4.isoformat()} <= days
    assert any(x.get("date") == D3.isoformat() and x.get("findings") == 1 for x in extras)


def test_bad_transaction_lines_fail_the_suite_alert_and_write_no_report(period, sandbox, ledger, reports, mail_sink):
    move_to(sandbox, ledger, at(D5, 10))
    with sandbox.lock:
        store = sandbox.mirakl.store
        template = next(t for t in store.transactions if t["type"] == "ORDER_AMOUNT")
        stamp = sandbox.clock.now().strftime("%Y-%m-%dT%H:%M:%SZ")
        for kind, entities in (("BOGUS_ADJUSTMENT", template["entities"]), ("ORDER_AMOUNT", {})):
            store.transactions.append({**template, "seq": store._next("transaction"), "id": f"bad-{kind}",
                                       "type": kind, "entities": entities, "date_created": stamp,
                                       "last_updated": stamp, "transaction_date": stamp,
                                       "payment_state": "PAYABLE", "accounting_document_number": None})
    mail_sink.messages.clear()
    move_to(sandbox, ledger, at(D5 + timedelta(days=1), 3))
    assert run_for(D5).state == "failed"
    assert not (reports / "reconciliation" / MP / D5.isoformat()).exists()
    assert ledger.reconciliation_results(MP, D5) == []
    exception = ledger.get_exception("transaction_suite_failed", D5.isoformat(), MP)
    assert exception is not None and "BOGUS_ADJUSTMENT" in exception.detail["summary"]
    alert = next(m for m in mail_sink.messages if "failed validation" in m["Subject"])
    body = alert.get_body(preferencelist=("html", "plain")).get_content()
    assert "BOGUS_ADJUSTMENT" in body and "expect_column_values_to_not_be_null" in body
    assert not any("Mirakl reconciliation sandbox" in m["Subject"] for m in mail_sink.messages)
