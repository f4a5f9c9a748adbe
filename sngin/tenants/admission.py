"""Before any store request: is this Host served at all, and is its tenant within its rate?"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    import re
    from pathlib import Path

MAX_BUCKETS: Final = 10_000


class TenantAllowlist:
    """SNGIN_TENANTS_ALLOW (a regex the whole host must match) or SNGIN_TENANTS_ALLOW_FILE (one
    host or `*.suffix` per line, `#` comments; re-read when it changes). Neither: all hosts."""

    def __init__(self, pattern: re.Pattern[str] | None, path: Path | None) -> None:
        self._pattern = pattern
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._hosts: frozenset[str] = frozenset()
        self._suffixes: tuple[str, ...] = ()

    def allows(self, host: str) -> bool:
        if self._pattern is not None and not self._pattern.fullmatch(host):
            return False
        if self._path is not None:
            self._reload()
            return host in self._hosts or host.endswith(self._suffixes)
        return True

    def _reload(self) -> None:
        assert self._path is not None
        try:
            stat = os.stat(self._path)  # a local file: a stat per request costs microseconds
        except OSError:
            self._hosts, self._suffixes = frozenset(), ()  # no file: nothing is allowed
            return
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return
        hosts, suffixes = set(), []
        for raw in self._path.read_text().splitlines():
            line = raw.split("#", 1)[0].strip().lower().rstrip(".")
            if line.startswith("*."):
                suffixes.append(line[1:])
            elif line:
                hosts.add(line)
        self._hosts, self._suffixes, self._stamp = frozenset(hosts), tuple(suffixes), stamp


@dataclass(slots=True)
class Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per tenant: `rps` tokens a second, bursts of 2 x rps."""

    def __init__(self) -> None:
        self._buckets: dict[str, Bucket] = {}

    def admit(self, tenant: str, rps: float) -> float | None:
        """None if the request may run; else the seconds to wait before retrying."""
        now = trio.current_time()
        burst = 2 * rps
        bucket = self._buckets.get(tenant)
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._buckets.clear()
            bucket = self._buckets[tenant] = Bucket(tokens=burst, updated=now)
        bucket.tokens = min(burst, bucket.tokens + (now - bucket.updated) * rps)
        bucket.updated = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return None
        return (1 - bucket.tokens) / rps


def retry_after(seconds: float) -> str:
    return str(max(1, math.ceil(seconds)))
