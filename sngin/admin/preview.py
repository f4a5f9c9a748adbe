"""Preview: run a source that is not saved, for a tenant, with a sample request, in a real
sandboxed worker under the tenant's limits and `_sngin.json`: the production path with the
source swapped. What must not leave a trace does not: `storage` reads the tenant's data but its
writes go to a scratch overlay dropped afterwards, leases are the preview's own, the `cache` is
a fresh one, and `email.send` / `alert.*` are recorded, not sent. `http.request` is real.

The job runs as `<host>#preview` in a throwaway runtime (the worker closes it when the job is
over), apart from the live site's; a limit kill there never counts towards the live site's
quarantine.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from sandbox.protocol import METHOD_NOT_ALLOWED, Job, Reply, Request
from sngin.calls.request_calls import RequestCalls
from sngin.calls.storage_calls import StorageCalls
from sngin.code.files import content_hash, text_or_none
from sngin.errors import BadRequest, SnginError
from sngin.names import script_key, script_path
from sngin.storage.script_cache import TenantCache
from sngin.storage.sqlite import entry_bytes, usage_after
from sngin.storage.tenant_storage import StorageUnavailable
from sngin.tenants.config import TenantConfig

if TYPE_CHECKING:
    from sandbox.protocol import AlertCall, EmailCall
    from sngin.bodies.budgets import Lease
    from sngin.edge.deps import Deps
    from sngin.storage.sqlite import Quota
    from sngin.tenants.egress import TenantEgress
    from sngin.workers.frame_channel import CallHandler

PREVIEW_SUFFIX: Final = "#preview"
MAX_HEADERS: Final = 100
MAX_BODY_BYTES: Final = 1024 * 1024
SCRATCH_CACHE_BYTES: Final = 4 * 1024 * 1024
# What an answer echoes: the body up to this, the first so many storage writes (each value cut),
# the first so many emails and alerts (each field cut); counts for the rest.
MAX_ECHO_BODY_BYTES: Final = 256 * 1024
MAX_ECHO_WRITES: Final = 100
MAX_ECHO_VALUE_BYTES: Final = 1024
MAX_RECORDED: Final = 20
MAX_RECORDED_FIELD: Final = 4096
METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class SampleRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: dict[str, str] = {}
    body: str = ""


class PreviewBody(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    source: str
    path: str = "index.lua"  # the script the source stands for (`a/b/index.lua`)
    request: SampleRequest = SampleRequest()


@dataclass
class ScratchStorage:
    """TenantStorage's request-side operations: reads fall through to the tenant's data unless
    the preview wrote the key; writes and leases stay here. Writes obey the tenant's quota
    (its real usage with the overlay's changes), and the overlay's bytes are held against the
    server's request-bodies budget (`lease`) until the preview ends."""

    real: Any
    lease: Lease
    written: dict[bytes, bytes | None] = field(default_factory=dict)
    leases: set[bytes] = field(default_factory=set)
    usage: tuple[int, int] | None = None  # (keys, bytes) as the overlay makes it, once read
    held: dict[bytes, int] = field(default_factory=dict)  # the overlay's bytes per key

    async def get(self, tenant: str, key: bytes) -> bytes | None:
        if key in self.written:
            return self.written[key]
        return None if self.real is None else await self.real.get(tenant, key)

    async def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        if self.usage is None:
            self.usage = (0, 0) if self.real is None else await self.real.usage(tenant)
        before = await self.get(tenant, key)
        usage = usage_after(self.usage, key, None if before is None else len(before), value, quota)
        size_now = entry_bytes(key, value) if value is not None else len(key)
        self.lease.give_back(self.held.pop(key, 0))
        if not self.lease.take(size_now):
            raise StorageUnavailable(
                "the server holds as much request data as it may (SNGIN_REQUEST_BODIES_BYTES);"
                " try again shortly"
            )
        self.held[key] = size_now
        self.written[key] = value
        self.usage = usage

    async def acquire(
        self, tenant: str, name: bytes, holder: str, *, timeout_s: float, ttl_s: float
    ) -> bool:
        if name in self.leases:
            return False
        self.leases.add(name)
        return True

    async def release(self, tenant: str, name: bytes, holder: str) -> bool:
        if name not in self.leases:
            return False
        self.leases.discard(name)
        return True


@dataclass
class Recorder:
    """Stands in for the mailer and the alerts: what would have been sent. It keeps the first
    MAX_RECORDED, each field cut at MAX_RECORDED_FIELD characters, and counts the rest, so a
    script that sends in a loop costs the server a fixed amount; what it keeps is held against
    the same budget as the scratch overlay (`lease`)."""

    lease: Lease
    sent: list[dict[str, Any]] = field(default_factory=list)
    not_kept: int = 0

    def _keep(self, record: dict[str, Any]) -> None:
        if len(self.sent) >= MAX_RECORDED:
            self.not_kept += 1
            return
        kept = {k: cut(v) for k, v in record.items()}
        if not self.lease.take(sum(len(str(v)) for v in kept.values())):
            self.not_kept += 1
            return
        self.sent.append(kept)

    async def send(
        self, mail: EmailCall, *, timeout_s: float, egress: TenantEgress | None = None
    ) -> None:
        self._keep({
            "kind": "email", "from": mail.from_, "to": mail.to[:MAX_RECORDED],
            "subject": mail.subject, "text": mail.text, "html": mail.html, "server": mail.server,
        })  # fmt: skip

    async def raise_alert(self, alert: AlertCall, **details: Any) -> None:
        self._keep({"kind": f"alert.{alert.kind}", "text": alert.text})


def cut(value: Any, limit: int = MAX_RECORDED_FIELD) -> Any:
    """A recorded field as the answer shows it: long text cut, lists of text cut each."""
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + f"… ({len(value)} characters)"
    if isinstance(value, list):
        return [cut(item, limit) for item in value]
    return value


def sample_request(tenant: str, sample: SampleRequest, request_id: str) -> Request:
    method = sample.method.upper()
    if method not in METHODS:
        raise BadRequest(f"method must be one of {', '.join(sorted(METHODS))}")
    if not sample.path.startswith("/"):
        raise BadRequest("path must start with /")
    script_path(sample.path)  # as a request's: no `..`, control characters, backslashes
    if len(sample.headers) > MAX_HEADERS:
        raise BadRequest(f"at most {MAX_HEADERS} headers")
    body = sample.body.encode()
    if len(body) > MAX_BODY_BYTES:
        raise BadRequest(f"a body of at most {MAX_BODY_BYTES} bytes")
    headers = [(name.lower().encode(), value.encode()) for name, value in sample.headers.items()]
    headers.insert(0, (b"host", tenant.encode()))
    return Request(
        method=method, path=sample.path, querystring=sample.query.lstrip("?").encode(),
        headers=headers, body=body, host=tenant, remote_addr="127.0.0.1", id=request_id,
    )  # fmt: skip


async def run_preview(deps: Deps, tenant: str, body: PreviewBody) -> dict[str, Any]:
    """Run it; the answer the API returns (status, headers, body, log lines, timings, what
    would have been sent, what storage would have held)."""
    if body.path != "index.lua" and not body.path.endswith("/index.lua"):
        raise BadRequest("path names a script: index.lua or <folder>/index.lua")
    folder = script_path("/" + body.path.removesuffix("index.lua"))
    source = body.source.encode()
    if len(source) > MAX_BODY_BYTES:
        raise BadRequest(f"a source of at most {MAX_BODY_BYTES} bytes")
    config = await deps.configs.get(tenant) if deps.configs is not None else None
    config = config or TenantConfig(limits=deps.settings.limits)
    await deps.site_gate.admit_beside(tenant, config)
    request_id = "preview-" + secrets.token_hex(8)
    request = sample_request(tenant, body.request, request_id)
    key = script_key(tenant, folder)
    runs_as = tenant + PREVIEW_SUFFIX
    job = Job(
        tenant=runs_as, key=key, version=content_hash(source), request=request,
        limits=config.limits.wire, source=source, env=config.env, throwaway=True,
    )  # fmt: skip
    scratch = ScratchStorage(deps.storage, deps.budgets.request_bodies.lease())
    try:
        return await run_with_overlay(deps, job, config, scratch, request_id)
    finally:
        scratch.lease.release()


async def run_with_overlay(
    deps: Deps, job: Job, config: TenantConfig, scratch: ScratchStorage, request_id: str
) -> dict[str, Any]:
    tenant = job.tenant.removesuffix(PREVIEW_SUFFIX)
    recorder = Recorder(scratch.lease)
    wall_s = config.limits.timeout_ms / 1000
    deadline = trio.current_time() + wall_s
    settings = deps.settings
    calls = RequestCalls(
        replace(deps.services, mailer=recorder, alerts=recorder),  # type: ignore[arg-type]
        tenant=tenant, deadline=deadline, request_id=request_id,
        max_subrequests=config.limits.max_subrequests, max_modules=config.limits.max_modules,
        egress=config.egress, alert_webhook=config.alert_webhook,
        github_token=config.github_token,
        storage=StorageCalls(
            scratch,  # type: ignore[arg-type]
            TenantCache(max_bytes=SCRATCH_CACHE_BYTES, tenant_share=1.0),
            settings.storage, tenant=tenant, deadline=deadline, wall_s=wall_s,
            quota=config.storage_quota,
        ),
    )  # fmt: skip
    started = trio.current_time()
    reply, failure, logs = await run_watched(deps, job, calls, config)
    wall_ms = (trio.current_time() - started) * 1000
    if failure is not None:  # a limit kill, a crash: what the live site would answer
        reply = Reply(
            status=failure.status, body=failure.message.encode(), error="",
            message=failure.message,
        )  # fmt: skip
    assert reply is not None
    if reply.error and failure is None:  # the script's own error: a 500 saying what broke
        status = 405 if reply.error == METHOD_NOT_ALLOWED else 500
        reply = msgspec.structs.replace(reply, status=status, body=reply.message.encode())
    answer: dict[str, Any] = {
        "status": reply.status,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in reply.headers],
        "logs": logs,
        "cpu_ms": round(reply.cpu_ms, 2),
        "wall_ms": round(wall_ms, 2),
        "sent": recorder.sent,
    }
    answer |= echoed_body(reply.body)
    answer |= echoed_writes(scratch.written)
    if recorder.not_kept:
        answer["sent_not_shown"] = recorder.not_kept
    if reply.error is not None:
        answer["error"] = reply.message or reply.error
    return answer


