"""A worker keeps the runtimes of the tenants it served last, each still that tenant's alone,
and the pool sends a tenant back to the worker keeping its runtime."""

from __future__ import annotations

import trio

from sandbox.protocol import DORMANT_MAX_BYTES, DORMANT_TOTAL_BYTES, Job, Reply, Request
from sandbox.worker import Worker
from sngin.observe.notes import RunNote
from sngin.workers.pool import PoolConfig, open_pool

_ids = iter(range(1, 1_000_000))


def job(tenant: str, source: bytes = b"return 'hi'") -> Job:
    return Job(id=next(_ids), tenant=tenant, key=f"{tenant}/index", version="v1",
               request=Request(method="GET", path="/"), source=source)  # fmt: skip


def served(worker: Worker, the_job: Job) -> None:
    worker.handle(the_job)
    worker.tidy_up()


def test_switching_back_reuses_the_tenants_own_runtime():
    worker = Worker(lambda message: None)
    served(worker, job("a.test"))
    a_runtime = worker.runtime
    served(worker, job("b.test"))
    assert worker.runtime is not a_runtime
    assert worker.runtime is not None
    assert worker.runtime.tenant == "b.test"
    served(worker, job("a.test"))
    assert worker.runtime is a_runtime
    assert set(worker.dormant) == {"b.test"}


def test_a_runtime_holding_a_big_heap_is_closed_not_kept():
    worker = Worker(lambda message: None)
    # Garbage counts too: the runtime holds it until a collection.
    bloat = b"local t = {} for i = 1, 16 do t[i] = string.rep('x', 100000) .. i end return 'big'"
    served(worker, job("a.test", bloat))
    assert worker.runtime is not None
    assert worker.runtime.memory_used() > DORMANT_MAX_BYTES
    served(worker, job("b.test"))
    assert "a.test" not in worker.dormant


def test_the_worker_keeps_hundreds_of_small_runtimes_not_a_fixed_count():
    worker = Worker(lambda message: None)
    for n in range(300):
        served(worker, job(f"t{n}.test"))
    kept = len(worker.dormant)
    assert kept >= 250  # hundreds of them: memory, not a count, bounds them
    assert worker.dormant_bytes <= DORMANT_TOTAL_BYTES
    if kept < 299:  # one more would not have fitted
        smallest = min(size for _, size in worker.dormant.values())
        assert worker.dormant_bytes + smallest > DORMANT_TOTAL_BYTES


def test_dormant_runtimes_together_stay_under_their_total():
    replies = []
    worker = Worker(lambda message: replies.append(message) if isinstance(message, Reply) else None)
    # Each just under the single-runtime limit: the total, not the count, decides.
    heavy = b"local t = {} for i = 1, 4 do t[i] = string.rep('y', 100000) .. i end return 'h'"
    for n in range(120):
        served(worker, job(f"h{n}.test", heavy))
    sizes = [size for _, size in worker.dormant.values()]
    assert all(size <= DORMANT_MAX_BYTES for size in sizes)
    assert 30 < len(worker.dormant) < 119  # kept, up to the total
    assert sum(sizes) == worker.dormant_bytes <= DORMANT_TOTAL_BYTES
    assert "h0.test" not in worker.dormant  # the least recently served went first
    # Every closed runtime was reported to the server, which mirrors the dormant set.
    reported = [tenant for reply in replies for tenant in reply.dropped_runtimes]
    assert set(reported) == {f"h{n}.test" for n in range(119)} - set(worker.dormant)


def test_replies_say_when_a_request_needed_a_fresh_runtime():
    replies = []
    worker = Worker(lambda message: replies.append(message) if isinstance(message, Reply) else None)
    for tenant in ("a.test", "a.test", "b.test", "a.test"):
        served(worker, job(tenant))
    assert [reply.fresh_runtime for reply in replies] == [True, False, True, False]


async def test_the_pool_sends_a_tenant_back_to_the_worker_keeping_its_runtime():
    async def pid_for(pool, tenant: str) -> int | None:
        note = RunNote()
        await pool.run(job(tenant), note=note)
        return note.worker

    async with open_pool(PoolConfig(size=2)) as pool:
        first = await pid_for(pool, "a.test")
        # b.test takes the other worker, c.test a.test's: a.test's runtime waits dormant in
        # a worker that is now the more recently used, which a plain switch would not pick.
        for tenant in ("b.test", "c.test"):
            await pid_for(pool, tenant)
        with trio.fail_after(20):
            again = await pid_for(pool, "a.test")
        holders = [
            w.pid for w in pool.supervisor.workers if "a.test" in w.dormant or w.tenant == "a.test"
        ]
    assert again == first
    assert holders == [first]


def test_a_closed_runtime_is_freed_at_once_not_at_a_full_collection():
    import gc

    from sandbox.runtime import TenantRuntime

    def live_states() -> int:
        return sum(1 for o in gc.get_objects() if type(o).__name__ == "LuaRuntime")

    gc.collect()
    gc.disable()  # only reference counting: what close() leaves in a cycle stays visible
    try:
        before = live_states()
        for n in range(20):
            runtime = TenantRuntime(f"t{n}.test")
            runtime.run(job(f"t{n}.test", b"return json.encode(json.decode('[1, {}]'))"))
            runtime.close()
            del runtime
        after = live_states()
    finally:
        gc.enable()
    assert after == before


def test_the_kept_runtimes_budget_is_the_workers_to_set():
    small = Worker(lambda message: None, kept_runtimes_bytes=2 * 1024 * 1024)
    large = Worker(lambda message: None, kept_runtimes_bytes=64 * 1024 * 1024)
    for n in range(60):
        served(small, job(f"t{n}.test"))
        served(large, job(f"t{n}.test"))
    assert small.dormant_bytes <= 2 * 1024 * 1024
    assert 5 < len(small.dormant) < 40
    assert len(large.dormant) == 59


async def test_a_real_worker_keeps_runtimes_within_the_share_the_server_gives_it():
    from sngin.workers.process import WorkerOptions

    async def kept_after_serving(tenants: int, options: WorkerOptions) -> int:
        async with open_pool(PoolConfig(size=2, worker=options)) as pool:
            for n in range(tenants):
                await pool.run(job(f"k{n}.test"))
            return sum(len(w.dormant) for w in pool.supervisor.workers)

    with trio.fail_after(60):
        generous = await kept_after_serving(80, WorkerOptions(kept_runtimes_bytes=64 * 2**20))
        tight = await kept_after_serving(80, WorkerOptions(kept_runtimes_bytes=2 * 2**20))
    assert generous == 78  # all but the two running (one per worker)
    assert 10 < tight < 60
