"""The worker loop: runs jobs of one tenant as Lua coroutines, interleaved at platform calls.

Frames in (read by sandbox.frame_input): Job (start a request), CallResult (resume one),
Cancel (drop one). Frames out: Hello once, then Call (a request waits for the server), Running
(which request is about to run, when several share the worker) and Reply (a request ended, or
was declined: see Worker.start).
"""

from __future__ import annotations

import os
import sys
import time
from collections import OrderedDict
from typing import Any

import lupa.luajit21 as lupa
import msgspec

from sandbox import compat, limits
from sandbox.frame_input import FrameInput
from sandbox.protocol import (
    DORMANT_MAX_BYTES,
    DORMANT_TOTAL_BYTES,
    EXIT_MEMORY,
    HEADER,
    MAX_FRAME_BYTES,
    MEMORY_LIMIT,
    AlertCall,
    Call,
    CallRequest,
    CallResult,
    Cancel,
    EmailCall,
    FromWorker,
    Hello,
    HttpCall,
    Job,
    Log,
    ModuleCall,
    Reply,
    Running,
    StorageCall,
    decode_to_worker,
    encode_frame,
    frame_length,
    with_tail,
)
from sandbox.request import header_name
from sandbox.runtime import RequestRun, TenantRuntime


class Worker:
    """Runs one tenant's requests at a time, several interleaved at their platform calls, and
    jobs in the order they arrive; a tenant switch sets the active runtime aside (dormant) and
    brings back the new tenant's own if it was kept, else makes one (~0.3 ms, measured in
    bench/sandbox_bench.py). Another tenant's job is declined while requests are parked."""

    def __init__(self, send: Any, *, kept_runtimes_bytes: int = DORMANT_TOTAL_BYTES) -> None:
        self.send = send
        self.kept_runtimes_bytes = kept_runtimes_bytes
        self.runtime: TenantRuntime | None = None
        # Runtimes set aside, least recently served first, with their size then.
        self.dormant: OrderedDict[str, tuple[TenantRuntime, int]] = OrderedDict()
        self.dormant_bytes = 0
        # Reported with the next Reply, so the server's mirror of the dormant set stays true.
        self.dropped: list[str] = []
        self.fresh: set[int] = set()  # requests that needed a new runtime
        self.throwaway: set[int] = set()  # requests whose runtime is closed when they end
        self.runs: dict[int, RequestRun] = {}
        self.cpu_left_s: dict[int, float] = {}
        self.cpu_used_s: dict[int, float] = {}
        self.call_ids = 0
        self.replace_runtime = False

    def handle(self, message: Any) -> None:
        if isinstance(message, Job):
            self.start(message)
        elif isinstance(message, CallResult):
            run = self.runs.get(message.id)
            if run is not None:  # else: cancelled meanwhile
                self.advance(run, self.answer(message))
        elif isinstance(message, Cancel):
            run = self.runs.pop(message.id, None)
            if run is not None and self.runtime is not None:
                self.runtime.abandon(run)
                self.forget(message.id)

    def runtime_for(self, job: Job) -> TenantRuntime:
        runtime = self.runtime
        if runtime is not None and runtime.tenant == job.tenant:
            if not (self.replace_runtime and not self.runs):
                return runtime
            runtime.close()  # ran out of memory: start afresh
        elif runtime is not None:
            self.set_aside(runtime)
        self.replace_runtime = False
        kept = self.dormant.pop(job.tenant, None)
        if kept is not None:
            runtime, size = kept
            self.dormant_bytes -= size
        else:
            runtime = TenantRuntime(job.tenant, log_sink=self.send_log)
            self.fresh.add(job.id)
        self.runtime = runtime
        return runtime

    def set_aside(self, runtime: TenantRuntime) -> None:
        """Keep the runtime of the tenant served until now for its next request (a fresh one
        costs ~0.3 ms), unless it ran out of memory or holds more than a small heap. The
        dormant runtimes together stay small, so they never crowd the address-space limit
        the running tenant's requests need."""
        size = runtime.memory_used()
        if self.replace_runtime or size > DORMANT_MAX_BYTES:
            self.dropped.append(runtime.tenant)
            runtime.close()
            return
        self.dormant[runtime.tenant] = (runtime, size)
        self.dormant_bytes += size
        while self.dormant_bytes > self.kept_runtimes_bytes:
            tenant, (oldest, oldest_size) = self.dormant.popitem(last=False)
            self.dormant_bytes -= oldest_size
            self.dropped.append(tenant)
            oldest.close()

    def send_log(self, request_id: int, line: bytes) -> None:
        self.send(Log(id=request_id, line=line))

    def start(self, job: Job) -> None:
        if self.runs and self.runtime is not None and self.runtime.tenant != job.tenant:
            # The server stacks another tenant's job only behind requests that are computing;
            # one of them parked meanwhile. Running this one now would put two tenants'
            # requests in flight together, where one's limit kill would end the other's.
            self.send(Reply(id=job.id, declined=True))
            return
        runtime = self.runtime_for(job)
        if job.throwaway:
            self.throwaway.add(job.id)
        self.cpu_left_s[job.id] = job.limits.cpu_ms / 1000
        self.cpu_used_s[job.id] = 0.0
        if self.runs:
            self.send(Running(id=job.id))  # others are in flight: say which one runs now

        def begin_and_run() -> Any:
            started = runtime.begin(job)
            if isinstance(started, Reply):
                return started
            self.runs[job.id] = started
            return runtime.step(started, None)

        # One timed stretch for both: the CPU clock and timer are read and set twice, not four
        # times, per request.
        self.after_step(job.id, self.timed(job.id, begin_and_run))

    def advance(self, run: RequestRun, answer: Any) -> None:
        request_id = run.job.id
        if len(self.runs) > 1:
            self.send(Running(id=request_id))
        runtime = self.runtime
        assert runtime is not None
        self.after_step(request_id, self.timed(request_id, lambda: runtime.step(run, answer)))

    def after_step(self, request_id: int, outcome: Any) -> None:
        """A step's outcome: the Reply (the request is over) or a platform call to relay."""
        if isinstance(outcome, Reply):
            self.runs.pop(request_id, None)
            self.finish(request_id, outcome)
            return
        self.call_ids += 1
        if outcome[b"op"] == b"module":
            name = outcome[b"name"].decode("utf-8", "replace")
            have = outcome[b"have"]
            asked: CallRequest = ModuleCall(
                search=name, have=have.decode("utf-8", "replace") if have is not None else None
            )
        elif outcome[b"op"] == b"email":
            asked = email_call(outcome)
        elif outcome[b"op"] == b"storage":
            asked = storage_call(outcome)
        elif outcome[b"op"] == b"alert":
            asked = AlertCall(kind=text(outcome[b"kind"]), text=text(outcome[b"text"]))
        else:
            asked = http_call(outcome)
        run = self.runs.get(request_id)
        tape = run.tape.since_last() if run is not None else None
        self.send(Call(id=request_id, call_id=self.call_ids, request=asked, tape=tape))

    def timed(self, request_id: int, work: Any) -> Any:
        """Run work under the request's remaining CPU budget (SIGPROF kills past it)."""
        start = time.process_time()
        limits.arm_cpu_budget(self.cpu_left_s[request_id])
        try:
            return work()
        finally:
            limits.disarm_cpu_budget()
            used = time.process_time() - start
            self.cpu_left_s[request_id] -= used
            self.cpu_used_s[request_id] += used

    def finish(self, request_id: int, reply: Reply) -> None:
        cpu_ms = self.cpu_used_s[request_id] * 1000
        fresh = request_id in self.fresh
        self.forget(request_id)
        dropped = self.dropped
        if dropped:  # (most replies report none: no new list per request)
            self.dropped = []
        self.send(
            msgspec.structs.replace(
                reply,
                id=request_id,
                cpu_ms=cpu_ms,
                fresh_runtime=fresh,
                dropped_runtimes=dropped,
            )
        )
        if reply.error == MEMORY_LIMIT:
            # A runtime that ran out of memory may hold the tenant's garbage: start afresh
            # once no request is using it (see tidy_up).
            self.replace_runtime = True

    def tidy_up(self) -> None:
        """Between frames, when nothing refers to the request objects any more: drop a runtime
        that ran out of memory and hand the freed heap back to the OS."""
        if self.replace_runtime and not self.runs and self.runtime is not None:
            self.runtime.close()
            self.runtime = None
            self.replace_runtime = False
            limits.release_free_memory()

    def forget(self, request_id: int) -> None:
        if request_id in self.throwaway:  # a preview's: closed once no request uses it
            self.throwaway.discard(request_id)
            self.replace_runtime = True
        self.cpu_left_s.pop(request_id, None)
        self.cpu_used_s.pop(request_id, None)
        self.fresh.discard(request_id)

    def answer(self, result: CallResult) -> Any:
        runtime = self.runtime
        assert runtime is not None
        if result.error is not None:
            return runtime.table_from({b"raise": result.error.encode()})
        if result.module is not None:
            module = result.module
            fields = {
                b"version": module.version.encode(),
                b"chunkname": module.chunkname.encode(),
                b"location": module.location.encode(),
            }
            if not module.unchanged:  # else the runtime has it compiled already
                fields[b"source"] = compat.rewrite_escapes(module.text)
            return runtime.table_from(fields)
        if result.done:
            return runtime.table_from({b"ok": True, b"value": result.value})
        http = result.http
        if http is None:
            return runtime.table_from({b"raise": b"no answer"})
        if http.error is not None:
            return runtime.table_from({b"statuscode": 0, b"err": http.error.encode()})
        headers: dict[bytes, bytes] = {}
        for name, value in http.headers:
            key = header_name(name.encode("latin-1"))
            headers[key] = headers[key] + b", " + value if key in headers else value
        return runtime.table_from(
            {
                b"statuscode": http.status,
                b"content": http.body,
                b"headers": runtime.table_from(headers),
            }
        )


