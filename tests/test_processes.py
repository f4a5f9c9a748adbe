"""`sngin serve --processes N` as real processes: one listener, one node to the operator (stats,
metrics, tails), purges, quarantines and rate limits held across the processes without Redis,
a process that dies started again, and nothing left behind at the end."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import trio

from tests.conftest import TEST_CREDENTIALS
from tests.support import AUTH, TOKEN, serve_until_exit, wait_until_serving

ATTEMPTS = 200  # fresh connections tried before concluding a process never gets one


@dataclass
class Node:
    process: trio.Process
    url: str
    log: bytearray = field(default_factory=bytearray)

    logged: trio.Event = field(default_factory=trio.Event)  # set (and replaced) per chunk

    async def drain(self) -> None:
        """Keep reading stderr (a full pipe would cost log lines), kept for the assertions."""
        assert self.process.stderr is not None
        while chunk := await self.process.stderr.receive_some(65536):
            self.log += chunk
            self.logged.set()
            self.logged = trio.Event()

    async def wait_for_log(self, pattern: bytes, count: int = 1) -> None:
        while len(re.findall(pattern, bytes(self.log))) < count:
            await self.logged.wait()

    async def get(self, path: str = "/", host: str = "hello.localhost") -> httpx.Response:
        """Over a fresh connection: any of the node's processes may accept it."""
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.get(self.url + path, headers={"Host": host})

    async def admin(self, method: str, path: str, **options) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.request(method, self.url + path, headers=AUTH, **options)

    async def stats(self) -> dict:
        answer = await self.admin("GET", "/__sngin/stats")
        assert answer.status_code == 200, answer.text
        return answer.json()

    def access_lines(self) -> list[dict]:
        lines = []
        for raw in bytes(self.log).splitlines():
            if b'"sngin.access"' in raw:
                lines.append(json.loads(raw))
        return lines


def tenant_requests(stats: dict, tenant: str) -> list[int]:
    """Each process's requests of one tenant."""
    rows = sorted(stats["processes"], key=lambda row: row["process"])
    return [row["pool"]["tenants"].get(tenant, {}).get("requests", 0) for row in rows]


def grew(stats: dict, tenant: str, before: list[int]) -> bool:
    """Every process served the tenant since `before`."""
    return all(a > b for a, b in zip(tenant_requests(stats, tenant), before, strict=True))


@asynccontextmanager
async def node(tmp_path: Path, *, processes: int = 2, workers: int = 4, env: dict | None = None):
    environment = {
        **os.environ,
        "SNGIN_ADMIN_TOKEN": TOKEN,
        "SNGIN_WORKERS": str(workers),
        "SNGIN_CODE_DIR": str(tmp_path / "sites"),
        "SNGIN_DATA_PATH": str(tmp_path / "data"),
        "SNGIN_APP_PATH": str(tmp_path / "app"),
        "SNGIN_LOG_FORMAT": "json",
        **(env or {}),
    }
    (tmp_path / "sites").mkdir(exist_ok=True)
    argv = [sys.executable, "-m", "sngin", "serve", "--processes", str(processes)]
    argv += ["--bind", "127.0.0.1:0"]
    process = await trio.lowlevel.open_process(argv, env=environment, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(60):
            url, log = await wait_until_serving(process)
        running = Node(process, url, bytearray(log))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(running.drain)
            yield running
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
            with trio.fail_after(60):
                await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def site(tmp_path: Path, host: str, source: str, config: str | None = None) -> None:
    folder = tmp_path / "sites" / host
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "index.lua").write_text(source)
    if config is not None:
        (folder / "_sngin.json").write_text(config)


async def until_every_process(running: Node, condition, request) -> dict:
    """Make requests (fresh connections) until `condition(stats)` holds; the last stats."""
    for _ in range(ATTEMPTS):
        await request()
        stats = await running.stats()
        if condition(stats):
            return stats
    raise AssertionError(f"not reached in {ATTEMPTS} requests: {stats}")


