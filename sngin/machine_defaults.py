"""Settings whose defaults come from the machine: its cores, its memory (the container's limit
when it has one) and its file descriptor limit. Chosen once, when the settings are read."""

from __future__ import annotations

import os
import resource
from pathlib import Path
from typing import Final

from sngin.limits import MIB

# A worker's worst case: Python and lupa (~30 MiB) beside a Lua heap at its cap.
WORKER_BASE_MB: Final = 32
MAX_WORKERS_CEILING: Final = 512
MAX_OUTBOUND_CONNECTIONS: Final = 1000


def default_workers() -> int:
    """SNGIN_WORKERS: two per core (workers kept warm)."""
    return max(2, 2 * (os.cpu_count() or 1))


def default_kept_runtimes_mb() -> int:
    """A sixteenth of the memory this server may use, at most 512 MiB: a fresh runtime costs
    ~0.5 ms of CPU, a kept one ~100-200 KiB of heap."""
    return max(32, min(512, usable_memory_bytes() // 16 // MIB))


def default_max_workers(size: int, memory_mb: int) -> int:
    """SNGIN_MAX_WORKERS: as many workers as half the memory holds if every one of them ran a
    tenant at its Lua memory cap (SNGIN_MEMORY_MB), and whose descriptors (6 each) fit in a
    quarter of the descriptor limit; at least SNGIN_WORKERS, at most 512. Parked workers use a
    few MiB each; the bound is for the worst case."""
    fits = usable_memory_bytes() // 2 // ((memory_mb + WORKER_BASE_MB) * MIB)
    return max(size, min(MAX_WORKERS_CEILING, fits, descriptor_limit() // 4 // 6))


def default_outbound_connections() -> int:
    """SNGIN_OUTBOUND_CONNECTIONS: 1,000, or a quarter of the descriptors the server can have
    when that is fewer (client connections and workers need the rest)."""
    return max(16, min(MAX_OUTBOUND_CONNECTIONS, descriptor_limit() // 4))


def descriptor_limit() -> int:
    """The hard RLIMIT_NOFILE: what the server raises its own limit to at start."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def usable_memory_bytes() -> int:
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:  # cgroup v2: "max" or a byte count
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
    except OSError:
        return physical
    return min(physical, int(limit)) if limit.isdigit() else physical
