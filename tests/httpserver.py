"""A threaded HTTP server on loopback for tests' stand-ins (upstreams, the S3 proxy, raw hosts)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ssl


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # A deep accept queue: the default of 5 drops bursts of connections (SYN retried in 1 s).
    request_queue_size = 256


class LoopbackServer:
    """Serves `handler` from a daemon thread until stop(), which returns promptly."""

    def __init__(
        self,
        handler: type[BaseHTTPRequestHandler],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.server = _Server((host, port), handler)
        if ssl_context is not None:
            self.server.socket = ssl_context.wrap_socket(self.server.socket, server_side=True)
        self.port: int = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
