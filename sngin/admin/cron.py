"""The admin API's view of scheduled runs: a tenant's entries (the ones not used, with why),
when each runs next and its last runs; every tenant's entries for the operator; and a run made
now by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sngin.admin.bodies import json_body
from sngin.admin.guard import Access, Route, granted
from sngin.cron.runs import last_runs
from sngin.errors import BadRequest
from sngin.names import tenant_of

if TYPE_CHECKING:
    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps
    from sngin.tenants.config import TenantConfig
    from sngin.tenants.cron import CronEntry

LOST_AFTER_MARGIN_S = 60.0  # past its wall time and this, a run never reported is lost


def stamp(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="seconds")


def entry_view(entry: CronEntry, now: float) -> dict[str, Any]:
    following = entry.next_after(now)
    return {
        "index": entry.index, "schedule": entry.schedule, "path": entry.path,
        "timezone": entry.timezone, "next": stamp(following), "next_unix": following,
    }  # fmt: skip


class CronRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def _config(self, tenant: str) -> TenantConfig | None:
        configs = self.deps.configs
        return await configs.get(tenant) if configs is not None else None

    async def tenant_cron(self, host: str) -> Answer:
        tenant = tenant_of(host)
        config = await self._config(tenant)
        now = time.time()
        entries = [entry_view(e, now) for e in config.cron] if config is not None else []
        problems = [str(p) for p in config.cron_problems] if config is not None else []
        wall_s = (config.limits.timeout_ms / 1000) if config is not None else 0.0
        runs = await last_runs(self.deps, tenant, lost_after_s=wall_s + LOST_AFTER_MARGIN_S)
        body = {"host": tenant, "entries": entries, "invalid": problems, "runs": runs}
        return body, 200

    async def all_cron(self) -> Answer:
        """Every tenant of the folder store with entries (other stores: the tenants whose
        configuration this node has read)."""
        started = self.deps.started
        tenants = set(started.cron.entries) if started.cron is not None else set()
        if started.cron_tenants is not None:
            tenants |= set(await started.cron_tenants())
        now, listing = time.time(), []
        for tenant in sorted(tenants):
            config = await self._config(tenant)
            if config is not None and (config.cron or config.cron_problems):
                listing.append({
                    "host": tenant, "entries": [entry_view(e, now) for e in config.cron],
                    "invalid": [str(p) for p in config.cron_problems],
                })  # fmt: skip
        return {"tenants": listing}, 200

    async def run_now(self, host: str) -> Answer:
        if self.deps.settings.ui == "readonly":
            return {"error": "the management API is read-only (SNGIN_UI=readonly)"}, 403
        tenant = tenant_of(host)
        body = await json_body()
        index = body.get("index") if isinstance(body, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            raise BadRequest('send {"index": N}, the entry to run')
        config = await self._config(tenant)
        entry = next((e for e in config.cron if e.index == index), None) if config else None
        runs = self.deps.started.cron_runs
        if entry is None or runs is None:
            return {"error": f"{tenant} has no usable cron entry {index}"}, 404
        caller = granted().caller
        record = await runs.fire(tenant, entry, time.time(), manual=True)
        if record is None:
            return {"error": "the entry changed meanwhile: list them again"}, 409
        body = {"host": tenant, "run": record.as_dict(), "by": caller.host or "operator"}
        return body, 200

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/__sngin/cron", self.all_cron, Access.OPERATOR),
            Route(("GET",), "/__sngin/code/<host>/cron", self.tenant_cron, Access.TENANT),
            Route(("POST",), "/__sngin/code/<host>/cron/run", self.run_now, Access.TENANT),
        ]
