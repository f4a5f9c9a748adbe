"""A per-tenant cap on something every tenant shares (scripts' outbound connections): one
tenant's slow upstreams hold at most its share, and the rest stays free for the others."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator


class TenantShares:
    """At most `per_tenant` slots held by one tenant at a time; a tenant over its share waits
    for one of its own slots, never for another tenant's."""

    def __init__(self, per_tenant: int) -> None:
        self.per_tenant = per_tenant
        # Only tenants holding or waiting for a slot have an entry: bounded by the requests
        # in flight, not by the tenants ever seen.
        self._limiters: dict[str, trio.CapacityLimiter] = {}

    @asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        limiter = self._limiters.get(tenant)
        if limiter is None:
            limiter = self._limiters[tenant] = trio.CapacityLimiter(self.per_tenant)
        try:
            async with limiter:
                yield
        finally:
            statistics = limiter.statistics()
            if not statistics.borrowed_tokens and not statistics.tasks_waiting:
                self._limiters.pop(tenant, None)

    def held(self, tenant: str) -> int:
        limiter = self._limiters.get(tenant)
        return 0 if limiter is None else limiter.borrowed_tokens

    def waiting(self, tenant: str) -> int:
        limiter = self._limiters.get(tenant)
        return 0 if limiter is None else limiter.statistics().tasks_waiting

    def tenants(self) -> int:
        return len(self._limiters)