async def test_two_processes_share_the_listener_and_report_as_one_node(tmp_path):
    site(tmp_path, "hello.localhost", "return 'hello'")
    async with node(tmp_path, processes=2, workers=4) as running:
        bodies = []

        async def hello() -> None:
            bodies.append((await running.get()).text)

        stats = await until_every_process(
            running, lambda s: all(tenant_requests(s, "hello.localhost")), hello
        )
        assert set(bodies) == {"hello"}
        rows = stats["processes"]
        assert [row["process"] for row in rows] == [0, 1]
        assert len({row["pid"] for row in rows}) == 2
        # SNGIN_WORKERS is the node's total, split over the processes.
        assert [row["pool"]["size"] for row in rows] == [2, 2]
        assert stats["pool"]["size"] == stats["pool"]["live"] == 4
        assert len(stats["pool"]["workers"]) == 4
        # Node totals are the processes' figures added up.
        assert sum(tenant_requests(stats, "hello.localhost")) == len(bodies)
        assert stats["pool"]["tenants"]["hello.localhost"]["requests"] == len(bodies)
        metrics = (await running.admin("GET", "/__sngin/metrics")).text
        assert "sngin_workers 4.0" in metrics
        assert (
            f'sngin_requests_total{{status="2xx",tenant="hello.localhost"}} {len(bodies)}.0'
            in metrics
        )
        # Every access-log line says which process wrote it; both did.
        served = {line["process"] for line in running.access_lines()}
        assert served == {0, 1}
        # The site's last minutes (the UI's charts) add up both processes too.
        series = await running.admin("GET", "/__sngin/code/hello.localhost/series")
        assert round(sum(p["rps"] for p in series.json()["points"]) * 10) == len(bodies)
        # ...and so does the sites list's summary, in one report for every site.
        listed = await running.admin("GET", "/__sngin/code", params={"summary": "1"})
        [summary] = [s for s in listed.json()["sites"] if s["host"] == "hello.localhost"]
        assert summary["requests"] == len(bodies)


async def test_a_quarantine_decided_in_one_process_applies_in_all_and_so_does_lifting_it(
    tmp_path,
):
    site(tmp_path, "spin.test", "while true do end")
    env = {"SNGIN_QUARANTINE_STRIKES": "1", "SNGIN_CPU_MS": "50", "SNGIN_QUARANTINE_S": "600"}
    async with node(tmp_path, env=env) as running:
        first = await running.get(host="spin.test")
        assert first.status_code >= 500
        statuses = []

        async def spin() -> None:
            statuses.append((await running.get(host="spin.test")).status_code)

        def both_refused(stats: dict) -> bool:
            rows = stats["processes"]
            return all(
                row["pool"]["tenants"].get("spin.test", {}).get("quarantined_requests", 0)
                for row in rows
            )

        stats = await until_every_process(running, both_refused, spin)
        # The process that did not run the spinner refused it too: it ran it never.
        assert set(statuses) == {503}
        assert stats["pool"]["tenants"]["spin.test"]["cpu_kills"] == 1
        assert [q["host"] for q in stats["quarantined"]] == ["spin.test"]

        site(tmp_path, "spin.test", "return 'calm now'")
        lifted = await running.admin("DELETE", "/__sngin/quarantine/spin.test")
        assert lifted.json() == {"host": "spin.test", "lifted": True}
        before = tenant_requests(stats, "spin.test")
        answers = []

        async def calm() -> None:
            answers.append((await running.get(host="spin.test")).text)

        await until_every_process(
            running,
            lambda s: grew(s, "spin.test", before),
            calm,
        )
        assert set(answers) == {"calm now"}


async def test_a_rate_limit_holds_for_the_node_not_per_process(tmp_path):
    async with node(tmp_path) as running:
        # A burst of 20 concurrent requests per tenant, until one burst reached both processes
        # (which process accepts a connection is the kernel's choice): each tenant's limit
        # (rps 1, so a burst of 2) holds for the node, not per process.
        for attempt in range(10):
            tenant = f"rl{attempt}.test"
            site(tmp_path, tenant, "return 'ok'", config='{"limits": {"rps": 1}}')
            statuses: list[int] = []

            async def one(tenant: str = tenant, statuses: list[int] = statuses) -> None:
                statuses.append((await running.get(host=tenant)).status_code)

            started = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(one)
            elapsed = trio.current_time() - started
            admitted = statuses.count(200)
            # The node's burst once (plus what refilled meanwhile at 1/s).
            assert 2 <= admitted <= 2 + int(elapsed), (admitted, elapsed)
            assert set(statuses) == {200, 429}
            served = {
                line["process"] for line in running.access_lines() if line["tenant"] == tenant
            }
            if served == {0, 1}:
                break
        assert served == {0, 1}, "no burst reached both processes"


