"""Single-flight: one fetch per key at a time; everyone else asking for the key waits for it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

    from sngin.code.store import Source
    from sngin.errors import CodeFetchError


@dataclass(slots=True)
class Flight:
    """One fetch in progress; waiters wait on `done`, then read `result` or `error`.
    `finished` is False if the fetch was abandoned (its requester was cancelled): a waiter
    then tries again itself."""

    done: trio.Event = field(default_factory=trio.Event)
    result: Source | None = None
    error: CodeFetchError | None = None
    finished: bool = False


class Flights:
    def __init__(self) -> None:
        self._flights: dict[str, Flight] = {}

    def get(self, key: str) -> Flight | None:
        return self._flights.get(key)

    def begin(self, key: str) -> Flight:
        flight = self._flights[key] = Flight()
        return flight

    def end(self, key: str, flight: Flight) -> None:
        # A purge may have replaced (or dropped) the flight already: only remove our own.
        if self._flights.get(key) is flight:
            del self._flights[key]
        flight.done.set()

    def forget_matching(self, covers: Callable[[str], bool]) -> None:
        """New requests for these keys no longer join the flights in progress."""
        for key in [key for key in self._flights if covers(key)]:
            del self._flights[key]
