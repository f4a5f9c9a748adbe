"""Opening the tenant storage chosen at start-up: Redis when SNGIN_REDIS_URL is set, else the
SQLite database under SNGIN_DATA_PATH (one line if it cannot be opened)."""

from __future__ import annotations

import logging
import sqlite3
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

from sngin.errors import ConfigError
from sngin.storage.redis import open_redis_storage
from sngin.storage.sqlite import SqliteStorage
from sngin.storage.tenant_storage import SqliteBackend, TenantStorage

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from sngin.config import Settings

log = logging.getLogger(__name__)
STORAGE_FILE = "storage.db"


@asynccontextmanager
async def open_tenant_storage(settings: Settings) -> AsyncIterator[TenantStorage]:
    """Redis when SNGIN_REDIS_URL is set, else the SQLite database under SNGIN_DATA_PATH (one
    line if it cannot be opened). A Redis that is down at start is not fatal: storage calls
    fail with `storage unavailable` until it is back."""
    if settings.redis_url is not None:
        async with open_redis_storage(settings.redis_url) as redis:
            log.info("tenant storage: %s", redis.location)
            yield TenantStorage(redis)
        return
    path = settings.storage.data_path / STORAGE_FILE
    with storage_database_errors(path):
        storage = TenantStorage(SqliteBackend(path))
    log.info("tenant storage: %s", path)
    try:
        yield storage
    finally:
        storage.close()


@contextmanager
def storage_database_errors(path: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(f"cannot open the storage database {path}: {exc}") from None


def prepare_storage_database(settings: Settings) -> None:
    """Create the SQLite database (schema, WAL mode) before a node's processes open it: done
    by all of them at once, switching a new file to WAL can fail with "database is locked"."""
    if settings.redis_url is None:
        path = settings.storage.data_path / STORAGE_FILE
        with storage_database_errors(path):
            SqliteStorage(path).close()