async def test_a_tail_shows_the_lines_of_every_process(tmp_path):
    site(tmp_path, "tail.test", "return 'ok'")
    async with node(tmp_path) as running:
        port = int(running.url.rsplit(":", 1)[1])
        tail = await trio.open_tcp_stream("127.0.0.1", port)
        async with tail:
            await tail.send_all(
                b"GET /__sngin/logs?host=tail.test HTTP/1.1\r\nHost: admin\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
            )
            header = await tail.receive_some(65536)
            assert header.startswith(b"HTTP/1.1 200")
            # Every process knows of the tail before the requests (the one that has it says
            # so in its stats, the others forward its tenant's lines to it).
            with trio.fail_after(60):
                while True:
                    rows = (await running.stats())["processes"]
                    tails = [row["live_tails"] for row in rows]
                    if all("tail.test" in t["here"] + t["forwarded"] for t in tails):
                        break
            assert sorted(len(t["here"]) for t in tails) == [0, 1]
            buffer = b""
            processes: list[int] = []
            with trio.fail_after(60):
                for sent in range(1, ATTEMPTS + 1):
                    await running.get(f"/?n={sent}", host="tail.test")
                    while len(events := re.findall(rb"\ndata: (.*)\n", buffer)) < sent:
                        chunk = await tail.receive_some(65536)
                        assert chunk
                        buffer += chunk
                    processes = [json.loads(event)["process"] for event in events]
                    if set(processes) == {0, 1}:
                        break
            # One access line per request, in order, from whichever process served it.
            assert len(processes) == sent
            assert set(processes) == {0, 1}


async def test_a_process_that_dies_is_started_again_and_counters_never_go_back(tmp_path):
    site(tmp_path, "hello.localhost", "return 'hello'")
    async with node(tmp_path) as running:
        stats = await until_every_process(
            running, lambda s: all(tenant_requests(s, "hello.localhost")), running.get
        )
        made = stats["pool"]["tenants"]["hello.localhost"]["requests"]
        victim = stats["processes"][1]
        os.kill(victim["pid"], signal.SIGKILL)
        with trio.fail_after(60):
            await running.wait_for_log(rb'"process": 1, [^\n]*"process 1 of 2 serving"', 2)
        stats = await running.stats()
        row = stats["processes"][1]
        assert row["restarts"] == 1
        assert "error" not in row
        assert row["pid"] != victim["pid"]
        assert (await running.get()).text == "hello"
        metrics = (await running.admin("GET", "/__sngin/metrics")).text
        found = re.search(
            r'sngin_requests_total\{status="2xx",tenant="hello.localhost"\} (\d+)', metrics
        )
        assert found is not None
        # The dead process's requests still count: the counter went up by one, never down.
        assert int(found.group(1)) == made + 1
        assert "sngin_workers 4.0" in metrics
    assert b"process 1 (pid" in running.log
    assert b"was killed by SIGKILL" in running.log


def process_tree(pid: int) -> set[int]:
    """pid's descendants (from /proc)."""
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            found |= {int(child)} | process_tree(int(child))
    return found


