"""Limits enforced outside Lua, quarantine and supervision, with real worker subprocesses."""

from __future__ import annotations

import os
import signal
import sys

import pytest
import trio
import trio.lowlevel

from sandbox.protocol import Job, Request
from sngin.limits import Limits
from sngin.tenants.quarantine import Quarantine
from sngin.workers.failures import WorkerBootFailed
from sngin.workers.pool import PoolConfig, open_pool
from sngin.workers.process import WorkerOptions
from tests.support import AUTH, TOKEN, add_sites, running, start_busy

CPU_BOMBS = {
    "jit_loop": "local n = 0 while true do n = n + 1 end",
    "catastrophic_pattern": (
        "return string.find(string.rep('a', 5000), string.rep('a*', 30) .. 'b')"
    ),
    "pcall_loop": "while true do pcall(error, 'swallowed') end",
    "coroutine_swallowing": """
        local co = coroutine.wrap(function()
          while true do pcall(function() for i = 1, 1e12 do end end) end
        end)
        co()
    """,
}

MEMORY_BOMBS = {
    "rep_2_30": "return string.rep('x', 2^30)",
    "table_growth": "local t = {} for i = 1, 1e9 do t[i] = {i} end",
    "concat_loop": "local s = 'x' while true do s = s .. s end",
}


@pytest.mark.parametrize("name", list(CPU_BOMBS))
async def test_cpu_limit_stops_the_script_long_before_the_wall_limit(tmp_path, name):
    add_sites(tmp_path, {f"a.test/{name}": CPU_BOMBS[name]})
    async with running(tmp_path, timeout_ms=20_000, cpu_ms=300) as srv:
        response = await srv.get(f"/{name}")
        assert response.status_code == 504
        assert response.text == "the script exceeded its CPU-time limit of 300 ms\n"
        assert (await srv.get("/")).text == "root of a"  # the same tenant, right after
        assert (await srv.get("/", host="b.test")).text == "root of b"
        stats = srv.pool.statistics()
        assert stats.tenants["a.test"].cpu_kills == 1
        assert stats.exits["cpu"] == 1


@pytest.mark.parametrize("name", list(MEMORY_BOMBS))
async def test_memory_bomb_is_500_naming_the_limit(tmp_path, name):
    add_sites(tmp_path, {f"a.test/{name}": MEMORY_BOMBS[name]})
    async with running(tmp_path, memory_mb=32, cpu_ms=5000) as srv:
        response = await srv.get(f"/{name}")
        assert response.status_code == 500
        assert response.text == "the script exceeded its memory limit of 32 MB\n"
        assert (await srv.get("/")).text == "root of a"
        assert (await srv.get("/", host="b.test")).text == "root of b"
        assert srv.pool.statistics().tenants["a.test"].memory_kills == 1


async def test_memory_error_caught_by_xpcall_cannot_grow_past_the_cap(tmp_path):
    retry = """
        local function bomb() return string.rep('x', 2^30) end
        while true do xpcall(bomb, function(e) return e end) end
    """
    add_sites(tmp_path, {"a.test/retry": retry})
    async with running(tmp_path, memory_mb=32, cpu_ms=300) as srv:
        response = await srv.get("/retry")
        # Every retry fails at the cap, so the loop can only spin until the CPU limit.
        assert response.status_code == 504
        assert "CPU-time limit" in response.text
        assert all(w.rss_bytes < 200 * 1024 * 1024 for w in srv.pool.statistics().workers)
        assert (await srv.get("/")).text == "root of a"


async def test_huge_output_is_refused_before_it_crosses_the_pipe(tmp_path):
    headers = """
        local big = string.rep('v', 1024 * 1024)
        local h = {['Set-Cookie'] = {}}
        for i = 1, 100000 do h['Set-Cookie'][i] = big end
        return 'x', h
    """
    add_sites(tmp_path, {"a.test/headers": headers})
    async with running(tmp_path) as srv:
        response = await srv.get("/headers")
        assert response.status_code == 500
        assert "invalid response" in response.text
        assert all(w.rss_bytes < 200 * 1024 * 1024 for w in srv.pool.statistics().workers)


