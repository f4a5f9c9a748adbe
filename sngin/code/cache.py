"""CodeCache: scripts in memory in front of a remote store (S3, the GitHub raw host).

It composes a byte-bounded LRU (sngin.code.lru), single-flight fetches
(sngin.code.single_flight) and a purge log (sngin.code.purge_log), and adds what is its own:
TTLs on trio.current_time(), conditional revalidation (in its own nursery, so it outlives the
request that began it), stale-if-error, `$cb`, and the disk mirror.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final

import trio

from sngin.code.lru import ENTRY_OVERHEAD_BYTES, ByteBoundedLRU, Entry
from sngin.code.mirror import ABSENT, Absent
from sngin.code.purge_log import PurgeLog
from sngin.code.single_flight import Flight, Flights
from sngin.code.store import Modified, NotModified
from sngin.errors import CodeFetchError, StoreMisconfigured
from sngin.names import covering

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.code.mirror import DiskMirror
    from sngin.code.store import ConditionalStore, Source, StoreResult
    from sngin.config import CacheSettings
    from sngin.observe.notes import FetchNote

log = logging.getLogger(__name__)

__all__ = ["ENTRY_OVERHEAD_BYTES", "PROBE_KEY", "CacheStatistics", "CodeCache"]

# After a failed revalidation, serve the stale copy this long before asking the store again.
ERROR_RETRY_S: Final = 5.0
MAX_FORCED_KEYS: Final = 10_000
PROBE_KEY: Final = "__sngin_probe__"
MISSING_KEY_DENIED: Final = (
    "S3 answers 403 AccessDenied for a key that does not exist: the credentials need "
    "s3:ListBucket on the bucket as well as s3:GetObject on the prefix (see the README)"
)


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


@dataclass(frozen=True, slots=True)
class Known:
    """What the cache knew of a key before asking the store."""

    source: Source | None  # a copy in memory or in the mirror
    absent: bool  # the mirror remembers the store had none
    entry: Entry | None  # the (expired) memory entry, if there was one
    owner: str | None = None  # whose share a new entry counts against (None: its key's)


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
        self._lru = ByteBoundedLRU(
            max_entries=settings.max_entries,
            max_bytes=settings.max_bytes,
            tenant_share=settings.tenant_share,
        )
        self._flights = Flights()
        self._purges = PurgeLog()
        self._hits = self._misses = self._stale = self._errors = 0
        self._revalidated = {304: 0, 200: 0, 404: 0}
        self._forced_at: dict[str, float] = {}

    @property
    def origin(self) -> ConditionalStore:
        """The store behind the cache (the management API writes to it)."""
        return self._store

    def statistics(self) -> CacheStatistics:
        return CacheStatistics(
            entries=len(self._lru),
            bytes=self._lru.bytes,
            hits=self._hits,
            misses=self._misses,
            revalidated_304=self._revalidated[304],
            revalidated_200=self._revalidated[200],
            revalidated_404=self._revalidated[404],
            stale_served=self._stale,
            store_errors=self._errors,
            evictions=self._lru.evictions,
            purges=self._purges.count,
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

    async def fetch(
        self,
        key: str,
        *,
        revalidate: bool = False,
        note: FetchNote | None = None,
        owner: str | None = None,
    ) -> Source | None:
        """The script for key, or None if there is none.

        revalidate=True (`$cb`) asks the store before answering, at most once per
        `cb_interval_s` per key; beyond that the cached copy is used silently.
        """
        force = revalidate and self._may_force(key)
        while True:
            entry = self._lru.get(key)
            if entry is not None and entry.expires_at > trio.current_time() and not force:
                self._hits += 1
                self._lru.touch(key)
                if note is not None:
                    note.outcome = "hit"
                return entry.source
            if entry is not None:
                stale_before = self._stale
                source = await self._revalidate(key, entry, wait_fully=force)
                if note is not None:
                    note.outcome = "stale" if self._stale > stale_before else "revalidated"
                return source
            flight = self._flights.get(key)
            if note is not None:
                note.outcome = "miss"
            if flight is None:
                self._misses += 1
                return await self._fetch_inline(key, owner)
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

    async def _fetch_inline(self, key: str, owner: str | None) -> Source | None:
        """Cold miss: this request fetches; concurrent ones for the key wait on its flight."""
        flight = self._flights.begin(key)
        try:
            flight.result = await self._load(key, None, owner)
            flight.finished = True
            return flight.result
        except CodeFetchError as exc:
            flight.error = exc
            raise
        finally:
            self._flights.end(key, flight)

    async def _revalidate(self, key: str, entry: Entry, *, wait_fully: bool) -> Source | None:
        """Expired: revalidate in the cache's nursery; wait for it briefly, else serve stale."""
        flight = self._flights.get(key)
        if flight is None:
            flight = self._flights.begin(key)
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
            flight.result = await self._load(key, entry, None)
            flight.finished = True
        except CodeFetchError as exc:
            # Only an expired *negative* entry gets here (a stored copy is served by _load):
            # keep answering "no such script" until the store is back.
            flight.result = entry.source
            flight.finished = True
            log.debug("revalidation of %s failed: %s", key, exc.message)
        finally:
            self._flights.end(key, flight)

    # --- one conditional fetch and what it leaves behind ----------------------------------------

    async def _load(self, key: str, entry: Entry | None, owner: str | None) -> Source | None:
        """Ask the store (conditionally when a copy is known) and record what it says."""
        epoch = self._purges.epoch
        known = await self._known(key, entry)
        # A kept entry stays with the share it was counted against.
        known = replace(known, owner=entry.tenant if entry is not None else owner)
        source = known.source
        etag = source.version if source is not None and source.version.startswith('"') else None
        last_modified = source.last_modified if source is not None else None
        try:
            result = await self._store.get(key, etag=etag, last_modified=last_modified)
        except CodeFetchError as exc:
            return self._store_failed(key, known, epoch, exc)
        return await self._store_answered(key, known, epoch, result)

    async def _known(self, key: str, entry: Entry | None) -> Known:
        if entry is not None or self._mirror is None:
            return Known(source=entry.source if entry else None, absent=False, entry=entry)
        # A memory miss with a copy on disk: revalidate it rather than download it again.
        mirrored = await self._mirror.read(key)
        if isinstance(mirrored, Absent):
            return Known(source=None, absent=True, entry=None)
        return Known(source=mirrored, absent=False, entry=None)

    def _store_failed(
        self, key: str, known: Known, epoch: int, exc: CodeFetchError
    ) -> Source | None:
        """Stale-if-error: serve what was known (a copy, or a remembered absence) for a few
        seconds before asking again; with nothing known, the error stands."""
        self._errors += 1
        if known.source is None and not known.absent:
            log.warning("cannot fetch %s and no copy to serve: %s", key, exc.message)
            raise exc
        if known.absent:
            log.warning("%s: using the remembered absence: %s", key, exc.message)
        else:
            log.warning("serving the cached copy of %s: %s", key, exc.message)
        self._stale += 1
        retry_at = trio.current_time() + min(self._settings.ttl_s, ERROR_RETRY_S)
        if known.entry is not None:
            known.entry.expires_at = retry_at
        elif not self._purges.covered_since(key, epoch):
            self._lru.put(key, known.source, retry_at, known.owner)
        return known.source

    async def _store_answered(
        self, key: str, known: Known, epoch: int, result: StoreResult
    ) -> Source | None:
        now = trio.current_time()
        wanted = not self._purges.covered_since(key, epoch)
        if isinstance(result, NotModified):
            if known.source is None:
                raise CodeFetchError("code store answered 304 to an unconditional request")
            self._revalidated[304] += 1
            if known.entry is not None:
                known.entry.expires_at = now + self._settings.ttl_s
                self._lru.touch(key)
            elif wanted:
                self._lru.put(key, known.source, now + self._settings.ttl_s, known.owner)
            if self._mirror is not None:
                self._mirror.touch(key)
            return known.source
        if isinstance(result, Modified):
            if known.entry is not None:
                self._revalidated[200] += 1
            if wanted:
                self._lru.put(key, result.source, now + self._settings.ttl_s, known.owner)
                if self._mirror is not None:
                    await self._mirror.write(key, result.source, self._unpurged(key, epoch))
            return result.source
        # Missing.
        if known.source is not None:
            self._revalidated[404] += 1
        if wanted:
            self._lru.put(key, None, now + self._settings.negative_ttl_s, known.owner)
        if self._mirror is not None:
            if self._mirror_absence(key):
                if not self._mirror.records_absence(key):
                    await self._mirror.write(key, ABSENT, self._unpurged(key, epoch))
            elif known.source is not None:
                await self._mirror.delete(key)
        return None

    def _unpurged(self, key: str, epoch: int) -> Callable[[], bool]:
        return lambda: not self._purges.covered_since(key, epoch)

    # --- purge ---------------------------------------------------------------------------------

    async def purge(self, tenant: str, folder: str, *, recursive: bool) -> int:
        """Drop the cached entries (negative ones too) and mirror files a purge covers.

        Fetches already in flight for those keys are not cached when they land, and new
        requests do not join them: the next request fetches unconditionally.
        """
        return await self.purge_matching(covering(tenant, folder, recursive=recursive))

    def forget_memory(self) -> int:
        """Drop every copy held in memory, not the disk mirror: each script is fetched again on
        its next request, a mirrored copy conditionally (If-None-Match), so nothing stale is
        served and an S3 outage still finds the mirror. What the cluster bus does when it
        cannot vouch for purges it may have missed."""

        def everything(key: str) -> bool:
            return True

        self._purges.record(everything)  # fetches in flight land uncached
        self._flights.forget_matching(everything)
        return self._lru.drop_matching(everything)

    async def purge_matching(self, covers: Callable[[str], bool]) -> int:
        """Drop every entry whose key `covers` accepts (e.g. one GitHub repository's modules)."""
        self._purges.record(covers)
        dropped = self._lru.drop_matching(covers)
        self._flights.forget_matching(covers)
        if self._mirror is not None:
            dropped += await self._mirror.purge(covers)
        return dropped
