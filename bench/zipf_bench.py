"""Skewed many-tenant traffic, the headline tenant scenario: 10,000 tenants, a script each,
requested with Zipf-distributed popularity (s = 1.1), against the same server with one tenant.

Real traffic is skewed: a few tenants get most requests. The 1,000-tenant round-robin in
serve_bench.py stays as the worst case. Reported per round and as medians: req/s of each, their
ratio (target >= 0.7), the share of requests that needed a fresh Lua runtime (the pool's
`fresh_runtimes` over the requests), and server CPU per request. The server and its workers run
on core 0, wrk on core 1; both scenarios alternate over the rounds.
Run: .venv/bin/python bench/zipf_bench.py [--quick]   (needs wrk: apt-get install wrk)
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import serve_bench
from serve_bench import CONCURRENCY, admin_stats, load_server, start_sngin

QUICK = "--quick" in sys.argv
ROUNDS = 1 if QUICK else 3
SECONDS = 4 if QUICK else 8
WARM_UP_S = 6 if QUICK else 12
TENANTS = 10_000
ZIPF_S = 1.1
DIR = Path(tempfile.mkdtemp(prefix="sngin-zipf-"))

ZIPF_LUA = f"""
local tenants, s = tonumber(os.getenv("BENCH_TENANTS")), {ZIPF_S}
local cdf, total = {{}}, 0
for k = 1, tenants do total = total + 1 / k ^ s; cdf[k] = total end
for k = 1, tenants do cdf[k] = cdf[k] / total end
math.randomseed(42)
local function pick()
  local u, lo, hi = math.random(), 1, tenants
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if cdf[mid] < u then lo = mid + 1 else hi = mid end
  end
  return lo - 1
end
request = function()
  return wrk.format("GET", "/", {{Host = string.format("z%05d.bench", pick())}})
end
"""


def write_sites(root: Path) -> None:
    for n in range(TENANTS):
        folder = root / f"z{n:05d}.bench"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(f"return 'Hello from tenant {n}'\n")


def wrk(port: int, seconds: float, tenants: int) -> dict[str, float]:
    return serve_bench.wrk(port, seconds, tenants, DIR / "zipf.lua")


def measure(tenants: int) -> dict[str, float]:
    """A fresh server, warmed up by the same traffic, then the measured load with the share of
    requests that needed a fresh runtime."""
    # No recycling mid-run: a recycled worker leaves the measured process tree (its CPU and RSS
    # would be missing from the figures).
    extra = {"SNGIN_CODE_DIR": str(DIR / "sites"), "SNGIN_WORKER_MAX_REQUESTS": "10000000"}

    def load(port: int) -> dict[str, float]:
        # (-1: a server from before the pool counted fresh runtimes)
        before = admin_stats(port)["pool"].get("fresh_runtimes", -1)
        result = wrk(port, SECONDS, tenants)
        fresh = admin_stats(port)["pool"].get("fresh_runtimes", -1) - before
        result["fresh_share"] = fresh / max(1, result["requests"]) if before >= 0 else -1.0
        return result

    return load_server(
        lambda port: start_sngin(port, extra),
        warm_up=lambda port: wrk(port, WARM_UP_S, tenants),  # the steady state, not a cold start
        load=load,
    )


def main() -> None:
    if shutil.which("wrk") is None:
        sys.exit("bench: `wrk` is not installed (apt-get install wrk)")
    write_sites(DIR / "sites")
    (DIR / "zipf.lua").write_text(ZIPF_LUA)
    scenarios = {"1 tenant": 1, f"{TENANTS:,} tenants, Zipf s={ZIPF_S}": TENANTS}
    figures: dict[str, list[dict[str, float]]] = {name: [] for name in scenarios}
    for round_number in range(ROUNDS):
        for name, tenants in scenarios.items():
            figures[name].append(measure(tenants))
        print(f"round {round_number + 1}/{ROUNDS} done", file=sys.stderr)
    print(f"wrk -c {CONCURRENCY} -d {SECONDS}s, sngin with 2 workers on core 0, wrk on core 1, "
          f"{ROUNDS} round(s)")  # fmt: skip
    single, zipf = (figures[name] for name in scenarios)
    for name, runs in figures.items():
        each = ", ".join(f"{r['rps']:.0f}" for r in runs)
        print(f"  {name:32} {statistics.median(r['rps'] for r in runs):6.0f} req/s ({each})"
              f"  p99 {statistics.median(r['p99_ms'] for r in runs):5.1f} ms"
              f"  {statistics.median(r['cpu_us_per_request'] for r in runs):5.0f} us CPU/req"
              f"  fresh runtimes {statistics.median(r['fresh_share'] for r in runs):6.1%}"
              f"  worker RSS {max(r['peak_rss_workers_mib'] for r in runs):.0f} MiB")  # fmt: skip
    ratio = statistics.median(z["rps"] / s["rps"] for z, s in zip(zipf, single, strict=True))
    print(f"  Zipf / 1 tenant (median of per-round ratios): {ratio:.2f}  target >= 0.7  "
          f"{'met' if ratio >= 0.7 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
