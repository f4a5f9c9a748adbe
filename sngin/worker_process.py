"""One sandbox worker subprocess and its framed pipes: call(job) -> Reply.

A worker that fails mid-call is never reused; the reason it ended (CPU kill, wall kill, memory,
crash, protocol error) is read from its exit status and reported with the error.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from sandbox.protocol import (
    EXIT_MEMORY,
    HEADER,
    Job,
    Reply,
    decode_hello,
    decode_reply,
    encode_frame,
    frame_length,
)

if TYPE_CHECKING:
    from trio.abc import ReceiveStream, SendStream

WORKER_ARGV: Final = (sys.executable, "-m", "sandbox")
# Versions remembered per worker; past this the set restarts (a miss only resends source).
MAX_KNOWN: Final = 1024
BOOT_TIMEOUT_S: Final = 20.0
EXIT_STATUS_WAIT_S: Final = 2.0

# Why a worker ended.
CPU_KILL: Final = "cpu"
WALL_KILL: Final = "wall"
MEMORY: Final = "memory"
CRASH: Final = "crash"
PROTOCOL: Final = "protocol"
RECYCLE: Final = "recycle"


class WorkerFailed(Exception):
    """A call ended with the worker gone; `reason` is one of the constants above."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class WorkerBootFailed(Exception):
    """The worker exited or hung before saying it was ready."""


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    argv: tuple[str, ...] = WORKER_ARGV
    address_space_bytes: int | None = None

    def command(self) -> tuple[str, ...]:
        if self.address_space_bytes is None or self.argv != WORKER_ARGV:
            return self.argv
        return (*self.argv, "--address-space-bytes", str(self.address_space_bytes))


class WorkerProcess:
    """A `python -m sandbox` child. Never reused after a failed or interrupted call."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin: SendStream = process.stdin
        self._stdout: ReceiveStream = process.stdout
        self._buffer = bytearray()
        self.tenant: str | None = None
        self.known: set[tuple[str, str]] = set()
        self.broken = False
        self.killed_for: str | None = None
        self.requests = 0
        self.switches = 0
        self.started_at = trio.current_time()

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, options: WorkerOptions | None = None
    ) -> WorkerProcess:
        """Spawn a worker and wait for its Hello frame (its limits are in place by then)."""
        options = options or WorkerOptions()
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                options.command(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
                env={},  # the worker needs nothing from the server's environment
                # Own session: a terminal's Ctrl-C reaches the server, which stops its workers.
                start_new_session=True,
            )
        )
        worker = cls(process)
        try:
            with trio.fail_after(BOOT_TIMEOUT_S):
                header = await worker._receive_exactly(HEADER.size)
                decode_hello(await worker._receive_exactly(frame_length(header)))
        except (trio.TooSlowError, EOFError, ValueError, msgspec.DecodeError) as exc:
            worker.kill()
            with trio.move_on_after(EXIT_STATUS_WAIT_S):
                await process.wait()
            raise WorkerBootFailed(
                f"worker did not start (exit status {process.returncode}; its stderr is above)"
            ) from exc
        return worker

    @property
    def alive(self) -> bool:
        return not self.broken and self.process.returncode is None

    @property
    def age_s(self) -> float:
        return trio.current_time() - self.started_at

    def kill(self, reason: str | None = None) -> None:
        """SIGKILL: used when a call was interrupted and the worker's state is unknown."""
        self.broken = True
        if reason is not None and self.killed_for is None:
            self.killed_for = reason
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Close stdin so the worker exits by itself."""
        self.broken = True
        await self._stdin.aclose()

    async def call(self, job: Job) -> Reply:
        """Send one job and read its reply; raises WorkerFailed if the worker is gone."""
        if job.tenant != self.tenant:
            if self.tenant is not None:
                self.switches += 1
            self.tenant = job.tenant
            self.known.clear()
        cache_key = (job.key, job.version)
        reply = None
        if cache_key in self.known:
            # The worker compiled this version already; send the source only if it evicted it.
            reply = await self._round_trip(msgspec.structs.replace(job, source=None))
        if reply is None or reply.need_source:
            reply = await self._round_trip(job)
        if reply.need_source:
            self.kill(PROTOCOL)
            raise WorkerFailed(PROTOCOL, "the worker asked for source it was sent")
        if len(self.known) >= MAX_KNOWN:
            self.known.clear()
        self.known.add(cache_key)
        self.requests += 1
        return reply

    async def _round_trip(self, job: Job) -> Reply:
        try:
            await self._stdin.send_all(encode_frame(job))
            header = await self._receive_exactly(HEADER.size)
            body = await self._receive_exactly(frame_length(header))
            return decode_reply(body)
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError):
            raise WorkerFailed(await self._exit_reason(), "the worker ended") from None
        except (ValueError, msgspec.DecodeError):
            self.kill(PROTOCOL)
            raise WorkerFailed(PROTOCOL, "the worker sent a malformed reply") from None

    async def _exit_reason(self) -> str:
        """Why the worker ended, from its exit status (it may take a moment to be reaped)."""
        self.broken = True
        with trio.move_on_after(EXIT_STATUS_WAIT_S):
            await self.process.wait()
        return classify_exit(self.process.returncode, self.killed_for)

    async def _receive_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._stdout.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                raise EOFError("worker closed its output")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data


def classify_exit(returncode: int | None, killed_for: str | None) -> str:
    if killed_for is not None:
        return killed_for
    if returncode == -signal.SIGPROF:
        return CPU_KILL
    if returncode == EXIT_MEMORY:
        return MEMORY
    return CRASH
