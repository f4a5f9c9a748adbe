"""Local upstream HTTP(S) servers for http.request tests: echo, slow, redirect, huge, status."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import re
import threading
import zlib
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, parse_qsl, quote, unquote, urlsplit

from tests.httpserver import LoopbackServer

if TYPE_CHECKING:
    import ssl


VERIFY_KEY = b"\x00sngin-test-signing-key\xff"


OAUTH_SECRETS = {"ck": "cs", "at": "ts"}  # consumer key -> secret, token -> secret


def oauth_valid(method: str, target: str, headers, body: bytes) -> bool:
    """Checks an OAuth 1.0a HMAC-SHA1 signature the way a provider would (RFC 5849, from the
    standard library's parts), with the secrets of OAUTH_SECRETS: the base string URI is
    rebuilt from the Host header and the request target as they arrived."""
    header = headers.get("Authorization", "")
    if not header.startswith("OAuth "):
        return False
    given = {k: unquote(v) for k, v in re.findall(r'(\w+)="([^"]*)"', header)}
    signature = given.pop("oauth_signature", "")
    path, _, query = target.partition("?")
    pairs = list(given.items()) + parse_qsl(query, keep_blank_values=True)
    if headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
        pairs += parse_qsl(body.decode(), keep_blank_values=True)

    def enc(text: str) -> str:
        return quote(text, safe="~")

    normalised = "&".join(f"{k}={v}" for k, v in sorted((enc(k), enc(v)) for k, v in pairs))
    host = headers.get("Host", "").lower().removesuffix(":80")
    base = "&".join([method, enc(f"http://{host}{path}"), enc(normalised)])
    key = "&".join(enc(OAUTH_SECRETS.get(given.get(n, ""), "")) for n in
                   ("oauth_consumer_key", "oauth_token"))  # fmt: skip
    expected = base64.b64encode(hmac.new(key.encode(), base.encode(), hashlib.sha1).digest())
    return hmac.compare_digest(signature.encode(), expected)


class Upstream:
    """A threaded HTTP server on a loopback address; records every request it answers."""

    def __init__(self, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None):
        self.requests: list[dict[str, object]] = []
        self.release = threading.Event()
        self.bomb_sent: list[int] = []
        self._arrived = threading.Condition()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def finish(self) -> None:
                with contextlib.suppress(OSError):  # the client hung up (a refused huge body)
                    super().finish()

            def handle(self) -> None:
                with contextlib.suppress(OSError):
                    super().handle()

            def do_GET(self) -> None:
                upstream.handle(self)

            do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_GET

        self._http = LoopbackServer(Handler, host=host, ssl_context=ssl_context)
        self.host = host
        self.port = self._http.port
        self.scheme = "https" if ssl_context is not None else "http"

    def url(self, path: str = "/", host: str | None = None) -> str:
        return f"{self.scheme}://{host or self.host}:{self.port}{path}"

    def wait_for(self, path: str, count: int, timeout_s: float = 10.0) -> None:
        """Block (in a thread) until `count` requests for path have arrived."""
        with self._arrived:
            arrived = self._arrived.wait_for(
                lambda: sum(r["path"] == path for r in self.requests) >= count, timeout_s
            )
        if not arrived:
            raise TimeoutError(f"{count} requests for {path} did not arrive")

    def close(self) -> None:
        self.release.set()
        self._http.stop()

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        split = urlsplit(handler.path)
        query = parse_qs(split.query)
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        record = {
            "method": handler.command,
            "path": split.path,
            "query": split.query,
            "headers": {k.lower(): v for k, v in handler.headers.items()},
            "body": body.decode("latin-1"),
        }
        with self._arrived:
            self.requests.append(record)
            self._arrived.notify_all()
        if split.path == "/slow":
            self.release.wait(float(query.get("s", ["5"])[0]))
        if split.path == "/redirect":
            target = query["to"][0]
            return self.reply(handler, 302, b"", {"Location": target})
        if split.path in ("/gzip", "/deflate", "/raw-deflate"):
            coding = split.path.strip("/")
            wbits = {"gzip": 31, "deflate": 15, "raw-deflate": -15}[coding]
            packer = zlib.compressobj(6, zlib.DEFLATED, wbits)
            packed = packer.compress(b"inflated " * 1000) + packer.flush()
            encoding = "deflate" if coding == "raw-deflate" else coding
            return self.reply(handler, 200, packed, {"Content-Encoding": encoding})
        if split.path == "/bad-gzip":
            return self.reply(handler, 200, b"not gzip at all" * 100, {"Content-Encoding": "gzip"})
        if split.path == "/gzip-bomb":
            return self.gzip_bomb(handler)
        if split.path.startswith("/oauth"):
            valid = oauth_valid(handler.command, handler.path, handler.headers, body)
            return self.reply(handler, 200 if valid else 401, b"signed" if valid else b"bad")
        if split.path == "/two-mib":
            return self.reply(handler, 200, b"y" * (2 * 1024 * 1024))
        if split.path == "/four-mib":
            return self.reply(handler, 200, b"f" * (4 * 1024 * 1024))
        if split.path == "/stall":
            # 2 MiB declared; 1.5 MiB sent, the rest once released.
            handler.send_response(200)
            handler.send_header("Content-Length", str(2 * 1024 * 1024))
            handler.end_headers()
            handler.wfile.write(b"s" * (3 * 1024 * 1024 // 2))
            handler.wfile.flush()
            self.release.wait(30)
            handler.wfile.write(b"s" * (1024 * 1024 // 2))
            return None
        if split.path == "/huge":
            return self.reply(handler, 200, b"x" * (11 * 1024 * 1024))
        if split.path == "/verify":
            # Checks X-Signature = base64(HMAC-SHA256(VERIFY_KEY, method + path + body)).
            expected = base64.b64encode(
                hmac.new(VERIFY_KEY, handler.command.encode() + split.path.encode() + body,
                         hashlib.sha256).digest()
            ).decode()  # fmt: skip
            ok = hmac.compare_digest(handler.headers.get("X-Signature", ""), expected)
            return self.reply(handler, 200 if ok else 401, b"verified" if ok else b"bad signature")
        if split.path.startswith("/status/"):
            return self.reply(handler, int(split.path.rsplit("/", 1)[1]), b"status")
        payload = json.dumps(record).encode()
        self.reply(handler, 200, payload, {"Content-Type": "application/json", "X-Up": "1"})

    def gzip_bomb(self, handler: BaseHTTPRequestHandler) -> None:
        """An endless gzip body of zeros, ~1,000:1, chunked, until the client hangs up; records
        how many compressed bytes went out."""
        handler.send_response(200)
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        packer = zlib.compressobj(9, zlib.DEFLATED, 31)
        zeros, sent = bytes(1 << 20), 0
        try:
            while not self.release.is_set():
                data = packer.compress(zeros)
                if data:
                    handler.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                    sent += len(data)
        except OSError:
            pass
        self.bomb_sent.append(sent)

    @staticmethod
    def reply(
        handler: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict | None = None
    ) -> None:
        try:
            handler.send_response(status)
            for name, value in (headers or {}).items():
                handler.send_header(name, value)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            if handler.command != "HEAD":
                handler.wfile.write(body)
        except OSError:
            pass
