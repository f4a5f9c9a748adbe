"""Who may use the admin API: the operator's admin token sees every tenant; a token scoped to
one tenant (sngin.tenant_tokens) acts on that tenant's code, log and storage, nothing else."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import request

from sngin.storage import StorageUnavailable
from sngin.tenant_tokens import PREFIX, TenantTokens
from sngin.ui_session import COOKIE, CSRF_HEADER, Session, verify

if TYPE_CHECKING:
    from sngin.deps import Deps

Answer = tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]


def bearer() -> str:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


DISABLED: Answer = {"error": "the admin API is disabled: set SNGIN_ADMIN_TOKEN"}, 403
WRONG_TOKEN: Answer = (
    {"error": "missing or wrong admin token"},
    401,
    {"WWW-Authenticate": "Bearer"},
)


def credentials(deps: Deps) -> Caller | Session | str | Answer:
    """What the request offers, read once: the operator (the admin token, or an operator's UI
    session); a tenant's UI session (to check its token is still there); another bearer token
    (to look up); or the error to answer."""
    token = deps.settings.admin_token
    if token is None:
        return DISABLED
    offered = bearer()
    if offered:
        if hmac.compare_digest(offered.encode(), token.encode()):
            return Caller(host=None)
        return offered
    session = ui_session(deps)
    if session is None:
        return WRONG_TOKEN
    if isinstance(session, Session) and session.host is None:
        return Caller(host=None)
    return session  # a tenant's session, or the error of one without its CSRF token


def authorize(deps: Deps) -> Answer | None:
    """None when the request carries the admin token (or a UI session of the operator's);
    else the error to answer."""
    offered = credentials(deps)
    if isinstance(offered, Caller):
        return None
    return offered if isinstance(offered, tuple) else WRONG_TOKEN


SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def ui_session(deps: Deps) -> Session | Answer | None:
    """The web UI's session from its cookie, if any; a request that changes anything must
    also carry the session's CSRF token (else the error to answer)."""
    cookie = request.cookies.get(COOKIE)
    token = deps.settings.admin_token
    if cookie is None or token is None:
        return None
    session = verify(cookie, token)
    if session is None:
        return None
    if request.method not in SAFE_METHODS:
        offered = request.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(offered.encode(), session.csrf.encode()):
            return {"error": "missing or wrong CSRF token"}, 403
    return session


@dataclass(frozen=True, slots=True)
class Caller:
    host: str | None  # None: the operator

    def may(self, tenant: str) -> bool:
        return self.host is None or self.host == tenant


FORBIDDEN: Answer = {"error": "this token is for another site"}, 403


async def token_alive(deps: Deps, key: str | None) -> bool:
    if key is None or deps.storage is None:
        return False
    try:
        return await TenantTokens(deps.storage).alive(key)
    except StorageUnavailable:
        return False


async def identify(deps: Deps) -> Caller | Answer:
    """The operator (admin token) or the tenant a scoped token is for; else the error."""
    offered = credentials(deps)
    if isinstance(offered, Caller | tuple):
        return offered
    if isinstance(offered, Session):
        if not await token_alive(deps, offered.token_key):
            return {"error": "this session's token was revoked"}, 401
        return Caller(host=offered.host)
    if deps.storage is None or not offered.startswith(PREFIX):
        return WRONG_TOKEN
    try:
        host = await TenantTokens(deps.storage).host_of(offered)
    except StorageUnavailable:
        return {"error": "tokens cannot be checked: storage unavailable"}, 503
    if host is None:
        return {"error": "unknown or revoked token"}, 401, {"WWW-Authenticate": "Bearer"}
    return Caller(host=host)