async def run_watched(
    deps: Deps, job: Job, calls: CallHandler, config: TenantConfig
) -> tuple[Reply | None, SnginError | None, list[str]]:
    """Run a job beside the live site (as HOST#preview or HOST#replay) under the site's limits,
    concurrency and redaction: its reply, or the error that ended it, and the lines it wrote."""
    hub = deps.observer.hub
    subscriber, lines = hub.subscribe(job.tenant)
    reply, failure = None, None
    try:
        reply = await deps.pool.run(
            job, calls, limits=config.limits, concurrency=config.concurrency,
            redact=config.redact if config.secrets else None,
        )  # fmt: skip
    except SnginError as exc:  # a limit kill, a crash: the run's outcome
        failure = exc
    finally:
        hub.unsubscribe(job.tenant, subscriber)
    logs: list[str] = []
    async for line in lines:  # closed by unsubscribe: what the run wrote, then the end
        record = msgspec.json.decode(line)
        if isinstance(record, dict) and record.get("request") == job.request.id:
            logs.append(str(record.get("line", record.get("error"))))
    return reply, failure, logs


def echoed_body(body: bytes) -> dict[str, Any]:
    """The response body as the answer shows it: text, else base64; cut past a size."""
    shown = body[:MAX_ECHO_BODY_BYTES]
    echo: dict[str, Any] = {"body": text_or_none(shown)}
    if echo["body"] is None:
        echo["body_base64"] = base64.b64encode(shown).decode()
    if len(body) > MAX_ECHO_BODY_BYTES:
        echo |= {"body_truncated": True, "body_bytes": len(body)}
    return echo


def echoed_writes(written: dict[bytes, bytes | None]) -> dict[str, Any]:
    """The scratch writes as the answer shows them: the first MAX_ECHO_WRITES keys, values cut
    at MAX_ECHO_VALUE_BYTES (a binary value as its size), how many more there were."""
    shown: dict[str, str | None] = {}
    for key, value in list(written.items())[:MAX_ECHO_WRITES]:
        text = None if value is None else text_or_none(value[:MAX_ECHO_VALUE_BYTES])
        if value is not None and (text is None or len(value) > MAX_ECHO_VALUE_BYTES):
            text = (text or "") + f"… ({len(value)} bytes)"
        shown[key.decode("utf-8", "replace")] = text
    echo: dict[str, Any] = {"storage_writes": shown}
    if len(written) > MAX_ECHO_WRITES:
        echo["storage_writes_not_shown"] = len(written) - MAX_ECHO_WRITES
    return echo


def preview_body(data: bytes) -> PreviewBody:
    try:
        return msgspec.json.decode(data, type=PreviewBody)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"preview: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest('expected JSON {"source": ..., "path": ..., "request": {...}}') from None
