"""Hostile scripts and clients against the real server: none of them may end it."""

from __future__ import annotations

import pytest
import trio

from tests.support import add_sites, running


async def still_serving(srv) -> None:
    """Another tenant is answered: the server survived."""
    response = await srv.get("/", host="b.test")
    assert (response.status_code, response.text) == (200, "root of b")


@pytest.mark.parametrize("status", [100, 101, 102, 103, 199, 600, 99])
async def test_a_status_outside_200_to_599_is_a_500_naming_the_rule(tmp_path, status):
    add_sites(tmp_path, {"a.test/status": f"return {status}, 'x'"})
    async with running(tmp_path) as srv:
        response = await srv.get("/status")
        assert response.status_code == 500
        assert f"status {status} is not an integer from 200 to 599" in response.text
        await still_serving(srv)


@pytest.mark.parametrize("byte", ["\\11", "\\12", "\\27", "\\127", "\\1", "\\r", "\\n", "\\0"])
async def test_header_values_with_control_bytes_are_refused_before_sending(tmp_path, byte):
    add_sites(tmp_path, {"a.test/ctl": f"return 'x', {{['X-Ctl'] = 'a{byte}b'}}"})
    async with running(tmp_path) as srv:
        response = await srv.get("/ctl")
        assert response.status_code == 500
        assert "header X-Ctl contains a control character" in response.text
        await still_serving(srv)


async def test_a_tab_inside_a_header_value_is_fine(tmp_path):
    add_sites(tmp_path, {"a.test/tab": "return 'x', {['X-Tab'] = 'a\\tb'}"})
    async with running(tmp_path) as srv:
        response = await srv.get("/tab")
        assert (response.status_code, response.headers["x-tab"]) == (200, "a\tb")


async def test_the_servers_own_headers_win_over_the_scripts(tmp_path):
    script = """return 'x', {['X-Request-Id'] = 'forged', ['Server-Timing'] = 'forged',
                             Date = 'forged', ['X-Kept'] = 'kept'}"""
    add_sites(tmp_path, {"a.test/own": script})
    async with running(tmp_path) as srv:
        response = await srv.get("/own", headers={"X-Request-Id": "client-id-1"})
        assert response.status_code == 200
        assert response.headers.get_list("x-request-id") == ["client-id-1"]
        assert "forged" not in response.headers.get_list("server-timing")
        assert len(response.headers.get_list("server-timing")) == 1
        assert response.headers.get_list("date") != ["forged"]
        assert response.headers["x-kept"] == "kept"


async def test_an_error_while_sending_ends_only_its_connection():
    """The backstop under the response checks: an app whose response h11 refuses (a 101 with
    no upgrade) loses that connection; the listener keeps serving the next one."""
    from functools import partial

    import httpx
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from sngin.edge.connection_guard import contain_connection_errors

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        status = 101 if scope["path"] == "/bad" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    contain_connection_errors()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.HTTPError):
                    await client.get(binds[0] + "/bad")
                response = await client.get(binds[0] + "/good")
                assert (response.status_code, response.text) == (200, "ok")
            stop.set()


# --- platform calls: a hostile argument is the calling script's error, never the server's ------

CALLS = {
    "method": ("{url = U, method = 'g\\233t'}", "method must be an HTTP token"),
    "nan": ("{url = U, timeout = 0/0}", "timeout must be a positive number"),
    "inf": ("{url = U, timeout = math.huge}", "timeout must be a positive number"),
    "name": ("{url = U, headers = {['\\233x'] = 'v'}}", "is not an HTTP token"),
    "space": ("{url = U, headers = {['a b'] = 'v'}}", "is not an HTTP token"),
    "value": ("{url = U, headers = {X = 'a\\r\\nInjected: 1'}}", "contains a control character"),
    "empty_label": ("'http://a..com/'", "cannot resolve"),
    "long_label": ("'http://' .. string.rep('a', 64) .. '.com/'", "cannot resolve"),
    "bad_alabel": ("'http://xn--zz.com/'", "invalid URL"),
    "huge_url": ("'http://x.test/' .. string.rep('a', 70000)", "url longer than"),
    "ctl_url": ("'http://x.test/\\0'", "control character"),
}