def text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


def storage_call(call: Any) -> StorageCall:
    """The Lua storage/lease/cache table (already checked by the prelude) as a message."""
    timeout, ttl = call[b"timeout"], call[b"ttl"]
    return StorageCall(
        op=text(call[b"kind"]),
        key=call[b"key"] or b"",
        value=call[b"value"],
        timeout_s=float(timeout) if timeout is not None else None,
        ttl_s=float(ttl) if ttl is not None else None,
    )


def email_call(call: Any) -> EmailCall:
    """The Lua email table (already checked by the prelude) as a protocol message."""

    def optional(name: bytes) -> str | None:
        value = call[name]
        return text(value) if value is not None else None

    recipients = call[b"to"]
    port = call[b"port"]
    return EmailCall(
        server=text(call[b"server"]),
        port=int(port) if port is not None else None,
        username=optional(b"username"),
        password=optional(b"password"),
        from_=text(call[b"from"]),
        to=[text(recipients[i]) for i in range(1, len(recipients) + 1)],
        subject=optional(b"subject") or "",
        text=optional(b"text"),
        html=optional(b"html"),
        replyto=optional(b"replyto"),
        secure=bool(call[b"secure"]),
    )


def http_call(call: Any) -> HttpCall:
    """The Lua call table (already checked by the prelude) as a protocol message."""
    flat = call[b"headers"]
    pairs = [(flat[i].decode("latin-1"), flat[i + 1]) for i in range(1, len(flat) + 1, 2)]
    user, password = call[b"user"], call[b"password"]
    timeout = call[b"timeout"]
    return HttpCall(
        method=call[b"method"].decode("latin-1"),
        url=call[b"url"].decode("utf-8", "replace"),
        headers=pairs,
        body=call[b"body"],
        timeout_s=float(timeout) if timeout is not None else None,
        auth=(user, password) if user is not None and password is not None else None,
    )


