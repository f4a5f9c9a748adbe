"""CodeCache: an in-memory LRU of scripts in front of a remote store.

TTL on trio.current_time(), conditional revalidation, negative entries, single-flight fetches,
stale-if-error, and byte bounds with a per-tenant share.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from sngin.codestore import Modified, NotModified, Source
from sngin.errors import CodeFetchError, StoreMisconfigured
from sngin.mirror import ABSENT, Absent
from sngin.observe import code_outcome
from sngin.tenants import covering

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.codestore import ConditionalStore
    from sngin.config import CacheSettings
    from sngin.mirror import DiskMirror

log = logging.getLogger(__name__)

ENTRY_OVERHEAD_BYTES: Final = 256
# After a failed revalidation, serve the stale copy this long before asking the store again.
ERROR_RETRY_S: Final = 5.0
MAX_FORCED_KEYS: Final = 10_000
MAX_PURGE_LOG: Final = 1000
PROBE_KEY: Final = "__sngin_probe__"
MISSING_KEY_DENIED: Final = (
    "S3 answers 403 AccessDenied for a key that does not exist: the credentials need "
    "s3:ListBucket on the bucket as well as s3:GetObject on the prefix (see the README)"
)


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
    purges: int
    mirror_entries: int
    mirror_bytes: int


def tenant_of_key(key: str) -> str:
    return key.split("/", 1)[0]


class CodeCache:
    """Answers fetch(key) from memory, asking the store only when an entry is missing or stale."""

    def __init__(
        self,
        store: ConditionalStore,
        settings: CacheSettings,
        nursery: trio.Nursery,
        mirror: DiskMirror | None = None,
        mirror_absence: Callable[[str], bool] = lambda key: False,
    ) -> None:
        self._store = store
        self._mirror = mirror
        # Keys whose absence the mirror keeps too (a tenant's configuration: without it, a node
        # restarted during an outage could not tell "no _sngin.json" from "unknown").
        self._mirror_absence = mirror_absence
        self._settings = settings
        self._nursery = nursery  # owns revalidations that outlive the request that began them
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._flights: dict[str, Flight] = {}
        self._bytes = 0
        self._tenant_bytes: dict[str, int] = {}
        self._hits = self._misses = self._stale = self._errors = self._evictions = 0
        self._revalidated = {304: 0, 200: 0, 404: 0}
        self._forced_at: dict[str, float] = {}
        self._epoch = 0
        self._purges: deque[tuple[int, Callable[[str], bool]]] = deque(maxlen=MAX_PURGE_LOG)
        self._purged = 0

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
            purges=self._purged,
            mirror_entries=len(self._mirror) if self._mirror is not None else 0,
            mirror_bytes=self._mirror.size_bytes if self._mirror is not None else 0,
        )

    async def probe(self) -> None:
        """Raises CodeFetchError unless the store answers as a working one: a 404 (or the
        object) for a key that does not exist."""
        try:
            await self._store.get(PROBE_KEY, etag=None, last_modified=None)
        except StoreMisconfigured as exc:
            if exc.code == "AccessDenied":
                # S3 answers 403, not 404, for a missing key when the credentials lack
                # s3:ListBucket: every tenant without _sngin.json would get a 502.
                raise StoreMisconfigured(MISSING_KEY_DENIED, code=exc.code) from exc
            raise

    async def fetch(self, key: str, *, revalidate: bool = False) -> Source | None:
        """The script for key, or None if there is none.

        revalidate=True (`$cb`) asks the store before answering, at most once per
        `cb_interval_s` per key; beyond that the cached copy is used silently.
        """
        force = revalidate and self._may_force(key)
        while True:
            entry = self._entries.get(key)
            if entry is not None and entry.expires_at > trio.current_time() and not force:
                self._hits += 1
                self._entries.move_to_end(key)
                code_outcome.set("hit")
                return entry.source
            if entry is not None:
                stale_before = self._stale
                source = await self._revalidate(key, entry, wait_fully=force)
                code_outcome.set("stale" if self._stale > stale_before else "revalidated")
                return source
            flight = self._flights.get(key)
            code_outcome.set("miss")
            if flight is None:
                self._misses += 1
                return await self._fetch_inline(key)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.finished:
                return flight.result
            # The fetching request was cancelled (its client left): try again ourselves.

    def _may_force(self, key: str) -> bool:
        now = trio.current_time()
        last = self._forced_at.get(key)
        if last is not None and now - last < self._settings.cb_interval_s:
            return False
        if len(self._forced_at) >= MAX_FORCED_KEYS:
            horizon = now - self._settings.cb_interval_s
            self._forced_at = {k: t for k, t in self._forced_at.items() if t > horizon}
        self._forced_at[key] = now
        return True

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
            self._end_flight(key, flight)

    def _end_flight(self, key: str, flight: Flight) -> None:
        # A purge may have replaced the flight already; only remove our own.
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()

    async def _revalidate(self, key: str, entry: Entry, *, wait_fully: bool) -> Source | None:
        """Expired: revalidate in the cache's nursery; wait for it briefly, else serve stale."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights[key] = Flight()
            self._nursery.start_soon(self._revalidate_in_background, key, entry, flight)
        if wait_fully:
            await flight.done.wait()
        else:
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
            self._end_flight(key, flight)

    async def _load(self, key: str, entry: Entry | None) -> Source | None:
        """Ask the store (conditionally when a copy is known) and record what it says."""
        epoch = self._epoch
        known = entry.source if entry is not None else None
        absent_on_disk = False
        if entry is None and self._mirror is not None:
            # A memory miss with a copy on disk: revalidate it rather than download it again.
            mirrored = await self._mirror.read(key)
            absent_on_disk = isinstance(mirrored, Absent)
            known = None if isinstance(mirrored, Absent) else mirrored
        etag = known.version if known is not None and known.version.startswith('"') else None
        last_modified = known.last_modified if known is not None else None
        try:
            result = await self._store.get(key, etag=etag, last_modified=last_modified)
        except CodeFetchError as exc:
            self._errors += 1
            retry_at = trio.current_time() + min(self._settings.ttl_s, ERROR_RETRY_S)
            if known is None and absent_on_disk:
                # The mirror remembers there is none (a tenant without _sngin.json).
                log.warning("%s: using the remembered absence: %s", key, exc.message)
                self._stale += 1
                if not self._purged_since(key, epoch):
                    self._store_entry(key, None, retry_at)
                return None
            if known is None:
                log.warning("cannot fetch %s and no copy to serve: %s", key, exc.message)
                raise
            log.warning("serving the cached copy of %s: %s", key, exc.message)
            self._stale += 1
            if entry is not None:
                entry.expires_at = retry_at
            elif not self._purged_since(key, epoch):
                self._store_entry(key, known, retry_at)
            return known
        now = trio.current_time()
        wanted = not self._purged_since(key, epoch)
        if isinstance(result, NotModified) and known is None:
            raise CodeFetchError("code store answered 304 to an unconditional request")
        if isinstance(result, NotModified) and known is not None:
            self._revalidated[304] += 1
            if entry is not None:
                entry.expires_at = now + self._settings.ttl_s
                self._entries.move_to_end(key)
            elif wanted:
                self._store_entry(key, known, now + self._settings.ttl_s)
            if self._mirror is not None:
                self._mirror.touch(key)
            return known
        if isinstance(result, Modified):
            if entry is not None:
                self._revalidated[200] += 1
            if wanted:
                self._store_entry(key, result.source, now + self._settings.ttl_s)
                if self._mirror is not None:
                    await self._mirror.write(
                        key, result.source, lambda: not self._purged_since(key, epoch)
                    )
            return result.source
        if known is not None:
            self._revalidated[404] += 1
        if wanted:
            self._store_entry(key, None, now + self._settings.negative_ttl_s)
        if self._mirror is not None:
            if self._mirror_absence(key):
                if not self._mirror.records_absence(key):
                    still_wanted = lambda: not self._purged_since(key, epoch)  # noqa: E731
                    await self._mirror.write(key, ABSENT, still_wanted)
            elif known is not None:
                await self._mirror.delete(key)
        return None

    # --- purge ---------------------------------------------------------------------------------

    async def purge(self, tenant: str, folder: str, *, recursive: bool) -> int:
        """Drop the cached entries (negative ones too) and mirror files a purge covers.

        Fetches already in flight for those keys are not cached when they land, and new
        requests do not join them: the next request fetches unconditionally.
        """
        return await self.purge_matching(covering(tenant, folder, recursive=recursive))

    async def purge_matching(self, covers: Callable[[str], bool]) -> int:
        """Drop every entry whose key `covers` accepts (e.g. one GitHub repository's modules)."""
        self._epoch += 1
        self._purges.append((self._epoch, covers))
        self._purged += 1
        dropped = 0
        for key in [key for key in self._entries if covers(key)]:
            self._drop(key)
            dropped += 1
        for key in [key for key in self._flights if covers(key)]:
            del self._flights[key]
        if self._mirror is not None:
            dropped += await self._mirror.purge(covers)
        return dropped

    def _purged_since(self, key: str, epoch: int) -> bool:
        if epoch == self._epoch:
            return False
        if not self._purges or self._purges[0][0] > epoch + 1:
            return True  # the log no longer reaches back that far: assume covered
        return any(covers(key) for e, covers in self._purges if e > epoch)

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
