"""Scripts' `storage`, `lease` and `cache` through a real listener, on a real SQLite file."""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import replace

import httpx
import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from sngin.cli import main
from sngin.config import StorageSettings
from sngin.storage.redis import RedisCache, open_redis_storage
from sngin.storage.script_cache import TenantCache
from sngin.storage.sqlite import Quota, QuotaExceeded, SqliteStorage
from sngin.storage.tenant_storage import SqliteBackend, StorageUnavailable, TenantStorage
from tests.support import AUTH, TOKEN, running, serving, wait_until_serving
from tests.upstream import Upstream


def write(tmp_path, scripts: dict[str, str]) -> None:
    for key, source in scripts.items():
        folder = tmp_path / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(source)


def storage_settings(tmp_path, backend: dict | None = None, **changes) -> dict:
    base = StorageSettings(data_path=tmp_path / ".sngin-data")
    return {"settings_changes": {"storage": replace(base, **changes), **(backend or {})}}


async def test_storage_reads_its_writes_coerces_and_persists(backend, tmp_path):
    write(tmp_path, {
        "a.test/count": "storage.n = (storage.n or 0) + 1 return storage.n",
        "a.test/kinds": "storage.b = true storage.f = 1.5 storage.s = 'x'\n"
                        "local before = storage.s storage.s = nil\n"
                        "return json.stringify({b = storage.b, f = storage.f, s = storage.s,"
                        " before = before})",
        "a.test/table": "local ok, err = pcall(function() storage.t = {1} end) return err",
        "b.test/count": "return tostring(storage.n)",
    })  # fmt: skip
    async with running(tmp_path, **storage_settings(tmp_path, backend)) as srv:
        assert [(await srv.get("/count")).text for _ in range(3)] == ["1", "2", "3"]
        assert json.loads((await srv.get("/kinds")).text) == {
            "b": "true",
            "f": "1.5",
            "before": "x",
        }
        table = (await srv.get("/table")).text
        other = (await srv.get("/count", host="b.test")).text
    assert table.endswith("storage: values must be strings, numbers or booleans (use "
                          "json.stringify for a table)")  # fmt: skip
    assert other == "nil"  # b.test has its own storage
    async with running(tmp_path, **storage_settings(tmp_path, backend)) as srv:  # a restart
        assert (await srv.get("/count")).text == "4"


async def test_quotas_and_the_operation_budget_are_lua_errors(backend, tmp_path):
    write(tmp_path, {
        "a.test/keys": "for i = 1, 4 do storage['k' .. i] = 'v' end",
        "a.test/big": "storage.big = string.rep('x', 2 * 1024 * 1024)",
        "a.test/many": "for i = 1, 6 do local _ = storage.x end",
    })  # fmt: skip
    options = storage_settings(tmp_path, backend, max_keys=3, max_ops=5)
    async with running(tmp_path, **options) as srv:
        keys = (await srv.get("/keys")).text
        big = (await srv.get("/big")).text
        many = (await srv.get("/many")).text
    assert keys.endswith("storage: storage quota of 3 keys exceeded\n")
    assert big.endswith(f"storage: values must be at most {1024 * 1024} bytes\n")
    assert many.endswith("storage: more than 5 storage operations in one request\n")


@given(st.binary(min_size=1, max_size=64), st.binary(max_size=4096))
@settings(max_examples=60, deadline=None)
def test_any_bytes_round_trip_and_tenants_never_meet(tmp_path_factory, key, value):
    db = SqliteStorage(tmp_path_factory.mktemp("db") / "storage.db")
    try:
        quota = Quota(max_keys=10, max_bytes=1 << 20)
        db.set("a.test", key, value, quota)
        assert db.get("a.test", key) == value
        assert db.get("b.test", key) is None
        assert db.usage("a.test") == (1, len(key) + len(value))
        db.set("a.test", key, None, quota)
        assert db.get("a.test", key) is None
        assert db.usage("a.test") == (0, 0)
    finally:
        db.close()


