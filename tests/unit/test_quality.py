"""Data-quality checks and the alert digest as pure functions: snapshot rows, suites, digest policy."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from include.woo_mirakl.config import Marketplace
from include.woo_mirakl.digest import DigestPolicy, build_digest, render_digest
from include.woo_mirakl.ledger import ActionRecord, ExceptionRecord, OfferStateRecord, OrderRecord
from include.woo_mirakl.quality import (
    QualityConfigError,
    Snapshot,
    StatusMap,
    build_frames,
    load_suites,
    run_suites,
)
from include.woo_mirakl.stock import WooItem

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
MP = Marketplace(name="sandbox", mirakl_conn_id="mirakl_sandbox", safety_buffer=1)


def order(order_id: str, state: str, *, woo_id: int | None = None, decision: str | None = None,
          changed: timedelta = timedelta(hours=2), acceptance_in: timedelta | None = None,
          shipping_in: timedelta | None = None) -> OrderRecord:
    at = NOW - changed
    return OrderRecord(
        marketplace="sandbox", mirakl_order_id=order_id, commercial_id=None, mirakl_state=state, woo_order_id=woo_id,
        woo_status=None, currency="EUR", total_price=Decimal("10"),
        acceptance_deadline=NOW + acceptance_in if acceptance_in is not None else None,
        shipping_deadline=NOW + shipping_in if shipping_in is not None else None,
        decision=decision, decided_at=None, last_mirakl_update=at, detail=None, created_at=at, updated_at=at,
    )


def item(sku: str, stock: int | None) -> WooItem:
    return WooItem(id=abs(hash(sku)) % 10_000, sku=sku, type="simple", status="publish", manage_stock=True,
                   stock_quantity=stock, stock_status="instock", price=Decimal("9.90"))


def offer_state(sku: str, accepted: int | None, pending: str | None = None) -> OfferStateRecord:
    return OfferStateRecord(marketplace="sandbox", sku=sku, last_pushed_quantity=accepted, last_pushed_price=None,
                            last_accepted_quantity=accepted, last_accepted_price=None,
                            pending_quantity_import_id=pending, pending_price_import_id=None, last_error=None,
                            updated_at=NOW)


def action(key: str, minutes: int, state: str = "intent", attempts: int = 1) -> ActionRecord:
    return ActionRecord(idempotency_key=key, marketplace="sandbox", kind="woo.orders.create", target="O-1",
                        request_digest="d", state=state, outcome=None, error=None, retryable=None, attempts=attempts,
                        started_at=NOW - timedelta(minutes=minutes), finished_at=None, last_attempt_at=NOW)


def woo_order(woo_id: int, mirakl_id: str, status: str) -> dict:
    return {"id": woo_id, "status": status, "date_modified_gmt": (NOW - timedelta(hours=2)).isoformat(),
            "mirakl_order_id": mirakl_id}


@pytest.fixture(scope="module")
def status_map() -> StatusMap:
    return StatusMap.load()


def drifting_snapshot() -> Snapshot:
    """One case of every kind, next to a healthy twin that must not be reported."""
    return Snapshot(
        marketplace="sandbox",
        taken_at=NOW,
        orders=[
            order("OK-SHIPPING", "SHIPPING", woo_id=1, decision="accepted", shipping_in=timedelta(days=1)),
            order("DRIFT-SHIPPED", "SHIPPED", woo_id=2, decision="accepted"),
            order("FRESH-SHIPPED", "SHIPPED", woo_id=3, decision="accepted", changed=timedelta(minutes=5)),
            order("LATE-SHIP", "SHIPPING", woo_id=4, decision="accepted", shipping_in=-timedelta(hours=3)),
            order("NEAR-DEADLINE", "WAITING_ACCEPTANCE", acceptance_in=timedelta(minutes=40)),
            order("FAR-DEADLINE", "WAITING_ACCEPTANCE", acceptance_in=timedelta(hours=20)),
            order("NO-WOO", "WAITING_DEBIT_PAYMENT", decision="accepted"),
            order("DUPED", "SHIPPING", woo_id=5, decision="accepted", shipping_in=timedelta(days=1)),
        ],
        woo_orders=[
            woo_order(1, "OK-SHIPPING", "processing"), woo_order(2, "DRIFT-SHIPPED", "processing"),
            woo_order(3, "FRESH-SHIPPED", "processing"), woo_order(4, "LATE-SHIP", "processing"),
            woo_order(5, "DUPED", "processing"), woo_order(6, "DUPED", "on-hold"),
        ],
        woo_items=[item("SKU-OK", 11), item("SKU-ONLY-WOO", 3), item("SKU-DRIFT", 8), item("SKU-PENDING", 9),
                   item("SKU-PUSHED-GONE-MIRAKL", 4)],
        offers={"SKU-OK": 10, "SKU-ONLY-MIRAKL": 2, "SKU-DRIFT": 5, "SKU-PENDING": 1},
        offer_states={"SKU-OK": offer_state("SKU-OK", 10), "SKU-DRIFT": offer_state("SKU-DRIFT", 7),
                      "SKU-PENDING": offer_state("SKU-PENDING", 1, pending="imp-9"),
                      "SKU-PUSHED-GONE-MIRAKL": offer_state("SKU-PUSHED-GONE-MIRAKL", 3)},
        demand={},
        stuck=[action("create:STUCK", 40), action("create:YOUNG", 3),
               action("or28:UNKNOWN", 45, "uncertain", attempts=9), action("or28:RECENT", 20, "uncertain")],
    )


def test_status_map_judges_pairs_with_grace_and_transitional_statuses(status_map):
    assert status_map.agrees("SHIPPED", "completed", 600) is True
    assert status_map.agrees("SHIPPED", "processing", 5) is True, "inside the grace period"
    assert status_map.agrees("SHIPPED", "processing", 45) is False
    assert status_map.agrees("SHIPPING", "completed", 10) is True, "OR24 not sent yet"
    assert status_map.agrees("SHIPPING", "completed", 31) is False
    assert status_map.agrees("CANCELED", "processing", 60) is False, "cancelled on one side only"
    assert status_map.agrees("WAITING_ACCEPTANCE", None, 600) is True
    assert status_map.agrees("SOMETHING_NEW", "processing", 600) is None


def test_a_status_map_without_rules_is_refused(tmp_path):
    bad = tmp_path / "status_map.yaml"
    bad.write_text("states:\n  SHIPPED: completed\n")
    with pytest.raises(QualityConfigError, match="SHIPPED.*'woo' list"):
        StatusMap.load(bad)


def test_frames_carry_the_derived_columns(status_map):
    frames = build_frames(drifting_snapshot(), MP, status_map)
    orders = {r["mirakl_order_id"]: r for r in frames["orders"]}
    skus = {r["sku"]: r for r in frames["skus"]}

    assert orders["DRIFT-SHIPPED"]["status_consistent"] is False
    assert orders["DRIFT-SHIPPED"]["drift_minutes"] == 120.0
    assert orders["NEAR-DEADLINE"]["acceptance_hours_left"] == pytest.approx(0.67)
    assert orders["OK-SHIPPING"]["acceptance_hours_left"] is None
    assert orders["LATE-SHIP"]["shipping_hours_left"] == -3.0
    assert orders["NO-WOO"]["has_woo_order"] is False
    assert orders["NEAR-DEADLINE"]["has_woo_order"] is None, "not accepted yet: nothing to have"
    assert skus["SKU-OK"]["expected_quantity"] == 10, "stock 11 minus the safety buffer of 1"
    assert skus["SKU-PENDING"]["expected_quantity"] is None and skus["SKU-PENDING"]["last_accepted_quantity"] is None
    assert skus["SKU-ONLY-WOO"]["woo_quantity"] is not None and skus["SKU-ONLY-WOO"]["mirakl_quantity"] is None


def test_every_order_past_acceptance_needs_a_woocommerce_order_whoever_accepted_it(status_map):
    """Item 4 of #15: accepted in the Mirakl back office or by auto-accept, so never decided here."""
    snapshot = Snapshot(
        marketplace="sandbox", taken_at=NOW,
        orders=[order("OUT-SHIPPED", "SHIPPED"), order("OUT-SHIPPING", "SHIPPING"),
                order("OUT-BY-HAND", "SHIPPING"), order("OUT-JUST-NOW", "SHIPPING", changed=timedelta(minutes=3)),
                order("MIRAKL-AHEAD", "SHIPPING", changed=timedelta(minutes=3)),
                order("REFUSED", "REFUSED", decision="refused"), order("WAITING", "WAITING_ACCEPTANCE")],
        woo_orders=[woo_order(7, "OUT-BY-HAND", "processing")],  # created by hand, not linked in the ledger
        woo_items=[], offers={}, offer_states={}, demand={}, stuck=[],
        mirakl_now=None,
    )
    rows = {r["mirakl_order_id"]: r["has_woo_order"] for r in build_frames(snapshot, MP, status_map)["orders"]}
    assert rows == {"OUT-SHIPPED": False, "OUT-SHIPPING": False, "OUT-BY-HAND": True,
                    "OUT-JUST-NOW": None,  # the orders flow adopts it in its next runs
                    "MIRAKL-AHEAD": None, "REFUSED": None, "WAITING": None}
    ahead = Snapshot(**{**snapshot.__dict__, "mirakl_now": NOW + timedelta(minutes=10)})
    judged = {r["mirakl_order_id"]: r["has_woo_order"] for r in build_frames(ahead, MP, status_map)["orders"]}
    assert judged["MIRAKL-AHEAD"] is False, "Mirakl's clock is ahead of ours: judged by Mirakl's"
    findings = run_suites(build_frames(snapshot, MP, status_map), load_suites())
    assert sorted(f.key for f in findings if f.kind == "woo_order_missing") == ["OUT-SHIPPED", "OUT-SHIPPING"]
    assert {f.severity for f in findings if f.kind == "woo_order_missing"} == {"critical"}


