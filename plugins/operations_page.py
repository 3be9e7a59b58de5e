"""The WooCommerce ⇄ Mirakl operations page: an Airflow 3 UI plugin (FastAPI app + navigation entry).

Per marketplace: open exceptions (filter by kind and age, acknowledge), the last successful
run of each flow, the order funnel, stock drift and unmatched SKUs — all read from the
ledger, never from connections, so no secret can reach the page.

Airflow mounts plugin apps without its own authentication, so every route here requires the
user of Airflow's session (the ``_token`` cookie the UI sets, or a Bearer JWT) and asks
Airflow's auth manager for permission; acknowledging needs DAG edit rights and a custom
header that a cross-site form cannot send (CSRF).
"""
from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse

URL_PREFIX = "/woo-mirakl"
ACK_HEADER = "X-Woo-Mirakl-Ack"
FUNNEL = {  # funnel step -> Mirakl order states
    "waiting": ("STAGING", "WAITING_ACCEPTANCE"),
    "accepted": ("WAITING_DEBIT", "WAITING_DEBIT_PAYMENT"),
    "shipping": ("SHIPPING",),
    "shipped": ("SHIPPED", "TO_COLLECT", "RECEIVED", "CLOSED"),
    "refunded": ("REFUNDED",),
    "cancelled or refused": ("CANCELED", "REFUSED"),
}
STOCK_KINDS = ("stock_drift", "unmatched_sku", "pushed_sku_missing",
               "unmatched_sku_missing_in_mirakl", "unmatched_sku_missing_in_woocommerce")


def _ledger_from_airflow() -> Any:
    """The ledger named by the Airflow connection, resolved on the API server (not in a task)."""
    from airflow.models.connection import Connection

    from include.woo_mirakl.ledger import DEFAULT_CONN_ID, Ledger, ledger_url_from_connection

    conn = Connection.get_connection_from_secrets(DEFAULT_CONN_ID)
    return Ledger.from_url(ledger_url_from_connection(conn))


def _marketplace_names() -> list[str]:
    from include.woo_mirakl.config import load_marketplaces

    return [m.name for m in load_marketplaces()]


# ---- authentication and authorisation through Airflow's auth manager ------------------------

def current_user(request: Request) -> Any:
    """Stands for Airflow's `get_user` (bound in `create_app`) so tests can override one name."""
    raise NotImplementedError


def reader(user: Any = Depends(current_user)) -> Any:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import AccessView

    if not get_auth_manager().is_authorized_view(access_view=AccessView.PLUGINS, user=user):
        raise HTTPException(status_code=403, detail="Forbidden")
    return user


def editor(request: Request, user: Any = Depends(current_user)) -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    if request.headers.get(ACK_HEADER) != "1":
        raise HTTPException(status_code=400, detail=f"acknowledging needs the {ACK_HEADER} header (sent by the page)")
    if not get_auth_manager().is_authorized_dag(method="PUT", user=user):
        raise HTTPException(status_code=403, detail="Forbidden: acknowledging needs DAG edit permission")
    return user


# ---- the view model -------------------------------------------------------------------------

def _age_hours(now: dt.datetime, since: dt.datetime) -> float:
    return round((now - since).total_seconds() / 3600, 1)


def _exception_row(e: Any, now: dt.datetime) -> dict[str, Any]:
    return {
        "id": e.id, "kind": e.kind, "key": e.key, "severity": e.severity, "status": e.status, "count": e.count,
        "age_hours": _age_hours(now, e.first_seen), "first_seen": e.first_seen.isoformat(),
        "last_seen": e.last_seen.isoformat(), "detail": e.detail or {},
        "acknowledged_by": e.acknowledged_by,
    }


