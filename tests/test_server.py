"""End to end: a real Hypercorn listener on loopback with real worker subprocesses."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
import trio.lowlevel

from sngin.codestore.local import LocalStore
from sngin.config import Bind, HttpSettings, Limits, PoolSettings, Settings
from sngin.deps import Deps
from sngin.limits import TenantLimits
from sngin.observe import Observer
from sngin.pool import open_pool
from sngin.server import pool_config, serve_app
from sngin.tenant_config import TenantConfigs

if TYPE_CHECKING:
    from pathlib import Path

SITES = {
    "a.test": "return 'root of a'",
    "a.test/echo": """
        return {
          method = request.method, path = request.path, q = request.query.q,
          ua = request.headers['user-agent'], payload = request.body, host = request.host,
          remote = request.remote_addr, scheme = request.scheme, form = request.form,
        }
    """,
    "a.test/forms": """
        return {
          get = function() return 'got' end,
          post = function() return 201, 'posted', {['X-Made'] = 'yes'} end,
        }
    """,
    "a.test/response": (
        "return {status = 418, body = 'teapot', headers = {['Set-Cookie'] = {'a=1', 'b=2'}}}"
    ),
    "a.test/err": "local t = nil\nreturn t.x",
    "a.test/size": "return tostring(#request.body) .. ' ' .. request.body:sub(-5)",
    "a.test/framing": "return 'hello', {['Content-Length'] = '3', Connection = 'close'}",
    "a.test/bad": "return 'x', {['X-Bad'] = 'a\\r\\nb'}",
    "a.test/spin": "while true do end",
    "a.test/busy": "local t = os.clock() while os.clock() - t < 0.3 do end return 'finished'",
    "a.test/printer": "print('hello from the script') return 'printed'",
    "a.test/globals": "local before = tostring(marker) marker = 'a' return before",
    "b.test": "return 'root of b'",
    "b.test/globals": "local before = tostring(marker) marker = 'b' return before",
}


async def start_busy(srv, nursery: trio.Nursery, path: str, results: dict) -> list[int]:
    """Start GET `path` in the background (its response lands in results[path]) and return once
    a worker is running it: the busy workers' pids."""

    async def request():
        results[path] = await srv.get(path)

    nursery.start_soon(request)
    while not srv.pool.busy_pids():
        await trio.lowlevel.checkpoint()
    return srv.pool.busy_pids()


async def deadline(seconds: float, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await trio.sleep(seconds)
        raise TimeoutError(f"test still running after {seconds} s")


def write_sites(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for key, source in SITES.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(source)


class Server:
    def __init__(self, url: str, pool, client: httpx.AsyncClient, stop: trio.Event) -> None:
        self.stop = stop
        self.url = url
        self.pool = pool
        self.client = client
        self.port = int(url.rsplit(":", 1)[1])

    async def get(self, path: str, host: str = "a.test", **kw) -> httpx.Response:
        return await self.client.get(
            self.url + path, headers={"Host": host, **kw.pop("headers", {})}, **kw
        )

    async def raw(self, request: bytes) -> bytes:
        """Send bytes as they are (httpx normalises dot segments) and read the whole answer."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        return data


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    workers: int = 2,
    timeout_ms: int = 5000,
    trusted_proxies=(),
    http: HttpSettings | None = None,
    store=None,
    admin_token: str | None = None,
    cpu_ms: int = 2000,
    memory_mb: int = 128,
    pool: dict | None = None,
    outbound=None,
    github=None,
    tenant_configs: bool = False,
    settings_changes: dict | None = None,
    max_subrequests: int = 50,
    access_log=None,
    **limits,
):
    write_sites(tmp_path)
    settings = Settings(
        bind=Bind(host="127.0.0.1", port=0),
        code_dir=tmp_path,
        pool=PoolSettings(size=workers),
        limits=Limits(timeout_ms=timeout_ms, max_subrequests=max_subrequests, **limits),
        trusted_proxies=trusted_proxies,
        http=http or HttpSettings(),
        admin_token=admin_token,
    )
    settings = replace(settings, **(settings_changes or {}))
    stop = trio.Event()
    config = replace(pool_config(settings), **(pool or {}))
    limits = TenantLimits(timeout_ms=timeout_ms, cpu_ms=cpu_ms, memory_mb=memory_mb)

    def limits_for(tenant: str) -> TenantLimits:
        return limits

    async with trio.open_nursery() as nursery, open_pool(config, limits_for) as pool:
        # A deadline for the whole test, also when `running` is entered by a fixture (a
        # fixture's cancel scope would not cover the test's task; a crashing task does).
        watchdog = await nursery.start(deadline, 30)
        store = store or LocalStore(tmp_path)
        deps = Deps(
            settings=settings,
            store=store,
            pool=pool,
            outbound=outbound,
            limits_for=limits_for,
            github=github,
            configs=TenantConfigs(store, settings) if tenant_configs else None,
            observer=Observer(access_stream=access_log),
        )
        binds = await nursery.start(
            lambda task_status: serve_app(deps, shutdown_trigger=stop.wait, task_status=task_status)
        )
        async with httpx.AsyncClient() as client:
            server = Server(binds[0], pool, client, stop)
            server.deps = deps
            server.binds = binds
            yield server
        stop.set()
        watchdog.cancel()


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


@pytest.mark.parametrize("host", ["127.0.0.1", "[::1]", "a..test", "a_b.test", "bad host", ""])
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
