"""The simulated Mirakl Authentication System: OAuth 2 on loopback, beside the simulated seller API.

What Mirakl documents (developer.mirakl.com, "Authentication" and "Authorization" of Mirakl Connect,
and the MAS OAuth 2 guide; sources in ``include/woo_mirakl/clients/oauth.py``): integrators get a
client id and secret and registered redirect URIs; sellers go through the authorization-code protocol
(sign in, pick the store, consent); Mirakl Connect uses the client-credentials grant at
``POST /oauth/token`` (``application/x-www-form-urlencoded``, ``grant_type``, ``client_id``,
``client_secret``). Answers carry ``token_type: Bearer``, ``access_token``, ``expires_in`` (3599 s in
Mirakl's example), ``target_app`` and ``resource_owner``; API calls send ``Authorization: Bearer <token>``
and are refused with 401 without a valid, unexpired one.

The public documents do not give the authorize page's address, the code exchange and refresh, or a
revocation endpoint: here they are RFC 6749 (``/oauth/authorize``; ``authorization_code`` and
``refresh_token`` at ``/oauth/token``) and RFC 7009 (``POST /oauth/revoke``, ``token``; 200 even for an
unknown token; a refresh token revokes its whole grant). Where the documents are silent the sandbox
follows those RFCs and is harsher rather than kinder:
codes live 60 s and are single use (a replayed code revokes what it issued), redirect URIs must match
exactly, refresh tokens rotate and a reused one revokes its whole grant, an unregistered redirect URI
is never redirected to, and the token endpoint refuses any other content type.
"""
from __future__ import annotations

import base64
import hashlib
import html
import secrets
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

from include.sandbox.core import ApiError, Request, Response, Route, Service, iso

FORM = "application/x-www-form-urlencoded"
DEFAULT_SCOPES = {
    "orders": "Read your orders, accept or refuse them, and confirm their shipment",
    "offers": "Update the stock and prices of your offers",
    "account": "Read your store's name, currency and state",
    "finance": "Read your transactions and invoices",
}


@dataclass
class AuthClient:
    """An integrator registered with Mirakl: its credentials, redirect URIs and grants."""

    client_id: str
    client_secret: str
    name: str = "WooCommerce ⇄ Mirakl"
    redirect_uris: list[str] = field(default_factory=list)
    grant_types: tuple[str, ...] = ("authorization_code", "refresh_token", "client_credentials")
    shop_id: int | None = None  # the store a client-credentials token acts on


@dataclass
class AuthUser:
    """A seller's Mirakl account: sign-in and the stores it may give access to."""

    email: str
    password: str
    name: str
    stores: list[dict[str, Any]] = field(default_factory=list)  # {"shop_id", "shop_name", "marketplace"}


@dataclass
class Grant:
    """One authorization (a user's consent for one client and store, or a client-credentials grant)."""

    grant_id: str
    client_id: str
    shop_id: int | None  # None: every store in ``shops`` (the seller gave access to all of them)
    user: str | None
    scope: str
    revoked: bool = False
    shops: list[int] = field(default_factory=list)

    @property
    def stores(self) -> list[int]:
        return [self.shop_id] if self.shop_id is not None else list(self.shops)


