"""
### Payout reconciliation — `mirakl_payout_reconciliation__<marketplace>`

Nightly at 02:30 UTC for **the day before** (its data interval, one UTC day), per marketplace:
**a run dated D reconciles D−1** (the business date). Each run shows it: the first task's
*Rendered Templates* tab and log say `reconciles: <day>`, and the report folder is named by it.
Backfill any range from the UI (Trigger → Backfill) or `airflow backfill create --dag-id … --from-date …
--to-date … --max-active-runs 4`: a run for a past day rebuilds exactly that day's report (it reads only
what existed by the day's end, and overwrites that day only), and runs for different days are
independent, so a backfill can run several at once.

1. **extract_mirakl_day** — the transaction lines created that day. A small day through TL02 (pages of
   2,000, within TL02's 20/min and 60/h ceiling, kept in the ledger); a day above 20,000 lines (expected
   from the last day read, or found when TL02 has given that many) through the asynchronous export:
   TL03 once (its tracking id kept in the ledger, so a retry follows the same export), TL04 every 10 s
   at most until it is ready, TL05 chunks in NDJSON, each parsed a line at a time into a compact frame
   in the staging directory — a million lines take one TL03 instead of 500 TL02 pages (8 hours). Both
   paths give the same frame and the same reports. Then, for each payout of the day (PAYMENT line), its
   IV01 document and the lines of its billing cycle. IV01 may run once a day: documents are cached in
   the ledger by voucher number and IV01 is called only for a voucher the cache lacks (one call serves a
   whole backfill).
2. **extract_woocommerce** — the WooCommerce orders of those Mirakl orders (meta `_mirakl_order_id`, else
   the ledger's map), marketplace orders shipped `GRACE_DAYS` (3) days before the day, and the day's refunds.
3. **extract_mirakl_history** — TL02 lines up to the day's end of those orders (commission to date);
   an order created during the day has no earlier line, so its history is its lines of the day (no call).
4. **validate_transactions** — the Great Expectations suite `include/config/expectations/transactions.yaml`:
   known types (the spec's enum), amount signs by type, one currency per payout, order ids present.
   A failure stops the run (no report), records a `transaction_suite_failed` exception and alerts.
   A line whose amount is not an exact number of cents (malformed, `NaN`, empty, or with a fraction of
   a cent) does not stop the night: it is a `transaction_amount_invalid` exception (keyed by the
   transaction id) and a finding of the report, and is left out of every total.
5. **reconcile_and_report** — a vectorised pandas join per order and order line; findings (paid order
   missing in WooCommerce, shipped order missing in Mirakl, commission off the configured rate beyond the
   tolerance, refund in one system only or for another amount, payout differing from its lines) go to
   the ledger; reports go to `reports/reconciliation/<marketplace>/<date>/` (CSV, one XLSX workbook,
   HTML with charts; the workbook and page are written a block of rows at a time) and an asset event on
   `woo-mirakl://reports/reconciliation/<marketplace>`.
6. **write_back_commissions** — each WooCommerce order's Mirakl commission to date as order meta
   (`mirakl_commission`, `mirakl_commission_tax`, `mirakl_commission_currency`, `mirakl_commission_as_of`).
   Meta rather than a fee line: a fee line would change the total the customer sees and what WooCommerce
   offers to refund. An older day's backfill never overwrites a newer day's figure.
7. **email_finance** — the summary and the workbook to finance (Variable `woo_mirakl_finance_email`,
   else the alert address) through the `smtp_alerts` connection.

Logic: `include/woo_mirakl/reconciliation.py` (join, findings) and `finance_reports.py` (files).
"""
from __future__ import annotations

from datetime import timedelta

from airflow.sdk import Asset, task
from airflow.sdk.definitions.timetables.trigger import CronTriggerTimetable

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.dag_factory import marketplace_dags
from include.woo_mirakl.task_log import tell

