"""Server-wide memory budgets and the send timeout, through a real listener: request bodies being
received, large responses waiting for slow clients, subrequest bodies in flight."""

from __future__ import annotations

import socket

import trio
import trio.testing

from sngin.config import HttpSettings, OutboundSettings
from tests.support import running, serving
from tests.upstream import Upstream

KIB = 1024
MIB = 1024 * KIB


async def until(condition) -> None:
    """Until condition() holds: re-checked whenever the server's tasks have all settled (for
    5 ms: less than the event-loop lag probe's 10 ms period, or they never would)."""
    while not condition():
        await trio.testing.wait_all_tasks_blocked(cushion=0.005)


async def connect(port: int, *, receive_buffer: int | None = None) -> trio.SocketStream:
    sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_STREAM)
    if receive_buffer is not None:  # set before connecting, so the window starts small
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    await sock.connect(("127.0.0.1", port))
    return trio.SocketStream(sock)


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


def post(length: int, *, chunked: bool = False) -> bytes:
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % length
    return b"POST /count HTTP/1.1\r\nHost: a.test\r\n%s\r\n\r\n" % framing


async def test_request_bodies_past_the_budget_get_503_while_the_first_is_received(tmp_path):
    (tmp_path / "a.test" / "count").mkdir(parents=True)
    (tmp_path / "a.test" / "count" / "index.lua").write_text("return tostring(#request.body)")
    http = HttpSettings(request_bodies_bytes=1 * MIB)
    async with running(tmp_path, http=http) as srv:
        budget = srv.deps.budgets.request_bodies
        slow = await connect(srv.port)
        await slow.send_all(post(800 * KIB) + b"x" * (700 * KIB))  # and then it stalls
        await until(lambda: budget.held == 700 * KIB)

        declared = await connect(srv.port)  # 500 KiB declared: no room, refused unread
        await declared.send_all(post(500 * KIB))
        answer = await read_all(declared)
        assert answer.startswith(b"HTTP/1.1 503 ")
        assert b"retry-after: 1" in answer.lower()
        assert answer.endswith(b"receiving as many request bodies as it may; try again shortly\n")

        chunked = await connect(srv.port)  # no length: refused when the budget runs out
        await chunked.send_all(post(0, chunked=True))
        chunk = b"x" * (100 * KIB)
        for _ in range(4):
            await chunked.send_all(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        assert (await read_all(chunked)).startswith(b"HTTP/1.1 503 ")
        assert budget.held == 700 * KIB

        await slow.send_all(b"x" * (100 * KIB) + b"")
        answer = await read_all_until(slow, b"819200")
        assert answer.startswith(b"HTTP/1.1 200 ")
        await until(lambda: budget.held == 0)
        assert budget.refused == 2
        for stream in (slow, declared, chunked):
            await stream.aclose()


async def read_all_until(stream: trio.SocketStream, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = await stream.receive_some(65536)
        assert chunk, data
        data += chunk
    return data


BIG = "return string.rep('x', 2 * 1024 * 1024)"


async def test_responses_past_the_budget_get_503_while_a_client_is_not_reading(tmp_path):
    (tmp_path / "a.test" / "big").mkdir(parents=True)
    (tmp_path / "a.test" / "big" / "index.lua").write_text(BIG)
    http = HttpSettings(responses_bytes=3 * MIB)
    async with running(tmp_path, http=http) as srv:
        budget = srv.deps.budgets.responses
        stalled = await connect(srv.port, receive_buffer=4 * KIB)
        await stalled.send_all(b"GET /big HTTP/1.1\r\nHost: a.test\r\n\r\n")
        await until(lambda: budget.held == 2 * MIB)  # sent in part, held for the client

        refused = await srv.get("/big")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert "as many responses for slow clients as it may" in refused.text

        answer = await read_all_until(stalled, b"x" * 1000)
        while len(answer) < 2 * MIB:
            answer += await stalled.receive_some(65536)
        await until(lambda: budget.held == 0)
        assert (await srv.get("/big")).status_code == 200
        await stalled.aclose()


async def test_a_client_that_stops_reading_is_dropped_after_the_send_timeout(tmp_path):
    """24 MiB for a client with a 4 KiB window that never reads: far more than the socket
    buffers take, so the write stalls; after SNGIN_SEND_TIMEOUT_S the connection is closed and
    the response's memory released. (Without the timeout the write waited for ever.)"""
    (tmp_path / "a.test" / "huge").mkdir(parents=True)
    (tmp_path / "a.test" / "huge" / "index.lua").write_text(
        "return string.rep('x', 24 * 1024 * 1024)"
    )
    http = HttpSettings(send_timeout_s=0.5)
    async with running(tmp_path, http=http, max_body_bytes=32 * MIB) as srv:
        budget = srv.deps.budgets.responses
        stalled = await connect(srv.port, receive_buffer=4 * KIB)
        await stalled.send_all(b"GET /huge HTTP/1.1\r\nHost: a.test\r\n\r\n")
        with trio.fail_after(20):  # a safety net: the timeout is what is tested
            await until(lambda: budget.held == 24 * MIB)
            await until(lambda: budget.held == 0)
        received = 0
        try:
            while chunk := await stalled.receive_some(1 << 20):
                received += len(chunk)
        except trio.BrokenResourceError:
            pass  # reset: the server closed with our request's response unsent
        assert received < 24 * MIB
        assert (await srv.get("/")).status_code == 200  # the server serves on
        await stalled.aclose()


async def test_a_subrequest_body_waits_for_room_and_one_past_the_budget_is_the_scripts_error(
    tmp_path,
):
    """3 MiB for subrequest bodies. a's body (2 MiB declared) is held whole from its first
    byte; b's 2 MiB waits for room and arrives once a's is done (each holding part, many
    bodies at once used to fill the budget and all fail halfway). A declared 4 MiB can never
    fit, and an undeclared (chunked) body that outgrows the room is cut: both are the
    script's error at once."""
    upstream = Upstream()
    message = (
        "the server is holding as many subrequest bodies as it may"
        " (SNGIN_SUBREQUEST_BODIES_BYTES); try again shortly"
    )
    fetch = "local r = http.request('{url}') return r.err or tostring(#r.content)"
    try:
        scripts = {
            "a.test/stall": fetch.format(url=upstream.url("/stall")),
            "b.test/big": fetch.format(url=upstream.url("/two-mib")),
            "b.test/bigger": fetch.format(url=upstream.url("/four-mib")),
            "b.test/chunked": fetch.format(url=upstream.url("/gzip-bomb")),
        }
        settings = OutboundSettings(bodies_bytes=3 * MIB, tenant_share=1.0)  # (shares: below)
        async with (
            serving(tmp_path, scripts, outbound_settings=settings) as srv,
            trio.open_nursery() as nursery,
        ):
            budget = srv.deps.budgets.subrequest_bodies
            answers: dict[str, str] = {}

            async def fetch_into(path: str, host: str) -> None:
                answers[path] = (await srv.get(path, host=host, timeout=30)).text

            nursery.start_soon(fetch_into, "/stall", "a.test")
            await until(lambda: budget.held == 2 * MIB)  # held whole, though half sent
            nursery.start_soon(fetch_into, "/big", "b.test")
            await until(lambda: budget.waiting == 1)
            assert (await srv.get("/bigger", host="b.test")).text == message
            assert (await srv.get("/chunked", host="b.test")).text == message  # 1 MiB left
            assert "/big" not in answers
            upstream.release.set()
        assert answers == {"/stall": str(2 * MIB), "/big": str(2 * MIB)}
        assert budget.held == 0
        assert budget.refused == 2
    finally:
        upstream.close()


async def test_a_large_response_arrives_whole_and_in_order_through_partial_writes(tmp_path):
    """The socket takes what it can at once and the rest goes in timed slices: a client with a
    small window, reading as it likes, gets every byte in order."""
    (tmp_path / "a.test" / "pattern").mkdir(parents=True)
    (tmp_path / "a.test" / "pattern" / "index.lua").write_text(
        "local t = {} for i = 1, 200000 do t[i] = string.format('%07d\\n', i) end"
        " return table.concat(t)"
    )
    expected = b"".join(b"%07d\n" % i for i in range(1, 200_001))
    async with running(tmp_path, max_body_bytes=4 * MIB) as srv:
        client = await connect(srv.port, receive_buffer=4 * KIB)
        await client.send_all(b"GET /pattern HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        received = bytearray()
        with trio.fail_after(30):
            while chunk := await client.receive_some(3000):
                received += chunk
        await client.aclose()
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == expected


async def test_a_tenant_waits_for_its_own_share_of_the_subrequest_bodies_not_the_others():
    """While its bodies wait for room, one tenant holds at most its share (the outbound
    connections' share, 0.5 here): its second body waits although the budget has room,
    another tenant's is taken at once, and the waiting one goes once its first is done."""
    from sngin.bodies.budgets import MemoryBudget

    budget = MemoryBudget("subrequest bodies", 4 * MIB, tenant_share=0.5)
    first, second, other = budget.lease("a"), budget.lease("a"), budget.lease("b")
    assert await first.take_when_free(2 * MIB)
    taken: list[bool] = []
    async with trio.open_nursery() as nursery:

        async def wait_second() -> None:
            taken.append(await second.take_when_free(MIB))

        nursery.start_soon(wait_second)
        await trio.testing.wait_all_tasks_blocked()
        assert (budget.waiting, taken, budget.room()) == (1, [], 2 * MIB)
        assert await other.take_when_free(2 * MIB)  # b's share is its own
        first.release()
    assert taken == [True]
    assert budget.held_by == {"a": MIB, "b": 2 * MIB}
    assert not await budget.lease("a").take_when_free(3 * MIB)  # more than a share: at once
    second.release()
    other.release()
    assert (budget.held, budget.held_by) == (0, {})
