"""http.request end to end: scripts in real workers, the guarded client, local upstreams."""

from __future__ import annotations

import json
import re

import pytest
import trio
import trio.lowlevel
import trio.testing

from sngin.calls.outbound import ShardedTransport, guarded_client, open_outbound
from sngin.config import OutboundSettings
from sngin.tenants.egress import EgressPolicy, is_public
from tests.support import run_call, running, serving, tls_contexts
from tests.upstream import Upstream

LOOPBACK_ONLY = EgressPolicy.parse(["127.0.0.1"])


# --- argument forms ----------------------------------------------------------------------------


async def test_url_string_form(tmp_path, upstream):
    result = await run_call(tmp_path, f"'{upstream.url('/plain?x=1')}'")
    assert result["sc"] == 200
    assert result["up"] == "1"
    seen = json.loads(result["payload"])
    assert (seen["method"], seen["path"], seen["query"]) == ("GET", "/plain", "x=1")
    assert len(seen["headers"]["x-request-id"]) == 32


async def test_table_form_with_method_headers_params_and_body(tmp_path, upstream):
    call = f"""{{url = '{upstream.url("/t?a=1")}', method = 'put',
        headers = {{['X-Thing'] = 'yes', Accept = 'text/plain'}},
        params = {{b = 'two words', c = {{'1', '2'}}}}, body = 'raw body'}}"""
    seen = json.loads((await run_call(tmp_path, call))["payload"])
    assert seen["method"] == "PUT"
    assert seen["query"] == "a=1&b=two%20words&c=1&c=2"
    assert seen["headers"]["x-thing"] == "yes"
    assert seen["body"] == "raw body"


async def test_data_table_is_form_encoded(tmp_path, upstream):
    call = f"{{url = '{upstream.url('/f')}', method = 'POST', data = {{name = 'Jö Doe', n = 5}}}}"
    seen = json.loads((await run_call(tmp_path, call))["payload"])
    assert seen["headers"]["content-type"] == "application/x-www-form-urlencoded"
    assert seen["body"] == "n=5&name=J%C3%B6%20Doe"


async def test_data_string_is_the_body(tmp_path, upstream):
    call = f"{{url = '{upstream.url('/s')}', method = 'POST', data = '{{\"k\": 1}}'}}"
    seen = json.loads((await run_call(tmp_path, call))["payload"])
    assert seen["body"] == '{"k": 1}'
    assert "content-type" not in seen["headers"] or "form" not in seen["headers"]["content-type"]


@pytest.mark.parametrize("auth", ["{'user', 'secret'}", "{username = 'user', password = 'secret'}"])
async def test_basic_auth(tmp_path, upstream, auth):
    call = f"{{url = '{upstream.url('/auth')}', auth = {auth}}}"
    seen = json.loads((await run_call(tmp_path, call))["payload"])
    assert seen["headers"]["authorization"] == "Basic dXNlcjpzZWNyZXQ="


async def test_bad_arguments_are_lua_errors(tmp_path, upstream):
    scripts = {
        "a.test/nourl": "local r = http.request({}) return r",
        "a.test/badmethod": "local r = http.request({url = 'http://x', method = 5}) return r",
        "a.test/badauth": "local r = http.request({url = 'http://x', auth = 'x'}) return r",
    }
    async with serving(tmp_path, scripts) as srv:
        for path, message in [("/nourl", "url must be a string"),
                              ("/badmethod", "method must be a string"),
                              ("/badauth", "auth must be")]:  # fmt: skip
            response = await srv.get(path)
            assert response.status_code == 500
            assert message in response.text
            assert response.text.startswith(f"a.test{path}:1: http.request: ")


async def test_qsencode_and_qsparse(tmp_path):
    script = """
        local q = http.qsparse('a=1&b=x+y&a=2&c=%26')
        return {enc = http.qsencode({z = 'a b', y = {'1', '2'}}), a = q.a, b = q.b, c = q.c}
    """
    async with serving(tmp_path, {"a.test/qs": script}) as srv:
        body = (await srv.get("/qs")).json()
    assert body == {"enc": "y=1&y=2&z=a%20b", "a": ["1", "2"], "b": "x y", "c": "&"}


# --- failures and limits -----------------------------------------------------------------------


async def test_network_failure_is_statuscode_0(tmp_path):
    result = await run_call(tmp_path, "'http://127.0.0.1:9/'")  # nothing listens on port 9
    assert result["sc"] == 0
    assert result["err"].startswith("request failed")


