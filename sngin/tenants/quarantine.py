"""Tenant quarantine: after N limit kills within a window, a tenant rests for a while."""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

MAX_TRACKED_TENANTS: Final = 10_000


class Quarantine:
    def __init__(self, *, strikes: int, window_s: float, duration_s: float) -> None:
        self.strikes = strikes
        self.window_s = window_s
        self.duration_s = duration_s
        self._strikes: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        # Told of a quarantine decided here (tenant, seconds) or lifted here (tenant, None):
        # the cluster bus, which applies it on every other node.
        self.on_change: Callable[[str, float | None], None] | None = None

    def strike(self, tenant: str) -> bool:
        """Count one limit kill; True when it puts the tenant in quarantine."""
        now = trio.current_time()
        times = self._strikes.setdefault(tenant, deque(maxlen=self.strikes))
        times.append(now)
        if len(times) >= self.strikes and now - times[0] <= self.window_s:
            self._until[tenant] = now + self.duration_s
            times.clear()
            self._prune(now)
            if self.on_change is not None:
                self.on_change(tenant, self.duration_s)
            return True
        self._prune(now)
        return False

    def remaining_s(self, tenant: str) -> float | None:
        """Seconds of quarantine left, or None when the tenant may run."""
        until = self._until.get(tenant)
        if until is None:
            return None
        left = until - trio.current_time()
        if left <= 0:
            del self._until[tenant]
            return None
        return left

    def paused(self) -> dict[str, float]:
        """Every tenant in quarantine, with its seconds left."""
        now = trio.current_time()
        self._until = {t: u for t, u in self._until.items() if u > now}
        return {tenant: until - now for tenant, until in sorted(self._until.items())}

    def lift(self, tenant: str, *, announce: bool = True) -> bool:
        """End a tenant's quarantine now (and forget its strikes); False if it had none."""
        self._strikes.pop(tenant, None)
        lifted = self._until.pop(tenant, None) is not None
        if announce and self.on_change is not None:
            self.on_change(tenant, None)
        return lifted

    def impose(self, tenant: str, seconds: float) -> None:
        """A quarantine decided on another node: applied here as it is (not announced)."""
        if seconds > 0:
            until = trio.current_time() + seconds
            self._until[tenant] = max(until, self._until.get(tenant, until))

    def _prune(self, now: float) -> None:
        if len(self._strikes) <= MAX_TRACKED_TENANTS:
            return
        horizon = now - self.window_s
        self._strikes = {t: d for t, d in self._strikes.items() if d and d[-1] > horizon}
