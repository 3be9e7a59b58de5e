"""The WooCommerce ⇄ Mirakl operations page: an Airflow 3 UI plugin (FastAPI app + navigation entry).

Per marketplace: open exceptions (filter by kind and age, acknowledge), the last successful
run of each flow, the order funnel, stock drift and unmatched SKUs — all read from the
ledger — and how the marketplace signs in to Mirakl, with its Connect to Mirakl / Reconnect
button (the connection's mode and token state only: no secret can reach the page).

Airflow mounts plugin apps without its own authentication, so every route here requires the
user of Airflow's session (the ``_token`` cookie the UI sets, or a Bearer JWT) and asks
Airflow's auth manager for permission; acknowledging needs DAG edit rights and a custom
header that a cross-site form cannot send (CSRF).
"""
from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse

log = logging.getLogger(__name__)
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
# The inventory push owns unmatched SKUs: one exception per SKU, under the side it is missing from.
UNMATCHED_KINDS = ("unmatched_sku_missing_in_mirakl", "unmatched_sku_missing_in_woocommerce")
STOCK_KINDS = ("stock_drift", *UNMATCHED_KINDS)


def _runs_from_airflow(dag_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Last successful and last failed run of each DAG, from Airflow's metadata DB (we are the API server)."""
    from airflow.models.dagrun import DagRun
    from airflow.utils.session import create_session
    from sqlalchemy import select

    found: dict[str, dict[str, Any]] = {}
    with create_session() as session:
        for dag_id in dag_ids:
            row: dict[str, Any] = {}
            for state in ("success", "failed"):
                run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.state == state)
                                      .order_by(DagRun.end_date.desc()).limit(1)).first()
                if run is not None:
                    row[state] = {"at": (run.end_date or run.run_after).isoformat(timespec="seconds"),
                                  "run_id": run.run_id}
            found[dag_id] = row
    return found


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
    from include.woo_mirakl.exception_guidance import guidance, sku_of, task_log_path

    return {
        "guidance": guidance(e.kind, e.key, e.detail),
        "sku": sku_of(e.key) if e.kind in STOCK_KINDS else None,
        "log_path": task_log_path(e.key, e.detail) if e.kind == "task_failure" else None,
        "id": e.id, "kind": e.kind, "key": e.key, "severity": e.severity, "status": e.status, "count": e.count,
        "age_hours": _age_hours(now, e.first_seen), "first_seen": e.first_seen.isoformat(),
        "last_seen": e.last_seen.isoformat(), "detail": e.detail or {},
        "acknowledged_by": e.acknowledged_by,
    }