def test_a_write_past_the_byte_quota_writes_nothing(tmp_path):
    db = SqliteStorage(tmp_path / "storage.db")
    quota = Quota(max_keys=10, max_bytes=100)
    db.set("a.test", b"k", b"x" * 50, quota)
    with pytest.raises(QuotaExceeded, match="storage quota of 100 bytes exceeded"):
        db.set("a.test", b"k2", b"x" * 60, quota)
    assert db.get("a.test", b"k2") is None
    assert db.usage("a.test") == (1, 51)
    db.close()


COUNTER = "lease.acquire('c') storage.c = (storage.c or 0) + 1 lease.release('c') return 'ok'"


async def test_leases_serialise_200_concurrent_increments_over_all_workers(backend, tmp_path):
    write(tmp_path, {"a.test/inc": COUNTER, "a.test/read": "return storage.c"})
    options = storage_settings(tmp_path, backend)
    async with running(tmp_path, workers=4, timeout_ms=20_000, **options) as srv:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            answers = []

            async def one() -> None:
                response = await client.get(srv.url + "/inc", headers={"Host": "a.test"})
                answers.append(response.text)

            async with trio.open_nursery() as nursery:
                for _ in range(200):
                    nursery.start_soon(one)
        assert answers == ["ok"] * 200
        assert (await srv.get("/read")).text == "200"


async def test_a_lease_of_a_request_killed_for_cpu_is_free_at_once(backend, tmp_path):
    write(tmp_path, {
        "a.test/hog": "lease.acquire('L') while true do end",
        "a.test/take": "return tostring(lease.acquire('L', 0))",
    })  # fmt: skip
    async with running(tmp_path, cpu_ms=200, **storage_settings(tmp_path, backend)) as srv:
        assert (await srv.get("/hog")).status_code == 504
        assert (await srv.get("/take")).text == "true"


async def test_a_held_lease_makes_others_wait_then_time_out(backend, tmp_path):
    upstream = Upstream()
    try:
        scripts = {
            "a.test/hold": f"lease.acquire('L') http.request('{upstream.url('/slow?s=30')}')"
            " return 'held'",
            "a.test/try": "return tostring(lease.acquire('L', 0.2)) .. '/' .."
            " tostring(lease.acquire('L', 0.2))",
            "b.test/try": "return tostring(lease.acquire('L', 0))",  # another tenant's 'L'
            "a.test/again": "local got = lease.acquire('L', 5) return tostring(got) .. '/' .."
            " tostring(lease.acquire('L'))",
        }
        options = storage_settings(tmp_path, backend)
        async with (
            serving(tmp_path, scripts, timeout_ms=20_000, **options) as srv,
            trio.open_nursery() as n,
        ):
            held = []

            async def hold() -> None:
                held.append((await srv.get("/hold", timeout=30)).text)

            n.start_soon(hold)
            await trio.to_thread.run_sync(upstream.wait_for, "/slow", 1)
            assert (await srv.get("/try")).text == "false/false"
            assert (await srv.get("/try", host="b.test")).text == "true"
            upstream.release.set()
            # Released when the holder's request ends: acquired, and again at once (its own).
            assert (await srv.get("/again")).text == "true/true"
        assert held == ["held"]
    finally:
        upstream.close()


async def test_cache_is_per_tenant_and_best_effort(backend, tmp_path):
    write(tmp_path, {
        "a.test/cache": "cache.set('k', 42, 60) local v = cache.get('k') cache.delete('k')\n"
                        "return v .. '/' .. tostring(cache.get('k'))",
        "a.test/put": "cache.set('shared', 'a') return 'ok'",
        "b.test/get": "return tostring(cache.get('shared'))",
    })  # fmt: skip
    async with running(tmp_path, **storage_settings(tmp_path, backend)) as srv:
        assert (await srv.get("/cache")).text == "42/nil"
        assert (await srv.get("/put")).text == "ok"
        assert (await srv.get("/get", host="b.test")).text == "nil"