async def test_upstream_error_status_is_returned_as_is(tmp_path, upstream):
    result = await run_call(tmp_path, f"'{upstream.url('/status/503')}'")
    assert result["sc"] == 503


async def test_subrequest_budget_raises(tmp_path, upstream):
    script = f"for i = 1, 4 do http.request('{upstream.url('/b')}') end return 'unreachable'"
    async with serving(tmp_path, {"a.test/budget": script}, max_subrequests=3) as srv:
        response = await srv.get("/budget")
    assert response.status_code == 500
    assert "more than 3 subrequests in one request" in response.text
    assert len(upstream.requests) == 3


async def test_timeout_is_capped_by_the_remaining_wall_time(tmp_path, upstream):
    call = f"{{url = '{upstream.url('/slow?s=10')}', timeout = 30}}"
    result = await run_call(tmp_path, call, timeout_ms=1000)
    assert result["sc"] == 0
    assert re.fullmatch(r"timed out after 0\.\d+ s", result["err"])  # under 1 s, not 30 s


async def test_script_timeout_option(tmp_path, upstream):
    result = await run_call(tmp_path, f"{{url = '{upstream.url('/slow?s=10')}', timeout = 0.2}}")
    assert result["err"] == "timed out after 0.2 s"


async def test_huge_response_is_refused(tmp_path, upstream):
    result = await run_call(tmp_path, f"'{upstream.url('/huge')}'")
    assert result["sc"] == 0
    assert result["err"] == f"response larger than {10 * 1024 * 1024} bytes"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_inflated(tmp_path, upstream, coding):
    result = await run_call(tmp_path, f"'{upstream.url('/' + coding)}'")
    assert result["sc"] == 200
    assert result["payload"] == "inflated " * 1000


async def test_a_body_its_coding_cannot_undo_is_the_scripts_error(tmp_path, upstream):
    result = await run_call(tmp_path, f"'{upstream.url('/bad-gzip')}'")
    assert result["sc"] == 0
    assert result["err"].startswith("request failed: the body is not valid gzip data")


async def test_a_gzip_bomb_stops_at_the_cap_and_is_charged_to_the_request(tmp_path, upstream):
    """An endless compressed body: inflating stops one byte past the 10 MiB cap (reading it to
    its end would never finish), the connection is closed, and the server's CPU shows up in the
    request's Server-Timing and the tenant's metrics."""
    script = f"local r = http.request('{upstream.url('/gzip-bomb')}') return r.err or 'no error'"
    async with serving(tmp_path, {"a.test/bomb": script}) as srv:
        with trio.fail_after(20):  # a safety net: before the fix this read never ended
            response = await srv.get("/bomb")
        assert response.text == f"response larger than {10 * 1024 * 1024} bytes"
        timing = dict(
            part.strip().split(";", 1) for part in response.headers["server-timing"].split(",")
        )
        decode_ms = float(timing["decode"].removeprefix("dur="))
        assert decode_ms > 0
        await trio.testing.wait_all_tasks_blocked()  # the request's metrics are written last
        metrics = srv.deps.observer.metrics.render().decode()
        charged = re.search(r'sngin_decode_cpu_seconds_total\{tenant="a.test"\} (\S+)', metrics)
        assert charged is not None
        assert float(charged.group(1)) == pytest.approx(decode_ms / 1000, rel=0.01)
    upstream.release.set()


async def test_one_tenant_holds_at_most_its_share_of_outbound_connections(tmp_path, upstream):
    """Four connections, half of them per tenant: a's four slow calls hold two, and b's call is
    answered while they still wait (with one pool for everyone, b's call timed out). Five
    workers: a's four requests, however they spread, leave one for b."""
    scripts = {
        "a.test/hold": f"return tostring(http.request('{upstream.url('/slow?s=60')}').statuscode)",
        "b.test/fast": f"local r = http.request{{url = '{upstream.url('/')}', timeout = 3}}"
        " return r.err or tostring(r.statuscode)",
    }
    shares = OutboundSettings(connections=4, tenant_share=0.5)
    async with (
        serving(tmp_path, scripts, outbound_settings=shares, timeout_ms=20_000, workers=5) as srv,
        trio.open_nursery() as nursery,
    ):
        held = []

        async def hold() -> None:
            held.append((await srv.get("/hold", timeout=30)).text)

        for _ in range(4):
            nursery.start_soon(hold)
        await trio.to_thread.run_sync(upstream.wait_for, "/slow", 2)
        outbound = srv.deps.outbound
        while outbound.shares.waiting("a.test") < 2:  # a's other two calls reach their turn
            await trio.testing.wait_all_tasks_blocked()
        assert outbound.shares.held("a.test") == 2
        fast = await srv.get("/fast", host="b.test")
        assert fast.text == "200"
        assert sum(r["path"] == "/slow" for r in upstream.requests) == 2
        assert held == []  # a's calls are all still waiting
        upstream.release.set()
    assert held == ["200"] * 4
    assert outbound.shares.tenants() == 0