@pytest.mark.parametrize("case", sorted(CALLS))
async def test_hostile_http_request_arguments_are_the_scripts_error(tmp_path, upstream, case):
    from sngin.calls.outbound import open_outbound
    from sngin.tenants.egress import EgressPolicy

    call, message = CALLS[case]
    script = f"""
        local U = '{upstream.url("/plain")}'
        local ok, r = pcall(http.request, {call})
        if not ok then return 'error: ' .. tostring(r) end
        return 'status ' .. tostring(r.statuscode) .. ': ' .. tostring(r.err)
    """
    add_sites(tmp_path, {"a.test/call": script})
    async with (
        open_outbound(EgressPolicy.parse(["127.0.0.1"])) as outbound,
        running(tmp_path, outbound=outbound) as srv,
    ):
        response = await srv.get("/call")
        assert response.status_code == 200, response.text
        assert message in response.text
        await still_serving(srv)


async def test_an_anonymous_client_cannot_kill_the_server_through_a_script(tmp_path):
    from sngin.calls.outbound import open_outbound
    from sngin.tenants.egress import EgressPolicy

    add_sites(tmp_path, {"a.test/proxy": "return http.request(request.query.url).err or 'ok'"})
    async with (
        open_outbound(EgressPolicy.parse(["127.0.0.1"])) as outbound,
        running(tmp_path, outbound=outbound) as srv,
    ):
        for url in ["http://a..com/", "http://xn--zz.com/", "gopher://x/", "http://[::1/"]:
            response = await srv.get("/proxy", params={"url": url})
            assert response.status_code in (200, 500), response.text
            await still_serving(srv)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("string.rep('a', 300)", "longer than 200 bytes"),
        ("string.rep('a', 70000)", "module name longer than 1024 bytes"),
        ("'lib.' .. string.rep('b', 250)", "longer than 200 bytes"),
    ],
)
async def test_hostile_module_names_are_the_scripts_error(tmp_path, name, message):
    add_sites(tmp_path, {"a.test/req": f"local ok, e = pcall(require, {name}) return tostring(e)"})
    async with running(tmp_path) as srv:
        response = await srv.get("/req")
        assert response.status_code == 200, response.text
        assert message in response.text
        await still_serving(srv)


async def test_a_failing_platform_call_is_an_ordinary_lua_error(tmp_path, caplog):
    """The catch-all at the boundary: whatever escapes the code answering a call becomes the
    script's error (pcall-able), its traceback is logged once, and the server goes on."""
    from sngin.calls.outbound import Outbound, guarded_client
    from sngin.tenants.egress import EgressPolicy

    class Exploding(Outbound):
        async def fetch(self, call, **kw):
            raise RuntimeError("boom")

    script = "local ok, e = pcall(http.request, 'http://x.test/') return tostring(e)"
    add_sites(tmp_path, {"a.test/boom": script})
    async with (
        guarded_client(EgressPolicy()) as client,
        running(tmp_path, outbound=Exploding(client)) as srv,
    ):
        response = await srv.get("/boom")
        assert response.status_code == 200
        assert "the server could not complete the call" in response.text
        await still_serving(srv)
    failures = [r for r in caplog.records if "platform call of a.test failed" in r.getMessage()]
    assert len(failures) == 1
    assert failures[0].exc_info[0] is RuntimeError


