"""What the edge reads from a request's headers, in one pass over them: the Host, the body's
framing and coding, its type, and the client's X-Request-Id candidates. Before, each step
scanned the headers for its own name (six passes before the script ran)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


class RequestHead:
    __slots__ = (
        "chunked",
        "content_encoding",
        "content_type",
        "host",
        "lengths",
        "record",
        "request_ids",
    )

    def __init__(self, headers: Iterable[tuple[bytes, bytes]]) -> None:
        host = content_encoding = content_type = None
        lengths: tuple[bytes, ...] = ()
        request_ids: tuple[bytes, ...] = ()
        chunked = False
        record = None
        for name, value in headers:
            if name == b"host":
                if host is None:
                    host = value
            elif name == b"content-length":
                lengths += (value,)
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"content-type":
                if content_type is None:
                    content_type = value
            elif name == b"content-encoding":
                if content_encoding is None:
                    content_encoding = value
            elif name == b"x-request-id":
                request_ids += (value,)
            elif name == b"x-sngin-record":
                record = value
        self.host: bytes = host or b""  # the first Host header (HTTP/2: :authority, mapped)
        self.lengths = lengths  # every Content-Length, in order
        self.chunked = chunked  # a Transfer-Encoding is present
        self.content_type: bytes = content_type or b""  # the first
        self.content_encoding: bytes | None = content_encoding  # the first
        self.request_ids = request_ids  # every X-Request-Id, in order
        self.record: bytes | None = record  # X-Sngin-Record: a token asking for a replay bundle
