"""Nightly payout reconciliation as pure pandas: Mirakl's money against WooCommerce's orders.

Inputs are plain rows as the APIs return them (TL02 transaction lines, IV01 accounting
documents, WooCommerce orders and refunds) plus the ledger's Mirakl → WooCommerce order map;
:func:`reconcile` joins them per order and order line with vectorised pandas (no Python loop
over rows) and returns the summary, the line-level reconciliation, the findings and the
commission to write back to each WooCommerce order.

Amounts follow Mirakl's signs from the seller's side: sales are positive, commissions and
refunds negative. Money is exact: amounts are read from the APIs' text (JSON numbers parsed as
Decimal, WooCommerce's strings) into integer cents, held in int64 columns (``Int64`` where a
value may be missing: the columns of :data:`MONEY_COLUMNS`), summed as integers and turned into
Decimal only at the edge (the summary, the ledger rows, the report files). An amount that is
not an exact number of cents (malformed, not finite, or with a fraction of a cent) is never
rounded nor taken as 0: its line is left out of every total and becomes a
``transaction_amount_invalid`` finding (and a ledger exception) of its own.

The last section is the I/O the DAG's tasks call around the join: reading TL02/IV01 and
WooCommerce into a staging directory, and writing commissions back to WooCommerce.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

import yaml

if TYPE_CHECKING:  # pandas is imported by the functions: the DAG file must parse without it
    import pandas as pd

SUITE_FILE = Path(__file__).resolve().parents[1] / "config" / "expectations" / "transactions.yaml"
# A bound on any one amount (ten trillion in the currency's unit): beyond it the text is a
# mistake, and a day of such amounts still sums within int64.
MAX_CENTS = 10**15

# TL02 types grouped into the columns finance reads; anything else is an "other fee".
BUCKETS: dict[str, str] = {
    "ORDER_AMOUNT": "order_amount",
    "ORDER_SHIPPING_AMOUNT": "shipping_amount",
    "COMMISSION_FEE": "commission",
    "COMMISSION_VAT": "commission_tax",
    "REFUND_ORDER_AMOUNT": "refund_amount",
    "REFUND_ORDER_SHIPPING_AMOUNT": "refund_shipping_amount",
    "REFUND_COMMISSION_FEE": "refunded_commission",
    "REFUND_COMMISSION_VAT": "refunded_commission_tax",
    "PAYMENT": "payment",
}
AMOUNT_COLUMNS = [
    "order_amount", "shipping_amount", "commission", "commission_tax", "refund_amount",
    "refund_shipping_amount", "refunded_commission", "refunded_commission_tax", "other_fees",
]
TRANSACTION_COLUMNS = [
    "transaction_id", "type", "amount", "currency", "billing_cycle_id", "document_number",
    "date_created", "order_id", "order_line_id",
]
# The typed frame: ``amount`` as int64 cents, and why a line's amount could not be read (NA if it could).
LINE_COLUMNS = [
    "transaction_id", "type", "amount_cents", "amount_error", "currency", "billing_cycle_id", "document_number",
    "date_created", "order_id", "order_line_id",
]
WOO_LINE_COLUMNS = [
    "woo_order_id", "woo_line_id", "mirakl_order_id", "order_line_id", "status", "date_created",
    "date_completed", "line_total", "order_total", "commission_as_of",
]
FINDING_COLUMNS = [
    "kind", "order_id", "line_id", "woo_order_id", "document_number", "amount_mirakl", "amount_woo",
    "difference", "currency", "detail",
]
FINDING_KINDS = (
    "transaction_amount_invalid",
    "order_missing_in_woocommerce",
    "order_missing_in_mirakl",
    "commission_off_rate",
    "refund_missing_in_mirakl",
    "refund_missing_in_woocommerce",
    "refund_amount_mismatch",
    "payout_mismatch",
)
# Every money column of the frames :func:`reconcile` returns: integer cents (see the module's docstring).
MONEY_COLUMNS = frozenset([
    *AMOUNT_COLUMNS, "net_amount", "woo_line_total", "commission_expected", "commission_charged",
    "commission_difference", "amount_mirakl", "amount_woo", "difference", "invoice_total_charged", "paid",
    "lines_total", "commission_tax", "total_excl_taxes", "total_incl_taxes", "total_charged", "line_total",
    "order_total", "amount_cents",
])
META_ORDER_ID = "_mirakl_order_id"
META_MARKETPLACE = "_mirakl_marketplace"
META_LINE_ID = "_mirakl_order_line_id"
# Commission written back to the WooCommerce order as visible meta (shown in the order's custom
# fields, readable by report plugins), not as a fee line: a fee line would change the order total
# the customer sees on invoices and e-mails and the amounts WooCommerce offers to refund.
META_COMMISSION = "mirakl_commission"
META_COMMISSION_TAX = "mirakl_commission_tax"
META_COMMISSION_CURRENCY = "mirakl_commission_currency"
META_COMMISSION_AS_OF = "mirakl_commission_as_of"


class SuiteFailed(RuntimeError):
    """The transaction lines failed the expectation suite: no report may be built from them."""

    def __init__(self, summary: str, failures: list[dict[str, Any]]):
        super().__init__(summary)
        self.failures = failures


@dataclass(frozen=True)
class Day:
    """The data interval of one run: a UTC calendar day."""

    day: date

    @property
    def start(self) -> datetime:
        return datetime.combine(self.day, time(0), tzinfo=timezone.utc)

    @property
    def end(self) -> datetime:
        return self.start + timedelta(days=1)


@dataclass(frozen=True)
class Rules:
    """What counts as a discrepancy for one marketplace (rate and tolerance as Decimal or text)."""

    commission_rate: Decimal
    commission_tolerance: Decimal  # absolute, in the marketplace currency, per order line
    grace_days: int  # a shipped WooCommerce order must show in Mirakl's lines within this many days
    currency: str = "EUR"

    def __post_init__(self) -> None:
        for name in ("commission_rate", "commission_tolerance"):
            value = getattr(self, name)
            if isinstance(value, float):
                raise TypeError(f"Rules.{name} must be a Decimal or text, not float ({value!r})")
            object.__setattr__(self, name, Decimal(str(value)))

    @property
    def tolerance_cents(self) -> int:
        """The tolerance in whole cents (a difference in cents above it is off)."""
        return int((self.commission_tolerance * 100).to_integral_value(rounding="ROUND_FLOOR"))


@dataclass
class Inputs:
    """Every frame :func:`reconcile` needs, already normalised (see the ``*_frame`` functions)."""

    day_lines: pd.DataFrame  # TL02 lines created during the day
    history_lines: pd.DataFrame  # TL02 lines up to the day's end of the orders that matter
    cycle_lines: pd.DataFrame  # TL02 lines of the billing cycles whose documents were issued that day
    documents: pd.DataFrame  # IV01 documents issued that day
    woo_lines: pd.DataFrame  # WooCommerce marketplace order lines
    woo_refunds: pd.DataFrame  # WooCommerce refunds created during the day
    ledger_orders: pd.DataFrame  # mirakl_order_id -> woo_order_id


@dataclass
class Reconciliation:
    """The outcome of one day: what the reports and the write-back are made of."""

    summary: pd.DataFrame  # metric, value
    lines: pd.DataFrame
    findings: pd.DataFrame
    commissions: pd.DataFrame  # woo_order_id, commission, commission_tax, currency
    payouts: pd.DataFrame  # per accounting document issued that day: paid vs its lines


# ---- money: exact integer cents ----------------------------------------------------------------

class AmountError(ValueError):
    """A money value that is not an exact number of cents: malformed, missing, not finite, sub-cent."""


def parse_cents(value: Any) -> int:
    """Exact integer cents of a money value as the APIs give it: a Decimal (a JSON number parsed
    exactly), text, or an int. A float is refused: money must never have passed through one."""
    if isinstance(value, bool):
        raise AmountError(f"{value!r} is not an amount")
    if isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, Decimal):
        number = value
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            raise AmountError(f"{value!r} is not a number") from None
    elif isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise AmountError(f"{value!r} is not a finite number")
        raise TypeError(f"money arrived as float ({value!r}): parse the API's text as Decimal")
    elif value is None:
        raise AmountError("no amount")
    else:
        raise AmountError(f"{value!r} is not an amount")
    if not number.is_finite():
        raise AmountError(f"{value!r} is not a finite number")
    cents = number.scaleb(2)
    if cents != cents.to_integral_value():
        raise AmountError(f"{value!r} has a fraction of a cent (more than two decimals): it cannot be booked exactly")
    if abs(cents) >= MAX_CENTS:
        raise AmountError(f"{value!r} is out of range")
    return int(cents)


def _cents_and_errors(values: Iterable[Any]) -> tuple[Any, list[str | None]]:
    """Each value's cents (0 where unreadable) as an int64 array, and the reason where unreadable."""
    import numpy as np

    cents, errors = [], []
    for value in values:
        try:
            cents.append(parse_cents(value))
            errors.append(None)
        except AmountError as error:
            cents.append(0)
            errors.append(str(error))
    return np.array(cents, dtype=np.int64), errors


