"""Who may use the admin API: the operator's admin token sees every tenant; a token scoped to
one tenant (sngin.tenant_tokens) acts on that tenant's code, log and storage, nothing else."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import request

from sngin.storage import StorageUnavailable
from sngin.tenant_tokens import PREFIX, TenantTokens

if TYPE_CHECKING:
    from sngin.deps import Deps

Answer = tuple[dict[str, Any], int] | tuple[dict[str, Any], int, dict[str, str]]


def bearer() -> str:
    scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
    return credential.strip() if scheme.lower() == "bearer" else ""


def authorize(deps: Deps) -> Answer | None:
    """None when the request carries the admin token; else the error to answer."""
    token = deps.settings.admin_token
    if token is None:
        return {"error": "the admin API is disabled: set SNGIN_ADMIN_TOKEN"}, 403
    if not hmac.compare_digest(bearer().encode(), token.encode()):
        return {"error": "missing or wrong admin token"}, 401, {"WWW-Authenticate": "Bearer"}
    return None


@dataclass(frozen=True, slots=True)
class Caller:
    host: str | None  # None: the operator

    def may(self, tenant: str) -> bool:
        return self.host is None or self.host == tenant


FORBIDDEN: Answer = {"error": "this token is for another site"}, 403


async def identify(deps: Deps) -> Caller | Answer:
    """The operator (admin token) or the tenant a scoped token is for; else the error."""
    denied = authorize(deps)
    if denied is None:
        return Caller(host=None)
    offered = bearer()
    if deps.settings.admin_token is None or deps.storage is None or not offered.startswith(PREFIX):
        return denied
    try:
        host = await TenantTokens(deps.storage).host_of(offered)
    except StorageUnavailable:
        return {"error": "tokens cannot be checked: storage unavailable"}, 503
    if host is None:
        return {"error": "unknown or revoked token"}, 401, {"WWW-Authenticate": "Bearer"}
    return Caller(host=host)
