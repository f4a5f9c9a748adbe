"""The admin API's own routes under /__sngin/ (and the seed's /__purge/): health, readiness,
stats and metrics, live logs, purges and quarantines."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CONTENT_TYPE_LATEST
from quart import request

from sngin.admin.bodies import json_body
from sngin.admin.guard import Access, Route, granted
from sngin.admin.stats import node_statistics, quarantine_list, render_metrics
from sngin.admin.tail_gate import TailGate
from sngin.errors import BadRequest
from sngin.names import script_path, tenant_of

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps

PURGE_TYPES = {"file": False, "folder": True}  # type -> recursive
TAIL_RECHECK_S = 4.0  # a live tail's credential is checked again this often (ends within 5 s)
# github.com/<user>/<repo>/... -> the module cache's key prefix "<user>/<repo>/..."
GITHUB_PREFIX = re.compile(r"(?:https://)?github\.com/([\w.-]+/[\w.-]+/(?:[\w./-]*))\Z")


class NodeRoutes:
    """The routes of this node: health and readiness, stats, logs, purges, quarantines."""

    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.tails = TailGate(deps.observer.hub, deps.settings, deps.link)

    # Public and polled often: O(1) in tenants, no /proc reads (statistics() does both).
    async def health(self) -> Answer:
        live = self.deps.pool.live_count()
        status = 200 if live > 0 else 503
        return {"status": "ok" if status == 200 else "no live workers", "workers": live}, status

    async def ready(self) -> Answer:
        observer = self.deps.observer
        if self.deps.pool.live_count() == 0:
            return {"ready": False, "reason": "no live workers"}, 503
        if not observer.ready:
            return {"ready": False, "reason": observer.not_ready_reason}, 503
        answer: dict[str, Any] = {"ready": True}
        bus = self.deps.purger.bus
        unreachable = bus.unreachable() if bus is not None else None
        if unreachable is not None:  # still ready (sngin.node.cluster_bus)
            answer["cluster_bus"] = unreachable
        if observer.storage_problem is not None:
            # Still ready: everything but storage serves.
            answer["storage"] = f"Redis unreachable: {observer.storage_problem}"
        return answer, 200

    async def stats(self) -> Answer:
        cluster = request.args.get("cluster") in ("1", "true")
        return await node_statistics(self.deps, cluster=cluster), 200

    async def metrics(self) -> Any:
        return await render_metrics(self.deps), 200, {"Content-Type": CONTENT_TYPE_LATEST}

    async def logs(self) -> Any:
        found = granted()
        tenant = found.tenant
        if tenant is None:
            return {"error": "name the site: ?host=HOST"}, 400
        hub = self.deps.observer.hub
        subscriber, lines = await self.tails.open(tenant)  # a SnginError: the errorhandler answers

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

    async def purge(self, host: str, path: str, kind: str) -> Answer:
        if kind not in PURGE_TYPES:
            return {"error": "type must be 'file' or 'folder'"}, 400
        try:
            tenant = tenant_of(host)
            folder = script_path(path)
        except BadRequest as exc:
            return {"error": exc.message}, 400
        dropped = await self.deps.purger.purge(tenant, folder, recursive=PURGE_TYPES[kind])
        return {"purged": dropped, "host": tenant, "path": "/" + folder, "type": kind}, 200

    async def purge_modules(self, url_prefix: str) -> Answer:
        match = GITHUB_PREFIX.match(url_prefix)
        if match is None:
            return {"error": "url_prefix must look like github.com/<user>/<repo>/"}, 400
        dropped = await self.deps.purger.purge_modules(match.group(1))
        return {"purged": dropped, "url_prefix": url_prefix}, 200

    async def purge_json(self) -> Answer:
        body = await json_body()
        if isinstance(body, dict) and isinstance(body.get("url_prefix"), str):
            return await self.purge_modules(body["url_prefix"])
        if not isinstance(body, dict) or not isinstance(body.get("host"), str):
            return {"error": 'expected JSON {"host": ..., "path": ..., "type": ...}'}, 400
        path, kind = body.get("path", "/"), body.get("type", "file")
        if not isinstance(path, str) or not isinstance(kind, str):
            return {"error": "path and type must be strings"}, 400
        return await self.purge(body["host"], path, kind)

    async def quarantine(self) -> Answer:
        return {"quarantined": quarantine_list(self.deps)}, 200

    async def lift_quarantine(self, host: str) -> Answer:
        try:
            tenant = tenant_of(host)
        except BadRequest as exc:
            return {"error": exc.message}, 400
        return {"host": tenant, "lifted": self.deps.pool.lift_quarantine(tenant)}, 200

    async def purge_seed(self, path: str = "") -> Answer:
        # The seed's form: the tenant is the Host header, the path follows /__purge/.
        return await self.purge(
            request.headers.get("Host", ""), "/" + path, request.args.get("type", "file")
        )

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/__sngin/health", self.health, Access.PUBLIC),
            Route(("GET",), "/__sngin/ready", self.ready, Access.OPERATOR),
            Route(("GET",), "/__sngin/stats", self.stats, Access.OPERATOR),
            Route(("GET",), "/__sngin/metrics", self.metrics, Access.OPERATOR),
            Route(
                ("GET",), "/__sngin/logs", self.logs, Access.TENANT
            ),  # the operator, or the tenant's own token
            Route(("POST",), "/__sngin/purge", self.purge_json, Access.OPERATOR),
            Route(("GET",), "/__sngin/quarantine", self.quarantine, Access.OPERATOR),
            Route(("DELETE",), "/__sngin/quarantine/<host>", self.lift_quarantine, Access.OPERATOR),
            Route(("POST",), "/__purge", self.purge_seed, Access.OPERATOR),
            Route(("POST",), "/__purge/", self.purge_seed, Access.OPERATOR),
            Route(("POST",), "/__purge/<path:path>", self.purge_seed, Access.OPERATOR),
        ]
