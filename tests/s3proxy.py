"""A loopback HTTP proxy in front of moto that counts requests and injects faults.

moto keeps no request counter of its own, and cannot be made slow or unreachable on demand.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote, urlsplit

from tests.httpserver import LoopbackServer

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade"}
SLOW_DOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)
DENIED = (
    b'<?xml version="1.0" encoding="UTF-8"?><Error><Code>AccessDenied</Code>'
    b"<Message>Access Denied</Message></Error>"
)


class CountingProxy:
    def __init__(self, upstream: str) -> None:
        split = urlsplit(upstream)
        self.upstream = (split.hostname or "127.0.0.1", split.port or 80)
        self.counts: Counter[tuple[str, str, int]] = Counter()
        self._lock = threading.Lock()
        self._faults: list[tuple[str, float]] = []  # (kind, delay) consumed one per request
        self._sticky: tuple[str, float] | None = None
        self._released = threading.Event()
        self._connections: set[socket.socket] = set()
        self._in_progress = 0
        self._http: LoopbackServer | None = None
        self.port = 0

    # --- control -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                with proxy._lock:
                    proxy._connections.add(self.connection)

            def finish(self) -> None:
                with proxy._lock:
                    proxy._connections.discard(self.connection)
                super().finish()

            def do_GET(self) -> None:
                proxy._handle(self)

            do_PUT = do_HEAD = do_DELETE = do_POST = do_GET

        self._http = LoopbackServer(Handler, port=self.port)  # restore() reuses the port
        self.port = self._http.port

    def stop(self) -> None:
        self._released.set()
        if self._http is not None:
            self._http.stop()
            self._http = None

    def refuse(self) -> None:
        """Stop listening and drop open connections: new ones are refused until restore()."""
        self.stop()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def restore(self) -> None:
        self._released.clear()
        self.start()

    def fail(self, kind: str, times: int = 1, delay: float = 0.0) -> None:
        """The next `times` requests get fault `kind`: 'slowdown' (503), 'delay', or
        'get_object_only' (a missing key is 403 AccessDenied, as without s3:ListBucket)."""
        with self._lock:
            self._faults.extend([(kind, delay)] * times)

    def fail_always(self, kind: str, delay: float = 0.0) -> None:
        with self._lock:
            self._sticky = (kind, delay)

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()
            self._sticky = None

    def pending(self) -> int:
        """Requests received and not yet answered."""
        with self._lock:
            return self._in_progress

    def gets(self, object_key: str, status: int | None = None) -> int:
        """GETs seen for one object key (path after the bucket), optionally of one status."""
        return sum(
            n
            for (method, path, code), n in self.counts.items()
            if method == "GET" and path.endswith("/" + object_key) and status in (None, code)
        )

    # --- serving ---------------------------------------------------------------------------

    def _next_fault(self) -> tuple[str, float] | None:
        with self._lock:
            if self._faults:
                return self._faults.pop(0)
            return self._sticky

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self._in_progress += 1
        try:
            self._forward(handler)
        finally:
            with self._lock:
                self._in_progress -= 1

    def _forward(self, handler: BaseHTTPRequestHandler) -> None:
        path = unquote(urlsplit(handler.path).path)
        fault = self._next_fault()
        if fault is not None and fault[0] == "delay":
            self._released.wait(fault[1])
        if fault is not None and fault[0] == "slowdown":
            self._reply(handler, path, 503, {"Content-Type": "application/xml"}, SLOW_DOWN)
            return
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else None
        upstream = http.client.HTTPConnection(*self.upstream, timeout=10)
        try:
            headers = {k: v for k, v in handler.headers.items() if k.lower() not in HOP_BY_HOP}
            upstream.request(handler.command, handler.path, body=body, headers=headers)
            response = upstream.getresponse()
            data = response.read()
            out = {k: v for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP}
            out.pop("Content-Length", None)
            if fault is not None and fault[0] == "get_object_only" and b"NoSuchKey" in data:
                # What S3 answers for a missing key when the policy lacks s3:ListBucket.
                self._reply(handler, path, 403, {"Content-Type": "application/xml"}, DENIED)
                return
            self._reply(handler, path, response.status, out, data)
        finally:
            upstream.close()

    def _reply(
        self,
        handler: BaseHTTPRequestHandler,
        path: str,
        status: int,
        headers: dict[str, str],
        body: bytes,
    ) -> None:
        with self._lock:
            self.counts[(handler.command, path, status)] += 1
        try:
            handler.send_response(status)
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(body)
        except OSError:
            pass  # the client gave up (e.g. its timeout fired during a delay)
