"""Disk mirror across restarts, purge and `$cb`, with moto behind the counting proxy."""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import replace

import pytest
import trio
import trio.lowlevel
import trio.testing

from sngin.errors import CodeFetchError
from tests.support import TOKEN, node, running


def put_sites(bucket):
    bucket.put("a.test/index.lua", "return 'root'")
    bucket.put("a.test/x/index.lua", "return 'x'")
    bucket.put("a.test/x/y/index.lua", "return 'x/y'")
    bucket.put("a.test/xy/index.lua", "return 'xy'")
    bucket.put("b.test/x/index.lua", "return 'b x'")


async def warm(cache, keys):
    for key in keys:
        assert await cache.fetch(key) is not None


KEYS = ["a.test", "a.test/x", "a.test/x/y", "a.test/xy", "b.test/x"]


# --- the mirror across restarts ------------------------------------------------------------


async def test_restart_with_warm_mirror_and_s3_down_serves(proxy, bucket, tmp_path):
    put_sites(bucket)
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            await warm(cache, KEYS)
        proxy.refuse()
        async with node(proxy, bucket, tmp_path) as restarted:
            for key in KEYS:
                assert (await restarted.fetch(key)) is not None
            assert restarted.statistics().stale_served == len(KEYS)


async def test_restart_with_warm_mirror_and_s3_up_costs_one_304_each(proxy, bucket, tmp_path):
    put_sites(bucket)
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            await warm(cache, KEYS)
        async with node(proxy, bucket, tmp_path) as restarted:
            await warm(restarted, KEYS)
            await warm(restarted, KEYS)
    for key in KEYS:
        assert proxy.gets(f"{key}/index.lua", 200) == 1  # the first node's download only
        assert proxy.gets(f"{key}/index.lua", 304) == 1


async def test_mirror_copy_is_replaced_when_s3_has_a_newer_one(proxy, bucket, tmp_path):
    bucket.put("a.test/index.lua", "return 'v1'")
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            await cache.fetch("a.test")
        bucket.put("a.test/index.lua", "return 'v2'")
        async with node(proxy, bucket, tmp_path) as restarted:
            assert (await restarted.fetch("a.test")).text == b"return 'v2'"
        proxy.refuse()
        async with node(proxy, bucket, tmp_path) as third:
            assert (await third.fetch("a.test")).text == b"return 'v2'"


async def test_no_mirror_copy_and_s3_down_is_an_error(proxy, bucket, tmp_path):
    proxy.refuse()
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            with pytest.raises(CodeFetchError):
                await cache.fetch("a.test")


# --- purge ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("folder", "recursive", "dropped"),
    [
        ("x", False, {"a.test/x"}),
        ("x", True, {"a.test/x", "a.test/x/y"}),  # segment boundary: not a.test/xy
        ("", True, {"a.test", "a.test/x", "a.test/x/y", "a.test/xy"}),  # the whole tenant
        ("", False, {"a.test"}),
    ],
)
async def test_purge_drops_memory_and_mirror_entries(
    proxy, bucket, tmp_path, folder, recursive, dropped
):
    put_sites(bucket)
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            await warm(cache, KEYS)
            assert await cache.fetch("a.test/x/none") is None  # a negative entry
            count = await cache.purge("a.test", folder, recursive=recursive)
            negative = recursive and folder in ("x", "")
            # Memory entries plus mirror files (negative entries have no file).
            assert count == 2 * len(dropped) + int(negative)
            before = {key: proxy.gets(f"{key}/index.lua") for key in KEYS}
            await warm(cache, KEYS)
    for key in KEYS:
        fetched_again = proxy.gets(f"{key}/index.lua") - before[key]
        assert fetched_again == (1 if key in dropped else 0), key
        if key in dropped:  # the next request fetched unconditionally
            assert proxy.gets(f"{key}/index.lua", 200) == 2


