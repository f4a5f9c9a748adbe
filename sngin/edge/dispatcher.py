"""The ASGI edge: a lean dispatcher for tenant traffic (routing, body, respond), Quart-trio for
/__sngin/ and /__purge/. What a tenant request does is sngin.edge.pipeline."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any, Final, cast

import trio

from sandbox.protocol import METHOD_NOT_ALLOWED, Reply
from sngin.bodies.budgets import SMALL_RESPONSE_BYTES, bodies_budget_full
from sngin.bodies.request_body import inflate_body
from sngin.edge.connection_guard import HEAD_HOLD, HeadHold
from sngin.edge.pipeline import TenantPipeline
from sngin.edge.request_head import RequestHead
from sngin.edge.response_rules import response_headers
from sngin.errors import (
    BadRequest,
    MethodNotAllowed,
    RequestTimeout,
    RequestTooLarge,
    ScriptError,
    SnginError,
    Unavailable,
)
from sngin.observe.tracing import RequestIds, RequestTrace

if TYPE_CHECKING:
    from sngin.bodies.budgets import Lease
    from sngin.edge.deps import Deps

log = logging.getLogger(__name__)
script_log = logging.getLogger("sngin.script")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HTTP1: Final = ("1.0", "1.1")
RESERVED_PREFIXES = ("/__sngin/", "/__purge/")
RESERVED_EXACT = ("/__sngin", "/__purge")
HEALTH = "/__sngin/health"
TEXT = b"text/plain; charset=utf-8"
NOT_FOUND_JSON = b'{"error":"404 Not Found"}\n'
JSON_404 = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(NOT_FOUND_JSON)).encode()),
]


class Dispatcher:
    """The ASGI edge: routes /__sngin/ to the admin app and everything else through the tenant
    pipeline, without a framework on the hot path; reads bodies, sends responses, and writes
    the access log."""

    def __init__(self, deps: Deps, admin: ASGIApp) -> None:
        self.deps = deps
        # The admin app (Quart-trio: fine for admin, too slow for tenants), made by server.py:
        # this module, the tenants' edge, imports neither it nor Quart.
        self.admin = admin
        self.pipeline = TenantPipeline(deps)
        self._admin_elsewhere = deps.settings.admin_bind is not None
        self._request_ids = RequestIds()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        path = scope.get("path", "")
        if kind == "http":
            request_head = RequestHead(scope["headers"])
            refusal = refuse_framing(scope, request_head)
            if refusal is not None:
                trace = RequestTrace(
                    id=self._request_ids.of(request_head.request_ids), started=trio.current_time()
                )
                trace.error = refusal.message
                await respond_error(send, refusal, head=False, trace=trace)
                self._finished(scope, trace)
                return
        if kind == "lifespan" or path.startswith(RESERVED_PREFIXES) or path in RESERVED_EXACT:
            if self._admin_elsewhere and kind == "http" and path != HEALTH:
                # SNGIN_ADMIN_BIND moved the admin API to its own listener: the JSON 404 of
                # every unknown reserved path.
                await send({"type": "http.response.start", "status": 404, "headers": JSON_404})
                await send({"type": "http.response.body", "body": NOT_FOUND_JSON})
                return
            await self.admin(scope, receive, send)
            return
        if kind != "http":
            return  # websockets are not served; Hypercorn closes the connection
        head = scope["method"] == "HEAD"
        trace = RequestTrace(
            id=self._request_ids.of(request_head.request_ids), started=trio.current_time()
        )
        try:
            try:
                reply = await self._tenant_request(scope, receive, trace, request_head)
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
                http1 = scope.get("http_version") in HTTP1
                await self._respond_reply(send, trace, reply, headers, head=head, http1=http1)
        except Exception:
            # Sending failed (the response was checked, so this is a bug or a connection
            # state we did not foresee): this connection is lost, no other task is.
            log.exception("could not send the response for %s", scope["path"])
        finally:
            self._finished(scope, trace)

    async def _tenant_request(
        self, scope: Scope, receive: Receive, trace: RequestTrace, request_head: RequestHead
    ) -> Reply:
        route = self.pipeline.resolve(scope, request_head, trace)  # a bad Host or path: first
        http = self.deps.settings.http
        lease = self.deps.budgets.request_bodies.lease()
        try:
            body = await read_body(
                scope,
                receive,
                http.max_request_bytes,
                http.body_timeout_s,
                request_head=request_head,
                lease=lease,
            )
            coding = request_head.content_encoding
            body = inflate_body(coding, body, http.max_request_bytes, lease)
            return await self.pipeline.run(scope, route, body, trace, request_head)
        finally:
            lease.release()  # the body went to the worker; the reply does not need it

    async def _respond_reply(
        self,
        send: Send,
        trace: RequestTrace,
        reply: Reply,
        headers: list[tuple[bytes, bytes]],
        *,
        head: bool,
        http1: bool,
    ) -> None:
        """A large body is held against the responses budget until it is sent (a client that
        stops reading holds it at most SNGIN_SEND_TIMEOUT_S); past the budget the client gets a
        503 and the body is dropped at once."""
        size = 0 if head else len(reply.body)
        lease = self.deps.budgets.responses.lease()
        if size > SMALL_RESPONSE_BYTES and not lease.take(size):
            error = Unavailable(
                "the server is holding as many responses for slow clients as it may; try again"
                " shortly",
                headers={"Retry-After": "1"},
            )
            trace.error = error.message
            await respond_error(send, error, head=head, trace=trace)
            return
        try:
            await respond(send, trace, reply.status, headers, reply.body, head=head, http1=http1)
        finally:
            lease.release()

    def _finished(self, scope: Scope, trace: RequestTrace) -> None:
        wall_s = trio.current_time() - trace.started
        tenant = trace.tenant or "-"
        if trace.tenant is not None:
            kill = trace.run.kill
            self.deps.observer.metrics.request_finished(
                tenant, trace.status, wall_s, trace.cpu_ms / 1000, kill, trace.decode_ms / 1000
            )
            self.deps.observer.series.record(
                tenant, time.time(), trace.status, wall_s * 1000, trace.cpu_ms
            )
            if trace.error is not None and trace.status >= 500:
                script_log.info(
                    "%s",
                    json.dumps({"tenant": tenant, "request": trace.id, "path": scope["path"],
                                "error": trace.error}),
                    extra={"tenant": tenant},
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
            code=trace.fetch.outcome,
            worker=trace.run.worker,
        )


async def read_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    timeout_s: float,
    *,
    request_head: RequestHead,
    lease: Lease | None = None,
) -> bytes:
    """The request body, or RequestTooLarge as soon as it is known to exceed limit, or
    RequestTimeout if it does not arrive within timeout_s. With a lease, the body is held
    against the server's budget for request bodies as it arrives: a 503 (and the connection
    closed) when the budget cannot take it, at once for a declared length it has no room for."""
    expected = request_head.chunked
    for value in request_head.lengths:
        if value.isdigit() and int(value) > limit:
            raise RequestTooLarge(f"request body larger than {limit} bytes")
        if value.isdigit() and lease is not None and not lease.fits(int(value)):
            raise bodies_budget_full()
        expected = expected or value != b"0"
    if not expected and scope.get("http_version") in HTTP1:
        # HTTP/1 framing says there is none: nothing to wait for. HTTP/2 and 3 frame bodies
        # themselves and need no Content-Length: read to the end of the stream.
        return b""
    with trio.move_on_after(timeout_s):
        return await _receive_body(receive, limit, lease)
    raise RequestTimeout(f"request body not received within {timeout_s:g} s")


async def _receive_body(receive: Receive, limit: int, lease: Lease | None) -> bytes:
    # One buffer, grown in place: no list of chunks joined into a second copy at the end.
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b""  # client went away
        chunk = message.get("body", b"")
        if len(body) + len(chunk) > limit:
            raise RequestTooLarge(f"request body larger than {limit} bytes")
        if lease is not None and not lease.take(len(chunk)):
            raise bodies_budget_full()
        body += chunk
        if not message.get("more_body", False):
            # The buffer itself, not a copy: bytes-like, and msgspec frames it as bytes.
            return cast("bytes", body)


ALLOWED_METHODS: Final = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"


def refuse_framing(scope: Scope, request_head: RequestHead) -> SnginError | None:
    """Requests no route may see: CONNECT (a 2xx answer would turn the connection into a
    tunnel), CRON (the method of scheduled runs, which no client may fake), and a body framed
    by both Content-Length and Transfer-Encoding, the classic request-smuggling shape: 400,
    and the connection is closed (RFC 9112 section 6.1)."""
    if scope["method"] == "CONNECT":
        return MethodNotAllowed("CONNECT is not served", headers={"Allow": ALLOWED_METHODS})
    if scope["method"] == "CRON":
        # A script's `cron` handler answers scheduled runs only: no client can trigger one.
        return MethodNotAllowed("CRON is not a request method", headers={"Allow": ALLOWED_METHODS})
    if request_head.lengths and request_head.chunked:
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
    http1: bool = False,
) -> None:
    """Send a response with the trace's timing headers, and note what was sent."""
    trace.status = status
    trace.size = 0 if head else len(body)
    # HTTP/1 sends in this task: the head goes out in one write with the body. (HTTP/2 sends
    # DATA frames from its own task, which the head must not wait behind.)
    hold = HeadHold() if http1 else None
    token = HEAD_HOLD.set(hold)
    try:
        await send(
            {"type": "http.response.start", "status": status, "headers": headers + trace.headers()}
        )
        await send({"type": "http.response.body", "body": b"" if head else body})
    finally:
        HEAD_HOLD.reset(token)
        if hold is not None:
            await hold.release()


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


__all__ = ["BadRequest", "Dispatcher"]
