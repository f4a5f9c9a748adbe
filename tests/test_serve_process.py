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


def children_of(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.update(int(p) for p in text.split())
    return found


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
            log = b""
            while not (match := re.search(rb"serving .* on (http://127\.0\.0\.1:\d+)", log)):
                chunk = await process.stderr.receive_some(4096)
                assert chunk, log.decode()
                log += chunk
            url = match.group(1).decode()
            # No SNGIN_ADMIN_TOKEN: one is generated and printed once.
            token = re.search(rb"admin token for this run [^:]*: (\S+)", log)
            assert token is not None
            async with httpx.AsyncClient() as client:
                response = await client.get(url + "/", headers={"Host": "hello.localhost"})
                auth = {"Authorization": b"Bearer " + token.group(1)}
                stats = await client.get(url + "/__sngin/stats", headers=auth)
                unauthorized = await client.get(url + "/__sngin/stats")
            assert response.text == "hi from serve"
            assert stats.status_code == 200
            assert unauthorized.status_code == 401
            workers = children_of(process.pid)
            assert len(workers) == 2
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
    result = subprocess.run(
        [sys.executable, "-m", "sngin", "serve"],
        env={**os.environ, "SNGIN_TIMEOUT_MS": "soon"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "sngin: SNGIN_TIMEOUT_MS='soon': not an integer\n"


def test_unusable_app_path_stops_start_up_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {
        **os.environ,
        "AWS_S3_CODE_PATH": "bucket/prefix",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "SNGIN_APP_PATH": str(blocker / "below"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sngin: SNGIN_APP_PATH: cannot use ")
