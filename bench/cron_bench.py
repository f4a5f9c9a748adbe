"""Scheduled runs: how late ticks start, and what an idle scheduler costs.

1. Lateness: 20 sites with an every-second schedule (SNGIN_CRON_MIN_INTERVAL_S=1) for
   SECONDS s, on one node, then on two nodes sharing one Redis (each tick claimed by one);
   lateness is a run's start less its tick, read from the sites' recorded runs.
2. Idle CPU: 10,000 sites with one entry each that is not due (`0 0 1 1 *`); the server's CPU
   over 20 s once its first scan is done, as a share of one core.
Run: .venv/bin/python bench/cron_bench.py   (needs redis-server for the two-node part)
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import BIN, cpu_seconds, free_port, process_tree, wait_listening

TOKEN = "bench-admin-token-0123456789"
SITES = 20
SECONDS = 6
IDLE_TENANTS = 10_000


def write_sites(root: Path, count: int, schedule: str) -> None:
    for n in range(count):
        folder = root / f"c{n:05d}.bench"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text("return 'tick'")
        (folder / "_sngin.json").write_text(
            json.dumps({"cron": [{"schedule": schedule, "path": "/"}]})
        )


def start(root: Path, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    environment = {**os.environ, "SNGIN_CODE_DIR": str(root), "SNGIN_ADMIN_TOKEN": TOKEN,
                   "SNGIN_CRON_MIN_INTERVAL_S": "1", **env}  # fmt: skip
    argv = [str(BIN / "sngin"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", "2",
            "--log-level", "warning"]  # fmt: skip
    return subprocess.Popen(argv, env=environment, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def lateness(ports: list[int], sites: int) -> list[float]:
    late = []
    seen = set()
    for n in range(sites):
        answer = httpx.get(f"http://127.0.0.1:{ports[0]}/__sngin/code/c{n:05d}.bench/cron",
                           headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
        for run in answer.json()["runs"]:
            if run["outcome"] == "ok":
                late.append(run["started"] - run["tick"])
                seen.add((n, run["tick"]))
    if len(seen) != len(late):
        raise RuntimeError("a tick ran twice")
    return late


def show(label: str, late: list[float]) -> None:
    cuts = statistics.quantiles(late, n=100)
    print(f"  {label}: {len(late)} runs, lateness p50 {cuts[49] * 1000:.1f} ms,"
          f" p99 {cuts[98] * 1000:.1f} ms, max {max(late) * 1000:.1f} ms")  # fmt: skip


def idle_share(sites: Path, data: Path) -> float:
    """The server's CPU, as a share of one core, over 20 s once its first scan is done."""
    port = free_port()
    server = start(sites, port, {"SNGIN_DATA_PATH": str(data)})
    try:
        wait_listening(port)
        time.sleep(15)  # the first scan: 10,000 configurations read (a few seconds)
        tree = process_tree(server.pid)
        before, started = cpu_seconds(tree), time.monotonic()
        time.sleep(20)
        return (cpu_seconds(tree) - before) / (time.monotonic() - started)
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="sngin-cron-bench-"))
    print(f"{SITES} sites every second for {SECONDS} s; then {IDLE_TENANTS:,} idle entries")
    sites = work / "sites"
    write_sites(sites, SITES, "* * * * * *")
    port = free_port()
    server = start(sites, port, {"SNGIN_DATA_PATH": str(work / "one")})
    try:
        wait_listening(port)
        time.sleep(SECONDS)  # the load itself: ticks fire on their own
        show("one node", lateness([port], SITES))
    finally:
        server.terminate()
        server.wait()
    redis = shutil.which("redis-server")
    if redis is None:
        print("  two nodes: skipped (no redis-server)")
    else:
        redis_port = free_port()
        store = subprocess.Popen([redis, "--port", str(redis_port), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no"],
                                 stdout=subprocess.DEVNULL)  # fmt: skip
        ports = [free_port(), free_port()]
        env = {"SNGIN_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0"}
        time.sleep(0.5)
        servers = [start(sites, p, env) for p in ports]
        try:
            for p in ports:
                wait_listening(p)
            time.sleep(SECONDS)
            show("two nodes, one Redis", lateness(ports, SITES))
        finally:
            for s in servers:
                s.terminate()
                s.wait()
            store.terminate()
            store.wait()
    shares = {}
    for label, entries in (("without cron entries", False), ("with them", True)):
        idle = work / f"idle-{entries}"
        write_sites(idle, IDLE_TENANTS, "0 0 1 1 *")
        if not entries:
            for config in idle.glob("*/_sngin.json"):
                config.unlink()
        shares[label] = idle_share(idle, work / f"idle-data-{entries}")
        print(f"  idle server, {IDLE_TENANTS:,} sites {label}: {shares[label] * 100:.2f}%"
              f" of one core")  # fmt: skip
    added = shares["with them"] - shares["without cron entries"]
    print(f"  the scheduler's share: {added * 100:.2f}% of one core (target < 2%)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
