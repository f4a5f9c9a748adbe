"""Client connections are capped below the file-descriptor limit, so slow clients can never take
the descriptors the server needs for itself (a worker replacement, above all)."""

from __future__ import annotations

import os
import re
import resource
import signal
import subprocess
import sys

import pytest
import trio

from sngin.config import HttpSettings, OutboundSettings, PoolSettings, Settings
from sngin.edge.descriptors import RESERVE_FIXED, RESERVE_PER_WORKER, connection_limit
from sngin.errors import ConfigError
from tests.support import wait_until_serving

from .test_serve_process import workers_of


def limited_descriptors(count: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))

    return apply


def test_the_default_cap_is_what_the_descriptors_leave_after_the_reserve():
    settings = Settings(pool=PoolSettings(size=4), outbound=OutboundSettings(connections=50))
    reserve = RESERVE_FIXED + 4 * RESERVE_PER_WORKER + 50
    assert connection_limit(settings, 4096) == 4096 - reserve
    chosen = Settings(pool=PoolSettings(size=4), http=HttpSettings(max_connections=100))
    assert connection_limit(chosen, 4096) == 100
    with pytest.raises(ConfigError, match="SNGIN_MAX_CONNECTIONS=5000 needs more file"):
        connection_limit(Settings(http=HttpSettings(max_connections=5000)), 4096)
    with pytest.raises(ConfigError, match="only 200 file descriptors"):
        connection_limit(Settings(pool=PoolSettings(size=4)), 200)


def test_a_cap_the_descriptors_cannot_honour_stops_start_up_with_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"],
        env={**os.environ, "SNGIN_CODE_DIR": str(tmp_path), "SNGIN_MAX_CONNECTIONS": "5000"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        preexec_fn=limited_descriptors(1024),
    )
    assert result.returncode != 0
    assert "SNGIN_MAX_CONNECTIONS=5000 needs more file descriptors" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_soft_descriptor_limit_is_raised_to_the_hard_one():
    code = (
        "import resource; from sngin.edge.descriptors import raise_descriptor_limit; "
        "print(raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )

    def soft_below_hard() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 2048))

    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        preexec_fn=soft_below_hard,
    )  # fmt: skip
    assert result.stdout.split() == ["2048", "2048"]


async def test_slow_clients_cannot_take_the_descriptors_a_worker_replacement_needs(tmp_path):
    """256 descriptors, 300 clients that never finish their headers: the server takes 96 of them
    (256 minus its reserve of 160) and answers the rest 503, so when a worker is killed its
    replacement still starts, and the server serves on once the clients are gone. (Without the
    cap, accept() took every descriptor, the replacement failed five times and the server
    exited.)"""
    site = tmp_path / "a.test"
    site.mkdir()
    (site / "index.lua").write_text("return 'still here'")
    env = {**os.environ, "SNGIN_CODE_DIR": str(tmp_path), "SNGIN_WORKERS": "2",
           "SNGIN_MAX_WORKERS": "2", "SNGIN_OUTBOUND_CONNECTIONS": "20",
           "SNGIN_LOG_FORMAT": "text"}  # fmt: skip
    argv = [sys.executable, "-m", "sngin", "serve", "--bind", "127.0.0.1:0"]
    with trio.fail_after(60):
        process = await trio.lowlevel.open_process(
            argv, env=env, stderr=subprocess.PIPE, preexec_fn=limited_descriptors(256)
        )
        clients: list[trio.SocketStream] = []
        try:
            url, log = await wait_until_serving(process)
            assert b"client connections: at most 96" in log
            port = int(url.rsplit(":", 1)[1])
            refused = 0
            for _ in range(300):
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                await stream.send_all(b"GET / HTTP/1.1\r\nHost: a.test\r\n")  # never finished
                clients.append(stream)
            for stream in clients[96:]:
                answer = await stream.receive_some(4096)
                refused += answer.startswith(b"HTTP/1.1 503 ")
            assert refused == 300 - 96
            victim = min(workers_of(process.pid))
            os.kill(victim, signal.SIGKILL)
            while not re.search(rb"worker \d+ started", log):
                chunk = await process.stderr.receive_some(4096)
                assert chunk, log.decode()  # the server must not exit
                log += chunk
            # The first client finishes its request (within the 5 s header timeout).
            first = clients[0]
            await first.send_all(b"Connection: close\r\n\r\n")
            answer = b""
            while chunk := await first.receive_some(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert answer.endswith(b"still here")
            assert process.returncode is None
        finally:
            for stream in clients:
                await stream.aclose()
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                await process.wait()


def test_the_descriptor_reserve_counts_every_worker_the_pool_may_grow_to():
    from dataclasses import replace

    from sngin.config import PoolSettings, Settings
    from sngin.edge.descriptors import RESERVE_PER_WORKER, reserve

    fixed = Settings(pool=PoolSettings(size=4))
    elastic = replace(fixed, pool=PoolSettings(size=4, max_workers=64))
    assert reserve(elastic) - reserve(fixed) == RESERVE_PER_WORKER * 60
