"""Hostile scripts and clients against the real server: none of them may end it."""

from __future__ import annotations

import pytest

from tests.test_server import running


def add_sites(root, scripts: dict[str, str]) -> None:
    for key, source in scripts.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(source)


async def still_serving(srv) -> None:
    """Another tenant is answered: the server survived."""
    response = await srv.get("/", host="b.test")
    assert (response.status_code, response.text) == (200, "root of b")


@pytest.mark.parametrize("status", [100, 101, 102, 103, 199, 600, 99])
async def test_a_status_outside_200_to_599_is_a_500_naming_the_rule(tmp_path, status):
    add_sites(tmp_path, {"a.test/status": f"return {status}, 'x'"})
    async with running(tmp_path) as srv:
        response = await srv.get("/status")
        assert response.status_code == 500
        assert f"status {status} is not an integer from 200 to 599" in response.text
        await still_serving(srv)


@pytest.mark.parametrize("byte", ["\\11", "\\12", "\\27", "\\127", "\\1", "\\r", "\\n", "\\0"])
async def test_header_values_with_control_bytes_are_refused_before_sending(tmp_path, byte):
    add_sites(tmp_path, {"a.test/ctl": f"return 'x', {{['X-Ctl'] = 'a{byte}b'}}"})
    async with running(tmp_path) as srv:
        response = await srv.get("/ctl")
        assert response.status_code == 500
        assert "header X-Ctl contains a control character" in response.text
        await still_serving(srv)


async def test_a_tab_inside_a_header_value_is_fine(tmp_path):
    add_sites(tmp_path, {"a.test/tab": "return 'x', {['X-Tab'] = 'a\\tb'}"})
    async with running(tmp_path) as srv:
        response = await srv.get("/tab")
        assert (response.status_code, response.headers["x-tab"]) == (200, "a\tb")


async def test_the_servers_own_headers_win_over_the_scripts(tmp_path):
    script = """return 'x', {['X-Request-Id'] = 'forged', ['Server-Timing'] = 'forged',
                             Date = 'forged', ['X-Kept'] = 'kept'}"""
    add_sites(tmp_path, {"a.test/own": script})
    async with running(tmp_path) as srv:
        response = await srv.get("/own", headers={"X-Request-Id": "client-id-1"})
        assert response.status_code == 200
        assert response.headers.get_list("x-request-id") == ["client-id-1"]
        assert "forged" not in response.headers.get_list("server-timing")
        assert len(response.headers.get_list("server-timing")) == 1
        assert response.headers.get_list("date") != ["forged"]
        assert response.headers["x-kept"] == "kept"


async def test_an_error_while_sending_ends_only_its_connection():
    """The backstop under the response checks: an app whose response h11 refuses (a 101 with
    no upgrade) loses that connection; the listener keeps serving the next one."""
    from functools import partial

    import httpx
    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from sngin.connection_guard import contain_connection_errors

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        status = 101 if scope["path"] == "/bad" else 200
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    contain_connection_errors()
    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    stop = trio.Event()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, app, config, shutdown_trigger=stop.wait))
            async with httpx.AsyncClient() as client:
                with pytest.raises(httpx.HTTPError):
                    await client.get(binds[0] + "/bad")
                response = await client.get(binds[0] + "/good")
                assert (response.status_code, response.text) == (200, "ok")
            stop.set()
