"""Connect to Mirakl / Reconnect: an Airflow 3 UI plugin (FastAPI app) for the OAuth authorization-code flow.

``/woo-mirakl-connect/`` lists the marketplaces with how each signs in to Mirakl and until when
its token is valid, with a *Connect to Mirakl* (or *Reconnect*) button. The button sends the
browser to Mirakl's authentication system with a ``state`` bound to this browser and this Airflow
user; ``/woo-mirakl-connect/callback`` takes the answer, stores the tokens and verifies the
connection (A01), and says in plain words what happened. Logic: ``include/woo_mirakl/connect.py``.

Every route needs Airflow's signed-in user; connecting needs permission to edit connections.
"""
from __future__ import annotations

import html
from typing import Any

from airflow.plugins_manager import AirflowPlugin
from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse

URL_PREFIX = "/woo-mirakl-connect"


def current_user(request: Request) -> Any:
    """Stands for Airflow's `get_user` (bound in `create_app`)."""
    raise NotImplementedError


def connector(user: Any = Depends(current_user)) -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    if not get_auth_manager().is_authorized_connection(method="PUT", user=user):
        raise HTTPException(status_code=403, detail="Forbidden: connecting Mirakl needs permission to edit connections")
    return user


def _user_id(user: Any) -> str:
    return str(user.get_id())


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2rem;max-width:60rem}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.4rem .6rem;text-align:left}}.ok{{color:#060}}.failed{{color:#b00}}
a.button,button{{display:inline-block;padding:.4rem .8rem;border:1px solid #036;border-radius:4px;background:#036;
color:#fff;text-decoration:none}}</style></head><body><h1>{html.escape(title)}</h1>{body}
<p><a href="{URL_PREFIX}/">Mirakl connections</a> · <a href="/woo-mirakl/" target="_top">Operations page</a></p>
</body></html>""", status_code=status)


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/") + URL_PREFIX


def create_app() -> FastAPI:
    """The Connect app: list, start, callback, store choice."""
    from airflow.api_fastapi.core_api.security import get_user

    from include.woo_mirakl import connect

    app = FastAPI(title="Connect to Mirakl", docs_url=None, redoc_url=None, openapi_url=None)
    app.dependency_overrides[current_user] = get_user

    @app.get("/", response_class=HTMLResponse)
    def connections(_user: Any = Depends(connector)) -> HTMLResponse:
        from include.woo_mirakl.config import load_marketplaces

        rows = []
        for marketplace in load_marketplaces():
            info = connect.status(marketplace.name)
            action = ""
            if info["auth_mode"] == "oauth_authorization_code":
                label = "Reconnect" if info["connected"] else "Connect to Mirakl"
                action = (f'<a class="button" href="{URL_PREFIX}/{html.escape(marketplace.name)}/start" '
                          f'target="_top">{label}</a>')
            expires = info["expires_at"].strftime("%Y-%m-%d %H:%M UTC") if info["expires_at"] else "—"
            rows.append(f"<tr data-marketplace=\"{html.escape(marketplace.name)}\"><td>{html.escape(marketplace.name)}</td>"
                        f"<td>{html.escape(info['conn_id'])}</td><td>{html.escape(info['auth_words'])}</td>"
                        f"<td class=state>{html.escape(info['state'])}</td><td>{expires}</td><td>{action}</td></tr>")
        return _page("Mirakl connections", "<table><tr><th>marketplace</th><th>connection</th><th>signs in with</th>"
                     "<th>state</th><th>access token valid until</th><th></th></tr>" + "".join(rows) + "</table>")

    @app.get("/{marketplace}/start")
    def start(marketplace: str, request: Request, user: Any = Depends(connector)) -> Any:
        try:
            url, cookie = connect.begin(marketplace, _user_id(user), _base_url(request))
        except connect.ConnectError as error:
            return _page("Cannot connect to Mirakl", f"<p class=failed>{html.escape(str(error))}</p>", 400)
        response = RedirectResponse(url, status_code=302)
        response.set_cookie(connect.COOKIE, cookie, max_age=connect.STATE_TTL, httponly=True, samesite="lax",
                            path=URL_PREFIX, secure=request.url.scheme == "https")
        return response

    @app.get("/callback", response_class=HTMLResponse)
    def callback(request: Request, user: Any = Depends(connector)) -> HTMLResponse:
        query = dict(request.query_params)
        try:
            result = connect.finish(request.cookies.get(connect.COOKIE), query, _user_id(user))
        except connect.ConnectError as error:
            page = _page("Not connected", f"<p class=failed>{html.escape(str(error))}</p>", 400)
        else:
            page = _result_page(result)
        page.delete_cookie(connect.COOKIE, path=URL_PREFIX)  # a state is good for one answer
        return page

    @app.post("/{marketplace}/store", response_class=HTMLResponse)
    def store(marketplace: str, shop_id: int = Form(..., ge=1), _user: Any = Depends(connector)) -> HTMLResponse:
        try:
            return _result_page(connect.choose_store(marketplace, shop_id))
        except connect.ConnectError as error:
            return _page("Not connected", f"<p class=failed>{html.escape(str(error))}</p>", 400)

    return app


def _result_page(result: Any) -> HTMLResponse:
    css = "ok" if result.ok else "failed"
    body = f"<p class={css} id=result>{html.escape(result.message)}</p>"
    if result.needs_store:
        body += (f'<form method="post" action="{URL_PREFIX}/{html.escape(result.marketplace)}/store">'
                 "<label>Your Mirakl user has several stores: store id (shown on <i>My account</i>) "
                 '<input name="shop_id" type="number" min="1" required></label> <button type="submit">Use this store'
                 "</button></form>")
    title = "Connected to Mirakl" if result.ok else "Not connected"
    return _page(f"{title} — {result.marketplace}", body, 200 if result.ok else 400)


class WooMiraklConnectPlugin(AirflowPlugin):
    """Registers the Connect to Mirakl app."""

    name = "woo_mirakl_connect"
    fastapi_apps = [{"app": create_app(), "url_prefix": URL_PREFIX, "name": "Connect to Mirakl"}]
