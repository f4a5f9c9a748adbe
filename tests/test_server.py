"""End to end: a real Hypercorn listener on loopback with real worker subprocesses."""

from __future__ import annotations

import ipaddress
import json
import os
import signal

import pytest
import trio
import trio.lowlevel

from sngin.config import HttpSettings
from tests.support import running, start_busy


@pytest.fixture
async def server(tmp_path):
    async with running(tmp_path) as srv:
        yield srv


async def test_string_response(server):
    response = await server.get("/")
    assert response.status_code == 200
    assert response.text == "root of a"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


async def test_responses_have_a_content_length_not_chunks_on_the_wire(server):
    raw = await server.raw(b"GET / HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"\r\ncontent-length: 9" in head.lower()
    assert b"transfer-encoding" not in head.lower()
    assert body == b"root of a"


async def test_a_scripts_framing_headers_cannot_cut_the_body_or_close_the_connection(server):
    stream = await trio.open_tcp_stream("127.0.0.1", server.port)
    async with stream:
        request = b"GET /framing HTTP/1.1\r\nHost: a.test\r\n\r\n"
        await stream.send_all(request + request)  # two requests on one kept-alive connection
        data = b""
        while data.count(b"hello") < 2:
            chunk = await stream.receive_some(65536)
            assert chunk, f"connection closed after {data!r}"
            data += chunk
    assert data.lower().count(b"content-length: 5\r\n") == 2
    assert b"connection: close" not in data.lower()


async def test_head_keeps_the_content_length_of_the_body(server):
    response = await server.client.head(server.url + "/", headers={"Host": "a.test"})
    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-length"] == "9"


async def test_bodies_larger_than_the_pipe_cross_whole_and_in_order(server):
    # Far past a pipe's 64 KiB: the frames queue and drain in order, several at once.
    bodies = [bytes([65 + n]) * (300_000 + n) + b"%05d" % n for n in range(4)]
    answers: dict[int, str] = {}

    async def post(n: int) -> None:
        response = await server.client.post(
            server.url + "/size", headers={"Host": "a.test"}, content=bodies[n]
        )
        answers[n] = response.text

    async with trio.open_nursery() as nursery:
        for n in range(len(bodies)):
            nursery.start_soon(post, n)
    assert answers == {n: f"{len(bodies[n])} {n:05d}" for n in range(len(bodies))}


async def test_method_table_and_headers(server):
    response = await server.client.post(server.url + "/forms", headers={"Host": "a.test"})
    assert (response.status_code, response.text, response.headers["x-made"]) == (
        201,
        "posted",
        "yes",
    )
    response = await server.client.put(server.url + "/forms", headers={"Host": "a.test"})
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, HEAD, POST"


async def test_response_table_with_repeated_headers(server):
    response = await server.get("/response")
    assert (response.status_code, response.text) == (418, "teapot")
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]


async def test_request_object_end_to_end(server):
    response = await server.client.post(
        server.url + "/echo/?q=1",
        headers={
            "Host": "A.Test:8080",
            "User-Agent": "t/1",
            "Content-Type": "application/x-www-form-urlencoded",
        },
        content=b"x=1&y=%41",
    )
    body = response.json()
    assert body["method"] == "POST"
    assert body["path"] == "/echo/"
    assert body["q"] == "1"
    assert body["ua"] == "t/1"
    assert body["payload"] == "x=1&y=%41"
    assert body["host"] == "a.test"
    assert body["remote"] == "127.0.0.1"
    assert body["scheme"] == "http"
    assert body["form"]["x"] == "1"


async def test_trailing_slash_and_double_slash_run_the_same_script(server):
    for path in ("/echo", "/echo/", "//echo//"):
        assert (await server.get(path)).json()["method"] == "GET"


async def test_script_error_is_500_with_message(server):
    response = await server.get("/err")
    assert response.status_code == 500
    assert response.text == "a.test/err:2: attempt to index local 't' (a nil value)\n"


async def test_invalid_response_is_500(server):
    response = await server.get("/bad")
    assert response.status_code == 500
    assert "contains a control character" in response.text


async def test_missing_script_is_404(server):
    response = await server.get("/nothing/here")
    assert response.status_code == 404
    assert (await server.get("/", host="unknown.test")).status_code == 404


