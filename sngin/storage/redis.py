"""Tenant storage and leases on Redis (SNGIN_REDIS_URL), with the SQLite backend's semantics:
a key space per tenant (a hash `sngin:s:<tenant>`, its usage in `sngin:u:<tenant>`), quotas
checked and usage kept in the same atomic script as the write, and leases as `SET NX PX` keys
released by a compare-and-delete script, so only their holder can release them and a crashed
holder's lease expires on its own."""

from __future__ import annotations

import hashlib
import logging
import socket
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

import coredis
import coredis.exceptions
import trio

from sngin.backoff import Backoff
from sngin.storage.sqlite import Quota, QuotaExceeded, mib

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

PREFIX: Final = "sngin:"
TENANTS: Final = PREFIX + "tenants"
CONNECT_TIMEOUT_S: Final = 1.0
RETRY_S: Final = 0.1
MAX_RETRY_S: Final = 5.0
CLIENT_FAILURES: Final = (coredis.exceptions.RedisError, OSError)
STREAM_TIMEOUT_S: Final = 2.0

# KEYS: data hash, usage hash, tenants set; ARGV: field, value, max keys, max bytes, delete?,
# tenant. Returns "ok", "keys" or "bytes" (the quota that would be exceeded; nothing written).
SET_SCRIPT: Final = """
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1])
local keys = tonumber(redis.call('HGET', KEYS[2], 'keys') or '0')
local size = tonumber(redis.call('HGET', KEYS[2], 'bytes') or '0')
if exists == 1 then
  keys = keys - 1
  size = size - #ARGV[1] - redis.call('HSTRLEN', KEYS[1], ARGV[1])
end
if ARGV[5] == '0' then
  keys = keys + 1
  size = size + #ARGV[1] + #ARGV[2]
  if keys > tonumber(ARGV[3]) then return 'keys' end
  if size > tonumber(ARGV[4]) then return 'bytes' end
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
elseif exists == 1 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
redis.call('HSET', KEYS[2], 'keys', keys, 'bytes', size)
if keys > 0 then redis.call('SADD', KEYS[3], ARGV[6]) else redis.call('SREM', KEYS[3], ARGV[6]) end
return 'ok'
"""
# KEYS: the lease; ARGV: holder, ttl ms. Takes it if free or already this holder's.
LEASE_SCRIPT: Final = """
local current = redis.call('GET', KEYS[1])
if current and current ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
RELEASE_SCRIPT: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def data_key(tenant: str) -> str:
    return f"{PREFIX}s:{tenant}"


def usage_key(tenant: str) -> str:
    return f"{PREFIX}u:{tenant}"


def lease_key(tenant: str, name: bytes) -> str:
    return f"{PREFIX}l:{tenant}:{name.hex()}"


class RedisStorage:
    """The same operations as SqliteStorage, awaited."""

    def __init__(self, client: Any, url: str) -> None:
        self.client = client  # replaced by hold_client when coredis ends a pool
        self.url = url
        self.reopened = trio.Event()  # set (and renewed) when a new client took over
        self.location = f"Redis at {without_password(url)}"  # for log lines: no secret

    def database_bytes(self) -> None:
        return None  # Redis's memory is Redis's own to report

    def close(self) -> None:
        pass  # the client is closed by open_redis_storage

    async def problem(self) -> str | None:
        """None when Redis answers a PING within PING_TIMEOUT_S; else what is wrong."""
        try:
            with trio.fail_after(PING_TIMEOUT_S):
                await self.client.ping()
        except trio.TooSlowError:
            return f"no answer within {PING_TIMEOUT_S:g} s"
        except (OSError, coredis.exceptions.RedisError) as exc:
            return describe_failure(exc)
        return None

    async def script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        return await self._script(source, keys, args)

    async def _script(self, source: str, keys: list[str], args: list[Any]) -> Any:
        """EVALSHA, and EVAL when this Redis has not seen the script (a restart, a new node)."""
        sha = hashlib.sha1(source.encode()).hexdigest()
        try:
            return await self.client.evalsha(sha, keys=keys, args=args)
        except coredis.exceptions.NoScriptError:
            return await self.client.eval(source, keys=keys, args=args)

    async def get(self, tenant: str, key: bytes) -> bytes | None:
        value = await self.client.hget(data_key(tenant), key)
        return None if value is None else bytes(value)

    async def set(self, tenant: str, key: bytes, value: bytes | None, quota: Quota) -> None:
        outcome = await self._script(
            SET_SCRIPT,
            keys=[data_key(tenant), usage_key(tenant), TENANTS],
            args=[key, value or b"", quota.max_keys, quota.max_bytes,
                  "1" if value is None else "0", tenant],
        )  # fmt: skip
        if outcome in (b"keys", "keys"):
            raise QuotaExceeded(f"storage quota of {quota.max_keys} keys exceeded")
        if outcome in (b"bytes", "bytes"):
            raise QuotaExceeded(f"storage quota of {mib(quota.max_bytes)} exceeded")

    async def try_lease(self, tenant: str, name: bytes, holder: str, ttl_s: float) -> bool:
        taken = await self._script(
            LEASE_SCRIPT, keys=[lease_key(tenant, name)], args=[holder, max(1, int(ttl_s * 1000))]
        )
        return bool(taken)

    async def release_lease(self, tenant: str, name: bytes, holder: str) -> bool:
        released = await self._script(RELEASE_SCRIPT, keys=[lease_key(tenant, name)], args=[holder])
        return bool(released)

    async def usage(self, tenant: str) -> tuple[int, int]:
        values = await self.client.hmget(usage_key(tenant), ["keys", "bytes"])
        return int(values[0] or 0), int(values[1] or 0)

    async def keys(self, tenant: str, after: bytes, limit: int) -> list[tuple[bytes, int]]:
        names = sorted(bytes(k) for k in await self.client.hkeys(data_key(tenant)))
        page = [k for k in names if k > after][:limit]
        return [(k, int(await self.client.hstrlen(data_key(tenant), k))) for k in page]

    async def items(self, tenant: str) -> list[tuple[bytes, bytes]]:
        entries = await self.client.hgetall(data_key(tenant))
        return sorted((bytes(k), bytes(v)) for k, v in entries.items())

    async def tenants(self) -> list[str]:
        return sorted(bytes(t).decode() for t in await self.client.smembers(TENANTS))

    async def drop(self, tenant: str) -> int:
        count = int(await self.client.hlen(data_key(tenant)))
        await self.client.delete([data_key(tenant), usage_key(tenant)])
        await self.client.srem(TENANTS, [tenant])
        return count


PING_TIMEOUT_S: Final = 2.0


def without_password(url: str) -> str:
    """The URL as a log line may show it: any password replaced by `***`."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    return urlunsplit(parts._replace(netloc=f"{user}***@{parts.netloc.rpartition('@')[2]}"))


