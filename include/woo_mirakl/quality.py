"""Data quality: snapshots of the ledger and both APIs, checked by Great Expectations suites.

:func:`take_snapshot` reads the ledger, the WooCommerce orders carrying a Mirakl order id,
the WooCommerce catalogue and the Mirakl offers (OF21). :func:`build_frames` turns it into
one table per suite, adding the derived columns the suites check (status agreement from the
mapping table in ``include/config/status_map.yaml``, hours left before deadlines, quantities
on both sides). The suites themselves live in ``include/config/expectations/*.json``; each
expectation's ``meta`` names the exception kind its failing rows become.
:func:`run_suites` validates with GX (imported there, ~3 s) and :func:`record_findings` gives
the findings their life cycle in the ledger: opened, seen again, resolved when they clear.
A SKU on one side only is not checked here: the inventory push's full comparison owns it (one
exception per SKU and marketplace, resolved when the SKU appears); the digest carries it.
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from include.woo_mirakl.clients.http import ApiError
from include.woo_mirakl.config import CONFIG_DIR, Marketplace
from include.woo_mirakl.ledger import Ledger, OrderRecord
from include.woo_mirakl.stock import WooItem, offer_target, offer_targets
from include.woo_mirakl.unseen_demand import store_demand, store_of

FLOW = "mirakl_data_quality"
UTC = timezone.utc
STATUS_MAP_FILE = CONFIG_DIR / "status_map.yaml"
SUITES_DIR = CONFIG_DIR / "expectations"
META_ORDER_ID = "_mirakl_order_id"
WOO_ORDER_LOOKBACK = timedelta(days=30)
NOT_ACCEPTED_STATES = ("STAGING", "WAITING_ACCEPTANCE", "REFUSED", "CANCELED")
# An order accepted outside the integration (back office, auto-accept) gets its WooCommerce order
# from the orders flow's next runs (every minute): judged once it has been past acceptance this long.
MISSING_WOO_ORDER_GRACE = timedelta(minutes=10)
SHIPPING_DEADLINE_STATES = ("SHIPPING",)
# A cancelled or trashed extra WooCommerce order ships nothing: it does not count as a duplicate.
VOID_WOO_STATUSES = ("cancelled", "trash", "failed")
# Kinds these checks raised before the inventory push became the one owner of unmatched SKUs:
# resolved on every run, so a ledger from then keeps no duplicate of the push's exception.
RETIRED_KINDS = frozenset({"unmatched_sku", "pushed_sku_missing"})
OPEN_DEMAND_STATES = ("STAGING", "WAITING_ACCEPTANCE", "WAITING_DEBIT", "WAITING_DEBIT_PAYMENT", "SHIPPING")


class QualityConfigError(ValueError):
    """The status map or an expectation suite is malformed."""


# ---- configuration ------------------------------------------------------------------------------

@dataclass(frozen=True)
class StateRule:
    """The WooCommerce statuses that agree with one Mirakl state."""

    woo: frozenset[str | None]
    transitional: Mapping[str, float] = field(default_factory=dict)  # status -> minutes it may last
    grace_minutes: float = 30.0


@dataclass(frozen=True)
class StatusMap:
    """Mirakl order state ↔ WooCommerce status, from ``status_map.yaml``."""

    states: Mapping[str, StateRule]

    @classmethod
    def load(cls, path: Path = STATUS_MAP_FILE) -> StatusMap:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise QualityConfigError(f"cannot read the status map {path}: {exc}") from exc
        if not isinstance(data.get("states"), dict) or not data["states"]:
            raise QualityConfigError(f"{path}: 'states' must map Mirakl states to rules")
        default_grace = float(data.get("grace_minutes", 30))
        states: dict[str, StateRule] = {}
        for state, rule in data["states"].items():
            if not isinstance(rule, dict) or not isinstance(rule.get("woo"), list):
                raise QualityConfigError(f"{path}: state {state!r} needs a 'woo' list of WooCommerce statuses")
            transitional = {str(k): float(v) for k, v in (rule.get("transitional") or {}).items()}
            states[str(state)] = StateRule(
                woo=frozenset(None if s is None else str(s) for s in rule["woo"]),
                transitional=transitional,
                grace_minutes=float(rule.get("grace_minutes", default_grace)),
            )
        return cls(states)

    def agrees(self, mirakl_state: str | None, woo_status: str | None, minutes_since_change: float) -> bool | None:
        """True/False for a known state; None for a state the map does not cover (not judged)."""
        rule = self.states.get(mirakl_state or "")
        if rule is None:
            return None
        if woo_status in rule.woo:
            return True
        if woo_status in rule.transitional:
            return minutes_since_change < rule.transitional[woo_status]
        return minutes_since_change < rule.grace_minutes


@dataclass(frozen=True)
class Suite:
    """One expectation suite definition (see ``include/config/expectations``)."""

    name: str
    frame: str
    key: str
    expectations: list[dict[str, Any]]

    def kinds(self) -> set[str]:
        return {e["meta"]["kind"] for e in self.expectations}


def load_suites(directory: Path = SUITES_DIR) -> list[Suite]:
    suites = []
    for path in sorted(directory.glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise QualityConfigError(f"cannot read the expectation suite {path}: {exc}") from exc
        for expectation in data.get("expectations") or []:
            meta = expectation.get("meta") or {}
            if not meta.get("kind") or meta.get("severity") not in ("info", "warning", "error", "critical"):
                raise QualityConfigError(f"{path}: every expectation needs meta.kind and a valid meta.severity")
        missing = [k for k in ("name", "frame", "key", "expectations") if not data.get(k)]
        if missing:
            raise QualityConfigError(f"{path}: missing {missing}")
        suites.append(Suite(data["name"], data["frame"], data["key"], list(data["expectations"])))
    if not suites:
        raise QualityConfigError(f"no expectation suites (*.json) in {directory}")
    return suites


# ---- snapshot -----------------------------------------------------------------------------------

@dataclass
class Snapshot:
    """What the checks look at, taken at one moment; plain data, no clients."""

    marketplace: str
    taken_at: datetime
    orders: list[OrderRecord]
    woo_orders: list[dict[str, Any]]  # id, status, date_modified_gmt, mirakl_order_id
    woo_items: list[WooItem]
    offers: dict[str, int | None]  # Mirakl shop SKU -> offer quantity
    offer_states: dict[str, Any]  # ledger OfferStateRecord by SKU
    demand: dict[str, int]  # marketplace demand not reserved in WooCommerce yet, by SKU
    stuck: list[Any]  # ledger ActionRecord still in intent / uncertain
    mirakl_now: datetime | None = None  # Mirakl's clock (its Date header), which dates its orders' updates


def _meta(order: Mapping[str, Any], key: str) -> Any:
    return next((m.get("value") for m in order.get("meta_data") or [] if m.get("key") == key), None)


def _iter_catalogue(woo: Any) -> Iterator[WooItem]:
    for product in woo.iter_products():
        if product.get("type") == "variable":
            for variation in woo.iter_variations(int(product["id"])):
                yield WooItem.from_api({**variation, "parent_id": product["id"], "type": "variation"})
        else:
            yield WooItem.from_api(product)


def _woo_orders(woo: Any, ledger_orders: list[OrderRecord], now: datetime) -> list[dict[str, Any]]:
    rows: dict[int, dict[str, Any]] = {}
    for order in woo.iter_orders(modified_after=now - WOO_ORDER_LOOKBACK):
        mirakl_id = _meta(order, META_ORDER_ID)
        if mirakl_id:
            rows[int(order["id"])] = {
                "id": int(order["id"]), "status": order.get("status"),
                "date_modified_gmt": order.get("date_modified_gmt"), "mirakl_order_id": str(mirakl_id),
            }
    # Orders the ledger links to but not modified lately: fetched one by one.
    for record in ledger_orders:
        if record.woo_order_id and record.woo_order_id not in rows:
            try:
                order = woo.get_order(record.woo_order_id)
            except ApiError as exc:
                if exc.status != 404:
                    raise
                order = {}  # deleted in WooCommerce: no status, which the status map flags as drift
            rows[record.woo_order_id] = {
                "id": record.woo_order_id, "status": order.get("status"),
                "date_modified_gmt": order.get("date_modified_gmt"),
                "mirakl_order_id": str(_meta(order, META_ORDER_ID) or record.mirakl_order_id),
            }
    return list(rows.values())


def take_snapshot(
    marketplace: Marketplace, ledger: Ledger, woo: Any, mirakl: Any, status_map: StatusMap,
    now: datetime | None = None, stuck_after: timedelta = timedelta(0),
) -> Snapshot:
    """Read everything the suites need, from the ledger, WooCommerce and Mirakl (OF21)."""
    now = now or datetime.now(UTC)
    name = marketplace.name
    orders = ledger.orders_in_states(name, list(status_map.states))
    offers = {o.shop_sku: o.quantity for o in mirakl.iter_offers() if o.shop_sku}  # its answers date Mirakl's clock
    return Snapshot(
        marketplace=name,
        taken_at=now,
        orders=orders,
        woo_orders=_woo_orders(woo, orders, now),
        woo_items=[item for item in _iter_catalogue(woo) if item.sku and item.is_offer],
        offers=offers,
        mirakl_now=getattr(mirakl, "server_time", None),
        offer_states=ledger.offer_states(name),
        # the store's demand, as the inventory push subtracts it (a sale elsewhere lowers this offer too)
        demand=store_demand(ledger, [m.name for m in store_of(marketplace)], OPEN_DEMAND_STATES),
        stuck=ledger.stuck_actions(stuck_after, marketplace=name),
    )


# ---- frames -------------------------------------------------------------------------------------

def _parse_gmt(value: str | None) -> datetime | None:
    if not value:
        return None
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value else None


def order_rows(snapshot: Snapshot, status_map: StatusMap) -> list[dict[str, Any]]:
    """One row per ledger order; a check's column is None where it does not apply."""
    now = snapshot.taken_at
    # Mirakl dates its updates by its own clock: when ours lags, judge by Mirakl's (as the orders flow does).
    mirakl_now = max(filter(None, (snapshot.mirakl_now, now)))
    woo_by_id = {o["id"]: o for o in snapshot.woo_orders}
    # A WooCommerce order carrying the Mirakl id counts even when the ledger does not link it (made by hand).
    carried = {o["mirakl_order_id"] for o in snapshot.woo_orders if o["status"] not in VOID_WOO_STATUSES}
    rows = []
    for order in snapshot.orders:
        woo = woo_by_id.get(order.woo_order_id) if order.woo_order_id else None
        woo_status = woo["status"] if woo else None
        # The pair has been as it is since the later of the two sides last changed.
        changed = max(
            filter(None, (order.last_mirakl_update, _parse_gmt((woo or {}).get("date_modified_gmt")))),
            default=order.updated_at,
        )
        drift_minutes = round((now - changed).total_seconds() / 60, 1)
        undecided = order.mirakl_state == "WAITING_ACCEPTANCE" and order.decision is None
        # Every order past acceptance needs its WooCommerce order, whoever accepted it (this
        # integration, the Mirakl back office, the operator's auto-accept).
        past_acceptance = order.mirakl_state not in NOT_ACCEPTED_STATES and (
            order.last_mirakl_update is None or mirakl_now - order.last_mirakl_update >= MISSING_WOO_ORDER_GRACE)
        rows.append({
            "mirakl_order_id": order.mirakl_order_id,
            "mirakl_state": order.mirakl_state,
            "decision": order.decision,
            "woo_order_id": order.woo_order_id,
            "woo_status": woo_status,
            "drift_minutes": drift_minutes,
            # A missing WooCommerce order is the integrity check's finding, not a status drift.
            "status_consistent": (
                status_map.agrees(order.mirakl_state, woo_status, drift_minutes) if woo else None
            ),
            "acceptance_deadline": _iso(order.acceptance_deadline),
            "acceptance_hours_left": (
                _hours(order.acceptance_deadline - now) if undecided and order.acceptance_deadline else None
            ),
            "shipping_deadline": _iso(order.shipping_deadline),
            "shipping_hours_left": (
                _hours(order.shipping_deadline - now)
                if order.mirakl_state in SHIPPING_DEADLINE_STATES and order.shipping_deadline else None
            ),
            "has_woo_order": (
                order.woo_order_id is not None or order.mirakl_order_id in carried) if past_acceptance else None,
        })
    return rows


