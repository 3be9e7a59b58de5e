"""Finance reports of one reconciled day: CSV files, one XLSX workbook, one HTML page with charts.

Everything for a day lives in ``<root>/reconciliation/<marketplace>/<date>/`` and is written
to a temporary directory first, then swapped in, so a re-run (a backfill) replaces that day
only and a reader never sees half a report. The HTML page is self-contained: its charts are
inline SVG, with no script and no network access.
"""
from __future__ import annotations

import html
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

from include.woo_mirakl.report_labels import label

if TYPE_CHECKING:
    import pandas as pd

    from include.woo_mirakl.reconciliation import Reconciliation

REPORTS_ENV = "WOO_MIRAKL_REPORTS_DIR"
SHEETS = ("summary", "lines", "findings", "payouts")
EXCEL_MAX_ROWS = 1_048_576
TREND_DAYS = 28
SERIES = (("sales", "Sales", "#2b6cb0"), ("commissions", "Commission", "#c05621"), ("payout_paid", "Payout", "#2f855a"))


@dataclass(frozen=True)
class ReportPaths:
    """Where one day's report files are."""

    directory: Path

    @property
    def summary_csv(self) -> Path:
        return self.directory / "summary.csv"

    @property
    def lines_csv(self) -> Path:
        return self.directory / "lines.csv"

    @property
    def findings_csv(self) -> Path:
        return self.directory / "findings.csv"

    @property
    def payouts_csv(self) -> Path:
        return self.directory / "payouts.csv"

    @property
    def workbook(self) -> Path:
        return self.directory / "reconciliation.xlsx"

    @property
    def html(self) -> Path:
        return self.directory / "index.html"


def reports_root() -> Path:
    """``$WOO_MIRAKL_REPORTS_DIR``, else ``reports/`` under ``$WOO_MIRAKL_HOME`` (or the project)."""
    explicit = os.environ.get(REPORTS_ENV)
    if explicit:
        return Path(explicit)
    home = os.environ.get("WOO_MIRAKL_HOME") or Path(__file__).resolve().parents[2]
    return Path(home) / "reports"


def marketplace_dir(marketplace: str, root: Path | None = None) -> Path:
    return (root or reports_root()) / "reconciliation" / marketplace


def day_paths(marketplace: str, day: date, root: Path | None = None) -> ReportPaths:
    return ReportPaths(marketplace_dir(marketplace, root) / day.isoformat())


def write_reports(result: Reconciliation, marketplace: str, day: date, root: Path | None = None) -> ReportPaths:
    """Write the day's CSVs, workbook and HTML page, replacing that day's earlier report if any."""
    final = day_paths(marketplace, day, root)
    parent = final.directory.parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = ReportPaths(parent / f".{day.isoformat()}.{uuid.uuid4().hex}.tmp")
    staging.directory.mkdir()
    try:
        frames = {"summary": result.summary, "lines": result.lines, "findings": result.findings,
                  "payouts": result.payouts}
        for name, frame in frames.items():
            _write_csv(frame, staging.directory / f"{name}.csv")
        _write_workbook(frames, staging.workbook, day)
        trend = load_trend(marketplace, day, result.summary, root)
        with open(staging.html, "w", encoding="utf-8") as fh:
            fh.writelines(html_parts(result, trend, marketplace, day))
        _swap_in(staging.directory, final.directory)
    finally:
        shutil.rmtree(staging.directory, ignore_errors=True)
    return final


def _write_csv(frame: pd.DataFrame, path: Path, rows: int = 20_000) -> None:
    """The frame as CSV, a block of rows at a time, its money (integer cents) written as decimals."""
    with open(path, "w", encoding="utf-8", newline="") as fh:
        for start in range(0, max(len(frame), 1), rows):
            _with_decimals(frame.iloc[start:start + rows]).to_csv(
                fh, index=False, header=start == 0, float_format="%.2f", lineterminator="\n")


def _with_decimals(part: pd.DataFrame) -> pd.DataFrame:
    """A block of a frame with its money columns (integer cents) as Decimal: the report edge."""
    from include.woo_mirakl.reconciliation import MONEY_COLUMNS, to_decimal

    money = [c for c in part.columns if c in MONEY_COLUMNS]
    if not money:
        return part
    part = part.copy()
    for column in money:
        part[column] = _pd_object([to_decimal(v) for v in part[column].tolist()], part.index)
    return part


