"""The worker pool: it owns its parts and wires them, and does admission (shutdown,
quarantine), the limits a job runs under, a job that never started run again elsewhere, and the
errors a failed request becomes. Its parts:

- sngin.workers.supervisor: starting, replacing, recycling and stopping worker processes;
- sngin.workers.scheduler: which worker runs a request, and the queue (no I/O);
- sngin.workers.elastic: more workers while the workers hold only parked requests;
- sngin.workers.accounting: per-tenant counters and quarantine strikes.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Final, cast

import msgspec
import trio

from sandbox.protocol import MEMORY_LIMIT, Job, Reply
from sngin.config import PoolSettings
from sngin.errors import (
    LimitExceeded,
    ProtocolError,
    ScriptError,
    SnginError,
    Unavailable,
    WorkerCrashed,
)
from sngin.limits import Limits
from sngin.observe.notes import RunNote
from sngin.tenants.quarantine import Quarantine
from sngin.workers.accounting import TenantAccounting
from sngin.workers.elastic import ElasticWorkers
from sngin.workers.failures import NEVER_STARTED
from sngin.workers.process import (
    CPU_KILL,
    MEMORY,
    PROTOCOL,
    WALL_KILL,
    CallHandler,
    WorkerFailed,
    WorkerOptions,
    WorkerProcess,
)
from sngin.workers.scheduler import QueueTimeout, Scheduler
from sngin.workers.statistics import PoolStatistics, TenantCounters, WorkerInfo, rss_bytes
from sngin.workers.supervisor import MAX_SPAWN_RETRY_S, SPAWN_RETRY_S, Supervisor

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from sngin.workers.scheduler import Schedulable

log = logging.getLogger(__name__)

__all__ = ["Pool", "PoolConfig", "open_pool"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolConfig(PoolSettings):
    """The operator's pool settings (SNGIN_WORKERS, SNGIN_MAX_WORKERS, ...: sngin.config, one
    type) and what server.py derives for the pool from the rest of the settings."""

    worker: WorkerOptions = field(default_factory=WorkerOptions)
    extra_idle_s: float = 10.0  # a worker past `size` idle this long is retired
    spawn_retry_s: float = SPAWN_RETRY_S  # backoff for a worker that cannot start ...
    max_spawn_retry_s: float = MAX_SPAWN_RETRY_S  # ... doubling up to this once serving


# Goes a job gets: a worker that declines it or ends before its turn hands it on (rare: only a
# job stacked behind others meets either).
# A declined job is queued again for an idle worker, where it cannot be declined: the third
# attempt is reached only if workers keep dying before its turn.
MAX_ATTEMPTS: Final = 3

LIMIT_NAMES: Final = {
    CPU_KILL: "CPU-time limit",
    WALL_KILL: "wall-time limit",
    MEMORY: "memory limit",
}


def failure_error(failure: WorkerFailed, limits: Limits) -> SnginError:
    reason = failure.reason
    if reason == NEVER_STARTED:
        return Unavailable(
            f"the request waited its whole wall time ({limits.timeout_ms} ms) for its turn on"
            " a busy worker; try again",
            headers={"Retry-After": "1"},
        )
    if failure.sibling:
        cause = LIMIT_NAMES.get(reason)
        what = f"exceeded its {cause}" if cause else "crashed it"
        return WorkerCrashed(
            f"the request was stopped because another request on its worker {what}"
        )
    killed: SnginError
    if reason == CPU_KILL:
        killed = LimitExceeded(f"the script exceeded its CPU-time limit of {limits.cpu_ms} ms")
    elif reason == WALL_KILL:
        killed = LimitExceeded(f"the script exceeded its wall-time limit of {limits.timeout_ms} ms")
    elif reason == MEMORY:
        killed = ScriptError(f"the script exceeded its memory limit of {limits.memory_mb} MB")
    elif reason == PROTOCOL:
        killed = ProtocolError("the script's worker sent a malformed reply")
    else:
        killed = WorkerCrashed("the script's worker process crashed")
    killed.limit = {CPU_KILL: "cpu", WALL_KILL: "wall", MEMORY: "memory"}.get(reason, "crash")
    return killed


class Pool:
    """Runs jobs on worker subprocesses; several requests of one tenant may share a worker
    while they wait on platform calls."""

    def __init__(
        self,
        nursery: trio.Nursery,
        config: PoolConfig,
        limits_for: Callable[[str], Limits],
    ) -> None:
        self._config = config
        self._limits_for = limits_for
        self._timeouts = 0
        self._fresh_runtimes = 0
        self._ran_elsewhere = 0  # jobs a worker declined or ended before starting, run again
        self.accounting = TenantAccounting(
            Quarantine(
                strikes=config.quarantine_strikes,
                window_s=config.quarantine_window_s,
                duration_s=config.quarantine_s,
            )
        )
        self.scheduler = Scheduler(
            worker_concurrency=config.worker_concurrency,
            tenant_concurrency=config.tenant_concurrency,
            check_in=self._check_in_reserved,
            on_starved=lambda: self.elastic.starved(),
        )
        self._nursery = nursery
        self.supervisor = Supervisor(
            nursery,
            size=config.size,
            max_requests_per_worker=config.max_requests_per_worker,
            options=config.worker,
            on_ready=self._check_in,
            on_gone=self._gone,
            spawn_retry_s=config.spawn_retry_s,
            max_spawn_retry_s=config.max_spawn_retry_s,
        )
        self.elastic = ElasticWorkers(config, self.supervisor, self.scheduler)

    # --- statistics --------------------------------------------------------------------------

    def statistics(self) -> PoolStatistics:
        workers = tuple(
            WorkerInfo(
                pid=w.pid,
                tenant=w.tenant,
                state="busy" if w.in_flight else "idle",
                requests=w.requests,
                in_flight=w.in_flight,
                parked=w.parked_requests,
                rss_bytes=rss_bytes(w.pid),
                age_s=w.age_s,
            )
            for w in sorted(self.supervisor.live(), key=lambda w: w.pid)
        )
        supervisor = self.supervisor
        return PoolStatistics(
            size=self._config.size,
            live=len(workers),
            idle=sum(1 for w in workers if w.state == "idle"),
            started=supervisor.started,
            replaced=supervisor.replaced,
            spawn_failures=supervisor.spawn_failures,
            timeouts=self._timeouts,
            tenant_switches=supervisor.retired_switches
            + sum(w.switches for w in supervisor.workers),
            fresh_runtimes=self._fresh_runtimes,
            ran_elsewhere=self._ran_elsewhere,
            parked_requests=sum(w.parked for w in workers),
            max_workers=max(self._config.max_workers, self._config.size),
            grown=supervisor.grown,
            retired=supervisor.retired,
            exits=MappingProxyType(dict(supervisor.exits)),
            workers=workers,
            tenants=MappingProxyType(self.accounting.statistics()),
        )

    def live_count(self) -> int:
        """Live workers, without the per-tenant and /proc work of statistics()."""
        return sum(1 for w in self.supervisor.workers if w.alive)

    def requests_in_flight(self) -> int:
        return sum(w.in_flight for w in self.supervisor.workers)

    @property
    def quarantine(self) -> Quarantine:
        """The tenants paused after repeated limit kills (the cluster keeps them in step)."""
        return self.accounting.quarantine

    def quarantined(self) -> dict[str, float]:
        """Tenants in quarantine, with the seconds each has left."""
        return self.accounting.quarantine.paused()

    def quarantine_left(self, tenant: str) -> float | None:
        """Seconds the tenant's quarantine has left, or None."""
        return self.accounting.quarantine.remaining_s(tenant)

    def lift_quarantine(self, tenant: str) -> bool:
        lifted = self.accounting.quarantine.lift(tenant)
        if lifted:
            log.warning("quarantine of tenant %s lifted by the operator", tenant)
        return lifted

    def pids(self) -> list[int]:
        return [w.pid for w in self.supervisor.workers]

    def busy_pids(self) -> list[int]:
        return [w.pid for w in self.supervisor.workers if w.in_flight and w.alive]

    async def wait_for_workers(self, count: int | None = None) -> None:
        await self.supervisor.wait_for_workers(count)

    # --- workers coming and going --------------------------------------------------------------

    def _check_in(self, worker: WorkerProcess) -> None:
        """A new worker, or one that finished a request: it takes requests again (or is
        recycled, or leaves during close). Either way capacity may have freed up (a worker, or
        a slot under a tenant's concurrency cap), so waiting requests get their turn."""
        supervisor, scheduler = self.supervisor, self.scheduler
        supervisor.changed()
        if worker.alive and worker in supervisor.workers:
            if supervisor.closing:
                supervisor.close_when_idle(worker)
            elif supervisor.due_for_recycle(worker):
                if worker in scheduler.ready:
                    scheduler.withdraw(worker)
                    supervisor.recycle(worker)
            else:
                scheduler.offer(worker)
                if not worker.in_flight:
                    worker.idle_since = trio.current_time()  # (for ElasticWorkers)
        scheduler.hand_out()

    def _check_in_reserved(self, worker: Schedulable) -> None:
        self._check_in(cast("WorkerProcess", worker))

    def _gone(self, worker: WorkerProcess) -> None:
        self.scheduler.withdraw(worker)

    async def start(self) -> None:
        await self.supervisor.start()
        self._nursery.start_soon(self.elastic.retire_idle_extras)

    # --- running jobs ------------------------------------------------------------------------

    async def run(
        self,
        job: Job,
        calls: CallHandler | None = None,
        *,
        limits: Limits | None = None,
        concurrency: int | None = None,
        redact: Callable[[str], str] | None = None,
        note: RunNote | None = None,
    ) -> Reply:
        """Run a job on a worker; platform calls the script makes go to `calls`. `limits` and
        `concurrency` override the defaults for this tenant (from its _sngin.json); `note`
        gets the worker that ran it and the limit it was killed for."""
        note = note or RunNote()
        tenant = job.tenant
        counters = self.accounting.counters(tenant)
        if self.supervisor.closing:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        left = self.accounting.quarantine.remaining_s(tenant)
        if left is not None:
            counters.quarantined_requests += 1
            raise Unavailable(
                f"this site is paused for {math.ceil(left)} s after repeated limit kills",
                headers={"Retry-After": str(math.ceil(left))},
            )
        if limits is None:
            limits = self._limits_for(tenant)
        if job.limits is not limits.wire:
            # The job runs under exactly these limits (the pipeline built it so already).
            job = msgspec.structs.replace(job, limits=limits.wire)
        counters.requests += 1
        # The wall time counts while a worker runs the job, not while it queues for one, nor
        # while it sat stacked on a worker that then declined it or ended before its turn.
        wall_s = limits.timeout_ms / 1000
        behind_others = True
        for attempt in range(1, MAX_ATTEMPTS + 1):
            reply = await self._attempt(
                job, calls, counters, limits=limits, concurrency=concurrency, redact=redact,
                note=note, timeout_s=wall_s, behind_others=behind_others,
                last=attempt == MAX_ATTEMPTS,
            )  # fmt: skip
            if reply is not None:
                break
            # Back to the queue, for an idle worker (or one of its own tenant's): it is not
            # stacked again, so it cannot be declined again.
            behind_others = False
            self._ran_elsewhere += 1
        assert reply is not None  # the last attempt answers or raises
        counters.cpu_ms += reply.cpu_ms
        self._fresh_runtimes += reply.fresh_runtime
        if reply.error == MEMORY_LIMIT:
            note.kill = MEMORY
            self.accounting.strike(tenant, counters, MEMORY)
        self.accounting.count_status(counters, reply)
        return reply

    async def _attempt(
        self,
        job: Job,
        calls: CallHandler | None,
        counters: TenantCounters,
        *,
        limits: Limits,
        concurrency: int | None,
        redact: Callable[[str], str] | None,
        note: RunNote,
        timeout_s: float,
        behind_others: bool,
        last: bool,
    ) -> Reply | None:
        """One worker's go at a job: its Reply, or None when the job never started there (the
        worker declined it, or ended before its turn): it goes back to the queue."""
        tenant = job.tenant
        try:
            admitted = await self.scheduler.admit(
                tenant, concurrency, self._config.queue_timeout_s, behind_others=behind_others
            )
        except QueueTimeout as exc:
            counters.queue_waits += 1
            counters.queue_wait_ms += exc.queued_s * 1000
            raise
        if admitted.queued_s is not None:
            counters.queue_waits += 1
            counters.queue_wait_ms += admitted.queued_s * 1000
        worker = cast("WorkerProcess", admitted.worker)
        note.worker = worker.pid
        started = trio.current_time()
        try:
            reply = await worker.run(
                job, calls, timeout_s=timeout_s, redact=redact, log_head=note.log_head
            )
        except WorkerFailed as exc:
            if exc.unstarted and not last:
                return None
            if exc.reason != NEVER_STARTED:  # that one killed nothing
                note.kill = exc.reason
            if exc.reason == WALL_KILL:
                self._timeouts += 1
            if not exc.sibling and not exc.platform:
                self.accounting.strike(tenant, counters, exc.reason)
            counters.status_5xx += 1
            raise failure_error(exc, limits) from None
        finally:
            counters.wall_ms += (trio.current_time() - started) * 1000
            self.scheduler.finished(tenant)
            self._check_in(worker)
        if reply.declined:
            if not last:
                return None
            counters.status_5xx += 1
            raise Unavailable(
                f"no worker could start the request: declined {MAX_ATTEMPTS} times by workers"
                " where another tenant's requests were waiting on platform calls; try again",
                headers={"Retry-After": "1"},
            )
        return reply

    async def aclose(self) -> None:
        self.scheduler.close()
        await self.supervisor.aclose()


@asynccontextmanager
async def open_pool(
    config: PoolConfig, limits_for: Callable[[str], Limits] | None = None
) -> AsyncIterator[Pool]:
    default_limits = Limits()
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
