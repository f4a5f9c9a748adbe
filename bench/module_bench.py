"""What running modules per request costs: a script that requires a 500-line module (a library
of small functions, as webscript's are) against the same answer with no require, and against a
script that requires the module twice more (repeats in one request are answered without a
platform call). Modules run in the request that requires it (its globals and libraries), so each
request runs the module's chunk again; only the compiled chunk is kept by the worker.

Each scenario: a fresh server (2 workers) on core 0, hey on core 1, ROUNDS alternating rounds;
req/s and server + worker CPU per request, medians.
Run: .venv/bin/python bench/module_bench.py [--quick]   (needs hey)
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench
from serve_bench import hey, load_server, start_sngin

QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 3
REQUESTS = 1000 if QUICK else 4000
SITES = Path(tempfile.mkdtemp(prefix="sngin-modules-")) / "sites"


def big_module(functions: int = 98) -> str:
    """~500 lines: a table of small functions, each five lines."""
    lines = ["local M = {}", ""]
    for n in range(functions):
        lines += [
            f"function M.f{n}(s)",
            f"  local t = {{}} for w in tostring(s):gmatch('%S+') do t[#t + 1] = w .. '{n}' end",
            "  return table.concat(t, ' ')",
            "end",
            "",
        ]
    lines += ["function M.hello() return 'Hello from a module' end", "return M"]
    return "\n".join(lines) + "\n"


SCRIPTS = {
    "plain.bench/index.lua": "return 'Hello from a module'",
    "module.bench/index.lua": "local m = require('big') return m.hello()",
    "thrice.bench/index.lua": "local m = require('big') require('big') require('big')\n"
    "return m.hello()",
}


def write_sites() -> int:
    module = big_module()
    for key, source in SCRIPTS.items():
        path = SITES / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
        (path.parent / "big.lua").write_text(module)
    return module.count("\n")


def measure(host: str) -> dict[str, float]:
    def start(port: int):
        return start_sngin(port, {"SNGIN_CODE_DIR": str(SITES)})

    return load_server(
        start,
        warm_up=lambda port: hey(port, 500, host),
        load=lambda port: {**hey(port, REQUESTS, host), "requests": REQUESTS},
    )


def main() -> None:
    lines = write_sites()
    hosts = {"no require": "plain.bench", "require a module": "module.bench",
             "require it 3 times": "thrice.bench"}  # fmt: skip
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in hosts}
    for _ in range(ROUNDS):
        for name, host in hosts.items():
            figures[name].append(measure(host))
    print(f"module bench: a {lines}-line module, hey -n {REQUESTS} -c {serve_bench.CONCURRENCY}, "
          f"{ROUNDS} round(s), medians")  # fmt: skip
    base = statistics.median(r["cpu_us_per_request"] for r in figures["no require"])
    for name, runs in figures.items():
        rps = statistics.median(r["rps"] for r in runs)
        cpu = statistics.median(r["cpu_us_per_request"] for r in runs)
        print(f"  {name:20} {rps:6.0f} req/s  {cpu:5.0f} us CPU/request  (+{cpu - base:4.0f} us)")


if __name__ == "__main__":
    main()