FLOW = "mirakl_payout_reconciliation"
GRACE_DAYS = 3  # a WooCommerce order shipped this many days ago must have reached Mirakl's lines
TL02_WAIT = 65.0  # a burst of TL02 pages waits for the next minute's slots rather than failing
# 02:30 rather than midnight: lines Mirakl writes a little late still land in "yesterday"
SCHEDULE = CronTriggerTimetable("30 2 * * *", timezone="UTC", interval=timedelta(days=1))


def report_asset(marketplace: str) -> Asset:
    return Asset(name=f"mirakl_reconciliation_report__{marketplace}",
                 uri=f"woo-mirakl://reports/reconciliation/{marketplace}")


def _run_day(context: dict):
    """The reconciled day: the data interval's start day; for a run without an interval, the day before."""
    from include.woo_mirakl.reconciliation import Day

    start, end = context.get("data_interval_start"), context.get("data_interval_end")
    if start is not None and end is not None and end - start >= timedelta(hours=23):
        return Day(start.date())
    moment = context.get("logical_date") or context["dag_run"].run_after
    return Day((moment - timedelta(days=1)).date())


def reconciled_day(data_interval_start=None, data_interval_end=None, logical_date=None, dag_run=None) -> str:
    """The business date as a template macro, so it shows among the task's rendered fields."""
    return _run_day({"data_interval_start": data_interval_start, "data_interval_end": data_interval_end,
                     "logical_date": logical_date, "dag_run": dag_run}).day.isoformat()


RECONCILES = "{{ reconciled_day(data_interval_start, data_interval_end, logical_date, dag_run) }}"


def _stage(name: str, day):
    from include.woo_mirakl.finance_reports import reports_root
    from include.woo_mirakl.reconciliation import Stage

    return Stage(reports_root() / ".staging" / "reconciliation" / name / day.day.isoformat())


def _mirakl(marketplace: Marketplace, ledger):
    from include.woo_mirakl.hooks import MiraklHook

    hook = MiraklHook(marketplace.mirakl_conn_id)
    return hook.get_client(budget=hook.get_budget(ledger, max_wait=TL02_WAIT))


