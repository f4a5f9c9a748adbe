"""The shared-process attacks of issue 27, replayed against a running sngin: what each costs the
server and the other tenants. Run against this tree, and (to compare) another source tree in
the same run:
    .venv/bin/python bench/attacks_bench.py [--other /tmp/base]
  e.g. git worktree add /tmp/base <commit>   (run with this venv; PYTHONPATH picks the tree)

1 oauth   three 4 MiB form bodies signed with auth.oauth while another tenant is probed every
          10 ms: that tenant's worst and p99 latency (the signing stalled the event loop)
2 preview a preview writing 300 x 1 MiB to storage: the server process's peak RSS growth
4 code    a tenant token writing 200 files of 1 MiB: how many were accepted
6 decline a storage-heavy tenant (4 at a time) beside a light one's 100 requests: light's 5xx
          (with 6 workers here, the heavy tenant's 4 requests leave idle ones: see
          tests/test_stacking.py for the 2-worker case, where 98 of 100 failed before)
7 tails   40 live tails opened with one tenant token: how many were accepted
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_bench import free_port, wait_listening

HERE = Path(__file__).resolve().parent.parent
TOKEN = "bench-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MIB = 1024 * 1024

SITES = {
    "hello.test": "return 'hi'",
    "oauth.test": """
        local body = string.rep('a=&', math.floor(4 * 1024 * 1024 / 3))
        for i = 1, 3 do
            http.request{url = 'UPSTREAM/sink', method = 'POST', body = body,
                headers = {['Content-Type'] = 'application/x-www-form-urlencoded'},
                auth = {oauth = {consumertoken = 'ck', consumersecret = 'cs'}}}
        end
        return 'signed'
    """,
    "heavy.test": "for i = 1, 300 do local x = 0 for j = 1, 20000 do x = x + j end"
    " storage['k' .. (i % 50)] = tostring(x) end return 'heavy'",
    "light.test": "return 'light'",
}
PREVIEW = """
for i = 1, 300 do
    local ok = pcall(function() storage['k' .. i] = string.rep('x', 1000000) end)
    if not ok then return 'stopped at ' .. i end