async def test_a_call_that_waits_too_long_for_its_share_says_so(tmp_path, upstream):
    scripts = {
        "a.test/hold": f"return tostring(http.request('{upstream.url('/slow?s=60')}').statuscode)",
        "a.test/late": f"return http.request{{url = '{upstream.url('/')}', timeout = 0.3}}.err",
    }
    shares = OutboundSettings(connections=2, tenant_share=0.5)
    async with (
        serving(tmp_path, scripts, outbound_settings=shares, timeout_ms=20_000, workers=3) as srv,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(srv.get, "/hold")
        await trio.to_thread.run_sync(upstream.wait_for, "/slow", 1)
        late = await srv.get("/late")
        assert late.text == (
            "timed out after 0.3 s waiting for a connection: this site already uses its share of"
            " 1 outbound connection"
        )
        upstream.release.set()


async def test_answer_headers_look_up_in_any_case_and_iterate_in_title_case(tmp_path, upstream):
    script = f"""
        local r = http.request('{upstream.url("/")}')
        local names = {{}}
        for name in pairs(r.headers) do names[#names + 1] = name end
        table.sort(names)
        return json.stringify({{up = r.headers['X-UP'], type = r.headers['content-type'],
                                names = names}})
    """
    async with serving(tmp_path, {"a.test/headers": script}) as srv:
        answer = (await srv.get("/headers")).json()
    assert answer["up"] == "1"
    assert answer["type"] == "application/json"
    assert "Content-Type" in answer["names"]
    assert "X-Up" in answer["names"]


async def test_redirects_are_followed_up_to_five(tmp_path, upstream):
    target = upstream.url("/landed")
    for _ in range(5):
        target = upstream.url(f"/redirect?to={target}")
    result = await run_call(tmp_path, f"'{target}'")
    assert json.loads(result["payload"])["path"] == "/landed"
    result = await run_call(tmp_path, f"'{upstream.url('/redirect?to=' + target)}'")
    assert result["err"] == "more than 5 redirects"


# --- the egress guard --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1", "127.1", "2130706433", "0x7f.1", "0177.0.0.1", "localhost", "[::1]",
        "[::ffff:127.0.0.1]", "169.254.169.254", "10.0.0.1", "172.16.0.1", "192.168.1.1",
        "100.64.0.1", "0.0.0.0", "224.0.0.1", "[fe80::1]", "[fc00::1]", "[::]",
        "[2002:7f00:1::]", "[64:ff9b::a00:1]",
    ],
)  # fmt: skip
async def test_private_destinations_are_refused(tmp_path, host):
    result = await run_call(tmp_path, f"'http://{host}:9/'", policy=EgressPolicy())
    assert result["sc"] == 0
    # Refused by the guard, or (for spellings httpx does not accept) before any connection.
    assert "is not allowed" in result["err"] or result["err"].startswith("invalid URL")


@pytest.mark.parametrize("url", ["ftp://127.0.0.1/", "file:///etc/passwd", "gopher://x/"])
async def test_only_http_and_https(tmp_path, url):
    result = await run_call(tmp_path, f"'{url}'")
    assert result["err"] == "only http and https URLs are allowed"


async def test_redirect_into_a_forbidden_address_is_refused(tmp_path, upstream):
    forbidden = Upstream(host="127.0.0.2")  # a loopback address the policy does not open
    try:
        url = upstream.url(f"/redirect?to={forbidden.url('/secret')}")
        result = await run_call(tmp_path, f"'{url}'")
    finally:
        forbidden.close()
    assert result["sc"] == 0
    assert "127.0.0.2" in result["err"]
    assert forbidden.requests == []


