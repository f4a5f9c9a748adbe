"""One real `python -m sandbox` child: framing, source caching, exit on stdin close, bad output."""

from __future__ import annotations

import sys

import pytest
import trio

from sandbox.protocol import Job, Request
from sngin.errors import ProtocolError, WorkerCrashed
from sngin.worker_process import WorkerProcess


def job(source: bytes | None, *, tenant: str = "a.test", version: str = "v1") -> Job:
    return Job(
        tenant=tenant,
        key=f"{tenant}/x",
        version=version,
        request=Request(method="GET", path="/x"),
        source=source,
    )


async def test_worker_runs_jobs_and_reuses_compiled_source():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            assert (await worker.call(job(b"return 'one'"))).body == b"one"
            # Same version: the worker runs what it compiled; the new text is not even sent.
            assert (await worker.call(job(b"return 'changed'"))).body == b"one"
            assert (await worker.call(job(b"return 'two'", version="v2"))).body == b"two"
            # A tenant switch builds a fresh runtime, which has compiled nothing yet.
            assert (await worker.call(job(b"return 'b'", tenant="b.test"))).body == b"b"
            assert (await worker.call(job(b"return 'again'"))).body == b"again"
            await worker.close()
            assert await worker.process.wait() == 0


async def test_worker_exits_when_stdin_closes():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            await worker.close()
            assert await worker.process.wait() == 0


async def test_malformed_reply_is_a_protocol_error_and_kills_the_worker():
    garbage = (
        "import sys; sys.stdout.buffer.write(b'\\xff' * 8); sys.stdout.flush(); sys.stdin.read()"
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery, (sys.executable, "-c", garbage))
            with pytest.raises(ProtocolError):
                await worker.call(job(b"return 1"))
            assert not worker.alive
            assert await worker.process.wait() != 0


async def test_dead_worker_is_worker_crashed():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery, (sys.executable, "-c", "pass"))
            await worker.process.wait()
            with pytest.raises(WorkerCrashed):
                await worker.call(job(b"return 1"))


async def test_stray_output_in_the_worker_cannot_corrupt_frames():
    # A worker whose Python code prints before every job: the print goes to stderr, not the pipe.
    noisy = (
        "import sys; from sandbox import worker; original = worker.Worker.handle\n"
        "def handle(self, body):\n"
        "    print('stray output'); sys.stdout.flush()\n"
        "    return original(self, body)\n"
        "worker.Worker.handle = handle\n"
        "sys.exit(worker.main())\n"
    )
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery, (sys.executable, "-c", noisy))
            for _ in range(3):
                assert (await worker.call(job(b"return 'clean'"))).body == b"clean"
            await worker.close()
            assert await worker.process.wait() == 0
