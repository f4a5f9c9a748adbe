"""Tokens scoped to one tenant, minted, listed and revoked by the operator (admin token only):
`sngin token create HOST | list | revoke ID`, docs/admin.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from sngin.admin.bodies import json_body
from sngin.admin.guard import Access, Route, is_admin_host
from sngin.errors import BadRequest
from sngin.names import tenant_of
from sngin.storage.tenant_storage import StorageUnavailable
from sngin.tenants.tokens import TenantTokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps

UNAVAILABLE: Answer = {"error": "tokens are kept in tenant storage, which is unavailable"}, 503


class TokenRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def guarded(self, work: Callable[[TenantTokens], Awaitable[Answer]]) -> Answer:
        """Tokens live in tenant storage, which may be unavailable (the guard lets only the
        operator through to these routes)."""
        if self.deps.storage is None:
            return UNAVAILABLE
        try:
            return await work(TenantTokens(self.deps.storage))
        except StorageUnavailable:
            return UNAVAILABLE

    async def create(self) -> Answer:
        async def work(tokens: TenantTokens) -> Answer:
            body = await json_body()
            if not isinstance(body, dict) or not isinstance(body.get("host"), str):
                return {"error": 'expected JSON {"host": "<the tenant\'s host>"}'}, 400
            try:
                tenant = tenant_of(body["host"])
            except BadRequest as exc:
                return {"error": exc.message}, 400
            if is_admin_host(tenant, self.deps.settings):
                return {"error": f"{tenant} is the admin origin, not a site"}, 400
            made = await tokens.create(tenant)
            # The only time the token is shown: only its hash is kept.
            return {**msgspec.structs.asdict(made.record), "token": made.token}, 201

        return await self.guarded(work)

    async def listing(self) -> Answer:
        async def work(tokens: TenantTokens) -> Answer:
            return {"tokens": [msgspec.structs.asdict(r) for r in await tokens.list()]}, 200

        return await self.guarded(work)

    async def revoke(self, token_id: str) -> Answer:
        async def work(tokens: TenantTokens) -> Answer:
            record = await tokens.revoke(token_id)
            if record is None:
                return {"error": f"no token {token_id}"}, 404
            return {**msgspec.structs.asdict(record), "revoked": True}, 200

        return await self.guarded(work)

    def routes(self) -> list[Route]:
        return [
            Route(("POST",), "/__sngin/tokens", self.create, Access.OPERATOR),
            Route(("GET",), "/__sngin/tokens", self.listing, Access.OPERATOR),
            Route(("DELETE",), "/__sngin/tokens/<token_id>", self.revoke, Access.OPERATOR),
        ]