class MiraklAuthService(Service):
    """Authorization server: authorize pages, token endpoint, refresh, expiry and revocation."""

    name = "auth"

    def __init__(self, sandbox: Any):
        super().__init__(sandbox)
        self.access_token_ttl = 3599
        self.refresh_token_ttl = 30 * 86400
        self.code_ttl = 60
        self.clients: dict[str, AuthClient] = {}
        self.users: dict[str, AuthUser] = {}
        self.grants: dict[str, Grant] = {}
        self.consents: dict[tuple[str, str], str] = {}  # (user, client_id) -> grant_id
        self._pending: dict[str, dict[str, Any]] = {}  # sign-in transactions between the pages
        self._codes: dict[str, dict[str, Any]] = {}
        self._access: dict[str, dict[str, Any]] = {}
        self._refresh: dict[str, dict[str, Any]] = {}
        self.issued: dict[str, int] = {}  # grant type -> tokens issued (tests count refreshes)
        self.add_route("GET", "/oauth/authorize", "auth.authorize", self._authorize_page)
        self.add_route("POST", "/oauth/authorize", "auth.authorize", self._authorize_step)
        self.add_route("POST", "/oauth/token", "auth.token", self._token)
        self.add_route("POST", "/oauth/revoke", "auth.revoke", self._revoke)
        self._seed()

    def _seed(self) -> None:
        rng = getattr(self.sandbox, "random", None)

        def secret() -> str:  # seeded like the rest of the sandbox, so runs repeat
            return "%032x" % rng.getrandbits(128) if rng else secrets.token_hex(16)

        shop_id = self.sandbox.mirakl.shop_id
        shop_name = self.sandbox.mirakl.store.settings.shop_name
        self.clients["woo-mirakl-sandbox"] = AuthClient("woo-mirakl-sandbox", "cs-" + secret(), shop_id=shop_id)
        self.users["seller@example.com"] = AuthUser(
            "seller@example.com", "pw-" + secret(), "Sandbox seller",
            stores=[{"shop_id": shop_id, "shop_name": shop_name, "marketplace": "Sandbox marketplace"}],
        )

    # ---- Python API for tests ------------------------------------------------------------------
    def client(self, client_id: str = "woo-mirakl-sandbox") -> AuthClient:
        return self.clients[client_id]

    def user(self, email: str = "seller@example.com") -> AuthUser:
        return self.users[email]

    def bearer_shops(self, token: str) -> list[int]:
        """The stores a Bearer token acts on; ApiError 401 when it is unknown, expired or revoked."""
        found = self._access.get(token)
        if found is None:
            raise ApiError(401, "Unauthorized: unknown access token")
        if self.grants[found["grant"]].revoked or found.get("revoked"):
            raise ApiError(401, "Unauthorized: the access token was revoked")
        if found["expires_at"] <= self._now():
            raise ApiError(401, "Unauthorized: the access token has expired")
        return self.grants[found["grant"]].stores

    def expire_access_tokens(self) -> int:
        """Every access token expires now (refresh tokens stay valid)."""
        for entry in self._access.values():
            entry["expires_at"] = min(entry["expires_at"], self._now())
        return len(self._access)

    def revoke_consent(self, email: str, client_id: str = "woo-mirakl-sandbox") -> None:
        """The seller withdraws the integration's access (as from their Mirakl account)."""
        grant_id = self.consents.pop((email, client_id), None)
        if grant_id:
            self.grants[grant_id].revoked = True

    def _now(self) -> datetime:
        return self.sandbox.clock.now()

    def to_state(self) -> dict:
        return {}

    # ---- authorize: sign-in, store choice, consent --------------------------------------------
    def _authorize_page(self, request: Request) -> Response:
        query = {k: v[0] for k, v in request.query.items()}
        client, error = self._check_authorize(query)
        if error:
            return error
        if query.get("response_type") != "code":
            return self._redirect_error(query, "unsupported_response_type", "response_type must be code")
        txn = secrets.token_urlsafe(16)
        self._pending[txn] = {"query": query, "user": None, "shop_id": None, "at": self._now()}
        return self._page("Sign in to Mirakl", f"""
<p>{html.escape(client.name)} asks to connect to your Mirakl store.</p>
<form method="post" action="/oauth/authorize">
  <input type="hidden" name="txn" value="{txn}"><input type="hidden" name="step" value="signin">
  <label>E-mail <input name="email" type="email" autocomplete="username"></label>
  <label>Password <input name="password" type="password" autocomplete="current-password"></label>
  <button type="submit">Sign in</button>
</form>""")

    def _check_authorize(self, query: dict[str, str]) -> tuple[AuthClient | None, Response | None]:
        client = self.clients.get(query.get("client_id") or "")
        if client is None:
            return None, self._page("Unknown application", "<p class=error>This application is not registered.</p>", 400)
        if query.get("redirect_uri") not in client.redirect_uris:
            # never redirect to an address the integrator did not register (open redirector)
            return None, self._page("Wrong redirect address",
                                    "<p class=error>The redirect_uri is not registered for this application.</p>", 400)
        return client, None

    def _authorize_step(self, request: Request) -> Response:
        form = {k: v[0] for k, v in parse_qs(request.body.decode("utf-8"), keep_blank_values=True).items()}
        pending = self._pending.get(form.get("txn") or "")
        if pending is None or self._now() - pending["at"] > timedelta(minutes=15):
            return self._page("Session expired", "<p class=error>This sign-in expired: start again from the application.</p>", 400)
        query = pending["query"]
        client = self.clients[query["client_id"]]
        step = form.get("step")
        if step == "signin":
            user = self.users.get((form.get("email") or "").strip().lower())
            if user is None or not secrets.compare_digest(user.password, form.get("password") or ""):
                return self._page("Sign in to Mirakl", f"""
<p class=error>Wrong e-mail or password.</p>
<form method="post" action="/oauth/authorize">
  <input type="hidden" name="txn" value="{form['txn']}"><input type="hidden" name="step" value="signin">
  <label>E-mail <input name="email" type="email"></label>
  <label>Password <input name="password" type="password"></label>
  <button type="submit">Sign in</button>
</form>""", 401)
            pending["user"] = user.email
            existing = self.consents.get((user.email, client.client_id))
            if existing and not self.grants[existing].revoked:
                return self._issue_code(form["txn"], self.grants[existing])  # consent given before
            if len(user.stores) == 1:
                pending["shop_id"] = user.stores[0]["shop_id"]
                return self._consent_page(form["txn"], client, user.stores[0])
            options = "".join(
                f'<label><input type="radio" name="shop_id" value="{s["shop_id"]}"> '
                f'{html.escape(s["shop_name"])} — {html.escape(s["marketplace"])} (store {s["shop_id"]})</label>'
                for s in user.stores
            ) + '<label><input type="radio" name="shop_id" value="all"> All my stores</label>'
            return self._page("Choose the store", f"""
<form method="post" action="/oauth/authorize">
  <input type="hidden" name="txn" value="{form['txn']}"><input type="hidden" name="step" value="store">
  {options}<button type="submit">Continue</button>
</form>""")
        if pending["user"] is None:
            return self._page("Sign in first", "<p class=error>Sign in before going on.</p>", 400)
        user = self.users[pending["user"]]
        if step == "store":
            if form.get("shop_id") == "all":
                pending["shop_id"] = "all"
                return self._consent_page(form["txn"], client, {
                    "shop_id": ", ".join(str(s["shop_id"]) for s in user.stores), "shop_name": "all your stores",
                    "marketplace": ", ".join(sorted({s["marketplace"] for s in user.stores}))})
            store = next((s for s in user.stores if str(s["shop_id"]) == form.get("shop_id")), None)
            if store is None:
                return self._page("Choose the store", "<p class=error>Pick one of your stores.</p>", 400)
            pending["shop_id"] = store["shop_id"]
            return self._consent_page(form["txn"], client, store)
        if step == "consent" and pending["shop_id"] is not None:
            if form.get("decision") != "allow":
                self._pending.pop(form["txn"], None)
                return self._redirect_error(query, "access_denied", "the seller refused the consent")
            every = pending["shop_id"] == "all"
            grant = Grant(secrets.token_hex(8), client.client_id, None if every else pending["shop_id"], user.email,
                          query.get("scope") or " ".join(DEFAULT_SCOPES),
                          shops=[s["shop_id"] for s in user.stores] if every else [])
            self.grants[grant.grant_id] = grant
            self.consents[(user.email, client.client_id)] = grant.grant_id
            return self._issue_code(form["txn"], grant)
        return self._page("Unexpected step", "<p class=error>Start again from the application.</p>", 400)

    def _consent_page(self, txn: str, client: AuthClient, store: dict) -> Response:
        scope = self._pending[txn]["query"].get("scope") or " ".join(DEFAULT_SCOPES)
        items = "".join(f"<li>{html.escape(DEFAULT_SCOPES.get(s, s))}</li>" for s in scope.split())
        return self._page("Allow access", f"""
<p><b>{html.escape(client.name)}</b> asks for access to <b>{html.escape(store['shop_name'])}</b>
({html.escape(store['marketplace'])}, store {store['shop_id']}). It will be able to:</p>
<ul class="scopes">{items}</ul>
<form method="post" action="/oauth/authorize">
  <input type="hidden" name="txn" value="{txn}"><input type="hidden" name="step" value="consent">
  <button type="submit" name="decision" value="allow">Allow</button>
  <button type="submit" name="decision" value="deny">Deny</button>
</form>""")

    def _issue_code(self, txn: str, grant: Grant) -> Response:
        pending = self._pending.pop(txn)
        query = pending["query"]
        code = secrets.token_urlsafe(24)
        self._codes[code] = {
            "grant": grant.grant_id, "client_id": query["client_id"], "redirect_uri": query["redirect_uri"],
            "expires_at": self._now() + timedelta(seconds=self.code_ttl), "used": False, "issued": [],
            "code_challenge": query.get("code_challenge"),
        }
        return self._redirect(query["redirect_uri"], {"code": code, "state": query.get("state")})

    def _redirect_error(self, query: dict[str, str], error: str, description: str) -> Response:
        return self._redirect(query["redirect_uri"], {"error": error, "error_description": description,
                                                      "state": query.get("state")})

    @staticmethod
    def _redirect(uri: str, params: dict[str, str | None]) -> Response:
        parts = urlsplit(uri)
        extra = urlencode({k: v for k, v in params.items() if v is not None})
        query = f"{parts.query}&{extra}" if parts.query else extra
        return Response(302, b"", {"Location": urlunsplit(parts._replace(query=query))}, "text/html")

    @staticmethod
    def _page(title: str, body: str, status: int = 200) -> Response:
        return Response(status, f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;max-width:32rem;margin:3rem auto}}label{{display:block;margin:.6rem 0}}