async def test_the_cache_honours_ttl_and_shares(autojump_clock):
    cache = TenantCache(max_bytes=10_000, tenant_share=0.25)
    cache.set("a", b"k", b"v", ttl_s=10)
    assert cache.get("a", b"k") == b"v"
    await trio.sleep(11)
    assert cache.get("a", b"k") is None
    for i in range(100):  # a's share is 2,500 bytes: its oldest go, b's stay
        cache.set("a", b"k%d" % i, b"x" * 100, ttl_s=60)
    cache.set("b", b"mine", b"y", ttl_s=60)
    assert cache.get("b", b"mine") == b"y"
    assert cache.get("a", b"k99") is not None
    assert cache.get("a", b"k0") is None
    assert cache.bytes <= 10_000


async def test_storage_calls_show_in_server_timing(tmp_path):
    write(tmp_path, {"a.test/timed": "storage.x = 'y' return storage.x"})
    async with running(tmp_path) as srv:
        response = await srv.get("/timed")
    assert response.text == "y"
    assert "storage;dur=" in response.headers["server-timing"]


def test_the_database_is_wal_and_shared_by_several_connections(tmp_path):
    first = SqliteStorage(tmp_path / "storage.db")
    second = SqliteStorage(tmp_path / "storage.db")  # another process would open it the same
    quota = Quota(max_keys=10, max_bytes=1000)
    first.set("a.test", b"k", b"1", quota)
    assert second.get("a.test", b"k") == b"1"
    assert second.try_lease("a.test", b"L", "h2", 30)
    assert not first.try_lease("a.test", b"L", "h1", 30)
    assert not first.release_lease("a.test", b"L", "h1")  # compare-and-delete
    assert second.release_lease("a.test", b"L", "h2")
    mode = sqlite3.connect(tmp_path / "storage.db").execute("PRAGMA journal_mode").fetchone()
    assert mode == ("wal",)
    first.close()
    second.close()


