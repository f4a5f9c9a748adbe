"""Workers forked from the zygote (sandbox/zygote.py, sngin/workers/zygote.py): they are the
zygote's children, not the server's; each has its own random seeds; their exits are told apart
as before; a zygote that dies is replaced and the workers it forked serve on; nothing is left
behind when the pool closes."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from sngin.limits import Limits
from sngin.workers.pool import PoolConfig, open_pool
from tests.support import WAITS_UPSTREAM, Gate, gate_job


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def job(tenant: str, source: bytes, job_id: int = 0):
    return msgspec.structs.replace(gate_job(tenant, source), id=job_id)


async def test_workers_are_the_zygotes_children():
    async with open_pool(PoolConfig(size=2)) as pool:
        await pool.wait_for_workers()
        zygote = pool.supervisor.zygote
        assert zygote is not None
        assert {parent_of(pid) for pid in pool.pids()} == {zygote.pid}
        assert zygote.pid != os.getpid()


async def test_each_forked_worker_draws_its_own_random_numbers():
    """The zygote's seed buffer is not shared: two workers' first draws differ."""
    draws: list[bytes] = []
    async with open_pool(PoolConfig(size=2)) as pool:
        await pool.wait_for_workers()
        gate = Gate()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:

                async def parked_then_draw() -> None:
                    source = WAITS_UPSTREAM.replace(b"return ", b"local _ = ") + (
                        b" return tostring(math.random())"
                    )
                    draws.append((await pool.run(job("a.test", source), gate)).body)

                nursery.start_soon(parked_then_draw)
                await gate.entered.wait()
                # The other worker (the first holds a.test's parked request).
                draws.append(
                    (await pool.run(job("b.test", b"return tostring(math.random())"))).body
                )
                gate.opened.set()
        assert len(set(pool.busy_pids())) == 0
    assert len(draws) == 2
    assert draws[0] != draws[1]


async def test_cpu_and_memory_exits_are_told_apart_for_forked_workers():
    limits = Limits(cpu_ms=100, memory_mb=16)
    async with open_pool(PoolConfig(size=2, quarantine_strikes=1000), lambda t: limits) as pool:
        await pool.wait_for_workers()
        with trio.fail_after(30):
            with pytest.raises(Exception, match="CPU-time limit"):
                await pool.run(job("a.test", b"while true do end"))
            await pool.wait_for_workers()
        exits = pool.statistics().exits
        assert exits["cpu"] == 1
        assert exits.get("crash", 0) == 0


async def test_a_zygote_that_dies_is_replaced_and_its_workers_serve_on():
    async with open_pool(PoolConfig(size=2, quarantine_strikes=1000),
                         lambda t: Limits(cpu_ms=100)) as pool:  # fmt: skip
        await pool.wait_for_workers()
        first = pool.supervisor.zygote
        assert first is not None
        os.kill(first.pid, signal.SIGKILL)
        with trio.fail_after(30):
            while not first.gone:  # its control socket ends
                await trio.testing.wait_all_tasks_blocked()
            # The workers it forked still answer...
            assert (await pool.run(job("a.test", b"return 'still here'"))).body == b"still here"
            # ...and one that ends is replaced through a new zygote (its exit status went
            # with the old zygote: it counts as a crash).
            with pytest.raises(Exception, match=r"CPU-time limit|crashed|ended"):
                await pool.run(job("spin.test", b"while true do end"))
            await pool.wait_for_workers()
        second = pool.supervisor.zygote
        assert second is not None
        assert second.pid != first.pid
        assert (await pool.run(job("b.test", b"return 'new'"))).body == b"new"


async def test_nothing_is_left_behind_when_the_pool_closes():
    async with open_pool(PoolConfig(size=2)) as pool:
        await pool.wait_for_workers()
        pids = [*pool.pids(), pool.supervisor.zygote.pid]
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_a_sandbox_folder_where_the_server_runs_never_becomes_the_workers_code(
    tmp_path, monkeypatch
):
    """`python -m sandbox` puts the working directory first on sys.path: without -I, a
    `sandbox` package in the folder sngin was started from would be what every worker runs."""
    decoy = tmp_path / "sandbox"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "__main__.py").write_text("raise SystemExit(7)\n")
    monkeypatch.chdir(tmp_path)
    async with open_pool(PoolConfig(size=1)) as pool:
        await pool.wait_for_workers()
        reply = await pool.run(job("a.test", b"return 'the real sandbox'"))
    assert reply.body == b"the real sandbox"