async def test_connection_goes_to_the_checked_address_not_a_rebound_one(tmp_path, upstream):
    forbidden = Upstream(host="127.0.0.2")
    answers = iter([["127.0.0.1"], ["127.0.0.2"], ["127.0.0.1"], ["127.0.0.2"]])

    async def rebinding(host: str, port: int) -> list[str]:
        return next(answers)

    try:
        results = [
            await run_call(tmp_path, f"'http://rebind.test:{upstream.port}/r'", resolver=rebinding)
            for _ in range(2)
        ]
    finally:
        forbidden.close()
    assert results[0]["sc"] == 200
    assert json.loads(results[0]["payload"])["headers"]["host"] == f"rebind.test:{upstream.port}"
    assert forbidden.requests == []


async def test_allow_list_opens_named_hosts(tmp_path, upstream):
    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    url = f"'http://api.internal:{upstream.port}/n'"
    refused = await run_call(tmp_path, url, policy=EgressPolicy(), resolver=resolve)
    assert "not allowed" in refused["err"]
    opened = await run_call(
        tmp_path, url, policy=EgressPolicy.parse(["api.internal"]), resolver=resolve
    )
    assert opened["sc"] == 200


def test_public_addresses():
    import ipaddress

    assert is_public(ipaddress.ip_address("93.184.216.34"))
    assert is_public(ipaddress.ip_address("2606:2800:220:1::1"))
    assert not is_public(ipaddress.ip_address("::ffff:10.0.0.1"))


# --- TLS -----------------------------------------------------------------------------------------


async def test_https_with_a_trusted_certificate(tmp_path):
    server_context, client_context = tls_contexts("127.0.0.1")
    secure = Upstream(ssl_context=server_context)
    try:
        trusted = await run_call(tmp_path, f"'{secure.url('/tls')}'", ssl_context=client_context)
        untrusted = await run_call(tmp_path, f"'{secure.url('/tls')}'")
    finally:
        secure.close()
    assert trusted["sc"] == 200
    assert untrusted["sc"] == 0
    assert "CERTIFICATE_VERIFY_FAILED" in untrusted["err"]


# --- interleaving and the tenant's own coroutines ------------------------------------------------