async def test_a_kill_9_during_writes_keeps_every_acknowledged_write(tmp_path):
    """A real `sngin serve`, four clients writing as fast as they can, SIGKILL mid-stream: the
    database opens, passes its integrity check, and holds every write a client saw acknowledged."""
    sites = tmp_path / "sites"
    write(sites, {"a.test/w": "storage['k' .. request.query.n] = request.query.n return 'ok'"})
    data = tmp_path / "data"
    env = {**os.environ, "SNGIN_CODE_DIR": str(sites), "SNGIN_DATA_PATH": str(data),
           "SNGIN_WORKERS": "2"}  # fmt: skip
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    acknowledged: list[int] = []
    enough = trio.Event()
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(argv, env=env, stderr=subprocess.PIPE)
        try:
            url, _ = await wait_until_serving(process)
            async with httpx.AsyncClient(timeout=10) as client, trio.open_nursery() as nursery:

                async def drain_log() -> None:  # a full stderr pipe would stall the server
                    while await process.stderr.receive_some(65536):
                        pass

                nursery.start_soon(drain_log)

                async def writer(first: int) -> None:
                    n = first
                    with contextlib.suppress(httpx.HTTPError):
                        while True:
                            response = await client.get(
                                f"{url}/w?n={n}", headers={"Host": "a.test"}
                            )
                            assert response.text == "ok", response.text
                            acknowledged.append(n)
                            if len(acknowledged) == 300:
                                enough.set()
                            n += 4

                for first in range(4):
                    nursery.start_soon(writer, first)
                await enough.wait()
                process.kill()
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()
    db = sqlite3.connect(data / "storage.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stored = {bytes(k).decode() for (k,) in db.execute("SELECT key FROM storage")}
    missing = [n for n in acknowledged if f"k{n}" not in stored]
    assert missing == []
    assert len(acknowledged) >= 300


async def test_operators_list_get_set_export_import_and_drop_through_the_admin_api(
    backend, tmp_path
):
    write(tmp_path, {
        "a.test/seed": "storage.greeting = 'hi' storage.bin = '\\0\\255' return storage.theme",
    })  # fmt: skip
    async with running(tmp_path, admin_token=TOKEN, **storage_settings(tmp_path, backend)) as srv:
        api = srv.url + "/__sngin/storage"
        client = srv.client
        assert (await client.get(api)).status_code == 401  # behind the token
        put = await client.put(api + "/a.test/value?key=theme", content=b"dark", headers=AUTH)
        assert put.json() == {"host": "a.test", "key": "theme", "stored": True}
        assert (await srv.get("/seed")).text == "dark"  # a seeded value the script reads
        tenants = (await client.get(api, headers=AUTH)).json()["tenants"]
        assert tenants == [{"host": "a.test", "keys": 3, "bytes": 3 + 4 + 8 + 2 + 5 + 2}]
        page = (await client.get(api + "/a.test?limit=2", headers=AUTH)).json()
        assert [k["key"] for k in page["keys"]] == ["bin", "greeting"]
        rest = (await client.get(api + f"/a.test?after={page['next']}", headers=AUTH)).json()
        assert [k["key"] for k in rest["keys"]] == ["theme"]
        assert rest["next"] is None
        raw = await client.get(api + "/a.test/value?key=bin", headers=AUTH)
        assert raw.content == b"\x00\xff"
        exported = (await client.get(api + "/a.test/export", headers=AUTH)).json()
        imported = await client.post(api + "/b.test/import", json=exported, headers=AUTH)
        assert imported.json() == {"host": "b.test", "imported": 3}
        copy = await client.get(api + "/b.test/value?key=bin", headers=AUTH)
        assert copy.content == b"\x00\xff"  # every byte round-trips (base64 in the JSON)
        everything = (await client.get(srv.url + "/__sngin/storage-export", headers=AUTH)).json()
        assert sorted(everything["tenants"]) == ["a.test", "b.test"]
        dropped = await client.delete(api + "/b.test", headers=AUTH)
        assert dropped.json() == {"host": "b.test", "deleted": 3}
        again = await client.post(
            srv.url + "/__sngin/storage-import", json=everything, headers=AUTH
        )
        assert again.json() == {"imported": {"a.test": 3, "b.test": 3}}
        stats = (await client.get(srv.url + "/__sngin/stats", headers=AUTH)).json()["storage"]
        assert [t["host"] for t in stats["tenants"]] == ["a.test", "b.test"]
        metrics = (await client.get(srv.url + "/__sngin/metrics", headers=AUTH)).text
        assert 'sngin_storage_bytes{tenant="a.test"} 24.0' in metrics
        gone = await client.delete(api + "/a.test/value?key=theme", headers=AUTH)
        assert gone.json()["deleted"] is True
        missing = await client.get(api + "/a.test/value?key=theme", headers=AUTH)
        assert missing.status_code == 404
        bad = await client.post(api + "/a.test/import", json={"items": [{"key": 1}]}, headers=AUTH)
        assert bad.status_code == 400


async def test_sngin_storage_cli_sets_lists_exports_and_imports(tmp_path, capsys):
    write(tmp_path, {"a.test/read": "return storage.api_base or 'unset'"})
    async with running(tmp_path, admin_token=TOKEN) as srv:
        address = srv.url.removeprefix("http://")

        async def cli(*words: str) -> int:
            argv = ["storage", *words, "--url", address, "--token", TOKEN]
            return await trio.to_thread.run_sync(main, argv, {})

        assert await cli("set", "a.test", "api_base", "https://api.example.com") == 0
        assert (await srv.get("/read")).text == "https://api.example.com"
        assert capsys.readouterr().out == "stored api_base for a.test\n"
        assert await cli("list", "a.test") == 0
        assert capsys.readouterr().out.splitlines() == ["     BYTES  KEY", "        23  api_base"]
        assert await cli("list", "c.test") == 0
        assert capsys.readouterr().out == "no keys for c.test\n"
        assert await cli("list") == 0
        listing = capsys.readouterr().out.splitlines()
        assert listing[0].split() == ["HOST", "KEYS", "BYTES"]
        assert listing[1].split() == ["a.test", "1", "31"]  # (usage counts the key too)
        assert await cli("list", "--json") == 0
        assert json.loads(capsys.readouterr().out)["tenants"][0]["host"] == "a.test"
        assert await cli("export", "a.test") == 0
        exported = tmp_path / "export.json"
        exported.write_text(capsys.readouterr().out)
        assert await cli("import", "b.test", str(exported)) == 0
        assert capsys.readouterr().out == "imported 1 keys into b.test\n"
        assert await cli("get", "b.test", "api_base") == 0
        assert capsys.readouterr().out == "https://api.example.com"
        assert await cli("delete", "b.test", "api_base") == 0
        assert capsys.readouterr().out == "deleted api_base of b.test\n"
        assert await cli("get", "b.test", "nothing") == 1
        assert capsys.readouterr().err == "sngin: no such key (404)\n"
        assert await cli("set", "a.test") == 2  # usage: one clear line
        assert "usage: sngin storage set HOST KEY VALUE" in capsys.readouterr().err


async def test_a_busy_database_is_waited_for_off_the_event_loop_then_unavailable(tmp_path):
    """Another process holding the write lock: a write waits in a worker thread while the event
    loop keeps running, and succeeds once the lock is gone; held past the busy timeout, the
    write is `storage unavailable`, and the next one works again."""
    storage = TenantStorage(SqliteBackend(tmp_path / "storage.db", busy_timeout_ms=300))
    other = sqlite3.connect(tmp_path / "storage.db", isolation_level=None)
    quota = Quota(max_keys=10, max_bytes=1000)
    ticks = 0
    try:
        other.execute("BEGIN IMMEDIATE")
        async with trio.open_nursery() as nursery:
            done = trio.Event()

            async def write() -> None:
                await storage.set("a.test", b"k", b"v", quota)
                done.set()

            nursery.start_soon(write)
            while ticks < 20:  # the loop runs while the write waits for the lock
                await trio.lowlevel.checkpoint()
                ticks += 1
            assert not done.is_set()
            other.execute("COMMIT")
        assert await storage.get("a.test", b"k") == b"v"
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(StorageUnavailable, match="storage unavailable"):
            await storage.set("a.test", b"k2", b"v", quota)
        other.execute("COMMIT")
        await storage.set("a.test", b"k2", b"v", quota)  # back as soon as the lock is
        assert await storage.get("a.test", b"k2") == b"v"
    finally:
        other.close()
        storage.close()


async def test_a_tenants_own_storage_quota_is_clamped_to_the_operators_ceiling(backend, tmp_path):
    write(tmp_path, {"a.test/fill": "for i = 1, 5 do storage['k' .. i] = 'v' end return 'ok'"})
    (tmp_path / "a.test" / "_sngin.json").write_text('{"storage": {"max_keys": 2}}')
    (tmp_path / "b.test").mkdir()
    (tmp_path / "b.test" / "_sngin.json").write_text('{"storage": {"max_keys": 1000000}}')
    write(tmp_path, {"b.test/fill": "for i = 1, 5 do storage['k' .. i] = 'v' end return 'ok'"})
    options = storage_settings(tmp_path, backend, max_keys=4)
    async with running(tmp_path, tenant_configs=True, **options) as srv:
        lowered = (await srv.get("/fill")).text
        clamped = (await srv.get("/fill", host="b.test")).text
    assert lowered.endswith("storage: storage quota of 2 keys exceeded\n")
    assert clamped.endswith("storage: storage quota of 4 keys exceeded\n")  # the default's cap


async def test_a_redis_that_is_down_is_storage_unavailable_until_it_is_back(tmp_path):
    """No Redis at the address: the script gets `storage unavailable` quickly, the server keeps
    serving; once a Redis listens there, storage works again without a restart."""
    import shutil
    import socket
    import subprocess

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    write(tmp_path, {"a.test/count": "storage.n = (storage.n or 0) + 1 return storage.n"})
    options = storage_settings(tmp_path, {"redis_url": f"redis://127.0.0.1:{port}/0"})
    async with running(tmp_path, **options) as srv:
        with trio.fail_after(10):
            down = await srv.get("/count")
        assert down.text.endswith("storage: storage unavailable\n")
        assert (await srv.get("/", host="a.test")).status_code == 200
        binary = shutil.which("redis-server")
        assert binary is not None
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        server = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE)
        try:
            log = b""
            with trio.fail_after(20):
                while b"Ready to accept connections" not in log:
                    chunk = await server.stdout.receive_some(4096)
                    assert chunk, log
                    log += chunk
                assert (await srv.get("/count")).text == "1"
        finally:
            server.terminate()
            await server.wait()


