"""`sngin serve` as a real process: serves the folder, stops on SIGTERM, leaves no worker behind."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import trio

from tests.support import serve_until_exit, wait_until_serving


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.update(int(p) for p in text.split())
    return found


def workers_of(server: int) -> set[int]:
    """The workers of a server process: the children of its one child, the worker zygote."""
    (zygote,) = children_of(server)
    return children_of(zygote)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_serve_stops_on_signal_and_leaves_no_process(tmp_path, signum):
    site = tmp_path / "hello.localhost"
    site.mkdir()
    (site / "index.lua").write_text("return 'hi from serve'")
    env = {**os.environ, "SNGIN_CODE_DIR": str(tmp_path), "SNGIN_WORKERS": "2"}
    env.pop("SNGIN_ADMIN_TOKEN", None)
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(argv, env=env, stderr=subprocess.PIPE)
        try:
            url, log = await wait_until_serving(process)
            # No SNGIN_ADMIN_TOKEN: one is generated and shown once.
            token = re.search(rb"admin token for this run [^:]*: ([\w-]+)", log)
            assert token is not None
            async with httpx.AsyncClient() as client:
                response = await client.get(url + "/", headers={"Host": "hello.localhost"})
                auth = {"Authorization": b"Bearer " + token.group(1)}
                stats = await client.get(url + "/__sngin/stats", headers=auth)
                unauthorized = await client.get(url + "/__sngin/stats")
            assert response.text == "hi from serve"
            assert stats.status_code == 200
            assert unauthorized.status_code == 401
            workers = workers_of(process.pid)
            assert len(workers) == 2
            workers |= children_of(process.pid)  # and the zygote they were forked from
            process.send_signal(signum)
            assert await process.wait() == 0
            while chunk := await process.stderr.receive_some(4096):
                log += chunk
            # Every request's access-log line reached stderr before the server stopped.
            request_id = response.headers["x-request-id"].encode()
            lines = [json.loads(line) for line in log.splitlines() if request_id in line]
            assert [(r["tenant"], r["status"], r["bytes"]) for r in lines] == [
                ("hello.localhost", 200, len("hi from serve"))
            ]
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_serve_rejects_a_bad_setting_with_one_line():
    result = serve_until_exit({"SNGIN_TIMEOUT_MS": "soon"})
    assert result.returncode == 2
    assert result.stderr == "sngin: SNGIN_TIMEOUT_MS='soon': not an integer\n"


def test_unusable_app_path_stops_start_up_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {
        "AWS_S3_CODE_PATH": "bucket/prefix",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SNGIN_APP_PATH": str(blocker / "below"),
    }
    result = serve_until_exit(env, "--bind", "127.0.0.1:0")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sngin: SNGIN_APP_PATH: cannot use ")


SECRET = "s3cr3t-in-a-query-0042"


@pytest.mark.parametrize("log_format", ["json", "text"])
async def test_one_log_format_with_a_time_on_every_line_and_no_secret(
    tmp_path, upstream, log_format
):
    """A script sends its API key in a query string: no line of the server log shows it (not
    httpx's request line, not at debug level), and every line has the chosen format."""
    site = tmp_path / "a.test"
    site.mkdir()
    url = upstream.url(f"/plain?key={SECRET}")
    (site / "index.lua").write_text(f"print('calling') return http.request('{url}').content")
    env = {
        **os.environ,
        "SNGIN_CODE_DIR": str(tmp_path),
        "SNGIN_WORKERS": "2",
        "SNGIN_EGRESS_ALLOW": "127.0.0.1",
        "SNGIN_LOG_FORMAT": log_format,
        "SNGIN_LOG_LEVEL": "debug",
        "SNGIN_ADMIN_TOKEN": "test-admin-token-0123456789",
    }
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    with trio.fail_after(30):
        process = await trio.lowlevel.open_process(argv, env=env, stderr=subprocess.PIPE)
        try:
            base, log = await wait_until_serving(process)
            async with httpx.AsyncClient() as client:
                response = await client.get(base + "/", headers={"Host": "a.test"})
            assert response.status_code == 200
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
            while chunk := await process.stderr.receive_some(4096):
                log += chunk
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    assert upstream.requests, "the script's request reached the upstream"
    text = log.decode()
    assert SECRET not in text
    lines = text.splitlines()
    assert any("calling" in line for line in lines)  # the script's print is in the log
    assert any(response.headers["x-request-id"] in line for line in lines)  # the access line
    for line in lines:
        if log_format == "json":
            assert "time" in json.loads(line), line
        else:
            assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} [A-Z]+ [\w.]+: ", line), line


def test_a_port_in_use_is_one_line():
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        token = {"SNGIN_ADMIN_TOKEN": "test-admin-token-0123456789"}
        result = serve_until_exit(token, "--bind", f"127.0.0.1:{port}")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"sngin: cannot listen on 127.0.0.1:{port}: address already in use"
    assert "Traceback" not in result.stderr


async def test_a_stderr_reader_that_stalls_never_stalls_the_server(tmp_path):
    """stderr is a pipe nobody reads: its 64 KiB fill after ~250 access-log lines. Log lines
    wait in the writer thread's queue instead of blocking the event loop, so every request is
    still answered (before, the server froze at the first write that did not fit)."""
    site = tmp_path / "a.test"
    site.mkdir()
    (site / "index.lua").write_text("return 'ok'")
    env = {**os.environ, "SNGIN_CODE_DIR": str(tmp_path), "SNGIN_WORKERS": "2",
           "SNGIN_DATA_PATH": str(tmp_path / "data")}  # fmt: skip
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(argv, env=env, stderr=subprocess.PIPE)
        try:
            url, _ = await wait_until_serving(process)  # and from now on, stderr is not read
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(1500):
                    response = await client.get(url + "/", headers={"Host": "a.test"})
                    assert response.text == "ok"
        finally:
            process.kill()
            await process.wait()
