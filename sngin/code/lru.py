"""A byte-bounded LRU of code-cache entries with a per-tenant share, so one tenant's scripts
cannot flush everyone else's. Pure bookkeeping: no I/O, no clock."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.code.store import Source

log = logging.getLogger(__name__)

ENTRY_OVERHEAD_BYTES: Final = 256


@dataclass(slots=True)
class Entry:
    key: str
    tenant: str
    source: Source | None  # None: the store said there is no such script
    expires_at: float
    size: int


def tenant_of_key(key: str) -> str:
    return key.split("/", 1)[0]


class ByteBoundedLRU:
    """At most `max_entries` entries and `max_bytes` bytes, least recently used out; no tenant
    holds more than `tenant_share` of either (its own oldest entries go first), negative
    entries included: requests for missing paths of one host cannot flush the others."""

    def __init__(self, *, max_entries: int, max_bytes: int, tenant_share: float) -> None:
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._tenant_limit = int(max_bytes * tenant_share)
        self._tenant_entry_limit = max(1, int(max_entries * tenant_share))
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._tenant_bytes: dict[str, int] = {}
        self._tenant_entries: dict[str, int] = {}
        self.bytes = 0
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Entry | None:
        return self._entries.get(key)

    def touch(self, key: str) -> None:
        """Mark key as just used."""
        if key in self._entries:
            self._entries.move_to_end(key)

    def put(
        self, key: str, source: Source | None, expires_at: float, owner: str | None = None
    ) -> None:
        """Store (or replace) key's entry, evicting to make room; an entry larger than a
        tenant's share is not kept at all. The entry counts against `owner`'s share (the
        tenant that asked for a module by URL), else the tenant its key names."""
        self.drop(key)
        tenant = owner or tenant_of_key(key)
        size = ENTRY_OVERHEAD_BYTES + len(key) + (len(source.text) if source is not None else 0)
        if size > self._tenant_limit:
            log.warning("%s is too large to cache (%d bytes)", key, size)
            return
        while (
            self._tenant_bytes.get(tenant, 0) + size > self._tenant_limit
            or self._tenant_entries.get(tenant, 0) >= self._tenant_entry_limit
        ):
            self._evict_oldest(tenant)
        while self._entries and (
            len(self._entries) >= self._max_entries or self.bytes + size > self._max_bytes
        ):
            self._evict_oldest(None)
        self._entries[key] = Entry(key, tenant, source, expires_at, size)
        self.bytes += size
        self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + size
        self._tenant_entries[tenant] = self._tenant_entries.get(tenant, 0) + 1

    def drop(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.bytes -= entry.size
            remaining = self._tenant_bytes[entry.tenant] - entry.size
            count = self._tenant_entries[entry.tenant] - 1
            if count:
                self._tenant_bytes[entry.tenant] = remaining
                self._tenant_entries[entry.tenant] = count
            else:
                del self._tenant_bytes[entry.tenant]
                del self._tenant_entries[entry.tenant]
        return entry

    def drop_matching(self, covers: Callable[[str], bool]) -> int:
        keys = [key for key in self._entries if covers(key)]
        for key in keys:
            self.drop(key)
        return len(keys)

    def _evict_oldest(self, tenant: str | None) -> None:
        for key, entry in self._entries.items():
            if tenant is None or entry.tenant == tenant:
                self.drop(key)
                self.evictions += 1
                return