@pytest.mark.parametrize("host", ["a..test", "a_b.test", "bad host", ""])
async def test_bad_host_is_400(server, host):
    answer = await server.raw(
        f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400")


@pytest.mark.parametrize("target", ["/../x", "/%2e%2e/x", "/a/..%2f..%2fx", "/a%5cb", "/a%00b"])
async def test_bad_paths_are_400(server, target):
    answer = await server.raw(
        f"GET {target} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n".encode()
    )
    assert answer.startswith(b"HTTP/1.1 400")


async def test_reserved_prefixes_never_reach_tenant_code(server):
    response = await server.get("/__sngin/health")
    assert response.status_code == 200
    assert response.json()["workers"] == 2
    assert (await server.get("/__sngin/nope")).status_code == 404


async def test_source_is_never_served(server):
    response = await server.get("/index.lua")
    assert response.status_code == 404


async def test_request_too_large_is_413(tmp_path):
    with trio.fail_after(30):
        async with running(tmp_path, max_request_bytes=1000) as srv:
            response = await srv.client.post(
                srv.url + "/echo", headers={"Host": "a.test"}, content=b"x" * 1001
            )
            assert response.status_code == 413

            async def chunks():
                for _ in range(10):
                    yield b"y" * 200

            response = await srv.client.post(
                srv.url + "/echo", headers={"Host": "a.test"}, content=chunks()
            )
            assert response.status_code == 413
            # The body was not read to its end: the client must not reuse the connection.
            assert response.headers["connection"] == "close"
            ok = await srv.client.post(
                srv.url + "/echo", headers={"Host": "a.test"}, content=b"x" * 1000
            )
            assert ok.status_code == 200


async def test_runaway_script_is_504_while_other_tenants_are_served(tmp_path):
    with trio.fail_after(30):
        async with running(tmp_path, workers=2, timeout_ms=1500) as srv:
            results = {}
            async with trio.open_nursery() as nursery:
                await start_busy(srv, nursery, "/spin", results)
                with trio.fail_after(1):
                    other = await srv.get("/", host="b.test")
                assert other.text == "root of b"
            assert results["/spin"].status_code == 504
            assert "1500 ms" in results["/spin"].text
            assert (await srv.get("/")).text == "root of a"


async def test_killed_worker_is_502_then_recovers(tmp_path):
    with trio.fail_after(30):
        async with running(tmp_path, workers=2) as srv:
            results = {}
            async with trio.open_nursery() as nursery:
                (victim,) = await start_busy(srv, nursery, "/spin", results)
                os.kill(victim, signal.SIGKILL)
            assert results["/spin"].status_code == 502
            for _ in range(4):
                assert (await srv.get("/")).text == "root of a"
            assert victim not in srv.pool.pids()
            assert srv.pool.statistics().replaced == 1


async def test_isolation_between_tenants_and_across_switches(tmp_path):
    with trio.fail_after(30):
        async with running(tmp_path, workers=2) as srv:
            for _ in range(6):
                assert (await srv.get("/globals")).text == "nil"
                assert (await srv.get("/globals", host="b.test")).text == "nil"


async def test_graceful_shutdown_leaves_no_process(tmp_path):
    with trio.fail_after(30):
        async with running(tmp_path) as srv:
            assert (await srv.get("/")).status_code == 200
            pids = srv.pool.pids()
            assert len(pids) == 2
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_forwarded_headers_only_from_trusted_proxies(tmp_path):
    headers = {
        "Host": "a.test",
        "X-Forwarded-For": "203.0.113.7, 10.0.0.1",
        "X-Forwarded-Proto": "https",
    }
    with trio.fail_after(30):
        async with running(tmp_path) as srv:
            body = (await srv.get("/echo", headers=headers)).json()
            assert (body["remote"], body["scheme"]) == ("127.0.0.1", "http")
        trusted = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("10.0.0.0/8"))
        async with running(tmp_path, trusted_proxies=trusted) as srv:
            body = (await srv.get("/echo", headers=headers)).json()
            assert (body["remote"], body["scheme"]) == ("203.0.113.7", "https")


async def test_in_flight_request_finishes_during_graceful_shutdown(tmp_path):
    results = {}
    async with running(tmp_path) as srv, trio.open_nursery() as nursery:
        await start_busy(srv, nursery, "/busy", results)
        srv.stop.set()  # shut down while /busy is still running in its worker
    assert results["/busy"].text == "finished"


async def test_slow_headers_are_cut_off(tmp_path):
    async with running(tmp_path, http=HttpSettings(keep_alive_s=0.5)) as srv:
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.te")
            with trio.fail_after(5):
                assert await stream.receive_some(1024) == b""


async def test_slow_body_is_408(tmp_path):
    async with running(tmp_path, http=HttpSettings(body_timeout_s=0.5)) as srv:
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        async with stream:
            await stream.send_all(
                b"POST /echo HTTP/1.1\r\nHost: a.test\r\nContent-Length: 10\r\n\r\nab"
            )
            with trio.fail_after(5):
                answer = await stream.receive_some(1024)
        assert answer.startswith(b"HTTP/1.1 408")


async def test_idle_workers_are_chosen_by_tenant(server):
    for _ in range(5):
        assert (await server.get("/")).text == "root of a"
        assert (await server.get("/", host="b.test")).text == "root of b"
    assert server.pool.statistics().tenant_switches == 0


async def test_script_output_goes_to_the_server_log(server, caplog):
    caplog.set_level("INFO", logger="sngin.script")
    response = await server.get("/printer")
    assert response.text == "printed"
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sngin.script"]
    assert lines == [
        {"tenant": "a.test", "request": lines[0]["request"], "path": "/printer",
         "line": "hello from the script"}
    ]  # fmt: skip
    assert len(lines[0]["request"]) == 32


async def test_a_killed_scripts_lines_are_kept(tmp_path, caplog):
    caplog.set_level("INFO", logger="sngin.script")
    (tmp_path / "a.test" / "dies").mkdir(parents=True)
    (tmp_path / "a.test" / "dies" / "index.lua").write_text("print('last words') while true do end")
    async with running(tmp_path, cpu_ms=200) as srv:
        assert (await srv.get("/dies")).status_code == 504
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sngin.script"]
    assert [line["line"] for line in lines if "line" in line] == ["last words"]
    assert [line["error"] for line in lines if "error" in line] == [
        "the script exceeded its CPU-time limit of 200 ms"
    ]
