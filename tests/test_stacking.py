"""Stacking: with no idle worker, a request of one tenant may wait in a busy worker behind
another tenant's computing requests, but a tenant's kill never costs another tenant's request,
and two tenants are never in flight together while one of them waits on a platform call."""

from __future__ import annotations

import msgspec
import trio
import trio.testing

from sandbox.protocol import Call, CallResult, HttpResult, Job, Reply
from sandbox.worker import Worker
from sngin.limits import Limits
from sngin.observe.notes import RunNote
from sngin.workers.pool import PoolConfig, open_pool
from tests.support import WAITS_UPSTREAM, Gate, gate_job


def job(tenant: str, source: bytes, *, job_id: int = 0) -> Job:
    return msgspec.structs.replace(gate_job(tenant, source), id=job_id)


def test_a_worker_declines_another_tenants_job_while_requests_are_parked():
    sent: list[object] = []
    worker = Worker(sent.append)
    worker.handle(job("a.test", WAITS_UPSTREAM, job_id=1))
    assert isinstance(sent[-1], Call)  # a.test's request waits on its platform call
    worker.handle(job("b.test", b"return 'b'", job_id=2))
    assert sent[-1] == Reply(id=2, declined=True)
    assert worker.runtime is not None
    assert worker.runtime.tenant == "a.test"  # a.test's runtime was never set aside
    # Once a.test has nothing in flight, b.test's jobs run here as usual.
    call = sent[-2]
    assert isinstance(call, Call)
    worker.handle(CallResult(id=1, call_id=call.call_id, http=HttpResult(status=200, body=b"x")))
    worker.handle(job("b.test", b"return 'b'", job_id=3))
    replies = [m for m in sent if isinstance(m, Reply)]
    assert [(r.id, r.body, r.declined) for r in replies[-2:]] == [
        (1, b"x", False),
        (3, b"b", False),
    ]


async def test_a_request_stacked_behind_a_cpu_kill_runs_elsewhere_and_succeeds():
    cpu_capped = Limits(cpu_ms=400)
    config = PoolConfig(size=2, quarantine_strikes=1000)
    async with open_pool(config, lambda tenant: cpu_capped) as pool:
        await pool.wait_for_workers()
        gate = Gate()
        outcomes: dict[str, object] = {}
        notes = {"spin.test": RunNote(), "b.test": RunNote()}
        b_done = trio.Event()

        async def run(tenant: str, source: bytes, calls=None) -> None:
            try:
                reply = await pool.run(job(tenant, source), calls, note=notes.get(tenant))
                outcomes[tenant] = reply.body
            except Exception as exc:
                outcomes[tenant] = exc
            if tenant == "b.test":
                b_done.set()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                # One worker parked (not open to stacking), the other computing a spinner.
                nursery.start_soon(run, "parked.test", WAITS_UPSTREAM, gate)
                await gate.entered.wait()
                nursery.start_soon(run, "spin.test", b"while true do end")
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(run, "b.test", b"return 'b ran'")
                await trio.testing.wait_all_tasks_blocked()
                spinner = notes["spin.test"].worker
                # b.test was stacked behind the spinner: the one worker open to it.
                assert notes["b.test"].worker == spinner
                await b_done.wait()  # after the spinner's kill, on the replacement worker
                gate.opened.set()
        stats = pool.statistics()
    assert "CPU-time limit" in str(outcomes["spin.test"])
    assert outcomes["b.test"] == b"b ran"  # not a 502: it never started on the killed worker
    assert notes["b.test"].worker != spinner
    assert outcomes["parked.test"] == b"up"
    assert stats.ran_elsewhere == 1
    assert stats.tenants["b.test"].status_5xx == 0


async def test_a_stacked_request_whose_wall_time_runs_out_never_kills_the_one_ahead():
    """The job queued behind another tenant's computing request times out before its turn: it
    answers 503 by itself, no strike, and the worker and the request ahead go on."""
    config = PoolConfig(size=2, quarantine_strikes=1000)
    async with open_pool(config) as pool:
        await pool.wait_for_workers()
        gate = Gate()
        outcomes: dict[str, object] = {}
        notes = {"spin.test": RunNote(), "b.test": RunNote()}
        done = {tenant: trio.Event() for tenant in notes}

        async def run(tenant: str, source: bytes, limits: Limits, calls=None) -> None:
            try:
                reply = await pool.run(job(tenant, source), calls, limits=limits,
                                       note=notes.get(tenant))  # fmt: skip
                outcomes[tenant] = reply.body
            except Exception as exc:
                outcomes[tenant] = exc
            if tenant in done:
                done[tenant].set()

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(run, "parked.test", WAITS_UPSTREAM, Limits(), gate)
                await gate.entered.wait()
                nursery.start_soon(run, "spin.test", b"while true do end", Limits(cpu_ms=600))
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(run, "b.test", b"return 'b'", Limits(timeout_ms=100))
                await done["b.test"].wait()
                await done["spin.test"].wait()
                gate.opened.set()
        stats = pool.statistics()
    assert notes["b.test"].worker == notes["spin.test"].worker  # it was stacked
    assert "waited its whole wall time" in str(outcomes["b.test"])
    assert "CPU-time limit of 600 ms" in str(outcomes["spin.test"])  # its own kill, not b's
    assert stats.tenants["b.test"].wall_kills == 0
    assert stats.exits.get("wall", 0) == 0


