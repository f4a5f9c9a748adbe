"""What the tests share: a real server on loopback (`running`), the admin token, S3 stores and
code caches over the counting proxy, a node's code path with its disk mirror, and helpers for
`sngin serve` subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from contextlib import asynccontextmanager, contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING

import httpx
import pytest
import trio
import trio.lowlevel
from botocore.credentials import Credentials

from sandbox.protocol import Call, CallResult, HttpResult, Job, Request
from sngin.calls.mail import Mailer
from sngin.calls.outbound import open_outbound, system_resolver
from sngin.code.cache import CodeCache
from sngin.code.local_store import LocalStore
from sngin.code.mirror import DiskMirror
from sngin.code.s3_store import Endpoint, S3Store
from sngin.config import (
    Bind,
    CacheSettings,
    HttpSettings,
    PoolSettings,
    S3Settings,
    Settings,
    StorageSettings,
)
from sngin.limits import Limits
from sngin.names import is_config_key
from sngin.observe.observer import Observer
from sngin.server import (
    assemble_deps,
    attach_cluster_bus,
    code_files_for,
    default_limits,
    pool_config,
    serve_app,
)
from sngin.storage.opening import open_tenant_storage
from sngin.tenants.config import TenantConfigs
from sngin.tenants.egress import EgressPolicy
from sngin.workers.pool import open_pool

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOOPBACK_ONLY = EgressPolicy.parse(["127.0.0.1"])
# Fast S3 settings for tests: retries and deadlines measured in fractions of a second.
MIRROR_FAST = {"attempt_timeout_s": 0.3, "deadline_s": 1.0, "max_attempts": 2}


def add_sites(root: Path, scripts: dict[str, str]) -> None:
    """<root>/<key>/index.lua for each key."""
    for key, source in scripts.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(source)


# --- a real server on loopback ------------------------------------------------------------------


SITES = {
    "a.test": "return 'root of a'",
    "a.test/echo": """
        return {
          method = request.method, path = request.path, q = request.query.q,
          ua = request.headers['user-agent'], payload = request.body, host = request.host,
          remote = request.remote_addr, scheme = request.scheme, form = request.form,
        }
    """,
    "a.test/forms": """
        return {
          get = function() return 'got' end,
          post = function() return 201, 'posted', {['X-Made'] = 'yes'} end,
        }
    """,
    "a.test/response": (
        "return {status = 418, body = 'teapot', headers = {['Set-Cookie'] = {'a=1', 'b=2'}}}"
    ),
    "a.test/err": "local t = nil\nreturn t.x",
    "a.test/size": "return tostring(#request.body) .. ' ' .. request.body:sub(-5)",
    "a.test/framing": "return 'hello', {['Content-Length'] = '3', Connection = 'close'}",
    "a.test/bad": "return 'x', {['X-Bad'] = 'a\\r\\nb'}",
    "a.test/spin": "while true do end",
    "a.test/busy": "local t = os.clock() while os.clock() - t < 0.3 do end return 'finished'",
    "a.test/printer": "print('hello from the script') return 'printed'",
    "a.test/globals": "local before = tostring(marker) marker = 'a' return before",
    "b.test": "return 'root of b'",
    "b.test/globals": "local before = tostring(marker) marker = 'b' return before",
}


async def start_busy(srv, nursery: trio.Nursery, path: str, results: dict) -> list[int]:
    """Start GET `path` in the background (its response lands in results[path]) and return once
    a worker is running it: the busy workers' pids."""

    async def request():
        results[path] = await srv.get(path)

    nursery.start_soon(request)
    while not srv.pool.busy_pids():
        await trio.lowlevel.checkpoint()
    return srv.pool.busy_pids()