async def ended(pid: int) -> None:
    """Until pid (not necessarily this test's child) has ended: its pidfd turns readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        await trio.lowlevel.wait_readable(pidfd)
    finally:
        os.close(pidfd)


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def all_ended(pids: set[int]) -> None:
    async with trio.open_nursery() as nursery:
        for pid in pids:
            nursery.start_soon(ended, pid)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_a_stop_signal_stops_every_process_and_worker(tmp_path, signum):
    site(tmp_path, "hello.localhost", "return 'hello'")
    async with node(tmp_path) as running:
        assert (await running.get()).text == "hello"
        everyone = process_tree(running.process.pid)
        # two server processes, a worker zygote each, four workers
        assert len(everyone) == 2 + 2 + 4
        running.process.send_signal(signum)
        with trio.fail_after(60):
            assert await running.process.wait() == 0
    # All ended and reaped (the parent waits for its processes, and they for their workers).
    assert not [pid for pid in everyone if exists(pid)]


async def test_the_processes_stop_when_their_parent_is_killed(tmp_path):
    site(tmp_path, "hello.localhost", "return 'hello'")
    async with node(tmp_path) as running:
        everyone = process_tree(running.process.pid)
        assert len(everyone) == 2 + 2 + 4  # processes, their worker zygotes, workers
        running.process.kill()
        await running.process.wait()
        with trio.fail_after(60):
            await all_ended(everyone)


def test_a_process_that_cannot_start_stops_the_node(tmp_path):
    """The disk mirror is each process's own: an unusable SNGIN_APP_PATH stops the first
    process at start-up with a configuration error, and the node at once (no retries)."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {
        **TEST_CREDENTIALS,
        "AWS_S3_CODE_PATH": "bucket/prefix",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9",
        "SNGIN_APP_PATH": str(blocker / "below"),
        "SNGIN_ADMIN_TOKEN": TOKEN,
        "SNGIN_DATA_PATH": str(tmp_path / "data"),
        "SNGIN_LOG_FORMAT": "text",
    }
    result = serve_until_exit(env, "--processes", "2", "--bind", "127.0.0.1:0")
    assert result.returncode == 1
    assert "sngin: SNGIN_APP_PATH: cannot use " in result.stderr
    assert "could not start (exited with status 2): stopping" in result.stderr
    assert "starting it again" not in result.stderr


def test_an_unusable_storage_database_stops_the_node_with_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    env = {"SNGIN_DATA_PATH": str(blocker / "below"), "SNGIN_ADMIN_TOKEN": TOKEN}
    result = serve_until_exit(env, "--processes", "2", "--bind", "127.0.0.1:0")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("sngin: cannot open the storage database ")
    )


@pytest.mark.parametrize("value", ["0", "many", "2x"])
def test_a_bad_process_count_is_one_line(value):
    result = serve_until_exit({"SNGIN_PROCESSES": value})
    assert result.returncode == 2
    assert result.stderr.startswith(f"sngin: SNGIN_PROCESSES={value!r}: ")
    assert result.stderr.count("\n") == 1


def test_fewer_workers_than_processes_is_one_line():
    result = serve_until_exit({"SNGIN_ADMIN_TOKEN": TOKEN}, "--processes", "3", "--workers", "2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "sngin: SNGIN_WORKERS=2 is fewer than SNGIN_PROCESSES=3: each server process needs at"
        " least one worker"
    )


async def test_a_purge_sent_to_one_process_reaches_every_process(tmp_path, bucket, s3_endpoint):
    bucket.put("code/s3.test/page/index.lua", "return 'v1'")
    env = {
        **TEST_CREDENTIALS,
        "AWS_S3_CODE_PATH": f"{bucket.name}/code",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "SNGIN_CODE_TTL_S": "3600",  # only a purge makes a process fetch the script again
    }
    async with node(tmp_path, env=env) as running:
        answers = []

        async def page() -> None:
            answers.append((await running.get("/page", host="s3.test")).text)

        stats = await until_every_process(
            running, lambda s: all(tenant_requests(s, "s3.test")), page
        )
        assert set(answers) == {"v1"}
        assert all(row["code_cache"]["entries"] >= 1 for row in stats["processes"])

        bucket.put("code/s3.test/page/index.lua", "return 'v2'")
        purged = await running.admin(
            "POST", "/__sngin/purge", json={"host": "s3.test", "path": "/page"}
        )
        assert purged.status_code == 200
        before = tenant_requests(stats, "s3.test")
        answers.clear()
        await until_every_process(
            running,
            lambda s: grew(s, "s3.test", before),
            page,
        )
        # Whichever process answers, the new version: the purge reached them all.
        assert set(answers) == {"v2"}
    # Each process mirrored the script in a folder of its own: no two write one file.
    (mirror,) = (tmp_path / "app" / "mirror").iterdir()
    first = {path.name for path in mirror.glob("*.lua")}
    assert first  # the script (and the absence of its tenant's _sngin.json)
    assert {path.name for path in (mirror / "process-1").glob("*.lua")} == first


