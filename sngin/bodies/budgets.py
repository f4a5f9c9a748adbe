"""Server-wide memory budgets: bytes of request bodies being received, of large responses
waiting for slow clients, and of subrequest bodies in flight. Each has a setting; past it the
request gets a 503 (bodies, responses) or the script's http.request an error, instead of the
server growing until the kernel steps in."""

from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Final

import trio

from sngin.errors import Unavailable

if TYPE_CHECKING:
    from collections.abc import Mapping

    from sngin.config import Settings

# glibc's mallopt parameter, and the size from which every allocation gets its own mapping.
M_MMAP_THRESHOLD: Final = -3
MMAP_THRESHOLD_BYTES: Final = 256 * 1024


def return_large_blocks_to_the_os() -> None:
    """Bodies are large and short-lived. glibc raises its mmap threshold as large blocks are
    freed (up to 32 MiB), after which freed bodies stay in the heap and the server's RSS stays at
    its peak. A fixed threshold (which turns the adjustment off) gives each block over 256 KiB
    its own mapping, returned to the OS when the body is freed."""
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to tune
        ctypes.CDLL(None).mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def bodies_budget_full() -> Unavailable:
    """The answer when the request-bodies budget cannot take a body: 503, and the connection
    closed (the rest of the body is not read)."""
    return Unavailable(
        "the server is receiving as many request bodies as it may; try again shortly",
        headers={"Retry-After": "1", "Connection": "close"},
    )


# Responses up to this size are sent without a reservation: they are bounded by the
# connections anyway, and refusing a small answer frees nothing.
SMALL_RESPONSE_BYTES: Final = 64 * 1024


class MemoryBudget:
    """Bytes held against a limit, by leases that give back all they took at once."""

    def __init__(self, name: str, limit: int, *, tenant_share: float = 1.0) -> None:
        self.name = name
        self.limit = limit
        # What one tenant's leases may hold while they wait for room (take_when_free), so a
        # tenant's slow bodies leave the rest of the budget to the others.
        self.tenant_limit = max(1, int(limit * tenant_share))
        self.held = 0
        self.held_by: dict[str, int] = {}  # by the owners leases name
        self.peak = 0
        self.refused = 0
        self.waiting = 0  # leases waiting for room (take_when_free)
        self._freed = trio.Event()  # set (and renewed) whenever bytes are given back

    def lease(self, owner: str | None = None) -> Lease:
        return Lease(self, owner)

    def freed(self) -> None:
        if self.waiting:  # (an Event per release would be every request's cost)
            self._freed.set()
            self._freed = trio.Event()

    def room(self) -> int:
        return self.limit - self.held


class Lease:
    """One request's share of a budget."""

    __slots__ = ("_budget", "_owner", "held")

    def __init__(self, budget: MemoryBudget, owner: str | None = None) -> None:
        self._budget = budget
        self._owner = owner  # the tenant whose bytes these are, for its share
        self.held = 0

    def take(self, size: int) -> bool:
        """Hold size more bytes, or False (holding nothing more) if the budget cannot."""
        budget = self._budget
        if budget.held + size > budget.limit:
            budget.refused += 1
            return False
        budget.held += size
        budget.peak = max(budget.peak, budget.held)
        self._count(size)
        return True

    async def take_when_free(self, size: int) -> bool:
        """Hold size more bytes, waiting while other leases hold the room (the caller's cancel
        scope bounds the wait), and while the owner's leases hold its share; False at once
        when size exceeds that share. A body whose size is known is held whole before it is
        read: many read at once, each holding part, would otherwise fill the budget and all
        fail halfway."""
        budget = self._budget
        if size > budget.tenant_limit:
            budget.refused += 1
            return False
        budget.waiting += 1
        try:
            while budget.held + size > budget.limit or self._owned() + size > budget.tenant_limit:
                await budget._freed.wait()
        finally:
            budget.waiting -= 1
        return self.take(size)

    def fits(self, size: int) -> bool:
        """Whether size more bytes would fit now (a refusal is counted when they would not)."""
        budget = self._budget
        if budget.held + size > budget.limit:
            budget.refused += 1
            return False
        return True

    def give_back(self, size: int) -> None:
        """Stop holding size of the bytes taken (a value replaced by a smaller one)."""
        size = min(size, self.held)
        self._budget.held -= size
        self._count(-size)
        self._budget.freed()

    def _owned(self) -> int:
        return self._budget.held_by.get(self._owner, 0) if self._owner is not None else 0

    def _count(self, size: int) -> None:
        self.held += size
        owner = self._owner
        if owner is not None and size:
            held_by = self._budget.held_by
            left = held_by.get(owner, 0) + size
            if left:
                held_by[owner] = left
            else:
                del held_by[owner]

    def release(self) -> None:
        self._budget.held -= self.held
        self._count(-self.held)
        self._budget.freed()


@dataclass(frozen=True, slots=True)
class Budgets:
    request_bodies: MemoryBudget
    responses: MemoryBudget
    subrequest_bodies: MemoryBudget

    @classmethod
    def from_settings(cls, settings: Settings) -> Budgets:
        http = settings.http
        return cls(
            request_bodies=MemoryBudget("request bodies", http.request_bodies_bytes),
            responses=MemoryBudget("responses", http.responses_bytes),
            subrequest_bodies=MemoryBudget(
                "subrequest bodies",
                settings.outbound.bodies_bytes,
                tenant_share=settings.outbound.tenant_share,
            ),
        )

    def statistics(self) -> Mapping[str, BudgetStatistics]:
        return MappingProxyType(
            {
                budget.name.replace(" ", "_"): BudgetStatistics(
                    held=budget.held,
                    peak=budget.peak,
                    limit=budget.limit,
                    refused=budget.refused,
                    waiting=budget.waiting,
                )
                for budget in (self.request_bodies, self.responses, self.subrequest_bodies)
            }
        )


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    held: int
    peak: int
    limit: int
    refused: int
    waiting: int