async def test_the_redis_cache_keeps_each_tenants_share_and_the_total(redis_url):
    async with open_redis_storage(redis_url) as redis:
        cache = RedisCache(redis, max_bytes=2_000, tenant_share=0.5)  # 1,000 bytes a tenant
        for i in range(20):  # 20 x 164 bytes: only a's newest fit its share
            await cache.store("a", b"k%d" % i, b"x" * 100, ttl_s=60)
        await cache.store("b", b"mine", b"y", ttl_s=60)
        assert await cache.fetch("b", b"mine") == b"y"
        assert await cache.fetch("a", b"k19") == b"x" * 100
        assert await cache.fetch("a", b"k0") is None
        await cache.remove("a", b"k19")
        assert await cache.fetch("a", b"k19") is None
        for i in range(30):  # c fills its share; the total (2,000) evicts the oldest of all
            await cache.store("c", b"c%d" % i, b"z" * 100, ttl_s=60)
        used = int(await redis.client.get("sngin:ct"))
        assert used <= 2_000
        await cache.store("a", b"short", b"v", ttl_s=0.05)
        assert await cache.fetch("a", b"short") == b"v"


async def test_a_failure_coredis_raises_in_its_pool_ends_neither_the_server_nor_storage(redis_url):
    """coredis ends a pool by raising a connection's failure from the pool's task group, which
    cancels whatever runs inside the pool's `async with` (once, the whole server): the storage
    holds its client in a task of its own and opens a new one."""
    import coredis.exceptions

    async def fail() -> None:  # what coredis's connection task raised
        raise coredis.exceptions.ConnectionError("Unable to establish a connection")

    async with open_redis_storage(redis_url) as redis:
        await redis.set("t", b"k", b"before", Quota(10, 1_000))
        first, reopened = redis.client, redis.reopened
        first.connection_pool.task_group.start_soon(fail)
        with trio.fail_after(10):  # this body goes on: it was not cancelled
            await reopened.wait()
        assert redis.client is not first
        assert await redis.get("t", b"k") == b"before"
        assert await redis.problem() is None


