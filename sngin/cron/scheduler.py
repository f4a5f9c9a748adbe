"""When each tenant's cron entries fire: every entry's next tick in one heap, held in memory.

The tenants with entries are found by a scan at start and every SNGIN_CRON_RESCAN_S (never by
fetching every tenant's config per tick), and a tenant is refreshed whenever its _sngin.json is
parsed anew (a request, a purge, an S3 event). Ticks are wall-clock times: the next one is
computed from the tick just fired, so a clock step back never fires a tick twice; a tick
missed by more than MISSED_AFTER_S (the server was down, the clock jumped forward) is skipped,
not caught up.
"""

from __future__ import annotations

import heapq
import logging
import time
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sngin.cron.runs import CronRuns
    from sngin.tenants.config import TenantConfig
    from sngin.tenants.cron import CronEntry

log = logging.getLogger(__name__)

MISSED_AFTER_S: Final = 60.0  # a tick this late is skipped: it belongs to a time the node missed
MAX_NAP_S: Final = 1.0  # the clock is looked at again at least this often (steps, new entries)
GAP_S: Final = 5.0  # the clock moved this much between two looks: a gap, not a late wake-up

Heap = list[tuple[float, str, str]]  # (tick, tenant, entry key)


class CronScheduler:
    def __init__(
        self,
        runs: CronRuns,
        discover: Callable[[], Awaitable[list[str]]],
        tenant_config: Callable[[str], Awaitable[TenantConfig]],
        *,
        rescan_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._runs = runs
        self._discover = discover
        self._tenant_config = tenant_config
        self._rescan_s = rescan_s
        self._clock = clock
        self.entries: dict[str, dict[str, CronEntry]] = {}  # tenant -> entry key -> entry
        self._heap: Heap = []
        self._queued: set[tuple[str, str]] = set()  # (tenant, entry key) of the heap's items
        self._last_looked = clock()
        self._changed = trio.Event()

    def update(self, tenant: str, config: TenantConfig) -> None:
        """The tenant's configuration as parsed now: its entries from the next tick on."""
        entries = {entry.key: entry for entry in config.cron}
        if entries == self.entries.get(tenant, {}):
            return
        if entries:
            self.entries[tenant] = entries
        else:
            self.entries.pop(tenant, None)
        now = self._clock()
        for key, entry in entries.items():
            if (tenant, key) not in self._queued:
                self._queued.add((tenant, key))
                heapq.heappush(self._heap, (entry.next_after(now), tenant, key))
        self._changed.set()

    async def rescan(self) -> None:
        """Every tenant with a _sngin.json, read (cached per version) for its entries."""
        for tenant in await self._discover():
            try:
                self.update(tenant, await self._tenant_config(tenant))
            except Exception as exc:  # a broken config: that tenant only
                log.debug("cron: %s not scanned: %s", tenant, exc)

    async def run(
        self, *, task_status: trio.TaskStatus[CronScheduler] = trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started(self)  # serving does not wait for the first scan
        await self.rescan()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._rescan_forever)
            while True:
                for tenant, entry, tick in self.due():
                    nursery.start_soon(self._fire, tenant, entry, tick)
                self._changed = trio.Event()
                with trio.move_on_after(self._nap()):
                    await self._changed.wait()

    def due(self) -> list[tuple[str, CronEntry, float]]:
        """The ticks due now (each entry's next tick pushed, computed from the one taken);
        ticks too late to run, and entries gone, dropped. After a gap (the clock jumped
        forward, the loop stalled), an entry runs its latest due tick only: no catching up."""
        now = self._clock()
        gap = now - self._last_looked > GAP_S
        self._last_looked = now
        due: dict[tuple[str, str], list[tuple[str, CronEntry, float]]] = {}
        while self._heap and self._heap[0][0] <= now:
            tick, tenant, key = heapq.heappop(self._heap)
            entry = self.entries.get(tenant, {}).get(key)
            if entry is None:
                self._queued.discard((tenant, key))
                continue  # removed meanwhile (a new entry has its own heap item)
            following = entry.next_after(max(tick, now - MISSED_AFTER_S))
            heapq.heappush(self._heap, (following, tenant, key))
            if now - tick <= MISSED_AFTER_S:
                due.setdefault((tenant, key), []).append((tenant, entry, tick))
        if gap:
            return [ticks[-1] for ticks in due.values()]
        return [tick for ticks in due.values() for tick in ticks]

    def next_tick(self) -> float | None:
        return self._heap[0][0] if self._heap else None

    def _nap(self) -> float:
        following = self.next_tick()
        if following is None:
            return MAX_NAP_S
        return min(MAX_NAP_S, max(0.0, following - self._clock()))

    async def _fire(self, tenant: str, entry: CronEntry, tick: float) -> None:
        try:
            await self._runs.fire(tenant, entry, tick)
        except Exception:
            log.exception("cron: the run of %s %s at %s failed", tenant, entry.path, tick)

    async def _rescan_forever(self) -> None:
        while True:
            await trio.sleep(self._rescan_s)
            await self.rescan()
