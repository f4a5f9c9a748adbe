"""The multiplexed request channel to one worker child: length-prefixed frames over its pipes,
several requests in flight, each waiting for its Reply while the reader task serves the child's
frames (replies, platform calls, log lines). What a request's platform calls and log lines do
is injected (a CallHandler, ScriptLines); what ends when its time runs out or its caller leaves
is sngin.workers.kill_policy's decision, and who fails when the child ends is
sngin.workers.failures'; the channel carries them out.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import msgspec
import trio

from sandbox.protocol import (
    HEADER,
    Call,
    CallResult,
    Cancel,
    Hello,
    Job,
    Log,
    Reply,
    Running,
    StorageCall,
    ToWorker,
    decode_from_worker,
    encode_to_worker,
    frame_length,
)
from sngin.workers import kill_policy
from sngin.workers.failures import CRASH, PROTOCOL, WALL_KILL, WorkerFailed, blame_on_exit
from sngin.workers.kill_policy import Action, Standing
from sngin.workers.pipes import PipeReader, PipeWriter

if TYPE_CHECKING:
    from sngin.observe.live_tails import ScriptLines

log = logging.getLogger(__name__)


class CallHandler(Protocol):
    async def __call__(self, call: Call) -> CallResult: ...


class ChannelOwner(Protocol):
    """The worker process the channel belongs to (sngin.workers.process)."""

    @property
    def broken(self) -> bool: ...
    def kill(self, reason: str | None = None, blame: int | None = None) -> None: ...
    def blamed(self) -> int | None: ...
    async def exit_reason(self) -> str: ...


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
    # ...and that Call is a storage or cache operation: a backend's stall, not the tenant's
    # (lease waits and http.request are the tenant's own choice)
    waiting_on_backend: bool = False
    heard: bool = False  # the worker sent a frame about it: it has started
    lines: ScriptLines | None = None  # where its print/log lines go (None: dropped)
    call_scopes: list[trio.CancelScope] = field(default_factory=list)

    def cancel_calls(self) -> None:
        for scope in self.call_scopes:
            scope.cancel()

    def finish(self) -> None:
        self.done.set()
        self.wake.set()


async def refuse_calls(call: Call) -> CallResult:
    return CallResult(id=call.id, call_id=call.call_id, error="not available here")


def sole_exception(error: BaseException) -> BaseException:
    """The one exception inside nested single-member groups (or the group itself)."""
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
        error = error.exceptions[0]
    return error


class FrameChannel:
    def __init__(
        self,
        stdin: trio.lowlevel.FdStream,
        stdout: trio.lowlevel.FdStream,
        nursery: trio.Nursery,
        owner: ChannelOwner,
    ) -> None:
        self._writer = PipeWriter(stdin.fileno(), nursery)
        self._reader = PipeReader(stdout.fileno())
        self._owner = owner
        self._ids = 0
        self.pending: dict[int, Pending] = {}
        self._running: int | None = None  # the request the worker said it is resuming

    def close(self) -> None:
        self._writer.close()
        self._reader.closed = True

    def close_writer(self) -> None:
        self._writer.close()

    async def receive(self) -> Hello | Reply | Call | Running | Log:
        header = await self._reader.receive_exactly(HEADER.size)
        return decode_from_worker(await self._reader.receive_exactly(frame_length(header)))

    @property
    def computing(self) -> bool:
        """Some request on it is running Lua (not waiting for a platform call)."""
        return any(not p.waiting_call for p in self.pending.values())

    @property
    def parked(self) -> bool:
        """Some request on it waits for a platform call's answer."""
        return any(p.waiting_call for p in self.pending.values())

    # --- one request ---------------------------------------------------------------------------

    async def exchange(
        self,
        job: Job,
        calls: CallHandler | None,
        *,
        source_known: bool,
        timeout_s: float = math.inf,
        lines: ScriptLines | None = None,
    ) -> Reply:
        """Send a job (without its source when the child compiled it already) and wait for its
        Reply within timeout_s; raises WorkerFailed if the worker ends first or the time runs
        out (WALL_KILL). The request's platform calls run in a nursery it owns (see
        _serve_calls), so none outlives it."""
        if self._owner.broken:
            # Ended after it was handed out: its reader is gone and could not fail this request.
            raise WorkerFailed(
                CRASH, "the worker ended before the request started", sibling=True, unstarted=True
            )
        self._ids += 1
        full = msgspec.structs.replace(job, id=self._ids)
        pending = self.pending[full.id] = Pending(job=full, calls=calls, lines=lines)
        deadline = trio.current_time() + timeout_s
        try:
            self._send(msgspec.structs.replace(full, source=None) if source_known else full)
            await self._wait(pending, deadline)
            if pending.reply is not None and pending.reply.need_source:
                # The worker evicted its compiled copy: send the source this time. Re-entered
                # last: the pending map is in the order the worker will start its jobs.
                del self.pending[full.id]
                pending = self.pending[full.id] = Pending(job=full, calls=calls, lines=lines)
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
            self._owner.kill(PROTOCOL)
            raise WorkerFailed(PROTOCOL, "the worker asked for source it was sent")
        if lines is not None and lines.dropped:
            reply = msgspec.structs.replace(reply, logs_dropped=reply.logs_dropped + lines.dropped)
        return reply

    async def _wait(self, pending: Pending, deadline: float) -> None:
        with trio.move_on_at(deadline):
            await pending.wake.wait()
            if not pending.done.is_set():
                await self._serve_calls(pending)
            return
        verdict = kill_policy.out_of_wall_time(self._standing(pending))
        if verdict.action is Action.CANCEL:
            self._send_cancel(pending)
        elif verdict.action is Action.KILL:
            self._owner.kill(WALL_KILL, blame=pending.job.id)
        assert verdict.failure is not None
        raise verdict.failure

    def _standing(self, pending: Pending) -> Standing:
        return Standing(
            waiting_call=pending.waiting_call,
            waiting_on_backend=pending.waiting_on_backend,
            queued=self._queued(pending),
            alone=len(self.pending) == 1,
        )

    def _queued(self, pending: Pending) -> bool:
        """The worker has not started this job: nothing was heard of it, and a request sent
        before it still computes (the worker starts jobs in the order sent)."""
        if pending.heard:
            return False
        for other in self.pending.values():
            if other is pending:
                return False
            if not other.waiting_call:
                return True
        return False

    async def _serve_calls(self, pending: Pending) -> None:
        """The script made a platform call: answer its calls in a nursery this request owns
        until its Reply. Opened only now: most requests make no call, and a nursery costs
        ~13 us per request on this machine."""
        try:
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
        except BaseExceptionGroup as group:
            # Only the body raises (each call task answers its own errors): unwrap it, so
            # callers see the exception itself (a cancellation, say), as without a nursery.
            raise sole_exception(group) from None

    def _abandon(self, pending: Pending) -> None:
        """The caller went away (e.g. the client left) before the Reply."""
        if pending.done.is_set() or self._owner.broken:
            return
        action = kill_policy.caller_left(self._standing(pending))
        if action is Action.CANCEL:
            self._send_cancel(pending)
        elif action is Action.KILL:
            self._owner.kill()

    def _send_cancel(self, pending: Pending) -> None:
        pending.cancel_calls()
        self._send(Cancel(id=pending.job.id))

    def _send(self, message: ToWorker) -> None:
        # Never waits: frames the pipe cannot take now are queued in order. A worker that is
        # gone is noticed by the reader task, which fails every pending request.
        frame, tail = encode_to_worker(message)
        self._writer.send(frame)
        if tail is not None:
            self._writer.send(tail)

    # --- the worker's frames -----------------------------------------------------------------

    async def serve_frames(self) -> None:
        """The reader task: until the child's output ends, then fail what is in flight."""
        reason = None
        try:
            while True:
                message = await self.receive()
                if isinstance(message, Reply):
                    self._finish(message)
                elif isinstance(message, Call):
                    self._start_call(message)
                elif isinstance(message, Running):
                    self._running = message.id
                    self._heard(message.id)
                elif isinstance(message, Log):
                    self._log(message)
                else:
                    raise ValueError("unexpected frame")
        except EOFError:
            reason = await self._owner.exit_reason()
        except (ValueError, msgspec.DecodeError):
            self._owner.kill(PROTOCOL)
            reason = PROTOCOL
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            reason = await self._owner.exit_reason()
        self._fail_all(reason)

    def _heard(self, request_id: int) -> None:
        pending = self.pending.get(request_id)
        if pending is not None:
            pending.heard = True

    def _log(self, message: Log) -> None:
        pending = self.pending.get(message.id)
        if pending is None:
            return
        pending.heard = True
        if pending.lines is not None:
            pending.lines.write(message.line)

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
        pending.waiting_call = pending.heard = True
        asked = call.request
        pending.waiting_on_backend = isinstance(asked, StorageCall) and asked.op != "lease_acquire"
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
            pending.waiting_call = pending.waiting_on_backend = False
            self._send(result)

    def _fail_all(self, reason: str) -> None:
        """The worker ended: every request in flight fails, each as blame_on_exit says."""
        in_flight = [(i, p.job.tenant, p.heard) for i, p in self.pending.items()]
        failures = blame_on_exit(in_flight, self._culprit(), reason)
        for request_id, pending in list(self.pending.items()):
            pending.failure = failures[request_id]
            pending.finish()

    def _culprit(self) -> int | None:
        """The request that was running when the worker ended, as far as we can tell."""
        blamed = self._owner.blamed()
        if blamed is not None:
            return blamed
        if self._running is not None:
            return self._running
        computing = [i for i, p in self.pending.items() if not p.waiting_call]
        return computing[0] if computing else None
