"""Scripts that wait do not hold a CPU slot: 100 concurrent requests to one tenant's script that
waits 200 ms on a local upstream, against `sngin serve` with default settings.

Run: .venv/bin/python bench/wait_bench.py
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.upstream import Upstream

CONCURRENCY = 100
WAIT_S = 0.2
ROUNDS = 3


async def burst(url: str) -> float:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        await client.get(url, headers={"Host": "wait.test"})  # warm the worker caches
        start = time.perf_counter()
        statuses: list[int] = []

        async def one() -> None:
            response = await client.get(url, headers={"Host": "wait.test"})
            statuses.append(response.status_code)

        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(one)
        elapsed = time.perf_counter() - start
    if statuses != [200] * CONCURRENCY:
        raise RuntimeError(f"unexpected statuses: {sorted(set(statuses))}")
    return elapsed


def main() -> None:
    upstream = Upstream()
    sites = Path(tempfile.mkdtemp())
    (sites / "wait.test").mkdir()
    (sites / "wait.test" / "index.lua").write_text(
        f"local r = http.request('{upstream.url(f'/slow?s={WAIT_S}')}') return r.statuscode"
    )
    env = {**os.environ, "SNGIN_CODE_DIR": str(sites), "SNGIN_EGRESS_ALLOW": "127.0.0.1"}
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "sngin"), "serve", "--bind", "127.0.0.1:0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stderr is not None
        url = None
        for line in server.stderr:
            match = re.search(r"Running on (http://127\.0\.0\.1:\d+)", line)
            if match:
                url = match.group(1) + "/"
                break
        assert url is not None
        threading.Thread(target=server.stderr.read, daemon=True).start()  # keep draining it
        times = [trio.run(burst, url) for _ in range(ROUNDS)]
    finally:
        server.terminate()
        server.wait(timeout=30)
        upstream.close()
    print(f"{CONCURRENCY} concurrent requests, each waiting {WAIT_S * 1000:.0f} ms on a local "
          f"upstream, default settings ({os.cpu_count()} cores):")  # fmt: skip
    print(f"  all done in {statistics.median(times):.3f} s (median of {ROUNDS}; "
          f"min {min(times):.3f}, max {max(times):.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