async def deadline(seconds: float, task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.CancelScope() as scope:
        task_status.started(scope)
        await trio.sleep(seconds)
        raise TimeoutError(f"test still running after {seconds} s")


def write_sites(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    for key, source in SITES.items():
        folder = root / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(source)


class Server:
    def __init__(self, url: str, pool, client: httpx.AsyncClient, stop: trio.Event) -> None:
        self.stop = stop
        self.url = url
        self.pool = pool
        self.client = client
        self.port = int(url.rsplit(":", 1)[1])

    async def get(self, path: str, host: str = "a.test", **kw) -> httpx.Response:
        return await self.client.get(
            self.url + path, headers={"Host": host, **kw.pop("headers", {})}, **kw
        )

    async def raw(self, request: bytes) -> bytes:
        """Send bytes as they are (httpx normalises dot segments) and read the whole answer."""
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        async with stream:
            await stream.send_all(request)
            data = b""
            while chunk := await stream.receive_some(65536):
                data += chunk
        return data


@asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    workers: int = 2,
    timeout_ms: int = 5000,
    trusted_proxies=(),
    http: HttpSettings | None = None,
    store=None,
    admin_token: str | None = None,
    cpu_ms: int = 2000,
    memory_mb: int = 128,
    pool: dict | None = None,
    outbound=None,
    github=None,
    tenant_configs: bool = False,
    settings_changes: dict | None = None,
    max_subrequests: int = 50,
    access_log=None,
    mailer=None,
    github_tokens=None,
    deps_changes: dict | None = None,
    deadline_s: float = 30,
    **limits,
):
    write_sites(tmp_path)
    http = http or HttpSettings()
    if "max_request_bytes" in limits:
        http = replace(http, max_request_bytes=limits.pop("max_request_bytes"))
    settings = Settings(
        bind=Bind(host="127.0.0.1", port=0),
        code_dir=tmp_path,
        pool=PoolSettings(size=workers),
        limits=Limits(
            timeout_ms=timeout_ms,
            cpu_ms=cpu_ms,
            memory_mb=memory_mb,
            max_subrequests=max_subrequests,
            **limits,
        ),
        trusted_proxies=trusted_proxies,
        http=http,
        admin_token=admin_token,
    )
    # Tenant storage beside the sites, never in the user's real data folder.
    settings = replace(settings, storage=StorageSettings(data_path=tmp_path / ".sngin-data"))
    settings = replace(settings, **(settings_changes or {}))
    stop = trio.Event()
    config = replace(pool_config(settings), **(pool or {}))
    limits_for = default_limits(settings)

    async with (
        open_tenant_storage(settings) as storage,
        trio.open_nursery() as nursery,
        open_pool(config, limits_for) as pool,
    ):
        # A deadline for the whole test, also when `running` is entered by a fixture (a
        # fixture's cancel scope would not cover the test's task; a crashing task does).
        watchdog = await nursery.start(deadline, deadline_s)
        store = store or LocalStore(tmp_path)
        deps = assemble_deps(
            settings,
            store=store,
            pool=pool,
            observer=Observer(access_stream=access_log),
            storage=storage,
            outbound=outbound,
            github=github,
            github_tokens=github_tokens,
            configs=TenantConfigs(store, settings) if tenant_configs else None,
            mailer=mailer,
            **({"files": code_files_for(settings, store)} | (deps_changes or {})),
        )
        attach_cluster_bus(deps, nursery)
        binds = await nursery.start(
            lambda task_status: serve_app(deps, shutdown_trigger=stop.wait, task_status=task_status)
        )
        async with httpx.AsyncClient() as client:
            server = Server(binds[0], pool, client, stop)
            server.deps = deps
            server.binds = binds
            try:
                yield server
            finally:
                stop.set()
        watchdog.cancel()
        if deps.purger.bus is not None:
            deps.purger.bus.stop()  # it follows Redis until told to stop


@asynccontextmanager
async def serving(tmp_path, scripts: dict[str, str], *, policy=LOOPBACK_ONLY, resolver=None,
                  ssl_context=None, outbound_settings=None, **options):  # fmt: skip
    for key, source in scripts.items():
        folder = tmp_path / key
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "index.lua").write_text(source)
    extra = {"resolver": resolver} if resolver is not None else {}
    if outbound_settings is not None:  # the server's budgets read the same settings
        changes = options.setdefault("settings_changes", {})
        changes["outbound"] = outbound_settings
    enabled = options.get("settings_changes", {}).get("email_enabled", True)  # as serve() does
    mailer = Mailer(policy, resolver or system_resolver, ssl_context=ssl_context, enabled=enabled)
    async with (
        open_outbound(
            policy, ssl_context=ssl_context, settings=outbound_settings, **extra
        ) as outbound,
        running(tmp_path, outbound=outbound, mailer=mailer, **options) as srv,
    ):
        yield srv


def fetch_script(call: str) -> str:
    """A script that makes one call and answers with what came back, as JSON."""
    return f"""
        local r = http.request({call})
        -- (keys other than status/body, which would make this a response table)
        return {{sc = r.statuscode, err = r.err, payload = r.content,
                 up = r.headers and r.headers['x-up']}}
    """


async def run_call(tmp_path, call: str, **options) -> dict:
    async with serving(tmp_path, {"a.test/call": fetch_script(call)}, **options) as srv:
        response = await srv.get("/call")
        assert response.status_code == 200, response.text
        return response.json()


# --- S3 over the counting proxy ------------------------------------------------------------------


FAST = {"attempt_timeout_s": 0.5, "deadline_s": 5.0, "max_attempts": 3}


@asynccontextmanager
async def s3_store(proxy, bucket, *, prefix: str = "", **overrides):
    settings = S3Settings(bucket=bucket.name, prefix=prefix, **{**FAST, **overrides})
    endpoint = Endpoint(base_url=f"{proxy.url}/{bucket.name}", region="us-east-1")
    async with httpx.AsyncClient() as http:
        yield S3Store(http, settings, endpoint, Credentials("testing", "testing"))


