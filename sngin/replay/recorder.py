"""What the server keeps of a run while it goes on, for its bundle: every platform call with
its answer (RequestCalls keeps the modules' texts), and the time and randomness that came on
each Call frame. Bounded (MAX_CALLS_BYTES) and held against the subrequest-bodies budget;
dropped when the run succeeds and nobody asked to record it."""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from sandbox.protocol import CallResult, EmailCall, HttpCall, Tape
from sngin.replay.bundle import MAX_CALLS_BYTES, OUTBOUND_PRIVATE, REDACTED, RecordedCall

if TYPE_CHECKING:
    from sandbox.protocol import Call, CallRequest
    from sngin.bodies.budgets import Lease, MemoryBudget


def private_free(asked: CallRequest) -> CallRequest:
    """A call as a bundle keeps it: an http.request's auth and Authorization/Cookie headers
    (OAuth's signed header among them), and an email.send's password, redacted (a replay
    compares the new code's call after the same redaction)."""
    if isinstance(asked, EmailCall):
        password = None if asked.password is None else REDACTED.decode()
        return msgspec.structs.replace(asked, password=password)
    if not isinstance(asked, HttpCall):
        return asked
    headers = [(n, REDACTED if n.lower() in OUTBOUND_PRIVATE else v) for n, v in asked.headers]
    auth = None if asked.auth is None else (REDACTED, REDACTED)
    return msgspec.structs.replace(asked, headers=headers, auth=auth)


def weight(result: CallResult) -> int:
    size = 256
    if result.http is not None:
        size += len(result.http.body) + sum(len(n) + len(v) for n, v in result.http.headers)
    if result.module is not None:
        size += len(result.module.text)
    if result.value is not None:
        size += len(result.value)
    return size


class RunRecord:
    """One run's calls, answers and tape so far."""

    def __init__(self, budget: MemoryBudget, tenant: str) -> None:
        self._budget, self._tenant = budget, tenant
        self.lease: Lease | None = None  # taken at the first call (most runs make none)
        self.calls: list[RecordedCall] = []
        self.tape: Tape = {}
        self.cut = False
        self.held = 0

    def add_tape(self, tape: Tape | None) -> None:
        if tape:
            for kind, values in tape.items():
                self.tape.setdefault(kind, []).extend(values)

    def add_call(self, call: Call, result: CallResult) -> None:
        self.add_tape(call.tape)
        if self.cut:
            return
        size = weight(result)
        if self.lease is None:
            self.lease = self._budget.lease(self._tenant)
        if self.held + size > MAX_CALLS_BYTES or not self.lease.take(size):
            self.cut = True
            return
        self.held += size
        self.calls.append(RecordedCall(request=private_free(call.request), result=result))

    def release(self) -> None:
        if self.lease is not None:
            self.lease.release()
