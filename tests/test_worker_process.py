"""One real `python -m sandbox` child: framing, source caching, exit on stdin close, bad output."""

from __future__ import annotations

import hashlib
import os
import sys

import msgspec
import pytest
import trio

from sandbox.protocol import Job, Request, WireLimits
from sngin.workers.process import (
    CPU_KILL,
    CRASH,
    PROTOCOL,
    WorkerBootFailed,
    WorkerFailed,
    WorkerOptions,
    WorkerProcess,
)

HELLO_THEN = (
    "import os, sys\n"
    "from sandbox.protocol import Hello, encode_frame\n"
    "sys.stdout.buffer.write(encode_frame(Hello(pid=os.getpid(), lua='fake')))\n"
    "sys.stdout.buffer.flush()\n"
)


def script(code: str) -> WorkerOptions:
    return WorkerOptions(argv=(sys.executable, "-c", code))


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
            assert (await worker.run(job(b"return 'one'"))).body == b"one"
            # Same version: the worker runs what it compiled; the new text is not even sent.
            assert (await worker.run(job(b"return 'changed'"))).body == b"one"
            assert (await worker.run(job(b"return 'two'", version="v2"))).body == b"two"
            # A tenant switch builds b.test a fresh runtime; a.test's waits dormant in the worker,
            # with what it compiled, for a.test's next request.
            assert (await worker.run(job(b"return 'b'", tenant="b.test"))).body == b"b"
            assert (await worker.run(job(b"return 'again'"))).body == b"one"
            assert (await worker.run(job(b"return 'three'", version="v3"))).body == b"three"
            await worker.close()
            assert await worker.process.wait() == 0


async def test_a_runtime_the_worker_dropped_is_reported_and_made_again():
    # Over 1 MiB: the worker closes a.test's runtime at the switch instead of keeping it, and
    # says so in its Reply, so the server no longer counts it as kept.
    bloat = b"local t = {} for i = 1, 16 do t[i] = string.rep('x', 100000) .. i end return 'big'"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            assert (await worker.run(job(bloat))).body == b"big"
            assert (await worker.run(job(b"return 'b'", tenant="b.test"))).body == b"b"
            assert "a.test" not in worker.dormant
            again = await worker.run(job(bloat))
            assert (again.body, again.fresh_runtime) == (b"big", True)
            assert worker.alive
            await worker.close()


async def test_source_the_server_wrongly_thinks_compiled_is_asked_for_and_sent():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            assert (await worker.run(job(b"return 'one'"))).body == b"one"
            # A stale mirror: the server believes a version compiled that the worker never saw.
            worker.mirror.compiled(("a.test/x", "v7"))
            reply = await worker.run(job(b"return 'seven'", version="v7"))
            assert reply.body == b"seven"  # the worker asked for the source, and got it
            assert worker.alive
            await worker.close()


async def test_worker_exits_when_stdin_closes():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            await worker.close()
            assert await worker.process.wait() == 0


async def test_malformed_reply_is_a_protocol_error_and_kills_the_worker():
    garbage = HELLO_THEN + "sys.stdin.buffer.read(4)\nsys.stdout.buffer.write(b'\\xff' * 8)\n"
    garbage += "sys.stdout.buffer.flush()\nsys.stdin.read()\n"
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery, script(garbage))
            with pytest.raises(WorkerFailed) as info:
                await worker.run(job(b"return 1"))
            assert info.value.reason == PROTOCOL
            assert not worker.alive
            assert await worker.process.wait() != 0


async def test_dead_worker_is_a_crash():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery, script(HELLO_THEN + "sys.exit(1)\n"))
            with pytest.raises(WorkerFailed) as info:
                await worker.run(job(b"return 1"))
            assert info.value.reason == CRASH


async def test_worker_that_never_says_hello_fails_to_boot():
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            with pytest.raises(WorkerBootFailed):
                await WorkerProcess.start(nursery, script("import sys; sys.exit(7)"))


async def test_cpu_budget_kills_the_worker_with_sigprof():
    spin = Job(
        tenant="a.test", key="a.test/spin", version="1", request=Request(method="GET", path="/"),
        limits=WireLimits(cpu_ms=200), source=b"while true do end",
    )  # fmt: skip
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            with pytest.raises(WorkerFailed) as info:
                await worker.run(spin)
            assert info.value.reason == CPU_KILL


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
            worker = await WorkerProcess.start(nursery, script(noisy))
            for _ in range(3):
                assert (await worker.run(job(b"return 'clean'"))).body == b"clean"
            await worker.close()
            assert await worker.process.wait() == 0


def test_a_large_body_is_written_beside_its_frame_not_copied_into_it():
    from sandbox.protocol import (
        TAIL_MIN_BYTES,
        CallResult,
        HttpResult,
        decode_to_worker,
        encode_to_worker,
        with_tail,
    )

    body = bytes(range(256)) * (4 * TAIL_MIN_BYTES // 256)
    big = msgspec.structs.replace(
        job(b"return 1"), request=Request(method="POST", path="/", body=body)
    )
    result = CallResult(id=1, call_id=2, http=HttpResult(status=200, body=body))
    for message in (big, result):
        frame, tail = encode_to_worker(message)
        assert tail is body  # the caller's own buffer: no copy
        assert len(frame) < 1024
        decoded = decode_to_worker(bytes(frame[4:]))
        assert decoded.tail == len(body)  # type: ignore[union-attr]
        assert with_tail(decoded, bytes(tail)) == message
    small = job(b"return 1")
    frame, tail = encode_to_worker(small)
    assert tail is None
    assert decode_to_worker(bytes(frame[4:])) == small


async def test_large_bodies_cross_to_a_real_worker_beside_their_frames():
    from sandbox.protocol import Call, CallResult, HttpResult

    body = os.urandom(3 * 1024 * 1024)
    upstream = os.urandom(2 * 1024 * 1024)
    source = (
        b"local r = http.request('http://upstream.test/')"
        b" return crypto.md5(request.body).hex() .. ' ' .. crypto.md5(r.content).hex()"
    )
    the_job = msgspec.structs.replace(
        job(source), request=Request(method="POST", path="/x", body=body)
    )

    async def answer(call: Call) -> CallResult:
        return CallResult(
            id=call.id, call_id=call.call_id, http=HttpResult(status=200, body=upstream)
        )

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            worker = await WorkerProcess.start(nursery)
            reply = await worker.run(the_job, answer)
            await worker.close()
    expected = f"{hashlib.md5(body).hexdigest()} {hashlib.md5(upstream).hexdigest()}"
    assert reply.body.decode() == expected
