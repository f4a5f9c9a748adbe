"""What ends when one request on a shared worker runs out of wall time or loses its caller:
just that request, or the whole worker. Pure decisions on what the frame channel knows of the
request; the channel carries them out (sngin.workers.frame_channel), as blame_on_exit decides
who loses what when a worker ends (sngin.workers.failures)."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sngin.workers.failures import NEVER_STARTED, WALL_KILL, WorkerFailed


class Action(enum.Enum):
    CANCEL = "cancel"  # tell the worker to drop the request (it is parked, not running Lua)
    KILL = "kill"  # SIGKILL the worker: Lua is running for this request and cannot be stopped
    NOTHING = "nothing"  # the worker and the other requests go on untouched


@dataclass(frozen=True, slots=True)
class Standing:
    """Where one request stands on its worker when its time runs out or its caller leaves."""

    waiting_call: bool  # parked: the worker waits for our answer to its platform call
    waiting_on_backend: bool  # ...and the call is a storage operation (the backend's stall)
    queued: bool  # never started: stacked behind another request that still computes
    alone: bool  # the only request in flight on the worker


@dataclass(frozen=True, slots=True)
class Verdict:
    action: Action
    failure: WorkerFailed | None = None  # what the request's caller is told, if anything


def out_of_wall_time(standing: Standing) -> Verdict:
    """A parked request is dropped alone (its storage wait is the platform's fault, which the
    caller is told); a queued one never ran, so nothing is killed; one running Lua can only be
    stopped with its worker, whose other requests fail as siblings (blame_on_exit)."""
    if standing.waiting_call:
        if standing.waiting_on_backend:
            failure = WorkerFailed(
                WALL_KILL, "the request ran out of wall time waiting on storage", platform=True
            )
            return Verdict(Action.CANCEL, failure)
        return Verdict(Action.CANCEL, WorkerFailed(WALL_KILL, "the request ran out of wall time"))
    if standing.queued:
        # Its Reply, should it come, is dropped.
        return Verdict(
            Action.NOTHING,
            WorkerFailed(NEVER_STARTED, "the request never started", sibling=True),
        )
    return Verdict(Action.KILL, WorkerFailed(WALL_KILL, "the request ran out of wall time"))


def caller_left(standing: Standing) -> Action:
    """The caller went away (the client left) before the Reply: a parked request is dropped;
    Lua running for nobody on a worker nobody else uses is killed; on a shared worker it
    finishes within its CPU budget and its Reply is dropped."""
    if standing.waiting_call:
        return Action.CANCEL
    if standing.alone:
        return Action.KILL
    return Action.NOTHING