def _flow_runs(marketplace: str, runs: Callable[[list[str]], dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    from include.woo_mirakl.account import FLOW as ACCOUNT_FLOW, project_flow_ids

    dag_ids = [*project_flow_ids(marketplace), f"{ACCOUNT_FLOW}__{marketplace}"]
    found = runs(dag_ids)
    return [{"flow": dag_id.split("__")[0], "dag_id": dag_id, **{
        f"last_{name}_{field}": (found.get(dag_id, {}).get(state) or {}).get(field)
        for name, state in (("success", "success"), ("failure", "failed")) for field in ("at", "run_id")}}
        for dag_id in sorted(dag_ids)]


def _sign_in_state(marketplace: str) -> dict[str, Any] | None:
    """How the marketplace signs in to Mirakl and whether it is connected (never a token); None if unknown."""
    from include.woo_mirakl import connect

    try:
        return connect.status(marketplace)
    except Exception as error:  # noqa: BLE001 - the page must load without this line
        log.warning("sign-in state of %s unavailable: %s", marketplace, type(error).__name__)
        return None


def marketplace_summary(
    ledger: Any, marketplace: str, *, kind: str | None = None, min_age_hours: float = 0.0, funnel_days: int = 7,
    now: dt.datetime | None = None, runs: Callable[[list[str]], dict[str, dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Everything the page shows for one marketplace, as plain JSON-able data."""
    now = now or dt.datetime.now(dt.timezone.utc)
    unresolved = [_exception_row(e, now) for e in ledger.open_exceptions(marketplace)]
    every = [r for r in unresolved if r["status"] == "open"]
    acknowledged = [r for r in unresolved if r["status"] != "open"]
    shown = [r for r in every if (kind is None or r["kind"] == kind) and r["age_hours"] >= min_age_hours]
    counts = ledger.order_counts_by_state(marketplace, since=now - dt.timedelta(days=funnel_days))
    funnel = {step: sum(counts.get(s, 0) for s in states) for step, states in FUNNEL.items()}
    return {
        "marketplace": marketplace,
        "exceptions": shown,
        "kinds": sorted({r["kind"] for r in every}),
        "open_count": len(every),
        "acknowledged": acknowledged,
        "runs": _flow_runs(marketplace, runs or _runs_from_airflow),
        "funnel": funnel,
        "funnel_days": funnel_days,
        "stock": [r for r in every if r["kind"] in STOCK_KINDS],
    }


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Woo ⇄ Mirakl operations</title>
<style>{{ css | safe }}</style></head><body>
<h1>WooCommerce ⇄ Mirakl operations</h1>
<p class="links"><a href="reports/">Finance reports</a> ·
<a href="/woo-mirakl-connect/" target="_top">Mirakl connections: Connect to Mirakl / Reconnect</a></p>
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
{% if m.sign_in %}<p class="sign-in">Mirakl sign-in: {{ m.sign_in.auth_words }}{% if m.sign_in.auth_mode != "api_key" %} — <b class="state">{{ m.sign_in.state }}</b>{% endif %}
{%- if m.sign_in.expires_at %}; access token valid until {{ m.sign_in.expires_at.strftime("%Y-%m-%d %H:%M UTC") }}{% endif %}
{%- if m.sign_in.auth_mode == "oauth_authorization_code" %} <a class="button" href="/woo-mirakl-connect/{{ m.marketplace }}/start" target="_top">{{ "Reconnect" if m.sign_in.connected else "Connect to Mirakl" }}</a>{% endif %}</p>{% endif %}
<h3>Open exceptions</h3>
<div class="scroll"><table class="exceptions">
<colgroup><col style="width:14%"><col style="width:14%"><col style="width:7%"><col style="width:6%"><col style="width:5%"><col><col style="width:11%"></colgroup>
<tr><th>Kind</th><th>Key</th><th>Severity</th><th>Age (h)</th><th>Seen</th><th>What happened — what to do</th><th></th></tr>
{% for e in m.exceptions %}
<tr class="{{ e.severity }}" data-exception-id="{{ e.id }}">
 <td>{{ e.kind }}</td><td>{{ e.key }}</td>
 <td>{{ e.severity }}</td><td>{{ e.age_hours }}</td><td>{{ e.count }}×</td>
 <td><p class="what">{{ e.guidance.what }}</p><p class="todo"><b>What to do:</b> {{ e.guidance.todo }}
 {% if e.log_path %}<a class="log" href="{{ e.log_path }}" target="_top">Open the task log</a>{% endif %}</p>
 <details><summary>detail</summary><code>{% for k, v in e.detail.items() %}{{ k }}={{ v }} {% endfor %}</code></details></td>
 <td><button class="ack" data-id="{{ e.id }}">Acknowledge</button></td></tr>
{% else %}<tr><td colspan="7">Nothing needs a human.</td></tr>{% endfor %}
</table></div>
{% if m.acknowledged %}<details class="acknowledged"><summary>Acknowledged, not yet resolved ({{ m.acknowledged|length }})</summary>
<div class="scroll"><table class="acknowledged"><tr><th>Kind</th><th>Key</th><th>What happened</th><th>By</th></tr>
{% for e in m.acknowledged %}<tr data-exception-id="{{ e.id }}"><td>{{ e.kind }}</td><td>{{ e.key }}</td><td>{{ e.guidance.what }}</td>
<td>acknowledged by {{ e.acknowledged_by }}</td></tr>{% endfor %}</table></div></details>{% endif %}
<h3>Last run per flow</h3>
<div class="scroll"><table class="runs"><tr><th>Flow</th><th>Last success</th><th>Last failure</th></tr>
{% for r in m.runs %}<tr data-flow="{{ r.flow }}"><td><a href="/dags/{{ r.dag_id }}" target="_top">{{ r.flow }}</a></td>
<td>{% if r.last_success_at %}<a href="/dags/{{ r.dag_id }}/runs/{{ r.last_success_run_id | urlencode }}" target="_top">{{ r.last_success_at }}</a>{% else %}never{% endif %}</td>
<td>{% if r.last_failure_at %}<a class="failed" href="/dags/{{ r.dag_id }}/runs/{{ r.last_failure_run_id | urlencode }}" target="_top">{{ r.last_failure_at }}</a>{% endif %}</td></tr>
{% endfor %}
</table></div>
<h3>Order funnel (last {{ m.funnel_days }} days)</h3>
<p class="funnel">{% for step, n in m.funnel.items() %}<span>{{ step }}: <b>{{ n }}</b></span>{% endfor %}</p>
<h3>Stock drift and unmatched SKUs</h3>
<div class="scroll"><table class="stock"><tr><th>Kind</th><th>SKU</th><th>What happened</th><th>Age (h)</th></tr>
{% for e in m.stock %}<tr><td>{{ e.kind }}</td><td>{{ e.sku }}</td>
<td>{{ e.guidance.what }}</td><td>{{ e.age_hours }}</td></tr>
{% else %}<tr><td colspan="4">Stock agrees on both sides.</td></tr>{% endfor %}
</table></div>
</section>
{% endfor %}
<script>
document.querySelectorAll("button.ack").forEach(function (button) {
  button.addEventListener("click", function () {
    fetch("exceptions/" + button.dataset.id + "/acknowledge", {
      method: "POST", credentials: "same-origin", headers: {"{{ ack_header }}": "1"}
    }).then(function (reply) {
      if (reply.ok) { location.reload(); } else { reply.text().then(alert); }
    });
  });
});
</script>
</body></html>
"""
# Airflow 3's UI look (Chakra UI: its font stack, greys, blue links, light and dark), and no table past the edge.
CSS = """
 :root{color-scheme:light dark;--fg:#1a202c;--muted:#718096;--line:#e2e8f0;--head:#f7fafc;--link:#3182ce;--bad:#e53e3e}
 @media (prefers-color-scheme:dark){:root{--fg:#e2e8f0;--muted:#a0aec0;--line:#2d3748;--head:#1a202c;--link:#63b3ed;--bad:#fc8181}}
 body{font-family:Inter,-apple-system,BlinkMacSystemFont,"Segoe UI",Helvetica,Arial,sans-serif;margin:1rem 1.25rem;
      color:var(--fg);background:transparent;font-size:14px;line-height:1.45}
 h1{font-size:1.5rem;font-weight:600;margin:.25rem 0 .75rem} h2{font-size:1.2rem;font-weight:600;margin-top:1.75rem;
 padding-bottom:.3rem;border-bottom:1px solid var(--line)} h3{font-size:1rem;font-weight:600;margin:1.2rem 0 .4rem}
 a{color:var(--link);text-decoration:none} a:hover{text-decoration:underline}
 .scroll{max-width:100%;overflow-x:auto} table{border-collapse:collapse;width:100%;table-layout:fixed}
 th,td{border-bottom:1px solid var(--line);padding:.4rem .5rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
 th{background:var(--head);font-weight:600;color:var(--muted);font-size:.8rem;text-transform:uppercase;letter-spacing:.02em}
 tr.critical td:first-child{border-left:3px solid var(--bad)} .failed{color:var(--bad)}
 p.what,p.todo{margin:0 0 .2rem} small,details summary{color:var(--muted)} code{font-size:.75rem;overflow-wrap:anywhere}
 button{font:inherit;border:1px solid var(--line);border-radius:6px;padding:.25rem .7rem;background:var(--head);color:var(--fg);cursor:pointer}
 button:hover,a.button:hover{border-color:var(--link);text-decoration:none}
 a.button{display:inline-block;border:1px solid var(--line);border-radius:6px;padding:.2rem .7rem;background:var(--head)} input,select{font:inherit;border:1px solid var(--line);border-radius:6px;padding:.2rem .4rem;
 background:transparent;color:var(--fg)} .funnel span{display:inline-block;margin-right:1.2rem}
"""


REPORTS_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Woo ⇄ Mirakl reports</title>
<style>{{ css | safe }}</style></head><body>
<h1>Finance reports: Mirakl payout reconciliation</h1>
<p class="links"><a href="../">Operations</a> · One report per marketplace and day: what Mirakl paid, charged and
refunded, checked against WooCommerce. A run dated D reconciles the day D−1.</p>
{% for m in marketplaces %}<section data-marketplace="{{ m.marketplace }}"><h2>{{ m.marketplace }}</h2>
<div class="scroll"><table class="reports"><tr><th style="width:8rem">Day</th>
{% for name, _ in figure_names %}<th>{{ name }}</th>{% endfor %}<th style="width:38%">Files</th></tr>
{% for d in m.days %}<tr data-day="{{ d.day }}"><td>{{ d.day }}</td>
{% for name, value in d.figures %}<td>{{ value }}{% if value and loop.index < d.figures|length %} {{ d.currency }}{% endif %}</td>{% endfor %}
<td>{% for file, text in d.files %}<a href="{{ m.marketplace }}/{{ d.day }}/{{ file }}">{{ text }}</a>{% if not loop.last %} · {% endif %}{% endfor %}</td></tr>
{% else %}<tr><td colspan="7">No report yet: the reconciliation runs nightly (or backfill days from the DAG).</td></tr>{% endfor %}
</table></div></section>{% endfor %}
</body></html>
"""


def create_app(
    ledger_factory: Callable[[], Any] = _ledger_from_airflow,
    marketplaces: Callable[[], list[str]] = _marketplace_names,
    runs: Callable[[list[str]], dict[str, dict[str, Any]]] = _runs_from_airflow,
    sign_in: Callable[[str], dict[str, Any] | None] = _sign_in_state,
) -> FastAPI:
    """The page's FastAPI app; the ledger, marketplace list, runs and sign-in states are injectable for tests."""
    import jinja2
    from airflow.api_fastapi.core_api.security import get_user

    environment = jinja2.Environment(autoescape=True)
    template, reports_template = environment.from_string(PAGE), environment.from_string(REPORTS_PAGE)
    app = FastAPI(title="WooCommerce ⇄ Mirakl operations", docs_url=None, redoc_url=None, openapi_url=None)
    app.dependency_overrides[current_user] = get_user
    state: dict[str, Any] = {}

    def ledger() -> Any:
        if "ledger" not in state:  # one engine for the app's life, opened on first use
            state["ledger"] = ledger_factory()
        return state["ledger"]

    def summaries(kind: str | None, min_age_hours: float) -> list[dict[str, Any]]:
        return [{**marketplace_summary(ledger(), name, kind=kind or None, min_age_hours=min_age_hours, runs=runs),
                 "sign_in": sign_in(name)} for name in marketplaces()]

    @app.get("/", response_class=HTMLResponse)
    def page(
        kind: str | None = None, min_age_hours: float = Query(0.0, ge=0), _user: Any = Depends(reader)
    ) -> HTMLResponse:
        data = summaries(kind, min_age_hours)
        all_kinds = sorted({k for m in data for k in m["kinds"]})
        return HTMLResponse(template.render(
            marketplaces=data, all_kinds=all_kinds, kind=kind or "", min_age_hours=min_age_hours,
            ack_header=ACK_HEADER, css=CSS,
        ))

    @app.get("/api/summary")
    def summary(
        kind: str | None = None, min_age_hours: float = Query(0.0, ge=0), _user: Any = Depends(reader)
    ) -> list[dict[str, Any]]:
        return summaries(kind, min_age_hours)

    @app.get("/reports/", response_class=HTMLResponse)
    def reports(_user: Any = Depends(reader)) -> HTMLResponse:
        from include.woo_mirakl.report_labels import label
        from include.woo_mirakl.reports_index import FIGURES, list_reports

        return HTMLResponse(reports_template.render(
            marketplaces=list_reports(marketplaces()), css=CSS, figure_names=[(label(f), f) for f in FIGURES]))

    @app.get("/reports/{marketplace}/{day}/{name}")
    def report_file(marketplace: str, day: str, name: str, _user: Any = Depends(reader)) -> FileResponse:
        from include.woo_mirakl.reports_index import report_file as find

        path = find(marketplace, day, name, marketplaces())
        if path is None:
            raise HTTPException(status_code=404, detail="no such report file")
        return FileResponse(path, filename=None if name.endswith(".html") else f"{marketplace}-{day}-{name}")

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
    }, {
        "name": "Woo ⇄ Mirakl finance reports",
        "href": URL_PREFIX.lstrip("/") + "/reports/",
        "destination": "nav",
        "category": "browse",
        "url_route": "woo-mirakl-reports",
    }]