def _pd_object(values: list, index: Any) -> Any:
    import pandas as pd

    return pd.Series(values, index=index, dtype=object)


def _swap_in(new: Path, final: Path) -> None:
    """Replace ``final`` by ``new``: two renames, so the old report disappears only once the new one is whole."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.{uuid.uuid4().hex}.old")
        final.rename(old)
    new.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_workbook(frames: dict[str, pd.DataFrame], path: Path, day: date) -> None:
    """One sheet per frame, written row by row (openpyxl's write-only mode): a day of a million
    lines has 250,000 order lines, which as in-memory cells would cost gigabytes and minutes."""
    from openpyxl import Workbook
    from openpyxl.utils import get_column_letter

    too_long = [name for name in SHEETS if len(frames[name]) + 1 > EXCEL_MAX_ROWS]
    if too_long:  # as pandas' own writer: say so rather than write a workbook Excel cannot open
        raise ValueError(f"sheets {too_long} exceed Excel's {EXCEL_MAX_ROWS:,} rows")
    book = Workbook(write_only=True)
    book.properties.title = f"Mirakl reconciliation {day.isoformat()}"
    for name in SHEETS:
        frame = frames[name]
        sheet = book.create_sheet(name)
        sheet.freeze_panes = "A2"
        # widths first (they precede the rows in the file): the longest text of each column
        widths = [len(str(c)) for c in frame.columns]
        for block in _column_blocks(frame, missing="", naive=True):  # "" for missing, as pandas writes it
            widths = [max(w, max((len(str(v)) for v in values), default=0)) for w, values in zip(widths, block)]
        for index, width in enumerate(widths, start=1):
            sheet.column_dimensions[get_column_letter(index)].width = min(max(width + 2, 10), 60)
        sheet.append([str(c) for c in frame.columns])
        for block in _column_blocks(frame, missing="", naive=True):
            for row in zip(*block):
                sheet.append(row)
    book.save(path)


def _column_blocks(frame: pd.DataFrame, missing: Any, naive: bool = False, rows: int = 20_000) -> Iterator[list]:
    """The frame's values as Python scalars, a block of rows at a time, column by column; a missing
    value (None, NaN, NA) as ``missing``; with ``naive``, times without their zone (Excel has none);
    money (integer cents, :data:`MONEY_COLUMNS`) as Decimal."""
    import pandas as pd

    from include.woo_mirakl.reconciliation import MONEY_COLUMNS, to_decimal

    for start in range(0, len(frame), rows):
        part = frame.iloc[start:start + rows]
        block = []
        for column in part.columns:
            series = part[column]
            if column in MONEY_COLUMNS:
                block.append([missing if v is None else v for v in map(to_decimal, series.tolist())])
                continue
            if naive and isinstance(series.dtype, pd.DatetimeTZDtype):
                series = series.dt.tz_localize(None)
            block.append(series.astype(object).where(series.notna(), missing).tolist())
        yield block


def read_summary(path: Path) -> dict[str, str]:
    import csv

    with open(path, encoding="utf-8", newline="") as fh:
        return {row["metric"]: row["value"] for row in csv.DictReader(fh)}


def load_trend(marketplace: str, day: date, today: pd.DataFrame, root: Path | None = None) -> list[dict[str, Any]]:
    """Sales, commission and payout of the last :data:`TREND_DAYS` days up to ``day``, from the
    summaries already written (days not reconciled yet are left out, not guessed)."""
    points = []
    base = marketplace_dir(marketplace, root)
    for offset in range(TREND_DAYS - 1, 0, -1):
        past = day - timedelta(days=offset)
        path = base / past.isoformat() / "summary.csv"
        if path.exists():
            values = read_summary(path)
            points.append({"date": past, **{key: Decimal(values.get(key) or 0) for key, _, _ in SERIES}})
    current = dict(zip(today["metric"], today["value"]))
    points.append({"date": day, **{key: Decimal(str(current.get(key) or 0)) for key, _, _ in SERIES}})
    return points


# ---- HTML --------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, (float, Decimal)):
        return f"{value:,.2f}"
    if value is None or (not isinstance(value, str) and value != value):
        return ""
    return str(value)


def _table(frame: pd.DataFrame, css: str) -> Iterator[str]:
    """The table's HTML in pieces, a block of rows each: a day's order lines are a quarter of a
    million rows, which as one string (and its list of rows) would cost hundreds of megabytes."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    yield f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>'
    for block in _column_blocks(frame, missing=None):
        yield "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>"
                      for row in zip(*block))
    yield "</tbody></table>"