async def test_segfaulting_worker_is_502_and_replaced(tmp_path):
    async with running(tmp_path) as srv:
        results = {}
        async with trio.open_nursery() as nursery:
            (victim,) = await start_busy(srv, nursery, "/spin", results)
            os.kill(victim, signal.SIGSEGV)
        assert results["/spin"].status_code == 502
        assert results["/spin"].text == "the script's worker process crashed\n"
        assert (await srv.get("/")).text == "root of a"
        stats = srv.pool.statistics()
        assert stats.exits["crash"] == 1
        assert stats.tenants["a.test"].crashes == 1


async def test_repeated_limit_kills_quarantine_only_that_tenant(tmp_path):
    add_sites(tmp_path, {"a.test/burn": CPU_BOMBS["jit_loop"]})
    pool = {"quarantine_strikes": 2, "quarantine_window_s": 600, "quarantine_s": 600}
    async with running(tmp_path, cpu_ms=200, pool=pool) as srv:
        for _ in range(2):
            assert (await srv.get("/burn")).status_code == 504
        paused = await srv.get("/")
        assert paused.status_code == 503
        assert 590 <= int(paused.headers["retry-after"]) <= 600
        assert "paused" in paused.text
        assert (await srv.get("/", host="b.test")).text == "root of b"
        stats = srv.pool.statistics().tenants
        assert stats["a.test"].quarantines == 1
        assert stats["a.test"].quarantined_requests == 1
        assert stats["b.test"].quarantines == 0


async def test_quarantine_expires(autojump_clock):
    quarantine = Quarantine(strikes=3, window_s=60, duration_s=30)
    assert not quarantine.strike("a.test")
    await trio.sleep(59)
    assert not quarantine.strike("a.test")
    assert quarantine.strike("a.test")  # three strikes within 60 s
    assert quarantine.remaining_s("a.test") == 30
    assert quarantine.remaining_s("b.test") is None
    await trio.sleep(29.5)
    assert quarantine.remaining_s("a.test") == 0.5
    await trio.sleep(0.5)
    assert quarantine.remaining_s("a.test") is None


async def test_strikes_outside_the_window_do_not_quarantine(autojump_clock):
    quarantine = Quarantine(strikes=2, window_s=10, duration_s=30)
    assert not quarantine.strike("a.test")
    await trio.sleep(11)
    assert not quarantine.strike("a.test")
    assert quarantine.remaining_s("a.test") is None


async def test_workers_are_recycled_after_max_requests(tmp_path):
    async with running(tmp_path, workers=2, pool={"max_requests_per_worker": 5}) as srv:
        first = set(srv.pool.pids())
        for _ in range(30):
            assert (await srv.get("/")).text == "root of a"
        await srv.pool.wait_for_workers()
        stats = srv.pool.statistics()
        assert stats.exits["recycle"] >= 2  # more may still be on their way out
        assert not first & set(srv.pool.pids())
        assert stats.live == 2


async def test_statistics_snapshot(tmp_path):
    async with running(tmp_path) as srv:
        await srv.get("/")
        await srv.get("/err")
        stats = srv.pool.statistics()
        tenant = stats.tenants["a.test"]
        assert (tenant.requests, tenant.status_2xx, tenant.status_5xx) == (2, 1, 1)
        assert tenant.cpu_ms > 0
        assert tenant.wall_ms > 0
        assert len(stats.workers) == 2
        for worker in stats.workers:
            assert worker.state == "idle"
            assert worker.rss_bytes > 1024 * 1024
            assert worker.age_s >= 0
        with pytest.raises(AttributeError):
            stats.size = 3  # type: ignore[misc]


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_no_fd_leak_across_1000_requests_and_50_replacements():
    job = Job(tenant="a.test", key="a.test", version="1", request=Request(method="GET", path="/"),
              source=b"return 'ok'")  # fmt: skip
    spin = Job(tenant="a.test", key="a.test/spin", version="1",
               request=Request(method="GET", path="/"), source=b"while true do end")  # fmt: skip
    seen: set[int] = set()
    limits = Limits(cpu_ms=50)
    with trio.fail_after(120):
        config = PoolConfig(size=2, quarantine_strikes=1000)
        async with open_pool(config, lambda tenant: limits) as pool:
            await pool.run(job)
            await pool.wait_for_workers()
            before = fd_count()
            for i in range(1000):
                assert (await pool.run(job)).body == b"ok"
                if i % 20 == 0:
                    seen.update(pool.pids())
                    with pytest.raises(Exception, match="CPU-time limit"):
                        await pool.run(spin)
            # Replacements are started in the background: wait until both workers are back.
            await pool.wait_for_workers()
            seen.update(pool.pids())
            assert pool.statistics().exits["cpu"] == 50
            assert fd_count() <= before  # (a pipe may be mid-close when `before` is taken)
    for pid in seen:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_workers_that_never_boot_stop_the_pool_with_a_clear_error():
    broken = WorkerOptions(argv=(sys.executable, "-c", "import sys; sys.exit(3)"))
    with trio.fail_after(60), pytest.RaisesGroup(WorkerBootFailed, flatten_subgroups=True):
        async with open_pool(PoolConfig(size=2, worker=broken)):
            pass


