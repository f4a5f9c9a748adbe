"""Worker supervision, after gunicorn's arbiter: start the pool's workers, replace one that
ends, recycle one after its share of requests (its successor first), and stop them all at close.

Workers that keep failing to start stop the server only while it starts (a broken install is
one clear error, not a loop). Once it serves, a worker that cannot start (descriptors or memory
short for a while) is retried forever with capped backoff while the live workers serve what they
can; readiness says not ready while none is live."""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from typing import TYPE_CHECKING, Final

import trio

from sngin.backoff import Backoff
from sngin.workers.process import (
    RECYCLE,
    RETIRED,
    WORKER_ARGV,
    WorkerBootFailed,
    WorkerProcess,
    classify_exit,
)
from sngin.workers.zygote import Zygote, ZygoteGone

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.workers.process import WorkerOptions

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S: Final = 5.0
SPAWN_RETRY_S: Final = 0.5  # the first retry; doubled per failure ...
MAX_SPAWN_RETRY_S: Final = 30.0  # ... up to this, once serving
MAX_BOOT_FAILURES: Final = 5  # in a row, while starting
RECYCLE_JITTER: Final = 0.1


class Supervisor:
    """Owns the worker processes. `on_ready(worker)` is called when a worker has started,
    `on_gone(worker)` when one has ended (before its replacement is started)."""

    def __init__(
        self,
        nursery: trio.Nursery,
        *,
        size: int,
        max_requests_per_worker: int,
        options: WorkerOptions,
        on_ready: Callable[[WorkerProcess], None],
        on_gone: Callable[[WorkerProcess], None],
        spawn_retry_s: float = SPAWN_RETRY_S,
        max_spawn_retry_s: float = MAX_SPAWN_RETRY_S,
    ) -> None:
        self._nursery = nursery
        self.size = size
        self._max_requests = max_requests_per_worker
        self._options = options
        self._on_ready = on_ready
        self._on_gone = on_gone
        self.workers: set[WorkerProcess] = set()
        self._recycle_after: dict[WorkerProcess, int] = {}
        self.closing = False
        self.started = self.replaced = self.retired_switches = 0
        self.exits: Counter[str] = Counter()
        self._boot = Backoff(spawn_retry_s, max_spawn_retry_s)  # failed starts in a row
        self._gave_up = False
        self.serving = False  # start() is done: from now on a failed start is retried forever
        self.spawn_failures = 0  # since start, all told
        self.zygote: Zygote | None = None  # forks workers in ms (sngin.workers.zygote)
        self.starting = 0  # extra workers being started
        self.grown = self.retired = 0  # extra workers started and retired since start
        self._change = trio.Event()

    def live(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive]

    def changed(self) -> None:
        """Something about the workers changed (one started, ended, or finished a request)."""
        self._change.set()
        self._change = trio.Event()

    async def wait_for_workers(self, count: int | None = None) -> None:
        """Until `count` (default: the pool size) workers are alive."""
        wanted = self.size if count is None else count
        await self.wait_until(lambda: sum(1 for w in self.workers if w.alive) >= wanted)

    async def wait_until(self, condition: Callable[[], bool]) -> None:
        """Until condition() holds, checked whenever the workers change (or a start fails)."""
        while not condition():
            await self._change.wait()

    # --- starting and replacing ------------------------------------------------------------------

    async def start(self) -> None:
        if self._options.argv == WORKER_ARGV:  # (a test's stand-in worker is spawned)
            await self._start_zygote()
        async with trio.open_nursery() as starting:
            for _ in range(self.size):
                starting.start_soon(self._add_worker)
        self.serving = True

    async def _start_zygote(self) -> None:
        """The zygote workers are forked from; without one, workers are spawned."""
        try:
            self.zygote = await Zygote.start(self._nursery, self._options.command())
        except OSError as exc:
            log.warning("no worker zygote (%s): workers are started one by one", exc)
            self.zygote = None

    async def _start_one(self) -> WorkerProcess:
        """A worker forked from the zygote (a new zygote if it ended), else spawned."""
        zygote = self.zygote
        if zygote is not None and zygote.gone and not self.closing:
            log.warning("the worker zygote ended; starting another")
            await self._start_zygote()
            zygote = self.zygote
        try:
            return await WorkerProcess.start(self._nursery, self._options, zygote)
        except ZygoteGone as exc:
            log.warning("%s; this worker is spawned instead", exc)
            return await WorkerProcess.start(self._nursery, self._options)

    async def _add_worker(self) -> None:
        while True:
            try:
                worker = await self._start_one()
                break
            except (WorkerBootFailed, OSError) as exc:
                if self._gave_up:
                    return  # another spawner already stopped the pool: one error is enough
                delay = self._boot.next_delay()
                self.spawn_failures += 1
                self.changed()
                if not self.serving and self._boot.failures >= MAX_BOOT_FAILURES:
                    self._gave_up = True
                    raise WorkerBootFailed(
                        f"workers fail to start ({self._boot.failures} times in a row): {exc}"
                    ) from None
                if self.closing:
                    return
                log.error("cannot start a worker: %s; retrying in %.3g s", exc, delay)
                await trio.sleep(delay)
        self._boot.succeeded()
        self._register(worker)

    def _register(self, worker: WorkerProcess) -> None:
        self.started += 1
        self.workers.add(worker)
        jitter = random.uniform(1 - RECYCLE_JITTER, 1 + RECYCLE_JITTER)
        self._recycle_after[worker] = max(1, int(self._max_requests * jitter))
        self._nursery.start_soon(self._watch, worker)
        if self.serving:
            log.info("worker %d started", worker.pid)
        self._on_ready(worker)

    async def _watch(self, worker: WorkerProcess) -> None:
        """Forget a worker once its process ends; replace it unless the pool is closing."""
        await worker.process.wait()
        worker.broken = True
        await worker.release()
        self.workers.discard(worker)
        self._recycle_after.pop(worker, None)
        self.retired_switches += worker.switches
        self._on_gone(worker)
        if self.closing:
            self.exits["shutdown"] += 1
            return
        reason = classify_exit(worker.process.returncode, worker.killed_for)
        self.exits[reason] += 1
        self.replaced += 1
        self.changed()
        if reason in (RECYCLE, RETIRED):
            return  # recycled: its successor was started first; retired: not needed
        log.warning("worker %d ended (%s, status %s); replacing it", worker.pid, reason,
                    worker.process.returncode)  # fmt: skip
        await self._add_worker()

    # --- growing and retiring (elastic workers) ---------------------------------------------

    def grow(self) -> None:
        """One more worker, for requests waiting while the workers hold only parked ones."""
        self.starting += 1
        self._nursery.start_soon(self._add_extra)

    async def _add_extra(self) -> None:
        """One attempt (no retries: a waiting request is served by a worker coming free too)."""
        try:
            worker = await self._start_one()
        except (WorkerBootFailed, OSError) as exc:
            self.spawn_failures += 1
            log.warning("cannot start an extra worker: %s", exc)
            return
        finally:
            self.starting -= 1
        self.grown += 1
        self._register(worker)

    def retire(self, worker: WorkerProcess) -> None:
        """An extra worker idle long enough leaves (it is not replaced)."""
        worker.killed_for = RETIRED
        self.retired += 1
        self._nursery.start_soon(worker.close)

    # --- recycling -----------------------------------------------------------------------------

    def due_for_recycle(self, worker: WorkerProcess) -> bool:
        """It served its share of requests (± jitter, so workers do not all recycle at once)."""
        return worker.requests >= self._recycle_after.get(worker, math.inf)

    def recycle(self, worker: WorkerProcess) -> None:
        """Bounds slow leaks: see _recycle."""
        self._nursery.start_soon(self._recycle, worker)

    async def _recycle(self, worker: WorkerProcess) -> None:
        """Start the successor first, so recycling never leaves requests waiting for a spawn;
        the old worker leaves once its requests are done."""
        worker.killed_for = RECYCLE
        await self._add_worker()
        while worker.in_flight:
            await self._change.wait()
        await worker.close()

    # --- closing -------------------------------------------------------------------------------

    def close_when_idle(self, worker: WorkerProcess) -> None:
        """During close: a worker whose last request just finished leaves now."""
        if not worker.in_flight:
            self._nursery.start_soon(worker.close)

    async def aclose(self) -> None:
        """Ask every worker to exit (stdin closed), then kill what is left after a grace period."""
        self.closing = True
        for worker in list(self.workers):
            if not worker.in_flight:
                await worker.close()
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            for worker in list(self.workers):
                await worker.process.wait()
        for worker in list(self.workers):
            worker.kill()
        if self.zygote is not None:
            # Last: it reaps the workers and reports their exits until then.
            await self.zygote.aclose()
