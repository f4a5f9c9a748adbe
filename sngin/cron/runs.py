"""One scheduled run: checked against the tenant's configuration as it is now, claimed (across
nodes sharing Redis, so only one runs a tick), run like a request through the tenant pipeline,
and recorded (the last KEPT_RUNS per tenant, in the tenant storage backend under sngin's own
namespace, so every process and node lists the same runs)."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from sandbox.protocol import CronRun
from sngin.errors import SnginError
from sngin.observe.live_tails import HEAD_LINES, head_text
from sngin.observe.tracing import RequestIds, RequestTrace
from sngin.storage.sqlite import Quota

if TYPE_CHECKING:
    from sngin.edge.deps import Deps
    from sngin.edge.pipeline import TenantPipeline
    from sngin.tenants.config import TenantConfig
    from sngin.tenants.cron import CronEntry

log = logging.getLogger(__name__)

KEPT_RUNS: Final = 20
RUNS: Final = "__cron_runs/"  # + tenant: its run records (INTERNAL_PREFIX: no tenant's storage)
CLAIMS: Final = "__cron_claims"
CLAIM_TTL_S: Final = 86_400.0  # a claimed tick stays claimed for a day: never run twice
RUNS_QUOTA: Final = Quota(max_keys=4 * KEPT_RUNS, max_bytes=256 * 1024)
MAX_ERROR_CHARS: Final = 500
MAX_BODY_BYTES: Final = 500


@dataclass(frozen=True, slots=True)
class RunRecord:
    tick: float  # the tick's unix time
    index: int  # the entry's place in the tenant's list
    path: str
    node: str
    outcome: str  # ok, error, killed, skipped, running (lost, when it never reported)
    status: int = 0
    started: float = 0.0
    duration_ms: float = 0.0
    error: str | None = None
    manual: bool = False
    body: str | None = None  # what the script returned (its start), recorded, sent nowhere
    log: tuple[str, ...] = ()  # its first log lines

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def key(self) -> bytes:
        return f"{int(self.tick * 1000):016d}:{self.index}:{self.node}".encode()


class CronRuns:
    """Fires one tick of one entry; the scheduler (sngin.cron.scheduler) says when."""

    def __init__(self, deps: Deps, pipeline: TenantPipeline, *, node: str, claims: bool) -> None:
        self.deps = deps
        self.pipeline = pipeline
        self.node = node
        self._claims = claims  # several nodes share the storage (Redis): claim each tick
        self._ids = RequestIds()
        self.finished = trio.Event()  # set after each run (tests wait on it), then replaced

    async def fire(
        self, tenant: str, entry: CronEntry, tick: float, *, manual: bool = False
    ) -> RunRecord | None:
        """Run the entry's script for this tick, unless the entry changed or went meanwhile
        (None), the site is disabled or quarantined (recorded as skipped), or another node
        claimed the tick (None)."""
        config = await self.pipeline.tenant_config(tenant)
        current = next((e for e in config.cron if e.key == entry.key), None)
        if current is None:
            return None
        record = RunRecord(tick, current.index, current.path, self.node, "running",
                           started=time.time(), manual=manual)  # fmt: skip
        quarantined = self.deps.pool.quarantine_left(tenant) is not None
        if not config.enabled or quarantined:
            why = "the site is disabled" if not config.enabled else "the site is quarantined"
            return await self._done(tenant, record, "skipped", error=why)
        if self._claims and not manual and not await self._claim(tenant, current, tick):
            return None
        await self._record(tenant, record)
        return await self._run(tenant, current, record, config)

    async def _run(
        self, tenant: str, entry: CronEntry, record: RunRecord, config: TenantConfig
    ) -> RunRecord:
        trace = RequestTrace(id=self._ids.of(()), started=trio.current_time())
        trace.run.log_head = []
        cron = CronRun(schedule=entry.schedule, scheduled=record.tick, index=entry.index,
                       manual=record.manual)  # fmt: skip
        outcome, status, error, body = "ok", 200, None, None
        try:
            reply = await self.pipeline.run_cron(tenant, entry.path, cron, config, trace)
            status = reply.status
            body = reply.body[:MAX_BODY_BYTES].decode("utf-8", "replace") or None
            if reply.error is not None:
                outcome, status, error = "error", 405 if reply.allow else 500, reply.message
        except SnginError as exc:
            outcome = "killed" if trace.run.kill else "error"
            status, error = exc.status, exc.message
        except Exception:
            log.exception("cron run of %s %s failed", tenant, entry.path)
            outcome, status, error = "error", 500, "internal server error"
        wall_s = trio.current_time() - trace.started
        self.deps.observer.access.write(
            request_id=trace.id, tenant=tenant, method="CRON", path=entry.path, status=status,
            size=0, wall_ms=wall_s * 1000, cpu_ms=trace.cpu_ms, code=trace.fetch.outcome,
            worker=trace.run.worker,
        )  # fmt: skip
        lateness = max(0.0, record.started - record.tick)
        self.deps.observer.metrics.cron_run(tenant, outcome, lateness)
        redact = config.redact if config.secrets else None
        log_head = tuple(
            head_text(line, redact) for line in (trace.run.log_head or ())[:HEAD_LINES]
        )
        return await self._done(tenant, record, outcome, status=status, error=error,
                                duration_ms=wall_s * 1000, body=body, log=log_head)  # fmt: skip

    async def _done(self, tenant: str, record: RunRecord, outcome: str, **changes: Any
                    ) -> RunRecord:  # fmt: skip
        error = changes.pop("error", None)
        final = RunRecord(**{**asdict(record), **changes, "outcome": outcome,
                             "error": error[:MAX_ERROR_CHARS] if error else None})  # fmt: skip
        if outcome == "skipped":
            self.deps.observer.metrics.cron_run(tenant, outcome, 0.0)
        await self._record(tenant, final)
        self.finished.set()
        self.finished = trio.Event()
        return final

    async def _claim(self, tenant: str, entry: CronEntry, tick: float) -> bool:
        storage = self.deps.storage
        if storage is None:
            return True
        name = f"{tenant}\n{entry.key}\n{int(tick * 1000)}".encode()
        try:
            return await storage.acquire(CLAIMS, name, self.node, timeout_s=0, ttl_s=CLAIM_TTL_S)
        except SnginError as exc:
            log.warning("cron: could not claim %s %s: %s; not run", tenant, entry.path, exc)
            return False

    async def _record(self, tenant: str, record: RunRecord) -> None:
        storage = self.deps.storage
        if storage is None:
            return
        namespace = RUNS + tenant
        try:
            await storage.set(namespace, record.key(), msgspec.json.encode(record), RUNS_QUOTA)
            if record.outcome == "running":
                return
            keys = [key for key, _ in await storage.keys(namespace, b"", 4 * KEPT_RUNS)]
            for old in keys[: max(0, len(keys) - KEPT_RUNS)]:
                await storage.set(namespace, old, None, RUNS_QUOTA)
        except SnginError as exc:
            log.warning("cron: could not record a run of %s: %s", tenant, exc)


async def last_runs(deps: Deps, tenant: str, *, lost_after_s: float) -> list[dict[str, Any]]:
    """The tenant's recorded runs, newest first; a run still marked running long after its
    start (its node ended) as lost."""
    storage = deps.storage
    if storage is None:
        return []
    namespace = RUNS + tenant
    keys = [key for key, _ in await storage.keys(namespace, b"", 4 * KEPT_RUNS)]
    runs = []
    for key in reversed(keys[-KEPT_RUNS:]):
        value = await storage.get(namespace, key)
        if value is None:
            continue
        run = msgspec.json.decode(value)
        if run.get("outcome") == "running" and time.time() - run["started"] > lost_after_s:
            # Its node ended before it reported: recorded as lost (and counted) once.
            run["outcome"] = "lost"
            try:
                await storage.set(namespace, key, msgspec.json.encode(run), RUNS_QUOTA)
                deps.observer.metrics.cron_run(tenant, "lost", 0.0)
            except SnginError as exc:
                log.warning("cron: could not record a lost run of %s: %s", tenant, exc)
        runs.append(run)
    return runs
