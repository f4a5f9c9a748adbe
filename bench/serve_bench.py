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

from sandbox.protocol import HEADER, Hello, Job, Reply, Request, decode_from_worker, encode_frame

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.s3proxy, the counting proxy the tests use
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


def start_sngin(port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", str(BIN / "sngin"), "serve", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "SNGIN_CODE_DIR": str(ROOT / "sngin" / "demo" / "sites"),
           "SNGIN_ADMIN_TOKEN": "bench-admin-token-0123456789"}  # fmt: skip
    # The access log (one JSON line per request) is part of the measured cost; discard it.
    return subprocess.Popen(
        argv, env={**env, **(extra_env or {})}, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


class S3Fixture:
    """moto on loopback behind the tests' counting proxy, holding the demo script."""

    def __init__(self) -> None:
        import logging

        import botocore.session
        from moto.server import ThreadedMotoServer

        from tests.s3proxy import CountingProxy

        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto's per-request lines
        self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.moto.start()
        host, moto_port = self.moto.get_host_and_port()
        self.proxy = CountingProxy(f"http://{host}:{moto_port}")
        self.proxy.start()
        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=f"http://{host}:{moto_port}", region_name="us-east-1",
            aws_access_key_id="bench", aws_secret_access_key="bench",
        )  # fmt: skip
        client.create_bucket(Bucket="bench")
        demo = ROOT / "sngin" / "demo" / "sites" / "hello.localhost" / "index.lua"
        client.put_object(Bucket="bench", Key="sites/hello.localhost/index.lua",
                          Body=demo.read_bytes())  # fmt: skip

    def env(self) -> dict[str, str]:
        return {
            "AWS_S3_CODE_PATH": "bench/sites",
            "AWS_ENDPOINT_URL_S3": self.proxy.url,
            "AWS_ACCESS_KEY_ID": "bench",
            "AWS_SECRET_ACCESS_KEY": "bench",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def gets(self) -> int:
        return self.proxy.gets("sites/hello.localhost/index.lua")

    def close(self) -> None:
        self.proxy.stop()
        self.moto.stop()


def hey_duration(port: int, seconds: int) -> float:
    argv = ["taskset", "-c", "1", "hey", "-z", f"{seconds}s", "-c", str(CONCURRENCY), "-host",
            "hello.localhost", f"http://127.0.0.1:{port}/"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def s3_load(s3: S3Fixture, seconds: int = 10) -> tuple[float, int]:
    """Req/s over a timed load on one S3 script, and the S3 GETs seen while it ran."""
    port = free_port()
    server = start_sngin(port, s3.env())
    try:
        wait_listening(port)
        hey(port, 500)
        before = s3.gets()
        rps = hey_duration(port, seconds)
        return rps, s3.gets() - before
    finally:
        server.terminate()
        server.wait(timeout=30)


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
        assert isinstance(decode_from_worker(proc.stdout.read(length)), Hello)
        (length,) = HEADER.unpack(proc.stdout.read(HEADER.size))
        reply = decode_from_worker(proc.stdout.read(length))
        assert isinstance(reply, Reply)
        assert reply.body == b"hi"
        times.append((time.perf_counter() - start) * 1000)
        proc.stdin.close()
        proc.wait()
    return statistics.median(times)


def main() -> None:
    if shutil.which("hey") is None:
        sys.exit("bench: `hey` is not installed (apt-get install hey)")
    s3 = S3Fixture()
    scenarios = {
        "bare hypercorn-trio ASGI hello (floor)": start_bare,
        "sngin demo tenant, folder store": start_sngin,
        "sngin demo tenant, S3 store (cached)": lambda port: start_sngin(port, s3.env()),
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
    load_rps, s3_gets = s3_load(s3)
    print(f"  10 s load on one S3 script (hey -z 10s -c {CONCURRENCY}): {load_rps:.0f} req/s,"
          f" {s3_gets} S3 requests during the load")  # fmt: skip
    s3.close()
    RESULTS.parent.mkdir(exist_ok=True)
    summary = {"rows": rows, "worker_startup_ms": startup,
               "s3_load": {"rps": load_rps, "s3_requests": s3_gets}}  # fmt: skip
    RESULTS.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
