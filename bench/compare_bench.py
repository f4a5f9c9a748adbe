"""A/B: server CPU per request of two sngin installs, measured in alternating rounds.

For a change whose cost is smaller than the run-to-run noise of `serve_bench.py` (req/s swings
+-25% between runs here): both servers run side by side on core 0 (2 workers each, the bundled
hello site), `hey` on core 1. Each round starts both afresh (a process's own speed is part of
the noise) and measures them in turn, A-B, then B-A, so drift and order hit both alike. CPU is
the server and all its workers (utime+stime from /proc), per request.
Run: .venv/bin/python bench/compare_bench.py OTHER_SNGIN [ROUNDS] [--storage]
(--storage: a script that reads and writes tenant storage on every request, instead of hello)
  e.g. git worktree add /tmp/base main~5 && python3 -m venv /tmp/base-venv &&
       /tmp/base-venv/bin/pip install -q -c constraints.txt -e /tmp/base &&
       .venv/bin/python bench/compare_bench.py /tmp/base-venv/bin/sngin
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import cpu_seconds, free_port, process_tree, wait_listening

THIS = Path(sys.executable).parent / "sngin"
REQUESTS = 4000
CONCURRENCY = 20
FOLDERS: list[str] = []  # each server's, removed at the end


STORAGE_SCRIPT = "storage.n = (tonumber(storage.n) or 0) + 1\nreturn 'n=' .. storage.n\n"


def start(sngin: Path, port: int, sites: Path | None) -> subprocess.Popen[bytes]:
    # Storage in memory where there is a tmpfs: the disk's writeback is noise, not CPU.
    folder = tempfile.mkdtemp(dir="/dev/shm" if Path("/dev/shm").is_dir() else None)
    FOLDERS.append(folder)
    env = {
        **os.environ,
        "SNGIN_WORKERS": "2",
        "SNGIN_ADMIN_TOKEN": "bench-admin-token-0123456789",
        # No recycling: a worker replaced mid-round would take its CPU time with it.
        "SNGIN_WORKER_MAX_REQUESTS": "1000000",
    }
    argv = ["taskset", "-c", "0", str(sngin), "serve", "--bind", f"127.0.0.1:{port}"]
    if sites is not None:  # each its own storage, the same script
        env |= {"SNGIN_CODE_DIR": str(sites), "SNGIN_DATA_PATH": folder + "/data"}
    # From an empty folder: without --storage, both serve their bundled demo sites.
    process = subprocess.Popen(argv, env=env, cwd=folder, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    wait_listening(port)
    return process


def load(port: int, requests: int) -> float:
    argv = ["taskset", "-c", "1", "hey", "-n", str(requests), "-c", str(CONCURRENCY), "-host",
            "hello.localhost", f"http://127.0.0.1:{port}/"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(match.group(1)) if match else 0.0


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--storage"]
    other, rounds = Path(args[0]), int(args[1]) if len(args) > 1 else 6
    sites = None
    if "--storage" in sys.argv:
        sites = Path(tempfile.mkdtemp())
        (sites / "hello.localhost").mkdir()
        (sites / "hello.localhost" / "index.lua").write_text(STORAGE_SCRIPT)
    installs = {"this": THIS, "other": other}
    what = "a storage read and write" if sites is not None else "hello"
    print(f"{what}: hey -n {REQUESTS} -c {CONCURRENCY} per round, {rounds} alternating rounds;"
          f" this = {THIS}, other = {other}")  # fmt: skip
    cpu: dict[str, list[float]] = {name: [] for name in installs}
    rps: dict[str, list[float]] = {name: [] for name in installs}
    for round_number in range(rounds):
        # Fresh servers every round: two processes of one install differ by up to 7% in CPU
        # per request for their whole life (measured A against A), which rounds on the same
        # pair of processes never average out. And each round swaps who goes first: the first
        # was measured up to 17% dearer on the storage script, whichever install it was.
        ports = {name: free_port() for name in installs}
        servers = {name: start(path, ports[name], sites) for name, path in installs.items()}
        try:
            for name in installs:
                load(ports[name], 2000)  # warm-up: workers compiled, caches full
            order = list(servers.items())
            for name, server in order if round_number % 2 == 0 else reversed(order):
                pids = process_tree(server.pid)
                before = cpu_seconds(pids)
                rps[name].append(load(ports[name], REQUESTS))
                cpu[name].append((cpu_seconds(pids) - before) / REQUESTS * 1e6)
        finally:
            for server in servers.values():
                server.terminate()
                server.wait()
            for folder in FOLDERS:
                shutil.rmtree(folder, ignore_errors=True)
            FOLDERS.clear()
    for name in installs:
        print(f"  {name:6} server CPU/request median {statistics.median(cpu[name]):6.1f} us"
              f" (rounds: {', '.join(f'{c:.0f}' for c in cpu[name])});"
              f" req/s median {statistics.median(rps[name]):.0f}")  # fmt: skip
    ratio = statistics.median(cpu["this"]) / statistics.median(cpu["other"])
    paired = statistics.median(a / b for a, b in zip(cpu["this"], cpu["other"], strict=True))
    print(f"  this / other CPU per request: {ratio:.3f} (median of the rounds' ratios:"
          f" {paired:.3f})")  # fmt: skip


if __name__ == "__main__":
    main()
