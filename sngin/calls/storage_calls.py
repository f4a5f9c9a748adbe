"""One request's storage, lease and cache calls: the tenant's own key space only, within the
request's own budget of operations (SNGIN_MAX_STORAGE_OPS) and the tenant's quota; every lease
the request takes is released when it ends, however it ends."""

from __future__ import annotations

import contextlib
import math
import secrets
from typing import TYPE_CHECKING, Final

import trio

from sngin.errors import StorageError
from sngin.storage.tenant_storage import Quota, QuotaExceeded, StorageUnavailable, backend_failures

if TYPE_CHECKING:
    from sandbox.protocol import StorageCall
    from sngin.config import StorageSettings
    from sngin.storage.redis import RedisCache
    from sngin.storage.script_cache import TenantCache
    from sngin.storage.tenant_storage import TenantStorage

# A storage or cache backend that stalls (Redis stopped, a locked database) costs a call at most
# this, and always leaves the request time to answer: the stall is the platform's, so it must
# not end as the tenant's wall kill (a quarantine strike).
BACKEND_WAIT_S: Final = 2.0
ANSWER_MARGIN_S: Final = 0.25
LEASE_GRACE_S: Final = 5.0  # a lease outlives its request's wall time by this much, at most
DEFAULT_CACHE_TTL_S: Final = 300.0
OPS: Final = frozenset(
    {"get", "set", "delete", "lease_acquire", "lease_release", "cache_get", "cache_set",
     "cache_delete"}
)  # fmt: skip


def entry_problem(settings: StorageSettings, key: bytes, value: bytes | None) -> str | None:
    """What breaks the key and value limits (scripts' calls and the admin API alike), or None."""
    if not key or len(key) > settings.max_key_bytes:
        return f"keys must be 1 to {settings.max_key_bytes} bytes"
    if value is not None and len(value) > settings.max_value_bytes:
        return f"values must be at most {settings.max_value_bytes} bytes"
    return None


def operator_quota(settings: StorageSettings) -> Quota:
    """The quota of a tenant whose _sngin.json sets none."""
    return Quota(max_keys=settings.max_keys, max_bytes=settings.max_bytes)


class StorageRefused(StorageError):
    """The call is refused or failed: the text is the script's error."""


class StorageCalls:
    def __init__(
        self,
        storage: TenantStorage | None,
        cache: TenantCache | RedisCache | None,
        settings: StorageSettings,
        *,
        tenant: str,
        deadline: float,
        wall_s: float,
        quota: Quota | None = None,
    ) -> None:
        # the tenant's own (its _sngin.json, clamped), else the operator's
        self._quota = quota or operator_quota(settings)
        self._storage = storage
        self._cache = cache
        self._settings = settings
        self._tenant = tenant
        self._deadline = deadline
        self._lease_ttl_s = wall_s + LEASE_GRACE_S
        self._holder_token: str | None = None
        self._leases: set[bytes] = set()
        self._left = settings.max_ops
        self.seconds = 0.0  # wall time spent in these calls (Server-Timing, metrics)
        self.operations = 0

    async def __call__(self, call: StorageCall) -> bytes | None:
        started = trio.current_time()
        self.operations += 1
        try:
            if call.op == "lease_acquire":  # its wait is the script's own choice (timeout)
                return await self._answer(call)
            bound = min(BACKEND_WAIT_S, self._deadline - started - ANSWER_MARGIN_S)
            with trio.move_on_after(max(bound, 0)):
                return await self._answer(call)
            raise StorageRefused(
                f"storage unavailable: the backend did not answer within {max(bound, 0):.2g} s"
            )
        finally:
            self.seconds += trio.current_time() - started

    async def _answer(self, call: StorageCall) -> bytes | None:
        settings = self._settings
        if call.op not in OPS:
            raise StorageRefused("unknown operation")
        if self._left <= 0:
            raise StorageRefused(f"more than {settings.max_ops} storage operations in one request")
        self._left -= 1
        key, value = call.key, call.value
        problem = entry_problem(settings, key, value)
        if problem is not None:
            raise StorageRefused(problem)
        if call.op.startswith("cache_"):
            try:
                return await self._cached(call.op, key, value, call.ttl_s)
            except StorageUnavailable as exc:
                raise StorageRefused(str(exc)) from None
        storage = self._storage
        if storage is None:
            raise StorageRefused("storage is not available here")
        tenant = self._tenant
        try:
            if call.op == "get":
                return await storage.get(tenant, key)
            if call.op in ("set", "delete"):
                if call.op == "set" and value is None:
                    raise StorageRefused("set needs a value")
                await storage.set(tenant, key, value if call.op == "set" else None, self._quota)
                return None
            if call.op == "lease_acquire":
                return await self._acquire(storage, key, call.timeout_s)
            released = await storage.release(tenant, key, self._holder)
            self._leases.discard(key)
            return b"1" if released else None
        except QuotaExceeded as exc:
            raise StorageRefused(str(exc)) from None
        except StorageUnavailable as exc:
            raise StorageRefused(str(exc)) from None

    @property
    def _holder(self) -> str:
        """This request as a lease holder: server-made, never the client's X-Request-Id, so no
        one can pose as it; made at the first lease call (most requests take none)."""
        if self._holder_token is None:
            self._holder_token = secrets.token_hex(12)
        return self._holder_token

    async def _acquire(
        self, storage: TenantStorage, name: bytes, timeout_s: float | None
    ) -> bytes | None:
        if name in self._leases:
            return b"1"  # already this request's
        remaining = self._deadline - trio.current_time()
        wait = remaining if timeout_s is None or not math.isfinite(timeout_s) else timeout_s
        taken = await storage.acquire(
            self._tenant, name, self._holder,
            timeout_s=min(wait, remaining), ttl_s=self._lease_ttl_s,
        )  # fmt: skip
        if not taken:
            return None
        self._leases.add(name)
        return b"1"

    async def _cached(
        self, op: str, key: bytes, value: bytes | None, ttl_s: float | None
    ) -> bytes | None:
        cache = self._cache
        if cache is None:
            raise StorageRefused("the cache is not available here")
        location = getattr(cache, "location", "the cache")
        with backend_failures(location, "cache unavailable"):
            if op == "cache_get":
                return await cache.fetch(self._tenant, key)
            if op == "cache_set":
                if value is None:
                    raise StorageRefused("cache.set needs a value")
                ttl = ttl_s if ttl_s is not None and math.isfinite(ttl_s) and ttl_s > 0 else None
                await cache.store(self._tenant, key, value, ttl or DEFAULT_CACHE_TTL_S)
                return None
            await cache.remove(self._tenant, key)
            return None

    async def release_all(self) -> None:
        """The request is over: give back every lease it still holds (shielded: this runs
        also when the request was cancelled or its worker killed)."""
        if not self._leases or self._storage is None:
            return
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            for name in list(self._leases):
                with contextlib.suppress(StorageUnavailable):  # else it expires on its own
                    await self._storage.release(self._tenant, name, self._holder)
            self._leases.clear()
