"""What the pool reports: a frozen snapshot of its workers and per-tenant counters."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Mapping

PAGE_BYTES: Final = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    pid: int
    tenant: str | None
    state: str  # "idle" or "busy"
    requests: int
    in_flight: int
    parked: int  # of those, waiting on a platform call's answer
    rss_bytes: int
    age_s: float


@dataclass(slots=True)
class TenantCounters:
    requests: int = 0
    status_2xx: int = 0
    status_3xx: int = 0
    status_4xx: int = 0
    status_5xx: int = 0
    wall_kills: int = 0
    cpu_kills: int = 0
    memory_kills: int = 0
    crashes: int = 0
    protocol_errors: int = 0
    quarantines: int = 0
    quarantined_requests: int = 0
    cpu_ms: float = 0.0
    wall_ms: float = 0.0
    queue_waits: int = 0
    queue_wait_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class TenantStatistics:
    requests: int
    status_2xx: int
    status_3xx: int
    status_4xx: int
    status_5xx: int
    wall_kills: int
    cpu_kills: int
    memory_kills: int
    crashes: int
    protocol_errors: int
    quarantines: int
    quarantined_requests: int
    cpu_ms: float
    wall_ms: float
    queue_waits: int
    queue_wait_ms: float


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    size: int
    live: int
    idle: int
    started: int
    replaced: int
    spawn_failures: int  # worker starts that failed since the server started
    timeouts: int
    tenant_switches: int
    fresh_runtimes: int  # requests that needed a new Lua runtime (none kept for the tenant)
    ran_elsewhere: int  # stacked jobs a worker declined or ended before starting, run again
    parked_requests: int  # requests waiting on a platform call's answer, all workers
    max_workers: int  # the most workers the pool grows to (size: those kept warm)
    grown: int  # extra workers started for waiting requests, since start
    retired: int  # extra workers retired after idling, since start
    exits: Mapping[str, int]  # read-only views: a snapshot never changes under its reader
    workers: tuple[WorkerInfo, ...]
    tenants: Mapping[str, TenantStatistics]


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as statm:
            return int(statm.read().split()[1]) * PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0
