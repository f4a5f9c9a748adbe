"""The admin API under /__sngin/ (and the seed's /__purge/): health and purge."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import request
from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from sngin.admin.bodies import json_body
from sngin.admin.code import CodeRoutes
from sngin.admin.events import EventRoutes
from sngin.admin.guard import ADMIN_LISTENER, Access, Guard, add_routes, granted
from sngin.admin.stats import node_statistics, quarantine_list, render_metrics
from sngin.admin.storage import StorageRoutes
from sngin.admin.tail_gate import TailGate
from sngin.admin.tokens import TokenRoutes
from sngin.admin.ui import UiRoutes
from sngin.errors import BadRequest, SnginError
from sngin.names import script_path, tenant_of
from sngin.node.cluster_bus import ClusterBus

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping

    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]

PURGE_TYPES = {"file": False, "folder": True}  # type -> recursive
TAIL_RECHECK_S = 4.0  # a live tail's credential is checked again this often (ends within 5 s)
# github.com/<user>/<repo>/... -> the module cache's key prefix "<user>/<repo>/..."
GITHUB_PREFIX = re.compile(r"(?:https://)?github\.com/([\w.-]+/[\w.-]+/(?:[\w./-]*))\Z")


def create_admin(deps: Deps) -> QuartTrio:
    admin = QuartTrio("sngin.admin")
    guard = Guard(deps)
    tails = TailGate(deps.observer.hub, deps.settings, deps.link)
    admin.extensions["sngin.guard"] = guard  # (the route table test reads every route's access)
    admin.before_request(guard.check)  # every route: who calls, which tenant, CSRF (sessions)

    @admin.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Answer:
        # Unknown /__sngin/ paths and wrong methods: JSON like every other admin answer.
        code = error.code or 500
        headers = {name: value for name, value in error.get_headers() if name == "Allow"}
        return {"error": f"{code} {error.name}"}, code, headers

    @admin.errorhandler(SnginError)
    async def sngin_error(error: SnginError) -> Answer:
        # What a route raises (a bad or too deep body, a bad host): its status, JSON.
        return {"error": error.message}, error.status, error.headers

    # Public and polled often: O(1) in tenants, no /proc reads (statistics() does both).
    @admin.get("/__sngin/health")
    @guard.allow(Access.PUBLIC)
    async def health() -> Answer:
        live = deps.pool.live_count()
        status = 200 if live > 0 else 503
        return {"status": "ok" if status == 200 else "no live workers", "workers": live}, status

    @admin.get("/__sngin/ready")
    async def ready() -> Answer:
        observer = deps.observer
        if deps.pool.live_count() == 0:
            return {"ready": False, "reason": "no live workers"}, 503
        if not observer.ready:
            return {"ready": False, "reason": observer.not_ready_reason}, 503
        answer: dict[str, Any] = {"ready": True}
        bus = deps.purger.bus
        if isinstance(bus, ClusterBus) and not bus.connected:
            # Still ready: it serves, and flushes its code cache once Redis is back.
            answer["cluster_bus"] = f"Redis unreachable: {bus.last_error}"
        if observer.storage_problem is not None:
            # Still ready: everything but storage serves.
            answer["storage"] = f"Redis unreachable: {observer.storage_problem}"
        return answer, 200

    @admin.get("/__sngin/stats")
    async def stats() -> Answer:
        cluster = request.args.get("cluster") in ("1", "true")
        return await node_statistics(deps, cluster=cluster), 200

    @admin.get("/__sngin/metrics")
    async def metrics() -> Any:
        return await render_metrics(deps), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    @admin.get("/__sngin/logs")
    @guard.allow(Access.TENANT)  # the operator, or the tenant's own token
    async def logs() -> Any:
        found = granted()
        tenant = found.tenant
        if tenant is None:
            return {"error": "name the site: ?host=HOST"}, 400
        hub = deps.observer.hub
        subscriber, lines = await tails.open(tenant)  # a SnginError: the errorhandler answers

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": tailing " + tenant.encode() + b"\n\n"
                recheck_at = trio.current_time() + TAIL_RECHECK_S
                while True:
                    line: str | None = None
                    with trio.move_on_at(recheck_at):  # (no yield inside: an async generator)
                        try:
                            line = await lines.receive()
                        except trio.EndOfChannel:
                            return
                    if line is None:
                        # Every few seconds: a revoked token or an expired session ends it.
                        if not await found.still_valid():
                            yield b"event: end\ndata: the credential was revoked or expired\n\n"
                            return
                        recheck_at = trio.current_time() + TAIL_RECHECK_S
                        continue
                    subscriber.taken(line)
                    if subscriber.dropped:
                        # A slow reader loses lines rather than slowing scripts; say how many.
                        yield f"event: dropped\ndata: {subscriber.dropped}\n\n".encode()
                        subscriber.dropped = 0
                    yield b"data: " + line.encode() + b"\n\n"
            finally:
                hub.unsubscribe(tenant, subscriber)

        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        return events(), 200, headers

    async def purge(host: str, path: str, kind: str) -> Answer:
        if kind not in PURGE_TYPES:
            return {"error": "type must be 'file' or 'folder'"}, 400
        try:
            tenant = tenant_of(host)
            folder = script_path(path)
        except BadRequest as exc:
            return {"error": exc.message}, 400
        dropped = await deps.purger.purge(tenant, folder, recursive=PURGE_TYPES[kind])
        return {"purged": dropped, "host": tenant, "path": "/" + folder, "type": kind}, 200

    async def purge_modules(url_prefix: str) -> Answer:
        match = GITHUB_PREFIX.match(url_prefix)
        if match is None:
            return {"error": "url_prefix must look like github.com/<user>/<repo>/"}, 400
        dropped = await deps.purger.purge_modules(match.group(1))
        return {"purged": dropped, "url_prefix": url_prefix}, 200

    @admin.post("/__sngin/purge")
    async def purge_json() -> Answer:
        body = await json_body()
        if isinstance(body, dict) and isinstance(body.get("url_prefix"), str):
            return await purge_modules(body["url_prefix"])
        if not isinstance(body, dict) or not isinstance(body.get("host"), str):
            return {"error": 'expected JSON {"host": ..., "path": ..., "type": ...}'}, 400
        path, kind = body.get("path", "/"), body.get("type", "file")
        if not isinstance(path, str) or not isinstance(kind, str):
            return {"error": "path and type must be strings"}, 400
        return await purge(body["host"], path, kind)

    @admin.get("/__sngin/quarantine")
    async def quarantine() -> Answer:
        return {"quarantined": quarantine_list(deps)}, 200

    @admin.delete("/__sngin/quarantine/<host>")
    async def lift_quarantine(host: str) -> Answer:
        try:
            tenant = tenant_of(host)
        except BadRequest as exc:
            return {"error": exc.message}, 400
        return {"host": tenant, "lifted": deps.pool.lift_quarantine(tenant)}, 200

    add_routes(admin, guard, StorageRoutes(deps).routes())
    add_routes(admin, guard, CodeRoutes(deps).routes())
    add_routes(admin, guard, TokenRoutes(deps).routes())  # the operator's only
    add_routes(admin, guard, UiRoutes(deps).routes())
    add_routes(admin, guard, EventRoutes(deps).routes())

    @admin.post("/__purge")
    @admin.post("/__purge/")
    @admin.post("/__purge/<path:path>")
    async def purge_seed(path: str = "") -> Answer:
        # The seed's form: the tenant is the Host header, the path follows /__purge/.
        return await purge(
            request.headers.get("Host", ""), "/" + path, request.args.get("type", "file")
        )

    return admin


class AdminListener:
    """The ASGI app of the SNGIN_ADMIN_BIND listener: the admin API only. The public listener
    already ran the admin app's lifespan, so this one answers lifespan events itself."""

    def __init__(self, admin: QuartTrio) -> None:
        self.admin = admin

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        scope[ADMIN_LISTENER] = True  # the admin origin, whatever the Host (sngin.admin.guard)
        await self.admin(scope, receive, send)  # type: ignore[arg-type]
