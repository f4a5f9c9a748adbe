"""Many tenants waiting on I/O at once: requests whose script waits on a slow loopback upstream,
spread over many tenants, all sent at once, against `sngin serve` with default settings.

The client is raw asyncio HTTP/1.1 (one connection per request, a few microseconds each), so
what is measured is the server, not the client. Prints, per load: wall time, answers by status,
and the node's RSS (server and workers, PSS) at the end of the burst.
Run: .venv/bin/python bench/parked_bench.py [--processes N] [--wait-s 0.2]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import free_port, wait_listening

WHY: dict[int, str] = {}  # the first body of each status but 200
# (requests, tenants) as in issue 29's table
LOADS = [(100, 1), (50, 50), (200, 200), (1000, 20), (1000, 100)]


async def slow_upstream(port: int, wait_s: float) -> None:
    """Answers every request after wait_s, keeping connections open (asyncio: a thousand
    waiting connections cost it little, unlike a thread each)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")  # the scripts send GETs: no body
                await asyncio.sleep(wait_s)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=4096)
    async with server:
        await server.serve_forever()


def start_upstream(wait_s: float) -> tuple[multiprocessing.Process, int]:
    """The slow upstream in a process of its own (not this client's CPU or GIL)."""
    port = free_port()
    process = multiprocessing.Process(
        target=asyncio.run, args=(slow_upstream(port, wait_s),), daemon=True
    )
    process.start()
    wait_listening(port)
    return process, port


async def one(port: int, host: str) -> int:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await reader.read()
        writer.close()
        status = int(answer.split(b"\r\n", 1)[0].split()[1])
        if status != 200:
            WHY.setdefault(status, answer.split(b"\r\n\r\n", 1)[-1][:120].decode(errors="replace"))
        return status
    except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
        return 0  # refused or reset: no answer


async def burst(port: int, requests: int, tenants: int) -> tuple[float, collections.Counter[int]]:
    started = time.perf_counter()
    statuses = await asyncio.gather(*(one(port, f"t{n % tenants}.test") for n in range(requests)))
    return time.perf_counter() - started, collections.Counter(statuses)


def descendants(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in map(int, children):
            found += [child, *descendants(child)]
    return found


def pss_mib(root: int) -> float:
    """PSS of a process and all its descendants (processes, zygotes, workers), in MiB."""
    total = 0
    for pid in [root, *descendants(root)]:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        found = re.search(r"^Pss:\s+(\d+) kB", text, re.M)
        total += int(found.group(1)) if found else 0
    return total / 1024


def cpu_s(pid: int) -> float:
    """CPU seconds of a process and the children it reaped (utime, stime, cutime, cstime)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def tree_cpu_s(root: int) -> tuple[float, float]:
    """(the server process's own CPU, that of everything under it), in seconds."""
    fields = Path(f"/proc/{root}/stat").read_text().rsplit(")", 1)[1].split()
    own = sum(int(f) for f in fields[11:13]) / os.sysconf("SC_CLK_TCK")
    return own, sum(cpu_s(pid) for pid in [root, *descendants(root)]) - own


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--wait-s", type=float, default=0.2)
    parser.add_argument("--max-workers", help="SNGIN_MAX_WORKERS (default: the server's)")
    parser.add_argument("--outbound", help="SNGIN_OUTBOUND_CONNECTIONS (default: the server's)")
    parser.add_argument("--load", action="append", metavar="REQUESTS/TENANTS",
                        help="run only these loads (e.g. 1000/100); repeatable")  # fmt: skip
    options = parser.parse_args()
    loads = [tuple(map(int, load.split("/"))) for load in options.load or []] or LOADS
    upstream, upstream_port = start_upstream(options.wait_s)
    sites = Path(tempfile.mkdtemp())
    url = f"http://127.0.0.1:{upstream_port}/"
    for n in range(max(t for _, t in loads)):
        (sites / f"t{n}.test").mkdir()
        (sites / f"t{n}.test" / "index.lua").write_text(
            f"return tostring(http.request{{url = '{url}'}}.statuscode)"
        )
    port = free_port()
    env = {**os.environ, "SNGIN_CODE_DIR": str(sites), "SNGIN_EGRESS_ALLOW": "127.0.0.1",
           "SNGIN_DATA_PATH": str(sites / ".data"), "SNGIN_LOG_LEVEL": "warning",
           "SNGIN_PROCESSES": str(options.processes)}  # fmt: skip
    for name, value in (("SNGIN_MAX_WORKERS", options.max_workers),
                        ("SNGIN_OUTBOUND_CONNECTIONS", options.outbound)):  # fmt: skip
        if value is not None:
            env[name] = value
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "sngin"), "serve", "--bind", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_listening(port)
        asyncio.run(burst(port, 20, 20))  # warm: workers started, scripts compiled
        print(f"parked requests: upstream waits {options.wait_s} s, --processes"
              f" {options.processes}, SNGIN_MAX_WORKERS={options.max_workers or 'default'},"
              f" SNGIN_OUTBOUND_CONNECTIONS={options.outbound or 'default'}")  # fmt: skip
        for requests, tenants in loads:
            server_before, others_before = tree_cpu_s(server.pid)
            elapsed, statuses = asyncio.run(burst(port, requests, tenants))
            server_after, others_after = tree_cpu_s(server.pid)
            answers = ", ".join(f"{count} x {status or 'none'}"
                                for status, count in sorted(statuses.items()))  # fmt: skip
            print(f"{requests:>5} requests over {tenants:>3} tenants: {elapsed:6.2f} s  {answers}"
                  f"  (node PSS {pss_mib(server.pid):.0f} MiB; CPU s: server"
                  f" {server_after - server_before:.2f}, the rest"
                  f" {others_after - others_before:.2f})")  # fmt: skip
            for status, why in sorted(WHY.items()):
                print(f"      {status}: {why.strip()}")
            WHY.clear()
    finally:
        server.terminate()
        server.wait(timeout=30)
        upstream.kill()


if __name__ == "__main__":
    main()
