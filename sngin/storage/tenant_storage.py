"""Tenant storage and leases for scripts, over SQLite (the default) or Redis (SNGIN_REDIS_URL).

SQLite: an operation first runs in the event loop on a connection that never waits for a lock
(WAL readers never do, and an uncontended write commits in tens of microseconds without an
fsync); only if the database is busy (another process writing, a checkpoint) does it move to a
worker thread, on a second connection that waits its turn, so the event loop never blocks on a
lock. A thread hop costs more than the operation itself.
Leases, either backend: a waiting request sleeps on an event its holder's release sets (this
process) or re-checks every LEASE_POLL_S (another process or node, or an expiry), within its
own timeout. A backend that fails is `storage unavailable` for the script, never a hung request.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from typing import TYPE_CHECKING, Any, Final, TypeVar

import coredis.exceptions
import trio

from sngin.errors import StorageError
from sngin.storage.sqlite import BUSY_TIMEOUT_MS, Quota, QuotaExceeded, SqliteStorage

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterator
    from pathlib import Path

    from sngin.storage.redis import RedisStorage

T = TypeVar("T")
log = logging.getLogger(__name__)

LEASE_POLL_S: Final = 0.05
# sngin's own records (tenant-scoped tokens) live in storage under names no Host can give (a
# tenant is an LDH host name: never an underscore).
INTERNAL_PREFIX: Final = "__"
BACKEND_TIMEOUT_S: Final = 5.0  # no storage call waits on its backend longer than this

__all__ = ["Quota", "QuotaExceeded", "SqliteBackend", "StorageUnavailable", "TenantStorage"]


class StorageUnavailable(StorageError):
    """The backend cannot answer now (a locked or broken database, a full disk, Redis down)."""


@contextlib.contextmanager
def backend_failures(location: str, message: str) -> Iterator[None]:
    """A backend that fails or does not answer within BACKEND_TIMEOUT_S (Redis down, a socket
    error) becomes StorageUnavailable(message): the script's ordinary error, never a hung
    request. (SqliteBackend maps its own errors already.)"""
    try:
        with trio.fail_after(BACKEND_TIMEOUT_S):
            yield
    except (trio.TooSlowError, OSError, coredis.exceptions.RedisError) as exc:
        log.error("storage backend %s: %s", location, exc or "timed out")
        raise StorageUnavailable(message) from None


class SqliteBackend:
    """SqliteStorage's operations, awaited: in the event loop when the database is free, else
    in a worker thread on a connection that waits up to busy_timeout_ms."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.location = str(path)
        self._fast = SqliteStorage(path, busy_timeout_ms=0)
        self._waiting = SqliteStorage(path, busy_timeout_ms=busy_timeout_ms)
        self._turn = trio.CapacityLimiter(1)  # one thread uses that connection at a time

    async def _run(self, name: str, *args: Any) -> Any:
        try:
            try:
                return getattr(self._fast, name)(*args)
            except sqlite3.OperationalError as exc:
                if not is_busy(exc):
                    raise
            slow = getattr(self._waiting, name)
            return await trio.to_thread.run_sync(lambda: slow(*args), limiter=self._turn)
        except sqlite3.Error as exc:
            log.error("storage backend error: %s", exc)
            raise StorageUnavailable("storage unavailable") from None

    async def get(self, tenant: str, key: bytes) -> bytes | None:
        return await self._run("get", tenant, key)  # type: ignore[no-any-return]

    async def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        await self._run("set", tenant, key, value, quota)

    async def try_lease(self, tenant: str, name: bytes, holder: str, ttl_s: float) -> bool:
        return bool(await self._run("try_lease", tenant, name, holder, ttl_s))

    async def release_lease(self, tenant: str, name: bytes, holder: str) -> bool:
        return bool(await self._run("release_lease", tenant, name, holder))

    async def usage(self, tenant: str) -> tuple[int, int]:
        return await self._run("usage", tenant)  # type: ignore[no-any-return]

    async def keys(self, tenant: str, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        return await self._run("keys", tenant, after, limit)  # type: ignore[no-any-return]

    async def items(self, tenant: str) -> list[tuple[bytes, bytes]]:
        return await self._run("items", tenant)  # type: ignore[no-any-return]

    async def tenants(self) -> list[str]:
        return await self._run("tenants")  # type: ignore[no-any-return]

    async def drop(self, tenant: str) -> int:
        return await self._run("drop", tenant)  # type: ignore[no-any-return]

    async def problem(self) -> str | None:
        return None  # a file: its failures are each call's own (busy, full disk)

    def database_bytes(self) -> int:
        """The database file and its write-ahead log, on disk."""
        total = 0
        for suffix in ("", "-wal"):
            path = self._fast.path.with_name(self._fast.path.name + suffix)
            total += path.stat().st_size if path.exists() else 0
        return total

    def close(self) -> None:
        self._fast.close()
        self._waiting.close()


class TenantStorage:
    def __init__(self, backend: SqliteBackend | RedisStorage) -> None:
        self.backend = backend
        self._released: dict[tuple[str, bytes], trio.Event] = {}
        self.operations = 0

    async def _call(self, operation: Callable[..., Awaitable[T]], *args: Any) -> T:
        """One backend operation, counted; its failures become `storage unavailable`."""
        self.operations += 1
        with backend_failures(self.backend.location, "storage unavailable"):
            return await operation(*args)

    async def get(self, tenant: str, key: bytes) -> bytes | None:
        return await self._call(self.backend.get, tenant, key)

    async def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        await self._call(self.backend.set, tenant, key, value, quota)

    async def acquire(
        self, tenant: str, name: bytes, holder: str, *, timeout_s: float, ttl_s: float
    ) -> bool:
        """Take the lease, waiting up to timeout_s for its holder to release it (or for it to
        expire); False if it stayed taken."""
        if await self._call(self.backend.try_lease, tenant, name, holder, ttl_s):
            return True  # (tried once even with no time to wait)
        try:
            with trio.move_on_after(max(timeout_s, 0)):
                while True:
                    released = self._released.setdefault((tenant, name), trio.Event())
                    with trio.move_on_after(LEASE_POLL_S):
                        await released.wait()
                    if await self._call(self.backend.try_lease, tenant, name, holder, ttl_s):
                        return True
            return False
        finally:
            event = self._released.get((tenant, name))
            if event is not None and not event.statistics().tasks_waiting:
                del self._released[(tenant, name)]  # nobody else waits: bounded by waiters

    async def release(self, tenant: str, name: bytes, holder: str) -> bool:
        released = bool(await self._call(self.backend.release_lease, tenant, name, holder))
        event = self._released.pop((tenant, name), None)
        if event is not None:
            event.set()
        return released

    # --- for operators (the admin API) -----------------------------------------------------

    async def usage(self, tenant: str) -> tuple[int, int]:
        return await self._call(self.backend.usage, tenant)

    async def keys(self, tenant: str, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        return await self._call(self.backend.keys, tenant, after, limit)

    async def items(self, tenant: str) -> list[tuple[bytes, bytes]]:
        return await self._call(self.backend.items, tenant)

    async def tenants(self) -> list[str]:
        """Tenants with storage (sngin's own namespaces, `__...`, are no tenant's)."""
        names: list[str] = await self._call(self.backend.tenants)
        return [name for name in names if not name.startswith(INTERNAL_PREFIX)]

    async def drop(self, tenant: str) -> int:
        return await self._call(self.backend.drop, tenant)

    def database_bytes(self) -> int | None:
        return self.backend.database_bytes()

    async def problem(self) -> str | None:
        """None when the backend answers; else what is wrong (sngin.storage.watch)."""
        return await self.backend.problem()

    def close(self) -> None:
        self.backend.close()


def is_busy(error: sqlite3.OperationalError) -> bool:
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)
