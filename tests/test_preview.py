"""Preview: an unsaved source run for a tenant with a sample request in a real worker, under the
tenant's limits; storage writes go to a scratch overlay, email and alerts are recorded, not sent;
http.request is real; a limit kill there never pauses the live site."""

from __future__ import annotations

from sngin.config import HttpSettings, StorageSettings
from tests.support import AUTH, TOKEN, running, serving

HOST = "pre.test"


async def preview(srv, source: str, **request) -> dict:
    body = {"source": source, "path": "index.lua", "request": request}
    answer = await srv.client.post(
        srv.url + f"/__sngin/code/{HOST}/preview", json=body, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


async def test_a_preview_answers_status_headers_body_logs_and_timings(tmp_path, upstream):
    async with serving(tmp_path, {HOST: "return 'live'"}, admin_token=TOKEN) as srv:
        source = f"""
            log('asked for ' .. request.query.n)
            local r = http.request('{upstream.url("/plain")}')
            return 'made ' .. request.method .. ' ' .. r.statuscode, 201, {{['X-A'] = 'b'}}
        """
        answer = await preview(srv, source, method="POST", query="n=5", body="x")
        assert answer["status"] == 201
        assert ["X-A", "b"] in answer["headers"], answer["headers"]
        assert answer["body"] == "made POST 200"  # http.request is real
        assert answer["logs"] == ["asked for 5"]
        assert answer["cpu_ms"] >= 0
        assert answer["wall_ms"] > 0
        # Nothing was saved: the live site still answers its own script.
        assert (await srv.get("/", host=HOST)).text == "live"


async def test_storage_writes_stay_in_the_preview_and_mail_is_only_recorded(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        value = srv.url + f"/__sngin/storage/{HOST}/value"
        stored = await srv.client.put(value, params={"key": "k"}, content=b"real", headers=AUTH)
        assert stored.status_code == 200
        source = """
            local before = storage.k
            storage.k = 'scratch'
            storage.n = '1'
            assert(lease.acquire('job'))
            email.send{server = 'smtp.example.com', from = 'a@x.test', to = {'b@y.test'},
                       subject = 'hello', text = 'body'}
            alert.sms('it is down')
            return before .. '/' .. storage.k
        """
        answer = await preview(srv, source)
        assert answer["body"] == "real/scratch"
        assert answer["storage_writes"] == {"k": "scratch", "n": "1"}
        assert [s["kind"] for s in answer["sent"]] == ["email", "alert.sms"]
        assert answer["sent"][0]["to"] == ["b@y.test"]
        assert answer["sent"][1]["text"] == "it is down"
        # The tenant's real data is as it was.
        assert (await srv.client.get(value, params={"key": "k"}, headers=AUTH)).content == b"real"
        missing = await srv.client.get(value, params={"key": "n"}, headers=AUTH)
        assert missing.status_code == 404


async def test_a_broken_or_runaway_preview_says_what_broke_and_never_pauses_the_site(tmp_path):
    pool = {"quarantine_strikes": 1, "quarantine_s": 600}
    async with running(tmp_path, admin_token=TOKEN, cpu_ms=100, pool=pool) as srv:
        (tmp_path / HOST).mkdir()
        (tmp_path / HOST / "index.lua").write_text("return 'live'")
        broken = await preview(srv, "local x = nil\nreturn x.y")
        assert broken["status"] == 500
        assert ":2:" in broken["error"]
        spinning = await preview(srv, "while true do end")
        assert spinning["status"] == 504
        assert "CPU" in spinning["error"]
        # The live site was not struck: it answers (a second live kill would pause it).
        assert (await srv.get("/", host=HOST)).text == "live"
        assert HOST not in srv.deps.pool.quarantined()


async def test_a_bad_preview_request_is_a_400(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        url = srv.url + f"/__sngin/code/{HOST}/preview"
        bad = [
            b"not json", b'{"source": 1}', b'{"source": "", "request": {"method": "BREW"}}',
            b'{"source": "", "path": "lib/x.lua"}', b'{"source": "", "extra": 1}',
        ]  # fmt: skip
        for body in bad:
            answer = await srv.client.post(url, content=body, headers=AUTH)
            assert answer.status_code == 400, body


async def test_each_preview_runs_in_a_fresh_runtime_the_worker_then_closes(tmp_path):
    async with running(tmp_path, admin_token=TOKEN, workers=1) as srv:
        before = srv.deps.pool.statistics().fresh_runtimes
        for _ in range(3):
            assert (await preview(srv, "return 'p'"))["body"] == "p"
        assert srv.deps.pool.statistics().fresh_runtimes - before == 3
        # A live tenant's runtime is kept: its second request needs no new one.
        await srv.get("/")
        await srv.get("/")
        assert srv.deps.pool.statistics().fresh_runtimes - before == 4


# --- a preview is bounded like the live site --------------------------------------------------


async def test_a_previews_scratch_writes_obey_the_tenants_storage_quota(tmp_path):
    # The attack: 300 writes of 1 MiB each grew the server by ~900 MB. The overlay now counts
    # against the tenant's quota (its real usage included) and is freed when the preview ends.
    storage = StorageSettings(data_path=tmp_path / ".data", max_bytes=4 * 1024 * 1024)
    async with running(tmp_path, admin_token=TOKEN, settings_changes={"storage": storage}) as srv:
        value = srv.url + f"/__sngin/storage/{HOST}/value"
        real = await srv.client.put(value, params={"key": "real"}, content=b"r" * 1_000_000,
                                    headers=AUTH)  # fmt: skip
        assert real.status_code == 200
        source = """
            for i = 1, 300 do
                local ok, err = pcall(function() storage['k' .. i] = string.rep('x', 1000000) end)
                if not ok then return 'stopped at ' .. i .. ': ' .. err end
            end
            return 'wrote 300'
        """
        budget = srv.deps.budgets.request_bodies
        answer = await preview(srv, source)
        quota = "pre.test:3: storage: storage quota of 4 MiB exceeded"
        assert answer["body"] == f"stopped at 4: {quota}"
        assert budget.held == 0  # the overlay was let go with the preview
        assert budget.peak >= 3_000_000
        # Rewriting the real key smaller makes room, as it would on the live site.
        shrink = "storage.real = 'r' for i = 1, 4 do storage['k' .. i] = ('x'):rep(1000000) end"
        assert (await preview(srv, shrink + " return 'fits'"))["body"] == "fits"


async def test_a_previews_scratch_writes_are_held_against_the_servers_memory_budget(tmp_path):
    http = HttpSettings(request_bodies_bytes=1024 * 1024)
    async with running(tmp_path, admin_token=TOKEN, http=http) as srv:
        source = """
            storage.a = string.rep('x', 600000)
            local ok, err = pcall(function() storage.b = string.rep('x', 600000) end)
            storage.a = 'small'  -- replacing a value gives its bytes back
            storage.b = string.rep('x', 600000)
            return err
        """
        answer = await preview(srv, source)
        assert answer["body"] == (
            "pre.test:3: storage: the server holds as much request data as it may"
            " (SNGIN_REQUEST_BODIES_BYTES); try again shortly"
        ), answer
        assert srv.deps.budgets.request_bodies.held == 0


async def test_what_a_preview_echoes_is_capped(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        source = """
            for i = 1, 150 do storage['k' .. i] = string.rep('v', 2000) end
            for i = 1, 40 do
                email.send{server = 'smtp.example.com', from = 'a@x.test', to = {'b@y.test'},
                           subject = 's', text = string.rep('t', 100000)}
            end
            return string.rep('b', 1024 * 1024)
        """
        answer = await preview(srv, source)
    assert len(answer["body"]) == 256 * 1024
    assert answer["body_truncated"] is True
    assert answer["body_bytes"] == 1024 * 1024
    assert len(answer["storage_writes"]) == 100
    assert answer["storage_writes_not_shown"] == 50
    assert answer["storage_writes"]["k1"] == "v" * 1024 + "… (2000 bytes)"
    assert len(answer["sent"]) == 20
    assert answer["sent_not_shown"] == 20
    assert answer["sent"][0]["text"] == "t" * 4096 + "… (100000 characters)"


async def test_a_preview_obeys_quarantine_enabled_and_rps(tmp_path, mock_clock):
    async with running(tmp_path, admin_token=TOKEN, tenant_configs=True) as srv:
        url = srv.url + f"/__sngin/code/{HOST}/preview"
        body = {"source": "return 'p'"}
        (tmp_path / HOST).mkdir()
        config = tmp_path / HOST / "_sngin.json"
        config.write_text('{"enabled": false}')
        disabled = await srv.client.post(url, json=body, headers=AUTH)
        assert disabled.status_code == 503
        assert disabled.json()["error"] == "this site is disabled by its configuration"

        config.write_text("{}")
        await srv.client.post(srv.url + "/__sngin/purge", json={"host": HOST}, headers=AUTH)
        srv.deps.pool.accounting.quarantine.impose(HOST, 600)
        paused = await srv.client.post(url, json=body, headers=AUTH)
        assert paused.status_code == 503
        assert paused.json()["error"].startswith("this site is paused for ")
        srv.deps.pool.lift_quarantine(HOST)

        config.write_text('{"limits": {"rps": 1}}')
        await srv.client.post(srv.url + "/__sngin/purge", json={"host": HOST}, headers=AUTH)
        statuses = [(await srv.client.post(url, json=body, headers=AUTH)).status_code
                    for _ in range(3)]  # fmt: skip
        assert statuses == [200, 200, 429]  # the live site's burst of 2 x rps, then refused
        assert (await srv.get("/", host=HOST)).status_code == 429  # one bucket for both
        mock_clock.jump(1.0)  # one token back, for the live site or a preview
        assert (await srv.get("/", host=HOST)).status_code == 404  # (no script saved)


async def test_a_previews_paths_are_checked_like_a_requests(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        url = srv.url + f"/__sngin/code/{HOST}/preview"
        for body, message in [
            ({"source": "", "request": {"path": "/a/../../b"}}, "path"),
            ({"source": "", "request": {"path": "/a\\b"}}, "path"),
            ({"source": "", "request": {"path": "/a\u0001"}}, "path"),
            ({"source": "", "path": "../other/index.lua"}, "path"),
            ({"source": "", "path": "a/../../index.lua"}, "path"),
            ({"source": "", "path": "notindex.lua"}, "path names a script"),
        ]:
            answer = await srv.client.post(url, json=body, headers=AUTH)
            assert answer.status_code == 400, body
            assert message in answer.json()["error"], answer.json()
