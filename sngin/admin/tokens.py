"""Tokens scoped to one tenant, minted, listed and revoked by the operator (admin token only):
`sngin token create HOST | list | revoke ID`, docs/admin.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from sngin.admin.bodies import json_body
from sngin.admin.guard import is_admin_host
from sngin.errors import BadRequest
from sngin.names import tenant_of
from sngin.storage.tenant_storage import StorageUnavailable
from sngin.tenants.tokens import TenantTokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from quart_trio import QuartTrio

    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps

UNAVAILABLE: Answer = {"error": "tokens are kept in tenant storage, which is unavailable"}, 503


def register_token_routes(admin: QuartTrio, deps: Deps) -> None:
    async def guarded(work: Callable[[TenantTokens], Awaitable[Answer]]) -> Answer:
        """Tokens live in tenant storage, which may be unavailable (the guard lets only the
        operator through to these routes)."""
        if deps.storage is None:
            return UNAVAILABLE
        try:
            return await work(TenantTokens(deps.storage))
        except StorageUnavailable:
            return UNAVAILABLE

    @admin.post("/__sngin/tokens")
    async def create() -> Answer:
        async def work(tokens: TenantTokens) -> Answer:
            body = await json_body()
            if not isinstance(body, dict) or not isinstance(body.get("host"), str):
                return {"error": 'expected JSON {"host": "<the tenant\'s host>"}'}, 400
            try:
                tenant = tenant_of(body["host"])
            except BadRequest as exc:
                return {"error": exc.message}, 400
            if is_admin_host(tenant, deps.settings):
                return {"error": f"{tenant} is the admin origin, not a site"}, 400
            made = await tokens.create(tenant)
            # The only time the token is shown: only its hash is kept.
            return {**msgspec.structs.asdict(made.record), "token": made.token}, 201

        return await guarded(work)

    @admin.get("/__sngin/tokens")
    async def listing() -> Answer:
        async def work(tokens: TenantTokens) -> Answer:
            return {"tokens": [msgspec.structs.asdict(r) for r in await tokens.list()]}, 200

        return await guarded(work)

    @admin.delete("/__sngin/tokens/<token_id>")
    async def revoke(token_id: str) -> Answer:
        async def work(tokens: TenantTokens) -> Answer:
            record = await tokens.revoke(token_id)
            if record is None:
                return {"error": f"no token {token_id}"}, 404
            return {**msgspec.structs.asdict(record), "revoked": True}, 200

        return await guarded(work)
