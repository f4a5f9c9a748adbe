"""Keeps an unexpected error inside the connection that raised it, and caps connections.

Hypercorn runs every connection's task in the listener's nursery, and lets an exception from
one connection (an h11 LocalProtocolError raised while a response is sent, say) leave it: that
ends the listener and `serve`. sngin validates responses before sending them
(sngin.edge.response_rules), so this is the backstop: Hypercorn's per-connection server class is
replaced, once, by one that logs such an error and closes only that connection (and closes
connections without resetting them, see ContainedTCPServer._close).

Hypercorn has no write timeout: its writes are shielded from cancellation, so a client that
stops reading holds its connection, and the response waiting for it, for good. A GatedConfig's
send_timeout_s bounds how long one write may make no progress; past it the connection is closed
and the response dropped.

Hypercorn has no connection cap either. A listener whose Config carries a ConnectionGate
(GatedConfig) serves at most its limit of connections at once; one past it is answered `503`
and closed at once, so slow clients cannot take the descriptors the server needs for itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
from typing import Final

import h11
import hypercorn.trio.run
import trio
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData
from hypercorn.trio.tcp_server import TCPServer

log = logging.getLogger(__name__)

LINGER_S: Final = 1.0
LINGER_READ_BYTES: Final = 65536
REFUSAL: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\n"
    b"Content-Type: text/plain\r\nContent-Length: 36\r\n\r\nthe server has too many connections\n"
)
# A fresh socket's buffer takes the 503 at once; what the client already sent is then read for
# at most this long, so the close does not reset the connection and destroy the 503.
REFUSAL_LINGER_S: Final = 0.05
REFUSAL_LOG_EVERY_S: Final = 10.0
SEND_SLICE_BYTES: Final = 256 * 1024  # the unit of progress the send timeout watches
COALESCE_MAX_BYTES: Final = (
    64 * 1024
)  # a body up to this is copied to go in one write with its head


class HeadHold:
    """Set in HEAD_HOLD: the response head Hypercorn writes is held back and goes out in one
    write with the body that follows (one syscall and one packet instead of two, and no write
    for h11's empty end of a sized body). Used only where the body is sent right after the head
    (sngin.edge.dispatcher.respond), which calls release() at the end, so a head still held
    then (the body never came) is sent all the same."""

    __slots__ = ("data", "done", "server")

    def __init__(self) -> None:
        self.data: bytes | None = None
        self.server: ContainedTCPServer | None = None
        self.done = False

    async def release(self) -> None:
        data, server = self.data, self.server
        self.data, self.done = None, True
        if data is not None and server is not None:
            await server.protocol_send(RawData(data=data))


# Per task: Hypercorn calls protocol_send in the ASGI app's own task, so the hold set by the
# dispatcher's respond() is seen there and nowhere else.
HEAD_HOLD: contextvars.ContextVar[HeadHold | None] = contextvars.ContextVar(
    "sngin_head_hold", default=None
)


class ConnectionGate:
    """Counts a listener's open connections against its limit (None: no limit)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = limit
        self.open = 0
        self.refused = 0
        self._logged_at = -REFUSAL_LOG_EVERY_S

    def enter(self) -> bool:
        if self.limit is not None and self.open >= self.limit:
            self.refused += 1
            now = trio.current_time()
            if now - self._logged_at >= REFUSAL_LOG_EVERY_S:
                self._logged_at = now
                log.warning(
                    "%d connections open, the limit (SNGIN_MAX_CONNECTIONS): refusing new ones "
                    "(%d refused so far)", self.open, self.refused,
                )  # fmt: skip
            return False
        self.open += 1
        return True

    def leave(self) -> None:
        self.open -= 1


class GatedConfig(Config):
    """Hypercorn's Config with the listener's ConnectionGate and send timeout."""

    connection_gate: ConnectionGate | None = None
    send_timeout_s: float | None = None


class SendTimedOut(Exception):
    """The client took nothing of a write for send_timeout_s."""


class ContainedTCPServer(TCPServer):
    """Hypercorn's connection handler; an Exception ends this connection only (cancellation
    still propagates), and a connection the server closes lingers briefly (below)."""

    _closing = False
    _ending = False  # run() is ending: close whatever state the protocol is in

    async def run(self) -> None:
        gate = getattr(self.config, "connection_gate", None)
        if gate is not None and not gate.enter():
            await self._refuse()
            return
        try:
            await super().run()
        except* Exception as group:
            log.error("a connection ended with an unexpected error", exc_info=group)
        finally:
            self._ending = True
            try:
                await self._close()
            finally:
                if gate is not None:
                    gate.leave()

    async def _refuse(self) -> None:
        """Over the limit: a 503, then close within REFUSAL_LINGER_S whatever the client does."""
        with (
            contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError),
            trio.move_on_after(REFUSAL_LINGER_S),
        ):
            await self.stream.send_all(REFUSAL)
            await self.stream.send_eof()
            while await self.stream.receive_some(LINGER_READ_BYTES):
                pass
        await trio.aclose_forcefully(self.stream)

    async def protocol_send(self, event: Event) -> None:
        timeout = getattr(self.config, "send_timeout_s", None)
        if timeout is None or not isinstance(event, RawData):
            await super().protocol_send(event)
            return
        await self._send_raw(event.data, timeout_s=timeout)

    async def _send_raw(self, data: bytes, *, timeout_s: float) -> None:
        hold = HEAD_HOLD.get()
        if hold is not None and not hold.done:
            if hold.server is None:
                hold.data, hold.server = data, self  # the response head: sent with the body
                return
            head, hold.data, hold.done = hold.data, None, True
            if head and len(data) <= COALESCE_MAX_BYTES:
                data = head + data
            elif head:
                await self._write(
                    head, timeout_s=timeout_s
                )  # a large body is not copied to join it
        if data:  # (h11's end of a sized body is empty: nothing to write)
            await self._write(data, timeout_s=timeout_s)

    async def _write(self, data: bytes | memoryview, *, timeout_s: float) -> None:
        try:
            try:
                self.send_lock.acquire_nowait()
            except trio.WouldBlock:  # another send is waiting on the client: queue behind it
                async with self.send_lock:
                    await self._send_within(data, timeout_s)
                return
            try:
                # The usual case: the socket takes it all at once, with no timeout to arm and
                # no trip through the scheduler (a cancel scope per write cost ~5% of a hello).
                sent = self._send_at_once(data)
                if sent < len(data):
                    await self._send_within(memoryview(data)[sent:], timeout_s)
            finally:
                self.send_lock.release()
        except (trio.BrokenResourceError, trio.ClosedResourceError, SendTimedOut):
            await self.protocol.handle(Closed())

    def _send_at_once(self, data: bytes | memoryview) -> int:
        """What a plain TCP socket takes now, without waiting (0 for TLS or a full socket)."""
        # Hypercorn annotates its stream as TLS, but a plain listener hands it a SocketStream.
        stream: trio.abc.Stream = self.stream
        if not isinstance(stream, trio.SocketStream) or stream.socket.did_shutdown_SHUT_WR:
            return 0
        try:
            return os.write(stream.socket.fileno(), data)
        except BlockingIOError:
            return 0
        except OSError as exc:  # reset, or closed meanwhile
            raise trio.BrokenResourceError(str(exc)) from exc

    async def _send_within(self, data: bytes | memoryview, timeout_s: float) -> None:
        """Send data in slices, each of which must go within timeout_s: a slow client that
        keeps reading is served, one that stopped is dropped. Shielded, as Hypercorn's own
        write is: only the timeout cuts a write short."""
        with trio.CancelScope(shield=True), memoryview(data) as view:
            for start in range(0, len(view), SEND_SLICE_BYTES):
                with trio.move_on_after(timeout_s) as timer:
                    await self.stream.send_all(view[start : start + SEND_SLICE_BYTES])
                if timer.cancelled_caught:
                    log.debug("a client read nothing for %g s: its connection is closed", timeout_s)
                    raise SendTimedOut

    def _responding(self) -> bool:
        """An HTTP/1.1 response is being sent: h11 gives up on a pipelined request that
        follows a `Connection: close` answer, and Hypercorn's reader would then close the
        socket under the response. The response's own end closes it instead."""
        connection = getattr(getattr(self.protocol, "protocol", None), "connection", None)
        return isinstance(connection, h11.Connection) and connection.our_state in (
            h11.SEND_RESPONSE,
            h11.SEND_BODY,
        )

    async def _close(self) -> None:
        """Lingering close, as nginx does: after the last response (FIN sent), read and drop
        what the client still sends for up to LINGER_S before closing. Closing a socket with
        unread data makes the kernel send a reset, which can destroy the response in flight
        (a `Connection: close` answer to a pipelined request, say). Hypercorn closes from
        several tasks; the first one lingers and closes, the others leave it to that one."""
        if self._closing or (self._responding() and not self._ending):
            return
        self._closing = True
        try:
            with contextlib.suppress(
                trio.BrokenResourceError, trio.BusyResourceError, trio.ClosedResourceError
            ):
                await self.stream.send_eof()
                with trio.move_on_after(LINGER_S):
                    while await self.stream.receive_some(LINGER_READ_BYTES):
                        pass
        finally:
            await self.stream.aclose()


def contain_connection_errors() -> None:
    """Install ContainedTCPServer where hypercorn.trio's serve loop looks its handler up."""
    current = getattr(hypercorn.trio.run, "TCPServer", None)
    if current is ContainedTCPServer:
        return
    if current is not TCPServer:  # a Hypercorn that moved things: fail loudly, in the tests
        raise RuntimeError("hypercorn.trio.run.TCPServer is not Hypercorn's TCPServer")
    setattr(hypercorn.trio.run, "TCPServer", ContainedTCPServer)  # noqa: B010
