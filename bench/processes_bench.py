"""`sngin serve --processes 2` against `--processes 1` on this machine's cores: sngin hello under
`wrk -t1` (nothing pinned: the load generator shares the cores, as the issue asks), alternating
rounds in the same run. Reports req/s (target: 2 processes >= 1.3x one) and the server's CPU
per request, every process and worker included (target: within 10% of one process), and how
the kernel spread the requests over the processes.
Run: .venv/bin/python bench/processes_bench.py [--quick]   (needs wrk)
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import (
    ADMIN_TOKEN,
    BENCH_DIR,
    BIN,
    cpu_seconds,
    free_port,
    process_tree,
    wait_listening,
)

QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 3
SECONDS = 5 if QUICK else 10
CONNECTIONS = 32
WORKERS = 4  # the node's total either way


def start(port: int, processes: int) -> subprocess.Popen[bytes]:
    argv = [str(BIN / "sngin"), "serve", "--bind", f"127.0.0.1:{port}", "--workers", str(WORKERS),
            "--processes", str(processes), "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "SNGIN_ADMIN_TOKEN": ADMIN_TOKEN, "SNGIN_APP_PATH": str(BENCH_DIR / "app"),
           "SNGIN_DATA_PATH": str(BENCH_DIR / "data"),
           "SNGIN_MAX_WORKERS": "0"}  # a fixed pool: the tree measured stays the tree  # fmt: skip
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return process


def wrk(port: int, seconds: int) -> tuple[float, int]:
    argv = ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", "Host: hello.localhost",
            f"http://127.0.0.1:{port}/"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, requests


def spread(port: int) -> list[int]:
    """Each process's hello requests (one number with one process)."""
    stats = httpx.get(
        f"http://127.0.0.1:{port}/__sngin/stats",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    ).json()
    rows = stats.get("processes", [stats])
    return [row["pool"]["tenants"].get("hello.localhost", {}).get("requests", 0) for row in rows]


def round_of(processes: int) -> dict[str, object]:
    port = free_port()
    server = start(port, processes)
    try:
        wrk(port, 2)  # warm-up: workers, runtimes, caches
        tree = process_tree(server.pid)
        # the server (or the parent and its processes), a zygote per process, the workers
        expected = 1 + (processes if processes > 1 else 0) + processes + WORKERS
        assert len(tree) == expected, tree
        before = cpu_seconds(tree)
        rps, requests = wrk(port, SECONDS)
        cpu_us = (cpu_seconds(tree) - before) / requests * 1e6
        return {"rps": rps, "cpu_us": cpu_us, "spread": spread(port)}
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    print(f"processes bench: sngin hello, wrk -t1 -c{CONNECTIONS} for {SECONDS} s,"
          f" {WORKERS} workers, {ROUNDS} alternating rounds of --processes 1 and 2,"
          " nothing pinned")  # fmt: skip
    results: dict[int, list[dict[str, object]]] = {1: [], 2: []}
    for n in range(ROUNDS):
        order = (1, 2) if n % 2 == 0 else (2, 1)
        for processes in order:
            result = round_of(processes)
            results[processes].append(result)
            print(f"  --processes {processes}: {result['rps']:,.0f} req/s,"
                  f" {result['cpu_us']:.0f} us CPU/request, requests per process"
                  f" {result['spread']}")  # fmt: skip
    rps = {p: statistics.median(float(r["rps"]) for r in rs) for p, rs in results.items()}  # type: ignore[arg-type]
    cpu = {p: statistics.median(float(r["cpu_us"]) for r in rs) for p, rs in results.items()}  # type: ignore[arg-type]
    print(f"median req/s: 1 process {rps[1]:,.0f}, 2 processes {rps[2]:,.0f}:"
          f" {rps[2] / rps[1]:.2f}x (target >= 1.3)")  # fmt: skip
    print(f"median CPU/request: 1 process {cpu[1]:.0f} us, 2 processes {cpu[2]:.0f} us:"
          f" {cpu[2] / cpu[1]:.2f}x (target <= 1.10)")  # fmt: skip


if __name__ == "__main__":
    main()
