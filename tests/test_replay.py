"""Replay bundles end to end (sngin.replay): a failing run is recorded with its calls, time and
randomness; replayed on the server with the upstream gone, it fails the same way; a fixed
source answers 200 with no divergence; a changed call is a divergence. Secrets never reach a
bundle, a limit kill is named, bounds drop the oldest, texts are kept once, every kind of
platform call is answered from the recording, and only a valid X-Sngin-Record
records a run that succeeds."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager

import msgspec
import trio

from sngin.calls.outbound import open_outbound
from sngin.replay.bundle import decode
from sngin.tenants.egress import EgressPolicy
from tests.support import TOKEN, running

SECRET = "s3cr3t-replay-0042"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FAILING = """
local util = require "util"
local n = math.random(1, 1000000)
local t = os.time()
local r = http.request{url = env.UP .. "/data", headers = {["X-Key"] = env.KEY}}
storage.seen = "yes"
local answer = json.decode(r.content)
log("about to fail with key " .. env.KEY)
error("broke: " .. n .. " " .. t .. " " .. answer.path .. " " .. util.name .. " " .. storage.seen)
"""
FIXED = FAILING.replace('error("broke: " ..', 'return "fixed: " ..').replace(
    " .. storage.seen)", " .. storage.seen"
)
ELSEWHERE = FAILING.replace('env.UP .. "/data"', 'env.UP .. "/other"')


@asynccontextmanager
async def replay_site(tmp_path, upstream, **options):
    sites = tmp_path / "sites"
    sites.mkdir()
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"a.test": {"API_KEY": SECRET}}))
    changes = {"secrets_file": secrets, **options.pop("settings_changes", {})}
    async with (
        open_outbound(EgressPolicy.parse(["127.0.0.1"])) as outbound,
        running(sites, tenant_configs=True, outbound=outbound, admin_token=TOKEN,
                settings_changes=changes, **options) as srv,
    ):  # fmt: skip
        (sites / "a.test" / "index.lua").write_text(FAILING)  # (after running's own sites)
        (sites / "a.test" / "util.lua").write_text('return {name = "util"}')
        config = {"env": {"UP": upstream.url(""), "KEY": "${secret:API_KEY}"}}
        (sites / "a.test" / "_sngin.json").write_text(json.dumps(config))
        yield srv, sites


async def replays(srv) -> list[dict]:
    await srv.deps.recording.settled()  # the writer has stored what the requests left
    listed = await srv.client.get(srv.url + "/__sngin/code/a.test/replays", headers=AUTH)
    assert listed.status_code == 200, listed.text
    return listed.json()["replays"]


async def replay(srv, bundle_id: str, source: str | None = None) -> dict:
    body = {} if source is None else {"source": source}
    answer = await srv.client.post(
        srv.url + f"/__sngin/code/a.test/replays/{bundle_id}/run", json=body, headers=AUTH
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def drawn(text: str) -> str:
    return re.search(r"(?:broke|fixed): (\d+ \d+)", text).group(1)


async def test_a_failed_run_replays_the_same_way_without_its_upstream(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, _):
        failed = await srv.get("/")
        assert failed.status_code == 500
        assert "broke: " in failed.text
        [listed] = await replays(srv)
        assert listed["id"] == failed.headers["x-request-id"]
        assert (listed["outcome"], listed["status"], listed["path"]) == ("error", 500, "/")
        upstream.close()  # from here on, nothing answers at the recorded URL
        again = await replay(srv, listed["id"])
        assert again["matched"], again
        assert again["divergences"] == []
        assert again["status"] == 500
        assert drawn(again["body"]) == drawn(failed.text)  # the same random number and time
        # A fix, tested against exactly what broke.
        fixed = await replay(srv, listed["id"], FIXED)
        assert fixed["status"] == 200, fixed
        assert fixed["divergences"] == []
        assert fixed["body"].startswith("fixed: " + drawn(failed.text) + " /data util yes")
        assert not fixed["matched"]  # (the recording was a failure)
        # Code that calls elsewhere: the divergence is named, and the script sees an error.
        moved = await replay(srv, listed["id"], ELSEWHERE)
        assert moved["divergences"][0] == (
            f"call 2 asked for http.request GET {upstream.url('/other')}; the recording has "
            f"http.request GET {upstream.url('/data')}"
        )
        assert "replay: call 2 asked for http.request GET" in moved["error"]  # raised in Lua
        assert not moved["matched"]


async def test_a_secret_never_reaches_a_bundle(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, _):
        failed = await srv.get("/", headers={"Authorization": "Basic c2VjcmV0", "Cookie": "a=b"})
        assert failed.status_code == 500
        [listed] = await replays(srv)
        raw = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}", headers=AUTH
        )
        bundle = decode(raw.content)
        # Everywhere, bytes included (JSON carries them as base64, so look after decoding).
        plain = repr(msgspec.to_builtins(bundle, builtin_types=(bytes,)))
        assert SECRET not in plain
        assert bundle.env["KEY"] == "${secret:API_KEY}"
        sent = bundle.calls[1].request
        assert ("X-Key", b"${secret:API_KEY}") in sent.headers  # the placeholder, not the value
        assert b"${secret:API_KEY}" in bundle.calls[1].result.http.body  # the upstream's echo
        assert bundle.logs == ["about to fail with key ${secret:API_KEY}"]
        headers = dict(bundle.headers)
        assert headers[b"authorization"] == b"<redacted>"
        assert headers[b"cookie"] == b"<redacted>"
        # Replayed, env holds the placeholder and the call matches after the same substitution.
        again = await replay(srv, listed["id"])
        assert again["divergences"] == []
        assert again["logs"] == ["about to fail with key ${secret:API_KEY}"]


CREDENTIALS = """
local signed = http.request{url = env.UP .. "/signed",
                            auth = {oauth = {consumertoken = "ck", consumersecret = env.KEY}}}
