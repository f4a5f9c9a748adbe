"""Where bundles are kept: the tenant storage backend (SQLite, or Redis shared by every node),
under sngin's own namespace per tenant, the last SNGIN_REPLAY_MAX_BUNDLES and at most
SNGIN_REPLAY_MAX_BYTES per tenant, oldest first out. Writes are rate-limited per script: a
script that fails on every request gets a few bundles, then at most one per WINDOW_S."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from sngin.storage.sqlite import Quota

if TYPE_CHECKING:
    from sngin.storage.tenant_storage import TenantStorage

NAMESPACE: Final = "__replays/"  # + tenant (INTERNAL_PREFIX: no tenant's storage can name it)
SUMMARIES: Final = "__replay_list/"  # + tenant: each bundle's line in the list, by the same key
FREE_WRITES: Final = 3  # per script, before the rate applies
WINDOW_S: Final = 10.0
MAX_SCRIPTS_TRACKED: Final = 10_000


class WriteRate:
    """Per script: the first FREE_WRITES bundles, then one per WINDOW_S (bounded memory)."""

    def __init__(self) -> None:
        self._scripts: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def allows(self, script: str, now: float) -> bool:
        written, last = self._scripts.pop(script, (0, 0.0))
        allowed = written < FREE_WRITES or now - last >= WINDOW_S
        if allowed:
            written, last = written + 1, now
        self._scripts[script] = (written, last)
        if len(self._scripts) > MAX_SCRIPTS_TRACKED:
            self._scripts.popitem(last=False)
        return allowed


class ReplayStore:
    def __init__(self, storage: TenantStorage, *, max_bundles: int, max_bytes: int) -> None:
        self.storage = storage
        self.max_bundles = max_bundles
        self.max_bytes = max_bytes
        self.rate = WriteRate()
        # The namespace's own quota: a bundle never counts against the tenant's storage.
        self._quota = Quota(max_keys=max_bundles + 1, max_bytes=max_bytes + 8 * 1024 * 1024)

    async def ids(self, tenant: str) -> list[tuple[bytes, int]]:
        """Every kept bundle's key (`<ms>:<id>`, oldest first) and size."""
        return await self.storage.keys(NAMESPACE + tenant, b"", self.max_bundles + 1)

    async def unique_id(self, tenant: str, wanted: str) -> str:
        """The request's id, with a suffix when a bundle already has it (a client's id)."""
        taken = {key.split(b":", 1)[1].decode() for key, _ in await self.ids(tenant)}
        if wanted not in taken:
            return wanted
        n = 2
        while f"{wanted}-{n}" in taken:
            n += 1
        return f"{wanted}-{n}"

    async def put(self, tenant: str, bundle_id: str, started: float, data: bytes,
                  summary: bytes) -> bool:  # fmt: skip
        """Keep it, dropping the oldest while the tenant is over its bounds; False: larger than
        the tenant may keep at all."""
        if len(data) > self.max_bytes:
            return False
        kept = await self.ids(tenant)
        total = sum(size for _, size in kept) + len(data)
        while kept and (len(kept) + 1 > self.max_bundles or total > self.max_bytes):
            oldest, size = kept.pop(0)
            await self._drop(tenant, oldest)
            total -= size
        key = f"{int(started * 1000):016d}:{bundle_id}".encode()
        await self.storage.set(SUMMARIES + tenant, key, summary, self._quota)
        await self.storage.set(NAMESPACE + tenant, key, data, self._quota)
        return True

    async def _drop(self, tenant: str, key: bytes) -> None:
        await self.storage.set(NAMESPACE + tenant, key, None, self._quota)
        await self.storage.set(SUMMARIES + tenant, key, None, self._quota)

    async def summaries(self, tenant: str) -> list[bytes]:
        """Each kept bundle's line (small JSON), newest first."""
        found = []
        for key, _ in reversed(await self.ids(tenant)):
            line = await self.storage.get(SUMMARIES + tenant, key)
            if line is not None:
                found.append(line)
        return found

    async def key_of(self, tenant: str, bundle_id: str) -> bytes | None:
        for key, _ in await self.ids(tenant):
            if key.split(b":", 1)[1].decode() == bundle_id:
                return key
        return None

    async def get(self, tenant: str, bundle_id: str) -> bytes | None:
        key = await self.key_of(tenant, bundle_id)
        return None if key is None else await self.storage.get(NAMESPACE + tenant, key)

    async def delete(self, tenant: str, bundle_id: str) -> bool:
        key = await self.key_of(tenant, bundle_id)
        if key is None:
            return False
        await self._drop(tenant, key)
        return True
