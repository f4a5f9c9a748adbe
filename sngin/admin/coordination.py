"""How one server process joins the others: the cluster bus over Redis (SNGIN_REDIS_URL, every
process of every node), and with `--processes N` the link to the node's parent (without Redis it
carries the purges and quarantines; always the reports and live tails)."""

from __future__ import annotations

import socket
from functools import partial
from typing import TYPE_CHECKING

import trio

from sngin import __version__
from sngin.admin.stats import report
from sngin.node.cluster import ClusterState
from sngin.node.cluster_bus import ClusterBus

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sngin.edge.deps import Deps
    from sngin.node.link import ProcessLink


def attach_cluster_bus(deps: Deps, nursery: trio.Nursery) -> None:
    """With SNGIN_REDIS_URL, purges and quarantines reach every node through Redis."""
    url = deps.settings.redis_url
    if url is None:
        return
    state = ClusterState(deps.purger, deps.pool.quarantine)
    bus = ClusterBus(url, state.apply, deps.purger.flush, state.resync)
    state.attach(bus)
    pool = deps.pool
    # Every process of a node registers on its own: the machine and the process say whose.
    where = {"host": socket.gethostname()}
    if deps.link is not None:
        where["process"] = f"{deps.link.role.index}/{deps.link.role.count}"
    bus.describe = lambda: {
        "version": __version__,
        **where,
        "workers": pool.live_count(),
        "requests_in_flight": pool.requests_in_flight(),
        "connections": deps.connections.open,
    }
    nursery.start_soon(bus.run)


def attach_link(deps: Deps, link: ProcessLink, nursery: trio.Nursery) -> None:
    """One of several processes: without Redis, purges and quarantines reach the node's other
    processes through the parent; reports and live tails always go through it."""
    if deps.purger.bus is None:
        state = ClusterState(deps.purger, deps.pool.quarantine)
        state.attach(link)
        link.on_event = state.apply
    link.on_report = partial(report, deps)
    link.attach_tails(deps.observer.hub)
    nursery.start_soon(link.run)


def first_of(*triggers: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    """A shutdown trigger that fires when the first of `triggers` does."""

    async def trigger() -> None:
        async with trio.open_nursery() as nursery:
            for each in triggers:

                async def fire(each: Callable[[], Awaitable[None]] = each) -> None:
                    await each()
                    nursery.cancel_scope.cancel()

                nursery.start_soon(fire)

    return trigger