local basic = http.request{url = env.UP .. "/basic", auth = {"user", "x" .. env.KEY .. "y"}}
pcall(email.send, {server = "127.0.0.1:1", username = "mailer", password = "p" .. env.KEY,
                   from = "a@a.test", to = "b@a.test", text = "t"})
error("signed " .. signed.statuscode .. " basic " .. basic.statuscode)
"""


async def test_outbound_credentials_are_redacted_and_still_replay(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, sites):
        (sites / "a.test" / "creds").mkdir()
        (sites / "a.test" / "creds" / "index.lua").write_text(CREDENTIALS)
        failed = await srv.get("/creds")
        assert "signed 200 basic 200" in failed.text
        [listed] = await replays(srv)
        raw = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}", headers=AUTH
        )
        signed, basic, mail = (call.request for call in decode(raw.content).calls)
        assert dict(signed.headers)["Authorization"] == b"<redacted>"  # OAuth's signature
        assert basic.auth == (b"<redacted>", b"<redacted>")  # derived from a secret, not it
        assert mail.password == "<redacted>"
        assert b"oauth_signature" not in b"".join(v for _, v in signed.headers)
        # Replayed, OAuth signs afresh (another nonce): compared after the same redaction.
        again = await replay(srv, listed["id"])
        assert again["divergences"] == []
        assert again["matched"]


async def test_a_replay_on_the_server_passes_the_sites_own_gate(tmp_path, upstream):
    """A site paused for repeated kills cannot go on running its killing bundle as replays."""
    async with replay_site(tmp_path, upstream) as (srv, _):
        assert (await srv.get("/")).status_code == 500
        [listed] = await replays(srv)
        srv.deps.pool.accounting.quarantine.impose("a.test", 600)
        paused = await srv.client.post(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}/run", json={}, headers=AUTH
        )
        assert paused.status_code == 503
        assert "paused" in paused.json()["error"]
        srv.deps.pool.lift_quarantine("a.test")
        assert (await replay(srv, listed["id"]))["matched"]


async def test_a_replay_on_the_server_echoes_a_big_body_cut_as_a_preview_does(tmp_path, upstream):
    from sngin.admin.preview import MAX_ECHO_BODY_BYTES

    async with replay_site(tmp_path, upstream) as (srv, sites):
        (sites / "a.test" / "big").mkdir()
        (sites / "a.test" / "big" / "index.lua").write_text(
            "return string.rep('b', 1000000) .. math.random(9)"
        )
        answered = await srv.get("/big", headers={"X-Sngin-Record": TOKEN})
        assert len(answered.content) == 1_000_001
        [listed] = await replays(srv)
        again = await replay(srv, listed["id"])
        assert len(again["body"]) == MAX_ECHO_BODY_BYTES  # not the megabyte, in JSON
        assert again["body_truncated"]
        assert again["body_bytes"] == 1_000_001
        assert again["matched"]  # (compared on the whole body first)


async def test_a_repeated_client_request_id_gets_a_suffix(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, _):
        for _ in range(2):
            failed = await srv.get("/", headers={"X-Request-Id": "client-chosen-1"})
            assert failed.headers["x-request-id"] == "client-chosen-1"
        assert [r["id"] for r in await replays(srv)] == ["client-chosen-1-2", "client-chosen-1"]


async def test_a_cpu_kill_leaves_a_partial_bundle_naming_the_limit(tmp_path, upstream):
    async with replay_site(tmp_path, upstream, cpu_ms=200) as (srv, sites):
        (sites / "a.test" / "burn").mkdir()
        (sites / "a.test" / "burn" / "index.lua").write_text(
            "local n = math.random()\nlocal r = storage.x\nwhile true do end"
        )
        killed = await srv.get("/burn")
        assert killed.status_code == 504
        [listed] = await replays(srv)
        assert listed["outcome"] == "killed (cpu)"
        assert listed["partial"]
        raw = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}", headers=AUTH
        )
        bundle = decode(raw.content)
        assert bundle.outcome.limit == "cpu"
        assert "CPU-time limit" in bundle.outcome.error
        assert len(bundle.calls) == 1  # the storage read it made before it spun
        assert len(bundle.tape["random"]) == 1  # came with that call's frame


MEMORY_HOG = """
local t = {}
for i = 1, 1e9 do t[i] = string.rep("m", 4096) .. i end
"""


async def test_wall_and_memory_kills_name_their_limit(tmp_path, upstream):
    limits = {"cpu_ms": 60_000, "timeout_ms": 1500, "memory_mb": 48}  # (the hog: ~0.2 s)
    async with replay_site(tmp_path, upstream, **limits) as (srv, sites):
        for name, script in (("spinning", "while true do end"), ("hog", MEMORY_HOG)):
            (sites / "a.test" / name).mkdir()
            (sites / "a.test" / name / "index.lua").write_text(script)
        spun = await srv.get("/spinning")
        assert spun.status_code == 504
        hogged = await srv.get("/hog")
        assert hogged.status_code == 500
        listed = {r["path"]: r for r in await replays(srv)}
        assert listed["/spinning"]["outcome"] == "killed (wall)"
        assert listed["/hog"]["outcome"] == "killed (memory)"
        for path, words in (("/spinning", "wall-time limit"), ("/hog", "memory")):
            raw = await srv.client.get(
                srv.url + f"/__sngin/code/a.test/replays/{listed[path]['id']}", headers=AUTH
            )
            assert words in decode(raw.content).outcome.error


async def test_bundles_past_the_bounds_go_oldest_first_and_a_script_writes_a_few(
    tmp_path, upstream
):
    changes = {"replay_max_bundles": 3}
    async with replay_site(tmp_path, upstream, settings_changes=changes) as (srv, sites):
        for n in range(5):
            (sites / "a.test" / f"s{n}").mkdir(exist_ok=True)
            (sites / "a.test" / f"s{n}" / "index.lua").write_text(f"error('s{n}')")
            assert (await srv.get(f"/s{n}")).status_code == 500
        assert [r["path"] for r in await replays(srv)] == ["/s4", "/s3", "/s2"]
        for _ in range(5):  # one script failing on every request: the first few only
            assert (await srv.get("/s0")).status_code == 500
        assert [r["path"] for r in await replays(srv)] == ["/s0", "/s0", "/s4"]
        metrics = (await srv.client.get(srv.url + "/__sngin/metrics", headers=AUTH)).text
        assert 'sngin_replay_bundles_total{outcome="written",tenant="a.test"} 7.0' in metrics
        assert 'sngin_replay_bundles_total{outcome="rate_limited",tenant="a.test"} 3.0' in metrics


async def test_a_text_many_bundles_share_is_kept_once_and_goes_with_the_last(tmp_path, upstream):
    from sngin.replay.store import TEXTS

    big = "return {name = '" + "x" * 60_000 + "'}"  # 60 KB: two copies pass the bound
    changes = {"replay_max_bytes": 150_000}
    async with replay_site(tmp_path, upstream, settings_changes=changes) as (srv, sites):
        (sites / "a.test" / "big.lua").write_text(big)
        for n in range(4):
            (sites / "a.test" / f"s{n}").mkdir()
            (sites / "a.test" / f"s{n}" / "index.lua").write_text(
                f"local big = require 'big'\nerror('s{n} ' .. #big.name)"
            )
            assert (await srv.get(f"/s{n}")).status_code == 500
        listed = await replays(srv)
        assert [r["path"] for r in listed] == ["/s3", "/s2", "/s1", "/s0"]  # all four fit
        store = srv.deps.recording.store
        texts = await store.storage.keys(TEXTS + "a.test", b"", 100)
        assert sorted(size for _, size in texts)[-1] == len(big)
        assert len(texts) == 5  # four scripts and the one module they share
        ids = await store.ids("a.test")
        assert all(size < 2_000 for _, size in ids)  # no bundle holds a copy
        raw = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{listed[0]['id']}", headers=AUTH
        )
        bundle = decode(raw.content)  # as a client sees it: with its texts
        assert bundle.source == b"local big = require 'big'\nerror('s3 ' .. #big.name)"
        assert [m.text for m in bundle.modules] == [big.encode()]
        again = await replay(srv, listed[0]["id"])
        assert again["matched"], again
        for n, summary in enumerate(listed):  # the module goes with the last bundle that has it
            deleted = await srv.client.delete(
                srv.url + f"/__sngin/code/a.test/replays/{summary['id']}", headers=AUTH
            )
            assert deleted.status_code == 200
            left = {size for _, size in await store.storage.keys(TEXTS + "a.test", b"", 100)}
            assert (len(big) in left) == (n < 3)
        assert await store.storage.keys(TEXTS + "a.test", b"", 100) == []
        # A text gone under its bundle (another node's write dropped it): said, not a 500.
        assert (await srv.get("/s0")).status_code == 500
        [again_listed] = await replays(srv)
        for digest, _ in await store.storage.keys(TEXTS + "a.test", b"", 100):
            await store.storage.set(TEXTS + "a.test", digest, None, store._texts_quota)
        gone = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{again_listed['id']}", headers=AUTH
        )
        assert gone.status_code == 410
        assert "lost its script's or a module's text" in gone.json()["error"]


KINDS = """
local got = lease.acquire("l", 1)
cache.set("c", "v", 60)
local c = cache.get("c")
alert.email("note")
local ok, err = pcall(email.send, {server = "127.0.0.1:1", from = "a@a.test",
                                  to = "b@a.test", subject = "s", text = "t"})
