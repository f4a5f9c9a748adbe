"""CodeCache logic on trio's autojump clock, over an in-memory conditional store (no real I/O)."""

from __future__ import annotations

from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from sngin.code.cache import ENTRY_OVERHEAD_BYTES, CodeCache
from sngin.code.store import Missing, Modified, NotModified, Source
from sngin.config import CacheSettings
from sngin.errors import CodeFetchError


class MemoryStore:
    """A conditional store kept in a dict; `gate` holds requests, `failure` fails them."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.calls: list[tuple[str, str | None]] = []
        self.gate: trio.Event | None = None
        self.failure: CodeFetchError | None = None

    def put(self, key: str, text: str) -> None:
        self.objects[key] = text.encode()

    @staticmethod
    def etag(text: bytes) -> str:
        return f'"{hash(text) & 0xFFFFFFFF:x}"'

    async def get(self, key, *, etag, last_modified):
        self.calls.append((key, etag))
        if self.gate is not None:
            await self.gate.wait()
        if self.failure is not None:
            raise self.failure
        text = self.objects.get(key)
        if text is None:
            return Missing()
        if etag == self.etag(text):
            return NotModified()
        return Modified(Source(text, self.etag(text)))


@asynccontextmanager
async def cache_over(store: MemoryStore, **settings):
    async with trio.open_nursery() as nursery:
        yield CodeCache(store, CacheSettings(**settings), nursery)
        nursery.cancel_scope.cancel()


async def test_entry_is_fresh_until_the_ttl_then_revalidated(autojump_clock):
    store = MemoryStore()
    store.put("a.test", "return 1")
    async with cache_over(store, ttl_s=60) as cache:
        assert (await cache.fetch("a.test")).text == b"return 1"
        await trio.sleep(59.5)
        await cache.fetch("a.test")
        assert len(store.calls) == 1
        await trio.sleep(1)
        assert (await cache.fetch("a.test")).text == b"return 1"
        assert store.calls[1] == ("a.test", store.etag(b"return 1"))
        assert cache.statistics().revalidated_304 == 1
        # The 304 restarted the TTL.
        await trio.sleep(59)
        await cache.fetch("a.test")
        assert len(store.calls) == 2


async def test_changed_script_replaces_the_entry(autojump_clock):
    store = MemoryStore()
    store.put("a.test", "return 1")
    async with cache_over(store, ttl_s=10) as cache:
        await cache.fetch("a.test")
        store.put("a.test", "return 2")
        await trio.sleep(11)
        assert (await cache.fetch("a.test")).text == b"return 2"
        assert cache.statistics().revalidated_200 == 1


async def test_slow_revalidation_serves_stale_after_one_second(autojump_clock):
    store = MemoryStore()
    store.put("a.test", "return 'old'")
    async with cache_over(store, ttl_s=10, revalidate_wait_s=1.0) as cache:
        await cache.fetch("a.test")
        await trio.sleep(11)
        store.put("a.test", "return 'new'")
        store.gate = trio.Event()
        start = trio.current_time()
        assert (await cache.fetch("a.test")).text == b"return 'old'"
        assert trio.current_time() == start + 1.0
        assert cache.statistics().stale_served == 1
        # The revalidation goes on in the cache's nursery and lands for later requests.
        store.gate.set()
        await trio.sleep(0.1)
        assert (await cache.fetch("a.test")).text == b"return 'new'"
        assert len(store.calls) == 2


async def test_missing_script_is_remembered_for_the_negative_ttl(autojump_clock):
    store = MemoryStore()
    async with cache_over(store, negative_ttl_s=10) as cache:
        assert await cache.fetch("a.test/none") is None
        await trio.sleep(9)
        assert await cache.fetch("a.test/none") is None
        assert len(store.calls) == 1
        store.put("a.test/none", "return 'now here'")
        await trio.sleep(2)
        assert (await cache.fetch("a.test/none")).text == b"return 'now here'"
        assert len(store.calls) == 2


async def test_concurrent_misses_share_one_fetch(autojump_clock):
    store = MemoryStore()
    store.put("a.test", "return 1")
    store.gate = trio.Event()
    results = []
    async with cache_over(store) as cache:

        async def one():
            results.append(await cache.fetch("a.test"))

        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
    assert len(store.calls) == 1
    assert len(results) == 100
    assert {r.text for r in results} == {b"return 1"}


async def test_a_failed_fetch_wakes_every_waiter_with_the_failure(autojump_clock):
    store = MemoryStore()
    store.gate = trio.Event()
    store.failure = CodeFetchError("code store unavailable")
    failures = []
    async with cache_over(store) as cache:

        async def one():
            with pytest.raises(CodeFetchError):
                await cache.fetch("a.test")
            failures.append(1)

        async with trio.open_nursery() as nursery:
            for _ in range(10):
                nursery.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            store.gate.set()
    assert len(failures) == 10
    assert len(store.calls) == 1


async def test_waiters_retry_when_the_fetching_request_is_cancelled(autojump_clock):
    store = MemoryStore()
    store.put("a.test", "return 1")
    store.gate = trio.Event()
    results = []
    async with cache_over(store) as cache, trio.open_nursery() as nursery:
        first = trio.CancelScope()

        async def fetcher():
            with first:
                await cache.fetch("a.test")

        async def waiter():
            results.append(await cache.fetch("a.test"))

        nursery.start_soon(fetcher)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        first.cancel()  # the first client went away mid-fetch
        await trio.testing.wait_all_tasks_blocked()
        store.gate.set()
    assert [r.text for r in results] == [b"return 1"]
    assert len(store.calls) == 2


async def test_stale_if_error_then_retry_later(autojump_clock):
    store = MemoryStore()
    store.put("a.test", "return 'good'")
    async with cache_over(store, ttl_s=10) as cache:
        await cache.fetch("a.test")
        await trio.sleep(11)
        store.failure = CodeFetchError("code store unavailable")
        assert (await cache.fetch("a.test")).text == b"return 'good'"
        assert cache.statistics().store_errors == 1
        # The stale copy is served without asking the store again for a few seconds.
        await trio.sleep(4)
        await cache.fetch("a.test")
        assert len(store.calls) == 2
        store.failure = None
        await trio.sleep(2)
        await cache.fetch("a.test")
        assert len(store.calls) == 3


async def test_entries_are_bounded_lru(autojump_clock):
    store = MemoryStore()
    for name in "abcd":
        store.put(f"{name}.test", "x")
    async with cache_over(store, max_entries=3) as cache:
        for name in "abc":
            await cache.fetch(f"{name}.test")
        await cache.fetch("a.test")  # a is now the most recently used
        await cache.fetch("d.test")  # evicts b
        assert cache.statistics().entries == 3
        assert cache.statistics().evictions == 1
        calls = len(store.calls)
        await cache.fetch("a.test")
        assert len(store.calls) == calls
        await cache.fetch("b.test")
        assert len(store.calls) == calls + 1


async def test_one_tenant_cannot_flush_the_others(autojump_clock):
    store = MemoryStore()
    big = "x" * (100 * 1024)
    store.put("b.test", big)
    for i in range(20):
        store.put(f"a.test/{i}", big)
    max_bytes = 1024 * 1024
    async with cache_over(store, max_bytes=max_bytes, tenant_share=0.25) as cache:
        await cache.fetch("b.test")
        for i in range(20):
            await cache.fetch(f"a.test/{i}")
        stats = cache.statistics()
        per_entry = ENTRY_OVERHEAD_BYTES + len("a.test/0") + len(big)
        assert stats.bytes <= max_bytes
        # Tenant a holds at most a quarter of the bytes; b's entry survived.
        assert stats.bytes - (ENTRY_OVERHEAD_BYTES + len("b.test") + len(big)) <= max_bytes // 4
        assert stats.entries == 1 + (max_bytes // 4) // per_entry
        calls = len(store.calls)
        await cache.fetch("b.test")
        assert len(store.calls) == calls
