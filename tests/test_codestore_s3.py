"""The S3 store and the code cache against moto over HTTP, through the counting proxy."""

from __future__ import annotations

import httpx
import pytest
import trio

from sngin.code.cache import CodeCache
from sngin.code.s3_store import Endpoint, S3Store, open_s3_store
from sngin.code.store import Missing, Modified, NotModified
from sngin.config import S3Settings
from sngin.errors import CodeFetchError
from tests.support import FAST, code_cache, running, s3_store

# --- the store ---------------------------------------------------------------------------------


async def test_get_200_then_304(proxy, bucket):
    bucket.put("a.test/x/index.lua", "return 1")
    with trio.fail_after(10):
        async with s3_store(proxy, bucket) as store:
            first = await store.get("a.test/x", etag=None, last_modified=None)
            assert isinstance(first, Modified)
            assert first.source.text == b"return 1"
            assert first.source.version.startswith('"')
            again = await store.get("a.test/x", etag=first.source.version, last_modified=None)
            assert isinstance(again, NotModified)
    assert proxy.gets("a.test/x/index.lua", 200) == 1
    assert proxy.gets("a.test/x/index.lua", 304) == 1


async def test_missing_object(proxy, bucket):
    with trio.fail_after(10):
        async with s3_store(proxy, bucket) as store:
            assert isinstance(
                await store.get("a.test/none", etag=None, last_modified=None), Missing
            )


@pytest.mark.parametrize("key", ["a.test/with space", "a.test/ünï/cødé", "a.test/plus+and%25"])
async def test_keys_are_quoted_once_and_signed_as_sent(proxy, bucket, key):
    bucket.put(f"{key}/index.lua", "return 'odd key'")
    with trio.fail_after(10):
        async with s3_store(proxy, bucket) as store:
            result = await store.get(key, etag=None, last_modified=None)
    assert isinstance(result, Modified)
    assert result.source.text == b"return 'odd key'"


async def test_nested_prefix(proxy, bucket):
    bucket.put("sites/prod/a.test/index.lua", "return 'prefixed'")
    with trio.fail_after(10):
        async with s3_store(proxy, bucket, prefix="sites/prod") as store:
            result = await store.get("a.test", etag=None, last_modified=None)
    assert isinstance(result, Modified)
    assert result.source.text == b"return 'prefixed'"


