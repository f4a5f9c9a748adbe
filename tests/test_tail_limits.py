"""Live tails are held connections: capped per site (SNGIN_MAX_TAILS_PER_TENANT) and per node
(SNGIN_MAX_TAILS, counted by the parent across `--processes`), and a tail ends within 5 s of
its token's revocation or its session's expiry."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack, asynccontextmanager

import trio
import trio.testing

from sngin.admin.session import COOKIE, Session, sign
from tests.support import AUTH, TOKEN, running


async def open_tail(
    port: int, host: str, headers: dict[str, str]
) -> tuple[trio.SocketStream, bytes]:
    """A raw tail connection (kept open) and the head of its answer."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    lines = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    await stream.send_all(
        f"GET /__sngin/logs?host={host} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = await stream.receive_some(65536)
        assert chunk, head
        head += chunk
    return stream, head


async def read_until(stream: trio.SocketStream, marker: bytes, seen: bytes = b"") -> bytes:
    while marker not in seen:
        chunk = await stream.receive_some(65536)
        if not chunk:
            break
        seen += chunk
    return seen


@asynccontextmanager
async def tails(port: int, count: int, host: str, headers: dict[str, str]):
    async with AsyncExitStack() as stack:
        opened = []
        for _ in range(count):
            stream, head = await open_tail(port, host, headers)
            await stack.enter_async_context(stream)
            assert head.startswith(b"HTTP/1.1 200"), head
            opened.append(stream)
        yield opened


async def token_for(srv, host: str) -> dict:
    made = await srv.client.post(srv.url + "/__sngin/tokens", json={"host": host}, headers=AUTH)
    assert made.status_code == 201
    return made.json()


async def test_a_site_gets_at_most_its_share_of_tails(tmp_path):
    # The attack: 40 tails with one tenant token took every connection slot.
    async with running(tmp_path, admin_token=TOKEN) as srv:
        token = await token_for(srv, "a.test")
        bearer = {"Authorization": f"Bearer {token['token']}"}
        with trio.fail_after(20):
            async with tails(srv.port, 4, "a.test", bearer) as opened:
                stream, head = await open_tail(srv.port, "a.test", bearer)
                async with stream:
                    assert head.startswith(b"HTTP/1.1 429"), head
                    body = await read_until(stream, b"}", head)
                    assert b"already has 4 live tails open (SNGIN_MAX_TAILS_PER_TENANT)" in body
                # Another site is not held back by this one's tails.
                async with tails(srv.port, 1, "b.test", AUTH):
                    pass
                await opened[0].aclose()
                # The closed one's place is free again once the server notices it is gone.
                for _ in range(200):
                    stream, head = await open_tail(srv.port, "a.test", bearer)
                    async with stream:
                        if head.startswith(b"HTTP/1.1 200"):
                            break
                    await trio.testing.wait_all_tasks_blocked()
                assert head.startswith(b"HTTP/1.1 200")


async def test_the_node_caps_every_sites_tails_together(tmp_path):
    async with running(tmp_path, admin_token=TOKEN, settings_changes={"max_tails": 3}) as srv:
        with trio.fail_after(20):
            async with tails(srv.port, 2, "a.test", AUTH), tails(srv.port, 1, "b.test", AUTH):
                stream, head = await open_tail(srv.port, "c.test", AUTH)
                async with stream:
                    assert head.startswith(b"HTTP/1.1 503"), head
                    body = await read_until(stream, b"}", head)
                    assert b"live tails open (SNGIN_MAX_TAILS)" in body


async def test_a_tail_ends_when_its_token_is_revoked(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        token = await token_for(srv, "a.test")
        bearer = {"Authorization": f"Bearer {token['token']}"}
        with trio.fail_after(20):
            async with tails(srv.port, 1, "a.test", bearer) as (stream,):
                await srv.get("/")  # a line arrives while the token holds
                seen = await read_until(stream, b"data: ")
                revoked = await srv.client.delete(
                    srv.url + f"/__sngin/tokens/{token['id']}", headers=AUTH
                )
                assert revoked.status_code == 200
                started = trio.current_time()
                seen = await read_until(stream, b"event: end", seen)
                assert b"the credential was revoked or expired" in seen
                assert trio.current_time() - started < 5.5


async def test_a_tail_ends_when_its_session_expires(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        session = Session(host=None, expires=time.time() + 1, csrf="c")
        cookie = {"Cookie": f"{COOKIE}={sign(session, TOKEN)}"}
        with trio.fail_after(20):
            async with tails(srv.port, 1, "a.test", cookie) as (stream,):
                seen = await read_until(stream, b"event: end")
                assert b"the credential was revoked or expired" in seen
