"""What an operator sees and does: the admin CLI, quarantine, JSON errors, health, logs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import httpx
import pytest
import trio

from sngin.cli import main
from sngin.client.remote import admin_url, short_id
from tests.support import TOKEN, running, wait_until_serving

AUTH = {"Authorization": f"Bearer {TOKEN}"}


# --- the admin CLI ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "env", "expected"),
    [
        (None, {}, "http://127.0.0.1:8080"),
        (None, {"SNGIN_BIND": "127.0.0.1:9000"}, "http://127.0.0.1:9000"),
        (None, {"SNGIN_BIND": "0.0.0.0:9000"}, "http://127.0.0.1:9000"),
        (None, {"SNGIN_BIND": "[::]:9000"}, "http://[::1]:9000"),
        (None, {"SNGIN_BIND": ":1", "SNGIN_ADMIN_BIND": "127.0.0.1:9001"}, "http://127.0.0.1:9001"),
        ("10.0.0.5:8080", {"SNGIN_BIND": "127.0.0.1:1"}, "http://10.0.0.5:8080"),
        ("https://admin.example/", {}, "https://admin.example"),
    ],
)
def test_the_admin_url_defaults_to_where_the_server_listens(given, env, expected):
    assert admin_url(given, env) == expected


def test_the_help_names_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["stats", "--help"], env={})
    text = " ".join(capsys.readouterr().out.split())
    assert "SNGIN_ADMIN_BIND, else SNGIN_BIND, else 127.0.0.1:8080" in text
    assert "--token" in text


async def test_token_flag_url_without_scheme_and_purge_of_a_whole_tenant(tmp_path, capsys):
    (tmp_path / "a.test" / "deep" / "er").mkdir(parents=True)
    (tmp_path / "a.test" / "deep" / "er" / "index.lua").write_text("return 'deep'")
    async with running(tmp_path, admin_token=TOKEN) as srv:
        for path in ("/", "/echo", "/deep/er"):
            assert (await srv.get(path)).status_code == 200
        assert (await srv.get("/", host="b.test")).status_code == 200
        address = srv.url.removeprefix("http://")
        argv = ["purge", "a.test", "--url", address, "--token", TOKEN, "--json"]
        assert await trio.to_thread.run_sync(main, argv, {}) == 0
        answer = json.loads(capsys.readouterr().out)
        # The whole tenant: its three scripts, not only "/" (b.test's copy stays).
        assert (answer["path"], answer["type"], answer["purged"]) == ("/", "folder", 3)
        argv = ["purge", "a.test", "/echo", "--url", address, "--token", TOKEN, "--json"]
        assert await trio.to_thread.run_sync(main, argv, {}) == 0
        assert json.loads(capsys.readouterr().out)["type"] == "file"


async def test_no_traceback_when_the_output_is_closed(tmp_path):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        await srv.get("/")
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `| head` that has already exited
        argv = [sys.executable, "-m", "sngin", "stats", "--url", srv.url, "--token", TOKEN]
        try:
            result = await trio.run_process(
                argv, stdout=write_end, capture_stderr=True, check=False
            )
        finally:
            os.close(write_end)
    assert result.returncode == 1
    assert b"Traceback" not in result.stderr
    assert b"BrokenPipe" not in result.stderr


def test_log_lines_show_the_part_of_the_id_that_differs():
    from sngin.observe.tracing import RequestIds

    ids = RequestIds()
    first, second = ids.of(()), ids.of(())
    assert first[:8] == second[:8]  # a per-server prefix...
    assert short_id(first) != short_id(second)  # ...so the tail shows the end


# --- quarantine ------------------------------------------------------------------------------


async def test_quarantine_is_visible_and_can_be_lifted(tmp_path, capsys):
    (tmp_path / "a.test" / "spin").mkdir(parents=True)
    (tmp_path / "a.test" / "spin" / "index.lua").write_text("while true do end")
    pool = {"quarantine_strikes": 2, "quarantine_s": 600.0}
    async with running(tmp_path, admin_token=TOKEN, cpu_ms=50, pool=pool) as srv:
        for _ in range(2):
            assert (await srv.get("/spin")).status_code == 504
        assert (await srv.get("/")).status_code == 503
        stats = (await srv.client.get(srv.url + "/__sngin/stats", headers=AUTH)).json()
        [paused] = stats["quarantined"]
        assert paused["host"] == "a.test"
        assert 590 < paused["remaining_s"] <= 600
        assert paused["until"][:4].isdigit()
        argv = ["stats", "--url", srv.url, "--token", TOKEN]
        assert await trio.to_thread.run_sync(main, argv, {}) == 0
        assert "QUARANTINED" in capsys.readouterr().out
        argv = ["quarantine", "--lift", "a.test", "--url", srv.url, "--token", TOKEN, "--json"]
        assert await trio.to_thread.run_sync(main, argv, {}) == 0
        assert json.loads(capsys.readouterr().out) == {"host": "a.test", "lifted": True}
        assert (await srv.get("/")).status_code == 200
        listed = await srv.client.get(srv.url + "/__sngin/quarantine", headers=AUTH)
        assert listed.json() == {"quarantined": []}
        again = await srv.client.delete(srv.url + "/__sngin/quarantine/a.test", headers=AUTH)
        assert again.json() == {"host": "a.test", "lifted": False}


# --- admin answers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/__sngin/nope", 404),
        ("GET", "/__sngin/", 404),
        ("POST", "/__sngin/stats", 405),
        ("GET", "/__sngin/purge", 405),
        ("PUT", "/__purge/x", 405),
    ],
)
async def test_unknown_admin_paths_and_methods_are_json(tmp_path, method, path, status):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        response = await srv.client.request(method, srv.url + path, headers=AUTH)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"].startswith(str(status))
    if status == 405:
        assert "GET" in response.headers["allow"] or "POST" in response.headers["allow"]


async def test_health_does_not_build_statistics(tmp_path, monkeypatch):
    """/__sngin/health is public and polled: with 10,000 tenants known it must not walk them
    or read /proc for every worker (statistics() does both)."""
    from sngin.workers.pool import Pool

    async with running(tmp_path, admin_token=TOKEN) as srv:
        for index in range(10_000):
            srv.pool.accounting.counters(f"t{index}.test")

        def forbidden(self):
            raise AssertionError("health built the full statistics")

        monkeypatch.setattr(Pool, "statistics", forbidden)
        health = await srv.client.get(srv.url + "/__sngin/health")
        ready = await srv.client.get(srv.url + "/__sngin/ready", headers=AUTH)
    assert (health.status_code, health.json()) == (200, {"status": "ok", "workers": 2})
    assert ready.status_code == 200


# --- sngin logs against a real server ----------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code", "message"),
    [
        (signal.SIGTERM, 0, "sngin: the server ended the log (it is shutting down)\n"),
        (signal.SIGKILL, 1, "sngin: the server went away\n"),
    ],
    ids=["shutdown", "killed"],
)
async def test_an_open_follower_neither_delays_shutdown_nor_sees_a_traceback(
    tmp_path, signum, code, message
):
    site = tmp_path / "a.test"
    site.mkdir()
    (site / "index.lua").write_text("print('hello follower') return 'ok'")
    env = {**os.environ, "SNGIN_CODE_DIR": str(tmp_path), "SNGIN_WORKERS": "2",
           "SNGIN_ADMIN_TOKEN": TOKEN}  # fmt: skip
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    with trio.fail_after(30):
        server = await trio.lowlevel.open_process(argv, env=env, stderr=subprocess.PIPE)
        follower = None
        try:
            url, _ = await wait_until_serving(server)
            follow = [sys.executable, "-m", "sngin", "logs", "a.test", "--url", url]
            follower = await trio.lowlevel.open_process(
                follow, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )
            seen = b""
            async with httpx.AsyncClient() as client:
                while b"hello follower" not in seen:  # the follower is attached
                    await client.get(url + "/", headers={"Host": "a.test"})
                    with trio.move_on_after(0.5):
                        seen += await follower.stdout.receive_some(4096)
            server.send_signal(signum)
            with trio.fail_after(5):  # well inside the 10 s grace an open stream would hold
                assert await server.wait() == (0 if signum == signal.SIGTERM else -signum)
                assert await follower.wait() == code
            errors = b""
            while chunk := await follower.stderr.receive_some(4096):
                errors += chunk
        finally:
            for process in (server, follower):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()
    assert errors.decode() == message


async def test_every_command_prints_a_line_or_a_table_and_json_only_with_the_flag(tmp_path, capsys):
    async with running(tmp_path, admin_token=TOKEN) as srv:
        remote = ["--url", srv.url, "--token", TOKEN]

        async def cli(*words: str) -> int:
            return await trio.to_thread.run_sync(main, [*words, *remote], {})

        assert await cli("purge", "a.test") == 0
        assert capsys.readouterr().out.startswith("purged ")
        assert await cli("quarantine", "--lift", "a.test") == 0
        assert capsys.readouterr().out == "a.test was not quarantined\n"
        assert await cli("token", "create", "a.test") == 0
        made = capsys.readouterr().out.strip()
        assert await cli("token", "list") == 0
        token_id = capsys.readouterr().out.split()[0]
        assert await cli("token", "revoke", token_id) == 0
        assert capsys.readouterr().out == f"revoked token {token_id} (for a.test)\n"
        assert made.startswith("sngt_")
        assert await cli("token", "list") == 0
        assert capsys.readouterr().out == "no tenant tokens\n"
        # An error: one line on stderr, exit 1; its JSON only with --json.
        assert await cli("token", "revoke", "nope") == 1
        captured = capsys.readouterr()
        assert (captured.out, captured.err) == ("", "sngin: no token nope (404)\n")
        assert await cli("token", "revoke", "nope", "--json") == 1
        assert json.loads(capsys.readouterr().out) == {"error": "no token nope"}