end
return 'wrote 300'
"""


class Sink(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def start(tree: Path, sites: Path, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "SNGIN_ADMIN_TOKEN": TOKEN,
        # Room for the three signers and the probed tenant: what is measured is the event
        # loop, not a queue for workers.
        "SNGIN_WORKERS": "6",
        "SNGIN_CODE_DIR": str(sites),
        "SNGIN_DATA_PATH": str(sites.parent / "data"),
        "SNGIN_APP_PATH": str(sites.parent / "app"),
        "SNGIN_EGRESS_ALLOW": "127.0.0.1",
        "SNGIN_LOG_LEVEL": "warning",
        # Room to sign: the operator's CPU limit is what lets the old server sign at all.
        "SNGIN_CPU_MS": "30000",
        "SNGIN_TIMEOUT_MS": "60000",
    }
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", f"127.0.0.1:{port}"]
    # From the tree's own folder: `python -m` finds its packages first, and so do the workers
    # (they inherit the folder, not the environment).
    process = subprocess.Popen(argv, env=env, cwd=tree, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)  # fmt: skip
    wait_listening(port)
    return process


async def oauth_stall(url: str) -> str:
    latencies: list[float] = []
    signers: list[str] = []
    async with httpx.AsyncClient(timeout=60) as client:
        done = trio.Event()

        async def probe() -> None:
            while not done.is_set():
                started = time.perf_counter()
                await client.get(url + "/", headers={"Host": "hello.test"})
                latencies.append(time.perf_counter() - started)
                await trio.sleep(0.01)

        async def sign() -> None:
            answer = await client.get(url + "/", headers={"Host": "oauth.test"})
            signers.append(f"{answer.status_code} {answer.text.strip()[:60]}")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe)
            async with trio.open_nursery() as signing:
                for _ in range(3):
                    signing.start_soon(sign)
            done.set()
        stats = (await client.get(url + "/__sngin/stats", headers=AUTH)).json()
    lag = stats.get("event_loop_lag_ms", {}).get("max", "n/a")
    median = statistics.median(latencies) * 1000
    return (
        f"other tenant: max {max(latencies) * 1000:.0f} ms, median {median:.0f} ms over"
        f" {len(latencies)} probes; event_loop_lag max {lag} ms; the signers: {signers}"
    )


async def preview_growth(url: str, pid: int) -> str:
    before = rss_peak_kib(pid)
    async with httpx.AsyncClient(timeout=120) as client:
        body = {"source": PREVIEW, "path": "index.lua"}
        answer = await client.post(url + "/__sngin/code/hello.test/preview", json=body,
                                   headers=AUTH)  # fmt: skip
    said = answer.json().get("body", answer.text[:80]) if answer.status_code == 200 else answer.text
    grown = (rss_peak_kib(pid) - before) / 1024
    return f"peak RSS grew {grown:.0f} MiB ({len(answer.content) / MIB:.1f} MiB answer: {said!r})"


async def code_quota(url: str) -> str:
    async with httpx.AsyncClient(timeout=60) as client:
        made = await client.post(url + "/__sngin/tokens", json={"host": "hello.test"},
                                 headers=AUTH)  # fmt: skip
        tenant = {"Authorization": f"Bearer {made.json()['token']}"}
        accepted, started = 0, time.perf_counter()
        data = b"-- " + b"x" * (MIB - 10)
        for n in range(200):
            answer = await client.put(
                url + "/__sngin/code/hello.test/file", params={"path": f"lib/f{n}.lua"},
                content=data, headers=tenant | {"If-None-Match": "*"},
            )  # fmt: skip
            accepted += answer.status_code == 201
    return f"{accepted} of 200 accepted in {time.perf_counter() - started:.1f} s"


async def declines(url: str) -> str:
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=60) as client:

        async def heavy() -> None:
            for _ in range(6):
                await client.get(url + "/", headers={"Host": "heavy.test"})

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(heavy)
            for _ in range(100):
                answer = await client.get(url + "/", headers={"Host": "light.test"})
                statuses.append(answer.status_code)
    return f"light tenant: {sum(s >= 500 for s in statuses)} of 100 answered 5xx"


async def tails(url: str) -> str:
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(timeout=60) as client:
        made = await client.post(url + "/__sngin/tokens", json={"host": "light.test"},
                                 headers=AUTH)  # fmt: skip
    token = made.json()["token"].encode()
    streams, accepted = [], 0
    for _ in range(40):
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(b"GET /__sngin/logs?host=light.test HTTP/1.1\r\nHost: 127.0.0.1"
                              b"\r\nAuthorization: Bearer " + token + b"\r\n\r\n")  # fmt: skip
        head = await stream.receive_some(4096)
        accepted += head.startswith(b"HTTP/1.1 200")
        streams.append(stream)
    for stream in streams:
        await stream.aclose()
    return f"{accepted} of 40 tails accepted"


async def run(tree: Path) -> dict[str, str]:
    with (
        tempfile.TemporaryDirectory() as scratch,
        ThreadingHTTPServer(("127.0.0.1", 0), Sink) as up,
    ):
        threading.Thread(target=up.serve_forever, daemon=True).start()
        sites = Path(scratch) / "sites"
        for host, source in SITES.items():
            (sites / host).mkdir(parents=True)
            upstream = f"http://127.0.0.1:{up.server_address[1]}"
            (sites / host / "index.lua").write_text(source.replace("UPSTREAM", upstream))
        port = free_port()
        server = start(tree, sites, port)
        url = f"http://127.0.0.1:{port}"
        try:
            # The preview first: its figure is the growth of the process's peak RSS.
            preview = await preview_growth(url, server.pid)
            return {
                "1 oauth": await oauth_stall(url),
                "2 preview": preview,
                "4 code": await code_quota(url),
                "6 decline": await declines(url),
                "7 tails": await tails(url),
            }
        finally:
            server.terminate()
            server.wait(timeout=30)
            up.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--other", type=Path, help="another source tree to run the same way")
    options = parser.parse_args()
    trees = {"this": HERE} | ({"other": options.other} if options.other else {})
    print(f"attacks of issue 27 against {', '.join(f'{k} = {v}' for k, v in trees.items())}")
    results = {name: trio.run(run, tree) for name, tree in trees.items()}
    for attack in results["this"]:
        for name, found in results.items():
            print(f"{attack:10} {name:6} {found[attack]}")
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
