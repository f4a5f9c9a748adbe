"""Who is calling the admin API: the operator's admin token sees every tenant; a token scoped to
one tenant (sngin.tenants.tokens) acts on that tenant's code, log and storage, nothing else.
sngin.admin.guard applies these to every route."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from quart import request

from sngin.storage.tenant_storage import StorageUnavailable
from sngin.tenants.tokens import PREFIX, TenantTokens

if TYPE_CHECKING:
    from sngin.edge.deps import Deps

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


async def lookup_token(deps: Deps, offered: str) -> Caller | Answer:
    """The tenant a scoped token is for; else the error to answer."""
    if deps.storage is None or not offered.startswith(PREFIX):
        return WRONG_TOKEN
    try:
        host = await TenantTokens(deps.storage).host_of(offered)
    except StorageUnavailable:
        return {"error": "tokens cannot be checked: storage unavailable"}, 503
    if host is None:
        return {"error": "unknown or revoked token"}, 401, {"WWW-Authenticate": "Bearer"}
    return Caller(host=host)
