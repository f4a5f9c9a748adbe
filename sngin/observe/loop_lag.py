"""The event loop's lag: how late a task that sleeps 10 ms wakes up.

Every tenant shares the server's event loop, so work that holds it (a long parse, a big
signature) delays every other tenant's request at once. This makes such a stall visible to the
operator as it happens: a Prometheus histogram and p50/p99/max over the last minute in
`/__sngin/stats`.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Final

import trio

PERIOD_S: Final = 0.010
WINDOW: Final = 6000  # samples: the last minute at one per 10 ms (fewer when the loop stalls)


@dataclass(frozen=True, slots=True)
class LagStatistics:
    """Milliseconds a 10 ms sleep overslept: median, 99th percentile and worst of the window."""

    p50: float
    p99: float
    max: float
    samples: int


class LoopLag:
    """The recent samples; `serve_loop_lag` feeds it."""

    def __init__(self, histogram: Any = None) -> None:
        self._samples: deque[float] = deque(maxlen=WINDOW)
        self._histogram = histogram  # prometheus_client Histogram in seconds, or None

    def record(self, lag_s: float) -> None:
        lag_s = max(lag_s, 0.0)
        self._samples.append(lag_s)
        if self._histogram is not None:
            self._histogram.observe(lag_s)

    def statistics(self) -> LagStatistics:
        ordered = sorted(self._samples)
        if not ordered:
            return LagStatistics(p50=0.0, p99=0.0, max=0.0, samples=0)

        def at(fraction: float) -> float:
            return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000, 2)

        return LagStatistics(p50=at(0.5), p99=at(0.99), max=at(1.0), samples=len(ordered))


async def serve_loop_lag(lag: LoopLag) -> None:
    """Sleep 10 ms, record how late the wake-up was, forever (until cancelled)."""
    while True:
        asleep_at = trio.current_time()
        await trio.sleep(PERIOD_S)
        lag.record(trio.current_time() - asleep_at - PERIOD_S)
