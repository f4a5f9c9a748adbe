"""Purge propagation between two nodes over Redis: two `sngin serve` processes on one S3 bucket
(moto on loopback) and one redis-server. Each round uploads a new version, sends the purge to
node A and times until node B serves that version (B polled every 2 ms); reports p50/p99 over
the rounds (target p99 < 250 ms). Then the cluster's cost on the hot path: node A's hello req/s
with SNGIN_REDIS_URL set against unset, alternating runs (target >= 0.95).
Run: .venv/bin/python bench/cluster_bench.py [--quick]   (needs redis-server and hey)
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from serve_bench import ADMIN_TOKEN, BIN, S3Fixture, free_port, hey_duration, wait_listening

from tests.support import redis_server_process

QUICK = "--quick" in sys.argv
ROUNDS = 20 if QUICK else 50
LOAD_RUNS = 1 if QUICK else 3
KEY = "sites/hello.localhost/index.lua"


def start_node(port: int, s3: S3Fixture, redis_url: str | None) -> subprocess.Popen[bytes]:
    env = {**os.environ, **s3.env(), "SNGIN_ADMIN_TOKEN": ADMIN_TOKEN}
    if redis_url is not None:
        env["SNGIN_REDIS_URL"] = redis_url
    argv = ["taskset", "-c", "0", str(BIN / "sngin"), "serve", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--log-level", "warning"]  # fmt: skip
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_listening(port)
    return process


def propagation(s3: S3Fixture, redis_url: str) -> list[float]:
    a_port, b_port = free_port(), free_port()
    nodes = [start_node(a_port, s3, redis_url), start_node(b_port, s3, redis_url)]
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    hello = {"Host": "hello.localhost"}
    times = []
    try:
        with httpx.Client(timeout=10) as client:
            for port in (a_port, b_port):  # cached on both
                client.get(f"http://127.0.0.1:{port}/", headers=hello)
            for n in range(ROUNDS):
                body = f"version {n}"
                s3.client.put_object(Bucket="bench", Key=KEY, Body=f"return '{body}'".encode())
                started = time.perf_counter()
                client.post(f"http://127.0.0.1:{a_port}/__sngin/purge", headers=auth,
                            json={"host": "hello.localhost", "path": "/"})  # fmt: skip
                while client.get(f"http://127.0.0.1:{b_port}/", headers=hello).text != body:
                    time.sleep(0.002)
                times.append((time.perf_counter() - started) * 1000)
    finally:
        for node in nodes:
            node.terminate()
            node.wait()
    return times


def load(s3: S3Fixture, redis_url: str | None) -> float:
    port = free_port()
    node = start_node(port, s3, redis_url)
    try:
        hey_duration(port, 2)  # warm-up
        return hey_duration(port, 5)
    finally:
        node.terminate()
        node.wait()


def main() -> None:
    if shutil.which("redis-server") is None:
        sys.exit("bench: redis-server is not installed (apt-get install redis-server)")
    s3 = S3Fixture()
    redis_port = free_port()
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    with redis_server_process(redis_port):
        run(s3, redis_url)


def run(s3: S3Fixture, redis_url: str) -> None:
    try:
        times = sorted(propagation(s3, redis_url))
        p50 = statistics.median(times)
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"purge propagation A -> B over Redis, {len(times)} purges: p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms, max {times[-1]:.1f} ms  (target p99 < 250 ms)")  # fmt: skip
        s3.client.put_object(Bucket="bench", Key=KEY, Body=b"return 'Hello, world!'")
        with_redis, without = [], []
        for _ in range(LOAD_RUNS):
            without.append(load(s3, None))
            with_redis.append(load(s3, redis_url))
        ratio = statistics.median(w / o for w, o in zip(with_redis, without, strict=True))
        print(f"hello req/s, one node (hey -c 20, 5 s, {LOAD_RUNS} alternating runs): without "
              f"Redis {statistics.median(without):.0f}, with SNGIN_REDIS_URL "
              f"{statistics.median(with_redis):.0f}: {ratio:.2f}  (target >= 0.95)")  # fmt: skip
    finally:
        s3.close()


if __name__ == "__main__":
    main()