def describe_failure(exc: BaseException) -> str:
    """What a person needs of a connection failure: `connection refused`, not the class."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, socket.gaierror):
            return "the host name does not resolve"
        if isinstance(cause, TimeoutError):
            return "the connection timed out"
        cause = cause.__cause__ or cause.__context__
    return str(exc) or type(exc).__name__


def new_client(url: str) -> Any:
    return coredis.Redis.from_url(
        url, connect_timeout=CONNECT_TIMEOUT_S, stream_timeout=STREAM_TIMEOUT_S
    )


@asynccontextmanager
async def open_redis_storage(url: str) -> AsyncIterator[RedisStorage]:
    storage = RedisStorage(new_client(url), url)
    async with trio.open_nursery() as nursery:
        await nursery.start(hold_client, storage)
        yield storage
        nursery.cancel_scope.cancel()


async def hold_client(storage: RedisStorage, *, task_status: trio.TaskStatus[None]) -> None:
    """Keep the client's connection pool open in a task of its own. coredis can end a pool by
    raising a connection's failure from the pool's task group, which cancels the code inside
    the pool's `async with`: entered around the server, that would end the server (seen when
    Redis went away as a connection was being opened). Here it ends this task's body only, and
    a new client takes over; calls meanwhile fail like any call while Redis is away."""
    started = False
    backoff = Backoff(RETRY_S, MAX_RETRY_S)  # a pool that keeps failing does not spin
    while True:
        client = storage.client if not started else new_client(storage.url)
        opened = trio.current_time()
        try:
            async with client:
                storage.client = client
                if started:
                    storage.reopened.set()
                    storage.reopened = trio.Event()
                else:
                    started = True
                    task_status.started()
                await trio.sleep_forever()
        except* CLIENT_FAILURES as group:
            log.warning(
                "storage: the Redis client ended (%s); opening a new one",
                describe_failure(group.exceptions[0]),
            )
        if trio.current_time() - opened > MAX_RETRY_S:  # it had served a while: start over
            backoff.succeeded()
        await trio.sleep(backoff.next_delay())


# The cache on Redis: entries `sngin:c:<tenant>:<hex key>` with their TTL; per tenant an index
# (sorted set, oldest first) and sizes (hash); the bytes per tenant and in all, and a global
# index, so the total and each tenant's share stay bounded: the oldest entries go first. An
# entry that expired by itself stays counted until it is evicted (it is among the oldest).
# Forgets one entry and its accounting (the prefix of both cache scripts).
CACHE_FORGET: Final = """
local function forget(t, m)
  local s = tonumber(redis.call('HGET', 'sngin:cz:' .. t, m) or '0')
  redis.call('DEL', 'sngin:c:' .. t .. ':' .. m)
  redis.call('ZREM', 'sngin:ci:' .. t, m)
  redis.call('HDEL', 'sngin:cz:' .. t, m)
  redis.call('ZREM', 'sngin:cg', t .. '|' .. m)
  if s > 0 then
    redis.call('HINCRBY', 'sngin:cu', t, -s)
    redis.call('DECRBY', 'sngin:ct', s)
  end