async def test_once_serving_a_worker_that_cannot_start_is_retried_while_the_others_serve(
    tmp_path,
):
    """Past start-up, five failed starts in a row no longer stop the server: the replacement
    is retried (with backoff) while the live worker serves, and arrives once starts work."""
    failing = tmp_path / "starts-fail"
    gate = (
        "import os, sys\n"
        f"if os.path.exists({str(failing)!r}): sys.exit(3)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'sandbox'])\n"
    )
    options = WorkerOptions(argv=(sys.executable, "-c", gate))
    config = PoolConfig(size=2, worker=options, spawn_retry_s=0.01, max_spawn_retry_s=0.05)
    with trio.fail_after(60):
        async with open_pool(config) as pool:
            victim = pool.pids()[0]
            failing.touch()
            os.kill(victim, signal.SIGKILL)
            supervisor = pool.supervisor
            await supervisor.wait_until(lambda: supervisor.spawn_failures >= 8)
            assert pool.live_count() == 1
            reply = await pool.run(
                Job(tenant="a.test", key="a.test", version="1",
                    request=Request(method="GET", path="/"), source=b"return 'still serving'")
            )  # fmt: skip
            assert reply.body == b"still serving"
            failing.unlink()
            await pool.wait_for_workers()
            assert victim not in pool.pids()
            assert pool.statistics().spawn_failures >= 8


async def test_readiness_says_not_ready_while_no_worker_can_start(tmp_path):
    failing = tmp_path / "starts-fail"
    gate = (
        "import os, sys\n"
        f"if os.path.exists({str(failing)!r}): sys.exit(3)\n"
        "os.execv(sys.executable, [sys.executable, '-m', 'sandbox'])\n"
    )
    pool = {
        "worker": WorkerOptions(argv=(sys.executable, "-c", gate)),
        "spawn_retry_s": 0.01,
        "max_spawn_retry_s": 0.05,
    }
    async with running(tmp_path, admin_token=TOKEN, pool=pool) as srv:
        srv.deps.observer.ready = True  # (the code store side of readiness is not tested here)
        failing.touch()
        for pid in srv.pool.pids():
            os.kill(pid, signal.SIGKILL)
        supervisor = srv.pool.supervisor
        await supervisor.wait_until(lambda: srv.pool.live_count() == 0)
        await supervisor.wait_until(lambda: supervisor.spawn_failures >= 6)
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
        assert (ready.status_code, ready.json()) == (
            503,
            {"ready": False, "reason": "no live workers"},
        )
        failing.unlink()
        await srv.pool.wait_for_workers()
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
        assert (ready.status_code, ready.json()) == (200, {"ready": True})
        assert (await srv.get("/")).status_code == 200


def read_proc(pid: int, name: str) -> bytes:
    with open(f"/proc/{pid}/{name}", "rb") as handle:
        return handle.read()


async def test_worker_runs_stripped_down(tmp_path):
    async with running(tmp_path) as srv:
        for pid in srv.pool.pids():
            assert read_proc(pid, "environ") == b""
            status = read_proc(pid, "status").decode()
            assert "NoNewPrivs:\t1" in status
            # stdin, stdout (now stderr), stderr, and the frame pipe moved off stdout.
            assert sorted(os.listdir(f"/proc/{pid}/fd")) == ["0", "1", "2", "3"]
            limits = read_proc(pid, "limits").decode()
            assert "Max open files            16" in limits
            assert "Max core file size        0" in limits
            address_space = next(line for line in limits.splitlines() if "address space" in line)
            assert "unlimited" not in address_space
            # Jobs written to its pipe do not preempt the server (replies batch up).
            assert os.sched_getscheduler(pid) == os.SCHED_BATCH