async def test_the_storage_api_keeps_the_scripts_limits_and_the_tenants_quota(tmp_path):
    """The API was a way around the limits: a 6,000-byte key, an 8 MiB value, and the
    operator's default quota instead of the tenant's own."""
    write(tmp_path, {"a.test": "return 'a'"})
    (tmp_path / "a.test" / "_sngin.json").write_text('{"storage": {"max_keys": 2}}')
    async with running(tmp_path, admin_token=TOKEN, tenant_configs=True) as srv:
        value = srv.url + "/__sngin/storage/a.test/value"
        long_key = await srv.client.put(value, params={"key": "k" * 6000}, content=b"v",
                                        headers=AUTH)  # fmt: skip
        assert long_key.status_code == 400
        assert long_key.json()["error"] == "keys must be 1 to 1024 bytes"
        # An 8 MiB value, declared: refused unread.
        big = await srv.raw(
            b"PUT /__sngin/storage/a.test/value?key=big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer " + TOKEN.encode() + b"\r\nConnection: close\r\n"
            b"Content-Length: 8388608\r\n\r\n"
        )
        assert big.startswith(b"HTTP/1.1 413"), big
        for key in ("one", "two"):
            stored = await srv.client.put(value, params={"key": key}, content=b"v", headers=AUTH)
            assert stored.status_code == 200
        third = await srv.client.put(value, params={"key": "three"}, content=b"v", headers=AUTH)
        assert third.status_code == 409
        assert third.json()["error"] == "storage quota of 2 keys exceeded"
        items = {"items": [{"key": "k" * 2000, "value": "v"}]}
        imported = await srv.client.post(srv.url + "/__sngin/storage/a.test/import", json=items,
                                         headers=AUTH)  # fmt: skip
        assert imported.status_code == 400
