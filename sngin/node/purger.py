"""Purges, applied on this node and sent to every other one through the cluster bus (if any)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from sngin.node.cluster_bus import Purge

if TYPE_CHECKING:
    from sngin.code.cache import CodeCache
    from sngin.code.store import CodeSource
    from sngin.node.cluster_bus import BusStatistics
    from sngin.node.link import LinkStatistics


class EventBus(Protocol):
    """What carries events to the other nodes or processes: the cluster bus over Redis
    (sngin.node.cluster_bus), or a process's link to its node's parent (sngin.node.link)."""

    node: str
    nodes_seen: int  # the nodes it knows of (a process's link: its own node)

    def publish(self, purge: Purge) -> None: ...

    def send_soon(
        self, fields: dict[str, str], *, key: tuple[str, int | None] | None = None
    ) -> None: ...

    def statistics(self) -> BusStatistics | LinkStatistics: ...

    def unreachable(self) -> str | None:
        """Why the bus cannot reach the others now (for readiness), or None."""
        ...

    async def cluster_view(self) -> dict[str, Any] | None:
        """The cluster's nodes as the bus's registry has them now (`?cluster=1` of the stats),
        `{"error": …}` when it cannot tell, or None when it keeps no registry."""
        ...


class Purger:
    """The one way purges are made (the API, the seed's /__purge/, S3 events): here, then on
    every node."""

    def __init__(self, store: CodeSource, github: CodeCache | None) -> None:
        self._store = store
        self._github = github
        self.bus: EventBus | None = None

    async def purge(self, tenant: str, folder: str, *, recursive: bool) -> int:
        purge = Purge(tenant=tenant, folder=folder, recursive=recursive)
        dropped = await self.apply(purge)
        if self.bus is not None:
            self.bus.publish(purge)
        return dropped

    async def purge_modules(self, prefix: str) -> int:
        purge = Purge(modules_prefix=prefix)
        dropped = await self.apply(purge)
        if self.bus is not None:
            self.bus.publish(purge)
        return dropped

    async def apply(self, purge: Purge) -> int:
        """A purge on this node only (one of ours, or one another node sent)."""
        if purge.modules_prefix is not None:
            if self._github is None:
                return 0
            prefix = purge.modules_prefix
            return await self._github.purge_matching(lambda key: key.startswith(prefix))
        return await self._store.purge(purge.tenant, purge.folder, recursive=purge.recursive)

    async def flush(self) -> None:
        """Forget every copy cached in memory on this node (the bus cannot vouch for what it
        may have missed); disk-mirror copies stay, and are revalidated before use."""
        self._store.forget_memory()
        if self._github is not None:
            self._github.forget_memory()
