"""Exhaustion scenarios against `sngin serve`, as a hostile client or tenant would run them:

1. 80 slow clients each send all but one byte of a 10 MiB body;
2. 40 clients request a 10 MiB response and never read it;
3. 32 requests at once each fetch a 10 MiB body with http.request;
4. one http.request of a 4 MB body that inflates to 4 GB (a gzip bomb);
5. under a 256-descriptor limit, clients keep opening connections that never finish their
   headers, and a worker is killed: is it replaced, and does the server serve on?

For 1-3: the server's peak RSS (VmHWM) against the sum of the memory budgets plus 150 MB, and its
RSS once the load is gone (memory must come back). For 4: the server's CPU for the request. For
5: whether the server survived. Each scenario gets a fresh server.
Run: .venv/bin/python bench/bounds_bench.py [--sngin PATH] [--env NAME=VALUE]...
(--sngin: another install's `sngin`, e.g. an older worktree's, for before/after figures.)
"""

from __future__ import annotations

import contextlib
import http.server
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(tempfile.mkdtemp(prefix="sngin-bounds-"))
BOMB_FILE = Path(tempfile.gettempdir()) / "sngin-bench-gzip-bomb-4g.gz"
BUDGETS_MB = 3 * 256  # the default request, response and subrequest budgets, all told
SCRIPTS = {
    "a.test/upload": "return tostring(#request.body)",
    "a.test/big": "return string.rep('x', 10 * 1024 * 1024)",
    "a.test/fetch": "local r = http.request(request.query.url)"
    " return r.err or tostring(#r.content)",
}


def argument(name: str) -> list[str]:
    values, args = [], sys.argv[1:]
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            values.append(args[i + 1])
    return values


