"""Micro-benchmark of the sandbox core, in-process: runtime creation and one request's Lua step.

Run: .venv/bin/python bench/sandbox_bench.py
"""

from __future__ import annotations

import statistics
import sys
import time

import lupa.luajit21 as lupa

from sandbox.protocol import Job, Request
from sandbox.runtime import TenantRuntime

ROUNDS = 2 if "--quick" in sys.argv else 5


def per_call_us(fn, n: int) -> float:
    best = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(best)


def main() -> None:
    bare = per_call_us(lambda: lupa.LuaRuntime(encoding=None, register_eval=False), 300)
    tenant = per_call_us(lambda: TenantRuntime("bench.test").close(), 300)
    rt = TenantRuntime("bench.test")
    request = Request(method="GET", path="/", querystring=b"name=x", headers=[(b"a", b"b")])
    hello = Job(tenant="t", key="t/hello", version="1", request=request, source=b"return 'hi'")
    table = Job(
        tenant="t", key="t/json", version="1", request=request,
        source=b"return {name = request.query.name, list = {1, 2, 3}}",
    )  # fmt: skip
    rt.run(hello)
    rt.run(table)
    run_hello = per_call_us(lambda: rt.run(hello), 20000)
    run_json = per_call_us(lambda: rt.run(table), 20000)
    print(f"median of {ROUNDS} rounds, one process, lupa {lupa.LUA_VERSION}")
    print(f"  bare lupa LuaRuntime()              {bare:8.1f} us")
    print(f"  TenantRuntime create + close        {tenant:8.1f} us  ({tenant / bare:.1f}x bare)")
    print(f"  run 'return \"hi\"' (cached chunk)    {run_hello:8.1f} us")
    print(f"  run JSON table response             {run_json:8.1f} us")


if __name__ == "__main__":
    main()
