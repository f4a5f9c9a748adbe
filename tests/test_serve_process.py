"""`sngin serve` as a real process: serves the folder, stops on SIGTERM, leaves no worker behind."""

from __future__ import annotations

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
            async with httpx.AsyncClient() as client:
                response = await client.get(url + "/", headers={"Host": "hello.localhost"})
            assert response.text == "hi from serve"
            workers = children_of(process.pid)
            assert len(workers) == 2
            process.send_signal(signum)
            assert await process.wait() == 0
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
