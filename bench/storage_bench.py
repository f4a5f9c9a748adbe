"""Tenant storage under load: a script doing one `storage` read and one write against the same
server's hello, in the same run (the target: >= 0.6 x hello on SQLite). Redis comes with the
scaled-out backend.

Each scenario: a fresh server (2 workers) on core 0 with its own data folder, hey on core 1,
ROUNDS alternating rounds; req/s, p50/p99 and server + worker CPU per request, medians.
Run: .venv/bin/python bench/storage_bench.py [--quick]   (needs hey)
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
ROOT = Path(tempfile.mkdtemp(prefix="sngin-storage-bench-"))
SCRIPTS = {
    "hello.bench": "return 'Hello!'",
    "storage.bench": "local seen = storage.visits\nstorage.visits = (tonumber(seen) or 0) + 1\n"
    "return 'Hello!'",
}


def measure(host: str, round_number: int) -> dict[str, float]:
    data = ROOT / f"data-{host}-{round_number}"

    def start(port: int):
        return start_sngin(port, {"SNGIN_CODE_DIR": str(ROOT / "sites"),
                                  "SNGIN_DATA_PATH": str(data)})  # fmt: skip

    return load_server(
        start,
        warm_up=lambda port: hey(port, 500, host),
        load=lambda port: {**hey(port, REQUESTS, host), "requests": REQUESTS},
    )


def main() -> None:
    for host, source in SCRIPTS.items():
        (ROOT / "sites" / host).mkdir(parents=True, exist_ok=True)
        (ROOT / "sites" / host / "index.lua").write_text(source)
    figures: dict[str, list[dict[str, float]]] = {host: [] for host in SCRIPTS}
    for round_number in range(ROUNDS):
        for host in SCRIPTS:
            figures[host].append(measure(host, round_number))
    print(f"storage bench: hey -n {REQUESTS} -c {serve_bench.CONCURRENCY}, {ROUNDS} round(s), "
          "SQLite, medians")  # fmt: skip
    for host, runs in figures.items():
        print(f"  {host:16} {statistics.median(r['rps'] for r in runs):6.0f} req/s"
              f"  p50 {statistics.median(r['p50_ms'] for r in runs):5.1f} ms"
              f"  p99 {statistics.median(r['p99_ms'] for r in runs):5.1f} ms"
              f"  {statistics.median(r['cpu_us_per_request'] for r in runs):5.0f} us CPU"
              " per request")  # fmt: skip
    ratio = statistics.median(
        s["rps"] / h["rps"] for s, h in zip(figures["storage.bench"], figures["hello.bench"],
                                            strict=True)
    )  # fmt: skip
    print(f"  storage / hello (median of per-round ratios): {ratio:.2f}  target >= 0.6  "
          f"{'met' if ratio >= 0.6 else 'MISSED'}")  # fmt: skip


if __name__ == "__main__":
    main()
