"""The ASGI app: a lean dispatcher for tenant traffic, Quart-trio for /__sngin/ and /__purge/."""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import unquote_to_bytes

import msgspec
import trio

from sandbox.protocol import METHOD_NOT_ALLOWED, Job, Reply, Request
from sngin.admin import create_admin
from sngin.admission import RateLimiter, TenantAllowlist, retry_after
from sngin.errors import (
    BadRequest,
    CodeNotFound,
    MethodNotAllowed,
    RateLimited,
    RequestTimeout,
    RequestTooLarge,
    ScriptError,
    SnginError,
    TenantNotFound,
    Unavailable,
)
from sngin.limits import TenantLimits
from sngin.observe import code_outcome, kill_reason, worker_pid
from sngin.outbound import RequestCalls
from sngin.response_rules import response_headers
from sngin.tenant_config import TenantConfig
from sngin.tenants import script_key, script_path, tenant_of

if TYPE_CHECKING:
    from sngin.deps import Deps

log = logging.getLogger(__name__)
script_log = logging.getLogger("sngin.script")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RESERVED_PREFIXES = ("/__sngin/", "/__purge/")
RESERVED_EXACT = ("/__sngin", "/__purge")
HEALTH = "/__sngin/health"
TEXT = b"text/plain; charset=utf-8"


