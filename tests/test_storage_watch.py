"""A Redis that does not answer is said once, in sngin's own words, by a real `sngin serve`: one
line at start, one when it answers again, the reason in /__sngin/ready meanwhile (still 200),
and none of the client library's retry chatter."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import httpx
import trio

from tests.support import TOKEN, free_port, redis_server_process, wait_until_serving


async def test_an_unreachable_redis_is_one_line_then_one_when_it_is_back(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "SNGIN_ADMIN_TOKEN": TOKEN,
        "SNGIN_REDIS_URL": f"redis://:hunter2-secret@127.0.0.1:{port}/0",
        "SNGIN_DATA_PATH": str(tmp_path / "data"),
        "SNGIN_APP_PATH": str(tmp_path / "app"),
        "SNGIN_WORKERS": "2",
    }
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    process = await trio.lowlevel.open_process(argv, env=env, stderr=subprocess.PIPE)
    down = rb"storage: Redis at redis://:\*\*\*@127\.0\.0\.1:\d+/0: connection refused; scripts get"
    try:
        with trio.fail_after(60):
            url, log = await wait_until_serving(process)
            while not re.search(down, log):
                log += await process.stderr.receive_some(65536)
            async with httpx.AsyncClient() as client:
                ready = await client.get(url + "/__sngin/ready",
                                         headers={"Authorization": f"Bearer {TOKEN}"})  # fmt: skip
            assert ready.status_code == 200
            answer = ready.json()
            assert answer["ready"] is True
            assert answer["storage"] == "Redis unreachable: connection refused"
            with redis_server_process(port):
                while b"answers again" not in log:
                    log += await process.stderr.receive_some(65536)
    finally:
        process.terminate()
        with trio.move_on_after(30):
            while chunk := await process.stderr.receive_some(65536):
                log += chunk
        await process.wait()
    assert len(re.findall(down, log)) == 1  # said once, not once per attempt
    assert len(re.findall(rb"storage: Redis at [^\n]* answers again", log)) == 1
    assert b"Retry attempt" not in log  # the library's own lines are held at WARNING
    assert b"hunter2-secret" not in log  # the password never reaches the log