end
"""
CACHE_SET_SCRIPT: Final = (
    CACHE_FORGET
    + """
local tenant, member, value, ttl = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local size, share, total_max = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
forget(tenant, member)
if size > share then return 0 end
while tonumber(redis.call('HGET', 'sngin:cu', tenant) or '0') + size > share do
  local oldest = redis.call('ZRANGE', 'sngin:ci:' .. tenant, 0, 0)[1]
  if not oldest then break end
  forget(tenant, oldest)
end
while tonumber(redis.call('GET', 'sngin:ct') or '0') + size > total_max do
  local oldest = redis.call('ZRANGE', 'sngin:cg', 0, 0)[1]
  if not oldest then break end
  local bar = string.find(oldest, '|', 1, true)
  forget(string.sub(oldest, 1, bar - 1), string.sub(oldest, bar + 1))
end
local seq = redis.call('INCR', 'sngin:cseq')
redis.call('SET', 'sngin:c:' .. tenant .. ':' .. member, value, 'PX', ttl)
redis.call('ZADD', 'sngin:ci:' .. tenant, seq, member)
redis.call('HSET', 'sngin:cz:' .. tenant, member, size)
redis.call('ZADD', 'sngin:cg', seq, tenant .. '|' .. member)
redis.call('HINCRBY', 'sngin:cu', tenant, size)
redis.call('INCRBY', 'sngin:ct', size)
return 1
"""
)
CACHE_DELETE_SCRIPT: Final = (
    CACHE_FORGET
    + """
forget(ARGV[1], ARGV[2])
return 1
"""
)
CACHE_ENTRY_OVERHEAD: Final = 64


class RedisCache:
    """`cache` shared by every node: the same bounds as the node-local TenantCache."""

    def __init__(self, storage: RedisStorage, *, max_bytes: int, tenant_share: float) -> None:
        self._storage = storage
        self.location = storage.location
        self.max_bytes = max_bytes
        self.tenant_max = max(1, int(max_bytes * tenant_share))

    async def fetch(self, tenant: str, key: bytes) -> bytes | None:
        value = await self._storage.client.get(f"{PREFIX}c:{tenant}:{key.hex()}")
        return None if value is None else bytes(value)

    async def store(self, tenant: str, key: bytes, value: bytes, ttl_s: float) -> None:
        size = len(key) + len(value) + CACHE_ENTRY_OVERHEAD
        await self._storage.script(
            CACHE_SET_SCRIPT, keys=[],
            args=[tenant, key.hex(), value, max(1, int(ttl_s * 1000)), size, self.tenant_max,
                  self.max_bytes],
        )  # fmt: skip

    async def remove(self, tenant: str, key: bytes) -> None:
        await self._storage.script(CACHE_DELETE_SCRIPT, keys=[], args=[tenant, key.hex()])
