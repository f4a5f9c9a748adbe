"""File descriptors: the server raises its own limit at start and keeps a reserve for what it
must always be able to open (workers' pipes, outbound and S3 connections, the disk mirror), so
client connections, capped below the rest, can never starve a worker replacement."""

from __future__ import annotations

import resource
from typing import TYPE_CHECKING, Final

from sngin.errors import ConfigError

if TYPE_CHECKING:
    from sngin.config import Settings

# What the server opens besides client connections: stdio, listeners, the event loop, log and
# mirror files, S3 and GitHub connections (a generous fixed part) ...
RESERVE_FIXED: Final = 128
# ... a worker's pipes (stdin, stdout) and its pidfd, with room for a replacement, for every
# worker the pool may grow to (SNGIN_MAX_WORKERS, else SNGIN_WORKERS) ...
RESERVE_PER_WORKER: Final = 6
# ... and every outbound connection scripts may hold (SNGIN_OUTBOUND_CONNECTIONS).
# The admin listener, when it has its own address, takes at most this many connections.
ADMIN_MAX_CONNECTIONS: Final = 64
# An unlimited hard limit is taken as this many.
UNLIMITED_AS: Final = 1 << 20


def raise_descriptor_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard one (the usual soft 1,024 is a relic of
    select()); the descriptors now available."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = UNLIMITED_AS if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return target
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (OSError, ValueError):
        return soft
    return target


def reserve(settings: Settings) -> int:
    admin = ADMIN_MAX_CONNECTIONS if settings.admin_bind is not None else 0
    return (
        RESERVE_FIXED
        + RESERVE_PER_WORKER * max(settings.pool.size, settings.pool.max_workers)
        + settings.outbound.connections
        + admin
    )


def connection_limit(settings: Settings, available: int | None = None) -> int:
    """SNGIN_MAX_CONNECTIONS, or the descriptors left after the reserve; ConfigError when the
    setting asks for more than that."""
    if available is None:
        available = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    room = available - reserve(settings)
    chosen = settings.http.max_connections
    if chosen is None:
        if room < 1:
            raise ConfigError(
                f"only {available} file descriptors: not enough for "
                f"{max(settings.pool.size, settings.pool.max_workers)} workers "
                f"and {settings.outbound.connections} outbound connections; raise the limit "
                "(ulimit -n) or lower SNGIN_WORKERS / SNGIN_OUTBOUND_CONNECTIONS"
            )
        return room
    if chosen > room:
        raise ConfigError(
            f"SNGIN_MAX_CONNECTIONS={chosen} needs more file descriptors than the limit of "
            f"{available} leaves after the server's own reserve of {reserve(settings)} (at most "
            f"{max(room, 0)}; raise the limit with ulimit -n)"
        )
    return chosen