async def test_worker_serves_other_requests_while_one_waits(tmp_path, upstream):
    scripts = {
        "a.test/wait": f"return http.request('{upstream.url('/slow?s=10')}').content",
        "a.test/quick": "return 'quick'",
    }
    async with (
        serving(tmp_path, scripts, workers=1, pool={"size": 1}) as srv,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(srv.get, "/wait")
        while not upstream.requests:
            await trio.lowlevel.checkpoint()
        # The only worker holds /wait, parked on its call; it still answers /quick.
        assert (await srv.get("/quick")).text == "quick"
        assert srv.pool.statistics().workers[0].in_flight == 1
        upstream.release.set()


async def test_tenant_coroutines_keep_working(tmp_path, upstream):
    script = f"""
        local gen = coroutine.wrap(function()
          for i = 1, 3 do coroutine.yield(i) end
        end)
        local seen = {{gen(), gen(), gen()}}
        -- a platform call from inside the tenant's own coroutine and inside pcall
        local co = coroutine.create(function(x)
          local ok, r = pcall(http.request, '{upstream.url("/co")}')
          local y = coroutine.yield(x + 1)
          return ok and r.statuscode, y
        end)
        local ok1, first = coroutine.resume(co, 10)
        local ok2, status, y = coroutine.resume(co, 'back')
        local caught = {{pcall(function() coroutine.yield(1) end)}}
        return {{seen = seen, first = first, got = status, y = y,
                 status_of_co = coroutine.status(co), top_yield = caught[2]}}
    """
    async with serving(tmp_path, {"a.test/co": script}) as srv:
        body = (await srv.get("/co")).json()
    assert body["seen"] == [1, 2, 3]
    assert (body["first"], body["got"], body["y"]) == (11, 200, "back")
    assert body["status_of_co"] == "dead"
    assert "attempt to yield from outside a coroutine" in body["top_yield"]


async def test_yield_inside_gsub_callback_is_a_clear_error(tmp_path, upstream):
    script = f"return (('x'):gsub('x', function() return http.request('{upstream.url()}') end))"
    async with serving(tmp_path, {"a.test/gsub": script}) as srv:
        response = await srv.get("/gsub")
    assert response.status_code == 500
    assert "yield across" in response.text


async def test_without_an_outbound_client_calls_raise(tmp_path):
    async with running(tmp_path) as srv:
        (tmp_path / "a.test" / "nocall").mkdir()
        (tmp_path / "a.test" / "nocall" / "index.lua").write_text(
            "return http.request('http://example.com/')"
        )
        response = await srv.get("/nocall")
    assert response.status_code == 500
    assert "http.request: not available here" in response.text


async def test_busy_tenant_waits_then_gets_503_while_others_are_served(tmp_path, upstream):
    scripts = {
        "a.test/wait": f"return http.request('{upstream.url('/slow?s=10')}').content",
    }
    pool = {"tenant_concurrency": 1, "queue_timeout_s": 0.3}
    async with serving(tmp_path, scripts, pool=pool) as srv, trio.open_nursery() as nursery:
        nursery.start_soon(srv.get, "/wait")
        while not upstream.requests:
            await trio.lowlevel.checkpoint()
        refused = await srv.get("/wait")
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert (await srv.get("/", host="b.test")).text == "root of b"
        upstream.release.set()
    assert srv.pool.statistics().tenants["a.test"].queue_waits == 1


async def test_cpu_kill_is_blamed_on_the_running_request_and_fails_its_sibling(tmp_path, upstream):
    scripts = {
        "a.test/wait": f"return http.request('{upstream.url('/slow?s=10')}').content",
        "a.test/spin": "while true do end",
    }
    results = {}
    async with serving(tmp_path, scripts, pool={"size": 1}, cpu_ms=300) as srv:

        async def wait():
            results["wait"] = await srv.get("/wait")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(wait)
            while not upstream.requests:
                await trio.lowlevel.checkpoint()
            results["spin"] = await srv.get("/spin")
        upstream.release.set()
        stats = srv.pool.statistics().tenants["a.test"]
    assert results["spin"].status_code == 504
    assert "CPU-time limit of 300 ms" in results["spin"].text
    assert results["wait"].status_code == 502
    assert results["wait"].text == (
        "the request was stopped because another request on its worker exceeded its "
        "CPU-time limit\n"
    )
    assert stats.cpu_kills == 1  # one kill, one strike


async def test_cpu_budget_spans_all_of_a_requests_steps(tmp_path, upstream):
    # Each stretch of Lua between calls stays under the budget; together they exceed it.
    burn = "local t = os.clock() while os.clock() - t < 0.15 do end"
    script = f"""
        for i = 1, 4 do
          {burn}
          http.request('{upstream.url("/step")}')
        end
        return 'finished'
    """
    async with serving(tmp_path, {"a.test/steps": script}, cpu_ms=400) as srv:
        response = await srv.get("/steps")
    assert response.status_code == 504
    assert "CPU-time limit of 400 ms" in response.text
    assert len(upstream.requests) == 2


async def test_per_rule_clients_are_bounded_and_closed():
    from sngin.tenants.egress import TenantEgress

    async with open_outbound(LOOPBACK_ONLY) as outbound:
        outbound.MAX_TENANT_CLIENTS = 2  # type: ignore[misc]
        rules = [TenantEgress(EgressPolicy.parse([f"10.0.0.{i}"])) for i in range(3)]
        first = await outbound.client_for(rules[0])
        assert await outbound.client_for(rules[0]) is first
        await outbound.client_for(rules[1])
        await outbound.client_for(rules[2])  # evicts rules[0]'s client
        assert first.is_closed
        assert not (await outbound.client_for(rules[1])).is_closed


async def test_a_client_spread_over_pools_holds_as_many_connections_as_allowed_and_no_more(
    upstream,
):
    """40 connections allowed: two pools of 20 taken in turn (one pool's per-request pass over
    every connection was the server's largest cost with a thousand calls in flight). 41 calls
    to a slow upstream: 40 reach it at once, the 41st waits for a connection, all answer."""
    policy = EgressPolicy.parse(["127.0.0.1"])
    client = guarded_client(policy, max_connections=40)
    assert isinstance(client._transport, ShardedTransport)
    statuses: list[int] = []

    async def call() -> None:
        statuses.append((await client.get(upstream.url("/slow?s=60"), timeout=30)).status_code)

    async with client, trio.open_nursery() as nursery:
        for _ in range(41):
            nursery.start_soon(call)
        await trio.to_thread.run_sync(upstream.wait_for, "/slow", 40)
        await trio.testing.wait_all_tasks_blocked()  # the 41st queued in its pool
        pools = [transport._pool for transport in client._transport._transports]
        assert [len(pool.connections) for pool in pools] == [20, 20]
        assert sum(len(pool._requests) for pool in pools) == 41
        upstream.release.set()
    assert statuses == [200] * 41