def main(*, kept_runtimes_bytes: int | None = None) -> int:
    # Frames own the real stdout; anything else printed (by Python or a library) goes to stderr.
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    incoming = FrameInput(0)
    limits.apply_after_imports()
    # json.decode converts up to 512 levels recursively (a few frames each).
    sys.setrecursionlimit(5000)

    def send(message: FromWorker) -> None:
        frames.write(encode_frame(message))

    send(Hello(pid=os.getpid(), lua=str(lupa.LuaRuntime().lua_implementation)))
    worker = Worker(send, kept_runtimes_bytes=kept_runtimes_bytes or DORMANT_TOTAL_BYTES)
    while True:
        header = incoming.read(HEADER.size)
        if header is None:
            return 0
        body = incoming.read(frame_length(header))
        if body is None:
            raise EOFError("input ended inside a frame")
        try:
            message = decode_to_worker(body)
            if isinstance(message, (Job, CallResult)) and message.tail:
                if message.tail > MAX_FRAME_BYTES:
                    raise ValueError(f"a body of {message.tail} bytes exceeds {MAX_FRAME_BYTES}")
                tail = incoming.read(message.tail)
                if tail is None:
                    raise EOFError("input ended inside a body")
                message = with_tail(message, bytes(tail))
            worker.handle(message)
            worker.tidy_up()
        except MemoryError:
            # The address-space backstop: this process is no longer trustworthy.
            return EXIT_MEMORY
