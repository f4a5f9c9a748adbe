"""The worker loop: read a Job frame, run it in the tenant's runtime, write a Reply frame."""

from __future__ import annotations

import os
import sys
import time
from typing import BinaryIO

import lupa.luajit21 as lupa
import msgspec

from sandbox import limits
from sandbox.protocol import (
    EXIT_MEMORY,
    HEADER,
    MEMORY_LIMIT,
    Hello,
    Job,
    Reply,
    decode_job,
    encode_frame,
    frame_length,
)
from sandbox.runtime import TenantRuntime


def read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    """size bytes, or None at a clean end of input (the parent closed our stdin)."""
    data = stream.read(size)
    if not data:
        return None
    while len(data) < size:
        more = stream.read(size - len(data))
        if not more:
            raise EOFError("input ended inside a frame")
        data += more
    return data


class Worker:
    """Serves one tenant at a time; a tenant switch replaces the Lua runtime (~0.2 ms)."""

    def __init__(self) -> None:
        self.runtime: TenantRuntime | None = None

    def runtime_for(self, job: Job) -> TenantRuntime:
        runtime = self.runtime
        if runtime is None or runtime.tenant != job.tenant:
            if runtime is not None:
                runtime.close()
            runtime = self.runtime = TenantRuntime(job.tenant)
        return runtime

    def handle(self, job: Job) -> Reply:
        runtime = self.runtime_for(job)
        started = time.process_time()
        limits.arm_cpu_budget(job.limits.cpu_ms / 1000)
        try:
            reply = runtime.run(job)
        finally:
            limits.disarm_cpu_budget()
        if reply.error == MEMORY_LIMIT:
            # A runtime that ran out of memory may hold the tenant's garbage: start afresh,
            # and hand the freed heap back to the OS so the worker's RSS drops again.
            runtime.close()
            self.runtime = None
            limits.release_free_memory()
        return msgspec.structs.replace(reply, cpu_ms=(time.process_time() - started) * 1000)


def main() -> int:
    # Frames own the real stdout; anything else printed (by Python or a library) goes to stderr.
    frames = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    incoming = os.fdopen(0, "rb", buffering=0, closefd=False)
    limits.apply_after_imports()
    worker = Worker()
    hello = Hello(pid=os.getpid(), lua=str(lupa.LuaRuntime().lua_implementation))
    frames.write(encode_frame(hello))
    while True:
        header = read_exactly(incoming, HEADER.size)
        if header is None:
            return 0
        body = read_exactly(incoming, frame_length(header))
        if body is None:
            raise EOFError("input ended inside a frame")
        try:
            reply = worker.handle(decode_job(body))
        except MemoryError:
            # The address-space backstop: this process is no longer trustworthy.
            return EXIT_MEMORY
        frames.write(encode_frame(reply))
