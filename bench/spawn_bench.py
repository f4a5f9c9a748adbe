"""What a worker costs to start, two ways, in the same run (issue 29's design choice):

- fresh: `python -m sandbox` as the pool starts workers today, to its Hello frame; then its
  unique (USS) and proportional (PSS) memory before any job;
- forked: a zygote that imported the worker's modules and compiled the prelude once, forking a
  child that makes one tenant runtime and runs a hello; fork-to-reply time, the child's USS/PSS.

Run: .venv/bin/python bench/spawn_bench.py [COUNT]
"""

from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def memory_mib(pid: int) -> tuple[float, float]:
    """(USS, PSS) of a process, in MiB."""
    text = Path(f"/proc/{pid}/smaps_rollup").read_text()

    def field(name: str) -> int:
        found = re.search(rf"^{name}:\s+(\d+) kB", text, re.M)
        return int(found.group(1)) if found else 0

    return (field("Private_Clean") + field("Private_Dirty")) / 1024, field("Pss") / 1024


def fresh(count: int) -> tuple[list[float], list[tuple[float, float]]]:
    times, processes = [], []
    for _ in range(count):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "sandbox"], cwd=ROOT, env={},
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)  # fmt: skip
        assert process.stdout is not None
        process.stdout.read(4)  # the Hello frame's header: limits applied, lupa loaded
        times.append((time.perf_counter() - started) * 1000)
        processes.append(process)
    memory = [memory_mib(p.pid) for p in processes]
    for process in processes:
        process.kill()
        process.wait()
    return times, memory


def forked(count: int) -> tuple[float, list[float], list[tuple[float, float]]]:
    """In a child of this script that plays the zygote (so this process stays clean)."""
    read_end, write_end = os.pipe()
    zygote = os.fork()
    if zygote == 0:
        os.close(read_end)
        started = time.perf_counter()
        from sandbox import runtime
        from sandbox.protocol import Job, Request

        runtime.prelude_bytecode()
        ready_ms = (time.perf_counter() - started) * 1000
        times, children = [], []
        for n in range(count):
            reply_read, reply_write = os.pipe()
            started = time.perf_counter()
            child = os.fork()
            if child == 0:
                tenant = f"t{n}.test"
                lua = runtime.TenantRuntime(tenant)
                job = Job(tenant=tenant, key=tenant, version="v", source=b"return 'hi'",
                          request=Request(method="GET", path="/"))  # fmt: skip
                run = lua.begin(job)
                lua.step(run, None)
                os.write(reply_write, b"x")
                time.sleep(60)
                os._exit(0)
            os.read(reply_read, 1)
            times.append((time.perf_counter() - started) * 1000)
            children.append(child)
        memory = [memory_mib(child) for child in children]
        for child in children:
            os.kill(child, 9)
            os.waitpid(child, 0)
        os.write(write_end, json.dumps([ready_ms, times, memory]).encode())
        os._exit(0)
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.waitpid(zygote, 0)
    ready_ms, times, memory = json.loads(data)
    return ready_ms, times, [(uss, pss) for uss, pss in memory]


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    print(f"worker start, {count} each way")
    times, memory = fresh(count)
    print(f"fresh  `python -m sandbox` to Hello: median {statistics.median(times):.1f} ms;"
          f" USS {statistics.mean(u for u, _ in memory):.1f} MiB,"
          f" PSS {statistics.mean(p for _, p in memory):.1f} MiB (no job yet)")  # fmt: skip
    ready_ms, times, memory = forked(count)
    print(
        f"forked from a zygote (ready in {ready_ms:.0f} ms) to a hello's reply: median"
        f" {statistics.median(times):.1f} ms; USS {statistics.mean(u for u, _ in memory):.2f}"
        f" MiB, PSS {statistics.mean(p for _, p in memory):.2f} MiB (one tenant runtime)"
    )


if __name__ == "__main__":
    main()
