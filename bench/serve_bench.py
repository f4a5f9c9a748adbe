"""HTTP benchmark: sngin against a bare Hypercorn-trio ASGI hello (the floor) and a Quart-trio
hello, all measured in the same run.

Servers (and sngin's workers) are pinned to core 0 and `hey` to core 1; scenarios alternate
over ROUNDS rounds so drift hits all alike. For each: req/s (median, min-max), p50/p99, server
CPU per request (the server and all its children, from /proc), peak RSS, ratio to the floor
(the median of per-round ratios), and a closing list of the targets met or missed.
The tenant scenarios (1 tenant vs 1,000 tenants round-robin) use wrk, whose Lua request()
rotates the Host header, and are compared with each other.
Also: a worker's start-up time, a 10 s load on one S3 script with the S3 GETs seen, a cold
storm of 100 concurrent first hits on an uncached S3 script, each worker's RSS after 10,000
requests, and the server's RSS with 10,000 cached S3 scripts (--quick: 1,000 and 500).
Run: .venv/bin/python bench/serve_bench.py [--quick]   (needs hey and wrk: apt-get install hey
wrk)
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
import tempfile
import time
from pathlib import Path
from typing import Any

from sandbox.protocol import HEADER, Hello, Job, Reply, Request, decode_from_worker, encode_frame

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for tests.s3proxy, the counting proxy the tests use
BIN = Path(sys.executable).parent
QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 5
REQUESTS = 1000 if QUICK else 4000
CONCURRENCY = 20
RESULTS = ROOT / "bench" / "results" / "latest.json"
BENCH_DIR = Path(tempfile.mkdtemp(prefix="sngin-bench-"))
SITES_DIR = BENCH_DIR / "sites"
TENANTS = 1000  # the round-robin scenario's tenants
CACHED_SCRIPTS = 500 if QUICK else 10_000  # the server-RSS scenario's scripts
WORKER_REQUESTS = 1000 if QUICK else 10_000  # requests per worker before its RSS is read
ADMIN_TOKEN = "bench-admin-token-0123456789"
WRK_SCRIPT = BENCH_DIR / "rotate.lua"


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


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
JSON_BODY = json.dumps({"items": [{"id": i, "name": f"item {i}", "tags": ["a", "b"]}
                                  for i in range(40)]}).encode()[:2048]  # fmt: skip
SITES = {
    "hello.localhost/index.lua": (ROOT / "sngin/demo/sites/hello.localhost/index.lua").read_text(),
    "json.bench/index.lua": "local data = json.decode(request.body) "
    "return {count = #data.items, first = data.items[1].name}",
    "config.bench/index.lua": "return 'Hello, ' .. env.WHO .. '!\\n'",
    "config.bench/_sngin.json": '{"env": {"WHO": "world"}, "limits": {"cpu_ms": 1000}}',
}


def process_tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except OSError:
            pass
    return pids


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
        except OSError:
            pass
    return total / CLOCK_TICKS


def peak_rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def write_sites(root: Path) -> Path:
    sites = {**SITES, **{f"{tenant_host(n)}/index.lua": f"return 'Hello from tenant {n}'\n"
                         for n in range(TENANTS)}}  # fmt: skip
    for path, text in sites.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    return root


def tenant_host(n: int) -> str:
    return f"t{n:04d}.bench"


# wrk sends the requests of the tenant scenarios: hey sends one Host header, wrk's Lua
# request() picks the next tenant for each request.
ROTATE_LUA = """
local n, tenants = 0, tonumber(os.getenv("BENCH_TENANTS"))
request = function()
  n = n + 1
  return wrk.format("GET", "/", {Host = string.format("t%04d.bench", n % tenants)})
