"""The admin API for tenant storage (behind the admin token): list tenants and keys, get, set and
delete one key, export and import a tenant's storage (or every tenant's) as JSON, and drop a
tenant's storage. Keys and values are JSON strings; ones that are not UTF-8 travel in base64
with `"base64": true` on their item, so every byte round-trips."""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Any, Final

from quart import request

from sngin.admin.bodies import MAX_IMPORT_BYTES, bounded_body, json_body, too_large
from sngin.admin.guard import Access, Guard
from sngin.calls.storage_calls import entry_problem, operator_quota
from sngin.errors import BadRequest
from sngin.names import tenant_of
from sngin.storage.tenant_storage import Quota, QuotaExceeded, StorageUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

    from quart_trio import QuartTrio

    from sngin.edge.deps import Deps
    from sngin.storage.tenant_storage import TenantStorage

Answer = Any
MAX_PAGE: Final = 1000


def item(key: bytes, value: bytes) -> dict[str, Any]:
    try:
        return {"key": key.decode(), "value": value.decode()}
    except UnicodeDecodeError:
        return {"key": base64.b64encode(key).decode(), "value": base64.b64encode(value).decode(),
                "base64": True}  # fmt: skip


def unpack(entry: Any) -> tuple[bytes, bytes]:
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise BadRequest('each item must be {"key": "...", "value": "..."}')
    value = entry.get("value")
    if not isinstance(value, str):
        raise BadRequest(f"item {entry['key'][:64]!r}: the value must be a string")
    if entry.get("base64"):
        try:
            return base64.b64decode(entry["key"], validate=True), base64.b64decode(
                value, validate=True
            )
        except binascii.Error:
            raise BadRequest(f"item {entry['key'][:64]!r}: not valid base64") from None
    return entry["key"].encode(), value.encode()


def register_storage_routes(admin: QuartTrio, deps: Deps, guard: Guard) -> None:
    """Routes naming a tenant's keys are the tenant's too (Access.TENANT); listing every
    tenant, import and drop are the operator's (the guard's default)."""

    def backend() -> TenantStorage:
        if deps.storage is None:
            raise BadRequest("tenant storage is not available on this server")
        return deps.storage

    async def quota(tenant: str) -> Quota:
        """The tenant's own quota (its _sngin.json, clamped), else the operator's: as scripts."""
        config = await deps.configs.get(tenant) if deps.configs is not None else None
        if config is not None and config.storage_quota is not None:
            return config.storage_quota
        return operator_quota(deps.settings.storage)

    async def answered(work: Callable[[], Any]) -> Answer:
        """The route's answer, its storage errors as statuses (the guard has let it through)."""
        try:
            return await work()
        except BadRequest as exc:
            return {"error": exc.message}, 400
        except QuotaExceeded as exc:
            return {"error": str(exc)}, 409
        except StorageUnavailable as exc:
            return {"error": str(exc)}, 503

    def checked(key: bytes, value: bytes | None) -> None:
        """The same key and value limits as a script's storage calls."""
        problem = entry_problem(deps.settings.storage, key, value)
        if problem is not None:
            raise BadRequest(problem)

    async def import_items(tenant: str, items: Any) -> int:
        if not isinstance(items, list):
            raise BadRequest('expected {"items": [...]}')
        storage = backend()
        limit = await quota(tenant)
        for entry in items:
            key, value = unpack(entry)
            checked(key, value)
            await storage.set(tenant, key, value, limit)
        return len(items)

    @admin.get("/__sngin/storage")
    async def storage_tenants() -> Answer:
        async def work() -> Answer:
            storage = backend()
            rows = []
            for tenant in await storage.tenants():
                keys, size = await storage.usage(tenant)
                rows.append({"host": tenant, "keys": keys, "bytes": size})
            return {"tenants": rows}, 200

        return await answered(work)

    @admin.get("/__sngin/storage/<host>")
    @guard.allow(Access.TENANT)
    async def storage_keys(host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            after = request.args.get("after", "").encode()
            limit = min(max(request.args.get("limit", 100, type=int) or 100, 1), MAX_PAGE)
            page = await backend().keys(tenant, after, limit)
            keys = [{"key": k.decode("utf-8", "replace"), "bytes": n} for k, n in page]
            following = page[-1][0].decode("utf-8", "replace") if len(page) == limit else None
            return {"host": tenant, "keys": keys, "next": following}, 200

        return await answered(work)

    @admin.route("/__sngin/storage/<host>/value", methods=["GET", "PUT", "DELETE"])
    @guard.allow(Access.TENANT)
    async def storage_value(host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            key = request.args.get("key", "").encode()
            if not key:
                raise BadRequest("?key= is required")
            checked(key, None)
            storage = backend()
            if request.method == "GET":
                value = await storage.get(tenant, key)
                if value is None:
                    return {"error": "no such key"}, 404
                return value, 200, {"Content-Type": "application/octet-stream"}
            value = None
            if request.method == "PUT":
                limit = deps.settings.storage.max_value_bytes
                value = await bounded_body(limit)
                if value is None:
                    return too_large(limit)
            await storage.set(tenant, key, value, await quota(tenant))
            if value is None:
                return {"host": tenant, "key": key.decode(), "deleted": True}, 200
            return {"host": tenant, "key": key.decode(), "stored": True}, 200

        return await answered(work)

    @admin.get("/__sngin/storage/<host>/export")
    @guard.allow(Access.TENANT)
    async def storage_export(host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            items = [item(k, v) for k, v in await backend().items(tenant)]
            return {"host": tenant, "items": items}, 200

        return await answered(work)

    @admin.post("/__sngin/storage/<host>/import")
    async def storage_import(host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            body = await json_body(MAX_IMPORT_BYTES)
            if not isinstance(body, dict):
                raise BadRequest('expected {"items": [...]}')
            count = await import_items(tenant, body.get("items"))
            return {"host": tenant, "imported": count}, 200

        return await answered(work)

    @admin.get("/__sngin/storage-export")
    async def storage_export_all() -> Answer:
        async def work() -> Answer:
            storage = backend()
            tenants = {t: [item(k, v) for k, v in await storage.items(t)]
                       for t in await storage.tenants()}  # fmt: skip
            return {"tenants": tenants}, 200

        return await answered(work)

    @admin.post("/__sngin/storage-import")
    async def storage_import_all() -> Answer:
        async def work() -> Answer:
            body = await json_body(MAX_IMPORT_BYTES)
            tenants = body.get("tenants") if isinstance(body, dict) else None
            if not isinstance(tenants, dict):
                raise BadRequest('expected {"tenants": {"<host>": [items]}}')
            counts = {}
            for host, items in tenants.items():
                tenant = tenant_of(str(host))
                counts[tenant] = await import_items(tenant, items)
            return {"imported": counts}, 200

        return await answered(work)

    @admin.delete("/__sngin/storage/<host>")
    async def storage_drop(host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            return {"host": tenant, "deleted": await backend().drop(tenant)}, 200

        return await answered(work)
