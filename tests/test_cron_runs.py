"""Scheduled runs through a real server and real workers (sngin.cron): ticks fire at their
time and run like requests, are recorded, skipped for a quarantined or disabled site, and a
spinning cron script is killed at the tenant's CPU limit like a request."""

from __future__ import annotations

import json
import time

import msgspec
import trio

from sngin.cron.runs import last_runs
from tests.support import running

EVERY_SECOND = "* * * * * *"  # 6 fields, seconds first (the minimum interval is lowered)


def site(tmp_path, host: str, script: str, *, config: dict | None = None) -> None:
    folder = tmp_path / host
    (folder / "tick").mkdir(parents=True)
    (folder / "tick" / "index.lua").write_text(script)
    entries = [{"schedule": EVERY_SECOND, "path": "/tick"}]
    (folder / "_sngin.json").write_text(json.dumps({"cron": entries, **(config or {})}))


def serving(tmp_path, **options):
    changes = {"cron_min_interval_s": 1.0, **options.pop("settings_changes", {})}
    return running(tmp_path, tenant_configs=True, settings_changes=changes, **options)


async def runs_of(srv, tenant: str, count: int) -> list[dict]:
    """Wait (bounded) for `count` recorded runs of the tenant, newest first."""
    scheduler = srv.deps.started.cron
    with trio.fail_after(20):
        while True:
            runs = [r for r in await last_runs(srv.deps, tenant, lost_after_s=60)
                    if r["outcome"] != "running"]  # fmt: skip
            if len(runs) >= count:
                return runs
            await scheduler._runs.finished.wait()


async def test_a_schedule_fires_each_tick_and_the_script_sees_its_cron_run(tmp_path):
    site(tmp_path, "c.test",
         "storage.n = (storage.n or 0) + 1\n"
         "return {cron = function(req)\n"
         "  storage.last = req.cron.schedule .. '@' .. req.cron.index\n"
         "  return 'ran'\nend}")  # fmt: skip
    async with serving(tmp_path) as srv:
        runs = await runs_of(srv, "c.test", 3)
        count = await srv.deps.storage.get("c.test", b"n")
        last = await srv.deps.storage.get("c.test", b"last")
    assert [r["outcome"] for r in runs[:3]] == ["ok", "ok", "ok"]
    assert all(r["status"] == 200 and r["path"] == "/tick" for r in runs[:3])
    ticks = [r["tick"] for r in runs[:3]]
    assert ticks[0] - ticks[1] == 1.0  # one run per tick, each tick once
    assert ticks[1] - ticks[2] == 1.0
    assert int(float(count)) >= 3
    assert last == b"* * * * * *@0"


async def test_a_quarantined_sites_ticks_are_skipped_and_recorded(tmp_path):
    site(tmp_path, "q.test", "storage.n = (storage.n or 0) + 1 return 'ran'")
    async with serving(tmp_path) as srv:
        srv.deps.pool.quarantine.impose("q.test", 600)
        runs = await runs_of(srv, "q.test", 2)
        count = await srv.deps.storage.get("q.test", b"n")
    assert {r["outcome"] for r in runs} == {"skipped"}
    assert runs[0]["error"] == "the site is quarantined"
    assert count is None  # never ran


async def test_a_disabled_sites_ticks_are_skipped(tmp_path):
    site(tmp_path, "d.test", "storage.n = 1 return 'ran'", config={"enabled": False})
    async with serving(tmp_path) as srv:
        runs = await runs_of(srv, "d.test", 1)
        count = await srv.deps.storage.get("d.test", b"n")
    assert runs[0]["outcome"] == "skipped"
    assert runs[0]["error"] == "the site is disabled"
    assert count is None


