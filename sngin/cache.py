"""CodeCache: an in-memory LRU of scripts in front of a remote store.

TTL on trio.current_time(), conditional revalidation, negative entries, single-flight fetches,
stale-if-error, and byte bounds with a per-tenant share.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from sngin.codestore import Missing, Modified, NotModified, Source
from sngin.errors import CodeFetchError

if TYPE_CHECKING:
    from sngin.codestore import ConditionalStore
    from sngin.config import CacheSettings

log = logging.getLogger(__name__)

ENTRY_OVERHEAD_BYTES: Final = 256
# After a failed revalidation, serve the stale copy this long before asking the store again.
ERROR_RETRY_S: Final = 5.0


@dataclass(slots=True)
class Entry:
    key: str
    tenant: str
    source: Source | None  # None: the store said there is no such script
    expires_at: float
    size: int


@dataclass(slots=True)
class Flight:
    """One fetch in progress; everyone else asking for the key waits on `done`."""

    done: trio.Event = field(default_factory=trio.Event)
    result: Source | None = None
    error: CodeFetchError | None = None
    finished: bool = False


@dataclass(frozen=True, slots=True)
class CacheStatistics:
    entries: int
    bytes: int
    hits: int
    misses: int
    revalidated_304: int
    revalidated_200: int
    revalidated_404: int
    stale_served: int
    store_errors: int
    evictions: int


def tenant_of_key(key: str) -> str:
    return key.split("/", 1)[0]


class CodeCache:
    """Answers fetch(key) from memory, asking the store only when an entry is missing or stale."""

    def __init__(
        self, store: ConditionalStore, settings: CacheSettings, nursery: trio.Nursery
    ) -> None:
        self._store = store
        self._settings = settings
        self._nursery = nursery  # owns revalidations that outlive the request that began them
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._flights: dict[str, Flight] = {}
        self._bytes = 0
        self._tenant_bytes: dict[str, int] = {}
        self._hits = self._misses = self._stale = self._errors = self._evictions = 0
        self._revalidated = {304: 0, 200: 0, 404: 0}

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            entries=len(self._entries),
            bytes=self._bytes,
            hits=self._hits,
            misses=self._misses,
            revalidated_304=self._revalidated[304],
            revalidated_200=self._revalidated[200],
            revalidated_404=self._revalidated[404],
            stale_served=self._stale,
            store_errors=self._errors,
            evictions=self._evictions,
        )

    async def fetch(self, key: str) -> Source | None:
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at > trio.current_time():
                self._hits += 1
                self._entries.move_to_end(key)
                return entry.source
            if entry is not None:
                return await self._revalidate(key, entry)
            flight = self._flights.get(key)
            if flight is None:
                self._misses += 1
                return await self._fetch_inline(key)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.finished:
                return flight.result
            # The fetching request was cancelled (its client left): try again ourselves.

    async def _fetch_inline(self, key: str) -> Source | None:
        """Cold miss: this request fetches; concurrent ones for the key wait on its flight."""
        flight = self._flights[key] = Flight()
        try:
            flight.result = await self._load(key, None)
            flight.finished = True
            return flight.result
        except CodeFetchError as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[key]
            flight.done.set()

    async def _revalidate(self, key: str, entry: Entry) -> Source | None:
        """Expired: revalidate in the cache's nursery; wait for it briefly, else serve stale."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = Flight()
            self._nursery.start_soon(self._revalidate_in_background, key, entry, flight)
        with trio.move_on_after(self._settings.revalidate_wait_s):
            await flight.done.wait()
        if flight.finished:
            return flight.result
        self._stale += 1
        return entry.source

    async def _revalidate_in_background(self, key: str, entry: Entry, flight: Flight) -> None:
        try:
            flight.result = await self._load(key, entry)
            flight.finished = True
        except CodeFetchError as exc:
            # Only an expired *negative* entry gets here (a stored copy is served by _load):
            # keep answering "no such script" until the store is back.
            flight.result = entry.source
            flight.finished = True
            log.debug("revalidation of %s failed: %s", key, exc.message)
        finally:
            self._flights.pop(key, None)
            flight.done.set()

    async def _load(self, key: str, entry: Entry | None) -> Source | None:
        source = entry.source if entry is not None else None
        etag = source.version if source is not None and source.version.startswith('"') else None
        last_modified = source.last_modified if source is not None else None
        try:
            result = await self._store.get(key, etag=etag, last_modified=last_modified)
        except CodeFetchError as exc:
            self._errors += 1
            if entry is None or entry.source is None:
                log.warning("cannot fetch %s and no copy to serve: %s", key, exc.message)
                raise
            log.warning("serving the cached copy of %s: %s", key, exc.message)
            self._stale += 1
            entry.expires_at = trio.current_time() + min(self._settings.ttl_s, ERROR_RETRY_S)
            return entry.source
        now = trio.current_time()
        if isinstance(result, NotModified) and entry is not None:
            self._revalidated[304] += 1
            entry.expires_at = now + self._settings.ttl_s
            self._entries.move_to_end(key)
            return entry.source
        if isinstance(result, Modified):
            if entry is not None:
                self._revalidated[200] += 1
            self._store_entry(key, result.source, now + self._settings.ttl_s)
            return result.source
        if isinstance(result, Missing) and entry is not None and entry.source is not None:
            self._revalidated[404] += 1
        self._store_entry(key, None, now + self._settings.negative_ttl_s)
        return None

    # --- bounded storage ---------------------------------------------------------------------

    def _store_entry(self, key: str, source: Source | None, expires_at: float) -> None:
        self._drop(key)
        tenant = tenant_of_key(key)
        size = ENTRY_OVERHEAD_BYTES + len(key) + (len(source.text) if source is not None else 0)
        tenant_limit = int(self._settings.max_bytes * self._settings.tenant_share)
        if size > tenant_limit:
            log.warning("%s is too large to cache (%d bytes)", key, size)
            return
        # Make room within the tenant's share first (its own oldest entries), then overall.
        while self._tenant_bytes.get(tenant, 0) + size > tenant_limit:
            self._evict_oldest(tenant)
        while self._entries and (
            len(self._entries) >= self._settings.max_entries
            or self._bytes + size > self._settings.max_bytes
        ):
            self._evict_oldest(None)
        self._entries[key] = Entry(key, tenant, source, expires_at, size)
        self._bytes += size
        self._tenant_bytes[tenant] = self._tenant_bytes.get(tenant, 0) + size

    def _evict_oldest(self, tenant: str | None) -> None:
        for key, entry in self._entries.items():
            if tenant is None or entry.tenant == tenant:
                self._drop(key)
                self._evictions += 1
                return

    def _drop(self, key: str) -> Entry | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry.size
            remaining = self._tenant_bytes[entry.tenant] - entry.size
            if remaining:
                self._tenant_bytes[entry.tenant] = remaining
            else:
                del self._tenant_bytes[entry.tenant]
        return entry