SNGIN = (argument("--sngin") or [str(Path(sys.executable).parent / "sngin")])[0]
EXTRA_ENV = dict(item.split("=", 1) for item in argument("--env"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def mb(kib: int) -> float:
    return kib * 1024 / 1e6


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(self, env: dict[str, str] | None = None, nofile: int | None = None) -> None:
        sites = BENCH_DIR / "sites"
        for key, source in SCRIPTS.items():
            (sites / key).mkdir(parents=True, exist_ok=True)
            (sites / key / "index.lua").write_text(source)
        self.port = free_port()
        self.log = BENCH_DIR / f"server-{self.port}.log"
        full_env = {**os.environ, "SNGIN_CODE_DIR": str(sites), "SNGIN_WORKERS": "2",
                    "SNGIN_EGRESS_ALLOW": "127.0.0.1", "SNGIN_LOG_LEVEL": "warning",
                    **EXTRA_ENV, **(env or {})}  # fmt: skip

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.process = subprocess.Popen(
            [SNGIN, "serve", "--bind", f"127.0.0.1:{self.port}"], env=full_env,
            stdout=subprocess.DEVNULL, stderr=self.log.open("wb"), preexec_fn=limit,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        self.get("/upload")  # the first request warms a worker

    def get(self, path: str, timeout: float = 60) -> tuple[int, bytes]:
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(
                f"GET {path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode()
            )
            data = b""
            while chunk := sock.recv(1 << 20):
                data += chunk
        status = int(data.split(b" ", 2)[1]) if data else 0
        return status, data.split(b"\r\n\r\n", 1)[-1]

    def log_lines(self, pattern: str = "worker") -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line[:160] for line in lines if pattern in line][-4:]

    def rss(self) -> tuple[float, float]:
        """(RSS now, peak RSS) in MB."""
        pid = self.process.pid
        return mb(status_kib(pid, "VmRSS")), mb(status_kib(pid, "VmHWM"))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()


class Upstream:
    """A threaded HTTP server: /ten-mib (a 10 MiB body) and /bomb (the 4 GB gzip bomb)."""

    def __init__(self) -> None:
        body = b"u" * (10 * MIB)
        bomb = BOMB_FILE.read_bytes() if BOMB_FILE.exists() else b""

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                payload, headers = (bomb, {"Content-Encoding": "gzip"}) if self.path == "/bomb" \
                    else (body, {})  # fmt: skip
                try:
                    self.send_response(200)
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def make_bomb() -> None:
    if BOMB_FILE.exists():
        return
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    zeros = bytes(64 * MIB)
    with BOMB_FILE.open("wb") as out:
        for _ in range(64):  # 4 GiB
            out.write(packer.compress(zeros))
        out.write(packer.flush())


def after_load(server: Server, settle_s: float = 1.0) -> float:
    time.sleep(settle_s)
    return server.rss()[0]


def slow_bodies(clients: int = 80) -> dict[str, float]:
    server = Server()
    try:
        before = server.rss()[0]
        body = b"b" * (10 * MIB - 1)
        socks, refused = [], 0
        for _ in range(clients):
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a.test\r\nContent-Length: %d\r\n\r\n"
                         % (10 * MIB))  # fmt: skip
            sock.settimeout(5)
            try:
                sock.sendall(body)
            except OSError:
                refused += 1
            socks.append(sock)
        time.sleep(2)
        _, peak = server.rss()
        for sock in socks:
            sock.close()
        return {"before_mb": before, "peak_mb": peak, "after_mb": after_load(server),
                "refused": refused}  # fmt: skip
    finally:
        server.stop()


def slow_readers(clients: int = 40) -> dict[str, float]:
    server = Server()
    try:
        before = server.rss()[0]
        socks = []
        for _ in range(clients):
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            sock.sendall(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
            socks.append(sock)
        time.sleep(4)
        _, peak = server.rss()
        started = time.monotonic()
        timeout_s = float(EXTRA_ENV.get("SNGIN_SEND_TIMEOUT_S", "30"))
        time.sleep(timeout_s + 2)  # past the send timeout, if there is one
        after = server.rss()[0]
        dropped = 0
        for sock in socks:
            sock.setblocking(False)
            try:
                while sock.recv(1 << 20):
                    pass
            except BlockingIOError:
                pass  # still open, data waiting: not dropped
            except OSError:
                dropped += 1
            else:
                dropped += 1
            sock.close()
        return {"before_mb": before, "peak_mb": peak, "after_mb": after,
                "dropped": dropped, "waited_s": time.monotonic() - started}  # fmt: skip
    finally:
        server.stop()


def subrequests(upstream: Upstream, concurrent: int = 32) -> dict[str, float]:
    server = Server()
    try:
        before = server.rss()[0]
        results: list[tuple[int, bytes]] = []
        url = upstream.url("/ten-mib")
        threads = [
            threading.Thread(target=lambda: results.append(server.get(f"/fetch?url={url}")))
            for _ in range(concurrent)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        _, peak = server.rss()
        ok = sum(1 for status, body in results if status == 200 and body == b"%d" % (10 * MIB))
        return {"before_mb": before, "peak_mb": peak, "after_mb": after_load(server), "ok": ok}
    finally:
        server.stop()


def gzip_bomb(upstream: Upstream) -> dict[str, float]:
    server = Server()
    try:
        used = cpu_s(server.process.pid)
        started = time.monotonic()
        _, body = server.get(f"/fetch?url={upstream.url('/bomb')}")
        return {"server_cpu_s": cpu_s(server.process.pid) - used,
                "wall_s": time.monotonic() - started, "answer": body[:60].decode()}  # fmt: skip
    finally:
        server.stop()


def descriptors(flood_s: float = 12.0) -> dict[str, object]:
    """Clients keep opening connections that never finish their headers (replacing the ones
    the header timeout closes), so the server's descriptors stay exhausted; a worker is killed
    a second in. Without a cap its replacement fails five times and the server exits."""
    server = Server(nofile=256)
    stop = threading.Event()

    def flood() -> None:
        socks: list[socket.socket] = []
        while not stop.is_set():
            try:
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=0.5)
                sock.sendall(b"GET /upload HTTP/1.1\r\nHost: a.test\r\n")
                socks.append(sock)
            except OSError:
                pass
            if len(socks) > 600:
                socks.pop(0).close()
        for sock in socks:
            sock.close()

    flooder = threading.Thread(target=flood)
    try:
        flooder.start()
        time.sleep(1)
        pid = server.process.pid
        workers = [int(c) for t in Path(f"/proc/{pid}/task").iterdir()
                   for c in (t / "children").read_text().split()]  # fmt: skip
        os.kill(min(workers), signal.SIGKILL)
        time.sleep(flood_s)
        alive = server.process.poll() is None
        stop.set()
        flooder.join()
        served = False
        deadline = time.monotonic() + 15  # the header timeout frees the flood's connections
        while alive and not served and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                served = server.get("/upload", timeout=10)[0] == 200
            time.sleep(0.2)
        return {"server_alive": alive, "served_after": served, "log": server.log_lines()}
    finally:
        stop.set()
        server.stop()


def main() -> None:
    print(f"bench: exhaustion scenarios against {SNGIN} {EXTRA_ENV or ''}", flush=True)
    make_bomb()
    upstream = Upstream()
    limit = BUDGETS_MB + 150
    for name, run in (
        ("80 slow clients, 10 MiB bodies", slow_bodies),
        ("40 clients not reading 10 MiB", slow_readers),
        ("32 subrequests for 10 MiB", lambda: subrequests(upstream)),
    ):
        figures = run()
        verdict = "within" if figures["peak_mb"] <= limit else "OVER"
        shown = ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in figures.items())  # fmt: skip
        print(f"  {name:32} {shown}  ({verdict} {limit} MB)", flush=True)
    bomb = gzip_bomb(upstream)
    print(f"  {'gzip bomb (4 MB -> 4 GB)':32} server CPU {bomb['server_cpu_s']:.2f} s, wall "
          f"{bomb['wall_s']:.2f} s, answer {bomb['answer']!r}", flush=True)  # fmt: skip
    fds = descriptors()
    survived = f"{fds['server_alive']}, served afterwards: {fds['served_after']}"
    print(f"  {'connection flood, 256 fds':32} server alive after a worker kill: {survived}")
    for line in fds["log"]:  # type: ignore[attr-defined]
        print(f"    server log: {line}")


if __name__ == "__main__":
    main()
