"""The pool's queue: a freed worker goes to the request that waited longest, and a request
that leaves the queue gives back a worker it was handed. (A fixed pool here, max_workers=size:
tests/test_elastic.py has the pool that grows.)"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
import trio
import trio.lowlevel
import trio.testing

from sngin.errors import Unavailable
from sngin.workers.pool import PoolConfig, open_pool
from tests.support import WAITS_UPSTREAM, Gate
from tests.support import gate_job as job

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.protocol import Job


async def occupy_both_workers(pool, nursery, results: dict[str, bytes]) -> list[Gate]:
    gates = [Gate(), Gate()]
    for tenant, gate in zip(("a.test", "b.test"), gates, strict=True):
        nursery.start_soon(run_into, pool, job(tenant, WAITS_UPSTREAM), gate, results)
        await gate.entered.wait()
    return gates


async def run_into(pool, the_job: Job, calls, results: dict[str, bytes]) -> None:
    reply = await pool.run(the_job, calls)
    results[the_job.tenant] = reply.body


async def queue_up(pool, nursery, tenants, on_done: Callable[[str], None]) -> None:
    for tenant in tenants:

        async def one(tenant: str = tenant) -> None:
            await pool.run(job(tenant, f"return '{tenant}'".encode()))
            on_done(tenant)

        nursery.start_soon(one)
        await trio.testing.wait_all_tasks_blocked()  # queued before the next one arrives


class Finished:
    """Records the order requests finish in; `all` is set once `expected` have."""

    def __init__(self, expected: int) -> None:
        self.order: list[str] = []
        self.expected = expected
        self.all = trio.Event()

    def __call__(self, tenant: str) -> None:
        self.order.append(tenant)
        if len(self.order) == self.expected:
            self.all.set()


async def test_freed_workers_serve_waiting_requests_in_arrival_order():
    finished = Finished(3)
    order = finished.order
    results: dict[str, bytes] = {}
    # One request per worker: none is stacked behind a.test's (they would be handed out at
    # once, and start in the order their tasks happen to run).
    config = PoolConfig(size=2, max_workers=2, worker_concurrency=1)
    async with open_pool(config) as pool, trio.open_nursery() as nursery:
        gates = await occupy_both_workers(pool, nursery, results)
        await queue_up(pool, nursery, ["c.test", "d.test", "e.test"], finished)
        assert order == []  # both workers are taken
        gates[0].opened.set()  # one worker frees up and serves the queue, oldest first
        with trio.fail_after(20):
            await finished.all.wait()
        gates[1].opened.set()
    assert order == ["c.test", "d.test", "e.test"]
    assert results == {"a.test": b"up", "b.test": b"up"}
    assert all(w.in_flight == 0 for w in pool.supervisor.workers)


async def test_a_request_that_leaves_the_queue_gives_its_turn_to_the_next():
    finished = Finished(1)
    order = finished.order
    results: dict[str, bytes] = {}
    async with open_pool(PoolConfig(size=2, max_workers=2)) as pool, trio.open_nursery() as nursery:
        gates = await occupy_both_workers(pool, nursery, results)
        with trio.CancelScope() as leaving:
            async with trio.open_nursery() as inner:
                await queue_up(pool, inner, ["c.test"], finished)
                await queue_up(pool, nursery, ["d.test"], finished)
                leaving.cancel()  # the client of c.test went away while queued
        gates[0].opened.set()
        with trio.fail_after(20):
            await finished.all.wait()
        gates[1].opened.set()
    assert order == ["d.test"]
    assert all(w.in_flight == 0 and w.reserved == 0 for w in pool.supervisor.workers)


async def test_a_request_that_times_out_in_the_queue_is_refused_and_holds_nothing():
    results: dict[str, bytes] = {}
    config = PoolConfig(size=2, max_workers=2, queue_timeout_s=0.5)
    async with open_pool(config) as pool, trio.open_nursery() as nursery:
        gates = await occupy_both_workers(pool, nursery, results)
        with pytest.raises(Unavailable):
            await pool.run(job("c.test", b"return 'c'"))
        gates[0].opened.set()
        gates[1].opened.set()
    assert all(w.in_flight == 0 and w.reserved == 0 for w in pool.supervisor.workers)


async def test_requests_still_queued_when_the_pool_closes_are_refused_at_once():
    results: dict[str, bytes] = {}
    refused: list[str] = []
    config = PoolConfig(size=2, max_workers=2, queue_timeout_s=60)
    async with trio.open_nursery() as nursery, open_pool(config) as pool:
        gates = await occupy_both_workers(pool, nursery, results)

        async def queued() -> None:
            with pytest.raises(Unavailable) as caught:
                await pool.run(job("c.test", b"return 'c'"))
            refused.append(caught.value.message)
            for gate in gates:
                gate.opened.set()  # let the busy ones finish so the pool can close

        nursery.start_soon(queued)
        await trio.testing.wait_all_tasks_blocked()
        with trio.fail_after(10):  # far below the queue timeout
            await pool.aclose()
    assert refused == ["the server is shutting down"]


async def test_a_slot_freed_by_a_dead_worker_goes_to_the_next_request_of_that_tenant():
    import os
    import signal

    from sngin.errors import SnginError

    gate = Gate()
    outcomes: dict[str, object] = {}

    async def first() -> None:
        try:
            await pool.run(job("a.test", WAITS_UPSTREAM), gate, concurrency=1)
        except SnginError as error:
            outcomes["first"] = error.status

    async def second() -> None:
        reply = await pool.run(job("a.test", b"return 'second'"), concurrency=1)
        outcomes["second"] = reply.body
        second_done.set()

    second_done = trio.Event()

    config = PoolConfig(size=2, max_workers=2, queue_timeout_s=60)
    async with open_pool(config) as pool, trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await gate.entered.wait()
        nursery.start_soon(second)  # waits: the tenant may have one request in flight
        await trio.testing.wait_all_tasks_blocked()
        assert "second" not in outcomes
        (busy,) = pool.busy_pids()
        os.kill(busy, signal.SIGKILL)  # the first request's worker dies under it
        with trio.fail_after(20):  # far below the queue timeout
            await second_done.wait()
    assert outcomes == {"first": 502, "second": b"second"}


async def test_a_tenant_under_load_does_not_starve_another(tmp_path):
    """End to end: eight clients keep a CPU-bound tenant's requests (0.2 s each) stacked on
    both workers; another tenant's single request is served as soon as a worker drains,
    instead of waiting behind requests the busy tenant keeps stacking (it got a 503)."""
    from tests.support import add_sites, running

    add_sites(tmp_path, {
        "a.test/churn": "local t = os.clock() while os.clock() - t < 0.2 do end return 'a'",
        "b.test/quick": "return 'b'",
    })  # fmt: skip
    pool = {"queue_timeout_s": 10.0}
    async with running(tmp_path, workers=2, pool=pool) as srv, trio.open_nursery() as load:
        stop = trio.Event()

        async def client() -> None:
            while not stop.is_set():
                assert (await srv.get("/churn")).text == "a"

        for _ in range(8):
            load.start_soon(client)
        while len(srv.pool.busy_pids()) < 2:  # both workers run a.test
            await trio.lowlevel.checkpoint()
        with trio.fail_after(5):  # a worker drains in under 1 s; the queue timeout is 10 s
            response = await srv.get("/quick", host="b.test")
        stop.set()
    assert (response.status_code, response.text) == (200, "b")
