"""Tenant storage and leases in one SQLite database (the embedded default backend).

WAL mode, `synchronous=NORMAL`, one connection used by one thread at a time, `BEGIN IMMEDIATE`
for every write. Crash safety: a write acknowledged to a script is committed to the WAL (the OS
has the bytes), so it survives a crash or `kill -9` of the server; a power loss or an OS crash
may lose the writes since the last WAL checkpoint (the database stays consistent: SQLite rolls
back to the last synced transaction). Several sngin processes on one host may share the file:
SQLite's locks order their writes, and `busy_timeout` makes a writer wait its turn.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from sngin.errors import StorageError

if TYPE_CHECKING:
    from pathlib import Path

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS storage (
    tenant TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
    PRIMARY KEY (tenant, key)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS usage (
    tenant TEXT PRIMARY KEY, keys INTEGER NOT NULL, bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS leases (
    tenant TEXT NOT NULL, name BLOB NOT NULL, holder TEXT NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (tenant, name)
) WITHOUT ROWID;
"""
BUSY_TIMEOUT_MS: Final = 5000


class QuotaExceeded(StorageError):
    """A write would take the tenant past its key count or bytes: the text names the limit."""


@dataclass(frozen=True, slots=True)
class Quota:
    max_keys: int
    max_bytes: int


def entry_bytes(key: bytes, value: bytes) -> int:
    return len(key) + len(value)


def usage_after(
    usage: tuple[int, int], key: bytes, old_len: int | None, value: bytes | None, quota: Quota
) -> tuple[int, int]:
    """A tenant's (keys, bytes) once `key` (holding a value of old_len bytes, or none) holds
    `value` (None: deleted); QuotaExceeded when a write would take it past the quota."""
    keys, size = usage
    if old_len is not None:
        keys, size = keys - 1, size - len(key) - old_len
    if value is not None:
        keys, size = keys + 1, size + entry_bytes(key, value)
        if keys > quota.max_keys:
            raise QuotaExceeded(f"storage quota of {quota.max_keys} keys exceeded")
        if size > quota.max_bytes:
            raise QuotaExceeded(f"storage quota of {mib(quota.max_bytes)} exceeded")
    return keys, size


class SqliteStorage:
    """Blocking operations on one connection; sngin.storage.tenant_storage decides which thread
    runs them."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        # check_same_thread=False: trio's worker threads take turns (one at a time).
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Setting up waits its turn whatever busy_timeout_ms says: the processes of one node
        # (`--processes N`) open a new database at the same moment.
        self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        self._db.executescript(SCHEMA)
        self._db.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")

    def close(self) -> None:
        self._db.close()

    # --- storage ---------------------------------------------------------------------------

    def get(self, tenant: str, key: bytes) -> bytes | None:
        row = self._db.execute(
            "SELECT value FROM storage WHERE tenant = ? AND key = ?", (tenant, key)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        """Store value (None deletes), keeping the tenant's usage row true in one transaction;
        QuotaExceeded (nothing written) past the quota."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            old = db.execute(
                "SELECT length(value) FROM storage WHERE tenant = ? AND key = ?", (tenant, key)
            ).fetchone()
            usage = db.execute(
                "SELECT keys, bytes FROM usage WHERE tenant = ?", (tenant,)
            ).fetchone() or (0, 0)
            keys, size = usage_after(usage, key, None if old is None else old[0], value, quota)
            if value is not None:
                db.execute(
                    "INSERT OR REPLACE INTO storage (tenant, key, value) VALUES (?, ?, ?)",
                    (tenant, key, value),
                )
            elif old is not None:
                db.execute("DELETE FROM storage WHERE tenant = ? AND key = ?", (tenant, key))
            db.execute(
                "INSERT OR REPLACE INTO usage (tenant, keys, bytes) VALUES (?, ?, ?)",
                (tenant, keys, size),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def usage(self, tenant: str) -> tuple[int, int]:
        row = self._db.execute("SELECT keys, bytes FROM usage WHERE tenant = ?", (tenant,))
        return row.fetchone() or (0, 0)

    def keys(self, tenant: str, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        """A page of (key, value size) in key order, after `after`."""
        rows = self._db.execute(
            "SELECT key, length(value) FROM storage WHERE tenant = ? AND key > ?"
            " ORDER BY key LIMIT ?",
            (tenant, after, limit),
        )
        return [(bytes(k), n) for k, n in rows]

    def items(self, tenant: str) -> list[tuple[bytes, bytes]]:
        rows = self._db.execute(
            "SELECT key, value FROM storage WHERE tenant = ? ORDER BY key", (tenant,)
        )
        return [(bytes(k), bytes(v)) for k, v in rows]

    def tenants(self) -> list[str]:
        rows = self._db.execute("SELECT tenant FROM usage WHERE keys > 0 ORDER BY tenant")
        return [str(t) for (t,) in rows]

    def drop(self, tenant: str) -> int:
        """Delete every key of the tenant; how many there were."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            count = db.execute("DELETE FROM storage WHERE tenant = ?", (tenant,)).rowcount
            db.execute("DELETE FROM usage WHERE tenant = ?", (tenant,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(count)

    # --- leases ----------------------------------------------------------------------------

    def try_lease(self, tenant: str, name: bytes, holder: str, ttl_s: float) -> bool:
        """Take the lease if it is free, expired, or already this holder's."""
        db = self._db
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT holder, expires FROM leases WHERE tenant = ? AND name = ?", (tenant, name)
            ).fetchone()
            if row is not None and row[0] != holder and row[1] > now:
                db.execute("COMMIT")
                return False
            db.execute(
                "INSERT OR REPLACE INTO leases (tenant, name, holder, expires) VALUES (?, ?, ?, ?)",
                (tenant, name, holder, now + ttl_s),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return True

    def release_lease(self, tenant: str, name: bytes, holder: str) -> bool:
        """Compare-and-delete: only the holder releases."""
        cursor = self._db.execute(
            "DELETE FROM leases WHERE tenant = ? AND name = ? AND holder = ?",
            (tenant, name, holder),
        )
        return bool(cursor.rowcount)


def mib(size: int) -> str:
    mebibyte = 1024 * 1024
    return f"{size // mebibyte} MiB" if size % mebibyte == 0 else f"{size} bytes"
