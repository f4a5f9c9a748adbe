"""One backoff for everything sngin starts again (workers, server processes, the cluster bus's
connection): delays doubling from a first one up to a cap, computed by tenacity's
wait_exponential, counted from the last success."""

from __future__ import annotations

import tenacity


class Backoff:
    def __init__(self, first_s: float, cap_s: float) -> None:
        self._wait = tenacity.wait_exponential(multiplier=first_s, max=cap_s)
        self._state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        self.failures = 0  # in a row, since the last success

    def next_delay(self) -> float:
        """One more failure: how long to wait before the next try."""
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._wait(self._state))

    def succeeded(self) -> None:
        self.failures = 0
