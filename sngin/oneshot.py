"""`sngin run`: run one script from the code folder through the sandbox and print the response."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

from sandbox.protocol import Job, Limits, Request
from sandbox.runtime import TenantRuntime
from sngin.codestore.local import read_script
from sngin.errors import CodeNotFound
from sngin.tenants import script_key, script_path, tenant_of

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sngin.config import Settings


def run_once(
    settings: Settings, target: str, method: str, data: str, headers: Sequence[str]
) -> int:
    host, _, rest = target.partition("/")
    path, _, query = rest.partition("?")
    tenant = tenant_of(host)
    key = script_key(tenant, script_path("/" + path))
    source = read_script(settings.code_dir, key)
    if source is None:
        raise CodeNotFound(f"no script for {key}")
    header_pairs = [
        (name.strip().lower(), value.strip().encode())
        for name, _, value in (h.partition(":") for h in headers)
    ]
    request = Request(
        method=method.upper(),
        path="/" + path,
        querystring=query.encode(),
        headers=[("host", host.encode()), *header_pairs],
        body=data.encode(),
        host=tenant,
        id=uuid.uuid4().hex,
    )
    limits = Limits(max_body_bytes=settings.limits.max_body_bytes)
    runtime = TenantRuntime(tenant)
    try:
        reply = runtime.run(
            Job(
                tenant=tenant,
                key=key,
                version=source.version,
                request=request,
                limits=limits,
                source=source.text,
            )
        )
    finally:
        runtime.close()
    for line in reply.logs:
        print(f"log: {line.decode('utf-8', 'replace')}", file=sys.stderr)
    if reply.error is not None:
        status = 405 if reply.allow else 500
        print(f"HTTP {status}\n\n{reply.message}")
        return 1
    out = sys.stdout.buffer
    out.write(f"HTTP {reply.status}\n".encode())
    for name, value in reply.headers:
        out.write(name + b": " + value + b"\n")
    out.write(b"\n" + reply.body)
    out.flush()
    return 0