def woo_order_rows(snapshot: Snapshot) -> list[dict[str, Any]]:
    return [
        {"mirakl_order_id": o["mirakl_order_id"], "woo_order_id": o["id"], "woo_status": o["status"]}
        for o in sorted(snapshot.woo_orders, key=lambda o: o["id"])
        if o["status"] not in VOID_WOO_STATUSES
    ]


def sku_rows(snapshot: Snapshot, marketplace: Marketplace) -> list[dict[str, Any]]:
    """One row per SKU on any side, with the quantities to compare."""
    items = {item.sku: item for item in snapshot.woo_items}
    # as the inventory push computes them: a shared stock pool split between the offers Mirakl has
    targets = offer_targets([i for i in items.values() if i.sku in snapshot.offers], marketplace, snapshot.demand)
    rows = []
    for sku in sorted(set(items) | set(snapshot.offers) | set(snapshot.offer_states)):
        item = items.get(sku)
        state = snapshot.offer_states.get(sku)
        pending = bool(state and state.pending_quantity_import_id)
        target = targets.get(sku) or (offer_target(item, marketplace, snapshot.demand.get(sku, 0)) if item else None)
        expected = target.quantity if target else None
        rows.append({
            "sku": sku,
            "woo_quantity": item.stock_quantity if item else None,
            "mirakl_quantity": snapshot.offers.get(sku),
            "last_accepted_quantity": None if pending or not state else state.last_accepted_quantity,
            # While an import is pending Mirakl lags by design: compare only settled SKUs.
            "expected_quantity": None if pending else expected,
        })
    return rows