def marketplace_summary(
    ledger: Any, marketplace: str, *, kind: str | None = None, min_age_hours: float = 0.0, funnel_days: int = 7,
    now: dt.datetime | None = None,
) -> dict[str, Any]:
    """Everything the page shows for one marketplace, as plain JSON-able data."""
    now = now or dt.datetime.now(dt.timezone.utc)
    every = [_exception_row(e, now) for e in ledger.open_exceptions(marketplace)]
    shown = [r for r in every if (kind is None or r["kind"] == kind) and r["age_hours"] >= min_age_hours]
    counts = ledger.order_counts_by_state(marketplace, since=now - dt.timedelta(days=funnel_days))
    funnel = {step: sum(counts.get(s, 0) for s in states) for step, states in FUNNEL.items()}
    return {
        "marketplace": marketplace,
        "exceptions": shown,
        "kinds": sorted({r["kind"] for r in every}),
        "open_count": len(every),
        "runs": [
            {"flow": s.flow, "last_success_at": s.last_success_at.isoformat() if s.last_success_at else None,
             "last_failure_at": s.last_failure_at.isoformat() if s.last_failure_at else None,
             "last_run_id": s.last_run_id}
            for s in ledger.sync_status(marketplace)
        ],
        "funnel": funnel,
        "funnel_days": funnel_days,
        "stock": [r for r in every if r["kind"] in STOCK_KINDS],
    }


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Woo ⇄ Mirakl operations</title>
<style>
 body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2433}
 table{border-collapse:collapse;margin:.5rem 0 1.5rem;width:100%}
 th,td{border-bottom:1px solid #d6dbe4;padding:.3rem .5rem;text-align:left;font-size:.9rem;vertical-align:top}
 th{background:#f2f4f8} .critical{color:#b00020;font-weight:600} .acknowledged{color:#6b7280}
 .funnel span{display:inline-block;margin-right:1.2rem} code{font-size:.8rem}
 form.filter{margin:.5rem 0} h2{margin-top:2rem;border-bottom:2px solid #1d2433}
</style></head><body>
<h1>WooCommerce ⇄ Mirakl operations</h1>
<p><a href="/woo-mirakl-connect/" target="_top">Mirakl connections: Connect to Mirakl / Reconnect</a></p>
<form class="filter" method="get">
 Kind <select name="kind"><option value="">all</option>
 {% for k in all_kinds %}<option value="{{ k }}"{% if k == kind %} selected{% endif %}>{{ k }}</option>{% endfor %}
 </select>
 older than <input name="min_age_hours" type="number" step="0.5" min="0" value="{{ min_age_hours }}"> h
 <button type="submit">Filter</button>
</form>
{% for m in marketplaces %}
<section data-marketplace="{{ m.marketplace }}">
<h2>{{ m.marketplace }} — {{ m.open_count }} open exception(s)</h2>
<h3>Open exceptions</h3>
<table class="exceptions"><tr><th>Kind</th><th>Key</th><th>Severity</th><th>Age (h)</th><th>Seen</th><th>Detail</th><th>Status</th></tr>
{% for e in m.exceptions %}
<tr class="{{ e.severity }} {{ e.status }}" data-exception-id="{{ e.id }}">
 <td>{{ e.kind }}</td><td>{{ e.key }}</td><td>{{ e.severity }}</td><td>{{ e.age_hours }}</td><td>{{ e.count }}×</td>
 <td><code>{% for k, v in e.detail.items() %}{{ k }}={{ v }} {% endfor %}</code></td>
 <td>{% if e.status == "open" %}<button class="ack" data-id="{{ e.id }}">Acknowledge</button>
 {% else %}acknowledged by {{ e.acknowledged_by }}{% endif %}</td></tr>
{% else %}<tr><td colspan="7">Nothing needs a human.</td></tr>{% endfor %}
</table>
<h3>Last successful run per flow</h3>
<table class="runs"><tr><th>Flow</th><th>Last success</th><th>Last failure</th></tr>
{% for r in m.runs %}<tr><td>{{ r.flow }}</td><td>{{ r.last_success_at or "never" }}</td><td>{{ r.last_failure_at or "" }}</td></tr>
{% else %}<tr><td colspan="3">No run recorded yet.</td></tr>{% endfor %}
</table>
<h3>Order funnel (last {{ m.funnel_days }} days)</h3>
<p class="funnel">{% for step, n in m.funnel.items() %}<span>{{ step }}: <b>{{ n }}</b></span>{% endfor %}</p>
<h3>Stock drift and unmatched SKUs</h3>
<table class="stock"><tr><th>Kind</th><th>SKU</th><th>Detail</th><th>Age (h)</th></tr>
{% for e in m.stock %}<tr><td>{{ e.kind }}</td><td>{{ e.key }}</td>
<td><code>{% for k, v in e.detail.items() %}{{ k }}={{ v }} {% endfor %}</code></td><td>{{ e.age_hours }}</td></tr>
{% else %}<tr><td colspan="4">Stock agrees on both sides.</td></tr>{% endfor %}
</table>
</section>
{% endfor %}
<script>
document.querySelectorAll("button.ack").forEach(function (button) {
  button.addEventListener("click", function () {
    fetch("exceptions/" + button.dataset.id + "/acknowledge", {
      method: "POST", credentials: "same-origin", headers: {"{{ ack_header }}": "1"}
    }).then(function (r) { if (r.ok) { location.reload(); } else { r.text().then(alert); } });
  });
});
</script>
</body></html>
"""


def create_app(
    ledger_factory: Callable[[], Any] = _ledger_from_airflow,
    marketplaces: Callable[[], list[str]] = _marketplace_names,
) -> FastAPI:
    """The page's FastAPI app; the ledger and marketplace list are injectable for tests."""
    import jinja2
    from airflow.api_fastapi.core_api.security import get_user

    template = jinja2.Environment(autoescape=True).from_string(PAGE)
    app = FastAPI(title="WooCommerce ⇄ Mirakl operations", docs_url=None, redoc_url=None, openapi_url=None)
    app.dependency_overrides[current_user] = get_user
    state: dict[str, Any] = {}

    def ledger() -> Any:
        if "ledger" not in state:  # one engine for the app's life, opened on first use
            state["ledger"] = ledger_factory()
        return state["ledger"]

    def summaries(kind: str | None, min_age_hours: float) -> list[dict[str, Any]]:
        return [marketplace_summary(ledger(), name, kind=kind or None, min_age_hours=min_age_hours)
                for name in marketplaces()]

    @app.get("/", response_class=HTMLResponse)
    def page(
        kind: str | None = None, min_age_hours: float = Query(0.0, ge=0), _user: Any = Depends(reader)
    ) -> HTMLResponse:
        data = summaries(kind, min_age_hours)
        all_kinds = sorted({k for m in data for k in m["kinds"]})
        return HTMLResponse(template.render(
            marketplaces=data, all_kinds=all_kinds, kind=kind or "", min_age_hours=min_age_hours,
            ack_header=ACK_HEADER,
        ))

    @app.get("/api/summary")
    def summary(
        kind: str | None = None, min_age_hours: float = Query(0.0, ge=0), _user: Any = Depends(reader)
    ) -> list[dict[str, Any]]:
        return summaries(kind, min_age_hours)

    @app.post("/exceptions/{exception_id}/acknowledge")
    def acknowledge(exception_id: int, user: Any = Depends(editor)) -> dict[str, Any]:
        from include.woo_mirakl.ledger import NotFoundError

        try:
            record = ledger().acknowledge(exception_id, by=user.get_name())
        except NotFoundError as exc:
            raise HTTPException(status_code=404, detail=str(exc)) from exc
        return {"id": record.id, "status": record.status, "acknowledged_by": record.acknowledged_by}

    return app


class WooMiraklOperationsPlugin(AirflowPlugin):
    """Registers the operations page app and its entry in the UI navigation."""

    name = "woo_mirakl_operations"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "WooCommerce ⇄ Mirakl operations"}]
    external_views = [{
        "name": "Woo ⇄ Mirakl operations",
        "href": URL_PREFIX.lstrip("/") + "/",
        "destination": "nav",
        "category": "browse",
        "url_route": "woo-mirakl-operations",
    }]
