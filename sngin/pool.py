"""The worker pool: sizing, tenant-affine checkout, the queue, limits, quarantine, supervision."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter, OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from sandbox.protocol import MEMORY_LIMIT, Job, Reply
from sngin.errors import (
    LimitExceeded,
    ProtocolError,
    ScriptError,
    SnginError,
    Unavailable,
    WorkerCrashed,
)
from sngin.limits import TenantLimits
from sngin.observe import kill_reason, worker_pid
from sngin.pool_statistics import (
    PoolStatistics,
    TenantCounters,
    TenantStatistics,
    WorkerInfo,
    rss_bytes,
)
from sngin.quarantine import Quarantine
from sngin.worker_process import (
    CPU_KILL,
    CRASH,
    MEMORY,
    PROTOCOL,
    RECYCLE,
    WALL_KILL,
    CallHandler,
    WorkerBootFailed,
    WorkerFailed,
    WorkerOptions,
    WorkerProcess,
    classify_exit,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S: Final = 5.0
SPAWN_RETRY_S: Final = 0.5
MAX_BOOT_FAILURES: Final = 5
MAX_TENANT_STATS: Final = 10_000
RECYCLE_JITTER: Final = 0.1
MIB: Final = 1024 * 1024


class WorkerBootError(SnginError):
    """Workers keep failing to start: the server stops rather than respawn forever."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig:
    size: int = 4
    max_requests_per_worker: int = 10_000
    quarantine_strikes: int = 5
    quarantine_window_s: float = 60.0
    quarantine_s: float = 60.0
    worker_concurrency: int = 32  # requests of one tenant interleaved in one worker
    tenant_concurrency: int = 64  # requests of one tenant in flight across the pool
    queue_timeout_s: float = 10.0  # how long a request may wait for a slot before 503
    worker: WorkerOptions = field(default_factory=WorkerOptions)


KILL_COUNTERS: Final = {
    WALL_KILL: "wall_kills",
    CPU_KILL: "cpu_kills",
    MEMORY: "memory_kills",
    CRASH: "crashes",
    PROTOCOL: "protocol_errors",
}


LIMIT_NAMES: Final = {
    CPU_KILL: "CPU-time limit",
    WALL_KILL: "wall-time limit",
    MEMORY: "memory limit",
}


def failure_error(failure: WorkerFailed, limits: TenantLimits) -> SnginError:
    reason = failure.reason
    if failure.sibling:
        cause = LIMIT_NAMES.get(reason)
        what = f"exceeded its {cause}" if cause else "crashed it"
        return WorkerCrashed(
            f"the request was stopped because another request on its worker {what}"
        )
    if reason == CPU_KILL:
        return LimitExceeded(f"the script exceeded its CPU-time limit of {limits.cpu_ms} ms")
    if reason == WALL_KILL:
        return LimitExceeded(f"the script exceeded its wall-time limit of {limits.timeout_ms} ms")
    if reason == MEMORY:
        return ScriptError(f"the script exceeded its memory limit of {limits.memory_mb} MB")
    if reason == PROTOCOL:
        return ProtocolError("the script's worker sent a malformed reply")
    return WorkerCrashed("the script's worker process crashed")


@dataclass(eq=False, slots=True)
class Waiter:
    """A request waiting for a worker; the pool hands it one (reserved) and sets `ready`."""

    tenant: str
    cap: int
    ready: trio.Event = field(default_factory=trio.Event)
    worker: WorkerProcess | None = None


