"""`cache` for scripts: best-effort strings with a TTL, per tenant, in this node's memory. Bounded
in total bytes, and no tenant holds more than its share: one tenant's writes evict its own
entries first, then the least recently used of anyone's."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

import trio

ENTRY_OVERHEAD: Final = 64  # bytes counted per entry beyond its key and value


class TenantCache:
    def __init__(self, *, max_bytes: int, tenant_share: float) -> None:
        self.max_bytes = max_bytes
        self.tenant_max = max(1, int(max_bytes * tenant_share))
        # (tenant, key) -> (value, expires_at, size), least recently used first
        self._entries: OrderedDict[tuple[str, bytes], tuple[bytes, float, int]] = OrderedDict()
        # each tenant's keys in the same order: its own oldest is found in O(1)
        self._tenant_keys: dict[str, OrderedDict[bytes, None]] = {}
        self._tenant_bytes: dict[str, int] = {}
        self.bytes = 0

    def get(self, tenant: str, key: bytes) -> bytes | None:
        entry = self._entries.get((tenant, key))
        if entry is None:
            return None
        if entry[1] <= trio.current_time():
            self._drop((tenant, key))
            return None
        self._entries.move_to_end((tenant, key))
        self._tenant_keys[tenant].move_to_end(key)
        return entry[0]

    def set(self, tenant: str, key: bytes, value: bytes, ttl_s: float) -> None:
        self._drop((tenant, key))
        size = len(key) + len(value) + ENTRY_OVERHEAD
        if size > self.tenant_max:
            return  # larger than a share: never kept (best effort)
        while self._tenant_bytes.get(tenant, 0) + size > self.tenant_max:
            self._drop((tenant, next(iter(self._tenant_keys[tenant]))))
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[(tenant, key)] = (value, trio.current_time() + ttl_s, size)
        self._tenant_keys.setdefault(tenant, OrderedDict())[key] = None
        self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + size
        self.bytes += size

    def delete(self, tenant: str, key: bytes) -> None:
        self._drop((tenant, key))

    # The interface RedisCache shares (sngin.calls.storage_calls awaits these).

    async def fetch(self, tenant: str, key: bytes) -> bytes | None:
        return self.get(tenant, key)

    async def store(self, tenant: str, key: bytes, value: bytes, ttl_s: float) -> None:
        self.set(tenant, key, value, ttl_s)

    async def remove(self, tenant: str, key: bytes) -> None:
        self.delete(tenant, key)

    def _drop(self, entry_key: tuple[str, bytes]) -> None:
        entry = self._entries.pop(entry_key, None)
        if entry is None:
            return
        tenant, key = entry_key
        self.bytes -= entry[2]
        keys = self._tenant_keys[tenant]
        del keys[key]
        if keys:
            self._tenant_bytes[tenant] -= entry[2]
        else:
            del self._tenant_keys[tenant], self._tenant_bytes[tenant]
