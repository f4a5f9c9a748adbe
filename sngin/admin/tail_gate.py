"""Live log tails are held connections, so they are capped: SNGIN_MAX_TAILS_PER_TENANT per
site and SNGIN_MAX_TAILS on the node (with `--processes N`, counted by the parent for every
process). A tail past either cap is refused before it opens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sngin.errors import RateLimited, Unavailable

if TYPE_CHECKING:
    import trio

    from sngin.config import Settings
    from sngin.node.link import ProcessLink
    from sngin.observe.live_tails import LogHub, Subscriber


class TailGate:
    def __init__(self, hub: LogHub, settings: Settings, link: ProcessLink | None) -> None:
        self._hub = hub
        self._per_tenant = settings.max_tails_per_tenant
        self._total = settings.max_tails
        self._link = link

    async def open(self, tenant: str) -> tuple[Subscriber, trio.MemoryReceiveChannel[str]]:
        """A new tail of `tenant`, counted; RateLimited (the site's cap) or Unavailable (the
        node's) when there is no room."""
        link = self._link
        if link is not None and link.connected:
            refusal = await link.open_tail(tenant, self._per_tenant, self._total)
            counted = True
        else:
            refusal = self._hub.refusal(tenant, self._per_tenant, self._total)
            counted = False
        if refusal == "tenant":
            raise RateLimited(
                f"this site already has {self._per_tenant} live tails open"
                " (SNGIN_MAX_TAILS_PER_TENANT); close one first",
                headers={"Retry-After": "5"},
            )
        if refusal is not None:
            raise Unavailable(
                f"the server has {self._total} live tails open (SNGIN_MAX_TAILS); try again later",
                headers={"Retry-After": "5"},
            )
        return self._hub.subscribe(tenant, counted=counted)