def trend_chart(points: list[dict[str, Any]], width: int = 760, height: int = 260) -> str:
    """Grouped bars per day: sales, commission (as a positive cost) and payout, as inline SVG."""
    left, bottom, top = 60, 40, 20
    plot_w, plot_h = width - left - 20, height - bottom - top
    values = [abs(p[key]) for p in points for key, _, _ in SERIES] or [Decimal(0)]
    peak = max(values) or Decimal(1)
    slot = plot_w / max(len(points), 1)
    bar = max(slot / (len(SERIES) + 1), 1.0)
    parts = [f'<svg class="chart" id="chart-trend" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="Daily sales, commission and payout">',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#444"/>',
             f'<text x="{left - 6}" y="{top + 4}" text-anchor="end" font-size="10">{peak:,.0f}</text>',
             f'<text x="{left - 6}" y="{top + plot_h}" text-anchor="end" font-size="10">0</text>']
    for index, point in enumerate(points):
        x0 = left + index * slot + bar / 2
        for series_index, (key, label, colour) in enumerate(SERIES):
            value = abs(point[key])
            h = plot_h * float(value / peak)  # pixels: the only place a float may hold money
            x = x0 + series_index * bar
            parts.append(f'<rect class="bar {key}" x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar:.1f}" '
                         f'height="{h:.1f}" fill="{colour}"><title>{point["date"]:%Y-%m-%d} {label}: '
                         f'{value:,.2f}</title></rect>')
        if len(points) <= 10 or index % 7 == 0 or index == len(points) - 1:
            parts.append(f'<text x="{x0 + bar:.1f}" y="{top + plot_h + 14}" font-size="10" text-anchor="middle">'
                         f'{point["date"]:%m-%d}</text>')
    for series_index, (_, label, colour) in enumerate(SERIES):
        x = left + series_index * 110
        parts.append(f'<rect x="{x}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{x + 14}" y="{height - 5}" font-size="11">{label}</text>')
    parts.append("</svg>")
    return "".join(parts)


