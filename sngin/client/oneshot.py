"""`sngin run FILE`: run one script once through a real worker, with the same sandbox and limits
as the server, and print the response: the local development loop."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import sys
import uuid
from typing import TYPE_CHECKING

import trio

from sandbox.protocol import Job, Request
from sngin.calls.outbound import open_outbound
from sngin.calls.request_calls import PlatformServices, RequestCalls
from sngin.calls.storage_calls import StorageCalls
from sngin.code.local_store import LocalStore
from sngin.edge.dispatcher import reply_error
from sngin.edge.response_rules import response_headers
from sngin.errors import BadRequest, SnginError
from sngin.names import tenant_of
from sngin.server import (
    default_limits,
    open_github_modules,
    pool_config,
    tenant_cache_for,
)
from sngin.storage.opening import open_tenant_storage
from sngin.tenants.egress import EgressPolicy
from sngin.workers.pool import open_pool

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

    from sandbox.protocol import Reply
    from sngin.config import Settings


def tenant_folder(path: Path, code_dir: Path) -> str | None:
    """The tenant whose folder in the code root holds the file, if it lies in one."""
    try:
        relative = path.resolve().relative_to(code_dir.resolve())
    except ValueError:
        return None
    return relative.parts[0] if len(relative.parts) > 1 else None


def run_file(
    settings: Settings,
    path: Path,
    *,
    host: str | None,
    method: str,
    url_path: str,
    headers: Sequence[str],
    body: str,
) -> int:
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise BadRequest(f"cannot read {path}: {exc.strerror}") from None
    # A file inside the code root (<code dir>/<host>/...) runs as that tenant by default, and
    # require() finds the tenant's modules beside it; elsewhere the tenant is --host.
    tenant = tenant_of(host or tenant_folder(path, settings.code_dir) or "localhost")
    request_path, _, query = url_path.partition("?")
    pairs = [
        (name.strip().lower().encode(), value.strip().encode())
        for name, _, value in (h.partition(":") for h in headers)
    ]
    request = Request(
        method=method.upper(),
        path=request_path or "/",
        querystring=query.encode(),
        headers=[(b"host", (host or tenant).encode()), *pairs],
        body=body.encode(),
        host=tenant,
        id=uuid.uuid4().hex,
    )
    job = Job(
        tenant=tenant,
        key=str(path),  # errors name the script by the path it was run as
        version=hashlib.blake2b(source, digest_size=12).hexdigest(),
        request=request,
        limits=settings.limits.wire,
        source=source,
    )
    # The script's print/log lines arrive while it runs, as the server logs them: JSON lines.
    lines = logging.StreamHandler(sys.stderr)
    lines.setFormatter(logging.Formatter("%(message)s"))
    script_log = logging.getLogger("sngin.script")
    script_log.addHandler(lines)
    script_log.setLevel(logging.INFO)
    try:
        reply = trio.run(_run, settings, job)
    finally:
        script_log.removeHandler(lines)
    return print_reply(reply)


async def _run(settings: Settings, job: Job) -> Reply | SnginError:
    config = dataclasses.replace(pool_config(settings), size=1)
    limits_for = default_limits(settings)
    limits = limits_for(job.tenant)
    async with (
        open_outbound(
            EgressPolicy.parse(settings.egress_allow), settings=settings.outbound
        ) as outbound,
        open_github_modules(settings) as github,
        open_tenant_storage(settings) as storage,
        open_pool(config, limits_for) as pool,
    ):
        # The same storage as the server's (SNGIN_DATA_PATH or SNGIN_REDIS_URL): a script run
        # here reads and writes what it would when served.
        wall_s = limits.timeout_ms / 1000
        storage_calls = StorageCalls(
            storage,
            tenant_cache_for(settings, storage),
            settings.storage,
            tenant=job.tenant,
            deadline=trio.current_time() + wall_s,
            wall_s=wall_s,
        )
        services = PlatformServices(
            outbound=outbound,
            store=LocalStore(settings.code_dir),
            github=github,
            default_modules=settings.default_modules,
        )
        calls = RequestCalls(
            services,
            tenant=job.tenant,
            deadline=trio.current_time() + limits.timeout_ms / 1000,
            request_id=job.request.id,
            max_subrequests=settings.limits.max_subrequests,
            max_modules=settings.limits.max_modules,
            storage=storage_calls,
        )
        try:
            return await pool.run(job, calls)
        except SnginError as error:
            return error
        finally:
            await storage_calls.release_all()


def print_reply(reply: Reply | SnginError) -> int:
    if isinstance(reply, SnginError):
        print(f"HTTP {reply.status}\n\n{reply.message}")
        return 1
    if reply.error is not None:
        error = reply_error(reply)
        print(f"HTTP {error.status}\n\n{error.message}")
        return 1
    try:
        headers = response_headers(reply.status, reply.headers, len(reply.body))
    except SnginError as error:
        print(f"HTTP {error.status}\n\n{error.message}")
        return 1
    out = sys.stdout.buffer
    out.write(f"HTTP {reply.status}\n".encode())
    for name, value in headers:
        out.write(name + b": " + value + b"\n")
    out.write(b"\n" + reply.body)
    if not reply.body.endswith(b"\n"):
        out.write(b"\n")
    out.flush()
    return 0