@asynccontextmanager
async def code_cache(proxy, bucket, *, ttl_s: float = 60.0, negative_ttl_s: float = 10.0, **s3):
    async with s3_store(proxy, bucket, **s3) as store, trio.open_nursery() as nursery:
        yield CodeCache(store, CacheSettings(ttl_s=ttl_s, negative_ttl_s=negative_ttl_s), nursery)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def node(proxy, bucket, mirror_path, *, ttl_s=60.0, cb_interval_s=1.0, prefix=""):
    """One sngin node's code path: S3 store, disk mirror, code cache (a 'restart' = a new one)."""
    settings = S3Settings(bucket=bucket.name, prefix=prefix, **MIRROR_FAST)
    endpoint = Endpoint(base_url=f"{proxy.url}/{bucket.name}", region="us-east-1")
    mirror = DiskMirror(mirror_path, 1024 * 1024)
    await mirror.open()
    cache_settings = CacheSettings(ttl_s=ttl_s, cb_interval_s=cb_interval_s)
    async with httpx.AsyncClient() as http, trio.open_nursery() as nursery:
        store = S3Store(http, settings, endpoint, Credentials("testing", "testing"))
        yield CodeCache(store, cache_settings, nursery, mirror, mirror_absence=is_config_key)
        nursery.cancel_scope.cancel()


# --- `sngin serve` as a process ------------------------------------------------------------------


def serve_until_exit(env: dict[str, str], *flags: str) -> subprocess.CompletedProcess[str]:
    """`sngin serve` expected to stop at start-up (or soon after): its exit status and output."""
    return subprocess.run(
        [sys.executable, "-m", "sngin", "serve", *flags],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def wait_until_serving(process) -> tuple[str, bytes]:
    """The public URL from the start-up line, and the log so far."""
    log = b""
    while not (match := re.search(rb"serving .* on (http://127\.0\.0\.1:\d+)", log)):
        chunk = await process.stderr.receive_some(4096)
        assert chunk, log.decode()
        log += chunk
    return match.group(1).decode(), log


# --- a script held at a platform call ------------------------------------------------------------

WAITS_UPSTREAM = b"return http.request('http://upstream.test/').content"


def gate_job(tenant: str, source: bytes) -> Job:
    """A job straight for the pool (no server): the tenant's one script."""
    return Job(tenant=tenant, key=f"{tenant}/index", version="v1",
               request=Request(method="GET", path="/"), source=source)  # fmt: skip


class Gate:
    """A platform-call handler that holds a script at http.request until opened."""

    def __init__(self) -> None:
        self.entered = trio.Event()
        self.opened = trio.Event()

    async def __call__(self, call: Call) -> CallResult:
        self.entered.set()
        await self.opened.wait()
        return CallResult(id=call.id, call_id=call.call_id, http=HttpResult(status=200, body=b"up"))


# --- S3 event notifications -----------------------------------------------------------------

EVENTS_TOKEN = "events-token-0123456789abcdef"


def aws_record(bucket: str, key: str, version: str = "2.1") -> dict:
    """One record as AWS documents it (event structure, eventVersion 2.1)."""
    return {
        "eventVersion": version,
        "eventSource": "aws:s3",
        "awsRegion": "us-east-1",
        "eventTime": "2026-12-02T04:00:00.000Z",
        "eventName": "ObjectCreated:Put",
        "userIdentity": {"principalId": "AWS:EXAMPLE"},
        "requestParameters": {"sourceIPAddress": "192.0.2.1"},
        "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyU"},
        "s3": {
            "s3SchemaVersion": "1.0",
            "configurationId": "sngin-purge",
            "bucket": {
                "name": bucket,
                "ownerIdentity": {"principalId": "A3NL1KOZZKExample"},
                "arn": f"arn:aws:s3:::{bucket}",
            },
            "object": {
                "key": key,
                "size": 1024,
                "eTag": "d41d8cd98f00b204e9800998ecf8427e",
                "sequencer": "0055AED6DCD90281E5",
            },
        },
    }


async def post_event(srv, document: dict, authorization: str = f"Bearer {EVENTS_TOKEN}"):
    return await srv.client.post(
        srv.url + "/__sngin/events/s3",
        content=json.dumps(document),
        headers={"Authorization": authorization, "Content-Type": "application/json"},
    )


# --- loopback processes and certificates --------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def redis_server_process(port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A real redis-server (Debian's package) on a loopback port, without persistence, until
    the block ends."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server)")
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:  # until it accepts connections (a start-up wait, not a synchronisation)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail("redis-server did not start")
            time.sleep(0.02)
    try:
        yield process
    finally:
        process.terminate()
        process.wait(timeout=10)


def tls_contexts(host: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for `host` from a fresh test CA (trustme), and a
    client context that trusts that CA."""
    import trustme

    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(host).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context
