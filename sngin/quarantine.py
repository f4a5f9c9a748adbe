"""Tenant quarantine: after N limit kills within a window, a tenant rests for a while."""

from __future__ import annotations

from collections import deque
from typing import Final

import trio

MAX_TRACKED_TENANTS: Final = 10_000


class Quarantine:
    def __init__(self, *, strikes: int, window_s: float, duration_s: float) -> None:
        self.strikes = strikes
        self.window_s = window_s
        self.duration_s = duration_s
        self._strikes: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}

    def strike(self, tenant: str) -> bool:
        """Count one limit kill; True when it puts the tenant in quarantine."""
        now = trio.current_time()
        times = self._strikes.setdefault(tenant, deque(maxlen=self.strikes))
        times.append(now)
        if len(times) >= self.strikes and now - times[0] <= self.window_s:
            self._until[tenant] = now + self.duration_s
            times.clear()
            self._prune(now)
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

    def lift(self, tenant: str) -> bool:
        """End a tenant's quarantine now (and forget its strikes); False if it had none."""
        self._strikes.pop(tenant, None)
        return self._until.pop(tenant, None) is not None

    def _prune(self, now: float) -> None:
        if len(self._strikes) <= MAX_TRACKED_TENANTS:
            return
        horizon = now - self.window_s
        self._strikes = {t: d for t, d in self._strikes.items() if d and d[-1] > horizon}
