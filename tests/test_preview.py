"""Preview: an unsaved source run for a tenant with a sample request in a real worker, under the
tenant's limits; storage writes go to a scratch overlay, email and alerts are recorded, not sent;
http.request is real; a limit kill there never pauses the live site."""

from __future__ import annotations

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