def test_the_suites_report_every_drift_and_nothing_healthy(status_map):
    """SKUs on one side only (SKU-ONLY-WOO, SKU-ONLY-MIRAKL, SKU-PUSHED-GONE-MIRAKL) are the inventory
    push's exceptions: the suites leave them alone, so each is raised once, under one kind."""
    findings = run_suites(build_frames(drifting_snapshot(), MP, status_map), load_suites())

    assert sorted((f.kind, f.key, f.severity) for f in findings) == [
        ("acceptance_deadline_near", "NEAR-DEADLINE", "critical"),
        ("action_uncertain_too_long", "or28:UNKNOWN", "critical"),
        ("duplicate_woo_order", "DUPED", "critical"),
        ("shipping_deadline_passed", "LATE-SHIP", "error"),
        ("status_drift", "DRIFT-SHIPPED", "warning"),
        ("stock_drift", "vs_pushed:SKU-DRIFT", "warning"),
        ("stock_drift", "vs_woocommerce:SKU-DRIFT", "warning"),
        ("stuck_action", "create:STUCK", "error"),
        ("stuck_action", "or28:RECENT", "error"),
        ("stuck_action", "or28:UNKNOWN", "error"),
        ("woo_order_missing", "NO-WOO", "critical"),
    ]
    drift = next(f for f in findings if f.kind == "status_drift")
    assert drift.detail["woo_status"] == "processing" and drift.detail["mirakl_state"] == "SHIPPED"
    assert drift.detail["drift_minutes"] == 120.0


