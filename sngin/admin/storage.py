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
from sngin.admin.guard import Access, Route
from sngin.calls.storage_calls import entry_problem, operator_quota
from sngin.errors import BadRequest
from sngin.names import tenant_of
from sngin.storage.tenant_storage import Quota, QuotaExceeded, StorageUnavailable

if TYPE_CHECKING:
    from collections.abc import Callable

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


class StorageRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    """Routes naming a tenant's keys are the tenant's too (Access.TENANT); listing every
    tenant, import and drop are the operator's (the guard's default)."""

    def backend(self) -> TenantStorage:
        if self.deps.storage is None:
            raise BadRequest("tenant storage is not available on this server")
        return self.deps.storage

    async def quota(self, tenant: str) -> Quota:
        """The tenant's own quota (its _sngin.json, clamped), else the operator's: as scripts."""
        config = await self.deps.configs.get(tenant) if self.deps.configs is not None else None
        if config is not None and config.storage_quota is not None:
            return config.storage_quota
        return operator_quota(self.deps.settings.storage)

    async def answered(self, work: Callable[[], Any]) -> Answer:
        """The route's answer, its storage errors as statuses (the guard has let it through)."""
        try:
            return await work()
        except BadRequest as exc:
            return {"error": exc.message}, 400
        except QuotaExceeded as exc:
            return {"error": str(exc)}, 409
        except StorageUnavailable as exc:
            return {"error": str(exc)}, 503

    def checked(self, key: bytes, value: bytes | None) -> None:
        """The same key and value limits as a script's storage calls."""
        problem = entry_problem(self.deps.settings.storage, key, value)
        if problem is not None:
            raise BadRequest(problem)

    async def import_items(self, tenant: str, items: Any) -> int:
        if not isinstance(items, list):
            raise BadRequest('expected {"items": [...]}')
        storage = self.backend()
        limit = await self.quota(tenant)
        for entry in items:
            key, value = unpack(entry)
            self.checked(key, value)
            await storage.set(tenant, key, value, limit)
        return len(items)

    async def storage_tenants(self) -> Answer:
        async def work() -> Answer:
            storage = self.backend()
            rows = []
            for tenant in await storage.tenants():
                keys, size = await storage.usage(tenant)
                rows.append({"host": tenant, "keys": keys, "bytes": size})
            return {"tenants": rows}, 200

        return await self.answered(work)

    async def storage_keys(self, host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            after = request.args.get("after", "").encode()
            limit = min(max(request.args.get("limit", 100, type=int) or 100, 1), MAX_PAGE)
            page = await self.backend().keys(tenant, after, limit)
            keys = [{"key": k.decode("utf-8", "replace"), "bytes": n} for k, n in page]
            following = page[-1][0].decode("utf-8", "replace") if len(page) == limit else None
            return {"host": tenant, "keys": keys, "next": following}, 200

        return await self.answered(work)

    async def storage_value(self, host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            key = request.args.get("key", "").encode()
            if not key:
                raise BadRequest("?key= is required")
            self.checked(key, None)
            storage = self.backend()
            if request.method == "GET":
                value = await storage.get(tenant, key)
                if value is None:
                    return {"error": "no such key"}, 404
                return value, 200, {"Content-Type": "application/octet-stream"}
            value = None
            if request.method == "PUT":
                limit = self.deps.settings.storage.max_value_bytes
                value = await bounded_body(limit)
                if value is None:
                    return too_large(limit)
            await storage.set(tenant, key, value, await self.quota(tenant))
            if value is None:
                return {"host": tenant, "key": key.decode(), "deleted": True}, 200
            return {"host": tenant, "key": key.decode(), "stored": True}, 200

        return await self.answered(work)

    async def storage_export(self, host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            items = [item(k, v) for k, v in await self.backend().items(tenant)]
            return {"host": tenant, "items": items}, 200

        return await self.answered(work)

    async def storage_import(self, host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            body = await json_body(MAX_IMPORT_BYTES)
            if not isinstance(body, dict):
                raise BadRequest('expected {"items": [...]}')
            count = await self.import_items(tenant, body.get("items"))
            return {"host": tenant, "imported": count}, 200

        return await self.answered(work)

    async def storage_export_all(self) -> Answer:
        async def work() -> Answer:
            storage = self.backend()
            tenants = {t: [item(k, v) for k, v in await storage.items(t)]
                       for t in await storage.tenants()}  # fmt: skip
            return {"tenants": tenants}, 200

        return await self.answered(work)

    async def storage_import_all(self) -> Answer:
        async def work() -> Answer:
            body = await json_body(MAX_IMPORT_BYTES)
            tenants = body.get("tenants") if isinstance(body, dict) else None
            if not isinstance(tenants, dict):
                raise BadRequest('expected {"tenants": {"<host>": [items]}}')
            counts = {}
            for host, items in tenants.items():
                tenant = tenant_of(str(host))
                counts[tenant] = await self.import_items(tenant, items)
            return {"imported": counts}, 200

        return await self.answered(work)

    async def storage_drop(self, host: str) -> Answer:
        async def work() -> Answer:
            tenant = tenant_of(host)
            return {"host": tenant, "deleted": await self.backend().drop(tenant)}, 200

        return await self.answered(work)

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/__sngin/storage", self.storage_tenants, Access.OPERATOR),
            Route(("GET",), "/__sngin/storage/<host>", self.storage_keys, Access.TENANT),
            Route(
                (
                    "GET",
                    "PUT",
                    "DELETE",
                ),
                "/__sngin/storage/<host>/value",
                self.storage_value,
                Access.TENANT,
            ),
            Route(("GET",), "/__sngin/storage/<host>/export", self.storage_export, Access.TENANT),
            Route(
                ("POST",), "/__sngin/storage/<host>/import", self.storage_import, Access.OPERATOR
            ),
            Route(("GET",), "/__sngin/storage-export", self.storage_export_all, Access.OPERATOR),
            Route(("POST",), "/__sngin/storage-import", self.storage_import_all, Access.OPERATOR),
            Route(("DELETE",), "/__sngin/storage/<host>", self.storage_drop, Access.OPERATOR),
        ]
