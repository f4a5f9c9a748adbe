"""The admin API and observability: auth, stats, metrics, the live tail, readiness, timing."""

from __future__ import annotations

import io
import json
import re
import time

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from sngin.admin.stats import observe_gauges, worst_lag
from sngin.observe.live_tails import TAIL_BUFFER, LogHub
from sngin.observe.observer import Metrics
from sngin.server import probe_once
from tests.support import TOKEN, code_cache, running

AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENDPOINTS = [
    ("GET", "/__sngin/ready"),
    ("GET", "/__sngin/stats"),
    ("GET", "/__sngin/metrics"),
    ("GET", "/__sngin/logs?host=a.test"),
    ("POST", "/__sngin/purge"),
    ("GET", "/__sngin/quarantine"),
    ("DELETE", "/__sngin/quarantine/a.test"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
async def test_every_admin_endpoint_needs_the_token(tmp_path, method, path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        for headers, expected in (({}, 401), ({"Authorization": "Bearer nope"}, 401),
                                  ({"Authorization": f"Basic {TOKEN}"}, 401)):  # fmt: skip
            response = await srv.client.request(method, srv.url + path, headers=headers)
            assert response.status_code == expected
        if path.startswith("/__sngin/logs"):
            async with srv.client.stream(method, srv.url + path, headers=AUTH) as response:
                assert response.status_code == 200
                assert response.headers["content-type"].startswith("text/event-stream")
        else:
            body = {"host": "a.test", "path": "/"} if method == "POST" else None
            response = await srv.client.request(method, srv.url + path, headers=AUTH, json=body)
            assert response.status_code == 200
        assert (await srv.get("/__sngin/health")).status_code == 200  # health stays open


async def test_stats_schema(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        await srv.get("/")
        await srv.get("/err")
        stats = (await srv.client.get(srv.url + "/__sngin/stats", headers=AUTH)).json()
    pool = stats["pool"]
    assert pool["live"] == 2
    assert {"pid", "tenant", "state", "requests", "in_flight", "rss_bytes", "age_s"} <= set(
        pool["workers"][0]
    )
    tenant = pool["tenants"]["a.test"]
    assert (tenant["requests"], tenant["status_2xx"], tenant["status_5xx"]) == (2, 1, 1)
    assert {"wall_kills", "cpu_kills", "memory_kills", "crashes", "quarantines", "cpu_ms",
            "wall_ms", "queue_waits"} <= set(tenant)  # fmt: skip


async def test_stats_include_the_code_cache(proxy, bucket, tmp_path):
    bucket.put("a.test/index.lua", "return 'x'")
    async with (
        code_cache(proxy, bucket) as cache,
        running(tmp_path, store=cache, admin_token=TOKEN) as srv,
    ):
        await srv.get("/")
        await srv.get("/")
        stats = (await srv.client.get(srv.url + "/__sngin/stats", headers=AUTH)).json()
    assert {"entries", "bytes", "hits", "misses", "revalidated_304", "revalidated_200",
            "revalidated_404", "stale_served", "store_errors", "purges",
            "mirror_bytes"} <= set(stats["code_cache"])  # fmt: skip
    assert (stats["code_cache"]["misses"], stats["code_cache"]["hits"]) == (1, 1)


async def test_metrics_parse(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        await srv.get("/")
        await srv.get("/", host="b.test")
        text = (await srv.client.get(srv.url + "/__sngin/metrics", headers=AUTH)).text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    samples = [s for s in families["sngin_requests"].samples if s.name == "sngin_requests_total"]
    assert {(s.labels["tenant"], s.labels["status"], s.value) for s in samples} == {
        ("a.test", "2xx", 1.0), ("b.test", "2xx", 1.0)
    }  # fmt: skip
    assert families["sngin_workers"].samples[0].value == 2


def test_tenant_labels_are_capped():
    metrics = Metrics(tenant_limit=100)
    for i in range(1000):
        metrics.request_finished(f"t{i}.test", 200, 0.01, 0.001, None)
    families = list(text_string_to_metric_families(metrics.render().decode()))
    requests = next(f for f in families if f.name == "sngin_requests")
    totals = {s.labels["tenant"]: s.value for s in requests.samples if s.name.endswith("_total")}
    assert len(totals) == 101
    assert totals["other"] == 900
    assert totals["t0.test"] == 1


async def read_events(stream, count: int) -> list[dict]:
    """The first `count` data events of a server-sent event stream (read off the raw socket)."""
    buffer = b""
    while True:
        events = re.findall(rb"\ndata: (.*)\n", buffer)
        if len(events) >= count:
            return [json.loads(e) for e in events[:count]]
        chunk = await stream.receive_some(65536)
        assert chunk, buffer
        buffer += chunk


async def test_tail_receives_prints_and_request_lines(tmp_path):
    (tmp_path / "a.test" / "talk").mkdir(parents=True)
    (tmp_path / "a.test" / "talk" / "index.lua").write_text("print('hello tail') return 'ok'")
    async with running(tmp_path, admin_token=TOKEN) as srv:
        tail = await trio.open_tcp_stream("127.0.0.1", srv.port)
        async with tail:
            await tail.send_all(
                b"GET /__sngin/logs?host=a.test HTTP/1.1\r\nHost: admin\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
            )
            header = await tail.receive_some(65536)
            assert header.startswith(b"HTTP/1.1 200")
            await srv.get("/talk")
            await srv.get("/", host="b.test")  # another tenant: not in this tail
            with trio.fail_after(1):
                received = await read_events(tail, 2)
        assert received[0]["line"] == "hello tail"
        assert (received[1]["path"], received[1]["status"]) == ("/talk", 200)
        # The subscriber went away; the server cleans up and keeps serving.
        assert (await srv.get("/talk")).text == "ok"
        with trio.fail_after(5):
            while srv.deps.observer.hub.subscribers:
                await srv.get("/talk")  # a line to a gone subscriber ends its stream


def test_slow_subscriber_loses_lines_and_is_told():
    hub = LogHub()
    subscriber, _receive = hub.subscribe("a.test")
    for i in range(TAIL_BUFFER + 5):
        hub.publish("a.test", f"line {i}")
    assert subscriber.dropped == 5


def test_a_stalled_tail_holds_at_most_a_mebibyte_of_lines():
    """Bounded in bytes, not only in lines: script lines can be 64 KiB each."""
    from sngin.observe.live_tails import TAIL_BUFFER_BYTES

    hub = LogHub()
    subscriber, receive = hub.subscribe("a.test")
    line = "x" * (64 * 1024)
    for _ in range(40):
        hub.publish("a.test", line)
    assert subscriber.queued_bytes <= TAIL_BUFFER_BYTES
    assert subscriber.dropped == 40 - TAIL_BUFFER_BYTES // len(line)
    taken = receive.receive_nowait()
    subscriber.taken(taken)  # reading makes room again
    hub.publish("a.test", line)
    assert subscriber.dropped == 40 - TAIL_BUFFER_BYTES // len(line)


async def test_the_log_cap_counts_what_is_written(tmp_path, caplog):
    """Bytes that are not UTF-8 are written as U+FFFD (three bytes each): a script within
    its 64 KiB of raw output cannot write more than 64 KiB to the server log."""
    caplog.set_level("INFO", logger="sngin.script")
    (tmp_path / "a.test" / "noisy").mkdir(parents=True)
    (tmp_path / "a.test" / "noisy" / "index.lua").write_text(
        "print('first') print(string.rep('\\255', 30000)) print(string.rep('\\255', 30000))"
        " print('last') return 'ok'"
    )
    async with running(tmp_path) as srv:
        assert (await srv.get("/noisy")).text == "ok"
    lines = [r.getMessage() for r in caplog.records if r.name == "sngin.script"]
    written = [json.loads(m)["line"] for m in lines if m.startswith("{")]
    assert written == ["first", "last"]
    assert sum(len(m.encode()) for m in lines if m.startswith("{")) <= 64 * 1024
    assert any(m.endswith(": 2 more lines dropped") for m in lines)


async def test_readiness_follows_the_store(proxy, bucket, tmp_path, caplog):
    caplog.set_level("INFO", logger="sngin.server")
    caplog.set_level("INFO")
    async with (
        code_cache(proxy, bucket) as cache,
        running(tmp_path, store=cache, admin_token=TOKEN) as srv,
    ):
        await probe_once(srv.deps)
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        proxy.refuse()
        await probe_once(srv.deps)
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
        assert ready.status_code == 503
        assert ready.json()["reason"].startswith("code store unreachable")
        proxy.restore()
        await probe_once(srv.deps)
        assert (await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)).status_code == 200
    # Each change of state is one line: whether the store answered, and why not.
    changes = [r.getMessage() for r in caplog.records if r.name == "sngin.server"]
    changes = [m for m in changes if "ready" in m]
    assert changes[0] == "code store answered: ready"
    assert changes[1].startswith("not ready: code store unreachable")
    assert changes[2:] == ["code store answered: ready"]
    # The probe's healthy 404s and the S3 fetches write no line of their own (httpx is held
    # at WARNING: its request lines would carry tenants' URLs).
    assert not [r for r in caplog.records if r.name.startswith(("httpx", "httpcore"))]


async def test_timing_headers_and_request_ids(tmp_path):
    access_log = io.BytesIO()
    async with running(tmp_path, access_log=access_log) as srv:
        response = await srv.get("/")
        kept = await srv.get("/", headers={"X-Request-Id": "trace-123"})
        replaced = await srv.get("/", headers={"X-Request-Id": "bad id with spaces"})
        missing = await srv.get("/nothing")
        workers = srv.pool.pids()
    timing = response.headers["server-timing"]
    match = re.fullmatch(r"cpu;dur=([\d.]+), wall;dur=([\d.]+), code;desc=(\w+)", timing)
    assert match is not None
    assert float(match.group(1)) <= float(match.group(2))
    assert match.group(3) in ("hit", "miss")
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert response.headers["x-request-id"] != missing.headers["x-request-id"]
    assert kept.headers["x-request-id"] == "trace-123"
    assert replaced.headers["x-request-id"] != "bad id with spaces"
    assert "server-timing" in missing.headers
    records = [json.loads(line) for line in access_log.getvalue().splitlines()]
    assert len(records) == 4
    first = records[0]
    assert set(first) == {"time", "level", "logger", "id", "tenant", "method", "path", "status",
                          "bytes", "wall_ms", "cpu_ms", "code", "worker"}  # fmt: skip
    assert (first["level"], first["logger"]) == ("info", "sngin.access")
    assert (first["tenant"], first["status"], first["bytes"]) == ("a.test", 200, 9)
    assert first["worker"] in workers
    assert records[-1]["status"] == 404


class BrokenStream(io.RawIOBase):
    """stderr after the process reading it went away."""

    def write(self, data) -> int:  # type: ignore[override]
        raise BrokenPipeError(32, "Broken pipe")


async def test_requests_are_answered_when_the_access_log_cannot_be_written(tmp_path):
    async with running(tmp_path, access_log=BrokenStream()) as srv:
        statuses = [(await srv.get("/")).status_code for _ in range(2)]
        access = srv.deps.observer.access
    assert statuses == [200, 200]
    assert access.lost == 2  # counted once the server has finished both requests
    observe_gauges(srv.deps)
    assert b"sngin_access_log_lost_lines 2.0" in srv.deps.observer.metrics.render()


async def test_admin_bind_moves_the_admin_api_to_its_own_listener(tmp_path):
    from sngin.config import Bind

    changes = {"admin_bind": Bind(host="127.0.0.1", port=0)}
    async with running(tmp_path, admin_token=TOKEN, settings_changes=changes) as srv:
        admin_url = srv.binds[1]
        moved = await srv.client.get(srv.url + "/__sngin/stats", headers=AUTH)
        # The JSON 404 of every unknown reserved path.
        assert (moved.status_code, moved.json()) == (404, {"error": "404 Not Found"})
        assert moved.headers["content-type"] == "application/json"
        assert (await srv.get("/__sngin/health")).status_code == 200  # stays public
        stats = await srv.client.get(admin_url + "/__sngin/stats", headers=AUTH)
        assert stats.status_code == 200
        assert stats.json()["pool"]["live"] == 2
        assert (await srv.get("/")).text == "root of a"
        # The UI, served from the admin listener, learns where tenant traffic goes.
        login = await srv.client.post(admin_url + "/__sngin/ui/login", json={"token": TOKEN})
        assert login.status_code == 200
        session = await srv.client.get(admin_url + "/__sngin/ui/session")
        assert session.json()["public"] == srv.url


async def test_cli_stats_and_purge_against_a_running_server(tmp_path, capsys):
    from sngin.cli import main

    env = {"SNGIN_ADMIN_TOKEN": TOKEN}
    async with running(tmp_path, admin_token=TOKEN) as srv:
        await srv.get("/")
        # The CLI is synchronous: run it off the event loop the server needs.
        code = await trio.to_thread.run_sync(main, ["stats", "--url", srv.url], env)
        assert code == 0
        out = capsys.readouterr().out
        assert out.startswith("workers: 2 live")
        assert "a.test" in out
        code = await trio.to_thread.run_sync(
            main, ["purge", "a.test", "/", "--folder", "--url", srv.url, "--json"], env
        )
        assert code == 0
        assert json.loads(capsys.readouterr().out)["type"] == "folder"
        code = await trio.to_thread.run_sync(main, ["stats", "--url", srv.url], {})
        assert code == 2
        assert "--token or SNGIN_ADMIN_TOKEN" in capsys.readouterr().err


async def test_pool_statistics_are_frozen_snapshots(tmp_path):
    import dataclasses

    async with running(tmp_path) as srv:
        await srv.get("/")
        stats = srv.pool.statistics()
        with pytest.raises(TypeError):
            stats.tenants["x.test"] = stats.tenants["a.test"]  # type: ignore[index]
        with pytest.raises(TypeError):
            stats.exits["cpu"] = 1  # type: ignore[index]
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.live = 0  # type: ignore[misc]
        await srv.get("/", host="b.test")
        assert "b.test" not in stats.tenants  # a later request does not change the snapshot


async def test_the_code_outcome_is_the_scripts_not_the_configs(tmp_path):
    """Server-Timing's `code` says how the script itself was fetched, whatever the fetches of
    the tenant's configuration and of the modules it requires said (each fetch reports to
    the request explicitly now, not through a shared context variable)."""
    (tmp_path / "a.test" / "lib").mkdir(parents=True)
    (tmp_path / "a.test" / "mod").mkdir()
    (tmp_path / "a.test" / "mod" / "index.lua").write_text("return require('lib.m').v")
    async with running(tmp_path, tenant_configs=True) as srv:
        (tmp_path / "a.test" / "lib" / "m.lua").write_text("return {v = 'one'}")
        first = await srv.get("/mod")
        (tmp_path / "a.test" / "lib" / "m.lua").write_text("return {v = 'two!'}")
        second = await srv.get("/mod")  # the module is read again (a miss), the script is not
    assert (first.text, second.text) == ("one", "two!")
    assert "code;desc=miss" in first.headers["server-timing"]
    assert "code;desc=hit" in second.headers["server-timing"]


async def test_an_event_loop_stall_shows_in_stats_and_metrics(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        time.sleep(0.3)  # noqa: ASYNC251 (the stall itself: the test shares the server's loop)
        await trio.testing.wait_all_tasks_blocked()  # the lag task has woken and recorded it
        stats = (await srv.client.get(srv.url + "/__sngin/stats", headers=AUTH)).json()
        metrics = (await srv.client.get(srv.url + "/__sngin/metrics", headers=AUTH)).text
    lag = stats["event_loop_lag_ms"]
    assert lag["max"] >= 290
    assert lag["samples"] >= 1
    stalled = re.search(r'sngin_event_loop_lag_seconds_bucket\{le="0\.25"\} (\S+)', metrics)
    total = re.search(r"sngin_event_loop_lag_seconds_count (\S+)", metrics)
    assert stalled is not None
    assert total is not None
    assert float(total.group(1)) - float(stalled.group(1)) >= 1  # one sample above 250 ms


def test_the_nodes_event_loop_lag_is_the_worst_process():
    reports = [
        {"event_loop_lag_ms": {"p50": 0.1, "p99": 2.0, "max": 900.0, "samples": 10}},
        {"event_loop_lag_ms": {"p50": 0.3, "p99": 1.0, "max": 5.0, "samples": 20}},
    ]
    assert worst_lag(reports) == {"p50": 0.3, "p99": 2.0, "max": 900.0, "samples": 30}
