"""What the nodes of a cluster share through the bus (sngin.node.cluster_bus): purges, and
quarantines decided or lifted on any node. A quarantine is also a key with a TTL, read afresh
whenever a node (re)connects, so one that was away still learns of those in force."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from sngin.node.cluster_bus import Purge

if TYPE_CHECKING:
    from sngin.node.purger import EventBus, Purger
    from sngin.tenants.quarantine import Quarantine

QUARANTINE_KEY: Final = "sngin:q:"


def quarantine_seconds(fields: dict[str, str]) -> float | None:
    """How long a quarantine event says the tenant is paused (None: a malformed event)."""
    try:
        return float(fields.get("seconds", "0"))
    except ValueError:
        return None


class ClusterState:
    def __init__(self, purger: Purger, quarantine: Quarantine) -> None:
        self._purger = purger
        self._quarantine = quarantine
        self.bus: EventBus | None = None

    def attach(self, bus: EventBus) -> None:
        self.bus = bus
        self._purger.bus = bus
        self._quarantine.on_change = self._quarantine_changed

    def _quarantine_changed(self, tenant: str, seconds: float | None) -> None:
        bus = self.bus
        if bus is None:
            return
        fields = {"origin": bus.node, "tenant": tenant}
        if seconds is None:
            bus.send_soon({**fields, "kind": "lift"}, key=(QUARANTINE_KEY + tenant, None))
        else:
            fields |= {"kind": "quarantine", "seconds": f"{seconds:g}"}
            bus.send_soon(fields, key=(QUARANTINE_KEY + tenant, max(1, int(seconds * 1000))))

    async def apply(self, fields: dict[str, str]) -> None:
        """An event another node sent."""
        kind, tenant = fields.get("kind"), fields.get("tenant", "")
        if kind == "quarantine":
            seconds = quarantine_seconds(fields)
            if seconds is not None:
                self._quarantine.impose(tenant, seconds)
        elif kind == "lift":
            self._quarantine.lift(tenant, announce=False)
        elif kind in ("path", "modules"):
            await self._purger.apply(Purge.from_fields(fields))
        elif kind == "flush":  # a node's queue of purges overflowed while Redis was away
            await self._purger.flush()

    async def resync(self, client: Any) -> None:
        """After a (re)connection: the quarantines in force, from their keys."""
        async for key in client.scan_iter(match=QUARANTINE_KEY + "*", count=1000):
            ms = await client.pttl(key)
            if ms and ms > 0:
                self._quarantine.impose(str(key).removeprefix(QUARANTINE_KEY), ms / 1000)
