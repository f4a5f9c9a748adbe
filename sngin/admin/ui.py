"""The web UI at /__sngin/ui/: its page and bundle (sngin/ui_assets, built by `just ui`), and
login / session / logout (sngin.admin.session). The page talks to the same JSON API as every other
client, with the session cookie in place of a token."""

from __future__ import annotations

import hmac
import secrets
import time
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import msgspec
from quart import Response, redirect, request

from sngin.admin.access import Answer, token_alive
from sngin.admin.bodies import json_body
from sngin.admin.guard import Access, Route, csrf_ok, session_here
from sngin.admin.session import COOKIE, SESSION_S, new_session, sign
from sngin.storage.tenant_storage import StorageUnavailable
from sngin.tenants.tokens import TenantTokens, token_key

if TYPE_CHECKING:
    from sngin.edge.deps import Deps

ASSETS: Final = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
# Everything the page loads is its own: no CDN, no inline script; inline style only with the
# page's nonce (the editor's style sheets carry it).
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'nonce-{nonce}'; "
    "img-src 'self' data:; connect-src 'self'; font-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS: Final = {
    "Content-Security-Policy": CSP.format(nonce="none"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def asset(name: str) -> bytes:
    return resources.files("sngin").joinpath("ui_assets", name).read_bytes()


def secure() -> bool:
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.scheme == "https" or forwarded == "https"


def cross_site() -> Answer | None:
    """A login or logout another site started (its Origin or Sec-Fetch-Site says so)."""
    site = request.headers.get("Sec-Fetch-Site", "")
    if site and site not in ("same-origin", "none"):
        return {"error": f"refused: a {site} request"}, 403
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
        if not forwarded or origin != f"{forwarded}://{request.host}":
            return {"error": "refused: a request from another origin"}, 403
    return None


class UiRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    def off(self) -> Answer | None:
        if self.deps.settings.ui == "off":
            return {"error": "the web UI is off (SNGIN_UI=off)"}, 404
        return None

    async def ui_root(self) -> Any:
        return redirect("/__sngin/ui/", 308)

    async def page(self) -> Any:
        closed = self.off()
        if closed is not None:
            return closed
        nonce = secrets.token_urlsafe(18)
        headers = PAGE_HEADERS | {"Cache-Control": "no-store"}
        headers["Content-Security-Policy"] = CSP.format(nonce=nonce)
        page = asset("index.html").replace(b"{{nonce}}", nonce.encode())
        return Response(page, 200, headers, content_type="text/html; charset=utf-8")

    async def bundle(self, name: str) -> Any:
        closed = self.off()
        if closed is not None:
            return closed
        kind = ASSETS.get(name)
        if kind is None:
            return {"error": "no such asset"}, 404
        return Response(asset(name), 200, PAGE_HEADERS | {"Cache-Control": "no-cache"},
                        content_type=kind)  # fmt: skip

    async def login(self) -> Any:
        closed = self.off()
        if closed is not None:
            return closed
        admin_token = self.deps.settings.admin_token
        if admin_token is None:
            return {"error": "the admin API is disabled: set SNGIN_ADMIN_TOKEN"}, 403
        refused = cross_site()
        if refused is not None:
            return refused
        if request.mimetype != "application/json":
            # A cross-site form can post text/plain or a form, never JSON without a preflight.
            return {"error": "login takes application/json"}, 415
        body = await json_body()
        token = body.get("token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not 0 < len(token) <= 256:
            return {"error": 'expected JSON {"token": "..."}'}, 400
        host: str | None = None
        if not hmac.compare_digest(token.encode(), admin_token.encode()):
            if self.deps.storage is None:
                return {"error": "wrong token"}, 401
            try:
                host = await TenantTokens(self.deps.storage).host_of(token)
            except StorageUnavailable:
                return {"error": "tokens cannot be checked: storage unavailable"}, 503
            if host is None:
                return {"error": "wrong token"}, 401
        session = new_session(host, None if host is None else token_key(token).decode())
        body = {"host": host, "csrf": session.csrf, "expires": int(session.expires)}
        answer = Response(msgspec.json.encode(body), 200, content_type="application/json")
        answer.set_cookie(
            COOKIE, sign(session, admin_token), max_age=SESSION_S, path="/__sngin/",
            httponly=True, samesite="Strict", secure=secure(),
        )  # fmt: skip
        return answer

    async def current(self) -> Answer:
        session = session_here(self.deps)
        if session is None or (
            session.host is not None and not await token_alive(self.deps, session.token_key)
        ):  # (200: the page asks before every login)
            return {"logged_in": False}, 200
        left = int(session.expires - time.time())
        body = {"logged_in": True, "host": session.host, "csrf": session.csrf}
        return body | {"expires_in_s": left, "public": self.public_address()}, 200

    def public_address(self) -> str | None:
        """Where tenant traffic goes, for the editor's copy-as-curl: None when the UI is served
        from that listener itself (the page's own address is then the right one)."""
        if self.deps.settings.admin_bind is None:
            return None
        bound = self.deps.started.public_url or f"http://{self.deps.settings.bind}"
        return bound if bound.startswith("http") else f"http://{self.deps.settings.bind}"

    async def logout(self) -> Any:
        refused = cross_site()
        if refused is not None:
            return refused
        session = session_here(self.deps)
        if session is not None and not csrf_ok(session):
            return {"error": "missing or wrong CSRF token"}, 403
        answer = Response(b'{"logged_out": true}', 200, content_type="application/json")
        answer.delete_cookie(COOKIE, path="/__sngin/", httponly=True, samesite="Strict",
                             secure=secure())  # fmt: skip
        return answer

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/__sngin/ui", self.ui_root, Access.UI),  # the admin origin only
            Route(("GET",), "/__sngin/ui/", self.page, Access.UI),  # the admin origin only
            Route(
                ("GET",), "/__sngin/ui/assets/<name>", self.bundle, Access.UI
            ),  # the admin origin only
            Route(("POST",), "/__sngin/ui/login", self.login, Access.UI),  # the admin origin only
            Route(
                ("GET",), "/__sngin/ui/session", self.current, Access.UI
            ),  # the admin origin only
            Route(("POST",), "/__sngin/ui/logout", self.logout, Access.UI),  # the admin origin only
        ]