lease.release("l")
error("kinds: " .. tostring(got) .. " " .. tostring(c) .. " " .. tostring(ok) .. " " ..
      tostring(err))
"""


async def test_lease_cache_alert_and_email_are_recorded_and_answered_on_replay(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, sites):
        (sites / "a.test" / "kinds").mkdir()
        (sites / "a.test" / "kinds" / "index.lua").write_text(KINDS)
        failed = await srv.get("/kinds")
        assert failed.status_code == 500
        assert "kinds: true v false " in failed.text
        [listed] = await replays(srv)
        raw = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}", headers=AUTH
        )
        asked = [
            getattr(call.request, "op", type(call.request).__name__)
            for call in decode(raw.content).calls
        ]
        assert asked == [
            "lease_acquire", "cache_set", "cache_get", "AlertCall", "EmailCall", "lease_release"
        ]  # fmt: skip
        # The recorded answers, not live ones: the lease held by another changes nothing.
        storage = srv.deps.recording.store.storage
        assert await storage.acquire("a.test", b"l", "someone else", timeout_s=0, ttl_s=60)
        again = await replay(srv, listed["id"])
        assert again["matched"], again
        assert again["divergences"] == []
        assert "kinds: true v false " in again["error"]


async def test_what_a_bundle_keeps_of_the_request_and_of_big_answers(tmp_path, upstream):
    from sngin.config import OutboundSettings

    changes = {"outbound": OutboundSettings(bodies_bytes=3 * 1024 * 1024)}
    async with replay_site(tmp_path, upstream, settings_changes=changes) as (srv, sites):
        (sites / "a.test" / "big").mkdir()
        (sites / "a.test" / "big" / "index.lua").write_text(
            "for i = 1, 4 do storage['big' .. i] = string.rep('x', 1000000) end\n"
            "for i = 1, 4 do local v = storage['big' .. i] end\nerror('read them')"
        )
        (sites / "a.test" / "_sngin.json").write_text(
            json.dumps({"env": {"UP": "x"}, "replay": {"keep_headers": True}})
        )
        body = b"y" * (1024 * 1024 + 10)
        failed = await srv.client.post(
            srv.url + "/big", content=body,
            headers={"Host": "a.test", "Authorization": "Basic a2VwdA=="},
        )  # fmt: skip
        assert failed.status_code == 500
        [listed] = await replays(srv)
        raw = await srv.client.get(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}", headers=AUTH
        )
        bundle = decode(raw.content)
        assert dict(bundle.headers)[b"authorization"] == b"Basic a2VwdA=="  # keep_headers
        assert bundle.body == body[: 1024 * 1024]
        assert bundle.body_truncated
        # The record is held against SNGIN_SUBREQUEST_BODIES_BYTES (3 MiB here): the reads
        # past it are not kept, and the bundle says so.
        assert bundle.calls_cut
        kept = sum(len(c.result.value or b"") for c in bundle.calls)
        assert 1_000_000 <= kept <= 3 * 1024 * 1024
        assert len(bundle.calls) < 8
        again = await replay(srv, listed["id"])
        assert not again["matched"]
        assert "(the bundle did not keep all its calls)" in again["divergences"][0]


async def test_a_sites_own_token_records_and_another_sites_does_not(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, sites):
        (sites / "a.test" / "ok").mkdir(exist_ok=True)
        (sites / "a.test" / "ok" / "index.lua").write_text("return 'fine'")
        tokens = {}
        for host in ("a.test", "b.test"):
            made = await srv.client.post(
                srv.url + "/__sngin/tokens", json={"host": host}, headers=AUTH
            )
            assert made.status_code == 201, made.text
            tokens[host] = made.json()["token"]
        other = await srv.get("/ok", headers={"X-Sngin-Record": tokens["b.test"]})
        assert other.status_code == 200
        assert await replays(srv) == []
        own = await srv.get("/ok", headers={"X-Sngin-Record": tokens["a.test"]})
        [listed] = await replays(srv)
        assert listed["id"] == own.headers["x-request-id"]
        assert listed["outcome"] == "recorded"


async def test_only_a_valid_record_header_records_a_run_that_succeeds(tmp_path, upstream):
    async with replay_site(tmp_path, upstream) as (srv, sites):
        (sites / "a.test" / "ok").mkdir(exist_ok=True)
        (sites / "a.test" / "ok" / "index.lua").write_text(
            "return tostring(request.headers['X-Sngin-Record']) .. ' ' .. math.random(9)"
        )
        anonymous = await srv.get("/ok", headers={"X-Sngin-Record": "sngt_not-a-token"})
        assert anonymous.status_code == 200
        assert anonymous.text.startswith("nil ")  # stripped before the script saw it
        assert await replays(srv) == []
        recorded = await srv.get("/ok", headers={"X-Sngin-Record": TOKEN})
        assert recorded.text.startswith("nil ")
        [listed] = await replays(srv)
        assert listed["outcome"] == "recorded"
        again = await replay(srv, listed["id"])
        assert again["matched"]
        assert again["body"] == recorded.text
        deleted = await srv.client.delete(
            srv.url + f"/__sngin/code/a.test/replays/{listed['id']}", headers=AUTH
        )
        assert deleted.json() == {"deleted": True}
        assert await replays(srv) == []


async def test_sngin_replay_runs_a_bundle_offline_on_this_machine(tmp_path, upstream, capsys):
    from sngin.cli import main

    async with replay_site(tmp_path, upstream) as (srv, _):
        failed = await srv.get("/")
        [listed] = await replays(srv)
        upstream.close()
        env = {"SNGIN_ADMIN_TOKEN": TOKEN, "SNGIN_DATA_PATH": str(tmp_path / "cli-data")}
        command = ["replay", "a.test", listed["id"], "--url", srv.url]
        made = await srv.client.post(
            srv.url + "/__sngin/tokens", json={"host": "a.test"}, headers=AUTH
        )
        site_token = made.json()["token"]  # the site's own token fetches it as well
        code = await trio.to_thread.run_sync(main, [*command, "--json", "--token", site_token], env)
        printed = json.loads(capsys.readouterr().out)
        assert code == 0
        assert printed["matched"]
        assert printed["status"] == 500
        assert printed["logs"] == ["about to fail with key ${secret:API_KEY}"]
        assert {"headers", "body", "divergences"} <= printed.keys()
        assert drawn(printed["body"]) == drawn(failed.text)
        fix = tmp_path / "fixed.lua"
        fix.write_text(FIXED)
        code = await trio.to_thread.run_sync(main, [*command, "--source", str(fix)], env)
        out = capsys.readouterr().out
        assert out.startswith("HTTP 200\n")
        assert f"fixed: {drawn(failed.text)} /data util yes" in out
        assert "diverged" not in out
        assert "replay: differs from the recording (500: " in out  # (it was fixed)
        elsewhere = tmp_path / "elsewhere.lua"
        elsewhere.write_text(ELSEWHERE)
        await trio.to_thread.run_sync(main, [*command, "--source", str(elsewhere)], env)
        out = capsys.readouterr().out
        assert (
            f"replay: diverged: call 2 asked for http.request GET {upstream.url('/other')}" in out
        )
        missing = ["replay", "a.test", "no-such-id", "--url", srv.url]
        assert await trio.to_thread.run_sync(main, missing, env) == 1
        assert "sngin: no replay bundle 'no-such-id' (404)" in capsys.readouterr().err


async def test_bundles_kept_in_redis_replay_the_same_way(tmp_path, upstream):
    from sngin.config import StorageSettings
    from tests.support import free_port, redis_server_process

    port = free_port()
    with redis_server_process(port):
        changes = {"storage": StorageSettings(data_path=tmp_path / ".data"),
                   "redis_url": f"redis://127.0.0.1:{port}/0"}  # fmt: skip
        async with replay_site(tmp_path, upstream, settings_changes=changes) as (srv, _):
            failed = await srv.get("/")
            assert failed.status_code == 500
            [listed] = await replays(srv)
            from sngin.storage.redis import RedisStorage

            store = srv.deps.recording.store
            assert isinstance(store.storage.backend, RedisStorage)  # (not a SQLite fallback)
            assert len(await store.ids("a.test")) == 1
            upstream.close()
            again = await replay(srv, listed["id"])
            assert again["matched"], again
            assert drawn(again["body"]) == drawn(failed.text)


async def test_with_the_admin_api_off_no_token_records(tmp_path):
    """The guard refuses every token when SNGIN_ADMIN_TOKEN is unset; so does the record
    header, even with a site token made while it was set."""
    from sngin.bodies.budgets import MemoryBudget
    from sngin.config import Settings
    from sngin.replay.recording import Recording
    from sngin.storage.tenant_storage import SqliteBackend, TenantStorage
    from sngin.tenants.tokens import TenantTokens

    storage = TenantStorage(SqliteBackend(tmp_path / "storage.db"))
    made = await TenantTokens(storage).create("a.test")
    budget = MemoryBudget("bodies", 1 << 20)
    on = Recording(Settings(admin_token=TOKEN), storage, budget)
    assert await on.may_record("a.test", made.token.encode())
    assert not await on.may_record("b.test", made.token.encode())
    off = Recording(Settings(), storage, budget)
    assert not await off.may_record("a.test", made.token.encode())
    storage.close()
