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
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec
import trio

from sandbox.protocol import METHOD_NOT_ALLOWED, Job, Reply, Request
from sngin.code_files import content_hash, text_or_none
from sngin.errors import BadRequest, SnginError
from sngin.request_calls import RequestCalls
from sngin.storage_calls import StorageCalls
from sngin.tenant_cache import TenantCache
from sngin.tenant_config import TenantConfig

if TYPE_CHECKING:
    from sandbox.protocol import AlertCall, EmailCall
    from sngin.deps import Deps
    from sngin.egress import TenantEgress
    from sngin.sqlite_storage import Quota

PREVIEW_SUFFIX: Final = "#preview"
MAX_HEADERS: Final = 100
MAX_BODY_BYTES: Final = 1024 * 1024
SCRATCH_CACHE_BYTES: Final = 4 * 1024 * 1024
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
    the preview wrote the key; writes and leases stay here."""

    real: Any
    written: dict[bytes, bytes | None] = field(default_factory=dict)
    leases: set[bytes] = field(default_factory=set)

    async def get(self, tenant: str, key: bytes) -> bytes | None:
        if key in self.written:
            return self.written[key]
        return None if self.real is None else await self.real.get(tenant, key)

    async def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        self.written[key] = value

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
    """Stands in for the mailer and the alerts: what would have been sent."""

    sent: list[dict[str, Any]] = field(default_factory=list)

    async def send(
        self, mail: EmailCall, *, timeout_s: float, egress: TenantEgress | None = None
    ) -> None:
        self.sent.append({
            "kind": "email", "from": mail.from_, "to": mail.to, "subject": mail.subject,
            "text": mail.text, "html": mail.html, "server": mail.server,
        })  # fmt: skip

    async def raise_alert(self, alert: AlertCall, **details: Any) -> None:
        self.sent.append({"kind": f"alert.{alert.kind}", "text": alert.text})


def sample_request(tenant: str, sample: SampleRequest, request_id: str) -> Request:
    method = sample.method.upper()
    if method not in METHODS:
        raise BadRequest(f"method must be one of {', '.join(sorted(METHODS))}")
    if not sample.path.startswith("/") or len(sample.path) > 2048:
        raise BadRequest("path must start with / (at most 2,048 characters)")
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
    if not body.path.endswith("index.lua"):
        raise BadRequest("path names a script: index.lua or <folder>/index.lua")
    source = body.source.encode()
    if len(source) > MAX_BODY_BYTES:
        raise BadRequest(f"a source of at most {MAX_BODY_BYTES} bytes")
    config = await deps.configs.get(tenant) if deps.configs is not None else None
    config = config or TenantConfig(limits=deps.settings.limits)
    request_id = "preview-" + secrets.token_hex(8)
    request = sample_request(tenant, body.request, request_id)
    key = f"{tenant}/{body.path.removesuffix('index.lua').rstrip('/')}".rstrip("/")
    runs_as = tenant + PREVIEW_SUFFIX
    job = Job(
        tenant=runs_as, key=key, version=content_hash(source), request=request,
        limits=config.limits.wire, source=source, env=config.env, throwaway=True,
    )  # fmt: skip
    scratch = ScratchStorage(deps.storage)
    recorder = Recorder()
    wall_s = config.limits.timeout_ms / 1000
    deadline = trio.current_time() + wall_s
    settings = deps.settings
    calls = RequestCalls(
        deps.outbound, tenant=tenant, deadline=deadline, request_id=request_id,
        max_subrequests=config.limits.max_subrequests, max_modules=config.limits.max_modules,
        store=deps.store, github=deps.github, egress=config.egress,
        bodies=deps.budgets.subrequest_bodies, default_modules=settings.default_modules,
        mailer=recorder, alerts=recorder,  # type: ignore[arg-type]
        alert_webhook=config.alert_webhook, github_tokens=deps.github_tokens,
        github_token=config.github_token,
        storage=StorageCalls(
            scratch,  # type: ignore[arg-type]
            TenantCache(max_bytes=SCRATCH_CACHE_BYTES, tenant_share=1.0),
            settings.storage, tenant=tenant, deadline=deadline, wall_s=wall_s,
            quota=config.storage_quota,
        ),
    )  # fmt: skip
    hub = deps.observer.hub
    subscriber, lines = hub.subscribe(runs_as)
    started = trio.current_time()
    failure: SnginError | None = None
    try:
        reply = await deps.pool.run(
            job, calls, limits=config.limits, concurrency=config.concurrency,
            redact=config.redact if config.secrets else None,
        )  # fmt: skip
    except SnginError as exc:  # a limit kill, a crash: what the live site would answer
        failure = exc
        reply = Reply(status=exc.status, body=exc.message.encode(), error="", message=exc.message)
    finally:
        hub.unsubscribe(runs_as, subscriber)
    wall_ms = (trio.current_time() - started) * 1000
    if reply.error and failure is None:  # the script's own error: a 500 saying what broke
        status = 405 if reply.error == METHOD_NOT_ALLOWED else 500
        reply = msgspec.structs.replace(reply, status=status, body=reply.message.encode())
    logs = []
    async for line in lines:  # closed by unsubscribe: what the run wrote, then the end
        record = msgspec.json.decode(line)
        if isinstance(record, dict) and record.get("request") == request_id:
            logs.append(record.get("line", record.get("error")))
    answer: dict[str, Any] = {
        "status": reply.status,
        "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in reply.headers],
        "body": text_or_none(reply.body),
        "logs": logs,
        "cpu_ms": round(reply.cpu_ms, 2),
        "wall_ms": round(wall_ms, 2),
        "sent": recorder.sent,
        "storage_writes": {
            key.decode("utf-8", "replace"): text_or_none(value) if value is not None else None
            for key, value in scratch.written.items()
        },
    }
    if answer["body"] is None:
        answer["body_base64"] = base64.b64encode(reply.body).decode()
    if reply.error is not None:
        answer["error"] = reply.message or reply.error
    return answer


def preview_body(data: bytes) -> PreviewBody:
    try:
        return msgspec.json.decode(data, type=PreviewBody)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"preview: {exc}") from None
    except msgspec.DecodeError:
        raise BadRequest('expected JSON {"source": ..., "path": ..., "request": {...}}') from None
