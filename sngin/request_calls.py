"""One request's platform calls, answered by the server: http.request within the request's
subrequest budget, deadline and the server's budget for bodies in flight, and modules for
`require` (within their own budget) from the tenant's store or the GitHub raw host."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import trio

from sandbox.protocol import Call, CallResult, ModuleSource
from sngin.call_rules import http_call_problem, module_name_problem
from sngin.errors import CodeFetchError
from sngin.http_body import BodyCost
from sngin.outbound import DEFAULT_TIMEOUT_S
from sngin.tenants import file_key

if TYPE_CHECKING:
    from sngin.budgets import MemoryBudget
    from sngin.codestore import CodeSource
    from sngin.egress import TenantEgress
    from sngin.outbound import Outbound

# Leave the script this long to answer after a call that used up its wall time.
WALL_MARGIN_S: Final = 0.05


MODULE_PATH: Final = re.compile(r"(?:[\w.-]+/)*[\w.-]+\.lua\Z")


class RequestCalls:
    """Answers one request's platform calls: http.request within its subrequest budget and
    deadline, and modules for `require` (within their own budget) from the tenant's own store
    or the GitHub raw host."""

    def __init__(
        self,
        outbound: Outbound | None,
        *,
        tenant: str,
        deadline: float,
        request_id: str,
        max_subrequests: int,
        max_modules: int = 100,
        store: CodeSource | None = None,
        github: CodeSource | None = None,
        egress: TenantEgress | None = None,
        bodies: MemoryBudget | None = None,
    ) -> None:
        self._egress = egress
        self._bodies = bodies  # the server-wide budget for subrequest bodies in flight
        self._outbound = outbound
        self._tenant = tenant
        self._deadline = deadline
        self._request_id = request_id
        self._left = max_subrequests
        self._max = max_subrequests
        self._modules_left = max_modules
        self._max_modules = max_modules
        self._store = store
        self._github = github
        self.cost = BodyCost()  # server CPU this request's subrequest bodies cost

    async def __call__(self, call: Call) -> CallResult:
        if call.module is not None:
            if self._modules_left <= 0:
                return CallResult(
                    id=call.id,
                    call_id=call.call_id,
                    error=f"more than {self._max_modules} module fetches in one request",
                )
            self._modules_left -= 1
            return await self._module(call, call.module)
        if call.http is None:
            return CallResult(id=call.id, call_id=call.call_id, error="unknown platform call")
        if self._outbound is None:
            return CallResult(id=call.id, call_id=call.call_id, error="not available here")
        if self._left <= 0:
            return CallResult(
                id=call.id,
                call_id=call.call_id,
                error=f"more than {self._max} subrequests in one request",
            )
        problem = http_call_problem(call.http)
        if problem is not None:
            return CallResult(id=call.id, call_id=call.call_id, error=problem)
        self._left -= 1
        remaining = self._deadline - trio.current_time() - WALL_MARGIN_S
        timeout = min(call.http.timeout_s or DEFAULT_TIMEOUT_S, remaining)
        lease = self._bodies.lease() if self._bodies is not None else None
        try:
            result = await self._outbound.fetch(
                call.http,
                timeout_s=timeout,
                request_id=self._request_id,
                tenant=self._tenant,
                egress=self._egress,
                cost=self.cost,
                lease=lease,
            )
        finally:
            # The body is framed for the worker as soon as this returns; the frame, not the
            # body, is what waits for the pipe.
            if lease is not None:
                lease.release()
        return CallResult(id=call.id, call_id=call.call_id, http=result)

    async def _module(self, call: Call, name: str) -> CallResult:
        """'tenant:<path>.lua' from this tenant's store only; 'github:<path>.lua' from the raw
        host. Module fetches have their own budget, not the subrequests'."""
        kind, _, path = name.partition(":")
        try:
            problem = module_name_problem(path)
            if problem is not None:
                raise CodeFetchError(problem)
            if not MODULE_PATH.match(path) or ".." in path.split("/"):
                raise CodeFetchError(f"invalid module name {path}")
            if kind == "tenant" and self._store is not None:
                source = await self._store.fetch(file_key(self._tenant, path))
                chunkname = f"{self._tenant}/{path}"
            elif kind == "github" and self._github is not None:
                # Counted against this tenant's share of the module cache, which every tenant
                # shares: one tenant's many URLs cannot flush the others' modules.
                source = await self._github.fetch(path, owner=self._tenant)
                chunkname = f"github.com/{path}"
            else:
                raise CodeFetchError("modules are not available here")
        except CodeFetchError as exc:
            return CallResult(id=call.id, call_id=call.call_id, error=exc.message)
        if source is None:
            shown = path if kind == "tenant" else f"github.com/{path}"
            return CallResult(id=call.id, call_id=call.call_id, error=f"module {shown} not found")
        module = ModuleSource(text=source.text, version=source.version, chunkname=chunkname)
        return CallResult(id=call.id, call_id=call.call_id, module=module)
