"""With `--processes N`, what one server process gets of the node's settings: the node's totals
(workers, kept runtimes, caches, memory budgets, connections, the disk mirror) are split, so the
node as a whole stays within what the operator set. Per-request limits are the same in each."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from sngin.errors import ConfigError
from sngin.limits import MIB

if TYPE_CHECKING:
    from sngin.config import Settings


def share(total: int, index: int, count: int, *, floor: int = 1) -> int:
    """Process `index`'s part of `total` split over `count` (the remainder to the first ones)."""
    part, remainder = divmod(total, count)
    return max(floor, part + (1 if index < remainder else 0))


def check_processes(settings: Settings) -> None:
    """A node whose workers cannot be split over its processes stops at start-up."""
    if settings.pool.size < settings.processes:
        raise ConfigError(
            f"SNGIN_WORKERS={settings.pool.size} is fewer than SNGIN_PROCESSES="
            f"{settings.processes}: each server process needs at least one worker"
        )


def process_settings(settings: Settings, index: int, count: int) -> Settings:
    """Process `index` of `count`: its share of every node-wide total."""
    if count == 1:
        return settings
    pool = settings.pool
    http = settings.http
    cache = settings.cache
    storage = settings.storage
    outbound = settings.outbound
    max_connections = http.max_connections
    return dataclasses.replace(
        settings,
        processes=count,
        pool=dataclasses.replace(
            pool,
            size=share(pool.size, index, count),
            kept_runtimes_mb=share(pool.kept_runtimes_mb, index, count, floor=0),
            max_workers=share(pool.max_workers, index, count, floor=0),
        ),
        http=dataclasses.replace(
            http,
            request_bodies_bytes=share(http.request_bodies_bytes, index, count, floor=MIB),
            responses_bytes=share(http.responses_bytes, index, count, floor=MIB),
            max_connections=(
                None if max_connections is None else share(max_connections, index, count)
            ),
        ),
        cache=dataclasses.replace(cache, max_bytes=share(cache.max_bytes, index, count, floor=MIB)),
        storage=dataclasses.replace(
            storage, cache_bytes=share(storage.cache_bytes, index, count, floor=MIB)
        ),
        outbound=dataclasses.replace(
            outbound,
            connections=share(outbound.connections, index, count),
            bodies_bytes=share(outbound.bodies_bytes, index, count, floor=MIB),
        ),
        mirror_bytes=share(settings.mirror_bytes, index, count, floor=0),
    )