async def test_slowdown_is_retried(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    proxy.fail("slowdown", times=2)
    with trio.fail_after(10):
        async with s3_store(proxy, bucket) as store:
            assert isinstance(await store.get("a.test", etag=None, last_modified=None), Modified)
    assert proxy.gets("a.test/index.lua", 503) == 2
    assert proxy.gets("a.test/index.lua", 200) == 1


async def test_retries_are_bounded(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    proxy.fail_always("slowdown")
    with trio.fail_after(10):
        async with s3_store(proxy, bucket, max_attempts=3) as store:
            with pytest.raises(CodeFetchError, match="unavailable"):
                await store.get("a.test", etag=None, last_modified=None)
    assert proxy.gets("a.test/index.lua") == 3


async def test_overall_deadline_is_a_cancel_scope(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    proxy.fail_always("delay", delay=5)
    with trio.fail_after(10):
        async with s3_store(
            proxy, bucket, attempt_timeout_s=0.4, deadline_s=0.6, max_attempts=50
        ) as store:
            with pytest.raises(CodeFetchError):
                await store.get("a.test", etag=None, last_modified=None)


async def test_refused_connection_is_a_fetch_error(proxy, bucket):
    proxy.refuse()
    with trio.fail_after(10):
        async with s3_store(proxy, bucket) as store:
            with pytest.raises(CodeFetchError, match="unavailable"):
                await store.get("a.test", etag=None, last_modified=None)


async def test_open_s3_store_resolves_endpoint_and_credentials_from_env(proxy, bucket, aws_env):
    aws_env.setenv("AWS_ENDPOINT_URL_S3", proxy.url)
    bucket.put("a.test/index.lua", "return 'via env'")
    with trio.fail_after(20):
        async with open_s3_store(S3Settings(bucket=bucket.name, **FAST)) as store:
            result = await store.get("a.test", etag=None, last_modified=None)
    assert isinstance(result, Modified)
    assert result.source.text == b"return 'via env'"


# --- the cache over the store --------------------------------------------------------------


async def test_cached_script_is_fetched_once(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    with trio.fail_after(10):
        async with code_cache(proxy, bucket) as cache:
            for _ in range(5):
                source = await cache.fetch("a.test")
                assert source is not None
                assert source.text == b"return 1"
    assert proxy.gets("a.test/index.lua") == 1


async def test_after_the_ttl_unchanged_is_304_and_changed_is_served(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    with trio.fail_after(10):
        async with code_cache(proxy, bucket, ttl_s=0) as cache:
            assert (await cache.fetch("a.test")).text == b"return 1"
            assert (await cache.fetch("a.test")).text == b"return 1"
            assert proxy.gets("a.test/index.lua", 304) == 1
            bucket.put("a.test/index.lua", "return 2")
            assert (await cache.fetch("a.test")).text == b"return 2"
    assert proxy.gets("a.test/index.lua", 200) == 2


async def test_deleted_script_is_gone_after_the_ttl(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    with trio.fail_after(10):
        async with code_cache(proxy, bucket, ttl_s=0) as cache:
            assert await cache.fetch("a.test") is not None
            bucket.delete("a.test/index.lua")
            assert await cache.fetch("a.test") is None
            assert cache.statistics().revalidated_404 == 1


async def test_missing_script_is_negatively_cached(proxy, bucket):
    with trio.fail_after(10):
        async with code_cache(proxy, bucket, negative_ttl_s=60) as cache:
            for _ in range(5):
                assert await cache.fetch("a.test/none") is None
    assert proxy.gets("a.test/none/index.lua") == 1


async def test_100_concurrent_cold_requests_make_one_get(proxy, bucket):
    bucket.put("a.test/index.lua", "return 1")
    proxy.fail("delay", delay=0.2)  # keep the first GET in flight while the rest arrive
    results = []
    with trio.fail_after(10):
        async with code_cache(proxy, bucket) as cache:

            async def one():
                results.append(await cache.fetch("a.test"))

            async with trio.open_nursery() as nursery:
                for _ in range(100):
                    nursery.start_soon(one)
    assert len(results) == 100
    assert all(r is not None and r.text == b"return 1" for r in results)
    assert proxy.gets("a.test/index.lua") == 1


@pytest.mark.parametrize("fault", ["slowdown", "delay", "refused"])
async def test_stale_copy_is_served_when_s3_fails(proxy, bucket, fault):
    bucket.put("a.test/index.lua", "return 'good'")
    with trio.fail_after(15):
        async with code_cache(
            proxy, bucket, ttl_s=0, attempt_timeout_s=0.2, deadline_s=0.5
        ) as cache:
            assert (await cache.fetch("a.test")).text == b"return 'good'"
            bucket.put("a.test/index.lua", "return 'newer'")
            if fault == "refused":
                proxy.refuse()
            else:
                proxy.fail_always(fault, delay=5)
            assert (await cache.fetch("a.test")).text == b"return 'good'"
            assert cache.statistics().stale_served >= 1
            assert cache.statistics().store_errors >= 1


async def test_no_copy_and_s3_down_is_a_fetch_error(proxy, bucket):
    proxy.fail_always("slowdown")
    with trio.fail_after(10):
        async with code_cache(proxy, bucket) as cache:
            with pytest.raises(CodeFetchError):
                await cache.fetch("a.test")


# --- through the HTTP server -----------------------------------------------------------------


async def test_http_request_runs_a_script_from_s3(proxy, bucket, tmp_path):
    from tests.support import running

    bucket.put("s3.test/hello/index.lua", "return 'hello from s3'")
    async with code_cache(proxy, bucket) as cache, running(tmp_path, store=cache) as srv:
        response = await srv.get("/hello", host="s3.test")
        assert (response.status_code, response.text) == (200, "hello from s3")
        assert (await srv.get("/nope", host="s3.test")).status_code == 404


async def test_http_request_with_s3_down_and_no_copy_is_502(proxy, bucket, tmp_path):
    from tests.support import running

    proxy.fail_always("slowdown")
    async with code_cache(proxy, bucket) as cache, running(tmp_path, store=cache) as srv:
        response = await srv.get("/hello", host="s3.test")
        assert response.status_code == 502
        assert response.text == "code store unavailable: S3 answered 503\n"


async def test_settings_with_an_s3_code_path_serve_from_s3(proxy, bucket, aws_env):
    from sngin.config import Settings
    from sngin.server import open_code_source

    aws_env.setenv("AWS_ENDPOINT_URL", proxy.url)
    bucket.put("code/a.test/index.lua", "return 'configured'")
    settings = Settings.from_env({"AWS_S3_CODE_PATH": f"{bucket.name}/code"})
    with trio.fail_after(20):
        async with open_code_source(settings) as source:
            assert isinstance(source, CodeCache)
            assert (await source.fetch("a.test")).text == b"return 'configured'"


async def test_denied_access_is_logged_once_per_interval(autojump_clock, caplog):
    settings = S3Settings(bucket="b", **FAST)
    async with httpx.AsyncClient() as http:
        store = S3Store(http, settings, Endpoint("http://127.0.0.1:9/b", "us-east-1"), None)
        message = "S3 denied access to bucket %s (403 %s): check the credentials"
        store._log_misconfigured(message, "b", "AccessDenied")
        await trio.sleep(30)
        store._log_misconfigured(message, "b", "AccessDenied")
        assert sum("denied access" in r.getMessage() for r in caplog.records) == 1
        await trio.sleep(31)
        store._log_misconfigured(message, "b", "AccessDenied")
        assert sum("denied access" in r.getMessage() for r in caplog.records) == 2


async def test_tenant_module_keys_map_to_plain_objects(proxy, bucket):
    bucket.put("sites/a.test/lib/util.lua", "return {}")
    with trio.fail_after(10):
        async with s3_store(proxy, bucket, prefix="sites") as store:
            assert store.object_key("a.test//lib/util.lua") == "sites/a.test/lib/util.lua"
            result = await store.get("a.test//lib/util.lua", etag=None, last_modified=None)
    assert isinstance(result, Modified)
    assert result.source.text == b"return {}"


async def test_missing_paths_of_one_host_do_not_flush_another_tenants_scripts(
    proxy, bucket, tmp_path
):
    """The tenant share bounds entries as well as bytes, negative entries included."""
    from sngin.config import CacheSettings

    bucket.put("b.test/index.lua", "return 'b stays'")
    settings = CacheSettings(max_entries=40, tenant_share=0.25)
    async with (
        s3_store(proxy, bucket) as store,
        trio.open_nursery() as nursery,
        running(tmp_path, store=CodeCache(store, settings, nursery)) as srv,
    ):
        assert (await srv.get("/", host="b.test")).text == "b stays"
        for index in range(60):  # more than the whole cache holds
            assert (await srv.get(f"/missing/{index}")).status_code == 404
        again = await srv.get("/", host="b.test")
        nursery.cancel_scope.cancel()
    assert (again.status_code, again.text) == (200, "b stays")
    assert "code;desc=hit" in again.headers["server-timing"]
    assert proxy.gets("b.test/index.lua") == 1