def _money(series: pd.Series) -> pd.Series:
    """Cents of a column of money text (WooCommerce, IV01) as ``Int64``; NA where absent or unreadable."""
    pd = _pd()
    cents, errors = _cents_and_errors(series.tolist())
    return pd.Series(pd.array(cents, dtype="Int64"), index=series.index).mask(pd.Series(errors, index=series.index)
                                                                              .notna())


def to_decimal(cents: Any) -> Decimal | None:
    """Integer cents as a Decimal with two places (the report edge); None when missing."""
    if cents is None or cents is _pd().NA or cents != cents:
        return None
    return Decimal(int(cents)).scaleb(-2)


def _times_rate(cents: Any, rate: Decimal) -> Any:
    """``cents * rate`` rounded to the cent, half away from zero, in exact integer arithmetic."""
    import numpy as np

    fraction = Fraction(rate)
    values = np.asarray(cents, dtype=np.int64) * fraction.numerator
    halves = (2 * np.abs(values) + fraction.denominator) // (2 * fraction.denominator)
    return np.sign(values) * halves


# ---- normalising API rows into frames ------------------------------------------------------------

def _pd():
    import pandas

    return pandas


def _utc(series: pd.Series) -> pd.Series:
    return _pd().to_datetime(series, utc=True, errors="coerce", format="ISO8601")


def transactions_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """TL02 lines (the API's dicts) as one row each, ids and amounts typed; ``rows`` is read once,
    as it comes (each dict may go as soon as its row is taken)."""
    pd = _pd()
    records = [
        (
            r.get("id"), r.get("type"), r.get("amount"), r.get("currency_iso_code"),
            r.get("seller_billing_cycle_id"), r.get("accounting_document_number"), r.get("date_created"),
            ((r.get("entities") or {}).get("order") or {}).get("id"),
            ((r.get("entities") or {}).get("order_line") or {}).get("id"),
        )
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=TRANSACTION_COLUMNS)
    return normalise_transactions(frame)


# Columns that repeat across lines (a type, a currency, a cycle, an order's four lines or more):
# held as categories, each distinct text once and a small integer per line, so a million lines
# cost tens of megabytes, not the hundreds one Python string per cell would.
CATEGORY_COLUMNS = ("type", "currency", "billing_cycle_id", "document_number", "order_id", "order_line_id",
                    "amount_error")


def normalise_transactions(frame: pd.DataFrame) -> pd.DataFrame:
    """Typed columns (:data:`LINE_COLUMNS`) for a frame with :data:`TRANSACTION_COLUMNS`; a frame
    whose amounts are already int64 cents (``amount_cents``, as the benchmark builds them) keeps them."""
    pd = _pd()
    if "amount_cents" in frame.columns:
        out = frame.reindex(columns=LINE_COLUMNS).copy()
        out["amount_cents"] = out["amount_cents"].astype("int64")
    else:
        out = frame.reindex(columns=TRANSACTION_COLUMNS).copy()
        cents, errors = _cents_and_errors(out.pop("amount").tolist())
        out.insert(2, "amount_cents", cents)
        out.insert(3, "amount_error", pd.Series(errors, index=out.index, dtype=object))
    out["transaction_id"] = out["transaction_id"].astype("string")
    out = _categorise(out)
    out["date_created"] = _utc(out["date_created"]) if len(out) else pd.Series([], dtype="datetime64[ns, UTC]")
    return out


def readable(lines: pd.DataFrame) -> pd.DataFrame:
    """The lines whose amount was read exactly: the only ones any total is made of."""
    unread = lines["amount_error"].notna()
    return lines[~unread] if unread.any() else lines  # no copy of a million clean lines