class Dispatcher:
    """Routes tenant requests to the pool without a framework on the hot path."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.admin = create_admin(deps)  # Quart-trio: fine for admin, too slow for tenants
        settings = deps.settings
        self._trusted = settings.trusted_proxies
        self._admin_elsewhere = settings.admin_bind is not None
        self._allowlist = TenantAllowlist(settings.tenants_allow, settings.tenants_allow_file)
        self._rates = RateLimiter()
        self._request_ids = RequestIds()
        limits = settings.limits
        self._default_config = TenantConfig(
            limits=deps.limits_for("") if deps.limits_for is not None else TenantLimits(),
            max_body_bytes=limits.max_body_bytes,
            max_subrequests=limits.max_subrequests,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = scope.get("path", "")
        if kind == "http":
            refusal = refuse_framing(scope)
            if refusal is not None:
                trace = RequestTrace(id=self._request_ids.of(scope), started=trio.current_time())
                trace.error = refusal.message
                await respond_error(send, refusal, head=False, trace=trace)
                self._finished(scope, trace)
                return
        if kind == "lifespan" or path.startswith(RESERVED_PREFIXES) or path in RESERVED_EXACT:
            if self._admin_elsewhere and kind == "http" and path != HEALTH:
                # SNGIN_ADMIN_BIND moved the admin API to its own listener.
                await respond_error(send, TenantNotFound("not found"), head=False)
                return
            await self.admin(scope, receive, send)  # type: ignore[arg-type]
            return
        if kind != "http":
            return  # websockets are not served; Hypercorn closes the connection
        head = scope["method"] == "HEAD"
        trace = RequestTrace(id=self._request_ids.of(scope), started=trio.current_time())
        code_outcome.set("none")
        worker_pid.set(None)
        kill_reason.set(None)
        try:
            try:
                reply = await self._tenant_request(scope, receive, trace)
                if reply.error is not None:
                    raise reply_error(reply)
                headers = response_headers(reply.status, reply.headers, len(reply.body))
            except SnginError as error:
                trace.error = error.message
                await respond_error(send, error, head=head, trace=trace)
            except Exception:
                log.exception("unexpected error serving %s", scope["path"])
                internal = SnginError("internal server error")
                await respond_error(send, internal, head=head, trace=trace)
            else:
                await respond(send, trace, reply.status, headers, reply.body, head=head)
        except Exception:
            # Sending failed (the response was checked, so this is a bug or a connection
            # state we did not foresee): this connection is lost, no other task is.
            log.exception("could not send the response for %s", scope["path"])
        finally:
            self._finished(scope, trace)

    def _finished(self, scope: Scope, trace: RequestTrace) -> None:
        wall_s = trio.current_time() - trace.started
        tenant = trace.tenant or "-"
        if trace.tenant is not None:
            kill = kill_reason.get()
            self.deps.observer.metrics.request_finished(
                tenant, trace.status, wall_s, trace.cpu_ms / 1000, kill
            )
            if trace.error is not None and trace.status >= 500:
                script_log.info(
                    "%s",
                    json.dumps({"tenant": tenant, "request": trace.id, "path": scope["path"],
                                "error": trace.error}),
                )  # fmt: skip
        self.deps.observer.access.write(
            request_id=trace.id,
            tenant=tenant,
            method=scope["method"],
            path=scope["path"],
            status=trace.status,
            size=trace.size,
            wall_ms=wall_s * 1000,
            cpu_ms=trace.cpu_ms,
            code=code_outcome.get(),
            worker=worker_pid.get(),
        )

    async def _tenant_request(self, scope: Scope, receive: Receive, trace: RequestTrace) -> Reply:
        headers = [(name.decode("latin-1"), value) for name, value in scope["headers"]]
        host = next((v for n, v in headers if n == "host"), b"").decode("latin-1")
        tenant = tenant_of(host)
        if not self._allowlist.allows(tenant):
            # Decided before any store request: random-Host scans never reach S3.
            raise TenantNotFound("no site is served at this host")
        trace.tenant = tenant
        key = script_key(tenant, script_path(scope["path"]))
        settings = self.deps.settings
        body = await read_body(
            scope, receive, settings.limits.max_request_bytes, settings.http.body_timeout_s
        )
        query = scope.get("query_string", b"")
        fresh = wants_fresh_code(query)
        config = await self._config(tenant, fresh)
        if not config.enabled:
            raise Unavailable("this site is disabled by its configuration")
        if config.rps:
            wait = self._rates.admit(tenant, config.rps)
            if wait is not None:
                raise RateLimited(
                    "too many requests for this site", headers={"Retry-After": retry_after(wait)}
                )
        source = await self.deps.store.fetch(key, revalidate=fresh)
        if source is None:
            raise CodeNotFound(f"no script for {scope['path']}")
        remote_addr, scheme = self._client(scope, headers)
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
        )
        job = Job(
            tenant=tenant,
            key=key,
            version=source.version,
            request=request,
            limits=config.job_limits,
            source=source.text,
            env=config.env,
        )
        redact = config.redact if config.secrets else None
        reply = await self.deps.pool.run(
            job,
            self._calls(tenant, request.id, config),
            limits=config.limits,
            concurrency=config.concurrency,
            redact=redact,
        )
        if reply.error is not None and redact is not None:
            reply = msgspec.structs.replace(reply, message=redact(reply.message))
        trace.cpu_ms = reply.cpu_ms
        if reply.error is not None:
            trace.error = reply.message
        if reply.logs_dropped:
            # The lines themselves were streamed (and logged) as the script wrote them.
            script_log.info("%s %s: %d more lines dropped", key, request.id, reply.logs_dropped)
        return reply

    async def _config(self, tenant: str, fresh: bool) -> TenantConfig:
        configs = self.deps.configs
        if configs is None:
            return self._default_config
        return await configs.get(tenant, revalidate=fresh)

    def _calls(self, tenant: str, request_id: str, config: TenantConfig) -> RequestCalls:
        deps = self.deps
        return RequestCalls(
            deps.outbound,
            tenant=tenant,
            deadline=trio.current_time() + config.limits.timeout_ms / 1000,
            request_id=request_id,
            max_subrequests=config.max_subrequests,
            store=deps.store,
            github=deps.github,
            egress=config.egress,
        )

    def _client(self, scope: Scope, headers: list[tuple[str, bytes]]) -> tuple[str, str]:
        """remote_addr and scheme; X-Forwarded-* only count when the peer is a trusted proxy."""
        peer = (scope.get("client") or ("", 0))[0]
        scheme = scope.get("scheme", "http")
        if not self._trusted or not _in_networks(peer, self._trusted):
            return peer, scheme
        forwarded = [v for n, v in headers if n == "x-forwarded-for"]
        hops = [h.strip() for v in forwarded for h in v.decode("latin-1").split(",") if h.strip()]
        client = peer
        for hop in reversed(hops):
            client = hop
            if not _in_networks(hop, self._trusted):
                break
        proto = next((v for n, v in headers if n == "x-forwarded-proto"), b"").decode("latin-1")
        proto = proto.split(",")[0].strip().lower()
        return client, proto if proto in ("http", "https") else scheme


REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,64}\Z")


class RequestIds:
    """A well-formed incoming X-Request-Id is kept (tracing across services); else a new one:
    a random prefix per server and a counter, 32 hex digits like a UUID without a syscall."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def of(self, scope: Scope) -> str:
        for name, value in scope["headers"]:
            if name == b"x-request-id" and REQUEST_ID.match(value):
                return str(value.decode("ascii"))
        return f"{self._prefix}{next(self._count):016x}"