def action_rows(snapshot: Snapshot) -> list[dict[str, Any]]:
    """Unfinished actions, aged from their first attempt; ``uncertain_minutes`` only for unknown outcomes."""
    rows = []
    for a in snapshot.stuck:
        age = round((snapshot.taken_at - a.started_at).total_seconds() / 60, 1)
        rows.append({
            "idempotency_key": a.idempotency_key, "action_kind": a.kind, "target": a.target, "state": a.state,
            "attempts": a.attempts, "age_minutes": age, "uncertain_minutes": age if a.state == "uncertain" else None,
            "last_attempt_at": _iso(getattr(a, "last_attempt_at", None)),
        })
    return rows


def build_frames(snapshot: Snapshot, marketplace: Marketplace, status_map: StatusMap) -> dict[str, list[dict[str, Any]]]:
    """The tables the suites run over, as rows (turned into DataFrames by :func:`run_suites`)."""
    return {
        "orders": order_rows(snapshot, status_map),
        "woo_orders": woo_order_rows(snapshot),
        "skus": sku_rows(snapshot, marketplace),
        "actions": action_rows(snapshot),
    }


# ---- validation and findings --------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    """One failing row of one expectation: an exception to open or keep open."""

    kind: str
    key: str
    severity: str
    detail: dict[str, Any]


