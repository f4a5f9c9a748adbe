"""Why a worker ended, and how a request on it learns: the exit reasons, the errors, and the
classification of an exit status."""

from __future__ import annotations

import signal
from typing import Final

from sandbox.protocol import EXIT_MEMORY
from sngin.errors import WorkerError

# Why a worker ended.
CPU_KILL: Final = "cpu"
WALL_KILL: Final = "wall"
MEMORY: Final = "memory"
CRASH: Final = "crash"
# Not an exit: a request stacked behind other requests ran out of wall time before it started
# (its worker goes on; sngin.workers.frame_channel).
NEVER_STARTED: Final = "never_started"
PROTOCOL: Final = "protocol"
RECYCLE: Final = "recycle"
RETIRED: Final = "retired"  # an extra worker no longer needed (sngin.workers.supervisor.retire)


class WorkerFailed(WorkerError):
    """A request ended with its worker gone. `reason` is one of the constants above; `sibling`
    is True when another request on the same worker caused it; `unstarted` when the request
    had not begun to run (it may safely run elsewhere)."""

    def __init__(
        self,
        reason: str,
        detail: str,
        *,
        sibling: bool = False,
        unstarted: bool = False,
        platform: bool = False,
    ) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.sibling = sibling
        self.unstarted = unstarted
        # The time ran out while the request waited on a storage or cache backend: the
        # platform's stall, not the tenant's doing, so no quarantine strike.
        self.platform = platform


class WorkerBootFailed(WorkerError):
    """A worker exited or hung before saying it was ready; or, at start-up, workers kept
    failing to start and the pool gave up."""


def classify_exit(returncode: int | None, killed_for: str | None) -> str:
    if killed_for is not None:
        return killed_for
    if returncode == -signal.SIGPROF:
        return CPU_KILL
    if returncode == EXIT_MEMORY:
        return MEMORY
    return CRASH


def blame_on_exit(
    in_flight: list[tuple[int, str, bool]], culprit: int | None, reason: str
) -> dict[int, WorkerFailed]:
    """How each request in flight on a worker that ended fails: `in_flight` is (request id,
    tenant, heard of yet) in the order sent, `culprit` the request that was running. A request
    of another tenant that the worker had not started (stacked behind the culprit: the worker
    starts jobs in the order sent) is unstarted, for the pool to run elsewhere: no tenant's
    kill costs another's request. The culprit's own tenant's requests fail as its siblings."""
    tenants = {request_id: tenant for request_id, tenant, _ in in_flight}
    culprit_tenant = tenants.get(culprit) if culprit is not None else None
    after_culprit = culprit is None
    failures = {}
    for request_id, tenant, heard in in_flight:
        sibling = culprit is not None and request_id != culprit
        unstarted = after_culprit and not heard and tenant != culprit_tenant
        failures[request_id] = WorkerFailed(
            reason, "the worker ended", sibling=sibling, unstarted=unstarted
        )
        if request_id == culprit:
            after_culprit = True
    return failures
