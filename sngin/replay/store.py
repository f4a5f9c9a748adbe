"""Where bundles are kept: the tenant storage backend (SQLite, or Redis shared by every node),
under sngin's own namespaces per tenant, the last SNGIN_REPLAY_MAX_BUNDLES and at most
SNGIN_REPLAY_MAX_BYTES per tenant, oldest first out. A script's or module's text is kept once
(by its SHA-256) for every bundle that has it, and goes with the last of them. How often
bundles may be written: sngin.replay.write_rate."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from sngin.errors import SnginError
from sngin.replay.bundle import Bundle, decode, text_digests, with_texts
from sngin.replay.write_rate import WriteRate
from sngin.storage.sqlite import Quota

if TYPE_CHECKING:
    from sngin.storage.tenant_storage import TenantStorage

NAMESPACE: Final = "__replays/"  # + tenant (INTERNAL_PREFIX: no tenant's storage can name it)
SUMMARIES: Final = "__replay_list/"  # + tenant: each bundle's line in the list, by the same key
TEXTS: Final = "__replay_texts/"  # + tenant: script and module texts, by SHA-256
MAX_TEXTS: Final = 100_000  # texts a tenant's bundles may share (their bytes are the bound)


class BundleIncomplete(SnginError):
    status = 410


class ReplayStore:
    def __init__(self, storage: TenantStorage, *, max_bundles: int, max_bytes: int) -> None:
        self.storage = storage
        self.max_bundles = max_bundles
        self.max_bytes = max_bytes
        self.rate = WriteRate()
        # The namespace's own quota: a bundle never counts against the tenant's storage.
        self._quota = Quota(max_keys=max_bundles + 1, max_bytes=max_bytes + 8 * 1024 * 1024)
        self._texts_quota = Quota(max_keys=MAX_TEXTS, max_bytes=max_bytes + 8 * 1024 * 1024)

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
                  summary: dict[str, Any], texts: dict[str, bytes]) -> bool:  # fmt: skip
        """Keep it, dropping the oldest while the tenant is over its bounds (a text counts once,
        and goes with the last bundle that has it); False: larger than a tenant keeps at all."""
        if len(data) + sum(map(len, texts.values())) > self.max_bytes:
            return False
        kept = await self.ids(tenant)
        uses = {key: await self._texts_of(tenant, key) for key, _ in kept}
        have = dict(await self.storage.keys(TEXTS + tenant, b"", MAX_TEXTS))

        def in_use() -> set[bytes]:
            return {d.encode() for d in texts}.union(*(uses[key] for key, _ in kept))

        def total() -> int:
            shared = sum(have.get(d, len(texts.get(d.decode(), b""))) for d in in_use())
            return sum(size for _, size in kept) + len(data) + shared

        while kept and (len(kept) + 1 > self.max_bundles or total() > self.max_bytes):
            oldest, _ = kept.pop(0)
            await self._drop(tenant, oldest)
        await self._forget(tenant, have.keys() - in_use())
        for digest, text in texts.items():  # before the bundle: a kept bundle has its texts
            if digest.encode() not in have:
                await self.storage.set(TEXTS + tenant, digest.encode(), text, self._texts_quota)
        key = f"{int(started * 1000):016d}:{bundle_id}".encode()
        line = msgspec.json.encode(summary | {"texts": sorted(texts)})
        await self.storage.set(SUMMARIES + tenant, key, line, self._quota)
        await self.storage.set(NAMESPACE + tenant, key, data, self._quota)
        return True

    async def _texts_of(self, tenant: str, key: bytes) -> set[bytes]:
        line = await self.storage.get(SUMMARIES + tenant, key)
        if line is None:
            return set()
        return {d.encode() for d in msgspec.json.decode(line).get("texts", [])}

    async def _forget(self, tenant: str, digests: set[bytes]) -> None:
        """Texts no bundle has: a dropped bundle's, or a write cut short before its bundle."""
        for digest in digests:
            await self.storage.set(TEXTS + tenant, digest, None, self._texts_quota)

    async def _drop(self, tenant: str, key: bytes) -> None:
        await self.storage.set(NAMESPACE + tenant, key, None, self._quota)
        await self.storage.set(SUMMARIES + tenant, key, None, self._quota)

    async def summaries(self, tenant: str) -> list[dict[str, Any]]:
        """Each kept bundle's line (id, time, path, outcome), newest first."""
        found = []
        for key, _ in reversed(await self.ids(tenant)):
            line = await self.storage.get(SUMMARIES + tenant, key)
            if line is not None:
                summary = msgspec.json.decode(line)
                summary.pop("texts", None)
                found.append(summary)
        return found

    async def key_of(self, tenant: str, bundle_id: str) -> bytes | None:
        for key, _ in await self.ids(tenant):
            if key.split(b":", 1)[1].decode() == bundle_id:
                return key
        return None

    async def get(self, tenant: str, bundle_id: str) -> Bundle | None:
        """The bundle with its texts (decoded in a thread: its size is the tenant's)."""
        key = await self.key_of(tenant, bundle_id)
        data = None if key is None else await self.storage.get(NAMESPACE + tenant, key)
        if data is None:
            return None
        bundle = await trio.to_thread.run_sync(decode, data)
        texts = {}
        for digest in text_digests(bundle):
            text = await self.storage.get(TEXTS + tenant, digest.encode())
            if text is None:  # another node dropped it as this bundle was written
                raise BundleIncomplete(
                    f"replay bundle {bundle_id[:80]!r} lost its script's or a module's text;"
                    " delete it"
                )
            texts[digest] = text
        return with_texts(bundle, texts)

    async def delete(self, tenant: str, bundle_id: str) -> bool:
        key = await self.key_of(tenant, bundle_id)
        if key is None:
            return False
        await self._drop(tenant, key)
        have = {digest for digest, _ in await self.storage.keys(TEXTS + tenant, b"", MAX_TEXTS)}
        for other, _ in await self.ids(tenant):
            have -= await self._texts_of(tenant, other)
        await self._forget(tenant, have)
        return True