def _jsonable(value: Any) -> Any:
    if isinstance(value, (Decimal, datetime)):
        return str(value)
    if hasattr(value, "item"):  # numpy scalars from the DataFrame
        return value.item()
    return value


def _finding(suite: Suite, expectation: dict[str, Any], row: Mapping[str, Any]) -> Finding:
    meta = expectation["meta"]
    key = f"{meta.get('key_prefix', '')}{row[suite.key]}"
    detail = {suite.key: _jsonable(row[suite.key])}
    detail.update({c: _jsonable(row.get(c)) for c in meta.get("detail", [])})
    detail["expectation"] = expectation["type"]
    detail["suite"] = suite.name
    return Finding(meta["kind"], key, meta["severity"], detail)


def run_suites(frames: Mapping[str, list[dict[str, Any]]], suites: Iterable[Suite]) -> list[Finding]:
    """Validate each frame with its suite in an ephemeral GX context; the failing rows as findings."""
    import great_expectations as gx  # heavy: imported only when the checks run
    import pandas as pd
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    source = context.data_sources.add_pandas(name="woo_mirakl_snapshot")
    findings: list[Finding] = []
    for suite in suites:
        rows = frames.get(suite.frame)
        if rows is None:
            raise QualityConfigError(f"suite {suite.name} checks frame {suite.frame!r}, which no snapshot provides")
        if not rows:
            continue
        frame = pd.DataFrame(rows).astype(object).where(lambda df: df.notna(), None)
        batch = (
            source.add_dataframe_asset(name=suite.frame)
            .add_batch_definition_whole_dataframe(f"{suite.frame}_whole")
            .get_batch(batch_parameters={"dataframe": frame})
        )
        result = batch.validate(
            gx.ExpectationSuite(name=suite.name, expectations=suite.expectations),
            result_format={"result_format": "COMPLETE"},
        )
        for outcome in result.results:
            config = outcome.expectation_config
            if outcome.exception_info and outcome.exception_info.get("raised_exception"):
                raise QualityConfigError(
                    f"suite {suite.name}: {config.type} could not run: {outcome.exception_info.get('exception_message')}"
                )
            if outcome.success:
                continue
            expectation = _match_expectation(suite, config)
            for index in outcome.result.get("unexpected_index_list") or []:
                findings.append(_finding(suite, expectation, rows[int(index)]))
    unique: dict[tuple[str, str], Finding] = {}
    for finding in findings:  # a duplicated key fails once per row: one finding per key
        unique.setdefault((finding.kind, finding.key), finding)
    return list(unique.values())