async def test_a_spinning_cron_script_is_killed_at_the_cpu_limit_like_a_request(tmp_path):
    site(tmp_path, "s.test", "while true do end", config={"limits": {"cpu_ms": 100}})
    async with serving(tmp_path) as srv:
        runs = await runs_of(srv, "s.test", 1)
    assert runs[0]["outcome"] == "killed"
    assert runs[0]["status"] >= 500
    assert "CPU" in runs[0]["error"] or "cpu" in runs[0]["error"]


async def test_a_method_table_without_a_cron_function_is_recorded_as_405(tmp_path):
    site(tmp_path, "m.test", "return {get = function() return 'get only' end}")
    async with serving(tmp_path) as srv:
        runs = await runs_of(srv, "m.test", 1)
    assert runs[0]["outcome"] == "error"
    assert runs[0]["status"] == 405


async def test_two_nodes_sharing_redis_run_each_tick_once_and_both_take_a_change(
    tmp_path, redis_url
):
    """Both nodes hold the entry and fire every tick; the Redis claim lets one run it. A
    schedule change made on both applies from the next tick, still once per tick."""
    script = "storage.n = (storage.n or 0) + 1 return 'ran'"
    for node in ("a", "b"):
        site(tmp_path / node, "r.test", script)
        (tmp_path / node / "r.test" / "new").mkdir()
        (tmp_path / node / "r.test" / "new" / "index.lua").write_text(script)
    changes = {"redis_url": redis_url}
    async with (
        serving(tmp_path / "a", settings_changes=changes) as first,
        serving(tmp_path / "b", settings_changes=changes) as second,
    ):
        await runs_of(first, "r.test", 10)
        for node in ("a", "b"):
            (tmp_path / node / "r.test" / "_sngin.json").write_text(
                json.dumps({"cron": [{"schedule": EVERY_SECOND, "path": "/new"}]})
            )
        with trio.fail_after(20):
            while True:
                runs = await runs_of(first, "r.test", 1)
                if sum(r["path"] == "/new" for r in runs) >= 3:
                    break
                await first.deps.started.cron._runs.finished.wait()
        count = await second.deps.storage.get("r.test", b"n")
        done = [r for r in await last_runs(first.deps, "r.test", lost_after_s=60)
                if r["outcome"] == "ok"]  # fmt: skip
    ticks = [r["tick"] for r in done]
    assert len(ticks) == len(set(ticks))  # no tick ran twice
    old = [r["tick"] for r in done if r["path"] == "/tick"]
    new = [r["tick"] for r in done if r["path"] == "/new"]
    assert new
    assert not old or min(new) > max(old)  # the change applied from one tick on, on both
    assert int(float(count)) >= 10 + len(new) - 2  # every tick counted once (a few in flight)


async def test_the_tenant_lists_its_entries_next_runs_invalid_ones_and_last_runs(tmp_path):
    from tests.support import AUTH, TOKEN
    from tests.test_tenant_tokens import bearer, mint

    folder = tmp_path / "l.test"
    (folder / "tick").mkdir(parents=True)
    (folder / "tick" / "index.lua").write_text("return 'ran'")
    (folder / "_sngin.json").write_text(json.dumps({"cron": [
        {"schedule": EVERY_SECOND, "path": "/tick"},
        {"schedule": "61 * * * *", "path": "/bad"},
        {"schedule": "0 8 * * *", "path": "/tick", "timezone": "Europe/Paris"},
    ]}))  # fmt: skip
    async with serving(tmp_path, admin_token=TOKEN) as srv:
        await runs_of(srv, "l.test", 2)
        token = (await mint(srv, "l.test"))["token"]
        mine = await srv.client.get(srv.url + "/__sngin/code/l.test/cron", headers=bearer(token))
        other = await srv.client.get(srv.url + "/__sngin/code/z.test/cron", headers=bearer(token))
        everyone = await srv.client.get(srv.url + "/__sngin/cron", headers=AUTH)
        not_theirs = await srv.client.get(srv.url + "/__sngin/cron", headers=bearer(token))
    assert mine.status_code == 200
    listed = mine.json()
    assert [(e["index"], e["path"]) for e in listed["entries"]] == [(0, "/tick"), (2, "/tick")]
    assert listed["entries"][1]["timezone"] == "Europe/Paris"
    assert listed["entries"][1]["next"].endswith(("T06:00:00+00:00", "T07:00:00+00:00"))
    assert listed["invalid"][0].startswith('cron[1]: "61 * * * *": not a cron schedule')
    assert len(listed["runs"]) >= 2
    assert listed["runs"][0]["outcome"] in ("ok", "running")
    assert other.status_code == 403  # another site's
    assert not_theirs.status_code == 401  # the operator's listing, as every operator route
    assert everyone.status_code == 200
    assert [t["host"] for t in everyone.json()["tenants"]] == ["l.test"]