def exception(kind: str, key: str, *, severity: str = "warning", status: str = "open",
              notified: timedelta | None = None) -> ExceptionRecord:
    return ExceptionRecord(
        id=abs(hash((kind, key))) % 100_000, marketplace="sandbox", kind=kind, key=key, detail={"sku": key},
        severity=severity, status=status, count=1, first_seen=NOW - timedelta(hours=1), last_seen=NOW,
        opened_at=NOW - timedelta(hours=1), resolved_at=None, acknowledged_by=None, acknowledged_at=None,
        notified_at=NOW - notified if notified is not None else None,
    )


def test_the_digest_takes_new_and_quiet_period_expired_exceptions_critical_first():
    policy = DigestPolicy(quiet_period=timedelta(hours=4))
    exceptions = [
        exception("stock_drift", "NEW"),
        exception("stock_drift", "ALERTED-RECENTLY", notified=timedelta(hours=1)),
        exception("stock_drift", "ALERTED-LONG-AGO", notified=timedelta(hours=5)),
        exception("stock_drift", "ACKED", status="acknowledged"),
        exception("order_reservation_failed", "O-9", severity="error"),
    ]

    digest = build_digest("sandbox", exceptions, NOW, policy)
    subject, body = render_digest(digest, NOW, run_id="r1", page_url="http://airflow/woo-mirakl/")

    assert [e.key for e in digest.critical] == ["O-9"]
    assert [e.key for e in digest.regular] == ["ALERTED-LONG-AGO", "NEW"]
    assert subject.startswith("[woo-mirakl] sandbox: 1 critical, 3 exception(s)")
    assert body.splitlines()[0].startswith("- CRITICAL order_reservation_failed O-9: open 60 min")
    assert "ALERTED-LONG-AGO: open 60 min (still open)" in body
    assert "Operations page: http://airflow/woo-mirakl/" in body


def test_a_negative_quiet_period_is_refused():
    with pytest.raises(ValueError, match="quiet period"):
        DigestPolicy(quiet_period=timedelta(minutes=-1))
