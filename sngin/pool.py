"""The worker pool: sizing, tenant-affine checkout, kill-on-timeout and replacement."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from sngin.errors import LimitExceeded, Unavailable
from sngin.worker_process import WorkerProcess

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sandbox.protocol import Job, Reply

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
SPAWN_RETRY_S = 1.0


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    size: int
    live: int
    idle: int
    started: int
    replaced: int
    timeouts: int
    tenant_switches: int


class Pool:
    """Runs jobs on worker subprocesses; a worker serves one request at a time."""

    def __init__(self, nursery: trio.Nursery, size: int) -> None:
        self._nursery = nursery
        self._size = size
        self._idle: list[WorkerProcess] = []
        self._all: set[WorkerProcess] = set()
        # Counts idle workers: acquiring it guarantees one is in self._idle.
        self._available = trio.Semaphore(0)
        self._closing = False
        self._started = self._replaced = self._timeouts = self._retired_switches = 0

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            size=self._size,
            live=sum(1 for w in self._all if w.alive),
            idle=len(self._idle),
            started=self._started,
            replaced=self._replaced,
            timeouts=self._timeouts,
            tenant_switches=self._retired_switches + sum(w.switches for w in self._all),
        )

    def pids(self) -> list[int]:
        return [w.pid for w in self._all]

    def busy_pids(self) -> list[int]:
        return [w.pid for w in self._all if w not in self._idle and w.alive]

    async def _add_worker(self) -> None:
        while True:
            try:
                worker = await WorkerProcess.start(self._nursery)
                break
            except OSError as exc:
                # Out of processes or memory: keep the server up and try again shortly.
                log.error("cannot start a worker: %s; retrying in %s s", exc, SPAWN_RETRY_S)
                await trio.sleep(SPAWN_RETRY_S)
        self._started += 1
        self._all.add(worker)
        self._nursery.start_soon(self._watch, worker)
        self._checkin(worker)

    async def _watch(self, worker: WorkerProcess) -> None:
        """Forget a worker once its process ends; replace it unless the pool is closing."""
        await worker.process.wait()
        worker.broken = True
        self._all.discard(worker)
        self._retired_switches += worker.switches
        if worker in self._idle:
            # Died while idle: take its slot back so no request picks a dead worker.
            self._idle.remove(worker)
            self._available.acquire_nowait()
        if not self._closing:
            self._replaced += 1
            log.warning(
                "worker %d exited (%s); starting a replacement",
                worker.pid,
                worker.process.returncode,
            )
            await self._add_worker()

    async def start(self) -> None:
        async with trio.open_nursery() as starting:
            for _ in range(self._size):
                starting.start_soon(self._add_worker)

    def _checkin(self, worker: WorkerProcess) -> None:
        if not worker.alive:
            return
        if self._closing:
            self._nursery.start_soon(worker.close)
            return
        self._idle.append(worker)
        self._available.release()

    def _checkout(self, tenant: str) -> WorkerProcess:
        # Prefer a worker already holding this tenant's runtime; else the least recently used.
        for index in range(len(self._idle) - 1, -1, -1):
            if self._idle[index].tenant == tenant:
                return self._idle.pop(index)
        return self._idle.pop(0)

    async def run(self, job: Job, timeout_ms: int) -> Reply:
        if self._closing:
            raise Unavailable("the server is shutting down", headers={"Retry-After": "1"})
        await self._available.acquire()
        worker = self._checkout(job.tenant)
        try:
            with trio.fail_after(timeout_ms / 1000):
                reply = await worker.call(job)
        except trio.TooSlowError:
            self._timeouts += 1
            worker.kill()
            raise LimitExceeded(
                f"the script exceeded its wall-time limit of {timeout_ms} ms"
            ) from None
        except BaseException:
            worker.kill()  # interrupted mid-job: state unknown, never reuse
            raise
        self._checkin(worker)
        return reply

    async def aclose(self) -> None:
        """Ask every worker to exit (stdin closed), then kill what is left after a grace period."""
        self._closing = True
        for worker in list(self._all):
            if worker in self._idle:
                await worker.close()
        with trio.move_on_after(SHUTDOWN_GRACE_S):
            for worker in list(self._all):
                await worker.process.wait()
        for worker in list(self._all):
            worker.kill()


@asynccontextmanager
async def open_pool(size: int) -> AsyncIterator[Pool]:
    async with trio.open_nursery() as nursery:
        pool = Pool(nursery, size)
        try:
            await pool.start()
            yield pool
        finally:
            # Shielded so a cancelled server still stops its workers; bounded by the grace period.
            with trio.CancelScope(shield=True):
                await pool.aclose()
            nursery.cancel_scope.cancel()