async def test_a_storage_heavy_tenant_never_makes_another_tenants_requests_fail(tmp_path):
    """Tenant `heavy` alternates computing and parking on storage calls, four requests at a
    time on both workers; `light`'s requests get stacked behind it and declined when it parks.
    A declined request waits for an idle worker (the worker no longer passes for light's own
    after declining it, which sent it back there to be declined again: 98 of 100 answered 503
    before): every one of them answers 200."""
    from tests.support import running

    (tmp_path / "heavy.test").mkdir()
    (tmp_path / "heavy.test" / "index.lua").write_text(
        "for i = 1, 300 do local x = 0 for j = 1, 20000 do x = x + j end"
        " storage['k' .. (i % 50)] = tostring(x) end return 'heavy'"
    )
    (tmp_path / "light.test").mkdir()
    (tmp_path / "light.test" / "index.lua").write_text("return 'light'")
    statuses: dict[str, list[int]] = {"heavy.test": [], "light.test": []}
    async with running(tmp_path, workers=2, timeout_ms=20_000) as srv:

        async def hammer(host: str, count: int) -> None:
            for _ in range(count):
                answer = await srv.get("/", host=host)
                statuses[host].append(answer.status_code)

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(hammer, "heavy.test", 6)
                nursery.start_soon(hammer, "light.test", 100)
        stats = srv.pool.statistics()
    assert statuses["light.test"] == [200] * 100
    assert statuses["heavy.test"] == [200] * 24
    assert stats.ran_elsewhere > 0  # light's requests were declined, and ran all the same


async def test_the_stats_count_parked_requests():
    config = PoolConfig(size=2)
    async with open_pool(config) as pool:
        await pool.wait_for_workers()
        gate = Gate()
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.run, job("parked.test", WAITS_UPSTREAM), gate)
                await gate.entered.wait()
                stats = pool.statistics()
                assert stats.parked_requests == 1
                assert sorted(w.parked for w in stats.workers) == [0, 1]
                gate.opened.set()
        assert pool.statistics().parked_requests == 0


def test_after_stacked_jobs_are_declined_the_mirror_names_the_tenant_the_child_holds():
    """a.test's request runs (then parks); b, c and d were stacked behind it in that order and
    are all declined. The mirror must end on a.test: naming c.test (the one sent before the
    last) made the worker pass for c.test's own, and c.test's retry was sent back there to be
    declined again, until `no worker could start the request`."""
    from sngin.workers.runtime_mirror import RuntimeMirror

    mirror = RuntimeMirror()
    mirror.switch_to("a.test")
    mirror.compiled(("a.test", "v1"))
    for tenant in ("b.test", "c.test", "d.test"):
        mirror.switch_to(tenant)
    # The replies come back in order; only the last sent may change the mirror (the worker's
    # own bookkeeping: WorkerProcess.run), with the tenant the child holds.
    mirror.switch_back("d.test", "a.test")
    assert mirror.tenant == "a.test"
    assert mirror.has_compiled(("a.test", "v1"))  # a.test's compiled versions came back too


async def test_a_real_worker_that_declines_several_stacked_jobs_passes_for_the_parked_tenant():
    """The same through WorkerProcess.run and a real worker: a.test parks; b, c and d are sent
    behind it at once and all declined; the worker must still pass for a.test's."""
    from sngin.workers.process import WorkerProcess

    gate = Gate()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            replies: dict[str, Reply] = {}
            parked_done = trio.Event()

            async def run(tenant: str, source: bytes, calls=None) -> None:
                request = job(tenant, source, job_id=ord(tenant[0]))
                replies[tenant] = await worker.run(request, calls)
                if tenant == "a.test":
                    parked_done.set()

            nursery.start_soon(run, "a.test", WAITS_UPSTREAM, gate)
            await gate.entered.wait()
            async with trio.open_nursery() as stacked:  # all sent before any answer is read
                for tenant in ("b.test", "c.test", "d.test"):
                    stacked.start_soon(run, tenant, b"return 'x'")
            assert [replies[t].declined for t in ("b.test", "c.test", "d.test")] == [True] * 3
            assert worker.tenant == "a.test"
            gate.opened.set()
            await parked_done.wait()
            await worker.close()
    assert replies["a.test"].body == b"up"


def test_when_a_worker_ends_only_the_culprits_tenant_loses_requests_it_had_not_started():
    """blame_on_exit, the rule the frame channel applies: a, running, is the culprit; b's job
    sent after it and never heard of is unstarted (it runs elsewhere); a's own later job and
    c's job the worker had started both fail as siblings."""
    from sngin.workers.failures import CPU_KILL, blame_on_exit

    in_flight = [
        (1, "c.test", True), (2, "a.test", True), (3, "b.test", False), (4, "a.test", False)
    ]  # fmt: skip
    failures = blame_on_exit(in_flight, culprit=2, reason=CPU_KILL)
    shape = {i: (f.reason, f.sibling, f.unstarted) for i, f in failures.items()}
    assert shape == {
        1: (CPU_KILL, True, False),
        2: (CPU_KILL, False, False),
        3: (CPU_KILL, True, True),
        4: (CPU_KILL, True, False),
    }
    unknown = blame_on_exit([(5, "x.test", False)], culprit=None, reason=CPU_KILL)
    assert (unknown[5].sibling, unknown[5].unstarted) == (False, True)