@dataclass(slots=True)
class RequestTrace:
    """What the access log, the metrics and the response's timing headers report."""

    id: str
    started: float
    tenant: str | None = None
    status: int = 500
    size: int = 0
    cpu_ms: float = 0.0
    error: str | None = None

    def headers(self) -> list[tuple[bytes, bytes]]:
        wall_ms = (trio.current_time() - self.started) * 1000
        timing = (
            f"cpu;dur={self.cpu_ms:.2f}, wall;dur={wall_ms:.2f}, code;desc={code_outcome.get()}"
        )
        return [(b"server-timing", timing.encode()), (b"x-request-id", self.id.encode())]


def wants_fresh_code(query: bytes) -> bool:
    """True when the query has a `$cb` parameter (the seed's cache buster; bare `cb` is not)."""
    if b"cb" not in query:
        return False
    for part in query.split(b"&"):
        name = part.split(b"=", 1)[0]
        if name == b"$cb" or unquote_to_bytes(name.replace(b"+", b" ")) == b"$cb":
            return True
    return False


def _in_networks(address: str, networks: tuple[Any, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


async def read_body(scope: Scope, receive: Receive, limit: int, timeout_s: float) -> bytes:
    """The request body, or RequestTooLarge as soon as it is known to exceed limit, or
    RequestTimeout if it does not arrive within timeout_s."""
    expected = False
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > limit:
                raise RequestTooLarge(f"request body larger than {limit} bytes")
            expected = expected or value != b"0"
        elif name == b"transfer-encoding":
            expected = True
    if not expected and scope.get("http_version") in ("1.0", "1.1"):
        # HTTP/1 framing says there is none: nothing to wait for. HTTP/2 and 3 frame bodies
        # themselves and need no Content-Length: read to the end of the stream.
        return b""
    with trio.move_on_after(timeout_s):
        return await _receive_body(receive, limit)
    raise RequestTimeout(f"request body not received within {timeout_s:g} s")


async def _receive_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # client went away
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise RequestTooLarge(f"request body larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def refuse_framing(scope: Scope) -> SnginError | None:
    """Requests no route may see: CONNECT (a 2xx answer would turn the connection into a
    tunnel), and a body framed by both Content-Length and Transfer-Encoding, the classic
    request-smuggling shape: 400, and the connection is closed (RFC 9112 section 6.1)."""
    if scope["method"] == "CONNECT":
        return MethodNotAllowed("CONNECT is not served", headers={"Allow": ALLOWED_METHODS})
    length = chunked = False
    for name, _ in scope["headers"]:
        if name == b"content-length":
            length = True
        elif name == b"transfer-encoding":
            chunked = True
    if length and chunked:
        return BadRequest(
            "a request cannot have both Content-Length and Transfer-Encoding",
            headers={"Connection": "close"},
        )
    return None


def reply_error(reply: Reply) -> SnginError:
    if reply.error == METHOD_NOT_ALLOWED:
        return MethodNotAllowed(reply.message, headers={"Allow": ", ".join(reply.allow)})
    return ScriptError(reply.message)


async def respond(
    send: Send,
    trace: RequestTrace,
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    *,
    head: bool,
) -> None:
    """Send a response with the trace's timing headers, and note what was sent."""
    trace.status = status
    trace.size = 0 if head else len(body)
    await send(
        {"type": "http.response.start", "status": status, "headers": headers + trace.headers()}
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


def error_response(error: SnginError) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = error.message.encode("utf-8", "replace") + b"\n"
    headers = [(b"content-type", TEXT), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    return headers, body


async def respond_error(
    send: Send, error: SnginError, *, head: bool, trace: RequestTrace | None = None
) -> None:
    headers, body = error_response(error)
    if trace is not None:
        await respond(send, trace, error.status, headers, body, head=head)
        return
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})


def create_app(deps: Deps) -> Dispatcher:
    return Dispatcher(deps)


__all__ = ["BadRequest", "Dispatcher", "create_app"]
