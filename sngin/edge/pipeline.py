"""The tenant pipeline: from a request the edge has accepted to the worker's Reply.

resolve(): Host -> tenant (allowlist) and path -> script key, before the body is read;
run(): tenant config (enabled, rate limit) -> code (the store, `$cb`) -> Job -> pool, with the
request's platform calls answered by RequestCalls.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, MutableMapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

import msgspec
import trio

from sandbox.protocol import Call, CallResult, CronRun, Job, Reply, Request
from sngin.bodies.request_body import MULTIPART, parse_form_data
from sngin.calls.request_calls import RequestCalls
from sngin.calls.storage_calls import StorageCalls
from sngin.edge.forwarding import client_of
from sngin.errors import CodeNotFound, SnginError, TenantNotFound
from sngin.names import host_of, names_admin_origin, script_key, script_path, tenant_of
from sngin.tenants.admission import TenantAllowlist
from sngin.tenants.config import TenantConfig

if TYPE_CHECKING:
    from sngin.code.store import Source
    from sngin.edge.deps import Deps
    from sngin.edge.request_head import RequestHead
    from sngin.observe.tracing import RequestTrace
    from sngin.replay.recorder import RunRecord

log = logging.getLogger(__name__)
script_log = logging.getLogger("sngin.script")

Scope = MutableMapping[str, Any]


@dataclass(frozen=True, slots=True)
class Route:
    """Where a request goes: its tenant and script key."""

    tenant: str
    key: str


def wants_fresh_code(query: bytes) -> bool:
    """True when the query has a `$cb` parameter (the seed's cache buster; bare `cb` is not)."""
    if b"cb" not in query:
        return False
    for part in query.split(b"&"):
        name = part.split(b"=", 1)[0]
        if name == b"$cb" or unquote_to_bytes(name.replace(b"+", b" ")) == b"$cb":
            return True
    return False


class TenantPipeline:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        settings = deps.settings
        self._trusted = settings.trusted_proxies
        self._admin_host = settings.admin_host  # the admin origin's name: never a tenant
        self._allowlist = TenantAllowlist(settings.tenants_allow, settings.tenants_allow_file)
        self._default_config = TenantConfig(limits=settings.limits)
        self.recording = deps.recording  # replay bundles of failed (or recorded) runs

    def resolve(self, scope: Scope, request_head: RequestHead, trace: RequestTrace) -> Route:
        """The tenant and script for a request; 400 for a bad Host or path, 404 for a Host the
        operator does not serve. Decided before any store request: random-Host scans never
        reach S3."""
        host = request_head.host.decode("latin-1")
        if names_admin_origin(host_of(host), self._admin_host):
            # An IP literal, localhost, SNGIN_ADMIN_HOST: the admin origin, never a site.
            raise TenantNotFound("no site is served at this host")
        tenant = tenant_of(host)
        if not self._allowlist.allows(tenant):
            raise TenantNotFound("no site is served at this host")
        trace.tenant = tenant
        return Route(tenant, script_key(tenant, script_path(scope["path"])))

    async def run(
        self,
        scope: Scope,
        route: Route,
        body: bytes,
        trace: RequestTrace,
        request_head: RequestHead,
    ) -> Reply:
        tenant = route.tenant
        query = scope.get("query_string", b"")
        fresh = wants_fresh_code(query)
        config = await self._config(tenant, fresh)
        source = await self._admitted(route, config, scope["path"], trace, fresh=fresh)
        headers = scope["headers"]
        recorded = False
        if request_head.record is not None:  # X-Sngin-Record: never seen by the script
            headers = [(n, v) for n, v in headers if n != b"x-sngin-record"]
            recorded = await self.recording.may_record(tenant, request_head.record)
        remote_addr, scheme = client_of(scope, headers, self._trusted)
        form = files = None
        content_type = request_head.content_type
        if content_type[: len(MULTIPART)].lower() == MULTIPART:
            form, files = parse_form_data(content_type, body)
        request = Request(
            method=scope["method"],
            path=scope["path"],
            querystring=query,
            headers=headers,
            body=body,
            host=tenant,
            scheme=scheme,
            port=(scope.get("server") or ("", 80))[1] or 80,
            remote_addr=remote_addr,
            id=trace.id,
            form=form,
            files=files,
        )
        return await self._execute(route, source, config, request, trace, recorded=recorded)

    async def run_cron(
        self, tenant: str, path: str, cron: CronRun, config: TenantConfig, trace: RequestTrace
    ) -> Reply:
        """A scheduled run of the script at `path` (sngin.cron): a request like any other (the
        tenant's limits, env, egress, rate limit and concurrency), method CRON, no body."""
        route = Route(tenant, script_key(tenant, script_path(path)))
        trace.tenant = tenant
        source = await self._admitted(route, config, path, trace, fresh=False)
        request = Request(method="CRON", path=path, host=tenant, id=trace.id, cron=cron)
        return await self._execute(route, source, config, request, trace)

    async def _admitted(
        self, route: Route, config: TenantConfig, path: str, trace: RequestTrace, *, fresh: bool
    ) -> Source:
        """The site takes the run (enabled, within its rate) and its script exists."""
        await self.deps.site_gate.admit(route.tenant, config)
        source = await self.deps.store.fetch(route.key, revalidate=fresh, note=trace.fetch)
        if source is None:
            raise CodeNotFound(f"no script for {path}")
        return source

    async def _execute(
        self,
        route: Route,
        source: Source,
        config: TenantConfig,
        request: Request,
        trace: RequestTrace,
        *,
        recorded: bool = False,
    ) -> Reply:
        tenant, key = route.tenant, route.key
        job = Job(
            record=recorded,
            tenant=tenant,
            key=key,
            version=source.version,
            request=request,
            limits=config.limits.wire,
            source=source.text,
            env=config.env,
        )
        redact = config.redact if config.secrets else None
        # The wall time runs from here; the calls' state is made only if the script calls.
        deadline = trio.current_time() + config.limits.timeout_ms / 1000
        record = self.recording.begin(tenant)
        if record is not None and trace.run.log_head is None:
            trace.run.log_head = []  # its lines as written, for a bundle (most are dropped)
        calls = CallsOnDemand(partial(self._calls, tenant, request.id, config, deadline), record)
        started, reply, failure = time.time(), None, None
        try:
            reply = await self.deps.pool.run(
                job,
                calls,
                limits=config.limits,
                concurrency=config.concurrency,
                redact=redact,
                note=trace.run,
            )
        except SnginError as exc:  # a limit kill, a crash: the bundle says which
            failure = exc
            raise
        finally:
            # Also when the run ends in a limit kill: the server's work is still the tenant's,
            # and every lease the request took is free for the next one at once.
            made = calls.made
            if made is not None:
                trace.decode_ms = made.cost.decode_s * 1000
                storage = made.storage
                if storage is not None:
                    await storage.release_all()
                    trace.storage_ms = storage.seconds * 1000
                    if storage.operations:
                        self.deps.observer.metrics.storage_used(
                            tenant, storage.operations, storage.seconds
                        )
            self.recording.finish(
                record, job=job, config=config, started=started, calls=made, reply=reply,
                failure=failure, recorded=recorded, logs=trace.run.log_head,
            )  # fmt: skip
        if reply.error is not None and redact is not None:
            reply = msgspec.structs.replace(reply, message=redact(reply.message))
        trace.cpu_ms = reply.cpu_ms
        if reply.error is not None:
            trace.error = reply.message
        if reply.logs_dropped:
            # The lines themselves were streamed (and logged) as the script wrote them.
            script_log.info("%s %s: %d more lines dropped", key, request.id, reply.logs_dropped)
        return reply

    async def tenant_config(self, tenant: str) -> TenantConfig:
        return await self._config(tenant, False)

    async def _config(self, tenant: str, fresh: bool) -> TenantConfig:
        configs = self.deps.configs
        if configs is None:
            return self._default_config
        return await configs.get(tenant, revalidate=fresh)

    def _calls(
        self, tenant: str, request_id: str, config: TenantConfig, deadline: float
    ) -> RequestCalls:
        deps = self.deps
        return RequestCalls(
            deps.services,
            tenant=tenant,
            deadline=deadline,
            request_id=request_id,
            max_subrequests=config.limits.max_subrequests,
            max_modules=config.limits.max_modules,
            egress=config.egress,
            alert_webhook=config.alert_webhook,
            github_token=config.github_token,
            storage=StorageCalls(
                deps.storage,
                deps.tenant_cache,
                deps.settings.storage,
                tenant=tenant,
                deadline=deadline,
                wall_s=config.limits.timeout_ms / 1000,
                quota=config.storage_quota,
            ),
        )


class CallsOnDemand:
    """A request's platform-call state (budgets, storage key space, leases), made at its first
    call: most requests make none, and making it costs ~16 us."""

    def __init__(self, make: Callable[[], RequestCalls], record: RunRecord | None = None) -> None:
        self._make = make
        self.made: RequestCalls | None = None
        self._record = record  # what a replay bundle keeps of each call

    async def __call__(self, call: Call) -> CallResult:
        if self.made is None:
            self.made = self._make()
        result = await self.made(call)
        if self._record is not None:
            self._record.add_call(call, result)
        return result
