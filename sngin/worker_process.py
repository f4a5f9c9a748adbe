"""One sandbox worker subprocess and its framed pipes.

call(job, calls) sends a Job and waits for its Reply while a reader task serves the worker's
frames: the script's platform calls (answered concurrently through `calls`) and replies for
other requests interleaved on the same worker. A worker that ends mid-call is never reused; the
reason (CPU kill, wall kill, memory, crash, protocol error) comes from its exit status, and
every request in flight on it fails: the one that was running with that reason, the others as
siblings.
"""

from __future__ import annotations

import json
import logging
import math
import signal
import subprocess
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final, Protocol

import msgspec
import trio

from sandbox.protocol import (
    DORMANT_RUNTIMES,
    EXIT_MEMORY,
    HEADER,
    Call,
    CallResult,
    Cancel,
    Hello,
    Job,
    Log,
    Reply,
    Running,
    ToWorker,
    decode_from_worker,
    encode_frame,
    frame_length,
)
from sngin.pipes import PipeReader, PipeWriter

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)
script_log = logging.getLogger("sngin.script")

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
    """A request ended with its worker gone. `reason` is one of the constants above; `sibling`
    is True when another request on the same worker caused it."""

    def __init__(self, reason: str, detail: str, *, sibling: bool = False) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sibling = sibling


class WorkerBootFailed(Exception):
    """The worker exited or hung before saying it was ready."""


class CallHandler(Protocol):
    async def __call__(self, call: Call) -> CallResult: ...


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    argv: tuple[str, ...] = WORKER_ARGV
    address_space_bytes: int | None = None

    def command(self) -> tuple[str, ...]:
        if self.address_space_bytes is None or self.argv != WORKER_ARGV:
            return self.argv
        return (*self.argv, "--address-space-bytes", str(self.address_space_bytes))


@dataclass(slots=True)
class Pending:
    """One request in flight on a worker."""

    job: Job
    calls: CallHandler | None
    done: trio.Event = field(default_factory=trio.Event)
    wake: trio.Event = field(default_factory=trio.Event)  # done, or a first platform call
    nursery: trio.Nursery | None = None  # the request's own, once it makes a platform call
    queued: list[Call] = field(default_factory=list)  # calls that came before the nursery
    reply: Reply | None = None
    failure: WorkerFailed | None = None
    waiting_call: bool = False  # the worker is waiting for our answer to its Call
    redact: Callable[[str], str] | None = None  # the tenant's secrets out of its log lines
    call_scopes: list[trio.CancelScope] = field(default_factory=list)

    def cancel_calls(self) -> None:
        for scope in self.call_scopes:
            scope.cancel()

    def finish(self) -> None:
        self.done.set()
        self.wake.set()


async def refuse_calls(call: Call) -> CallResult:
    return CallResult(id=call.id, call_id=call.call_id, error="not available here")