async def test_a_run_by_hand_is_recorded_as_manual_and_refused_read_only(tmp_path):
    from tests.support import AUTH, TOKEN

    folder = tmp_path / "h.test"
    (folder / "job").mkdir(parents=True)
    (folder / "job" / "index.lua").write_text(
        "return {cron = function(req) return tostring(req.cron.manual) end}"
    )
    (folder / "_sngin.json").write_text(
        json.dumps({"cron": [{"schedule": "0 0 1 1 *", "path": "/job"}]})
    )
    url = "/__sngin/code/h.test/cron/run"
    async with serving(tmp_path, admin_token=TOKEN) as srv:
        ran = await srv.client.post(srv.url + url, json={"index": 0}, headers=AUTH)
        missing = await srv.client.post(srv.url + url, json={"index": 5}, headers=AUTH)
        bad = await srv.client.post(srv.url + url, json={"index": "0"}, headers=AUTH)
        listed = await srv.client.get(srv.url + "/__sngin/code/h.test/cron", headers=AUTH)
    assert ran.status_code == 200, ran.text
    run = ran.json()["run"]
    assert (run["outcome"], run["status"], run["manual"]) == ("ok", 200, True)
    assert missing.status_code == 404
    assert bad.status_code == 400
    assert listed.json()["runs"][0]["manual"] is True
    async with serving(tmp_path, admin_token=TOKEN, settings_changes={"ui": "readonly"}) as srv:
        refused = await srv.client.post(srv.url + url, json={"index": 0}, headers=AUTH)
    assert refused.status_code == 403


async def test_sngin_cron_prints_the_sites_entries_and_runs_one(tmp_path, capsys):
    from sngin.cli import main
    from tests.support import TOKEN

    folder = tmp_path / "k.test"
    (folder / "job").mkdir(parents=True)
    (folder / "job" / "index.lua").write_text("return 'done'")
    (folder / "_sngin.json").write_text(json.dumps({"cron": [
        {"schedule": "0 3 * * *", "path": "/job"}, {"schedule": "nope", "path": "/job"},
    ]}))  # fmt: skip
    async with serving(tmp_path, admin_token=TOKEN) as srv:
        remote = ["--url", srv.url, "--token", TOKEN]
        assert await trio.to_thread.run_sync(main, ["cron", *remote], {}) == 0
        every = capsys.readouterr().out
        assert await trio.to_thread.run_sync(main, ["cron", "k.test", "--run", "0", *remote],
                                             {}) == 0  # fmt: skip
        ran = capsys.readouterr().out
        assert await trio.to_thread.run_sync(main, ["cron", "k.test", *remote], {}) == 0
        one = capsys.readouterr().out
    assert every.splitlines()[0] == "k.test"
    assert "[0] 0 3 * * *" in every
    assert "next " in every
    assert 'not used: cron[1]: "nope"' in every
    assert "[0] /job ok 200" in ran
    assert "(by hand)" in ran
    assert "last runs:" in one
    assert "[0] /job ok 200" in one