def build(marketplace: Marketplace) -> None:
    name = marketplace.name
    asset = report_asset(name)

    @task(pool="mirakl_api")
    def extract_mirakl_day(reconciles: str) -> dict[str, int]:
        from airflow.sdk import get_current_context

        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.ledger import get_ledger
        from include.woo_mirakl.reconciliation import extract_mirakl_day as extract

        day = _run_day(get_current_context())
        tell(f"reconciles: {reconciles} (business date of this run)")
        ledger = get_ledger()
        return extract(_mirakl(get_marketplace(name), ledger), ledger, name, day, _stage(name, day))

    @task(pool="woocommerce_api")
    def extract_woocommerce() -> dict[str, int]:
        from airflow.sdk import get_current_context

        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.hooks import WooCommerceHook
        from include.woo_mirakl.ledger import get_ledger
        from include.woo_mirakl.reconciliation import extract_woocommerce as extract

        context = get_current_context()
        day = _run_day(context)
        woo = WooCommerceHook(get_marketplace(name).woocommerce_conn_id).get_client()
        return extract(woo, get_ledger(), name, day, GRACE_DAYS, _stage(name, day))

    @task(pool="mirakl_api")
    def extract_mirakl_history() -> dict[str, int]:
        from airflow.sdk import get_current_context

        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.ledger import get_ledger
        from include.woo_mirakl.reconciliation import extract_mirakl_history as extract

        context = get_current_context()
        day = _run_day(context)
        mirakl = _mirakl(get_marketplace(name), get_ledger())
        return extract(mirakl, name, day, GRACE_DAYS, _stage(name, day))

    @task(pool="default_pool")
    def validate_transactions() -> dict:
        from airflow.sdk import get_current_context
        from airflow.sdk.exceptions import AirflowFailException

        from include.woo_mirakl.alerts import send_alert
        from include.woo_mirakl.ledger import get_ledger
        from include.woo_mirakl.reconciliation import SuiteFailed, invalid_amounts, validate_transactions as validate

        day = _run_day(get_current_context())
        lines = _stage(name, day).all_transaction_lines()
        # a line whose amount cannot be read exactly is an exception of its own; the day goes on without it
        unreadable = {key: {**detail, "day": day.day.isoformat()} for key, detail in invalid_amounts(lines).items()}
        if unreadable:
            get_ledger().raise_exceptions("transaction_amount_invalid", unreadable, marketplace=name)
            tell(f"{len(unreadable)} transaction line(s) with an unreadable amount: exceptions raised, left out")
        try:
            return validate(lines)
        except SuiteFailed as failed:
            get_ledger().raise_exception("transaction_suite_failed", day.day.isoformat(),
                                         {"summary": str(failed), "failures": failed.failures}, marketplace=name)
            send_alert(f"[woo-mirakl] Mirakl transaction lines of {day.day} failed validation ({name})",
                       f"No reconciliation report was written for {day.day}.\n\n{failed}")
            raise AirflowFailException(f"reconciliation of {day.day} stopped: {failed}") from None

    @task(pool="default_pool", outlets=[asset])
    def reconcile_and_report() -> dict:
        from airflow.sdk import get_current_context

        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.finance_reports import write_reports
        from include.woo_mirakl.ledger import get_ledger
        from include.woo_mirakl.reconciliation import Rules, ledger_rows, reconcile, summary_value

        context = get_current_context()
        day = _run_day(context)
        current = get_marketplace(name)
        stage = _stage(name, day)
        rules = Rules(commission_rate=current.commission_rate, commission_tolerance=current.commission_tolerance,
                      grace_days=GRACE_DAYS, currency=current.currency)
        result = reconcile(stage.inputs(name), rules, day)
        paths = write_reports(result, name, day.day)
        get_ledger().replace_reconciliation_results(name, day.day, ledger_rows(result.findings))
        stage.save("commissions", result.commissions.astype(object).where(result.commissions.notna(), None)
                   .to_dict("records"))
        figures = {"date": day.day.isoformat(), "directory": str(paths.directory),
                   "findings": int(len(result.findings)), "sales": str(summary_value(result.summary, "sales")),
                   "payout_paid": str(summary_value(result.summary, "payout_paid"))}
        context["outlet_events"][asset].extra = figures
        return figures

    @task(pool="woocommerce_api")
    def write_back_commissions() -> dict[str, int]:
        import pandas as pd
        from airflow.sdk import get_current_context

        from include.woo_mirakl.config import get_marketplace
        from include.woo_mirakl.hooks import WooCommerceHook
        from include.woo_mirakl.reconciliation import write_back_commissions as write_back

        day = _run_day(get_current_context())
        commissions = pd.DataFrame(_stage(name, day).load("commissions"),
                                   columns=["woo_order_id", "order_id", "commission", "commission_tax", "currency",
                                            "commission_as_of"])
        woo = WooCommerceHook(get_marketplace(name).woocommerce_conn_id).get_client()
        return write_back(woo, commissions, day)

    @task(pool="default_pool")
    def email_finance() -> dict:
        from airflow.sdk import get_current_context

        from include.woo_mirakl.finance_reports import day_paths, send_finance_email

        context = get_current_context()
        day = _run_day(context)
        return {"sent": send_finance_email(name, day.day, day_paths(name, day.day), context)}

    day_extract = extract_mirakl_day(reconciles=RECONCILES)
    checked = day_extract >> extract_woocommerce() >> extract_mirakl_history() >> validate_transactions()
    report = reconcile_and_report()
    checked >> report
    report >> [write_back_commissions(), email_finance()]


globals().update(
    marketplace_dags(
        FLOW, build, schedule=SCHEDULE, doc_md=__doc__, tags=["finance"],
        description="Nightly: yesterday's Mirakl transactions and payouts reconciled with WooCommerce; reports for finance",
        user_defined_macros={"reconciled_day": reconciled_day},
    )
)