class WorkerProcess:
    """A `python -m sandbox` child serving one tenant's requests, several at a time."""

    def __init__(self, process: trio.Process, nursery: trio.Nursery) -> None:
        self.process = process
        self.pid = process.pid
        # trio opens a child's pipes as non-blocking FdStreams; sngin.pipes uses their fds.
        assert isinstance(process.stdin, trio.lowlevel.FdStream)
        assert isinstance(process.stdout, trio.lowlevel.FdStream)
        self._stdin = process.stdin
        self._stdout = process.stdout
        self._nursery = nursery
        self._writer = PipeWriter(self._stdin.fileno(), nursery)
        self._reader = PipeReader(self._stdout.fileno())
        self._ids = 0
        self.pending: dict[int, Pending] = {}
        self.reserved = 0  # requests the pool handed this worker that have not called yet
        self._running: int | None = None  # the request the worker said it is resuming
        self.tenant: str | None = None
        self.known: set[tuple[str, str]] = set()
        # Tenants whose runtime the worker keeps dormant, with the versions it has compiled.
        self.dormant: OrderedDict[str, set[tuple[str, str]]] = OrderedDict()
        self.broken = False
        self.killed_for: str | None = None
        self._blame: int | None = None  # for a wall kill: the request whose time ran out
        self.requests = 0
        self.switches = 0
        self.started_at = trio.current_time()

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, options: WorkerOptions | None = None
    ) -> WorkerProcess:
        """Spawn a worker, wait for its Hello frame (its limits are in place by then), and
        start serving its frames."""
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
        worker = cls(process, nursery)
        try:
            with trio.fail_after(BOOT_TIMEOUT_S):
                hello = await worker._receive()
            if not isinstance(hello, Hello):
                raise ValueError("the first frame was not Hello")
        except (trio.TooSlowError, EOFError, ValueError, msgspec.DecodeError) as exc:
            worker.kill()
            with trio.move_on_after(EXIT_STATUS_WAIT_S):
                await process.wait()
            raise WorkerBootFailed(
                f"worker did not start (exit status {process.returncode}; its stderr is above)"
            ) from exc
        nursery.start_soon(worker._serve_frames)
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
        return len(self.pending) + self.reserved

    @property
    def computing(self) -> bool:
        """True when some request on it is running Lua (not waiting for a platform call), or
        is about to (handed this worker, not started yet)."""
        return self.reserved > 0 or any(not p.waiting_call for p in self.pending.values())

    def kill(self, reason: str | None = None, blame: int | None = None) -> None:
        """SIGKILL: the worker's state is unknown (e.g. a request overran its wall time)."""
        self.broken = True
        if reason is not None and self.killed_for is None:
            self.killed_for = reason
            self._blame = blame
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def release(self) -> None:
        """After the process ended: close our ends of its pipes (run_process leaves them)."""
        self._writer.close()
        self._reader.closed = True
        with trio.CancelScope(shield=True):
            await self._stdin.aclose()
            await self._stdout.aclose()

    async def close(self) -> None:
        """Close stdin so the worker exits by itself."""
        self.broken = True
        self._writer.close()
        await self._stdin.aclose()

    # --- requests ----------------------------------------------------------------------------

    async def run(
        self,
        job: Job,
        calls: CallHandler | None = None,
        *,
        timeout_s: float = math.inf,
        redact: Callable[[str], str] | None = None,
    ) -> Reply:
        """Run one job to its Reply within timeout_s; raises WorkerFailed if the worker ends
        first or the time runs out (WALL_KILL). The request's platform calls run in a nursery
        it owns (see _serve_calls), so none outlives it."""
        try:
            return await self._run(job, calls, timeout_s, redact)
        except BaseExceptionGroup as group:
            # From the calls' nursery: only its body raises (each call task answers its own
            # errors), so the group holds one exception.
            raise sole_exception(group) from None

    async def _run(
        self,
        job: Job,
        calls: CallHandler | None,
        timeout_s: float,
        redact: Callable[[str], str] | None,
    ) -> Reply:
        if self.reserved:
            self.reserved -= 1
        if self.broken:
            # Ended after it was handed out: its reader is gone and could not fail this request.
            raise WorkerFailed(CRASH, "the worker ended before the request started", sibling=True)
        if job.tenant != self.tenant:
            if self.tenant is not None:
                self.switches += 1
                self._set_aside(self.tenant)
            # A runtime kept dormant kept what it compiled: its versions need no source.
            self.known = self.dormant.pop(job.tenant, set())
            self.tenant = job.tenant
        self._ids += 1
        cache_key = (job.key, job.version)
        full = msgspec.structs.replace(job, id=self._ids)
        pending = self.pending[full.id] = Pending(job=full, calls=calls, redact=redact)
        deadline = trio.current_time() + timeout_s
        try:
            # The worker compiled this version already: the source need not cross the pipe.
            known = cache_key in self.known
            self._send(msgspec.structs.replace(full, source=None) if known else full)
            await self._wait(pending, deadline)
            if pending.reply is not None and pending.reply.need_source:
                # The worker evicted its compiled copy: send the source this time.
                pending = self.pending[full.id] = Pending(job=full, calls=calls, redact=redact)
                self._send(full)
                await self._wait(pending, deadline)
        except BaseException:
            self._abandon(pending)
            raise
        finally:
            pending.cancel_calls()
            self.pending.pop(full.id, None)
        if pending.failure is not None:
            raise pending.failure
        reply = pending.reply
        assert reply is not None
        if reply.need_source:
            self.kill(PROTOCOL)
            raise WorkerFailed(PROTOCOL, "the worker asked for source it was sent")
        if len(self.known) >= MAX_KNOWN:
            self.known.clear()
        self.known.add(cache_key)
        self.requests += 1
        return reply

    def _set_aside(self, tenant: str) -> None:
        """Mirror of the worker's dormant runtimes (sandbox/worker.py), for routing and for
        the source it need not resend. It can only be optimistic (the worker also drops big
        runtimes): a miss costs a new runtime, and the worker asks for the source it lacks."""
        self.dormant[tenant] = self.known
        while len(self.dormant) > DORMANT_RUNTIMES:
            self.dormant.popitem(last=False)

    async def _wait(self, pending: Pending, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await pending.wake.wait()
            if not pending.done.is_set():
                await self._serve_calls(pending)
            return
        if pending.waiting_call:
            # Waiting for the server, not running Lua: drop just this request.
            self._send_cancel(pending)
        else:
            self.kill(WALL_KILL, blame=pending.job.id)
        raise WorkerFailed(WALL_KILL, "the request ran out of wall time")

    async def _serve_calls(self, pending: Pending) -> None:
        """The script made a platform call: answer its calls in a nursery this request owns
        until its Reply. Opened only now: most requests make no call, and a nursery costs
        ~13 us per request on this machine."""
        async with trio.open_nursery() as nursery:
            pending.nursery = nursery
            for call in pending.queued:
                nursery.start_soon(self._answer_call, pending, call)
            pending.queued.clear()
            try:
                await pending.done.wait()
            finally:
                pending.nursery = None
                pending.cancel_calls()

    def _abandon(self, pending: Pending) -> None:
        """The caller went away (e.g. the client left) before the Reply."""
        if pending.done.is_set() or self.broken:
            return
        if pending.waiting_call:
            self._send_cancel(pending)
        elif len(self.pending) == 1:
            self.kill()  # running Lua for nobody, and nobody else shares the worker
        # Else it finishes on its own (within its CPU budget) and its Reply is dropped.

    def _send_cancel(self, pending: Pending) -> None:
        pending.cancel_calls()
        self._send(Cancel(id=pending.job.id))

    def _send(self, message: ToWorker) -> None:
        # Never waits: frames the pipe cannot take now are queued in order. A worker that is
        # gone is noticed by the reader task, which fails every pending request.
        self._writer.send(encode_frame(message))

    # --- the worker's frames -----------------------------------------------------------------

    async def _serve_frames(self) -> None:
        reason = None
        try:
            while True:
                message = await self._receive()
                if isinstance(message, Reply):
                    self._finish(message)
                elif isinstance(message, Call):
                    self._start_call(message)
                elif isinstance(message, Running):
                    self._running = message.id
                elif isinstance(message, Log):
                    self._log(message)
                else:
                    raise ValueError("unexpected frame")
        except EOFError:
            reason = await self._exit_reason()
        except (ValueError, msgspec.DecodeError):
            self.kill(PROTOCOL)
            reason = PROTOCOL
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reason = await self._exit_reason()
        self._fail_all(reason)

    def _log(self, message: Log) -> None:
        pending = self.pending.get(message.id)
        if pending is None:
            return
        request = pending.job.request
        line = message.line.decode("utf-8", "replace")
        if pending.redact is not None:
            line = pending.redact(line)
        # One JSON line per script line, tagged so a tail can follow one tenant or request.
        script_log.info(
            "%s",
            json.dumps(
                {
                    "tenant": pending.job.tenant,
                    "request": request.id,
                    "path": request.path,
                    "line": line,
                }
            ),
        )

    def _finish(self, reply: Reply) -> None:
        if self._running == reply.id:
            self._running = None
        pending = self.pending.get(reply.id)
        if pending is not None:
            pending.reply = reply
            pending.finish()

    def _start_call(self, call: Call) -> None:
        if self._running == call.id:
            self._running = None
        pending = self.pending.get(call.id)
        if pending is None:
            return  # cancelled: the worker gets a Cancel, not an answer
        pending.waiting_call = True
        if pending.nursery is not None:
            pending.nursery.start_soon(self._answer_call, pending, call)
        else:
            pending.queued.append(call)  # the request opens its nursery and starts it
            pending.wake.set()

    async def _answer_call(self, pending: Pending, call: Call) -> None:
        scope = trio.CancelScope()
        pending.call_scopes.append(scope)
        with scope:
            handler = pending.calls or refuse_calls
            try:
                result = await handler(call)
            except Exception:
                # The arguments are the tenant's: whatever they break is that script's error,
                # never the server's (the traceback is logged once, here).
                log.exception("platform call of %s failed", pending.job.tenant)
                result = CallResult(
                    id=call.id, call_id=call.call_id, error="the server could not complete the call"
                )
            pending.waiting_call = False
            self._send(result)

    def _fail_all(self, reason: str) -> None:
        culprit = self._culprit()
        for request_id, pending in list(self.pending.items()):
            sibling = culprit is not None and request_id != culprit
            pending.failure = WorkerFailed(reason, "the worker ended", sibling=sibling)
            pending.finish()

    def _culprit(self) -> int | None:
        """The request that was running when the worker ended, as far as we can tell."""
        if self.killed_for == WALL_KILL and self._blame is not None:
            return self._blame
        if self._running is not None:
            return self._running
        computing = [i for i, p in self.pending.items() if not p.waiting_call]
        return computing[0] if computing else None

    async def _exit_reason(self) -> str:
        """Why the worker ended, from its exit status (it may take a moment to be reaped)."""
        self.broken = True
        with trio.move_on_after(EXIT_STATUS_WAIT_S):
            await self.process.wait()
        return classify_exit(self.process.returncode, self.killed_for)

    async def _receive(self) -> Hello | Reply | Call | Running | Log:
        header = await self._reader.receive_exactly(HEADER.size)
        return decode_from_worker(await self._reader.receive_exactly(frame_length(header)))


def sole_exception(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (or the group itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


def classify_exit(returncode: int | None, killed_for: str | None) -> str:
    if killed_for is not None:
        return killed_for
    if returncode == -signal.SIGPROF:
        return CPU_KILL
    if returncode == EXIT_MEMORY:
        return MEMORY
    return CRASH