class Pool:
    """Runs jobs on worker subprocesses; a worker serves one request at a time."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: PoolConfig,
        limits_for: Callable[[str], TenantLimits],
    ) -> None:
        self._nursery = nursery
        self._config = config
        self._limits_for = limits_for
        self._quarantine = Quarantine(
            strikes=config.quarantine_strikes,
            window_s=config.quarantine_window_s,
            duration_s=config.quarantine_s,
        )
        # Workers that take requests, least recently used first.
        self._ready: list[WorkerProcess] = []
        self._all: set[WorkerProcess] = set()
        self._recycle_after: dict[WorkerProcess, int] = {}
        self._tenant_in_flight: Counter[str] = Counter()
        self._closing = False
        self._started = self._replaced = self._timeouts = self._retired_switches = 0
        self._boot_failures = 0
        self._gave_up = False
        self._exits: Counter[str] = Counter()
        self._tenants: OrderedDict[str, TenantCounters] = OrderedDict()
        self._change = trio.Event()
        self._waiters: deque[Waiter] = deque()

    # --- statistics --------------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        workers = tuple(
            WorkerInfo(
                pid=w.pid,
                tenant=w.tenant,
                state="busy" if w.in_flight else "idle",
                requests=w.requests,
                in_flight=w.in_flight,
                rss_bytes=rss_bytes(w.pid),
                age_s=w.age_s,
            )
            for w in sorted(self._all, key=lambda w: w.pid)
            if w.alive
        )
        tenants = {
            name: TenantStatistics(**{f: getattr(c, f) for f in TenantCounters.__slots__})
            for name, c in self._tenants.items()
        }
        return PoolStatistics(
            size=self._config.size,
            live=len(workers),
            idle=sum(1 for w in workers if w.state == "idle"),
            started=self._started,
            replaced=self._replaced,
            timeouts=self._timeouts,
            tenant_switches=self._retired_switches + sum(w.switches for w in self._all),
            exits=dict(self._exits),
            workers=workers,
            tenants=tenants,
        )

    def live_count(self) -> int:
        """Live workers, without the per-tenant and /proc work of statistics()."""
        return sum(1 for w in self._all if w.alive)

    def quarantined(self) -> dict[str, float]:
        """Tenants in quarantine, with the seconds each has left."""
        return self._quarantine.paused()

    def lift_quarantine(self, tenant: str) -> bool:
        lifted = self._quarantine.lift(tenant)
        if lifted:
            log.warning("quarantine of tenant %s lifted by the operator", tenant)
        return lifted

    def pids(self) -> list[int]:
        return [w.pid for w in self._all]

    def busy_pids(self) -> list[int]:
        return [w.pid for w in self._all if w.in_flight and w.alive]

    def _counters(self, tenant: str) -> TenantCounters:
        counters = self._tenants.get(tenant)
        if counters is None:
            counters = self._tenants[tenant] = TenantCounters()
            if len(self._tenants) > MAX_TENANT_STATS:
                self._tenants.popitem(last=False)
        else:
            self._tenants.move_to_end(tenant)
        return counters

    # --- supervision -------------------------------------------------------------------------

    async def start(self) -> None:
        async with trio.open_nursery() as starting:
            for _ in range(self._config.size):
                starting.start_soon(self._add_worker)

    async def _add_worker(self) -> None:
        while True:
            try:
                worker = await WorkerProcess.start(self._nursery, self._config.worker)
                break
            except (WorkerBootFailed, OSError) as exc:
                if self._gave_up:
                    return  # another spawner already stopped the pool: one error is enough
                self._boot_failures += 1
                if self._boot_failures >= MAX_BOOT_FAILURES:
                    self._gave_up = True
                    raise WorkerBootError(
                        f"workers fail to start ({self._boot_failures} times in a row): {exc}"
                    ) from None
                log.error("cannot start a worker: %s; retrying", exc)
                await trio.sleep(SPAWN_RETRY_S)
        self._boot_failures = 0
        self._started += 1
        self._all.add(worker)
        jitter = random.uniform(1 - RECYCLE_JITTER, 1 + RECYCLE_JITTER)
        self._recycle_after[worker] = max(1, int(self._config.max_requests_per_worker * jitter))
        self._nursery.start_soon(self._watch, worker)
        self._checkin(worker)
        self._changed()

    async def _watch(self, worker: WorkerProcess) -> None:
        """Forget a worker once its process ends; replace it unless the pool is closing."""
        await worker.process.wait()
        worker.broken = True
        await worker.release()
        self._all.discard(worker)
        self._recycle_after.pop(worker, None)
        self._retired_switches += worker.switches
        if worker in self._ready:
            self._ready.remove(worker)
        if self._closing:
            self._exits["shutdown"] += 1
            return
        reason = classify_exit(worker.process.returncode, worker.killed_for)
        self._exits[reason] += 1
        self._replaced += 1
        self._changed()
        if reason == RECYCLE:
            return  # its successor was started before it was asked to leave
        log.warning("worker %d ended (%s, status %s); replacing it", worker.pid, reason,
                    worker.process.returncode)  # fmt: skip
        await self._add_worker()

    async def _recycle(self, worker: WorkerProcess) -> None:
        """Start the successor first, so recycling never leaves requests waiting for a spawn;
        the old worker leaves once its requests are done."""
        worker.killed_for = RECYCLE
        await self._add_worker()
        while worker.in_flight:
            await self._change.wait()
        await worker.close()

    def _changed(self) -> None:
        self._change.set()
        self._change = trio.Event()

    async def wait_for_workers(self, count: int | None = None) -> None:
        """Until `count` (default: the pool size) workers are alive and idle or busy."""
        wanted = self._config.size if count is None else count
        while sum(1 for w in self._all if w.alive) < wanted:
            await self._change.wait()

    def _checkin(self, worker: WorkerProcess) -> None:
        """A new worker, or one that finished a request: available again (or retired). Either
        way capacity may have freed up (a worker, or a slot under a tenant's concurrency cap),
        so waiting requests get their turn."""
        self._changed()
        self._return(worker)
        if self._waiters and not self._closing:
            self._hand_out()

    def _return(self, worker: WorkerProcess) -> None:
        if not worker.alive or worker not in self._all:
            return
        if self._closing:
            if not worker.in_flight:
                self._nursery.start_soon(worker.close)
            return
        if worker.requests >= self._recycle_after.get(worker, math.inf):
            if worker in self._ready:
                self._ready.remove(worker)
                self._nursery.start_soon(self._recycle, worker)  # bounds slow leaks
            return
        if worker not in self._ready:
            self._ready.append(worker)

    def _pick(self, tenant: str) -> WorkerProcess | None:
        """Where a request of `tenant` runs next, or None to wait.

        1. an idle worker that already holds the tenant's runtime;
        2. a worker of the tenant whose requests all wait on platform calls (it is free to
           run Lua), below the per-worker concurrency;
        3. an idle worker keeping the tenant's runtime dormant (a switch back: no new runtime);
        4. the least recently used idle worker (a tenant switch);
        5. any worker of the tenant below the per-worker concurrency.
        """
        limit = self._config.worker_concurrency
        idle_mine = waiting_mine = open_mine = idle_any = idle_dormant = None
        for w in self._ready:  # one pass: least recently used first
            if not w.alive:
                continue
            in_flight = w.in_flight
            if w.tenant == tenant:
                if not in_flight:
                    idle_mine = w  # the last one seen is the most recently used
                elif in_flight < limit:
                    if not w.computing:
                        waiting_mine = w
                    if open_mine is None or in_flight < open_mine.in_flight:
                        open_mine = w
            elif not in_flight:
                if idle_any is None:
                    idle_any = w
                if tenant in w.dormant:
                    idle_dormant = w
        worker = idle_mine or waiting_mine or idle_dormant or idle_any or open_mine
        if worker is not None:
            self._ready.remove(worker)
            self._ready.append(worker)  # most recently used last
        return worker

    async def _acquire(
        self, tenant: str, counters: TenantCounters, concurrency: int | None
    ) -> WorkerProcess:
        """A worker for one request of `tenant`, reserved for it and counted against the
        tenant's concurrency; waits its turn (first come, first served) up to the queue
        timeout."""
        cap = concurrency or self._config.tenant_concurrency
        if not self._waiters:
            worker = self._take(tenant, cap)
            if worker is not None:
                return worker  # the usual case: no queue, no cancel scope
        queued_at = trio.current_time()
        with trio.move_on_after(self._config.queue_timeout_s):
            while True:
                waiter = Waiter(tenant, cap)
                self._waiters.append(waiter)
                try:
                    await waiter.ready.wait()
                except BaseException:  # timed out or cancelled: a worker handed meanwhile goes back
                    handed = self._leave(waiter)
                    if handed is not None:
                        self._release(handed, tenant)
                    raise
                worker = self._leave(waiter)
                if worker is not None:
                    counters.queue_waits += 1
                    counters.queue_wait_ms += (trio.current_time() - queued_at) * 1000
                    return worker
                if self._closing:
                    raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        counters.queue_waits += 1
        counters.queue_wait_ms += (trio.current_time() - queued_at) * 1000
        raise Unavailable(
            "the server is busy with this site's requests; try again shortly",
            headers={"Retry-After": "1"},
        )

    def _take(self, tenant: str, cap: int) -> WorkerProcess | None:
        """Reserve a worker for one request of `tenant` now, or None."""
        if self._tenant_in_flight[tenant] >= cap:
            return None
        worker = self._pick(tenant)
        if worker is None:
            return None
        worker.reserved += 1
        self._tenant_in_flight[tenant] += 1
        return worker

    def _release(self, worker: WorkerProcess, tenant: str) -> None:
        """Give back a reservation that will not be used."""
        worker.reserved -= 1
        self._tenant_in_flight[tenant] -= 1
        self._checkin(worker)

    def _leave(self, waiter: Waiter) -> WorkerProcess | None:
        """The waiter stops waiting: its worker if it was handed a live one (else None, and a
        dead one's reservation is given back)."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        worker = waiter.worker
        if worker is not None and not worker.alive:
            self._release(worker, waiter.tenant)
            return None
        return worker

    def _hand_out(self) -> None:
        """Hand free capacity to waiting requests in arrival order: each woken request holds
        its worker already, so a freed worker wakes one request, not every waiting one."""
        idle, open_tenants = self._capacity()
        for waiter in list(self._waiters):
            if not idle and waiter.tenant not in open_tenants:
                continue  # nothing it could take: skip it without a full pick
            worker = self._take(waiter.tenant, waiter.cap)
            if worker is not None:
                self._waiters.remove(waiter)
                waiter.worker = worker
                waiter.ready.set()
                idle, open_tenants = self._capacity()
                if not idle and not open_tenants:
                    return

    def _capacity(self) -> tuple[int, set[str | None]]:
        """Idle workers, and the tenants whose busy workers can take one more request."""
        limit = self._config.worker_concurrency
        idle, open_tenants = 0, set()
        for w in self._ready:
            if w.alive:
                if not w.in_flight:
                    idle += 1
                elif w.in_flight < limit:
                    open_tenants.add(w.tenant)
        return idle, open_tenants

    # --- running jobs ------------------------------------------------------------------------

    async def run(
        self,
        job: Job,
        calls: CallHandler | None = None,
        *,
        limits: TenantLimits | None = None,
        concurrency: int | None = None,
        redact: Callable[[str], str] | None = None,
    ) -> Reply:
        """Run a job on a worker; platform calls the script makes go to `calls`. `limits` and
        `concurrency` override the defaults for this tenant (from its _sngin.json)."""
        tenant = job.tenant
        counters = self._counters(tenant)
        if self._closing:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        left = self._quarantine.remaining_s(tenant)
        if left is not None:
            counters.quarantined_requests += 1
            raise Unavailable(
                f"this site is paused for {math.ceil(left)} s after repeated limit kills",
                headers={"Retry-After": str(math.ceil(left))},
            )
        if limits is None:
            limits = self._limits_for(tenant)
        memory_bytes = limits.memory_mb * MIB
        if job.limits.cpu_ms != limits.cpu_ms or job.limits.memory_bytes != memory_bytes:
            job = msgspec.structs.replace(
                job,
                limits=msgspec.structs.replace(
                    job.limits, cpu_ms=limits.cpu_ms, memory_bytes=memory_bytes
                ),
            )
        worker = await self._acquire(tenant, counters, concurrency)
        worker_pid.set(worker.pid)
        started = trio.current_time()
        counters.requests += 1
        try:
            reply = await worker.call(job, calls, timeout_s=limits.timeout_ms / 1000, redact=redact)
        except WorkerFailed as exc:
            kill_reason.set(exc.reason)
            if exc.reason == WALL_KILL:
                self._timeouts += 1
            if not exc.sibling:
                self._strike(tenant, counters, exc.reason)
            counters.status_5xx += 1
            raise failure_error(exc, limits) from None
        finally:
            counters.wall_ms += (trio.current_time() - started) * 1000
            self._tenant_in_flight[tenant] -= 1
            self._checkin(worker)
        counters.cpu_ms += reply.cpu_ms
        if reply.error == MEMORY_LIMIT:
            kill_reason.set(MEMORY)
            self._strike(tenant, counters, MEMORY)
        self._count_status(counters, reply)
        return reply

    def _strike(self, tenant: str, counters: TenantCounters, reason: str) -> None:
        setattr(counters, KILL_COUNTERS[reason], getattr(counters, KILL_COUNTERS[reason]) + 1)
        if self._quarantine.strike(tenant):
            counters.quarantines += 1
            log.warning("tenant %s quarantined for %g s after repeated limit kills", tenant,
                        self._config.quarantine_s)  # fmt: skip

    @staticmethod
    def _count_status(counters: TenantCounters, reply: Reply) -> None:
        status = 500 if reply.error is not None else reply.status
        if reply.error == "method_not_allowed":
            status = 405
        field_name = f"status_{min(status // 100, 5)}xx"
        if hasattr(counters, field_name):
            setattr(counters, field_name, getattr(counters, field_name) + 1)

    async def aclose(self) -> None:
        """Ask every worker to exit (stdin closed), then kill what is left after a grace period."""
        self._closing = True
        for waiter in self._waiters:
            waiter.ready.set()  # no worker is coming: they answer 503 now, not at their timeout
        for worker in list(self._all):
            if not worker.in_flight:
                await worker.close()
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            for worker in list(self._all):
                await worker.process.wait()
        for worker in list(self._all):
            worker.kill()


@asynccontextmanager
async def open_pool(
    config: PoolConfig, limits_for: Callable[[str], TenantLimits] | None = None
) -> AsyncIterator[Pool]:
    default_limits = TenantLimits()
    async with trio.open_nursery() as nursery:
        pool = Pool(nursery, config, limits_for or (lambda tenant: default_limits))
        try:
            await pool.start()
            yield pool
        finally:
            # Shielded so a cancelled server still stops its workers; bounded by the grace period.
            with trio.CancelScope(shield=True):
                await pool.aclose()
            nursery.cancel_scope.cancel()