async def test_purge_racing_an_in_flight_fetch_is_not_cached(proxy, bucket, tmp_path):
    bucket.put("a.test/index.lua", "return 'old'")
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            proxy.fail("delay", delay=0.5)
            results = []

            async def fetch():
                results.append(await cache.fetch("a.test"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                while not proxy.pending():  # the GET is being held by the proxy
                    await trio.lowlevel.checkpoint()
                bucket.put("a.test/index.lua", "return 'new'")
                await cache.purge("a.test", "", recursive=False)
            assert results[0] is not None  # the in-flight request still got an answer
            assert cache.statistics().entries == 0
            assert await cache.fetch("a.test") is not None
            assert (await cache.fetch("a.test")).text == b"return 'new'"
        proxy.refuse()
        async with node(proxy, bucket, tmp_path) as restarted:
            assert (await restarted.fetch("a.test")).text == b"return 'new'"


# --- $cb -------------------------------------------------------------------------------------


async def test_cb_forces_a_conditional_fetch_at_most_once_per_interval(proxy, bucket, tmp_path):
    bucket.put("a.test/index.lua", "return 1")
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path, cb_interval_s=30) as cache:
            await cache.fetch("a.test")
            bucket.put("a.test/index.lua", "return 2")
            assert (await cache.fetch("a.test")).text == b"return 1"  # within the TTL
            assert (await cache.fetch("a.test", revalidate=True)).text == b"return 2"
            bucket.put("a.test/index.lua", "return 3")
            # Rate-limited: the cached version is used silently.
            assert (await cache.fetch("a.test", revalidate=True)).text == b"return 2"
    assert proxy.gets("a.test/index.lua") == 2


# --- through the HTTP server ---------------------------------------------------------------


@asynccontextmanager
async def server_over_s3(proxy, bucket, tmp_path, *, token=TOKEN):
    put_sites(bucket)
    async with (
        node(proxy, bucket, tmp_path / "mirror") as cache,
        running(tmp_path / "sites", store=cache, admin_token=token) as srv,
    ):
        yield srv, cache


async def test_purge_endpoint_json_form(proxy, bucket, tmp_path):
    async with server_over_s3(proxy, bucket, tmp_path) as (srv, _):
        for path in ("/x", "/x/y", "/xy"):
            assert (await srv.get(path)).status_code == 200
        auth = {"Authorization": f"Bearer {TOKEN}"}
        response = await srv.client.post(
            srv.url + "/__sngin/purge",
            json={"host": "a.test", "path": "/x", "type": "folder"},
            headers=auth,
        )
        assert response.status_code == 200
        assert response.json() == {"purged": 4, "host": "a.test", "path": "/x", "type": "folder"}


async def test_purge_endpoint_seed_form(proxy, bucket, tmp_path):
    async with server_over_s3(proxy, bucket, tmp_path) as (srv, _):
        assert (await srv.get("/x")).status_code == 200
        response = await srv.client.post(
            srv.url + "/__purge/x?type=file",
            headers={"Host": "a.test", "Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200
        assert response.json()["purged"] == 2
        response = await srv.client.post(
            srv.url + "/__purge/?type=folder",
            headers={"Host": "a.test", "Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "status"),
    [({}, 401), ({"Authorization": "Bearer wrong-token-0123456789"}, 401),
     ({"Authorization": f"Basic {TOKEN}"}, 401)],
)  # fmt: skip
async def test_purge_needs_the_token(proxy, bucket, tmp_path, headers, status):
    async with server_over_s3(proxy, bucket, tmp_path) as (srv, _):
        response = await srv.client.post(
            srv.url + "/__sngin/purge", json={"host": "a.test", "path": "/"}, headers=headers
        )
        assert response.status_code == status
        assert response.headers["www-authenticate"] == "Bearer"


async def test_purge_without_a_configured_token_is_403(proxy, bucket, tmp_path):
    async with server_over_s3(proxy, bucket, tmp_path, token=None) as (srv, _):
        response = await srv.client.post(
            srv.url + "/__sngin/purge",
            json={"host": "a.test", "path": "/"},
            headers={"Authorization": "Bearer anything-at-all-12345"},
        )
        assert response.status_code == 403
        assert "SNGIN_ADMIN_TOKEN" in response.json()["error"]


@pytest.mark.parametrize(
    "body",
    [{"path": "/"}, {"host": "a.test", "type": "everything"}, {"host": "1.2.3.4"},
     {"host": "a.test", "path": "/../b.test"}, "not json"],
)  # fmt: skip
async def test_bad_purge_requests_are_400(proxy, bucket, tmp_path, body):
    async with server_over_s3(proxy, bucket, tmp_path) as (srv, _):
        response = await srv.client.post(
            srv.url + "/__sngin/purge",
            content=body.encode() if isinstance(body, str) else None,
            json=None if isinstance(body, str) else body,
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert response.status_code == 400


async def test_cb_query_parameter_through_the_server(proxy, bucket, tmp_path):
    async with server_over_s3(proxy, bucket, tmp_path) as (srv, _):
        assert (await srv.get("/x")).text == "x"
        bucket.put("a.test/x/index.lua", "return request.query['$cb'] .. ' fresh'")
        assert (await srv.get("/x?cb=1")).text == "x"  # bare cb is an ordinary parameter
        assert (await srv.get("/x?%24cb=7")).text == "7 fresh"


def test_settings_carry_the_token():
    from sngin.config import Settings

    settings = Settings.from_env({"SNGIN_ADMIN_TOKEN": TOKEN})
    assert settings.admin_token == TOKEN
    assert TOKEN not in repr(settings)
    assert replace(settings, admin_token=None).admin_token is None


async def test_forgetting_memory_revalidates_but_keeps_the_mirror(proxy, bucket, tmp_path):
    """What the cluster bus does after a gap: nothing stale is served, and an S3 outage still
    finds the mirrored copies."""
    bucket.put("a.test/index.lua", "return 'v1'")
    bucket.put("b.test/index.lua", "return 'b'")
    with trio.fail_after(20):
        async with node(proxy, bucket, tmp_path) as cache:
            await cache.fetch("a.test")
            await cache.fetch("b.test")
            bucket.put("a.test/index.lua", "return 'v2'")
            assert cache.forget_memory() == 2
            assert (await cache.fetch("a.test")).text == b"return 'v2'"  # revalidated
            assert proxy.gets("b.test/index.lua", 304) == 0
            proxy.refuse()
            assert (await cache.fetch("b.test")).text == b"return 'b'"  # from the mirror
