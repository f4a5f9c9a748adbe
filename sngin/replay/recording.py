"""Whether a run leaves a replay bundle, and writing it: every run that ends in a script error
or a limit kill, and every run sent with a valid X-Sngin-Record, within the per-script write
rate. The request path only decides and queues; one writer task builds, encodes (in a thread:
its size is the tenant's) and stores. A slow or failed write costs the bundle, never the
response."""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec
import trio

from sandbox.protocol import BAD_SOURCE, INVALID_RESPONSE, LUA_ERROR, MEMORY_LIMIT
from sngin.errors import SnginError
from sngin.observe.live_tails import head_text
from sngin.replay.bundle import (
    MAX_BODY_BYTES,
    MAX_OUTCOME_BODY_BYTES,
    Bundle,
    Module,
    Outcome,
    encode,
    kept_headers,
)
from sngin.replay.recorder import RunRecord
from sngin.replay.store import ReplayStore
from sngin.tenants.tokens import PREFIX as TOKEN_PREFIX
from sngin.tenants.tokens import TenantTokens

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.protocol import Job, Reply
    from sngin.bodies.budgets import MemoryBudget
    from sngin.calls.request_calls import RequestCalls
    from sngin.config import Settings
    from sngin.storage.tenant_storage import TenantStorage
    from sngin.tenants.config import TenantConfig

log = logging.getLogger(__name__)

FAILURES: Final = frozenset({LUA_ERROR, INVALID_RESPONSE, MEMORY_LIMIT, BAD_SOURCE})
MAX_LOG_LINE_CHARS: Final = 4096  # of each log line a bundle keeps (its secrets replaced)
MAX_PENDING: Final = 16  # bundles waiting for the writer; past it, a bundle is dropped
WRITE_TIMEOUT_S: Final = 10.0  # a write the storage backend does not finish by then is dropped


@dataclass(frozen=True, slots=True)
class Pending:
    """A run that leaves a bundle, waiting for the writer."""

    record: RunRecord
    job: Job  # its request's body already cut to what a bundle keeps
    body_truncated: bool
    config: TenantConfig
    started: float
    modules: list[Module]
    outcome: Outcome
    tape_cut: bool
    recorded: bool
    logs: list[bytes]


