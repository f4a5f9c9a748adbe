"""Whether a site takes a run now: enabled by its `_sngin.json`, within its `rps` (for the
cluster with Redis, for the node with several processes) and not quarantined. Tenant requests,
previews and replays on the server pass the same gate, so neither can do what the live site
may not."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from sngin.errors import RateLimited, Unavailable
from sngin.storage.redis import RedisStorage
from sngin.tenants.admission import RateLimiter, retry_after
from sngin.tenants.shared_rates import SharedRateLimiter

if TYPE_CHECKING:
    from sngin.edge.deps import Deps
    from sngin.node.link import ProcessLink
    from sngin.tenants.config import TenantConfig


def shared_rates_for(deps: Deps) -> SharedRateLimiter | ProcessLink | None:
    """With Redis (SNGIN_REDIS_URL), tenants' rate limits hold for the cluster as a whole;
    without it, with several processes, for the node (the buckets are in the parent)."""
    backend = deps.storage.backend if deps.storage is not None else None
    if deps.settings.redis_url is None or not isinstance(backend, RedisStorage):
        return deps.link

    def nodes() -> int:
        bus = deps.purger.bus
        return bus.nodes_seen if bus is not None else 1

    return SharedRateLimiter(backend, nodes)


class SiteGate:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._rates = RateLimiter()
        self._shared_rates = shared_rates_for(deps)

    async def admit(self, tenant: str, config: TenantConfig) -> None:
        """Unavailable (disabled) or RateLimited (over its rps); the pool checks quarantine."""
        if not config.enabled:
            raise Unavailable("this site is disabled by its configuration")
        if config.rps:
            shared = self._shared_rates
            if shared is not None:
                wait = await shared.admit(tenant, config.rps)
            else:
                wait = self._rates.admit(tenant, config.rps)
            if wait is not None:
                raise RateLimited(
                    "too many requests for this site", headers={"Retry-After": retry_after(wait)}
                )

    async def admit_beside(self, tenant: str, config: TenantConfig) -> None:
        """For a run under another name (a preview, a replay on the server): what the live
        site may not do now, it may not either (its rps, enabled, and its quarantine)."""
        await self.admit(tenant, config)
        self.refuse_if_quarantined(tenant)

    def refuse_if_quarantined(self, tenant: str) -> None:
        """For runs under another name (a preview runs as HOST#preview): the site's own
        quarantine applies to them too."""
        left = self._deps.pool.quarantine_left(tenant)
        if left is not None:
            raise Unavailable(
                f"this site is paused for {math.ceil(left)} s after repeated limit kills",
                headers={"Retry-After": str(math.ceil(left))},
            )
