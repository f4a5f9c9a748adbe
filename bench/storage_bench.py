"""Tenant storage under load: a script doing one `storage` read and one write against the same
server's hello, in the same run (the target: >= 0.6 x hello on SQLite), on SQLite and, when
redis-server is installed, on Redis.

Each scenario: a fresh server (2 workers) on core 0 with its own data folder, hey on core 1,
ROUNDS alternating rounds; req/s, p50/p99 and server + worker CPU per request, medians.
Run: .venv/bin/python bench/storage_bench.py [--quick]   (needs hey)
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
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


def measure(host: str, round_number: int, redis_url: str | None = None) -> dict[str, float]:
    data = ROOT / f"data-{host}-{round_number}"
    extra = {"SNGIN_REDIS_URL": redis_url} if redis_url else {}

    def start(port: int):
        return start_sngin(port, {"SNGIN_CODE_DIR": str(ROOT / "sites"),
                                  "SNGIN_DATA_PATH": str(data), **extra})  # fmt: skip

    return load_server(
        start,
        warm_up=lambda port: hey(port, 500, host),
        load=lambda port: {**hey(port, REQUESTS, host), "requests": REQUESTS},
    )


def main() -> None:
    for host, source in SCRIPTS.items():
        (ROOT / "sites" / host).mkdir(parents=True, exist_ok=True)
        (ROOT / "sites" / host / "index.lua").write_text(source)
    redis = start_redis()
    try:
        for backend, url in (("SQLite", None), ("Redis", redis[1] if redis else None)):
            if backend == "Redis" and url is None:
                print("  (Redis: redis-server is not installed)")
                continue
            report(backend, url)
    finally:
        if redis is not None:
            redis[0].terminate()


def start_redis() -> tuple[subprocess.Popen[bytes], str] | None:
    binary = shutil.which("redis-server")
    if binary is None:
        return None
    port = serve_bench.free_port()
    process = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""],
                               stdout=subprocess.DEVNULL)  # fmt: skip
    serve_bench.wait_listening(port)
    return process, f"redis://127.0.0.1:{port}/0"


def report(backend: str, url: str | None) -> None:
    figures: dict[str, list[dict[str, float]]] = {host: [] for host in SCRIPTS}
    for round_number in range(ROUNDS):
        for host in SCRIPTS:
            figures[host].append(measure(host, round_number, url))
    print(f"storage bench: hey -n {REQUESTS} -c {serve_bench.CONCURRENCY}, {ROUNDS} round(s), "
          f"{backend}, medians")  # fmt: skip
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
    verdict = ("met" if ratio >= 0.6 else "MISSED") if backend == "SQLite" else "(no target)"
    print(f"  storage / hello (median of per-round ratios): {ratio:.2f}  target >= 0.6  "
          f"{verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