async def test_a_change_to_the_schedule_applies_from_the_next_tick(tmp_path):
    site(tmp_path, "e.test", "return 'old path'")
    folder = tmp_path / "e.test"
    (folder / "new").mkdir()
    (folder / "new" / "index.lua").write_text("return 'new path'")
    async with serving(tmp_path) as srv:
        await runs_of(srv, "e.test", 1)
        (folder / "_sngin.json").write_text(
            json.dumps({"cron": [{"schedule": EVERY_SECOND, "path": "/new"}]})
        )
        with trio.fail_after(20):
            while True:
                runs = await runs_of(srv, "e.test", 1)
                if runs[0]["path"] == "/new":
                    break
                await srv.deps.started.cron._runs.finished.wait()
        before = [r for r in runs if r["path"] == "/tick"]
        after = [r for r in runs if r["path"] == "/new"]
    assert before  # the old entry ran...
    assert after[0]["outcome"] == "ok"
    assert min(r["tick"] for r in after) > max(r["tick"] for r in before)  # ...then only the new


async def test_a_tick_claimed_by_a_node_that_died_is_not_run_again_and_shows_as_lost(
    tmp_path, redis_url
):
    from sngin.cron.runs import CLAIMS, RUNS, RUNS_QUOTA, RunRecord

    site(tmp_path, "x.test", "storage.n = (storage.n or 0) + 1 return 'ran'")
    async with serving(tmp_path, settings_changes={"redis_url": redis_url}) as srv:
        config = await srv.deps.configs.get("x.test")
        [entry] = config.cron
        tick = float(int(time.time()) + 3600)  # a tick no scheduler reaches now
        # The node that died: it claimed the tick and recorded the run as running, long ago.
        name = f"x.test\n{entry.key}\n{int(tick * 1000)}".encode()
        assert await srv.deps.storage.acquire(CLAIMS, name, "dead/1", timeout_s=0, ttl_s=86400)
        dead = RunRecord(tick, entry.index, entry.path, "dead/1", "running", started=tick - 7200)
        record = msgspec.json.encode(dead)
        await srv.deps.storage.set(RUNS + "x.test", dead.key(), record, RUNS_QUOTA)
        again = await srv.deps.started.cron_runs.fire("x.test", entry, tick)
        runs = await last_runs(srv.deps, "x.test", lost_after_s=60)
        stored = msgspec.json.decode(await srv.deps.storage.get(RUNS + "x.test", dead.key()))
        metrics = srv.deps.observer.metrics.render().decode()
    assert again is None  # claimed already: never run twice
    assert [r["outcome"] for r in runs if r["tick"] == tick] == ["lost"]
    assert stored["outcome"] == "lost"  # recorded, and counted once
    assert 'sngin_cron_runs_total{outcome="lost",tenant="x.test"} 1.0' in metrics


async def test_on_s3_the_scan_lists_the_prefix_and_finds_a_site_never_requested(
    tmp_path, proxy, bucket
):
    from tests.support import code_cache

    bucket.put("s3.test/_sngin.json", json.dumps({"cron": [
        {"schedule": EVERY_SECOND, "path": "/tick"}]}))  # fmt: skip
    bucket.put("s3.test/tick/index.lua", "storage.n = (storage.n or 0) + 1 return 'ran'")
    async with code_cache(proxy, bucket) as cache, serving(tmp_path, store=cache) as srv:
        runs = await runs_of(srv, "s3.test", 2)
        config_gets = proxy.gets("s3.test/_sngin.json")
    assert [r["outcome"] for r in runs[:2]] == ["ok", "ok"]
    assert config_gets == 1  # found by listing, then read once through the code cache


async def test_a_runs_record_keeps_what_it_returned_and_its_first_log_lines(tmp_path):
    site(tmp_path, "g.test", "for i = 1, 8 do print('line ' .. i) end\nreturn 'the answer'")
    async with serving(tmp_path) as srv:
        runs = await runs_of(srv, "g.test", 1)
    assert runs[0]["body"] == "the answer"
    assert runs[0]["log"] == ["line 1", "line 2", "line 3", "line 4", "line 5"]