.error{{color:#b00}}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>""",
                        content_type="text/html; charset=utf-8")

    # ---- token endpoint -------------------------------------------------------------------------
    def _form(self, request: Request) -> dict[str, str]:
        ctype = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != FORM:
            raise _OAuthFailure(400, "invalid_request", f"the body must be {FORM}")
        values = parse_qs(request.body.decode("utf-8"), keep_blank_values=True)
        if any(len(v) > 1 for v in values.values()):
            raise _OAuthFailure(400, "invalid_request", "a parameter is repeated")
        return {k: v[0] for k, v in values.items()}

    def _client(self, request: Request, form: dict[str, str]) -> AuthClient:
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("Authorization") or ""
        if basic.startswith("Basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                raise _OAuthFailure(401, "invalid_client", "malformed Basic credentials") from None
        client = self.clients.get(client_id or "")
        if client is None or not secret or not secrets.compare_digest(client.client_secret, secret):
            raise _OAuthFailure(401, "invalid_client", "unknown client or wrong secret")
        return client

    def _token(self, request: Request) -> Response:
        try:
            form = self._form(request)
            client = self._client(request, form)
            grant_type = form.get("grant_type")
            if grant_type not in client.grant_types:
                raise _OAuthFailure(400, "unsupported_grant_type" if grant_type not in
                                    ("authorization_code", "refresh_token", "client_credentials")
                                    else "unauthorized_client", f"grant_type {grant_type!r} is not allowed")
            if grant_type == "client_credentials":
                grant = Grant(secrets.token_hex(8), client.client_id, client.shop_id, None, form.get("scope") or "")
                self.grants[grant.grant_id] = grant
                return self._tokens(grant, "client_credentials", with_refresh=False)
            if grant_type == "authorization_code":
                return self._exchange_code(client, form)
            return self._use_refresh(client, form)
        except _OAuthFailure as failure:
            return failure.response()

    def _exchange_code(self, client: AuthClient, form: dict[str, str]) -> Response:
        code = self._codes.get(form.get("code") or "")
        if code is None or code["client_id"] != client.client_id:
            raise _OAuthFailure(400, "invalid_grant", "unknown authorization code")
        if code["used"]:
            for token in code["issued"]:  # RFC 6749 4.1.2: a replayed code revokes what it issued
                self._revoke_token(token)
            raise _OAuthFailure(400, "invalid_grant", "the authorization code was already used")
        if code["expires_at"] <= self._now():
            raise _OAuthFailure(400, "invalid_grant", "the authorization code has expired")
        if form.get("redirect_uri") != code["redirect_uri"]:
            raise _OAuthFailure(400, "invalid_grant", "redirect_uri differs from the one of the authorization")
        if code["code_challenge"]:
            verifier = form.get("code_verifier") or ""
            digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
            if digest != code["code_challenge"]:
                raise _OAuthFailure(400, "invalid_grant", "code_verifier does not match")
        code["used"] = True
        grant = self.grants[code["grant"]]
        if grant.revoked:
            raise _OAuthFailure(400, "invalid_grant", "the authorization was revoked")
        response = self._tokens(grant, "authorization_code", with_refresh=True)
        code["issued"] += [response.body["access_token"], response.body["refresh_token"]]
        return response

    def _use_refresh(self, client: AuthClient, form: dict[str, str]) -> Response:
        entry = self._refresh.get(form.get("refresh_token") or "")
        if entry is None or self.grants[entry["grant"]].client_id != client.client_id:
            raise _OAuthFailure(400, "invalid_grant", "unknown refresh token")
        grant = self.grants[entry["grant"]]
        if entry["rotated"]:
            grant.revoked = True  # a rotated token used again: it leaked or two clients raced; end the grant
            raise _OAuthFailure(400, "invalid_grant", "the refresh token was already used; the authorization is revoked")
        if grant.revoked or entry.get("revoked"):
            raise _OAuthFailure(400, "invalid_grant", "the authorization was revoked")
        if entry["expires_at"] <= self._now():
            raise _OAuthFailure(400, "invalid_grant", "the refresh token has expired")
        entry["rotated"] = True
        return self._tokens(grant, "refresh_token", with_refresh=True)

    def _tokens(self, grant: Grant, grant_type: str, with_refresh: bool) -> Response:
        now = self._now()
        access = secrets.token_urlsafe(32)
        self._access[access] = {"grant": grant.grant_id, "expires_at": now + timedelta(seconds=self.access_token_ttl)}
        body: dict[str, Any] = {"token_type": "Bearer", "access_token": access, "expires_in": self.access_token_ttl,
                                "scope": grant.scope, "target_app": "", "resource_owner": grant.user or ""}
        if with_refresh:
            refresh = secrets.token_urlsafe(32)
            self._refresh[refresh] = {"grant": grant.grant_id, "rotated": False,
                                      "expires_at": now + timedelta(seconds=self.refresh_token_ttl)}
            body["refresh_token"] = refresh
            body["refresh_expires_in"] = self.refresh_token_ttl
        self.issued[grant_type] = self.issued.get(grant_type, 0) + 1
        return Response(200, body, {"Cache-Control": "no-store", "Pragma": "no-cache"})

    # ---- revocation (RFC 7009) ------------------------------------------------------------------
    def _revoke(self, request: Request) -> Response:
        try:
            form = self._form(request)
            self._client(request, form)
        except _OAuthFailure as failure:
            return failure.response()
        self._revoke_token(form.get("token") or "")
        return Response(200, None)  # RFC 7009: 200 even for an unknown token

    def _revoke_token(self, token: str) -> None:
        if token in self._access:
            self._access[token]["revoked"] = True
        if token in self._refresh:
            self.grants[self._refresh[token]["grant"]].revoked = True  # a refresh token revokes its grant

    # ---- admin routes ---------------------------------------------------------------------------
    def admin_routes(self) -> list[Route]:
        return [
            Route("GET", "/_admin/auth/stats", "admin", lambda r: Response(200, {
                "issued": dict(self.issued), "now": iso(self._now()),
                "grants": [{"grant_id": g.grant_id, "shop_id": g.shop_id, "user": g.user, "revoked": g.revoked}
                           for g in self.grants.values()]})),
            Route("POST", "/_admin/auth/expire", "admin", lambda r: Response(200, {"expired": self.expire_access_tokens()})),
            Route("POST", "/_admin/auth/clients", "admin", self._admin_client),
        ]

    def _admin_client(self, request: Request) -> Response:
        body = request.json() or {}
        client = self.clients[body.get("client_id", "woo-mirakl-sandbox")]
        if "redirect_uris" in body:
            client.redirect_uris = [str(u) for u in body["redirect_uris"]]
        if "access_token_ttl" in body:
            self.access_token_ttl = int(body["access_token_ttl"])
        return Response(200, {"client_id": client.client_id, "redirect_uris": client.redirect_uris})


class _OAuthFailure(Exception):
    """An RFC 6749 error answer of the token endpoint."""

    def __init__(self, status: int, error: str, description: str):
        super().__init__(description)
        self.status, self.error, self.description = status, error, description

    def response(self) -> Response:
        headers = {"Cache-Control": "no-store"}
        if self.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="mirakl-auth"'
        return Response(self.status, {"error": self.error, "error_description": self.description}, headers)
