"""Tenant storage and leases for scripts, over a blocking backend (SQLite).

An operation first runs in the event loop on a connection that never waits for a lock (WAL
readers never do, and an uncontended write commits in tens of microseconds without an fsync);
only if the database is busy (another process writing, a checkpoint) does it move to a worker
thread, on a second connection that waits its turn, so the event loop never blocks on a lock.
A thread hop costs more than the operation itself. Leases: a waiting request sleeps on an event
its holder's release sets (this process) or re-checks every LEASE_POLL_S (another process, or an
expiry), within its own timeout."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING, Final, ParamSpec, TypeVar

import trio

from sngin.sqlite_storage import BUSY_TIMEOUT_MS, Quota, QuotaExceeded, SqliteStorage

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

log = logging.getLogger(__name__)

LEASE_POLL_S: Final = 0.05
P = ParamSpec("P")
T = TypeVar("T")

__all__ = ["Quota", "QuotaExceeded", "StorageUnavailable", "TenantStorage"]


class StorageUnavailable(Exception):
    """The backend cannot answer now (a locked or broken database, a full disk)."""


class TenantStorage:
    def __init__(self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.backend = SqliteStorage(path, busy_timeout_ms=0)  # in the event loop: never waits
        # in a worker thread: waits this long for a busy database, then "storage unavailable"
        self._waiting = SqliteStorage(path, busy_timeout_ms=busy_timeout_ms)
        self._turn = trio.CapacityLimiter(1)  # one thread uses that connection at a time
        self._released: dict[tuple[str, bytes], trio.Event] = {}
        self.operations = 0

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """fn is a SqliteStorage method of self.backend; it runs on the waiting connection, in a
        worker thread, when the database is busy."""
        self.operations += 1
        try:
            try:
                return fn(*args, **kwargs)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            slow = getattr(self._waiting, fn.__name__)
            result: T = await trio.to_thread.run_sync(
                lambda: slow(*args, **kwargs), limiter=self._turn
            )
            return result
        except sqlite3.Error as exc:
            log.error("storage backend error: %s", exc)
            raise StorageUnavailable("storage unavailable") from None

    async def get(self, tenant: str, key: bytes) -> bytes | None:
        return await self._run(self.backend.get, tenant, key)

    async def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        await self._run(self.backend.set, tenant, key, value, quota)

    async def acquire(
        self, tenant: str, name: bytes, holder: str, *, timeout_s: float, ttl_s: float
    ) -> bool:
        """Take the lease, waiting up to timeout_s for its holder to release it (or for it to
        expire); False if it stayed taken."""
        if await self._run(self.backend.try_lease, tenant, name, holder, ttl_s):
            return True  # (tried once even with no time to wait)
        try:
            with trio.move_on_after(max(timeout_s, 0)):
                while True:
                    released = self._released.setdefault((tenant, name), trio.Event())
                    with trio.move_on_after(LEASE_POLL_S):
                        await released.wait()
                    if await self._run(self.backend.try_lease, tenant, name, holder, ttl_s):
                        return True
            return False
        finally:
            event = self._released.get((tenant, name))
            if event is not None and not event.statistics().tasks_waiting:
                del self._released[(tenant, name)]  # nobody else waits: bounded by waiters

    async def release(self, tenant: str, name: bytes, holder: str) -> bool:
        released = await self._run(self.backend.release_lease, tenant, name, holder)
        event = self._released.pop((tenant, name), None)
        if event is not None:
            event.set()
        return released

    # --- for operators (the admin API) -----------------------------------------------------

    async def usage(self, tenant: str) -> tuple[int, int]:
        return await self._run(self.backend.usage, tenant)

    async def keys(self, tenant: str, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        return await self._run(self.backend.keys, tenant, after, limit)

    async def items(self, tenant: str) -> list[tuple[bytes, bytes]]:
        return await self._run(self.backend.items, tenant)

    async def tenants(self) -> list[str]:
        return await self._run(self.backend.tenants)

    async def drop(self, tenant: str) -> int:
        return await self._run(self.backend.drop, tenant)

    def database_bytes(self) -> int:
        """The database file and its write-ahead log, on disk."""
        total = 0
        for suffix in ("", "-wal"):
            path = self.backend.path.with_name(self.backend.path.name + suffix)
            total += path.stat().st_size if path.exists() else 0
        return total

    def close(self) -> None:
        self.backend.close()
        self._waiting.close()


def is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)
