"""The admin API's replay bundles (sngin.replay): a tenant's list, one bundle as JSON, a replay
on the server (in a throwaway runtime, as a preview runs: no network, every call answered
from the recording), and delete."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import trio
from quart import Response

from sngin.admin.bodies import json_body
from sngin.admin.guard import Access, Route
from sngin.admin.preview import echoed_body, run_watched
from sngin.errors import BadRequest, SnginError
from sngin.names import tenant_of
from sngin.replay.player import ReplayCalls, replay_job, verdict
from sngin.tenants.config import TenantConfig

if TYPE_CHECKING:
    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps
    from sngin.replay.bundle import Bundle
    from sngin.replay.store import ReplayStore

MAX_SOURCE_BYTES = 1024 * 1024
READ_ONLY = {"error": "the management API is read-only (SNGIN_UI=readonly)"}, 403


class ReplayRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps
        self.store = deps.recording.store

    def _store(self) -> ReplayStore:
        if self.store is None:
            raise SnginError(
                "replay bundles are off on this server (no tenant storage, or"
                " SNGIN_REPLAY_MAX_BUNDLES=0)"
            )
        return self.store

    async def replay_list(self, host: str) -> Answer:
        tenant = tenant_of(host)
        return {"host": tenant, "replays": await self._store().summaries(tenant)}, 200

    async def replay_bundle(self, host: str, bundle_id: str) -> Any:
        bundle = await self._store().get(tenant_of(host), bundle_id)
        if bundle is None:
            return {"error": f"no replay bundle {bundle_id[:80]!r}"}, 404
        data = await trio.to_thread.run_sync(msgspec.json.encode, bundle)  # the tenant's size
        return Response(data, 200, content_type="application/json")

    async def replay_delete(self, host: str, bundle_id: str) -> Answer:
        if self.deps.settings.ui == "readonly":
            return READ_ONLY
        if not await self._store().delete(tenant_of(host), bundle_id):
            return {"error": f"no replay bundle {bundle_id[:80]!r}"}, 404
        return {"deleted": True}, 200

    async def replay_run(self, host: str, bundle_id: str) -> Answer:
        """Replay it here (`{"source": "..."}`: a changed script against the same recording)."""
        if self.deps.settings.ui == "readonly":
            return READ_ONLY
        tenant = tenant_of(host)
        body = await json_body(MAX_SOURCE_BYTES + 4096)
        source = body.get("source") if isinstance(body, dict) else None
        if source is not None and not isinstance(source, str):
            raise BadRequest('"source" is the script\'s text')
        bundle = await self._store().get(tenant, bundle_id)
        if bundle is None:
            return {"error": f"no replay bundle {bundle_id[:80]!r}"}, 404
        return await replay_here(self.deps, bundle, None if source is None else source.encode())

    def routes(self) -> list[Route]:
        base = "/__sngin/code/<host>/replays"
        return [
            Route(("GET",), base, self.replay_list, Access.TENANT),
            Route(("GET",), base + "/<bundle_id>", self.replay_bundle, Access.TENANT),
            Route(("DELETE",), base + "/<bundle_id>", self.replay_delete, Access.TENANT),
            Route(("POST",), base + "/<bundle_id>/run", self.replay_run, Access.TENANT),
        ]


async def replay_here(deps: Deps, bundle: Bundle, source: bytes | None) -> Answer:
    """Run it in a worker of this server beside the live site, as a preview runs: the site's
    gate, limits and concurrency, in a throwaway runtime."""
    config = await deps.configs.get(bundle.tenant) if deps.configs is not None else None
    config = config or TenantConfig(limits=deps.settings.limits)
    await deps.site_gate.admit_beside(bundle.tenant, config)
    calls = ReplayCalls(bundle)
    job = replay_job(bundle, source, config.limits.wire)
    reply, failure, logs = await run_watched(deps, job, calls, config)
    message = None if failure is None else failure.message
    return verdict(bundle, reply, message, calls, echoed_body) | {"logs": logs}, 200