async def test_forged_calls_from_a_worker_are_refused_by_the_server(tmp_path):
    """A compromised worker can send what the prelude never would: the server checks again."""
    import math

    from sandbox.protocol import Call, HttpCall, ModuleCall
    from sngin.calls.outbound import Outbound, guarded_client
    from sngin.calls.request_calls import PlatformServices, RequestCalls
    from sngin.code.local_store import LocalStore
    from sngin.tenants.egress import EgressPolicy

    async with guarded_client(EgressPolicy()) as client:
        services = PlatformServices(
            outbound=Outbound(client), store=LocalStore(tmp_path), github=LocalStore(tmp_path)
        )
        calls = RequestCalls(
            services, tenant="a.test", deadline=math.inf, request_id="r", max_subrequests=50
        )
        forged = [
            (HttpCall(url="http://x.test/", timeout_s=math.nan), "timeout"),
            (HttpCall(url="http://x.test/", timeout_s=-1.0), "timeout"),
            (HttpCall(url="http://x.test/", method="G\u00e9T"), "method"),
            (HttpCall(url="http://x.test/", headers=[("\u00e9", b"v")]), "header name"),
            (HttpCall(url="http://x.test/" + "a" * 70_000), "url longer"),
        ]
        for http_call, fragment in forged:
            result = await calls(Call(id=1, call_id=1, request=http_call))
            assert result.error is not None
            assert fragment in result.error
        for name in ["tenant:" + "a" * 300 + ".lua", "github:u/r/m/" + "a" * 70_000 + ".lua"]:
            result = await calls(Call(id=1, call_id=1, request=ModuleCall(search=name)))
            assert result.error is not None
            assert "longer than" in result.error


# --- S3 outages ----------------------------------------------------------------------------------


async def test_a_node_restarted_during_an_outage_serves_tenants_without_a_config(
    proxy, bucket, tmp_path
):
    """'No _sngin.json' is mirrored too: after a restart with S3 down, a tenant without one is
    served from the mirror instead of failing its configuration lookup with a 502."""
    from tests.support import node

    bucket.put("a.test/hello/index.lua", "return 'hello from the mirror'")
    sites, mirror = tmp_path / "sites", tmp_path / "mirror"
    async with (
        node(proxy, bucket, mirror) as cache,
        running(sites, store=cache, tenant_configs=True) as srv,
    ):
        response = await srv.get("/hello")
        assert (response.status_code, response.text) == (200, "hello from the mirror")
    proxy.refuse()
    async with (
        node(proxy, bucket, mirror) as cache,
        running(sites, store=cache, tenant_configs=True) as srv,
    ):
        response = await srv.get("/hello")
        assert (response.status_code, response.text) == (200, "hello from the mirror")
        assert (await srv.get("/unknown")).status_code == 502  # never seen: nothing to go on


AUTH = {"Authorization": "Bearer test-admin-token-0123456789"}


async def test_a_get_object_only_policy_is_detected_and_reported(proxy, bucket, tmp_path, caplog):
    """Without s3:ListBucket, S3 answers 403 for a key that does not exist: the probe says
    so in one log line and in readiness."""
    from sngin.server import probe_once
    from tests.support import code_cache

    proxy.fail_always("get_object_only")
    async with (
        code_cache(proxy, bucket) as cache,
        running(tmp_path, store=cache, admin_token=AUTH["Authorization"][7:]) as srv,
    ):
        await probe_once(srv.deps)
        await probe_once(srv.deps)
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
    assert ready.status_code == 503
    reason = ready.json()["reason"]
    assert "403 AccessDenied for a key that does not exist" in reason
    assert "s3:ListBucket" in reason
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not ready")]
    assert lines == [f"not ready: {reason}"]  # once, not once per probe


async def test_a_missing_bucket_is_loud_and_not_ready(proxy, tmp_path, caplog):
    from sngin.server import probe_once
    from tests.support import code_cache

    class NoBucket:
        name = "sngin-does-not-exist"

    async with (
        code_cache(proxy, NoBucket()) as cache,
        running(tmp_path, store=cache, admin_token=AUTH["Authorization"][7:]) as srv,
    ):
        await probe_once(srv.deps)
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
        response = await srv.get("/x", host="a.test")
    assert ready.status_code == 503
    assert "S3 bucket sngin-does-not-exist does not exist" in ready.json()["reason"]
    assert response.status_code == 502  # not a 404: the bucket, not the script, is missing
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert any("does not exist (NoSuchBucket)" in line for line in errors)