async def test_with_redis_every_process_joins_the_cluster_bus(
    tmp_path, bucket, s3_endpoint, redis_url
):
    """With SNGIN_REDIS_URL each process is a member of the cluster on its own: a purge sent to
    one reaches the others through Redis, and the registry lists every process."""
    bucket.put("code/s3.test/page/index.lua", "return 'v1'")
    env = {
        **TEST_CREDENTIALS,
        "AWS_S3_CODE_PATH": f"{bucket.name}/code",
        "AWS_ENDPOINT_URL_S3": s3_endpoint,
        "SNGIN_CODE_TTL_S": "3600",
        "SNGIN_REDIS_URL": redis_url,
    }
    async with node(tmp_path, env=env) as running:
        answers = []

        async def page() -> None:
            answers.append((await running.get("/page", host="s3.test")).text)

        stats = await until_every_process(
            running, lambda s: all(tenant_requests(s, "s3.test")), page
        )
        assert set(answers) == {"v1"}
        assert all(row["cluster_bus"]["connected"] for row in stats["processes"])
        with trio.fail_after(30):
            while True:  # each process's first heartbeat
                cluster = (await running.admin("GET", "/__sngin/stats?cluster=1")).json()
                nodes = cluster["cluster"]["nodes"]
                if len(nodes) == 2:
                    break
        assert sorted(n["process"] for n in nodes) == ["0/2", "1/2"]

        bucket.put("code/s3.test/page/index.lua", "return 'v2'")
        purged = await running.admin(
            "POST", "/__sngin/purge", json={"host": "s3.test", "path": "/page"}
        )
        assert purged.status_code == 200
        before = tenant_requests(stats, "s3.test")
        answers.clear()
        await until_every_process(running, lambda s: grew(s, "s3.test", before), page)
        assert set(answers) == {"v2"}
        stats = await running.stats()
        # Through Redis: one process published the purge, the other received it.
        buses = sorted((r["cluster_bus"]["published"], r["cluster_bus"]["received"])
                       for r in stats["processes"])  # fmt: skip
        assert buses == [(0, 1), (1, 0)]


async def test_both_processes_write_the_one_storage_database(tmp_path):
    site(tmp_path, "store.test", "storage['k' .. request.query.n] = 'v' return 'stored'")
    async with node(tmp_path) as running:
        made = 0

        async def store() -> None:
            nonlocal made
            made += 1
            assert (await running.get(f"/?n={made}", host="store.test")).text == "stored"

        await until_every_process(running, lambda s: all(tenant_requests(s, "store.test")), store)
        listed = await running.admin("GET", "/__sngin/storage/store.test?limit=1000")
        keys = sorted(row["key"] for row in listed.json()["keys"])
        assert keys == sorted(f"k{n}" for n in range(1, made + 1))


