"""Tokens scoped to one tenant, minted, listed and revoked by the operator (admin token only):
`sngin token create HOST | list | revoke ID`, docs/admin.md."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec
from quart import request

from sngin.access import Answer, authorize
from sngin.errors import BadRequest
from sngin.storage import StorageUnavailable
from sngin.tenant_tokens import TenantTokens
from sngin.tenants import tenant_of

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from sngin.deps import Deps

UNAVAILABLE: Answer = {"error": "tokens are kept in tenant storage, which is unavailable"}, 503


def register_token_routes(admin: QuartTrio, deps: Deps) -> None:
    def tokens() -> TenantTokens | None:
        return TenantTokens(deps.storage) if deps.storage is not None else None

    @admin.post("/__sngin/tokens")
    async def create() -> Answer:
        denied = authorize(deps)
        if denied is not None:
            return denied
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("host"), str):
            return {"error": 'expected JSON {"host": "<the tenant\'s host>"}'}, 400
        store = tokens()
        if store is None:
            return UNAVAILABLE
        try:
            made = await store.create(tenant_of(body["host"]))
        except BadRequest as exc:
            return {"error": exc.message}, 400
        except StorageUnavailable:
            return UNAVAILABLE
        # The only time the token is shown: only its hash is kept.
        return {**msgspec.structs.asdict(made.record), "token": made.token}, 201

    @admin.get("/__sngin/tokens")
    async def listing() -> Answer:
        denied = authorize(deps)
        if denied is not None:
            return denied
        store = tokens()
        if store is None:
            return UNAVAILABLE
        try:
            records = await store.list()
        except StorageUnavailable:
            return UNAVAILABLE
        return {"tokens": [msgspec.structs.asdict(r) for r in records]}, 200

    @admin.delete("/__sngin/tokens/<token_id>")
    async def revoke(token_id: str) -> Answer:
        denied = authorize(deps)
        if denied is not None:
            return denied
        store = tokens()
        if store is None:
            return UNAVAILABLE
        try:
            record = await store.revoke(token_id)
        except StorageUnavailable:
            return UNAVAILABLE
        if record is None:
            return {"error": f"no token {token_id}"}, 404
        return {**msgspec.structs.asdict(record), "revoked": True}, 200