async def test_a_vanished_bucket_never_turns_a_cached_script_into_a_404(
    proxy, bucket, s3_admin, tmp_path
):
    """`$cb` asks S3 at once; a NoSuchBucket answer keeps the cached copy and its mirror file."""
    from tests.support import node

    bucket.put("a.test/hello/index.lua", "return 'still here'")
    mirror = tmp_path / "mirror"
    async with node(proxy, bucket, mirror) as cache, running(tmp_path / "s", store=cache) as srv:
        assert (await srv.get("/hello")).text == "still here"
        s3_admin.delete_object(Bucket=bucket.name, Key="a.test/hello/index.lua")
        s3_admin.delete_bucket(Bucket=bucket.name)
        response = await srv.get("/hello", params={"$cb": "1"})
        assert (response.status_code, response.text) == (200, "still here")
    proxy.refuse()
    async with node(proxy, bucket, mirror) as cache, running(tmp_path / "s", store=cache) as srv:
        response = await srv.get("/hello")
        assert (response.status_code, response.text) == (200, "still here")


# --- HTTP hygiene ------------------------------------------------------------------------------


async def test_content_length_with_transfer_encoding_is_400_and_closes(tmp_path):
    smuggled = (
        b"POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
        b"GET /echo HTTP/1.1\r\nHost: a.test\r\n\r\n"
    )
    async with running(tmp_path) as srv:
        with trio.fail_after(3):  # closed at once, not after the keep-alive timeout
            answer = await srv.raw(smuggled)
        await still_serving(srv)
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert answer.count(b"HTTP/1.1 ") == 1  # the smuggled request was never served
    assert b"both Content-Length and Transfer-Encoding" in answer


@pytest.mark.parametrize("target", [b"a.test:443", b"/"])
async def test_connect_is_405_without_tracebacks(tmp_path, caplog, target):
    async with running(tmp_path) as srv:
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        async with stream:
            await stream.send_all(b"CONNECT " + target + b" HTTP/1.1\r\nHost: a.test\r\n\r\n")
            answer = await stream.receive_some(65536)
        await still_serving(srv)
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert b"\r\nallow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n" in answer
    assert not [r for r in caplog.records if r.exc_info]


async def test_http2_bodies_without_content_length_are_read(tmp_path):
    import httpx

    async def chunks():
        for part in (b"hello ", b"over ", b"h2"):
            yield part

    async with running(tmp_path) as srv, httpx.AsyncClient(http1=False, http2=True) as h2:
        response = await h2.post(srv.url + "/size", headers={"Host": "a.test"}, content=chunks())
        assert response.http_version == "HTTP/2"
        assert "content-length" not in response.request.headers
        assert (response.status_code, response.text) == (200, "13 er h2")


async def test_a_path_no_file_or_object_can_have_is_a_404(tmp_path, proxy, bucket, caplog):
    """A 300-byte path segment (over the filesystem's 255) or a key over S3's 1,024 bytes is
    no script: a 404, not a 500 or 502 with a traceback."""
    from tests.support import code_cache

    long_segment = "/" + "a" * 300
    long_key = "/" + "/".join(["b" * 200] * 6)
    async with running(tmp_path / "folder") as srv:
        assert (await srv.get(long_segment)).status_code == 404
        assert (await srv.get(long_key)).status_code == 404
    async with code_cache(proxy, bucket) as cache, running(tmp_path / "s3", store=cache) as srv:
        assert (await srv.get(long_segment)).status_code == 404
        assert (await srv.get(long_key)).status_code == 404
    assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
