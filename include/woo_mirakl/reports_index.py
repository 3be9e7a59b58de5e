"""The finance reports on disk, per marketplace and day, for the reports page."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable

from include.woo_mirakl.report_labels import label

# File name -> what finance sees on the link, in the order shown.
FILES = {
    "index.html": "HTML report",
    "reconciliation.xlsx": "Excel workbook",
    "summary.csv": "Summary (CSV)",
    "findings.csv": "Findings (CSV)",
    "payouts.csv": "Payouts (CSV)",
    "lines.csv": "Order lines (CSV)",
}
FIGURES = ("sales", "commissions", "refunds", "payout_paid", "findings")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def report_file(marketplace: str, day: str, name: str, marketplaces: Iterable[str], root: Path | None = None) -> Path | None:
    """The file of one day's report, or None when the request names anything but a known report file."""
    from include.woo_mirakl.finance_reports import marketplace_dir

    if marketplace not in set(marketplaces) or not DAY.match(day) or name not in FILES:
        return None
    path = marketplace_dir(marketplace, root) / day / name
    return path if path.is_file() else None


def list_reports(marketplaces: Iterable[str], root: Path | None = None) -> list[dict[str, Any]]:
    """Per marketplace, its report days (newest first) with their files and headline figures in plain words."""
    from include.woo_mirakl.finance_reports import marketplace_dir, read_summary

    listed = []
    for marketplace in marketplaces:
        days = []
        folder = marketplace_dir(marketplace, root)
        for directory in sorted((d for d in folder.iterdir() if d.is_dir() and DAY.match(d.name)) if folder.is_dir()
                                else [], reverse=True):
            summary = read_summary(directory / "summary.csv") if (directory / "summary.csv").exists() else {}
            days.append({
                "day": directory.name,
                "files": [(name, text) for name, text in FILES.items() if (directory / name).is_file()],
                "currency": summary.get("currency", ""),
                "figures": [(label(key), summary.get(key, "")) for key in FIGURES],
            })
        listed.append({"marketplace": marketplace, "days": days})
    return listed
