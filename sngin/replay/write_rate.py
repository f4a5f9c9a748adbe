"""How often runs may leave replay bundles: per script, the first FREE_WRITES and then one per
WINDOW_S; per tenant, a bucket of TENANT_BURST refilled one per TENANT_REFILL_S, so a site
with many failing scripts cannot keep the one writer (and every other site's bundles) busy.
Memory is bounded: the least recently seen scripts and tenants are forgotten first."""

from __future__ import annotations

from collections import OrderedDict
from typing import Final

FREE_WRITES: Final = 3  # per script, before its rate applies
WINDOW_S: Final = 10.0
TENANT_BURST: Final = 20
TENANT_REFILL_S: Final = 2.0
MAX_TRACKED: Final = 10_000  # scripts, and tenants


class WriteRate:
    def __init__(self) -> None:
        self._scripts: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._tenants: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, when

    def allows(self, tenant: str, script: str, now: float) -> bool:
        """Whether this run may leave a bundle; an allowed one counts against both rates, a
        refused one against neither."""
        written, last = self._scripts.pop(script, (0, 0.0))
        tokens, updated = self._tenants.pop(tenant, (float(TENANT_BURST), now))
        tokens = min(float(TENANT_BURST), tokens + max(0.0, now - updated) / TENANT_REFILL_S)
        allowed = (written < FREE_WRITES or now - last >= WINDOW_S) and tokens >= 1
        if allowed:
            written, last, tokens = written + 1, now, tokens - 1
        self._scripts[script] = (written, last)
        self._tenants[tenant] = (tokens, now)
        for seen in (self._scripts, self._tenants):
            if len(seen) > MAX_TRACKED:
                seen.popitem(last=False)
        return allowed
