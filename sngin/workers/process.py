"""One sandbox worker subprocess: its lifecycle (spawn, Hello, kill, close, exit reason), with
a FrameChannel for the requests in flight on it and a RuntimeMirror of what the child holds.

run(job) switches the mirror to the job's tenant, sends the job over the channel (without the
source when the child compiled that version already) and waits for its Reply while the
channel's reader task serves the child's frames. A worker that ends mid-request is never reused.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from sandbox.protocol import Hello
from sngin.observe.live_tails import ScriptLines
from sngin.workers.failures import (
    CPU_KILL,
    CRASH,
    MEMORY,
    PROTOCOL,
    RECYCLE,
    RETIRED,
    WALL_KILL,
    WorkerBootFailed,
    WorkerFailed,
    classify_exit,
)
from sngin.workers.frame_channel import CallHandler, FrameChannel
from sngin.workers.runtime_mirror import RuntimeMirror

if TYPE_CHECKING:
    from collections.abc import Callable, Collection

    from sandbox.protocol import Job, Reply
    from sngin.workers.zygote import ForkedProcess, Zygote

__all__ = [
    "CPU_KILL",
    "CRASH",
    "MEMORY",
    "PROTOCOL",
    "RECYCLE",
    "RETIRED",
    "WALL_KILL",
    "CallHandler",
    "WorkerBootFailed",
    "WorkerFailed",
    "WorkerOptions",
    "WorkerProcess",
    "classify_exit",
]

# -I (isolated): `-m sandbox` would otherwise import a `sandbox` package from the server's
# working directory before the installed one, so whatever folder the operator started sngin
# in could put its own code in every worker.
WORKER_ARGV: Final = (sys.executable, "-I", "-m", "sandbox")
BOOT_TIMEOUT_S: Final = 20.0
EXIT_STATUS_WAIT_S: Final = 2.0


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    argv: tuple[str, ...] = WORKER_ARGV
    address_space_bytes: int | None = None
    kept_runtimes_bytes: int | None = None  # Lua heap of the runtimes kept for recent tenants

    def command(self) -> tuple[str, ...]:
        if self.argv != WORKER_ARGV:
            return self.argv  # a test's stand-in worker
        command = list(self.argv)
        if self.address_space_bytes is not None:
            command += ["--address-space-bytes", str(self.address_space_bytes)]
        if self.kept_runtimes_bytes is not None:
            command += ["--kept-runtimes-bytes", str(self.kept_runtimes_bytes)]
        return tuple(command)


class WorkerProcess:
    """A `python -m sandbox` child serving one tenant's requests, several at a time."""

    def __init__(self, process: trio.Process | ForkedProcess, nursery: trio.Nursery) -> None:
        self.process = process
        self.pid = process.pid
        # trio opens a child's pipes as non-blocking FdStreams; sngin.workers.pipes uses their fds.
        assert isinstance(process.stdin, trio.lowlevel.FdStream)
        assert isinstance(process.stdout, trio.lowlevel.FdStream)
        self._stdin = process.stdin
        self._stdout = process.stdout
        self.channel = FrameChannel(self._stdin, self._stdout, nursery, self)
        self.mirror = RuntimeMirror()
        self.reserved = 0  # requests the pool handed this worker that have not started yet
        self.reserved_for: str | None = None  # the tenant of the latest of them
        self.broken = False
        self.killed_for: str | None = None
        self._blame: int | None = None  # for a wall kill: the request whose time ran out
        self.requests = 0
        self.started_at = trio.current_time()
        self.idle_since: float | None = None  # when it last had nothing in flight
        self._sent = 0  # jobs sent to it, so a declined one knows whether it was the last
        self._served: str | None = None  # the tenant of the last job it ran

    @classmethod
    async def start(
        cls,
        nursery: trio.Nursery,
        options: WorkerOptions | None = None,
        zygote: Zygote | None = None,
    ) -> WorkerProcess:
        """Fork a worker from the zygote (or spawn one), wait for its Hello frame (its limits
        are in place by then), and start serving its frames."""
        options = options or WorkerOptions()
        process: trio.Process | ForkedProcess
        if zygote is not None:
            process = await zygote.fork()
        else:
            process = await nursery.start(
                partial(
                    trio.run_process,
                    options.command(),
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    check=False,
                    env={},  # the worker needs nothing from the server's environment
                    # Own session: a terminal's Ctrl-C reaches the server, which stops it.
                    start_new_session=True,
                )
            )
        worker = cls(process, nursery)
        try:
            with trio.fail_after(BOOT_TIMEOUT_S):
                hello = await worker.channel.receive()
            if not isinstance(hello, Hello):
                raise ValueError("the first frame was not Hello")
        except (trio.TooSlowError, EOFError, ValueError, msgspec.DecodeError) as exc:
            worker.kill()
            with trio.move_on_after(EXIT_STATUS_WAIT_S):
                await process.wait()
            raise WorkerBootFailed(
                f"worker did not start (exit status {process.returncode}; its stderr is above)"
            ) from exc
        nursery.start_soon(worker.channel.serve_frames)
        return worker

    # --- state -------------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        # Not process.returncode: that polls (a waitpid) on every check. The reader task marks
        # the worker broken as soon as its output ends, before it fails what is in flight.
        return not self.broken

    @property
    def age_s(self) -> float:
        return trio.current_time() - self.started_at

    @property
    def in_flight(self) -> int:
        return len(self.channel.pending) + self.reserved

    @property
    def computing(self) -> bool:
        """True when some request on it is running Lua (not waiting for a platform call), or
        is about to (handed this worker, not started yet)."""
        return self.reserved > 0 or self.channel.computing

    @property
    def parked(self) -> bool:
        """Some request on it waits for a platform call's answer."""
        return self.channel.parked

    def _active_tenant(self) -> str | None:
        """Whose runtime the child has active: the tenant of a request it has started (one
        tenant at a time), else of the last job it ran."""
        for pending in self.channel.pending.values():
            if pending.heard:
                return pending.job.tenant
        return self._served

    @property
    def parked_requests(self) -> int:
        """How many of its requests wait for a platform call's answer."""
        return sum(1 for p in self.channel.pending.values() if p.waiting_call)

    @property
    def tenant(self) -> str | None:
        """The tenant of the job sent last (the worker runs jobs in the order sent)."""
        return self.mirror.tenant

    @property
    def mixed(self) -> bool:
        """Some request on it is not of the tenant of the job sent last: that job was stacked
        behind another tenant's, and declined if one of those parks."""
        tenant = self.mirror.tenant
        return any(p.job.tenant != tenant for p in self.channel.pending.values())

    @property
    def dormant(self) -> Collection[str]:
        return self.mirror.dormant.keys()

    @property
    def switches(self) -> int:
        return self.mirror.switches

    # --- lifecycle -----------------------------------------------------------------------------

    def kill(self, reason: str | None = None, blame: int | None = None) -> None:
        """SIGKILL: the worker's state is unknown (e.g. a request overran its wall time)."""
        self.broken = True
        if reason is not None and self.killed_for is None:
            self.killed_for = reason
            self._blame = blame
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    def blamed(self) -> int | None:
        """For a wall kill: the request whose time ran out."""
        return self._blame if self.killed_for == WALL_KILL else None

    async def exit_reason(self) -> str:
        """Why the worker ended, from its exit status (it may take a moment to be reaped)."""
        self.broken = True
        with trio.move_on_after(EXIT_STATUS_WAIT_S):
            await self.process.wait()
        return classify_exit(self.process.returncode, self.killed_for)

    async def release(self) -> None:
        """After the process ended: close our ends of its pipes (run_process leaves them)."""
        self.channel.close()
        with trio.CancelScope(shield=True):
            await self._stdin.aclose()
            await self._stdout.aclose()

    async def close(self) -> None:
        """Close stdin so the worker exits by itself."""
        self.broken = True
        self.channel.close_writer()
        await self._stdin.aclose()

    # --- requests ----------------------------------------------------------------------------

    async def run(
        self,
        job: Job,
        calls: CallHandler | None = None,
        *,
        timeout_s: float = math.inf,
        redact: Callable[[str], str] | None = None,
        log_head: list[bytes] | None = None,
    ) -> Reply:
        """Run one job to its Reply within timeout_s; raises WorkerFailed if the worker ends
        first or the time runs out (WALL_KILL). `log_head` gets its first log lines."""
        if self.reserved:
            self.reserved -= 1
        self._sent += 1
        sent = self._sent
        if not self.broken:
            self.mirror.switch_to(job.tenant)
        version = (job.key, job.version)
        reply = await self.channel.exchange(
            job,
            calls,
            source_known=self.mirror.has_compiled(version),
            timeout_s=timeout_s,
            lines=ScriptLines(
                job.tenant, job.request, redact, job.limits.max_log_bytes, head=log_head
            ),
        )
        if reply.declined:
            if sent == self._sent:  # the job sent last: the mirror names its tenant
                self.mirror.switch_back(job.tenant, self._active_tenant())
            return reply
        self._served = job.tenant
        self.mirror.compiled(version)
        if reply.dropped_runtimes:
            self.mirror.forget(reply.dropped_runtimes)
        self.requests += 1
        return reply
