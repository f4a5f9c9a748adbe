"""HTTP benchmark: sngin's demo tenant against a bare Hypercorn-trio ASGI hello (the floor).

Both servers (and sngin's workers) are pinned to core 0 and `hey` to core 1; scenarios alternate
over ROUNDS rounds so drift hits both alike. Also measures a worker's start-up time.
Run: .venv/bin/python bench/serve_bench.py   (needs `hey`: apt-get install hey)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

from sandbox.protocol import HEADER, Job, Request, decode_reply, encode_frame

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ROUNDS = 3
REQUESTS = 4000
CONCURRENCY = 20
RESULTS = ROOT / "bench" / "results" / "latest.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, deadline_s: float = 20.0) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


def start_bare(port: int) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", str(BIN / "hypercorn"), "-k", "trio", "--bind",
            f"127.0.0.1:{port}", "hello_asgi:app"]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT / "bench", stdout=subprocess.DEVNULL)


def start_sngin(port: int) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", str(BIN / "sngin"), "serve", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "SNGIN_CODE_DIR": str(ROOT / "sngin" / "demo" / "sites")}
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL)


def hey(port: int, n: int) -> dict[str, float]:
    argv = ["taskset", "-c", "1", "hey", "-n", str(n), "-c", str(CONCURRENCY), "-host",
            "hello.localhost", f"http://127.0.0.1:{port}/"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = float(re.search(r"50%+ in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    p99 = float(re.search(r"99%+ in ([\d.]+) secs", out).group(1))  # type: ignore[union-attr]
    codes = re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)
    if [c for c, _ in codes] != ["200"]:
        raise RuntimeError(f"non-200 responses: {codes}")
    return {"rps": rps, "p50_ms": p50 * 1000, "p99_ms": p99 * 1000}


def worker_startup_ms(samples: int = 10) -> float:
    job = Job(tenant="t.test", key="t.test", version="1", request=Request(method="GET", path="/"),
              source=b"return 'hi'")  # fmt: skip
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "sandbox"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE)  # fmt: skip
        assert proc.stdin
        assert proc.stdout
        proc.stdin.write(encode_frame(job))
        proc.stdin.flush()
        (length,) = HEADER.unpack(proc.stdout.read(HEADER.size))
        assert decode_reply(proc.stdout.read(length)).body == b"hi"
        times.append((time.perf_counter() - start) * 1000)
        proc.stdin.close()
        proc.wait()
    return statistics.median(times)


def main() -> None:
    if shutil.which("hey") is None:
        sys.exit("bench: `hey` is not installed (apt-get install hey)")
    scenarios = {
        "bare hypercorn-trio ASGI hello (floor)": start_bare,
        "sngin demo tenant": start_sngin,
    }
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    for round_number in range(ROUNDS):
        for name, start in scenarios.items():
            port = free_port()
            server = start(port)
            try:
                wait_listening(port)
                hey(port, 500)  # warm-up
                figures[name].append(hey(port, REQUESTS))
            finally:
                server.terminate()
                server.wait(timeout=30)
        print(f"round {round_number + 1}/{ROUNDS} done", file=sys.stderr)
    print(f"hey -n {REQUESTS} -c {CONCURRENCY}, servers on core 0, hey on core 1, {ROUNDS} rounds")
    floor = statistics.median(r["rps"] for r in figures[next(iter(scenarios))])
    rows = []
    for name, runs in figures.items():
        rps = [r["rps"] for r in runs]
        row = {
            "scenario": name,
            "rps_median": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "ratio_to_floor": statistics.median(rps) / floor,
        }
        rows.append(row)
        spread = f"({row['rps_min']:.0f}-{row['rps_max']:.0f})"
        print(f"  {name:40} {row['rps_median']:8.0f} req/s {spread}"
              f"  p50 {row['p50_ms']:.1f} ms  p99 {row['p99_ms']:.1f} ms"
              f"  {row['ratio_to_floor']:.2f}x floor")  # fmt: skip
    startup = worker_startup_ms()
    print(f"  worker start-up (spawn to first reply, median of 10): {startup:.0f} ms")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"rows": rows, "worker_startup_ms": startup}, indent=2))


if __name__ == "__main__":
    main()
