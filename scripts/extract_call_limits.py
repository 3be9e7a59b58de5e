"""Extract Mirakl's published maximum call frequencies from the seller OpenAPI spec.

Each operation's description carries a ``<div class="max-call-frequency">`` block such
as "Maximum usage: Once per minute" or "20 times per min, 60 times per hour". This
script turns those into ``[count, seconds]`` windows and writes
``include/config/mirakl_call_limits.yaml``; ``tests/unit/test_call_limits.py`` re-runs
it and fails when the committed file drifts from the spec.

Rules, so the output can be checked by hand:
- the first persona block ("Default") gives ``limits``; any other persona block (OR11's
  "External Partner") is written under ``personas`` with its own limits and variants;
- a clause labelled ``X: ...`` is a *variant* (OR11 Asynchronous/Synchronous, OF51
  Differential/Full); ``limits`` is the union of every window, i.e. the strictest;
- clauses without a time unit ("at each order page display", "100 orders per call")
  carry no limit;
- "as many times as there are ... pages returned" sets ``pages_free``: only the first
  page of a listing counts (IV01, SBC11).

Usage: python scripts/extract_call_limits.py [--spec PATH] [--out PATH] [--check]
"""
from __future__ import annotations

import argparse
import html
import json
import os
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = Path(
    os.environ.get("MIRAKL_SPEC_PATH", ROOT / "include" / "config" / "reference" / "mirakl-mmp-seller-openapi.json")
)
DEFAULT_OUT = ROOT / "include" / "config" / "mirakl_call_limits.yaml"

_MAX_BLOCK = re.compile(r'<div class="max-call-frequency">(.*?)</div>', re.S)
_UNIT_SECONDS = {"second": 1, "sec": 1, "min": 60, "minute": 60, "hour": 3600, "day": 86400}
_WINDOW = re.compile(
    r"\b(?:(once|\d+)\s*(?:times|calls)?\s+)?(per|a|every)\s+(?:(\d+)\s+)?(second|sec|minute|min|hour|day)s?\b",
    re.I,
)
_LABEL = re.compile(r"^\s*-?\s*([A-Za-z][A-Za-z ]*?)\s*:\s*(.*)$")
_PERSONA = re.compile(r'<div>([^<:]+):</div><div class="persona-specific-call-frequency">(.*?)</div>\s*</div>', re.S)


def _clean(block: str) -> str:
    text = re.sub(r"<br\s*/?>", "\n", block)
    text = html.unescape(re.sub(r"<[^>]+>", " ", text))
    text = re.sub(r"^\s*Maximum usage:\s*", "", text.strip())
    return text


def parse_windows(clause: str) -> list[list[int]]:
    """``[[count, seconds], ...]`` for every frequency phrase in one clause."""
    windows = []
    for match in _WINDOW.finditer(clause):
        count_text, keyword, multiplier, unit = match.groups()
        if count_text is None and keyword.lower() != "every":
            continue  # "per day" without a count is not a frequency
        count = 1 if count_text is None or count_text.lower() == "once" else int(count_text)
        seconds = _UNIT_SECONDS[unit.lower()] * (int(multiplier) if multiplier else 1)
        windows.append([count, seconds])
    return windows


def parse_max_usage(description: str) -> dict | None:
    """The limit entry for one operation description, or None when it publishes none."""
    blocks = _MAX_BLOCK.findall(description or "")
    if not blocks:
        return None
    entry = _entry(_clean(blocks[0]))
    personas = {}
    for name, block in _PERSONA.findall(description or "")[1:]:
        inner = _MAX_BLOCK.findall(block + "</div>")
        if inner:
            persona = _entry(_clean(inner[0]))
            personas[re.sub(r"\W+", "_", name.strip().lower())] = {
                k: v for k, v in persona.items() if k in ("limits", "variants")}
    if personas:
        entry["personas"] = personas
    return entry


def _entry(text: str) -> dict:
    limits: list[list[int]] = []
    variants: dict[str, list[list[int]]] = {}
    for line in (part.strip() for part in text.split("\n")):
        if not line:
            continue
        label_match = _LABEL.match(line)
        label, body = (label_match.group(1).strip().lower(), label_match.group(2)) if label_match else (None, line)
        windows = [w for clause in re.split(r",|\band\b", body) for w in parse_windows(clause)]
        if label is not None:
            variants[label] = windows
        for window in windows:
            if window not in limits:
                limits.append(window)
    entry: dict = {"published": " ".join(text.split()), "limits": sorted(limits, key=lambda w: (w[1], w[0]))}
    if variants:
        entry["variants"] = variants
    if re.search(r"as many times as there are .*pages? returned", text, re.I):
        entry["pages_free"] = True
    return entry


def extract(spec: dict) -> dict:
    operations = {}
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict) or "operationId" not in op:
                continue
            entry = parse_max_usage(op.get("description", ""))
            if entry is None:
                continue
            operations[op["operationId"]] = {"method": method.upper(), "path": path, **entry}
    return {"operations": dict(sorted(operations.items()))}


HEADER = (
    "# Mirakl's published maximum call frequency per operation: [count, seconds] windows.\n"
    "# GENERATED by scripts/extract_call_limits.py from mirakl-mmp-seller-openapi.json; do not edit by hand.\n"
)


class _NoAliasDumper(yaml.SafeDumper):
    def ignore_aliases(self, data: object) -> bool:
        return True


def render(spec: dict) -> str:
    body = yaml.dump(
        extract(spec), Dumper=_NoAliasDumper, sort_keys=False, width=200, allow_unicode=True, default_flow_style=None
    )
    return HEADER + body


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--check", action="store_true", help="fail if the committed file differs")
    args = parser.parse_args(argv)
    text = render(json.loads(args.spec.read_text(encoding="utf-8")))
    if args.check:
        if not args.out.exists() or args.out.read_text(encoding="utf-8") != text:
            print(f"{args.out} is out of date: run scripts/extract_call_limits.py", file=sys.stderr)
            return 1
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