def invalid_amounts(lines: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Lines whose amount could not be read, by transaction id: the ledger exceptions to raise."""
    bad = _unreadable(lines)
    return {str(r["transaction_id"]): {"reason": r["amount_error"], "type": _text(r["type"]),
                                       "order_id": _text(r["order_id"]), "order_line_id": _text(r["order_line_id"]),
                                       "document_number": _text(r["document_number"])}
            for r in bad.to_dict("records")}


def _categorise(frame: pd.DataFrame) -> pd.DataFrame:
    pd = _pd()
    for column in CATEGORY_COLUMNS:
        if not isinstance(frame[column].dtype, pd.CategoricalDtype):
            frame[column] = frame[column].astype("string").astype("category")
    return frame


def concat_lines(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """Transaction-line frames one after the other, still categorised (pandas falls back to
    plain objects when the categories of the parts differ)."""
    pd = _pd()
    frames = list(frames)
    if not frames:
        return transactions_frame([])
    return _categorise(pd.concat(frames, ignore_index=True))


def documents_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """IV01 accounting documents: id, number (payment voucher), cycle, totals."""
    pd = _pd()
    records = [
        (
            str(r.get("id") or r.get("invoice_id")), r.get("invoice_id"), r.get("payment_voucher_number"),
            r.get("seller_billing_cycle_id"), r.get("type"), r.get("state"), r.get("currency_iso_code"),
            r.get("date_created"), r.get("total_amount_excl_taxes"), r.get("total_amount_incl_taxes"),
            r.get("total_charged_amount"),
        )
        for r in rows
    ]
    frame = pd.DataFrame.from_records(records, columns=[
        "document_id", "invoice_id", "document_number", "billing_cycle_id", "type", "state", "currency",
        "date_created", "total_excl_taxes", "total_incl_taxes", "total_charged",
    ])
    for column in ("document_id", "document_number", "billing_cycle_id"):
        frame[column] = frame[column].astype("string")
    for column in ("total_excl_taxes", "total_incl_taxes", "total_charged"):
        frame[column] = _money(frame[column])
    return frame


def _meta(entries: Any, key: str) -> Any:
    for meta in entries or []:
        if isinstance(meta, dict) and meta.get("key") == key:
            return meta.get("value")
    return None


def woo_lines_frame(orders: Iterable[Mapping[str, Any]], marketplace: str) -> pd.DataFrame:
    """The line items of WooCommerce orders of ``marketplace`` (those with our order meta)."""
    pd = _pd()
    records = []
    for order in orders:
        meta = order.get("meta_data")
        if _meta(meta, META_MARKETPLACE) != marketplace or not _meta(meta, META_ORDER_ID):
            continue
        head = (
            int(order["id"]), str(_meta(meta, META_ORDER_ID)), order.get("status"),
            order.get("date_created_gmt") or order.get("date_created"),
            order.get("date_completed_gmt") or order.get("date_completed"), order.get("total"),
            _meta(meta, META_COMMISSION_AS_OF),
        )
        items = order.get("line_items") or [{}]
        for item in items:
            records.append((head[0], item.get("id"), head[1], _meta(item.get("meta_data"), META_LINE_ID),
                            head[2], head[3], head[4], item.get("total"), head[5], head[6]))
    frame = pd.DataFrame.from_records(records, columns=WOO_LINE_COLUMNS)
    frame["woo_order_id"] = frame["woo_order_id"].astype("Int64")
    for column in ("mirakl_order_id", "order_line_id", "status", "commission_as_of"):
        frame[column] = frame[column].astype("string")
    for column in ("date_created", "date_completed"):
        frame[column] = _utc(frame[column])
    for column in ("line_total", "order_total"):
        frame[column] = _money(frame[column])
    return frame


def woo_refunds_frame(refunds: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """WooCommerce refunds: id, order, amount (positive), creation time."""
    pd = _pd()
    records = [
        (r.get("id"), r.get("parent_id"), r.get("amount"), r.get("date_created_gmt") or r.get("date_created"))
        for r in refunds
    ]
    frame = pd.DataFrame.from_records(records, columns=["refund_id", "woo_order_id", "amount", "date_created"])
    frame["woo_order_id"] = frame["woo_order_id"].astype("Int64")
    frame["amount"] = _money(frame["amount"]).abs()
    frame["date_created"] = _utc(frame["date_created"])
    return frame


def ledger_frame(pairs: Iterable[tuple[str, int | None]]) -> pd.DataFrame:
    pd = _pd()
    frame = pd.DataFrame.from_records(list(pairs), columns=["mirakl_order_id", "woo_order_id"])
    frame["mirakl_order_id"] = frame["mirakl_order_id"].astype("string")
    frame["woo_order_id"] = frame["woo_order_id"].astype("Int64")
    return frame.dropna(subset=["woo_order_id"])


# ---- validation -----------------------------------------------------------------------------------

def load_suite_definition(path: Path = SUITE_FILE) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    for key in ("name", "known_types", "signs", "order_types"):
        if key not in data:
            raise ValueError(f"{path}: the expectation suite needs {key!r}")
    return data


def _condition(types: list[str]) -> str:
    return f"type.isin({sorted(types)!r})"


def build_transaction_suite(definition: Mapping[str, Any]):
    """The Great Expectations suite for transaction lines, from the YAML definition."""
    import great_expectations as gx
    import great_expectations.expectations as gxe

    suite = gx.ExpectationSuite(name=definition["name"])
    for column in ("transaction_id", "type", "amount", "currency"):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=column))
    suite.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="transaction_id"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="type", value_set=list(definition["known_types"])))
    signs = definition["signs"]
    if signs.get("positive"):
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column="amount", min_value=0, row_condition=_condition(signs["positive"]), condition_parser="pandas"))
    if signs.get("negative"):
        suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(
            column="amount", max_value=0, row_condition=_condition(signs["negative"]), condition_parser="pandas"))
    for column in ("order_id", "order_line_id"):
        suite.add_expectation(gxe.ExpectColumnValuesToNotBeNull(
            column=column, row_condition=_condition(definition["order_types"]), condition_parser="pandas"))
    suite.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="currencies_per_payout", min_value=1, max_value=1))
    return suite


def _condition_text(condition: Any) -> str | None:
    """GX keeps a pandas row condition as a dict; the report shows its text."""
    if isinstance(condition, dict):
        return condition.get("pass_through_filter") or str(condition)
    return condition


def validation_frame(lines: pd.DataFrame) -> pd.DataFrame:
    """The readable lines (an unreadable amount is a finding of its own, not a failed night) plus the
    derived column the one-currency-per-payout expectation reads; ``amount`` in cents."""
    out = readable(lines).drop(columns="amount_error").rename(columns={"amount_cents": "amount"})
    per_document = out.groupby("document_number", dropna=True)["currency"].transform("nunique")
    out["currencies_per_payout"] = per_document.fillna(1).astype("int64")
    # GX's pandas row conditions need plain object columns
    for column in ("transaction_id", "type", "currency", "order_id", "order_line_id", "document_number"):
        out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def validate_transactions(lines: pd.DataFrame, definition: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Run the suite; returns a JSON-able report, raises :class:`SuiteFailed` when any expectation fails."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    definition = definition or load_suite_definition()
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    batch = (context.data_sources.add_pandas(name="mirakl_tl02").add_dataframe_asset(name="transaction_lines")
             .add_batch_definition_whole_dataframe("whole"))
    suite = context.suites.add(build_transaction_suite(definition))
    result = batch.get_batch(batch_parameters={"dataframe": validation_frame(lines)}).validate(
        suite, result_format="SUMMARY")
    failures = []
    for item in result.results:
        if item.success:
            continue
        config = item.expectation_config
        failures.append({
            "expectation": config.type,
            "column": config.kwargs.get("column"),
            "condition": _condition_text(config.kwargs.get("row_condition")),
            "unexpected_count": item.result.get("unexpected_count"),
            "examples": [None if v != v else v for v in (item.result.get("partial_unexpected_list") or [])[:5]],
        })
    report = {"suite": definition["name"], "rows": int(len(lines)), "success": bool(result.success),
              "evaluated": len(result.results), "failed": failures}
    if failures:
        detail = "; ".join(
            f"{f['expectation']}({f['column']}{', where ' + f['condition'] if f['condition'] else ''}): "
            f"{f['unexpected_count']} bad, e.g. {f['examples']}"
            for f in failures
        )
        raise SuiteFailed(f"{len(failures)} of {len(result.results)} expectations of {definition['name']} failed "
                          f"on {len(lines)} transaction lines: {detail}", failures)
    return report


# ---- the join -------------------------------------------------------------------------------------

def _bucket(types: pd.Series) -> pd.Series:
    """The report column of each TL02 type; mapped once per category when the types are categorical."""
    import numpy as np

    pd = _pd()
    if isinstance(types.dtype, pd.CategoricalDtype):
        names = np.array([BUCKETS.get(c, "other_fees") for c in types.cat.categories] + ["other_fees"], dtype=object)
        return pd.Series(names[types.cat.codes.to_numpy()], index=types.index)  # code -1 (missing) -> last
    return types.astype(object).map(BUCKETS).fillna("other_fees")


def line_amounts(lines: pd.DataFrame) -> pd.DataFrame:
    """Per (order, order line): each bucket's total (one column each), PAYMENT excluded.

    Ids are factorised once and the buckets summed with one ``bincount`` over integer keys:
    string hashing is what costs on a million lines.
    """
    import numpy as np

    pd = _pd()
    sub = lines.loc[lines["order_id"].notna() & (lines["type"] != "PAYMENT").fillna(True),
                    ["order_id", "order_line_id", "type", "amount_cents"]]
    if sub.empty:
        return pd.DataFrame({c: pd.Series(dtype="string" if c in ("order_id", "order_line_id") else "int64")
                             for c in ["order_id", "order_line_id", *AMOUNT_COLUMNS]})
    # one key per order line; a line-less order row keys on its order (marked so it cannot clash)
    line_ids = sub["order_line_id"]
    no_line = line_ids.isna().to_numpy()
    if isinstance(line_ids.dtype, pd.CategoricalDtype) and not no_line.any():
        key_codes, uniques = pd.factorize(line_ids.cat.codes.to_numpy())  # integers: no string hashing
    else:
        keys = line_ids.to_numpy(dtype=object, na_value=None)
        if no_line.any():
            orders = sub["order_id"].to_numpy(dtype=object)
            keys = keys.copy()
            keys[no_line] = ["\x00order:" + o for o in orders[no_line]]
        key_codes, uniques = pd.factorize(keys)
    first = np.empty(len(uniques), dtype=np.int64)
    first[key_codes[::-1]] = np.arange(len(key_codes) - 1, -1, -1)  # first row of each key
    column_of = {name: i for i, name in enumerate(AMOUNT_COLUMNS)}
    bucket_codes = _bucket(sub["type"]).map(column_of).to_numpy(dtype=np.int64)
    width = len(AMOUNT_COLUMNS)
    sums = np.zeros(len(uniques) * width, dtype=np.int64)  # integer cents: exact, unlike bincount's float weights
    np.add.at(sums, key_codes * width + bucket_codes, sub["amount_cents"].to_numpy(dtype=np.int64))
    out = pd.DataFrame(sums.reshape(len(uniques), width), columns=AMOUNT_COLUMNS)
    orders = sub["order_id"].to_numpy(dtype=object)[first]
    out.insert(0, "order_id", pd.array(orders, dtype="string"))
    out.insert(1, "order_line_id", pd.array(line_ids.to_numpy(dtype=object, na_value="")[first], dtype="string"))
    return out


def _order_map(inputs: Inputs) -> pd.DataFrame:
    """Mirakl order id -> WooCommerce order id: the order's own meta first, then the ledger."""
    pd = _pd()
    from_woo = inputs.woo_lines[["mirakl_order_id", "woo_order_id"]].drop_duplicates("mirakl_order_id")
    merged = pd.concat([from_woo, inputs.ledger_orders[["mirakl_order_id", "woo_order_id"]]])
    return merged.drop_duplicates("mirakl_order_id", keep="first")


def _empty_findings() -> pd.DataFrame:
    pd = _pd()
    return pd.DataFrame({c: pd.Series(dtype="Int64" if c in MONEY_COLUMNS else "object") for c in FINDING_COLUMNS})


def _findings(frame: pd.DataFrame, kind: str, currency: str, **columns: Any) -> pd.DataFrame:
    pd = _pd()
    out = pd.DataFrame(index=frame.index)
    out["kind"] = kind
    for column in FINDING_COLUMNS[1:]:
        value = columns.get(column)
        if isinstance(value, str) and value in frame.columns:
            out[column] = frame[value]
        elif isinstance(value, pd.Series):
            out[column] = value
        else:
            out[column] = value
    out["currency"] = out["currency"].fillna(currency) if "currency" in columns else currency
    return out.reset_index(drop=True)


def reconcile(inputs: Inputs, rules: Rules, day: Day) -> Reconciliation:
    """Join one day's Mirakl lines with WooCommerce and the ledger; everything vectorised."""
    pd = _pd()
    read_lines = len(inputs.day_lines)
    unreadable = _invalid_amount_findings(inputs, rules.currency)
    inputs = Inputs(**{**inputs.__dict__, **{name: readable(getattr(inputs, name))
                                             for name in ("day_lines", "history_lines", "cycle_lines")}})
    day_lines = inputs.day_lines
    currency = rules.currency
    order_map = _order_map(inputs)
    amounts = line_amounts(day_lines)

    # Line level: WooCommerce's line total and the commission the configured rate implies.
    woo_line = inputs.woo_lines.dropna(subset=["order_line_id"]).drop_duplicates("order_line_id")
    lines = amounts.merge(order_map, how="left", left_on="order_id", right_on="mirakl_order_id").drop(
        columns="mirakl_order_id")
    lines = lines.merge(woo_line[["order_line_id", "line_total"]].rename(columns={"line_total": "woo_line_total"}),
                        how="left", on="order_line_id")
    base = lines[["order_amount", "shipping_amount", "refund_amount", "refund_shipping_amount"]].sum(axis=1)
    lines["commission_expected"] = _times_rate(base, rules.commission_rate)
    lines["commission_charged"] = -(lines["commission"] + lines["refunded_commission"])
    lines["commission_difference"] = lines["commission_charged"] - lines["commission_expected"]
    lines["net_amount"] = lines[AMOUNT_COLUMNS].sum(axis=1)
    lines["currency"] = currency

    payout_table = payouts(inputs)
    findings = [
        unreadable,
        _missing_in_woocommerce(lines, inputs, day, currency),
        _missing_in_mirakl(inputs, rules, day, currency),
        _commission_off_rate(lines, rules, currency),
        *_refund_findings(day_lines, inputs, order_map, day, currency),
        _payout_findings(payout_table, currency),
    ]
    findings_frame = pd.concat([_empty_findings(), *[f for f in findings if len(f)]], ignore_index=True)
    findings_frame = findings_frame.sort_values(["kind", "order_id", "line_id", "document_number"],
                                                na_position="last", kind="stable").reset_index(drop=True)
    findings_frame["woo_order_id"] = findings_frame["woo_order_id"].astype("Int64")
    for column in ("amount_mirakl", "amount_woo", "difference"):
        findings_frame[column] = findings_frame[column].astype("Int64")

    lines = lines.sort_values(["order_id", "order_line_id"], kind="stable").reset_index(drop=True)
    lines = lines[["order_id", "order_line_id", "woo_order_id", *AMOUNT_COLUMNS, "net_amount", "woo_line_total",
                   "commission_expected", "commission_charged", "commission_difference", "currency"]]
    lines["woo_order_id"] = lines["woo_order_id"].astype("Int64")
    return Reconciliation(
        summary=_summary(day_lines, read_lines, payout_table, findings_frame, lines, day, currency),
        lines=lines,
        findings=findings_frame,
        commissions=_commissions(inputs, amounts, order_map, currency),
        payouts=payout_table,
    )


def _invalid_amount_findings(inputs: Inputs, currency: str) -> pd.DataFrame:
    """One finding per line of the day or of its payouts whose amount could not be read exactly."""
    pd = _pd()
    lines = pd.concat([_unreadable(inputs.day_lines), _unreadable(inputs.cycle_lines)])
    lines = lines.drop_duplicates("transaction_id")
    detail = ("transaction " + lines["transaction_id"].astype(str) + " (" + lines["type"].astype(str) + "): amount "
              + lines["amount_error"].astype(str) + "; the line is left out of every total")
    return _findings(lines, "transaction_amount_invalid", currency, order_id="order_id", line_id="order_line_id",
                     document_number="document_number", detail=detail)


def _unreadable(lines: pd.DataFrame) -> pd.DataFrame:
    return lines[lines["amount_error"].notna()]


def _missing_in_woocommerce(lines: pd.DataFrame, inputs: Inputs, day: Day, currency: str) -> pd.DataFrame:
    """Orders Mirakl charged the customer for (order amount on the day) with no WooCommerce order."""
    woo = inputs.woo_lines
    known = woo.loc[woo["date_created"] < day.end, "woo_order_id"]
    per_order = lines.groupby("order_id", as_index=False).agg(
        woo_order_id=("woo_order_id", "first"), paid=("order_amount", "sum"), shipping=("shipping_amount", "sum"))
    missing = per_order[(per_order["paid"] > 0) & ~per_order["woo_order_id"].isin(known)]
    amount = missing["paid"] + missing["shipping"]
    return _findings(missing, "order_missing_in_woocommerce", currency, order_id="order_id", amount_mirakl=amount,
                     amount_woo=0, difference=amount,
                     detail="Mirakl debited the customer; no WooCommerce order carries this Mirakl order id")


def _missing_in_mirakl(inputs: Inputs, rules: Rules, day: Day, currency: str) -> pd.DataFrame:
    """WooCommerce marketplace orders shipped exactly ``grace_days`` before the day, still without a sale line."""
    woo = inputs.woo_lines.drop_duplicates("woo_order_id")
    window_start = day.start - timedelta(days=rules.grace_days)
    shipped = woo[(woo["status"] == "completed") & (woo["date_completed"] >= window_start)
                  & (woo["date_completed"] < window_start + timedelta(days=1))]
    sold = _pd().concat([f.loc[(f["type"] == "ORDER_AMOUNT").fillna(False), "order_id"]
                         for f in (inputs.history_lines, inputs.day_lines)])
    missing = shipped[~shipped["mirakl_order_id"].isin(sold)]
    return _findings(missing, "order_missing_in_mirakl", currency, order_id="mirakl_order_id",
                     woo_order_id="woo_order_id", amount_mirakl=0, amount_woo="order_total",
                     difference=-missing["order_total"],
                     detail=f"shipped in WooCommerce {rules.grace_days} days ago; no Mirakl order amount line since")


def _commission_off_rate(lines: pd.DataFrame, rules: Rules, currency: str) -> pd.DataFrame:
    off = lines[lines["commission_difference"].abs() > rules.tolerance_cents]
    return _findings(off, "commission_off_rate", currency, order_id="order_id", line_id="order_line_id",
                     woo_order_id="woo_order_id", amount_mirakl="commission_charged", amount_woo="commission_expected",
                     difference="commission_difference",
                     detail=f"commission charged vs {rules.commission_rate:.2%} of the line's amount and shipping "
                            f"(amount_woo holds the expected commission; tolerance {rules.commission_tolerance})")


def _refund_findings(day_lines: pd.DataFrame, inputs: Inputs, order_map: pd.DataFrame, day: Day,
                     currency: str) -> list[pd.DataFrame]:
    """Refunds of the day per order: in one system only, or for different amounts."""
    pd = _pd()
    refund_types = day_lines["type"].isin(["REFUND_ORDER_AMOUNT", "REFUND_ORDER_SHIPPING_AMOUNT"])
    mirakl = (-day_lines[refund_types].groupby("order_id", observed=True)["amount_cents"].sum()).rename("amount_mirakl")
    woo_refunds = inputs.woo_refunds
    woo_refunds = woo_refunds[(woo_refunds["date_created"] >= day.start) & (woo_refunds["date_created"] < day.end)]
    marketplace_orders = order_map.dropna(subset=["woo_order_id"])
    woo = woo_refunds.merge(marketplace_orders, on="woo_order_id", how="inner")
    woo = woo.groupby("mirakl_order_id")["amount"].sum().rename("amount_woo")
    both = pd.concat([mirakl, woo], axis=1).fillna(0).astype("int64")
    both.index.name = "order_id"
    both = both.reset_index().merge(order_map, how="left", left_on="order_id", right_on="mirakl_order_id")
    both["difference"] = both["amount_mirakl"] - both["amount_woo"]
    only_woo = both[(both["amount_woo"] > 0) & (both["amount_mirakl"] == 0)]
    only_mirakl = both[(both["amount_mirakl"] > 0) & (both["amount_woo"] == 0)]
    different = both[(both["amount_woo"] > 0) & (both["amount_mirakl"] > 0) & (both["difference"] != 0)]
    common = {"order_id": "order_id", "woo_order_id": "woo_order_id", "amount_mirakl": "amount_mirakl",
              "amount_woo": "amount_woo", "difference": "difference"}
    return [
        _findings(only_woo, "refund_missing_in_mirakl", currency, **common,
                  detail="refunded in WooCommerce that day; no Mirakl refund line"),
        _findings(only_mirakl, "refund_missing_in_woocommerce", currency, **common,
                  detail="refunded on Mirakl that day; no WooCommerce refund"),
        _findings(different, "refund_amount_mismatch", currency, **common,
                  detail="refunded that day in both systems for different amounts"),
    ]


def payouts(inputs: Inputs) -> pd.DataFrame:
    """Per payout of the day (PAYMENT line, with its IV01 document): what was paid and what its lines add up to."""
    pd = _pd()
    day_lines = inputs.day_lines
    numbers = day_lines.loc[(day_lines["type"] == "PAYMENT") & day_lines["document_number"].notna(),
                            "document_number"]
    base = pd.DataFrame({"document_number": pd.concat([numbers, inputs.documents["document_number"]])
                         .drop_duplicates().astype("string")})
    base = base.merge(inputs.documents[["document_number", "invoice_id", "billing_cycle_id", "total_charged"]]
                      .rename(columns={"total_charged": "invoice_total_charged"}), how="left", on="document_number")
    wanted = base["document_number"]
    lines = pd.concat([frame[frame["document_number"].notna()] for frame in (inputs.cycle_lines, day_lines)])
    lines = lines[lines["document_number"].isin(wanted)]
    lines = lines.drop_duplicates("transaction_id")
    is_payment = lines["type"] == "PAYMENT"
    paid = (-lines[is_payment].groupby("document_number", observed=True)["amount_cents"].sum()).rename("paid")
    owed = lines[~is_payment].groupby("document_number", observed=True)["amount_cents"].sum().rename("lines_total")
    currency = lines.groupby("document_number")["currency"].first().rename("currency")
    out = base.merge(pd.concat([paid, owed, currency], axis=1).reset_index(), how="left", on="document_number")
    out[["paid", "lines_total"]] = out[["paid", "lines_total"]].fillna(0).astype("int64")
    out["difference"] = out["paid"] - out["lines_total"]
    return out.sort_values("document_number", kind="stable").reset_index(drop=True)


def _payout_findings(table: pd.DataFrame, currency: str) -> pd.DataFrame:
    off = table[table["difference"] != 0]
    return _findings(off, "payout_mismatch", currency, document_number="document_number", amount_mirakl="paid",
                     amount_woo="lines_total", difference="difference",
                     detail="payment voucher total differs from the sum of its transaction lines "
                            "(amount_woo holds the lines' sum)")


def _commissions(inputs: Inputs, lines: pd.DataFrame, order_map: pd.DataFrame, currency: str) -> pd.DataFrame:
    """Commission to date (up to the day's end) of each WooCommerce order with Mirakl activity that day.

    The history read runs to the day's end, so it includes the day; the day's own lines stand in
    for orders it does not cover.
    """
    def per_order(amounts: pd.DataFrame) -> pd.DataFrame:
        totals = amounts.assign(commission=-(amounts["commission"] + amounts["refunded_commission"]),
                                commission_tax=-(amounts["commission_tax"] + amounts["refunded_commission_tax"]))
        return totals.groupby("order_id")[["commission", "commission_tax"]].sum()

    day = per_order(lines)
    history = per_order(line_amounts(inputs.history_lines))
    # the history's figure where it has the order, else the day's (concat keeps the integers exact)
    totals = _pd().concat([history[history.index.isin(day.index)], day[~day.index.isin(history.index)]])
    totals = totals.rename_axis("order_id").reset_index()
    totals = totals.merge(order_map, left_on="order_id", right_on="mirakl_order_id", how="inner")
    woo = inputs.woo_lines.drop_duplicates("woo_order_id")[["woo_order_id", "commission_as_of"]]
    totals = totals.merge(woo, on="woo_order_id", how="left")
    totals["currency"] = currency
    totals = totals.sort_values("woo_order_id", kind="stable").reset_index(drop=True)
    return totals[["woo_order_id", "order_id", "commission", "commission_tax", "currency", "commission_as_of"]]


def _summary(day_lines: pd.DataFrame, read_lines: int, table: pd.DataFrame, findings: pd.DataFrame,
             lines: pd.DataFrame, day: Day, currency: str) -> pd.DataFrame:
    """Metric and value; money as Decimal (the report edge); ``read_lines`` counts unreadable lines too."""
    pd = _pd()
    by_type = day_lines.groupby("type", observed=True)["amount_cents"].sum()  # few groups, then bucketed
    by_bucket = by_type.groupby(_bucket(by_type.index.to_series()).to_numpy()).sum()

    def total(*names: str) -> Decimal:
        return to_decimal(sum(int(by_bucket.get(n, 0)) for n in names))

    metrics = [
        ("date", day.day.isoformat()),
        ("currency", currency),
        ("transaction_lines", int(read_lines)),
        ("orders", int(lines["order_id"].nunique())),
        ("sales", total("order_amount", "shipping_amount")),
        ("order_amount", total("order_amount")),
        ("shipping_amount", total("shipping_amount")),
        ("commissions", total("commission", "commission_tax", "refunded_commission", "refunded_commission_tax")),
        ("commission_fee", total("commission", "refunded_commission")),
        ("commission_tax", total("commission_tax", "refunded_commission_tax")),
        ("refunds", total("refund_amount", "refund_shipping_amount")),
        ("other_fees", total("other_fees")),
        ("net_amount", total(*AMOUNT_COLUMNS)),
        ("payouts", int(len(table))),
        ("payout_expected", to_decimal(int(table["lines_total"].sum()))),
        ("payout_paid", to_decimal(int(table["paid"].sum()))),
        ("findings", int(len(findings))),
    ]
    metrics += [(f"findings_{kind}", int((findings["kind"] == kind).sum())) for kind in FINDING_KINDS]
    return pd.DataFrame(metrics, columns=["metric", "value"]).astype({"value": "object"})


def summary_value(summary: pd.DataFrame, metric: str) -> Any:
    return summary.loc[summary["metric"] == metric, "value"].iloc[0]


def ledger_rows(findings: pd.DataFrame) -> list[dict[str, Any]]:
    """Findings as the ledger's reconciliation_results rows (money as Decimal)."""
    money = to_decimal
    rows = []
    for record in findings.to_dict("records"):  # the ledger API takes rows; this is I/O, not the join
        rows.append({
            "finding_kind": record["kind"], "order_id": _text(record["order_id"]), "line_id": _text(record["line_id"]),
            "amount_mirakl": money(record["amount_mirakl"]), "amount_woo": money(record["amount_woo"]),
            "difference": money(record["difference"]), "currency": record["currency"],
            "detail": {"text": record["detail"], "woo_order_id": _int(record["woo_order_id"]),
                       "document_number": _text(record["document_number"])},
        })
    return rows


def _text(value: Any) -> str | None:
    return None if value is None or value is _pd().NA or value != value else str(value)


def _int(value: Any) -> int | None:
    return None if value is None or value is _pd().NA or value != value else int(value)


# ---- extraction, staging and write-back: the I/O around the pure join -------------------------------

ORDER_IDS_PER_CALL = 100  # TL02 order_id / seller_billing_cycle_id accept at most 100 values
TL02_PAGE = 2000  # TL02's largest page: as few calls as possible under its 20/min, 60/h ceiling
# Beyond 10 TL02 pages a day goes through the export: TL02's 60 calls an hour are also needed for
# the payout cycles and the orders' history, and a million lines would take it 8 hours.
EXPORT_ABOVE_LINES = 20_000
CURSOR_FLOW = "mirakl_payout_reconciliation"


def _chunks(values: list[Any], size: int = ORDER_IDS_PER_CALL) -> Iterable[list[Any]]:
    for start in range(0, len(values), size):
        yield values[start:start + size]


class Stage:
    """One run's inputs as files, handed from task to task (XComs carry only counts): small ones as
    JSON, lines (Mirakl's transaction lines, WooCommerce's order lines) as typed frames."""

    def __init__(self, directory: Path):
        self.directory = directory

    def save(self, name: str, rows: Any) -> int:
        import json

        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(rows, default=str), encoding="utf-8")
        tmp.replace(path)
        (self.directory / f"{name}.pkl").unlink(missing_ok=True)
        return len(rows)

    def save_lines(self, name: str, frame: pd.DataFrame) -> int:
        """Lines (Mirakl's transaction lines, WooCommerce's order lines) as a typed frame: a million
        lines as JSON would cost gigabytes to read back.

        Pickle is only ever read back by this integration from its own staging directory.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{name}.pkl"
        tmp = path.with_suffix(".pkl.tmp")
        frame.to_pickle(tmp)
        tmp.replace(path)
        (self.directory / f"{name}.json").unlink(missing_ok=True)
        return len(frame)

    def frame(self, name: str) -> pd.DataFrame:
        """A frame staged by :meth:`save_lines`."""
        path = self.directory / f"{name}.pkl"
        if not path.exists():
            raise FileNotFoundError(f"staged input {path} is missing: run the extract tasks of this day first")
        return _pd().read_pickle(path)

    def lines(self, name: str) -> pd.DataFrame:
        """Staged transaction lines, whichever way they were saved."""
        path = self.directory / f"{name}.pkl"
        if path.exists():
            return _pd().read_pickle(path)
        return transactions_frame(self.load(name))

    def load(self, name: str) -> Any:
        import json

        path = self.directory / f"{name}.json"
        if not path.exists():
            raise FileNotFoundError(f"staged input {path} is missing: run the extract tasks of this day first")
        return json.loads(path.read_text(encoding="utf-8"))

    def inputs(self, marketplace: str) -> Inputs:
        return Inputs(
            day_lines=self.lines("day_lines"),
            history_lines=self.lines("history_lines"),
            cycle_lines=self.lines("cycle_lines"),
            documents=documents_frame(self.load("documents")),
            woo_lines=self.frame("woo_lines"),
            woo_refunds=woo_refunds_frame(self.load("woo_refunds")),
            ledger_orders=ledger_frame((m, w) for m, w in self.load("ledger")),
        )

    def all_transaction_lines(self) -> pd.DataFrame:
        """Every TL02 line this run read, once each: what the expectation suite checks."""
        frames = [self.lines(n) for n in ("day_lines", "cycle_lines", "history_lines")]
        return concat_lines(frames).drop_duplicates("transaction_id", ignore_index=True)


def extract_mirakl_day(mirakl: Any, ledger: Any, marketplace: str, day: Day, stage: Stage, *,
                       export_above: int = EXPORT_ABOVE_LINES, sleep: Any = None) -> dict[str, int]:
    """The lines created that day; for each payout (PAYMENT line) its IV01 document and its cycle's lines.

    The day's lines come from TL02 while the day is small, from the asynchronous export
    (TL03–TL05, see :mod:`include.woo_mirakl.transaction_export`) once it holds more than
    ``export_above`` lines: expected from the size of the last day read (kept in the ledger),
    or found out when TL02 has given that many and still has more. Both give the same frame.

    IV01 may be called once a day, so documents are cached in the ledger by payment voucher
    number (they do not change once issued) and IV01 is called only when a payout of the day
    names one the cache lacks; one call then brings every document issued since, which serves
    a whole backfill.
    """
    expected = int(ledger.get_cursor(CURSOR_FLOW, marketplace, "day_lines_last", default=0) or 0)
    source, rows = ("TL03" if expected > export_above else "TL02"), []
    if source == "TL02":
        for t in mirakl.iter_transactions(date_created_from=day.start, date_created_to=day.end, limit=TL02_PAGE):
            rows.append(t.raw)
            if len(rows) > export_above:  # too big for TL02's ceiling: the rest would take hours
                source, rows = "TL03", []
                break
    if source == "TL03":
        from include.woo_mirakl.transaction_export import read_transaction_export

        frame, new_orders = read_transaction_export(
            mirakl, ledger, CURSOR_FLOW, marketplace, day.day.isoformat(), date_created_from=day.start,
            date_created_to=day.end, new_since=day.start, **({"sleep": sleep} if sleep else {}))
    else:
        from include.woo_mirakl.transaction_export import orders_created_since

        frame, new_orders = transactions_frame(rows), sorted(orders_created_since(rows, day.start))
        del rows
    ledger.set_cursor(CURSOR_FLOW, marketplace, "day_lines_last", len(frame))
    payments = frame.loc[frame["type"] == "PAYMENT"]
    numbers = sorted(set(payments["document_number"].dropna().astype(str)) - {""})
    cache: dict[str, Any] = ledger.get_cursor(CURSOR_FLOW, marketplace, "iv01_documents", default=None) or {}
    if any(n not in cache for n in numbers):
        for document in mirakl.iter_accounting_documents(start_date=day.start - timedelta(days=1)):
            number = document.raw.get("payment_voucher_number")
            if number:
                cache[str(number)] = document.raw
        ledger.set_cursor(CURSOR_FLOW, marketplace, "iv01_documents", cache)
    documents = [cache[n] for n in numbers if n in cache]
    cycles = sorted(set(payments["billing_cycle_id"].dropna().astype(str)) - {""})
    cycle_lines = [
        t.raw for chunk in _chunks(cycles)
        for t in mirakl.iter_transactions(seller_billing_cycle_id=chunk, date_created_to=day.end, limit=TL02_PAGE)
    ]
    stage.save("day_new_orders", new_orders)
    return {"day_lines": stage.save_lines("day_lines", frame), "documents": stage.save("documents", documents),
            "cycle_lines": stage.save("cycle_lines", cycle_lines), "payouts": len(numbers),
            "source": source}


def _order_ids(lines: pd.DataFrame) -> list[str]:
    return sorted(set(lines["order_id"].dropna().astype(str)) - {""})


def extract_woocommerce(woo: Any, ledger: Any, marketplace: str, day: Day, grace_days: int,
                        stage: Stage) -> dict[str, int]:
    """The WooCommerce side: the day's Mirakl orders, orders shipped ``grace_days`` ago, the day's refunds."""
    day_orders = _order_ids(stage.lines("day_lines"))
    pairs = []
    for order_id in day_orders:
        record = ledger.get_order(marketplace, order_id)
        if record is not None and record.woo_order_id:
            pairs.append((order_id, int(record.woo_order_id)))
    orders: dict[int, dict] = {}

    def fetch(ids: Iterable[int]) -> None:
        wanted = sorted({int(i) for i in ids} - set(orders))
        for chunk in _chunks(wanted):
            for order in woo.iter_orders(include=",".join(str(i) for i in chunk)):
                orders[int(order["id"])] = order

    fetch(w for _, w in pairs)
    window = day.start - timedelta(days=grace_days)
    for order in woo.iter_orders(status=["completed"], modified_after=window):
        completed = _utc(_pd().Series([order.get("date_completed_gmt") or order.get("date_completed")])).iloc[0]
        if (_meta(order.get("meta_data"), META_MARKETPLACE) == marketplace
                and _pd().notna(completed) and window <= completed < window + timedelta(days=1)):
            orders[int(order["id"])] = order
    refunds = []
    for refund in woo.iter_refunds(modified_after=day.start):
        created = _utc(_pd().Series([refund.get("date_created_gmt") or refund.get("date_created")])).iloc[0]
        if _pd().notna(created) and day.start <= created < day.end:
            refunds.append(refund)
    fetch(r["parent_id"] for r in refunds if r.get("parent_id"))
    marketplace_orders = [o for o in orders.values() if _meta(o.get("meta_data"), META_MARKETPLACE) == marketplace]
    pairs += [(str(_meta(o["meta_data"], META_ORDER_ID)), int(o["id"])) for o in marketplace_orders]
    refunds = [r for r in refunds if int(r.get("parent_id") or 0) in {int(o["id"]) for o in marketplace_orders}]
    # staged as their typed lines: a day's quarter of a million orders read back as JSON costs ~500 MB
    woo_lines = woo_lines_frame(sorted(marketplace_orders, key=lambda o: o["id"]), marketplace)
    stage.save_lines("woo_lines", woo_lines)
    return {"woo_orders": len(marketplace_orders),
            "woo_refunds": stage.save("woo_refunds", refunds),
            "ledger": stage.save("ledger", sorted(set(pairs)))}


def extract_mirakl_history(mirakl: Any, marketplace: str, day: Day, grace_days: int, stage: Stage) -> dict[str, int]:
    """TL02 lines up to the day's end of the day's orders (commission to date) and of the WooCommerce
    orders shipped ``grace_days`` ago (have they reached Mirakl?)."""
    woo = stage.frame("woo_lines")
    window = day.start - timedelta(days=grace_days)
    shipped = woo.loc[(woo["date_completed"] >= window) & (woo["date_completed"] < window + timedelta(days=1)),
                      "mirakl_order_id"]
    day_lines = stage.lines("day_lines")
    ids = sorted(set(_order_ids(day_lines)) | set(shipped.dropna().astype(str)))
    # an order created during the day has no line before it: its history is its lines of the day
    new = set(stage.load("day_new_orders")) & set(ids)
    older = [i for i in ids if i not in new]
    history = transactions_frame(
        t.raw for chunk in _chunks(older)
        for t in mirakl.iter_transactions(order_id=chunk, date_created_to=day.end, limit=TL02_PAGE)
    )
    frames = [day_lines.loc[day_lines["order_id"].isin(new)], history]
    lines = concat_lines([f for f in frames if len(f)] or [history])
    return {"history_lines": stage.save_lines("history_lines", lines), "orders": len(ids),
            "read_by_tl02": len(older)}


def write_back_commissions(woo: Any, commissions: pd.DataFrame, day: Day) -> dict[str, int]:
    """Commission to date as meta on each WooCommerce order; a backfill of an older day never
    overwrites what a later day wrote."""
    done = 0
    newer = commissions["commission_as_of"].fillna("") > day.day.isoformat()
    for row in commissions[~newer].to_dict("records"):  # one PUT per order: I/O, not the join
        woo.update_order(int(row["woo_order_id"]), {"meta_data": [
            {"key": META_COMMISSION, "value": str(to_decimal(row["commission"]))},
            {"key": META_COMMISSION_TAX, "value": str(to_decimal(row["commission_tax"]))},
            {"key": META_COMMISSION_CURRENCY, "value": row["currency"]},
            {"key": META_COMMISSION_AS_OF, "value": day.day.isoformat()},
        ]})
        done += 1
    return {"written": done, "skipped_newer": int(newer.sum())}
