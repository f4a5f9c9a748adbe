"""Elastic workers (sngin/workers/elastic.py): while requests wait and the workers hold only
requests parked on platform calls, the pool forks more workers, up to max_workers; idle extras are
retired; a tenant's CPU kill fails none of the other tenants' parked requests."""

from __future__ import annotations

import msgspec
import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from sngin.limits import Limits
from sngin.workers.pool import PoolConfig, open_pool
from tests.support import WAITS_UPSTREAM, Gate
from tests.support import gate_job as job


async def park(pool, nursery, tenants: list[str], answers: dict[str, bytes]) -> list[Gate]:
    """One request of each tenant, held at its platform call."""
    gates = []
    for tenant in tenants:
        gate = Gate()

        async def run(tenant: str = tenant, gate: Gate = gate) -> None:
            answers[tenant] = (await pool.run(job(tenant, WAITS_UPSTREAM), gate)).body

        nursery.start_soon(run)
        await gate.entered.wait()
        gates.append(gate)
    return gates


async def test_parked_workers_make_the_pool_grow_then_shrink_back():
    answers: dict[str, bytes] = {}
    config = PoolConfig(size=2, max_workers=8, extra_idle_s=0.2)
    with trio.fail_after(30):
        async with open_pool(config) as pool, trio.open_nursery() as nursery:
            await pool.wait_for_workers()
            # Five tenants parked at once: three more workers than the two kept warm.
            gates = await park(pool, nursery, [f"t{n}.test" for n in range(5)], answers)
            stats = pool.statistics()
            assert (stats.live, stats.grown, stats.parked_requests) == (5, 3, 5)
            # A sixth tenant's request is not queued behind them either: one more worker.
            assert (await pool.run(job("c.test", b"return 'c'"))).body == b"c"
            assert pool.statistics().grown == 4
            for gate in gates:
                gate.opened.set()
            await pool.supervisor.wait_until(lambda: len(pool.supervisor.live()) == 2)
            stats = pool.statistics()
            assert (stats.live, stats.retired) == (2, 4)  # every extra retired, none replaced
    assert answers == {f"t{n}.test": b"up" for n in range(5)}


async def test_the_pool_grows_no_further_than_max_workers():
    answers: dict[str, bytes] = {}
    config = PoolConfig(size=2, max_workers=3, queue_timeout_s=0.5)
    with trio.fail_after(30):
        async with open_pool(config) as pool, trio.open_nursery() as nursery:
            await pool.wait_for_workers()
            gates = await park(pool, nursery, ["a.test", "b.test", "c.test"], answers)
            assert pool.statistics().live == 3
            with pytest.raises(Exception, match="no worker came free"):
                await pool.run(job("d.test", b"return 'd'"))
            for gate in gates:
                gate.opened.set()


async def test_a_cpu_kill_fails_none_of_the_other_tenants_parked_requests():
    answers: dict[str, bytes] = {}
    """100 tenants parked (the issue's load), then a spinner killed at its CPU limit."""
    config = PoolConfig(size=2, max_workers=104, quarantine_strikes=1000)
    with trio.fail_after(120):
        async with (
            open_pool(config, lambda tenant: Limits(cpu_ms=200)) as pool,
            trio.open_nursery() as nursery,
        ):
            await pool.wait_for_workers()
            tenants = [f"p{n}.test" for n in range(100)]
            gates = await park(pool, nursery, tenants, answers)
            assert pool.statistics().parked_requests == 100
            with pytest.raises(Exception, match="CPU-time limit"):
                await pool.run(job("spin.test", b"while true do end"))
            for gate in gates:
                gate.opened.set()
    assert answers == {tenant: b"up" for tenant in tenants}


class Echo:
    """A platform-call handler that answers after a few scheduler turns (so parked requests of
    several tenants interleave with computing ones)."""

    def __init__(self, turns: int) -> None:
        self.turns = turns

    async def __call__(self, call):
        from sandbox.protocol import CallResult, HttpResult

        for _ in range(self.turns):
            await trio.lowlevel.checkpoint()
        return CallResult(id=call.id, call_id=call.call_id, http=HttpResult(status=200, body=b"up"))


SCRIPT = b"""
local before = rawget(_G, 'mark')
mark = '%s'
%s
return tostring(before) .. '|' .. mark .. '|%s'
"""


@settings(max_examples=12, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5), st.booleans(), st.integers(0, 20)), min_size=1,
                max_size=14))  # fmt: skip
async def test_interleaved_tenants_get_their_own_answers_and_no_ones_globals(requests):
    config = PoolConfig(size=2, max_workers=6, queue_timeout_s=30)
    answers: dict[int, bytes] = {}
    with trio.fail_after(60):
        async with open_pool(config) as pool, trio.open_nursery() as nursery:
            for n, (tenant, parks, turns) in enumerate(requests):
                wait = b"http.request('http://upstream.test/')" if parks else b"local x = 0"
                source = SCRIPT % (b"t%d" % tenant, wait, b"%d" % n)
                request = msgspec.structs.replace(job(f"t{tenant}.test", source), version=f"v{n}")

                async def run(n: int = n, request=request, turns: int = turns) -> None:
                    answers[n] = (await pool.run(request, Echo(turns))).body

                nursery.start_soon(run)
    # Every answer reached its own request, and no request saw a global of any other, its own
    # tenant's earlier requests included (each runs in a fresh environment).
    assert answers == {n: b"nil|t%d|%d" % (tenant, n) for n, (tenant, _, _) in enumerate(requests)}


async def test_many_tenants_waiting_on_a_slow_upstream_all_get_answers(tmp_path, upstream):
    """Issue 29's loads, counted (their timings are bench/parked_bench.py's): with the pool
    allowed to grow, 200 requests for 200 tenants and 600 over 60 tenants, all at once, each
    script waiting 200 ms on a real loopback upstream, every one answered 200."""
    from sngin.config import OutboundSettings
    from tests.support import serving

    url = upstream.url("/slow?s=0.2")
    scripts = {f"t{n}.test": f"return tostring(http.request('{url}').statuscode)"
               for n in range(200)}  # fmt: skip
    outbound = OutboundSettings(connections=1000)
    async with serving(tmp_path, scripts, outbound_settings=outbound, timeout_ms=20_000,
                       pool={"max_workers": 64}) as srv:  # fmt: skip

        async def one(host: str, statuses: list[int]) -> None:
            stream = await trio.open_tcp_stream("127.0.0.1", srv.port)
            async with stream:
                await stream.send_all(
                    f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()
                )
                answer = b""
                while chunk := await stream.receive_some(65536):
                    answer += chunk
            statuses.append(int(answer.split()[1]))

        for requests, tenants in [(200, 200), (600, 60)]:
            statuses: list[int] = []
            with trio.fail_after(60):
                async with trio.open_nursery() as nursery:
                    for n in range(requests):
                        nursery.start_soon(one, f"t{n % tenants}.test", statuses)
            assert statuses == [200] * requests, sorted(set(statuses))
        assert srv.pool.statistics().grown > 0
