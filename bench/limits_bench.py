"""CPU-kill latency and worker memory: how long past its CPU budget a runaway script lives, and
the resident size of a worker idle, after a normal request and after a memory bomb.

Run: .venv/bin/python bench/limits_bench.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import contextlib

from sandbox.protocol import Job, Request
from sngin.errors import SnginError
from sngin.limits import Limits
from sngin.workers.pool import PoolConfig, open_pool
from sngin.workers.statistics import rss_bytes

BUDGET_MS = 200
SAMPLES = 3 if "--quick" in sys.argv else 10
RUNAWAYS = {
    "JIT loop": b"local n = 0 while true do n = n + 1 end",
    "catastrophic string.find": b"return string.find(string.rep('a', 5000), "
    b"string.rep('a*', 30) .. 'b')",
    "pcall loop": b"while true do pcall(error, 'x') end",
}


def job(key: str, source: bytes) -> Job:
    return Job(tenant="bench.test", key=key, version="1", request=Request(method="GET", path="/"),
               source=source)  # fmt: skip


async def main() -> None:
    limits = Limits(timeout_ms=30_000, cpu_ms=BUDGET_MS, memory_mb=64)
    config = PoolConfig(size=1, quarantine_strikes=10_000)
    async with open_pool(config, lambda tenant: limits) as pool:
        print(f"CPU budget {BUDGET_MS} ms, {SAMPLES} kills each (one worker; wall time to 504)")
        for name, source in RUNAWAYS.items():
            overshoot = []
            for _ in range(SAMPLES):
                await pool.wait_for_workers()
                start = trio.current_time()
                with contextlib.suppress(SnginError):
                    await pool.run(job(name, source))
                overshoot.append((trio.current_time() - start) * 1000 - BUDGET_MS)
            print(f"  {name:26} killed {statistics.median(overshoot):6.1f} ms past the budget "
                  f"(median; max {max(overshoot):.1f})")  # fmt: skip
        await pool.wait_for_workers()
        (pid,) = pool.pids()
        print(f"worker RSS idle:                     {rss_bytes(pid) / 2**20:6.1f} MiB")
        await pool.run(job("hello", b"return 'hi'"))
        print(f"worker RSS after a request:          {rss_bytes(pid) / 2**20:6.1f} MiB")
        with contextlib.suppress(SnginError):
            await pool.run(job("bomb", b"local t = {} for i = 1, 1e9 do t[i] = {i} end"))
        print(f"worker RSS just after a 64 MB memory bomb: {rss_bytes(pid) / 2**20:6.1f} MiB")
        await pool.run(job("hello", b"return 'hi'"))  # the worker tidies up between frames
        print(f"worker RSS at its next request:      {rss_bytes(pid) / 2**20:6.1f} MiB")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.ERROR)  # the pool logs each replacement at WARNING
    trio.run(main)
