"""The last minutes of each tenant, for the UI's charts: a ring of 10-second buckets per tenant
(requests, 5xx, CPU ms, and a small log-scale histogram of wall times for p50/p99). Updated on
every request in O(1); bounded in tenants (the least recently active one goes first)."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Final

BUCKET_S: Final = 10
BUCKETS: Final = 60  # ten minutes
MAX_TENANTS: Final = 1000
# Wall-time histogram edges (ms): 1, 2, 4 ... 32768; one more for longer.
EDGES_MS: Final = tuple(2.0**i for i in range(16))


def histogram_slot(wall_ms: float) -> int:
    if wall_ms <= 1:
        return 0
    return min(len(EDGES_MS), math.ceil(math.log2(wall_ms)))


def percentile(counts: list[int], fraction: float) -> float | None:
    """The upper edge (ms) of the slot holding that fraction of the requests."""
    total = sum(counts)
    if total == 0:
        return None
    wanted = fraction * total
    seen = 0
    for slot, count in enumerate(counts):
        seen += count
        if seen >= wanted:
            return EDGES_MS[min(slot, len(EDGES_MS) - 1)]
    return EDGES_MS[-1]


@dataclass(slots=True)
class Bucket:
    """One 10-second bucket (processes send theirs to be added up: a plain dataclass)."""

    start: int = -1  # the bucket's time (seconds, a multiple of BUCKET_S)
    requests: int = 0
    errors: int = 0
    cpu_ms: float = 0.0
    walls: list[int] = field(default_factory=lambda: [0] * (len(EDGES_MS) + 1))

    def reset(self, start: int) -> None:
        self.start, self.requests, self.errors, self.cpu_ms = start, 0, 0, 0.0
        self.walls = [0] * (len(EDGES_MS) + 1)


class TenantSeries:
    def __init__(self) -> None:
        # A tenant's ring holds a bucket only for the slots it has used: with more tenants than
        # MAX_TENANTS, rings are made and dropped all the time, and sixty buckets up front cost
        # more than the request that made them.
        self._rings: OrderedDict[str, list[Bucket | None]] = OrderedDict()

    def record(self, tenant: str, now: float, status: int, wall_ms: float, cpu_ms: float) -> None:
        ring = self._rings.get(tenant)
        if ring is None:
            if len(self._rings) >= MAX_TENANTS:
                self._rings.popitem(last=False)
            ring = self._rings[tenant] = [None] * BUCKETS
        else:
            self._rings.move_to_end(tenant)
        start = int(now) // BUCKET_S * BUCKET_S
        slot = (start // BUCKET_S) % BUCKETS
        bucket = ring[slot]
        if bucket is None:
            bucket = ring[slot] = Bucket(start)
        elif bucket.start != start:
            bucket.reset(start)
        bucket.requests += 1
        bucket.errors += status >= 500
        bucket.cpu_ms += cpu_ms
        bucket.walls[histogram_slot(wall_ms)] += 1

    def totals(self, now: float) -> dict[str, list[float]]:
        """Every tenant's [requests, 5xx, CPU ms] over the last ten minutes (for the sites
        list: one pass, not one series per site)."""
        oldest = int(now) // BUCKET_S * BUCKET_S - (BUCKETS - 1) * BUCKET_S
        found: dict[str, list[float]] = {}
        for tenant, ring in self._rings.items():
            total = [0.0, 0.0, 0.0]
            for bucket in ring:
                if bucket is not None and bucket.start >= oldest:
                    total[0] += bucket.requests
                    total[1] += bucket.errors
                    total[2] += bucket.cpu_ms
            if total[0]:
                found[tenant] = total
        return found

    def buckets(self, tenant: str, now: float) -> list[Bucket]:
        """The last ten minutes' buckets, oldest first (empty ones included)."""
        ring = self._rings.get(tenant)
        latest = int(now) // BUCKET_S * BUCKET_S
        found = []
        for back in range(BUCKETS - 1, -1, -1):
            start = latest - back * BUCKET_S
            bucket = ring[(start // BUCKET_S) % BUCKETS] if ring is not None else None
            found.append(bucket if bucket is not None and bucket.start == start else Bucket(start))
        return found

    def series(self, tenant: str, now: float) -> list[dict[str, float | int | None]]:
        return points(self.buckets(tenant, now))


def merged(*processes: list[Bucket]) -> list[Bucket]:
    """The same ten minutes of several processes, added up (`--processes N`)."""
    total = [Bucket(bucket.start) for bucket in processes[0]]
    for buckets in processes:
        for into, bucket in zip(total, buckets, strict=True):
            into.requests += bucket.requests
            into.errors += bucket.errors
            into.cpu_ms += bucket.cpu_ms
            into.walls = [a + b for a, b in zip(into.walls, bucket.walls, strict=True)]
    return total


def points(buckets: list[Bucket]) -> list[dict[str, float | int | None]]:
    return [
        {
            "time": b.start, "rps": b.requests / BUCKET_S, "errors": b.errors,
            "cpu_ms": round(b.cpu_ms, 2), "p50_ms": percentile(b.walls, 0.5),
            "p99_ms": percentile(b.walls, 0.99),
        }
        for b in buckets
    ]  # fmt: skip
