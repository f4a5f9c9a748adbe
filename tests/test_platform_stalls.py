"""A stalled platform is not the tenant's fault: with Redis frozen (SIGSTOP), a storage or cache
call gives up within min(2 s, the request's wall time left - 250 ms) as a Lua error, and a
wall kill while parked on one is not a quarantine strike."""

from __future__ import annotations

import os
import signal
from contextlib import contextmanager

import trio

import sngin.calls.storage_calls
from sngin.config import StorageSettings
from tests.support import free_port, redis_server_process, running

STRIKE_ONCE = {"quarantine_strikes": 1, "quarantine_s": 600}
READ = """
local ok, err = pcall(function() return storage.k end)
return tostring(ok) .. ' ' .. tostring(err)
"""


@contextmanager
def frozen(process):
    os.kill(process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(process.pid, signal.SIGCONT)


def write(tmp_path, scripts: dict[str, str]) -> None:
    for key, source in scripts.items():
        (tmp_path / key).mkdir(parents=True, exist_ok=True)
        (tmp_path / key / "index.lua").write_text(source)


def redis_options(tmp_path, port: int, **extra) -> dict:
    storage = StorageSettings(data_path=tmp_path / ".data")
    changes = {"storage": storage, "redis_url": f"redis://127.0.0.1:{port}/0"}
    return {"settings_changes": changes, "pool": STRIKE_ONCE, **extra}


async def test_a_frozen_redis_is_a_quick_lua_error_and_no_strike(tmp_path):
    write(tmp_path, {"a.test/read": READ, "a.test/cache": "return cache.get('k') or 'none'",
                     "a.test/plain": "storage.k = 'v' return storage.k"})  # fmt: skip
    port = free_port()
    with redis_server_process(port) as redis:
        async with running(tmp_path, **redis_options(tmp_path, port, timeout_ms=1000)) as srv:
            assert (await srv.get("/plain")).text == "v"
            with frozen(redis):
                started = trio.current_time()
                read = await srv.get("/read")
                took = trio.current_time() - started
                cache = await srv.get("/cache")
                bare = await srv.get("/plain")
            # 1 s of wall time: the call gave up after 0.75 s, leaving the script time to answer.
            assert read.status_code == 200
            assert read.text.startswith("false storage: storage unavailable")
            assert took < 1.0
            assert cache.status_code == 500
            assert "storage unavailable" in cache.text
            assert bare.status_code == 500  # an uncaught Lua error, not a 504 wall kill
            assert "storage unavailable" in bare.text
            # No strike: with one strike to quarantine, the site still answers.
            assert srv.deps.pool.quarantined() == {}
            assert srv.pool.statistics().tenants["a.test"].wall_kills == 0
            assert (await srv.get("/plain")).text == "v"


async def test_a_wall_kill_while_parked_on_storage_is_not_a_strike(tmp_path, monkeypatch):
    # The backstop: were the bound ever to miss, the kill still is the platform's.
    monkeypatch.setattr(sngin.calls.storage_calls, "ANSWER_MARGIN_S", -10.0)
    monkeypatch.setattr(sngin.calls.storage_calls, "BACKEND_WAIT_S", 10.0)
    write(tmp_path, {"a.test/read": READ})
    port = free_port()
    with redis_server_process(port) as redis:
        async with running(tmp_path, **redis_options(tmp_path, port, timeout_ms=500)) as srv:
            with frozen(redis):
                killed = await srv.get("/read")
            assert killed.status_code == 504
            assert killed.text == "the script exceeded its wall-time limit of 500 ms\n"
            assert srv.pool.statistics().tenants["a.test"].wall_kills == 0  # not struck
            assert srv.deps.pool.quarantined() == {}


async def test_a_tenants_own_wall_kill_is_still_a_strike(tmp_path):
    write(tmp_path, {"a.test/spin": "local t = os.time() while true do end"})
    async with running(tmp_path, timeout_ms=300, cpu_ms=5000, pool=STRIKE_ONCE) as srv:
        assert (await srv.get("/spin")).status_code == 504
        assert "a.test" in srv.deps.pool.quarantined()
