"""A tenant response's head goes out in one write with its body (sngin.edge.connection_guard
.HeadHold), over a real socket pair: nothing is written until the body comes, a head whose body
never comes is still sent, a large body is not copied to join it, and h11's empty end of a
sized body writes nothing."""

from __future__ import annotations

import socket

import pytest
import trio
import trio.lowlevel
from hypercorn.events import RawData

from sngin.edge.connection_guard import (
    COALESCE_MAX_BYTES,
    HEAD_HOLD,
    ContainedTCPServer,
    GatedConfig,
    HeadHold,
)

HEAD = b"HTTP/1.1 200 \r\ncontent-length: 5\r\n\r\n"


class Peer:
    """The client's end of the pair, read without waiting."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        sock.setblocking(False)

    def pending(self) -> bytes:
        chunks = []
        while True:
            try:
                chunk = self.sock.recv(1 << 20)
            except BlockingIOError:
                return b"".join(chunks)
            chunks.append(chunk)


@pytest.fixture
def pair():
    ours, theirs = socket.socketpair()
    config = GatedConfig()
    config.send_timeout_s = 5.0
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
    server = ContainedTCPServer(None, config, None, None, stream)  # type: ignore[arg-type]
    yield server, Peer(theirs)
    theirs.close()
    ours.close()


def writes_of(server: ContainedTCPServer) -> list[bytes]:
    seen: list[bytes] = []
    send_at_once = server._send_at_once

    def counting(data):
        seen.append(bytes(data))
        return send_at_once(data)

    server._send_at_once = counting  # type: ignore[method-assign]
    return seen


async def test_the_head_waits_for_the_body_and_both_go_in_one_write(pair):
    server, peer = pair
    writes = writes_of(server)
    hold = HeadHold()
    token = HEAD_HOLD.set(hold)
    try:
        await server.protocol_send(RawData(data=HEAD))
        assert peer.pending() == b""  # held, not written
        await server.protocol_send(RawData(data=b"hello"))
        await server.protocol_send(RawData(data=b""))  # h11's EndOfMessage for a sized body
    finally:
        HEAD_HOLD.reset(token)
        await hold.release()
    assert writes == [HEAD + b"hello"]
    assert peer.pending() == HEAD + b"hello"


async def test_a_head_whose_body_never_comes_is_sent_on_release(pair):
    server, peer = pair
    hold = HeadHold()
    token = HEAD_HOLD.set(hold)
    await server.protocol_send(RawData(data=HEAD))
    HEAD_HOLD.reset(token)
    assert peer.pending() == b""
    await hold.release()
    assert peer.pending() == HEAD
    await hold.release()  # released once: nothing sent twice
    assert peer.pending() == b""


async def test_a_large_body_is_written_after_its_head_not_copied_onto_it(pair):
    server, peer = pair
    writes = writes_of(server)
    body = b"x" * (COALESCE_MAX_BYTES + 1)
    hold = HeadHold()
    token = HEAD_HOLD.set(hold)

    async def read_all(expected: int) -> bytes:
        data = b""
        while len(data) < expected:
            data += peer.pending()
            await trio.lowlevel.checkpoint()
        return data

    async with trio.open_nursery() as nursery:
        received: list[bytes] = []

        async def reader() -> None:
            received.append(await read_all(len(HEAD) + len(body)))

        nursery.start_soon(reader)
        await server.protocol_send(RawData(data=HEAD))
        await server.protocol_send(RawData(data=body))
    HEAD_HOLD.reset(token)
    await hold.release()
    assert writes[0] == HEAD
    assert received == [HEAD + body]


async def test_without_a_hold_every_write_goes_at_once_and_empty_ones_are_skipped(pair):
    server, peer = pair
    writes = writes_of(server)
    await server.protocol_send(RawData(data=HEAD))
    assert peer.pending() == HEAD
    await server.protocol_send(RawData(data=b""))
    await server.protocol_send(RawData(data=b"hello"))
    assert writes == [HEAD, b"hello"]
    assert peer.pending() == b"hello"
