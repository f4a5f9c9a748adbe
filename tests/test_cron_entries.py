"""sngin.tenants.cron: a tenant's cron entries checked one by one, and when each fires, in its
time zone and across daylight-saving changes (a fixed clock: plain unix times)."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from sngin.tenants.cron import parse_entries

PARIS = ZoneInfo("Europe/Paris")


def at(*fields: int, zone=UTC) -> float:
    return datetime(*fields, tzinfo=zone).timestamp()


def utc(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def entries(*raw, max_entries=10, min_interval_s=60.0):
    return parse_entries(list(raw), max_entries=max_entries, min_interval_s=min_interval_s)


def test_five_fields_macros_and_six_fields_with_seconds_first():
    good, problems = entries(
        {"schedule": "*/5 * * * *", "path": "/tick"},
        {"schedule": "@hourly", "path": "/"},
        {"schedule": "0 */2 * * * *", "path": "/six"},
        min_interval_s=60,
    )
    assert problems == ()
    five, hourly, six = good
    start = at(2026, 1, 1, 0, 1)
    assert utc(five.next_after(start)) == "2026-01-01 00:05:00"
    assert utc(hourly.next_after(start)) == "2026-01-01 01:00:00"
    assert six.seconds
    assert utc(six.next_after(start)) == "2026-01-01 00:02:00"
    assert five.key != six.key  # ticks are claimed per entry


def test_a_bad_entry_is_skipped_with_its_reason_and_the_others_apply():
    good, problems = entries(
        {"schedule": "61 * * * *", "path": "/a"},
        {"schedule": "0 8 * * 1-5", "path": "/digest", "timezone": "Europe/Paris"},
        {"schedule": "* * * * * *", "path": "/busy"},
        {"schedule": "0 0 * * *", "path": "/z", "timezone": "Mars/Olympus"},
        {"schedule": "0 0 * * *", "path": "relative"},
        {"schedule": "0 0 * * *", "path": "/../up"},
        {"path": "/no-schedule"},
        "not an object",
        {"schedule": "0 0 * * *", "path": "/x", "extra": 1},
    )
    assert [entry.path for entry in good] == ["/digest"]
    assert good[0].index == 1
    shown = [str(problem) for problem in problems]
    assert shown[0].startswith('cron[0]: "61 * * * *": not a cron schedule')
    assert shown[1] == (
        'cron[2]: "* * * * * *": fires every 1 s, more often than SNGIN_CRON_MIN_INTERVAL_S (60 s)'
    )
    assert shown[2] == "cron[3]: \"0 0 * * *\": unknown time zone 'Mars/Olympus'"
    assert "not a script path (it starts with /)" in shown[3]
    assert "'..' segment" in shown[4]
    assert shown[5].startswith('cron[6]: "": ')
    assert "schedule" in shown[5]
    assert shown[6].startswith('cron[7]: "": ')
    assert shown[7].startswith('cron[8]: "0 0 * * *": ')
    assert "extra" in shown[7]


def test_entries_past_the_maximum_are_refused_with_that_reason():
    raw = [{"schedule": f"{n} * * * *", "path": f"/p{n}"} for n in range(12)]
    good, problems = entries(*raw, max_entries=10)
    assert len(good) == 10
    assert [str(p) for p in problems] == [
        f'cron[{n}]: "{n} * * * *": more than 10 entries (SNGIN_CRON_MAX_PER_TENANT)'
        for n in (10, 11)
    ]


def test_an_irregular_schedule_is_judged_by_its_closest_pair_of_ticks():
    _, problems = entries({"schedule": "0,1 8 * * *", "path": "/twice"}, min_interval_s=120)
    assert "fires every 60 s" in str(problems[0])


def test_a_time_zone_schedule_follows_daylight_saving_both_ways():
    (digest, small_hours, every_ten), _ = entries(
        {"schedule": "0 8 * * *", "path": "/d", "timezone": "Europe/Paris"},
        {"schedule": "30 2 * * *", "path": "/n", "timezone": "Europe/Paris"},
        {"schedule": "*/10 * * * *", "path": "/e", "timezone": "Europe/Paris"},
        min_interval_s=60,
    )
    # Spring forward (29 March 2026): 08:00 is 06:00 UTC from that day on, 07:00 before.
    assert utc(digest.next_after(at(2026, 3, 27, 12))) == "2026-03-28 07:00:00"
    assert utc(digest.next_after(at(2026, 3, 28, 12))) == "2026-03-29 06:00:00"
    # 02:30 does not exist that night: it fires at the first time after the gap.
    assert utc(small_hours.next_after(at(2026, 3, 28, 12))) == "2026-03-29 01:00:00"
    # Fall back (25 October 2026): 02:30 happens twice; it fires once...
    first = small_hours.next_after(at(2026, 10, 24, 12))
    assert utc(first) == "2026-10-25 00:30:00"
    assert utc(small_hours.next_after(first)) == "2026-10-26 01:30:00"
    # ...while an every-ten-minutes job runs through the repeated hour, as elapsed time says.
    tick, seen = at(2026, 10, 25, 0, 45), []
    for _ in range(3):
        tick = every_ten.next_after(tick)
        seen.append(utc(tick))
    assert seen == ["2026-10-25 00:50:00", "2026-10-25 01:00:00", "2026-10-25 01:10:00"]


# --- the script's side: request.cron and a method table's cron function ----------------------


def cron_job(source: str):
    from sandbox.protocol import CronRun, Job, Request

    request = Request(
        method="CRON", path="/tick",
        cron=CronRun(schedule="*/5 * * * *", scheduled=1767225600.0, index=2),
    )  # fmt: skip
    return Job(tenant="a.test", key="a.test/tick", version=source[:40], request=request,
               source=source.encode())  # fmt: skip


def test_a_scheduled_run_sees_request_cron_and_its_method_tables_cron_function():
    from sandbox.runtime import TenantRuntime

    rt = TenantRuntime("a.test")
    try:
        plain = rt.run(cron_job(
            "local c = request.cron\n"
            "return request.method .. ' ' .. c.schedule .. ' ' .. c.scheduled .. ' ' .. "
            "c.index .. ' ' .. tostring(c.manual) .. ' ' .. request.body .. '|'"
        ))  # fmt: skip
        table = rt.run(cron_job(
            "return {cron = function(req) return 'ran ' .. req.cron.index end,"
            " get = function() return 'get' end}"
        ))  # fmt: skip
        without = rt.run(cron_job("return {get = function() return 'get' end}"))
    finally:
        rt.close()
    assert plain.body == b"CRON */5 * * * * 1767225600 2 false |"
    assert table.body == b"ran 2"
    assert without.error == "method_not_allowed"
    assert without.message == "method CRON not allowed"


async def test_no_client_can_send_a_cron_request(tmp_path):
    import trio

    from tests.support import running

    (tmp_path / "a.test" / "tick").mkdir(parents=True)
    (tmp_path / "a.test" / "tick" / "index.lua").write_text(
        "return {cron = function() return 'should never run for a client' end}"
    )
    async with running(tmp_path) as srv:
        stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
        async with stream:
            await stream.send_all(b"CRON /tick HTTP/1.1\r\nHost: a.test\r\n\r\n")
            answer = await stream.receive_some(65536)
    assert answer.startswith(b"HTTP/1.1 405 ")
    assert b"CRON is not a request method" in answer
    assert b"should never run" not in answer


# --- in _sngin.json ------------------------------------------------------------------------


async def test_cron_in_sngin_json_keeps_good_entries_logs_bad_ones_once_and_the_rest_applies(
    tmp_path, caplog
):
    import json as stdlib_json

    from sngin.code.local_store import LocalStore
    from sngin.config import Settings
    from sngin.tenants.config import TenantConfigs

    configs = TenantConfigs(LocalStore(tmp_path), Settings(cron_min_interval_s=60))
    text = stdlib_json.dumps({
        "env": {"WHO": "world"},
        "cron": [
            {"schedule": "*/5 * * * *", "path": "/tick"},
            {"schedule": "* * * * * *", "path": "/busy"},
            {"schedule": "0 8 * * 1-5", "path": "/digest", "timezone": "Europe/Paris"},
        ],
    }).encode()  # fmt: skip
    (tmp_path / "a.test").mkdir()
    (tmp_path / "a.test" / "_sngin.json").write_bytes(text)
    with caplog.at_level("WARNING", logger="sngin.tenants.config"):
        config = await configs.get("a.test")
        again = await configs.get("a.test")  # the same version: parsed and logged once
    assert again is config
    assert config.env == {"WHO": "world"}  # everything else in the file applies
    assert [entry.path for entry in config.cron] == ["/tick", "/digest"]
    assert [str(problem) for problem in config.cron_problems] == [
        'cron[1]: "* * * * * *": fires every 1 s, more often than SNGIN_CRON_MIN_INTERVAL_S (60 s)'
    ]
    assert [r.getMessage() for r in caplog.records] == [
        'a.test/_sngin.json: cron[1]: "* * * * * *": fires every 1 s, more often than'
        " SNGIN_CRON_MIN_INTERVAL_S (60 s)"
    ]
    odd = configs.parse("a.test", b'{"cron": {"schedule": "@daily"}}')
    assert odd.cron == ()
    assert [str(p) for p in odd.cron_problems] == ['cron[0]: "": cron: expected a list of entries']
    assert configs.parse("a.test", b"{}").cron == ()


def test_the_cron_settings_read_their_variables():
    from sngin.config import Settings

    settings = Settings.from_env({
        "SNGIN_CRON_MAX_PER_TENANT": "3", "SNGIN_CRON_MIN_INTERVAL_S": "2",
        "SNGIN_CRON_RESCAN_S": "30",
    })  # fmt: skip
    assert (settings.cron_max_per_tenant, settings.cron_min_interval_s) == (3, 2.0)
    assert settings.cron_rescan_s == 30.0


# --- the scheduler's clock (a fake wall clock, no runs) ------------------------------------


def test_a_clock_step_back_never_fires_a_tick_twice_and_missed_ticks_are_not_caught_up():
    from sngin.cron.scheduler import MISSED_AFTER_S, CronScheduler
    from sngin.tenants.config import TenantConfig

    now = [at(2026, 1, 1, 12, 0, 0)]
    scheduler = CronScheduler(None, None, None, rescan_s=300, clock=lambda: now[0])  # type: ignore[arg-type]
    (entry,), _ = entries({"schedule": "* * * * * *", "path": "/s"}, min_interval_s=1)
    scheduler.update("a.test", TenantConfig(cron=(entry,)))
    now[0] += 1
    assert [tick for _, _, tick in scheduler.due()] == [at(2026, 1, 1, 12, 0, 1)]
    now[0] -= 5  # the clock steps back (NTP): nothing fires again...
    for _ in range(5):
        assert scheduler.due() == []
        now[0] += 1
    now[0] += 1  # ...until the wall clock passes the next tick not yet fired
    assert [tick for _, _, tick in scheduler.due()] == [at(2026, 1, 1, 12, 0, 2)]
    now[0] += 3600  # the node was away for an hour: no catching up, the latest tick only
    assert [tick for _, _, tick in scheduler.due()] == [now[0]]
    assert scheduler.next_tick() == now[0] + 1
    assert MISSED_AFTER_S < 3600
