"""Per-tenant accounting: request, status and kill counters (bounded to the most recent
tenants), and the strikes that put a tenant in quarantine."""

from __future__ import annotations

import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from sandbox.protocol import METHOD_NOT_ALLOWED
from sngin.workers.failures import CPU_KILL, CRASH, MEMORY, PROTOCOL, WALL_KILL
from sngin.workers.statistics import TenantCounters, TenantStatistics

if TYPE_CHECKING:
    from sandbox.protocol import Reply
    from sngin.tenants.quarantine import Quarantine

log = logging.getLogger(__name__)

MAX_TENANT_STATS: Final = 10_000
KILL_COUNTERS: Final = {
    WALL_KILL: "wall_kills",
    CPU_KILL: "cpu_kills",
    MEMORY: "memory_kills",
    CRASH: "crashes",
    PROTOCOL: "protocol_errors",
}


class TenantAccounting:
    def __init__(self, quarantine: Quarantine) -> None:
        self.quarantine = quarantine
        self._tenants: OrderedDict[str, TenantCounters] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tenants)

    def counters(self, tenant: str) -> TenantCounters:
        """The tenant's counters; the least recently seen tenant's are dropped past the bound."""
        counters = self._tenants.get(tenant)
        if counters is None:
            counters = self._tenants[tenant] = TenantCounters()
            if len(self._tenants) > MAX_TENANT_STATS:
                self._tenants.popitem(last=False)
        else:
            self._tenants.move_to_end(tenant)
        return counters

    def strike(self, tenant: str, counters: TenantCounters, reason: str) -> None:
        """A request of the tenant was killed for a limit (or crashed its worker)."""
        name = KILL_COUNTERS[reason]
        setattr(counters, name, getattr(counters, name) + 1)
        if self.quarantine.strike(tenant):
            counters.quarantines += 1
            log.warning("tenant %s quarantined for %g s after repeated limit kills", tenant,
                        self.quarantine.duration_s)  # fmt: skip

    @staticmethod
    def count_status(counters: TenantCounters, reply: Reply) -> None:
        status = 500 if reply.error is not None else reply.status
        if reply.error == METHOD_NOT_ALLOWED:
            status = 405
        field_name = f"status_{min(status // 100, 5)}xx"
        if hasattr(counters, field_name):
            setattr(counters, field_name, getattr(counters, field_name) + 1)

    def statistics(self) -> dict[str, TenantStatistics]:
        return {
            name: TenantStatistics(**{f: getattr(c, f) for f in TenantCounters.__slots__})
            for name, c in self._tenants.items()
        }
