"""Elastic workers: more workers while requests wait and the workers hold only requests parked
on platform calls (a worker runs one tenant at a time, so it cannot take another's), fewer once
they idle. Forked from the zygote, an extra worker costs ~4 ms and a few MiB.

The pool keeps `size` workers warm and grows to `max_workers` (SNGIN_MAX_WORKERS), one extra
per waiting request at most; a worker past `size` idle for `extra_idle_s` is retired.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from sngin.workers.pool import PoolConfig
    from sngin.workers.scheduler import Scheduler
    from sngin.workers.supervisor import Supervisor


class ElasticWorkers:
    def __init__(self, config: PoolConfig, supervisor: Supervisor, scheduler: Scheduler) -> None:
        self._config = config
        self._supervisor = supervisor
        self._scheduler = scheduler

    def starved(self) -> None:
        """A request waits for a worker: start one more if the workers hold parked requests,
        up to max_workers and one per waiting request."""
        supervisor, waiting = self._supervisor, len(self._scheduler.waiters)
        if supervisor.closing or not supervisor.serving or supervisor.starting >= waiting:
            return
        live = supervisor.live()
        if len(live) + supervisor.starting >= max(self._config.max_workers, self._config.size):
            return
        if any(w.in_flight and not w.computing for w in live):
            supervisor.grow()

    async def retire_idle_extras(self) -> None:
        """Workers past `size` that stayed idle for extra_idle_s leave, oldest idle first."""
        config = self._config
        while True:
            await trio.sleep(min(1.0, config.extra_idle_s))
            live = self._supervisor.live()
            extras = len(live) - config.size
            if extras <= 0:
                continue
            now = trio.current_time()
            idle = sorted(
                (w for w in live if not w.in_flight and w.idle_since is not None
                 and now - w.idle_since >= config.extra_idle_s),
                key=lambda w: w.idle_since or 0.0,
            )  # fmt: skip
            for worker in idle[:extras]:
                self._scheduler.withdraw(worker)
                self._supervisor.retire(worker)