class Recording:
    """Decides on the request path (no wait: a full queue drops the bundle); one writer task,
    owned by the server, builds, encodes and stores each bundle within WRITE_TIMEOUT_S."""

    def __init__(
        self,
        settings: Settings,
        storage: TenantStorage | None,
        budget: MemoryBudget,
        count: Callable[[str, str], None] = lambda tenant, outcome: None,
    ) -> None:
        self.store: ReplayStore | None = None
        if storage is not None and settings.replay_max_bundles > 0:
            self.store = ReplayStore(
                storage,
                max_bundles=settings.replay_max_bundles,
                max_bytes=settings.replay_max_bytes,
            )
        self._budget = budget  # the subrequest bodies' budget: a run's record is held on it
        self._admin_token = settings.admin_token
        self._storage = storage
        self._send, self._receive = trio.open_memory_channel[Pending](MAX_PENDING)
        self._pending = 0
        self._idle = trio.Event()
        self._idle.set()
        self._count = count  # (tenant, outcome): sngin_replay_bundles_total

    def _counted(self, tenant: str, outcome: str) -> None:
        """written, or why not: rate_limited, queue_full, too_large, failed (storage down or
        full, or slower than WRITE_TIMEOUT_S)."""
        self._count(tenant, outcome)

    def begin(self, tenant: str) -> RunRecord | None:
        return None if self.store is None else RunRecord(self._budget, tenant)

    def finish(
        self,
        record: RunRecord | None,
        *,
        job: Job,
        config: TenantConfig,
        started: float,
        calls: RequestCalls | None,
        reply: Reply | None,
        failure: SnginError | None,
        recorded: bool,
        logs: list[bytes] | None = None,
    ) -> None:
        """Queue the run's bundle if it leaves one; never waits."""
        if record is None or self.store is None:
            return
        # (A run that never started, or that another request's kill ended, is not its own.)
        failed = failure is not None and failure.limit is not None
        failed = failed or (reply is not None and reply.error in FAILURES)
        if not (failed or recorded):
            record.release()
            return
        if not self.store.rate.allows(job.tenant, job.key, time.time()):
            self._counted(job.tenant, "rate_limited")
            record.release()
            return
        modules = [] if calls is None else [
            Module(location=location, version=version, text=text)
            for location, (version, text) in calls.modules_given.items()
        ]  # fmt: skip
        # Only what the bundle keeps waits in the queue: not a whole large body or answer.
        body = job.request.body
        request = msgspec.structs.replace(job.request, body=body[:MAX_BODY_BYTES])
        if reply is not None:
            record.add_tape(reply.tape)
        pending = Pending(
            record, msgspec.structs.replace(job, request=request),
            len(body) > MAX_BODY_BYTES, config, started, modules, outcome_of(reply, failure),
            bool(reply is not None and reply.tape_cut), recorded, logs or [],
        )  # fmt: skip
        try:
            self._send.send_nowait(pending)
        except trio.WouldBlock:
            self._counted(job.tenant, "queue_full")
            record.release()
            return
        self._pending += 1
        self._idle = trio.Event()

    async def write_forever(self) -> None:
        """The writer (one task, started by the server)."""
        async for pending in self._receive:
            try:
                with trio.move_on_after(WRITE_TIMEOUT_S) as waited:
                    kept = await self._keep(pending)
                    self._counted(pending.job.tenant, "too_large" if kept is None else "written")
                if waited.cancelled_caught:
                    self._counted(pending.job.tenant, "failed")
                    job = pending.job
                    log.warning("replay: %s: bundle for %s not written in %g s",
                                job.tenant, job.request.id, WRITE_TIMEOUT_S)  # fmt: skip
            except SnginError as exc:  # storage down or full: the bundle is lost, nothing else
                self._counted(pending.job.tenant, "failed")
                log.warning("replay: %s: no bundle for %s: %s",
                            pending.job.tenant, pending.job.request.id, exc)  # fmt: skip
            finally:
                pending.record.release()
                self._pending -= 1
                if self._pending == 0:
                    self._idle.set()

    async def settled(self) -> None:
        """Until every queued bundle is written or dropped (tests wait on it)."""
        await self._idle.wait()

    async def may_record(self, tenant: str, token: bytes) -> bool:
        """X-Sngin-Record's token: the admin token or one of this tenant's (else ignored). With
        the admin API off (no SNGIN_ADMIN_TOKEN), no token holds, as the guard has it."""
        admin_token = self._admin_token
        if not admin_token:
            return False
        text = token.decode("latin-1").strip()
        if hmac.compare_digest(text.encode(), admin_token.encode()):
            return True
        if self._storage is None or not text.startswith(TOKEN_PREFIX):
            return False
        try:
            return await TenantTokens(self._storage).host_of(text) == tenant
        except SnginError:
            return False

    async def _keep(self, pending: Pending) -> str | None:
        assert self.store is not None
        job, record = pending.job, pending.record
        request = job.request
        bundle_id = await self.store.unique_id(job.tenant, request.id)
        config = pending.config
        bundle = Bundle(
            id=bundle_id, tenant=job.tenant, time=pending.started, script=job.key,
            version=job.version, source=job.source or b"", method=request.method,
            path=request.path, query=request.querystring,
            headers=kept_headers(request.headers, config.replay_keeps_headers),
            body=request.body, body_truncated=pending.body_truncated,
            env=config.env, modules=pending.modules, calls=record.calls, calls_cut=record.cut,
            tape=record.tape, tape_cut=pending.tape_cut, outcome=pending.outcome,
            partial=pending.outcome.kind is None and pending.outcome.error is not None,
            recorded=pending.recorded,
            logs=[head_text(line, None, MAX_LOG_LINE_CHARS) for line in pending.logs],
        )  # fmt: skip
        # Encoding (and the secrets' replacement) walks what the tenant's run made: a thread.
        data, texts = await trio.to_thread.run_sync(encode, bundle, config.placeholders)
        if await self.store.put(
            job.tenant, bundle_id, pending.started, data, bundle.summary(), texts
        ):
            return bundle_id
        log.warning("replay: %s: bundle %s is larger than a tenant keeps", job.tenant, bundle_id)
        return None


def outcome_of(reply: Reply | None, failure: SnginError | None) -> Outcome:
    if reply is None:
        assert failure is not None
        return Outcome(status=failure.status, error=failure.message, limit=failure.limit)
    body = reply.body if reply.error is None else reply.message.encode()
    return Outcome(
        status=reply.status if reply.error is None else 500,
        body=body[:MAX_OUTCOME_BODY_BYTES], body_truncated=len(body) > MAX_OUTCOME_BODY_BYTES,
        error=reply.message if reply.error is not None else None, kind=reply.error,
        limit="memory" if reply.error == MEMORY_LIMIT else None,  # (the worker caught it)
    )  # fmt: skip
