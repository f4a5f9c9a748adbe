"""Purges reach every node through Redis: two nodes share one S3 bucket and one real
redis-server; a purge sent to one makes the other serve the new version, also when Redis was
down at the time (the outbox, and the flush of a node that lost Redis)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from sngin.config import S3Settings
from tests.support import (
    AUTH,
    EVENTS_TOKEN,
    TOKEN,
    aws_record,
    code_cache,
    free_port,
    post_event,
    redis_server_process,
    running,
)

KEY = "code/s3.test/page/index.lua"


async def cluster_nodes(
    stack: AsyncExitStack, proxy, bucket, tmp_path, redis_url: str, *,
    settings_changes_extra: dict | None = None, count: int = 2, **options,
):  # fmt: skip
    """`count` nodes (a, b, c...) on one bucket and one Redis, each connected to the bus."""
    changes = {"redis_url": redis_url, "s3": S3Settings(bucket=bucket.name, prefix="code")}
    changes |= settings_changes_extra or {}
    nodes = []
    for name in "abcdef"[:count]:
        cache = await stack.enter_async_context(code_cache(proxy, bucket, prefix="code"))
        node = await stack.enter_async_context(
            running(
                tmp_path / name,
                store=cache,
                settings_changes=changes,
                admin_token=TOKEN,
                **options,
            )
        )
        bus = node.deps.purger.bus
        assert bus is not None
        with trio.fail_after(10):
            await bus.wait_for(lambda bus=bus: bus.connected)
        nodes.append(node)
    return nodes


async def purge_on(node, path: str = "/page"):
    answer = await node.client.post(
        node.url + "/__sngin/purge", json={"host": "s3.test", "path": path}, headers=AUTH
    )
    assert answer.status_code == 200


async def test_a_purge_sent_to_one_node_is_applied_by_the_others(
    proxy, bucket, tmp_path, redis_url
):
    bucket.put(KEY, "return 'v1'")
    async with AsyncExitStack() as stack:
        a, b, c = await cluster_nodes(stack, proxy, bucket, tmp_path, redis_url, count=3)
        for node in (a, b, c):
            assert (await node.get("/page", host="s3.test")).text == "v1"
        bucket.put(KEY, "return 'v2'")
        await purge_on(a)
        for node in (b, c):
            bus = node.deps.purger.bus
            with trio.fail_after(10):
                await bus.wait_for(lambda bus=bus: bus.received == 1)
            assert (await node.get("/page", host="s3.test")).text == "v2"
            stats = (await node.client.get(node.url + "/__sngin/stats", headers=AUTH)).json()
            bus_stats = stats["cluster_bus"]
            assert (bus_stats["connected"], bus_stats["received"], bus_stats["flushes"]) == (
                True, 1, 0,
            )  # fmt: skip
        assert (await a.get("/page", host="s3.test")).text == "v2"


async def test_a_purge_made_while_redis_is_down_reaches_every_node(proxy, bucket, tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    bucket.put(KEY, "return 'v1'")
    with redis_server_process(port) as redis:
        async with AsyncExitStack() as stack:
            a, b, c = await cluster_nodes(stack, proxy, bucket, tmp_path, url, count=3)
            for node in (a, b, c):
                assert (await node.get("/page", host="s3.test")).text == "v1"
            a_bus = a.deps.purger.bus
            redis.terminate()
            redis.wait(timeout=10)
            for node in (b, c):
                bus = node.deps.purger.bus
                with trio.fail_after(20):
                    await bus.wait_for(lambda bus=bus: not bus.connected)
            bucket.put(KEY, "return 'v2'")
            await purge_on(a)  # applied on a; kept in a's outbox
            assert (await a.get("/page", host="s3.test")).text == "v2"
            for node in (b, c):  # they cannot know yet
                assert (await node.get("/page", host="s3.test")).text == "v1"
            ready = (await b.client.get(b.url + "/__sngin/ready", headers=AUTH)).json()
            assert ready["ready"] is True
            assert "Redis unreachable" in ready["cluster_bus"]
            with redis_server_process(port):  # Redis back, empty: the stream is gone
                for node in (b, c):
                    bus = node.deps.purger.bus
                    with trio.fail_after(30):
                        await bus.wait_for(lambda bus=bus: bus.connected and bus.flushes >= 1)
                with trio.fail_after(30):
                    await a_bus.wait_for(lambda: a_bus.connected and a_bus.published >= 1)
                for node in (a, b, c):  # every node ends on the new version
                    assert (await node.get("/page", host="s3.test")).text == "v2"
                assert a_bus.statistics().outbox == 0


async def test_a_node_whose_unread_purges_were_trimmed_flushes(proxy, bucket, tmp_path, redis_url):
    import coredis

    bucket.put(KEY, "return 'v1'")
    async with AsyncExitStack() as stack:
        _, b = await cluster_nodes(stack, proxy, bucket, tmp_path, redis_url)
        assert (await b.get("/page", host="s3.test")).text == "v1"
        b_bus = b.deps.purger.bus
        bucket.put(KEY, "return 'v2'")
        # Entries b never read are trimmed away: past its position, so it cannot know what
        # they purged. (Written and trimmed in one transaction, before b's next read.)
        entry = {"origin": "elsewhere", "kind": "path", "tenant": "other.test", "folder": ""}
        client = coredis.Redis.from_url(redis_url, decode_responses=True)
        async with client, client.pipeline(transaction=True) as pipe:
            pipe.xadd("sngin:cluster", entry)
            pipe.xtrim("sngin:cluster", threshold=0, trim_strategy=coredis.PureToken.MAXLEN)
        with trio.fail_after(10):
            await b_bus.wait_for(lambda: b_bus.flushes >= 1)
        assert (await b.get("/page", host="s3.test")).text == "v2"


async def test_a_quarantine_and_its_lifting_apply_on_every_node(proxy, bucket, tmp_path, redis_url):
    bucket.put("code/spin.test/index.lua", "while true do end")
    async with AsyncExitStack() as stack:
        a, b, c = await cluster_nodes(
            stack, proxy, bucket, tmp_path, redis_url, count=3, cpu_ms=100,
            pool={"quarantine_strikes": 1, "quarantine_s": 600},
        )  # fmt: skip
        assert (await a.get("/", host="spin.test")).status_code == 504  # killed: quarantined
        for node in (b, c):
            bus = node.deps.purger.bus
            with trio.fail_after(10):
                await bus.wait_for(lambda bus=bus: bus.received >= 1)
            paused = await node.get("/", host="spin.test")
            assert paused.status_code == 503
            assert "paused" in paused.text
            tenant = node.deps.pool.statistics().tenants["spin.test"]
            assert tenant.quarantined_requests == 1  # refused, never run
        # Lifted on b: lifted on a and c too.
        lifted = await b.client.delete(b.url + "/__sngin/quarantine/spin.test", headers=AUTH)
        assert lifted.json()["lifted"] is True
        for node in (a, c):
            bus = node.deps.purger.bus
            events = 1 if node is a else 2  # c also received the quarantine itself
            with trio.fail_after(10):
                await bus.wait_for(lambda bus=bus, events=events: bus.received >= events)
            assert "spin.test" not in node.deps.pool.quarantined()
        # a runs the tenant again (and kills it again, as it still spins). One request only:
        # that kill quarantines it anew, everywhere.
        assert (await a.get("/", host="spin.test")).status_code == 504


async def test_a_node_that_joins_later_learns_the_quarantines_in_force(
    proxy, bucket, tmp_path, redis_url
):
    bucket.put("code/spin.test/index.lua", "while true do end")
    changes = {"redis_url": redis_url, "s3": S3Settings(bucket=bucket.name, prefix="code")}
    options = {"cpu_ms": 100, "pool": {"quarantine_strikes": 1, "quarantine_s": 600}}
    async with AsyncExitStack() as stack:
        a, _ = await cluster_nodes(stack, proxy, bucket, tmp_path, redis_url, **options)
        a_bus = a.deps.purger.bus
        assert (await a.get("/", host="spin.test")).status_code == 504
        with trio.fail_after(10):
            await a_bus.wait_for(lambda: a_bus.published >= 1)
        cache = await stack.enter_async_context(code_cache(proxy, bucket, prefix="code"))
        late = await stack.enter_async_context(
            running(tmp_path / "c", store=cache, settings_changes=changes, **options)
        )
        late_bus = late.deps.purger.bus
        with trio.fail_after(10):
            await late_bus.wait_for(lambda: late_bus.connected)
        assert (await late.get("/", host="spin.test")).status_code == 503


async def test_a_shared_rate_limit_admits_the_burst_once_across_two_nodes(
    proxy, bucket, tmp_path, redis_url, monkeypatch
):
    from sngin.tenants import shared_rates

    # Redis's answer is what is tested: a loaded machine must not turn it into the fallback.
    monkeypatch.setattr(shared_rates, "SHARED_TIMEOUT_S", 10.0)
    bucket.put("code/rl.test/index.lua", "return 'ok'")
    bucket.put("code/rl.test/_sngin.json", '{"limits": {"rps": 10}}')  # a burst of 20
    async with AsyncExitStack() as stack:
        a, b = await cluster_nodes(stack, proxy, bucket, tmp_path, redis_url, tenant_configs=True)
        started = trio.current_time()
        statuses = [(await node.get("/", host="rl.test")).status_code for node in (a, b) * 20]
        elapsed = trio.current_time() - started
        admitted = statuses.count(200)
        # The whole burst, once for both nodes (plus what refilled meanwhile at 10/s).
        assert 20 <= admitted <= 20 + int(elapsed * 10)
        assert set(statuses) == {200, 429}
        assert statuses[:20] == [200] * 20  # each node drew on the same bucket


async def test_without_redis_each_node_limits_to_its_share_and_says_so(proxy, bucket, tmp_path):
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    bucket.put("code/rl.test/index.lua", "return 'ok'")
    bucket.put("code/rl.test/_sngin.json", '{"limits": {"rps": 10}}')
    with redis_server_process(port) as redis:
        async with AsyncExitStack() as stack:
            a, b = await cluster_nodes(stack, proxy, bucket, tmp_path, url, tenant_configs=True)
            a_bus = a.deps.purger.bus
            with trio.fail_after(10):
                await a_bus.wait_for(lambda: a_bus.nodes_seen == 2)
            nodes = (await a.client.get(a.url + "/__sngin/stats?cluster=1", headers=AUTH)).json()
            assert [n["node"] for n in nodes["cluster"]["nodes"]] == sorted(
                [a_bus.node, b.deps.purger.bus.node]
            )
            assert nodes["cluster"]["nodes"][0]["version"]
            redis.terminate()
            redis.wait(timeout=10)
            started = trio.current_time()
            statuses = [(await a.get("/", host="rl.test")).status_code for _ in range(20)]
            elapsed = trio.current_time() - started
            # Half the rate on each of the two nodes it saw: a burst of 10 here.
            assert 10 <= statuses.count(200) <= 10 + int(elapsed * 5)


async def test_an_s3_event_posted_to_one_node_makes_the_other_serve_the_new_script(
    proxy, bucket, tmp_path, redis_url
):
    bucket.put(KEY, "return 'v1'")
    async with AsyncExitStack() as stack:
        a, b = await cluster_nodes(
            stack, proxy, bucket, tmp_path, redis_url,
            settings_changes_extra={"events_token": EVENTS_TOKEN},
        )  # fmt: skip
        assert (await b.get("/page", host="s3.test")).text == "v1"
        bucket.put(KEY, "return 'v2'")
        answer = await post_event(a, {"Records": [aws_record(bucket.name, KEY)]})
        assert answer.json() == {"purged": 1, "ignored": 0}
        b_bus = b.deps.purger.bus
        with trio.fail_after(10):
            await b_bus.wait_for(lambda: b_bus.received >= 1)
        assert (await b.get("/page", host="s3.test")).text == "v2"


async def test_purges_queued_past_the_bound_become_a_flush_on_every_node(
    proxy, bucket, tmp_path, redis_url
):
    """A node cut off from Redis while the others are not: when its queue of purges overflows,
    they become one event that makes every node flush, so none is lost unannounced."""
    bucket.put(KEY, "return 'v1'")
    bucket.put("code/s3.test/other/index.lua", "return 'o1'")
    changes = {"redis_url": redis_url, "s3": S3Settings(bucket=bucket.name, prefix="code")}
    cut_off = {**changes, "redis_url": f"redis://127.0.0.1:{free_port()}/0"}
    async with AsyncExitStack() as stack:
        nodes = []
        for name, settings in (("a", cut_off), ("b", changes)):
            cache = await stack.enter_async_context(code_cache(proxy, bucket, prefix="code"))
            nodes.append(
                await stack.enter_async_context(
                    running(tmp_path / name, store=cache, settings_changes=settings,
                            admin_token=TOKEN)
                )
            )  # fmt: skip
        a, b = nodes
        a_bus, b_bus = a.deps.purger.bus, b.deps.purger.bus
        with trio.fail_after(10):
            await b_bus.wait_for(lambda: b_bus.connected)
        for path in ("/page", "/other"):
            assert (await b.get(path, host="s3.test")).text in ("v1", "o1")
        bucket.put(KEY, "return 'v2'")
        bucket.put("code/s3.test/other/index.lua", "return 'o2'")
        a_bus.outbox_max = 1
        await purge_on(a, "/page")
        await purge_on(a, "/other")  # the queue is full: the first becomes a flush
        assert [event["kind"] for event, _ in a_bus._outbox] == ["flush", "path"]
        a_bus.url = redis_url  # a reaches Redis again (its next retry)
        with trio.fail_after(20):
            await b_bus.wait_for(lambda: b_bus.received >= 2)
        assert (await b.get("/page", host="s3.test")).text == "v2"  # flushed
        assert (await b.get("/other", host="s3.test")).text == "o2"