async def test_the_admin_listener_is_shared_too(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        admin_port = probe.getsockname()[1]
    async with node(tmp_path, env={"SNGIN_ADMIN_BIND": f"127.0.0.1:{admin_port}"}) as running:
        async with httpx.AsyncClient(timeout=30) as client:
            stats = await client.get(f"http://127.0.0.1:{admin_port}/__sngin/stats", headers=AUTH)
            found = re.search(rb"serving .*? on (http://127\.0\.0\.1:\d+)", bytes(running.log))
            assert found is not None
            public_url = found.group(1).decode()
            assert public_url != f"http://127.0.0.1:{admin_port}"
            public = await client.get(public_url + "/__sngin/stats", headers=AUTH)
        assert [row["process"] for row in stats.json()["processes"]] == [0, 1]
        assert public.status_code == 404  # the admin API is on its own listener only


def test_a_process_that_keeps_failing_at_start_up_stops_the_node_after_five_tries(tmp_path):
    """Not a configuration error (say, a crash): tried again with backoff, five times in a row,
    then the node stops."""
    (tmp_path / "sitecustomize.py").write_text(
        "import os, sys\nif '--process' in sys.argv: os._exit(3)\n"
    )
    env = {
        "PYTHONPATH": str(tmp_path),
        "SNGIN_ADMIN_TOKEN": TOKEN,
        "SNGIN_DATA_PATH": str(tmp_path / "data"),
        "SNGIN_LOG_FORMAT": "text",
    }
    result = serve_until_exit(env, "--processes", "2", "--bind", "127.0.0.1:0")
    assert result.returncode == 1
    assert "could not start (exited with status 3): stopping" in result.stderr
    retried = re.findall(r"process (\d) \(pid \d+\) exited with status 3: starting it again "
                         r"in ([\d.]+) s", result.stderr)  # fmt: skip
    first = [float(delay) for index, delay in retried if index == "0"]
    assert first == [0.5, 1.0, 2.0, 4.0]


async def test_the_nodes_tail_cap_is_counted_across_processes_by_the_parent(tmp_path):
    site(tmp_path, "tail.test", "return 'ok'")
    async with node(tmp_path, env={"SNGIN_MAX_TAILS": "2"}) as running:
        port = int(running.url.rsplit(":", 1)[1])

        async def open_tail(stack: AsyncExitStack) -> tuple[trio.SocketStream, bytes]:
            """A tail connection (closed with the stack) and its answer's head, or its whole
            answer when it is refused."""
            stream = await stack.enter_async_context(await trio.open_tcp_stream("127.0.0.1", port))
            await stream.send_all(
                b"GET /__sngin/logs?host=tail.test HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n"
            )
            seen = b""
            while not answered(seen):
                chunk = await stream.receive_some(65536)
                assert chunk, seen
                seen += chunk
            return stream, seen

        def answered(seen: bytes) -> bool:
            head, found, body = seen.partition(b"\r\n\r\n")
            if not found or head.startswith(b"HTTP/1.1 200"):
                return bool(found)  # a tail: its head is enough
            length = re.search(rb"content-length: (\d+)", head.lower())
            return length is not None and len(body) >= int(length.group(1))

        async def holders() -> list[int]:
            rows = (await running.stats())["processes"]
            return sorted(len(row["live_tails"]["here"]) for row in rows)

        with trio.fail_after(60):
            async with AsyncExitStack() as stack:
                _, head = await open_tail(stack)
                assert head.startswith(b"HTTP/1.1 200"), head
                # A second tail on the other process (a fresh connection may land on either).
                for _ in range(ATTEMPTS):
                    second, head = await open_tail(stack)
                    assert head.startswith(b"HTTP/1.1 200"), head
                    if await holders() == [1, 1]:
                        break
                    await second.aclose()
                    while await holders() != [0, 1]:  # until the parent heard it closed
                        pass
                assert await holders() == [1, 1]
                # Each process holds one: only the parent's count refuses a third, wherever it
                # lands.
                for _ in range(4):
                    _, answer = await open_tail(stack)
                    assert answer.startswith(b"HTTP/1.1 503"), answer
                    assert b"(SNGIN_MAX_TAILS)" in answer


async def test_with_two_processes_one_of_them_runs_the_schedule(tmp_path):
    """Scheduled runs come from the node's first process only: each tick runs once."""
    cron = {"cron": [{"schedule": "* * * * * *", "path": "/"}]}
    site(tmp_path, "p.test", "storage.n = (storage.n or 0) + 1 return 'ran'", json.dumps(cron))
    async with node(tmp_path, env={"SNGIN_CRON_MIN_INTERVAL_S": "1"}) as running:
        with trio.fail_after(40):
            await running.wait_for_log(rb'"method":"CRON"', count=10)
        runs = [line for line in running.access_lines() if line["method"] == "CRON"]
        answer = await running.admin("GET", "/__sngin/storage/p.test/value", params={"key": "n"})
    assert {line.get("process") for line in runs} == {0}
    assert {line["status"] for line in runs} == {200}
    assert answer.status_code == 200
    assert len(runs) <= int(float(answer.content)) <= len(runs) + 2  # none twice
