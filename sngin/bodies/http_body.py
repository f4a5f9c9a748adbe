"""Reading an HTTP response body with a size cap (scripts' subrequests, S3 and GitHub fetches).

The cap holds for the decoded body: a gzip or deflate body is inflated here, never more than
one byte past the cap, so a small compressed body that inflates to gigabytes (a "gzip bomb")
costs what reading the cap costs. httpx's own decoding inflates each received chunk whole
(64 KiB of a bomb is ~64 MB), which is why bodies are read raw.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import httpx
import trio

from sngin.errors import CallError

if TYPE_CHECKING:
    from sngin.bodies.budgets import Lease

# What every client of the server asks for: the codings read_capped can undo. (httpx would
# also offer br and zstd whenever their packages happen to be installed.)
ACCEPT_ENCODING: Final = "gzip, deflate"
GZIP_WBITS: Final = zlib.MAX_WBITS | 16
RAW_DEFLATE_WBITS: Final = -zlib.MAX_WBITS


class BodyDecodeError(httpx.DecodingError):
    """The body is not valid in its declared Content-Encoding (an httpx.HTTPError, as httpx's
    own decoding error is, so callers handle both alike)."""


class _Inflater:
    """One gzip or deflate layer. Deflate is tried as zlib data first, then as a raw deflate
    stream (servers send both; httpx accepts both the same way)."""

    def __init__(self, coding: str) -> None:
        self._deflate = coding == "deflate"
        self._inflate = zlib.decompressobj(zlib.MAX_WBITS if self._deflate else GZIP_WBITS)
        self._started = False

    def inflate(self, data: bytes, limit: int) -> bytes:
        """Up to limit bytes of output (limit >= 1). Input left over means the output hit the
        limit; the caller stops there, so it is never needed."""
        try:
            out = self._inflate.decompress(data, limit)
        except zlib.error as exc:
            if self._deflate and not self._started:
                self._deflate = False
                self._inflate = zlib.decompressobj(RAW_DEFLATE_WBITS)
                return self.inflate(data, limit)
            raise BodyDecodeError(f"the body is not valid {self._name}: {exc}") from exc
        self._started = True
        return out

    @property
    def _name(self) -> str:
        return "deflate data" if self._deflate else "gzip data"


class BoundedDecoder:
    """Undoes a response's Content-Encoding (gzip, x-gzip, deflate; identity and codings this
    server never asks for pass through unchanged, as httpx does), bounded per call."""

    def __init__(self, content_encoding: str) -> None:
        codings = [c.strip().lower() for c in content_encoding.split(",")]
        layers = [
            _Inflater("deflate" if c == "deflate" else "gzip")
            for c in codings
            if c in ("gzip", "x-gzip", "deflate")
        ]
        self._layers = layers[::-1]  # the coding applied last is undone first
        self.cpu_s = 0.0  # time spent inflating (this thread's CPU)

    def decode(self, data: bytes, limit: int) -> bytes:
        if not self._layers:
            return data
        started = time.thread_time()
        try:
            for layer in self._layers:
                data = layer.inflate(data, limit)
        finally:
            self.cpu_s += time.thread_time() - started
        return data


class BodyBudgetExceeded(CallError):
    """The server-wide budget for bodies in flight cannot take this one now."""

    def __init__(self, message: str = "the subrequest bodies budget is full") -> None:
        super().__init__(message)


@dataclass(slots=True)
class BodyCost:
    """Server CPU a request's subrequest bodies cost (inflating them), charged to the tenant."""

    decode_s: float = 0.0


async def read_capped(
    response: httpx.Response,
    cap: int,
    *,
    cost: BodyCost | None = None,
    lease: Lease | None = None,
) -> bytearray | None:
    """The decoded body, or None if it is larger than cap. A declared size is refused unread; a
    body that turns out larger stops being read at the cap (the connection is then closed by
    response.aclose()). BodyDecodeError for a body its coding cannot undo. With a lease, a
    declared size is held whole first (waiting for room, within the caller's timeout), and
    each decoded chunk past it before it is kept; BodyBudgetExceeded when that cannot be."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    prepaid = 0  # bytes of the declared size held before reading
    if lease is not None and declared.isdigit():
        if not await lease.take_when_free(int(declared)):
            raise BodyBudgetExceeded
        prepaid = int(declared)
    decoder = BoundedDecoder(response.headers.get("content-encoding", ""))
    body = bytearray()
    failure: Exception | None = None  # raised once the stream has ended cleanly
    try:
        with trio.CancelScope() as reading:
            async for chunk in response.aiter_raw():
                if reading.cancel_called:
                    continue  # (buffered chunks, until the cancellation below lands)
                try:
                    decoded = decoder.decode(chunk, cap + 1 - len(body))
                    covered = min(prepaid, len(decoded))  # decoded may outgrow the declared
                    prepaid -= covered
                    if lease is not None and not lease.take(len(decoded) - covered):
                        raise BodyBudgetExceeded
                except (BodyDecodeError, BodyBudgetExceeded) as exc:
                    failure = exc
                    decoded = b""
                body += decoded
                if failure is not None or len(body) > cap:
                    # Breaking out (or raising) would leave httpx's and httpcore's nested stream
                    # generators to the garbage collector; cancelling ends them all at the next
                    # read.
                    reading.cancel()
    finally:
        if cost is not None:
            cost.decode_s += decoder.cpu_s
        if lease is not None and prepaid:
            lease.give_back(prepaid)  # the body was shorter than declared, or stopped early
    if failure is not None:
        raise failure
    # The bytearray itself, not a copy: bytes-like, and msgspec frames it as bytes.
    return None if len(body) > cap else body
