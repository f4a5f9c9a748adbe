"""The management API for tenants' code, under /__sngin/code (docs/admin.md): list tenants and
their files, read a file, and create, update or delete one. Updates and deletes are conditional
(`If-Match` with the etag the client loaded, `If-None-Match: *` to create): a file that changed
meanwhile is a 412 carrying its current version, never a silent overwrite. Every write purges
what it changed, on every node and process. `SNGIN_UI=readonly` refuses writes, `off` the API.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio
from quart import Response, request

from sandbox.protocol import BAD_SOURCE, Job, Request
from sngin.admin.access import Answer, Caller
from sngin.admin.bodies import bounded_body, too_large
from sngin.admin.guard import Access, Route, granted
from sngin.admin.preview import preview_body, run_preview
from sngin.admin.stats import site_totals, tenant_series
from sngin.code.files import (
    MAX_FILE_BYTES,
    Conflict,
    FileVersion,
    content_hash,
    file_path,
    text_or_none,
)
from sngin.errors import BadRequest
from sngin.names import CONFIG_NAME
from sngin.observe.series import BUCKET_S, BUCKETS
from sngin.tenants.config import InvalidConfig, TenantConfigs

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sngin.code.files import CodeFiles
    from sngin.edge.deps import Deps

log = logging.getLogger(__name__)
Outcome = tuple[dict[str, Any], int]  # a conditional change's answer (sngin.admin.code)

SYNTAX_ERROR = re.compile(r":(\d+): (.*)", re.DOTALL)


@dataclass(frozen=True, slots=True)
class Allowed:
    files: CodeFiles
    tenant: str  # the tenant the route names ("" for the tenants' list)
    caller: Caller


Gate = Allowed | Answer

MAX_PREVIEW_BYTES = 4 * MAX_FILE_BYTES  # the source and the sample request, as JSON
WINDOW_S = BUCKET_S * BUCKETS  # the sites list's window: the last ten minutes
NEEDS_IF_MATCH = "send If-Match with the etag of the version you loaded"
NEEDS_CONDITION = (
    f"{NEEDS_IF_MATCH} (or If-None-Match: * to create the file): writes never overwrite blindly"
)


def purge_folder(path: str) -> str:
    """What a write of `path` purges: its script ('a/b/index.lua' -> 'a/b') or itself."""
    if path == "index.lua":
        return ""
    if path.endswith("/index.lua"):
        return path.removesuffix("/index.lua")
    return path


def version_body(version: FileVersion | None) -> dict[str, Any] | None:
    if version is None:
        return None
    text = text_or_none(version.content)
    body: dict[str, Any] = {"etag": version.etag, "size": len(version.content), "content": text}
    if text is None:
        body["content_base64"] = base64.b64encode(version.content).decode()
    return body


def etag_of(header: str) -> str:
    return header.strip().removeprefix("W/").strip('"')


class CodeRoutes:
    def __init__(self, deps: Deps) -> None:
        self.deps = deps

    async def gate(self, *, writing: bool = False) -> Gate:
        """The store, the tenant named (if any) and the caller (the guard let them through:
        the admin token acts on every tenant, a tenant's token on that tenant only), or the
        answer when SNGIN_UI turns the API off or read-only."""
        found = granted()
        mode = self.deps.settings.ui
        if mode == "off" or self.deps.files is None:
            return {"error": "the management API is off (SNGIN_UI=off)"}, 404
        if writing and mode == "readonly":
            return {"error": "the management API is read-only (SNGIN_UI=readonly)"}, 403
        return Allowed(self.deps.files, found.tenant or "", found.caller)

    def path_argument(self) -> str:
        return file_path(request.args.get("path", ""))

    async def list_tenants(self) -> Answer:
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        tenants = [t for t in await allowed.files.tenants() if allowed.caller.may(t)]
        if request.args.get("summary") != "1":
            return {"tenants": tenants}, 200
        # ?summary=1: each site's last ten minutes and quarantine, from one report for all.
        totals = await site_totals(self.deps)
        sites = []
        for tenant in tenants:
            requests, errors, cpu_ms = totals.get(tenant, (0.0, 0.0, 0.0))
            paused = self.deps.pool.quarantine_left(tenant)
            sites.append({
                "host": tenant, "rps": round(requests / WINDOW_S, 3), "requests": int(requests),
                "errors": int(errors), "cpu_ms": round(cpu_ms, 2),
                "quarantined_s": round(paused, 1) if paused is not None else None,
            })  # fmt: skip
        return {"tenants": tenants, "sites": sites}, 200

    async def list_files(self, host: str) -> Answer:
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        files, tenant = allowed.files, allowed.tenant
        listed = await files.files(tenant)
        return {"host": tenant, "files": [dataclasses.asdict(f) for f in listed]}, 200

    async def read_file(self, host: str) -> Any:
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        files, tenant = allowed.files, allowed.tenant
        path = self.path_argument()
        # `version=ID`: one the history lists (what the UI diffs against the current one).
        version_id = request.args.get("version")
        if version_id is None:
            version = await files.read(tenant, path)
        else:
            version = await files.read_version(tenant, path, version_id)
        if version is None:
            wanted = path if version_id is None else f"{path} version {version_id[:64]!r}"
            return {"error": f"{tenant} has no file {wanted}"}, 404
        kind = "application/json" if path.endswith(CONFIG_NAME) else "text/x-lua; charset=utf-8"
        headers = {"ETag": f'"{version.etag}"', "Content-Type": kind, "Cache-Control": "no-store"}
        return Response(version.content, 200, headers)

    async def write_file(self, host: str) -> Answer:
        allowed = await self.gate(writing=True)
        if not isinstance(allowed, Allowed):
            return allowed
        files, tenant = allowed.files, allowed.tenant
        # Read (bounded) before any other answer, so the connection stays usable.
        data = await bounded_body(MAX_FILE_BYTES)
        if data is None:
            return too_large(MAX_FILE_BYTES)
        if_match = request.headers.get("If-Match")
        creating = request.headers.get("If-None-Match", "").strip() == "*"
        if if_match is None and not creating:
            return {"error": NEEDS_CONDITION}, 428
        try:
            path = self.path_argument()
            expected = None if creating else etag_of(if_match or "")
            etag = await files.write(tenant, path, data, if_match=expected)
        except Conflict as exc:
            return conflict(exc)
        purged = await self.deps.purger.purge(tenant, purge_folder(path), recursive=False)
        log.info("code: %s %s/%s (%d bytes)", "created" if creating else "updated",
                 tenant, path, len(data))  # fmt: skip
        body = {"host": tenant, "path": path, "etag": etag, "purged": purged}
        return body, 201 if creating else 200, {"ETag": f'"{etag}"'}

    async def check(self, host: str) -> Answer:
        """Compile a script or module in a worker (never in the server process), without
        running it: its syntax errors with their lines."""
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        tenant = allowed.tenant
        source = await bounded_body(MAX_FILE_BYTES)
        if source is None:
            return too_large(MAX_FILE_BYTES)
        path = self.path_argument()
        if path == CONFIG_NAME:
            return await self.check_config(tenant, source)
        if not path.endswith(".lua"):
            raise BadRequest("only Lua files and _sngin.json are checked")
        chunk = f"{tenant}/{path}"
        job = Job(
            tenant=tenant, key=chunk, version=content_hash(source),
            request=Request(method="GET", path="/" + path, host=tenant), source=source,
            check_only=True,
        )  # fmt: skip
        reply = await self.deps.pool.run(job)
        if reply.error == BAD_SOURCE:
            return {"path": path, "ok": False, "errors": syntax_errors(reply.message, chunk)}, 200
        if reply.error is not None:
            return {"error": reply.message or reply.error}, 500
        return {"path": path, "ok": True, "errors": []}, 200

    async def check_config(self, tenant: str, source: bytes) -> Answer:
        """A _sngin.json against its strict schema and the operator's settings (a bad one
        answers 500 for the whole site): its error, or the cron entries it would not use.
        Parsed off the event loop (bounded by MAX_FILE_BYTES)."""
        configs = self.deps.configs or TenantConfigs(self.deps.store, self.deps.settings)
        try:
            config = await trio.to_thread.run_sync(configs.parse, tenant, source)
        except InvalidConfig as exc:
            message = exc.message.removeprefix(f"{tenant}/{CONFIG_NAME}: ")
            return {"path": CONFIG_NAME, "ok": False,
                    "errors": [{"line": None, "message": message}]}, 200  # fmt: skip
        warnings = [str(problem) for problem in config.cron_problems]
        return {"path": CONFIG_NAME, "ok": True, "errors": [], "warnings": warnings}, 200

    async def series(self, host: str) -> Answer:
        """The site's last ten minutes in 10-second points (requests/s, 5xx, CPU, p50/p99)."""
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        points = await tenant_series(self.deps, allowed.tenant)
        return {"host": allowed.tenant, "bucket_s": BUCKET_S, "points": points}, 200

    async def history(self, host: str) -> Answer:
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        path = self.path_argument()
        versions = await allowed.files.history(allowed.tenant, path)
        listed = [dataclasses.asdict(v) for v in versions]
        return {"host": allowed.tenant, "path": path, "versions": listed}, 200

    async def restore(self, host: str) -> Answer:
        """An earlier version made the current one again (itself a conditional write)."""

        async def change(files: CodeFiles, tenant: str, path: str, etag: str) -> Outcome:
            version_id = request.args.get("version", "")
            version = await files.read_version(tenant, path, version_id)
            if version is None:
                return {"error": f"{path} has no version {version_id[:64]!r}"}, 404
            new_etag = await files.write(tenant, path, version.content, if_match=etag)
            log.info("code: restored %s/%s to version %s", tenant, path, version_id)
            return {"host": tenant, "path": path, "etag": new_etag, "restored": version_id}, 200

        return await self.conditional_change(change)

    async def preview(self, host: str) -> Answer:
        """Run a source that is not saved with a sample request (sngin.admin.preview)."""
        allowed = await self.gate()
        if not isinstance(allowed, Allowed):
            return allowed
        data = await bounded_body(MAX_PREVIEW_BYTES)
        if data is None:
            return too_large(MAX_PREVIEW_BYTES)
        body = preview_body(data)
        return await run_preview(self.deps, allowed.tenant, body), 200

    async def delete_file(self, host: str) -> Answer:
        async def change(files: CodeFiles, tenant: str, path: str, etag: str) -> Outcome:
            await files.delete(tenant, path, if_match=etag)
            log.info("code: deleted %s/%s", tenant, path)
            return {"host": tenant, "path": path, "deleted": True}, 200

        return await self.conditional_change(change)

    async def rename(self, host: str) -> Answer:
        """One move, P to Q: 412 if Q exists or P is not the version named by If-Match. On S3 a
        conditional copy then a conditional delete: not atomic (a failure between leaves both,
        and the answer says so)."""

        async def change(files: CodeFiles, tenant: str, path: str, etag: str) -> Outcome:
            to = file_path(request.args.get("to", ""))
            if to == path:
                raise BadRequest("?to= names the file itself")
            current = await files.read(tenant, path)
            if current is None or current.etag != etag:
                raise Conflict(current)
            new_etag = await files.write(tenant, to, current.content, if_match=None)
            try:
                await files.delete(tenant, path, if_match=etag)
            except Conflict:
                # It changed between the copy and the delete: take the copy back.
                await files.delete(tenant, to, if_match=new_etag)
                raise
            await self.deps.purger.purge(tenant, purge_folder(to), recursive=False)
            log.info("code: renamed %s/%s to %s", tenant, path, to)
            return {"host": tenant, "path": path, "to": to, "etag": new_etag, "renamed": True}, 200

        return await self.conditional_change(change)

    async def conditional_change(
        self, change: Callable[[CodeFiles, str, str, str], Awaitable[Outcome]]
    ) -> Answer:
        """A change that needs If-Match (restore, delete): the write gate, 428 without the
        header, 409/412 on a conflict, and the path's folder purged once it is made."""
        allowed = await self.gate(writing=True)
        if not isinstance(allowed, Allowed):
            return allowed
        if_match = request.headers.get("If-Match")
        if if_match is None:
            return {"error": NEEDS_IF_MATCH}, 428
        try:
            path = self.path_argument()
            body, status = await change(allowed.files, allowed.tenant, path, etag_of(if_match))
        except Conflict as exc:
            return conflict(exc)
        if status != 200:
            return body, status
        purged = await self.deps.purger.purge(allowed.tenant, purge_folder(path), recursive=False)
        return body | {"purged": purged}, 200

    def routes(self) -> list[Route]:
        return [
            Route(("GET",), "/__sngin/code", self.list_tenants, Access.TENANT),
            Route(("GET",), "/__sngin/code/<host>", self.list_files, Access.TENANT),
            Route(("GET",), "/__sngin/code/<host>/file", self.read_file, Access.TENANT),
            Route(("PUT",), "/__sngin/code/<host>/file", self.write_file, Access.TENANT),
            Route(("POST",), "/__sngin/code/<host>/check", self.check, Access.TENANT),
            Route(("GET",), "/__sngin/code/<host>/series", self.series, Access.TENANT),
            Route(("GET",), "/__sngin/code/<host>/history", self.history, Access.TENANT),
            Route(("POST",), "/__sngin/code/<host>/restore", self.restore, Access.TENANT),
            Route(("POST",), "/__sngin/code/<host>/preview", self.preview, Access.TENANT),
            Route(("DELETE",), "/__sngin/code/<host>/file", self.delete_file, Access.TENANT),
            Route(("POST",), "/__sngin/code/<host>/rename", self.rename, Access.TENANT),
        ]


def syntax_errors(message: str, chunk: str) -> list[dict[str, Any]]:
    """LuaJIT's compile error ('<chunk>:<line>: <message>') as the check answers it."""
    found = SYNTAX_ERROR.match(message.removeprefix(chunk))
    if found is None:
        return [{"line": None, "message": message}]
    return [{"line": int(found.group(1)), "message": found.group(2)}]


def conflict(exc: Conflict) -> Answer:
    if exc.current is None:
        return {"error": "the file does not exist (any more)", "current": None}, 412
    message = "the file is not the version you loaded: it changed, or already exists"
    return {"error": message, "current": version_body(exc.current)}, 412