def _match_expectation(suite: Suite, config: Any) -> dict[str, Any]:
    """The suite entry a GX result came from (its meta travels with the config)."""
    meta = dict(config.meta or {})
    for expectation in suite.expectations:
        if expectation["type"] == config.type and expectation["meta"] == meta:
            return expectation
    raise QualityConfigError(f"suite {suite.name}: result for {config.type} matches no expectation")


def record_findings(
    ledger: Ledger, marketplace: str, findings: Iterable[Finding], kinds: Iterable[str]
) -> dict[str, int]:
    """Open or bump each finding; resolve exceptions of the checked `kinds` that did not recur."""
    counts = {"opened": 0, "seen_again": 0, "resolved": 0}
    keys: dict[str, set[str]] = {kind: set() for kind in kinds}
    for finding in findings:
        record = ledger.raise_exception(finding.kind, finding.key, finding.detail, marketplace, severity=finding.severity)
        counts["opened" if record.newly_opened else "seen_again"] += 1
        keys.setdefault(finding.kind, set()).add(finding.key)
    for kind, still_open in keys.items():
        counts["resolved"] += len(ledger.resolve_missing(kind, marketplace, still_open))
    return counts


def run_checks(
    marketplace: Marketplace, ledger: Ledger, woo: Any, mirakl: Any, now: datetime | None = None
) -> dict[str, int]:
    """Snapshot, validate every suite, record the findings; counts for the XCom."""
    status_map = StatusMap.load()
    suites = load_suites()
    snapshot = take_snapshot(marketplace, ledger, woo, mirakl, status_map, now)
    findings = run_suites(build_frames(snapshot, marketplace, status_map), suites)
    kinds = set().union(*(s.kinds() for s in suites)) | RETIRED_KINDS
    counts = record_findings(ledger, marketplace.name, findings, kinds)
    return {"findings": len(findings), **counts}