end
"""


def start_quart(port: int) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", str(BIN / "hypercorn"), "-k", "trio", "--bind",
            f"127.0.0.1:{port}", "hello_quart:app"]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT / "bench", stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip


def start_bare(port: int) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", str(BIN / "hypercorn"), "-k", "trio", "--bind",
            f"127.0.0.1:{port}", "hello_asgi:app"]  # fmt: skip
    return subprocess.Popen(argv, cwd=ROOT / "bench", stdout=subprocess.DEVNULL)


def start_sngin(port: int, extra_env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    argv = ["taskset", "-c", "0", str(BIN / "sngin"), "serve", "--bind", f"127.0.0.1:{port}",
            "--workers", "2", "--log-level", "warning"]  # fmt: skip
    env = {**os.environ, "SNGIN_CODE_DIR": str(SITES_DIR), "SNGIN_ADMIN_TOKEN": ADMIN_TOKEN,
           "SNGIN_APP_PATH": str(BENCH_DIR / "app")}  # fmt: skip
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
        self.client = client
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


def hey(port: int, n: int, host: str = "hello.localhost", body: bytes | None = None
        ) -> dict[str, float]:  # fmt: skip
    argv = ["taskset", "-c", "1", "hey", "-n", str(n), "-c", str(CONCURRENCY), "-host", host]
    if body is not None:
        body_file = SITES_DIR.parent / "body.json"
        body_file.write_bytes(body)
        argv += ["-m", "POST", "-T", "application/json", "-D", str(body_file)]
    argv.append(f"http://127.0.0.1:{port}/")
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


# name -> (start the server, Host header, request body or None)
Scenario = tuple[Any, str, bytes | None]


def measure(start: Any, host: str, body: bytes | None) -> dict[str, float]:
    """One hey run against a fresh server, after a warm-up."""
    return load_server(
        start,
        warm_up=lambda port: hey(port, 500, host, body),
        load=lambda port: {**hey(port, REQUESTS, host, body), "requests": REQUESTS},
    )


def load_server(start: Any, *, warm_up: Any, load: Any) -> dict[str, float]:
    """Start a server, warm it up, run the load: the load's figures plus the CPU per request
    of the server and its workers and their peak RSS."""
    port = free_port()
    server = start(port)
    try:
        wait_listening(port)
        warm_up(port)
        tree = process_tree(server.pid)
        before = cpu_seconds(tree)
        result: dict[str, float] = load(port)
        result["cpu_us_per_request"] = (cpu_seconds(tree) - before) / result["requests"] * 1e6
        result["processes"] = len(tree)
        result["peak_rss_server_mib"] = peak_rss_mib(tree[0])
        result["peak_rss_workers_mib"] = max((peak_rss_mib(p) for p in tree[1:]), default=0.0)
        return result
    finally:
        server.terminate()
        server.wait(timeout=30)


async def cold_storm(s3: S3Fixture, requests: int = 100) -> tuple[int, int]:
    """`requests` concurrent first hits on a script not cached yet: statuses OK, S3 GETs seen."""
    import httpx
    import trio

    key = "sites/storm.bench/index.lua"
    s3.client.put_object(Bucket="bench", Key=key, Body=b"return 'storm'")
    port = free_port()
    server = start_sngin(port, s3.env())
    try:
        await trio.to_thread.run_sync(wait_listening, port)
        ok = 0
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as c:

            async def one() -> None:
                nonlocal ok
                response = await c.get(f"http://127.0.0.1:{port}/", headers={"Host": "storm.bench"})
                ok += response.status_code == 200

            async with trio.open_nursery() as nursery:
                for _ in range(requests):
                    nursery.start_soon(one)
        return ok, s3.proxy.gets(key)
    finally:
        server.terminate()
        server.wait(timeout=30)


def wrk(port: int, seconds: float, tenants: int, script: Path = WRK_SCRIPT) -> dict[str, float]:
    """wrk -c CONCURRENCY for `seconds`; `script` picks each request's tenant among `tenants`
    (by default the next one, round-robin)."""
    argv = ["taskset", "-c", "1", "wrk", "-t1", f"-c{CONCURRENCY}", f"-d{seconds}s", "--latency",
            "-s", str(script), f"http://127.0.0.1:{port}/"]  # fmt: skip
    env = {**os.environ, "BENCH_TENANTS": str(tenants)}
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return {"rps": rps, "requests": requests, "p50_ms": wrk_ms(out, "50%"),
            "p99_ms": wrk_ms(out, "99%")}  # fmt: skip


def wrk_ms(out: str, percentile: str) -> float:
    value, unit = re.search(rf"{percentile}\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def measure_tenants(tenants: int) -> dict[str, float]:
    """sngin hello spread over `tenants` tenants, round-robin (wrk)."""
    return load_server(
        start_sngin,
        # warm-up: every tenant seen at least once
        warm_up=lambda port: wrk(port, 3 if tenants > 1 else 1, tenants),
        load=lambda port: wrk(port, 3 if QUICK else 5, tenants),
    )


def admin_stats(port: int) -> dict[str, Any]:
    import httpx

    response = httpx.get(f"http://127.0.0.1:{port}/__sngin/stats",
                         headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})  # fmt: skip
    response.raise_for_status()
    return dict(response.json())


def current_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def worker_rss_after_requests() -> dict[str, Any]:
    """Each of 2 workers serves WORKER_REQUESTS requests (recycling off), then their RSS."""
    port = free_port()
    server = start_sngin(port, {"SNGIN_WORKER_MAX_REQUESTS": "1000000000"})
    try:
        wait_listening(port)
        hey(port, 2 * WORKER_REQUESTS)
        workers = admin_stats(port)["pool"]["workers"]
        return {"requests": [w["requests"] for w in workers],
                "rss_mib": [round(current_rss_mib(w["pid"]), 1) for w in workers]}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


def server_rss_with_cached_scripts(s3: S3Fixture) -> dict[str, Any]:
    """CACHED_SCRIPTS distinct S3 scripts (100 tenants), each requested once, then the
    server's RSS and its code cache's size."""
    import httpx
    import trio
    from moto.s3.models import s3_backends

    backend = next(iter(s3_backends.values()))["global"]
    per_tenant = CACHED_SCRIPTS // 100
    body = ("-- a typical small script\n" + "local greeting = 'hello'\n" * 12 +
            "return {greeting = greeting, path = request.path}\n").encode()  # fmt: skip
    paths = [(f"r{t:02d}.bench", f"/p{n}") for t in range(100) for n in range(per_tenant)]
    for host, path in paths:  # straight into moto: 10,000 PUTs over HTTP take minutes
        backend.put_object("bench", f"sites/{host}{path}/index.lua", body)
    port = free_port()
    server = start_sngin(port, {**s3.env(), "SNGIN_MIRROR_BYTES": "0"})
    try:
        wait_listening(port)
        before = current_rss_mib(server.pid)

        async def fetch_all() -> int:
            ok = 0
            async with httpx.AsyncClient(timeout=60) as client:

                async def worker(chunk: list[tuple[str, str]]) -> None:
                    nonlocal ok
                    for host, path in chunk:
                        response = await client.get(f"http://127.0.0.1:{port}{path}",
                                                    headers={"Host": host})  # fmt: skip
                        ok += response.status_code == 200

                async with trio.open_nursery() as nursery:
                    for i in range(CONCURRENCY):
                        nursery.start_soon(worker, paths[i::CONCURRENCY])
            return ok

        ok = trio.run(fetch_all)
        stats = admin_stats(port)
        return {"scripts": len(paths), "ok": ok, "rss_before_mib": round(before, 1),
                "rss_after_mib": round(current_rss_mib(server.pid), 1),
                "cache_entries": stats["code_cache"]["entries"],
                "cache_bytes": stats["code_cache"]["bytes"]}  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    if shutil.which("hey") is None:
        sys.exit("bench: `hey` is not installed (apt-get install hey)")
    import trio

    if shutil.which("wrk") is None:
        sys.exit("bench: `wrk` is not installed (apt-get install wrk)")
    write_sites(SITES_DIR)
    WRK_SCRIPT.write_text(ROTATE_LUA)
    s3 = S3Fixture()
    scenarios: dict[str, Scenario] = {
        "floor: bare hypercorn-trio ASGI hello": (start_bare, "hello.localhost", None),
        "floor-quart: hypercorn + quart-trio hello": (start_quart, "hello.localhost", None),
        "sngin hello, folder store": (start_sngin, "hello.localhost", None),
        "sngin hello, S3 store (cached)": (lambda port: start_sngin(port, s3.env()),
                                           "hello.localhost", None),
        "sngin JSON: decode a 2 KiB body, encode a reply": (start_sngin, "json.bench", JSON_BODY),
        "sngin hello with _sngin.json and env": (start_sngin, "config.bench", None),
    }  # fmt: skip
    # The tenant scenarios use wrk (hey sends one Host): compared with each other, not the floor.
    tenant_scenarios = {
        "sngin hello, 1 tenant (wrk)": 1,
        f"sngin hello, {TENANTS:,} tenants round-robin (wrk)": TENANTS,
    }
    figures: dict[str, list[dict[str, float]]] = {
        name: [] for name in [*scenarios, *tenant_scenarios]
    }
    for round_number in range(ROUNDS):
        for name, (start, host, body) in scenarios.items():
            figures[name].append(measure(start, host, body))
        for name, tenants in tenant_scenarios.items():
            figures[name].append(measure_tenants(tenants))
        print(f"round {round_number + 1}/{ROUNDS} done", file=sys.stderr)
    print(f"hey -n {REQUESTS} -c {CONCURRENCY}, servers (and workers) on core 0, hey on core 1, "
          f"{ROUNDS} round(s)")  # fmt: skip
    floor_name, single_name = next(iter(scenarios)), next(iter(tenant_scenarios))

    def ratio(name: str, baseline: str) -> float:
        """The median over rounds of name's req/s over baseline's in the same round: drift
        between rounds cancels out."""
        pairs = zip(figures[name], figures[baseline], strict=True)
        return statistics.median(run["rps"] / base["rps"] for run, base in pairs)

    def added_cpu(name: str, baseline: str) -> float:
        pairs = zip(figures[name], figures[baseline], strict=True)
        return statistics.median(
            run["cpu_us_per_request"] - base["cpu_us_per_request"] for run, base in pairs
        )

    rows = []
    for name, runs in figures.items():
        rps = [r["rps"] for r in runs]
        row = {
            "scenario": name,
            "processes": runs[0]["processes"],
            "concurrency": CONCURRENCY,
            "rps_median": statistics.median(rps),
            "rps_min": min(rps),
            "rps_max": max(rps),
            "p50_ms": statistics.median(r["p50_ms"] for r in runs),
            "p99_ms": statistics.median(r["p99_ms"] for r in runs),
            "cpu_us_per_request": statistics.median(r["cpu_us_per_request"] for r in runs),
            "peak_rss_server_mib": max(r["peak_rss_server_mib"] for r in runs),
            "peak_rss_workers_mib": max(r["peak_rss_workers_mib"] for r in runs),
            "ratio_to_floor": ratio(name, floor_name),
        }
        if name in tenant_scenarios:
            row["ratio_to_one_tenant"] = ratio(name, single_name)
        rows.append(row)
        spread = f"({row['rps_min']:.0f}-{row['rps_max']:.0f})"
        print(f"  {name:48} {row['rps_median']:6.0f} req/s {spread:13}"
              f" p50 {row['p50_ms']:5.1f} ms  p99 {row['p99_ms']:5.1f} ms"
              f"  {row['cpu_us_per_request']:5.0f} us CPU/req"
              f"  RSS {row['peak_rss_server_mib']:.0f}+{row['peak_rss_workers_mib']:.0f} MiB"
              f"  {row['ratio_to_floor']:.2f}x floor"
              + (f", {row['ratio_to_one_tenant']:.2f}x 1 tenant" if name in tenant_scenarios
                 else ""))  # fmt: skip
    startup = worker_startup_ms()
    print(f"  worker start-up (spawn to first reply, median of 10): {startup:.0f} ms")
    load_rps, s3_gets = s3_load(s3, seconds=3 if QUICK else 10)
    print(f"  {3 if QUICK else 10} s load on one S3 script (hey -z, -c {CONCURRENCY}): "
          f"{load_rps:.0f} req/s, {s3_gets} S3 requests during the load")  # fmt: skip
    storm_ok, storm_gets = trio.run(cold_storm, s3)
    print(f"  cold storm: 100 concurrent first hits on an uncached S3 script: {storm_ok} x 200, "
          f"{storm_gets} S3 GET(s)")  # fmt: skip
    worker_rss = worker_rss_after_requests()
    print(f"  worker RSS after {WORKER_REQUESTS:,} requests each (recycling off): "
          f"{worker_rss['rss_mib']} MiB after {worker_rss['requests']} requests")  # fmt: skip
    cached = server_rss_with_cached_scripts(s3)
    cache_mib = cached["cache_bytes"] / 2**20
    print(f"  server RSS with {cached['scripts']:,} cached S3 scripts ({cached['ok']:,} x 200; "
          f"code cache {cached['cache_entries']:,} entries, {cache_mib:.1f} MiB): "
          f"{cached['rss_after_mib']} MiB (at start {cached['rss_before_mib']} MiB)")  # fmt: skip
    s3.close()
    folder, s3_cached, config = (
        "sngin hello, folder store", "sngin hello, S3 store (cached)",
        "sngin hello with _sngin.json and env",
    )  # fmt: skip
    many = list(tenant_scenarios)[1]
    targets = [
        ("sngin hello / floor (median of per-round ratios)", ratio(folder, floor_name),
         ">=", 0.75),
        ("sngin's added CPU per request, us (sngin hello - floor)",
         added_cpu(folder, floor_name), "<=", 300),
        ("S3 cached / folder store", ratio(s3_cached, folder), ">=", 0.95),
        (f"{TENANTS:,} tenants round-robin / 1 tenant", ratio(many, single_name), ">=", 0.7),
        ("tenant config cost (1 - config / folder)", 1 - ratio(config, folder), "<=", 0.05),
        ("cold storm: S3 GETs for the object", storm_gets, "<=", 1),
        ("worker RSS after the requests, MiB", max(worker_rss["rss_mib"]), "<=", 40),
        (f"server RSS with {cached['scripts']:,} cached scripts, MiB", cached["rss_after_mib"],
         "<=", 150),
    ]  # fmt: skip
    print("targets (issue 11; the I/O-bound one is bench/wait_bench.py):")
    for label, value, sense, goal in targets:
        met = value >= goal if sense == ">=" else value <= goal
        print(f"  {label:58} {value:8.2f}  target {sense} {goal:<6}  {'met' if met else 'MISSED'}")
    RESULTS.parent.mkdir(exist_ok=True)
    summary = {"rows": rows, "worker_startup_ms": startup,
               "s3_load": {"rps": load_rps, "s3_requests": s3_gets},
               "cold_storm": {"ok": storm_ok, "s3_gets": storm_gets},
               "worker_rss_after_requests": worker_rss,
               "server_rss_with_cached_scripts": cached,
               "targets": [{"target": label, "value": value, "sense": sense, "goal": goal}
                           for label, value, sense, goal in targets]}  # fmt: skip
    RESULTS.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