def findings_chart(findings: pd.DataFrame, kinds: tuple[str, ...], width: int = 760) -> str:
    """Horizontal bars: how many findings of each kind."""
    counts = findings["kind"].value_counts()
    row_h, left = 24, 240
    height = row_h * len(kinds) + 20
    peak = max([int(counts.get(k, 0)) for k in kinds] + [1])
    parts = [f'<svg class="chart" id="chart-findings" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="Findings by kind">']
    for index, kind in enumerate(kinds):
        count = int(counts.get(kind, 0))
        y = 10 + index * row_h
        w = (width - left - 60) * count / peak
        parts.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" font-size="12">{html.escape(label(kind))}</text>'
                     f'<rect class="bar finding" data-kind="{html.escape(kind)}" x="{left}" y="{y}" width="{w:.1f}" '
                     f'height="{row_h - 6}" fill="#c53030"><title>{html.escape(kind)}: {count}</title></rect>'
                     f'<text x="{left + w + 6:.1f}" y="{y + 15}" font-size="12">{count}</text>')
    parts.append("</svg>")
    return "".join(parts)


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#1a202c}
h1{font-size:22px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{border:1px solid #cbd5e0;padding:3px 6px;text-align:right}th{background:#edf2f7}
td:first-child,th:first-child{text-align:left}
.kpis{display:flex;gap:12px;flex-wrap:wrap}.kpi{border:1px solid #cbd5e0;border-radius:6px;padding:8px 14px}
.kpi b{display:block;font-size:18px}.bad{color:#c53030}
"""


def html_parts(result: Reconciliation, trend: list[dict[str, Any]], marketplace: str, day: date) -> Iterator[str]:
    """The day's HTML page, in pieces to write one after the other."""
    from include.woo_mirakl.reconciliation import FINDING_KINDS

    summary = dict(zip(result.summary["metric"], result.summary["value"]))
    currency = html.escape(str(summary.get("currency", "")))
    kpis = "".join(
        f'<div class="kpi">{label}<b{" class=bad" if key == "findings" and summary.get(key) else ""}>'
        f'{html.escape(_fmt(summary.get(key)))}{" " + currency if key != "findings" else ""}</b></div>'
        for key, label in (("sales", "Sales"), ("commissions", "Commissions"), ("refunds", "Refunds"),
                           ("other_fees", "Other fees"), ("net_amount", "Net of the day"),
                           ("payout_expected", "Payout expected"), ("payout_paid", "Payout paid"),
                           ("findings", "Findings"))
    )
    title = f"Mirakl reconciliation — {html.escape(marketplace)} — {day.isoformat()}"
    yield (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>"
        f'<div class="kpis">{kpis}</div>'
        f"<h2>Daily sales, commission and payout (last {TREND_DAYS} days)</h2>{trend_chart(trend)}"
        f"<h2>Findings by kind</h2>{findings_chart(result.findings, FINDING_KINDS)}"
    )
    yield f"<h2>Findings ({len(result.findings)})</h2>"
    yield from _table(result.findings, "findings")
    yield f"<h2>Payouts ({len(result.payouts)})</h2>"
    yield from _table(result.payouts, "payouts")
    yield "<h2>Summary</h2>"
    yield from _table(result.summary.assign(metric=result.summary["metric"].map(label)), "summary")
    yield f"<h2>Order lines ({len(result.lines)})</h2>"
    yield from _table(result.lines, "lines")
    yield "</body></html>\n"


def email_body(summary_frame: pd.DataFrame, marketplace: str, day: date, paths: ReportPaths) -> str:
    """The finance e-mail: headline figures, findings by kind, where the files are."""
    summary = dict(zip(summary_frame["metric"], summary_frame["value"]))
    rows = "".join(f"<tr><td>{html.escape(label(str(k)))}</td><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in summary.items())
    return (f"<p>Mirakl reconciliation of <b>{html.escape(marketplace)}</b> for <b>{day.isoformat()}</b>: "
            f"{summary.get('findings', 0)} finding(s). The workbook is attached; all files are in "
            f"<code>{html.escape(str(paths.directory))}</code>.</p><table>{rows}</table>")


FINANCE_EMAIL_VARIABLE = "woo_mirakl_finance_email"


def finance_recipient() -> str | None:
    """Variable ``woo_mirakl_finance_email``, else the alert address; None when neither is set."""
    from airflow.sdk import Variable

    from include.woo_mirakl.alerts import EMAIL_VARIABLE

    for name in (FINANCE_EMAIL_VARIABLE, EMAIL_VARIABLE):
        try:
            value = Variable.get(name)
        except Exception:  # a missing variable raises the SDK's own not-found type
            continue
        if value:
            return value
    return None


def send_finance_email(marketplace: str, day: date, paths: ReportPaths, context: dict[str, Any] | None = None) -> bool:
    """E-mail finance the day's summary with the workbook attached; False when no recipient or connection,
    or when sending failed (a warning in the log: the reports are on disk either way)."""
    import logging

    from airflow.sdk import BaseHook

    from include.woo_mirakl.alerts import SMTP_CONN_ID

    log = logging.getLogger(__name__)
    recipient = finance_recipient()
    try:
        BaseHook.get_connection(SMTP_CONN_ID)
    except Exception:  # no mail server configured: the reports are still on disk
        log.info("no %s connection: finance e-mail for %s not sent", SMTP_CONN_ID, day)
        return False
    if not recipient:
        log.info("no finance address (Variable %s): e-mail for %s not sent", FINANCE_EMAIL_VARIABLE, day)
        return False
    import pandas as pd
    from airflow.providers.smtp.notifications.smtp import SmtpNotifier

    from include.woo_mirakl.alerts import redact

    try:
        SmtpNotifier(
            to=recipient, smtp_conn_id=SMTP_CONN_ID, files=[str(paths.workbook)],
            subject=f"[woo-mirakl] Mirakl reconciliation {marketplace} {day.isoformat()}",
            html_content=email_body(pd.read_csv(paths.summary_csv, dtype=str), marketplace, day, paths),
        ).notify(context or {})
    except Exception as exc:  # as alerts: a mail server down must not fail (and retry) a finished reconciliation
        log.warning("finance e-mail for %s %s not sent (%s: %s); the reports are in %s", marketplace,
                    day.isoformat(), type(exc).__name__, redact(str(exc)), paths.directory)
        return False
    return True
