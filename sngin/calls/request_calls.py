"""One request's platform calls, answered by the server: http.request within the request's
subrequest budget, deadline and the server's budget for bodies in flight, and modules for
`require` (within their own budget) from the tenant's store or the GitHub raw host."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from sandbox.protocol import (
    AlertCall,
    Call,
    CallResult,
    EmailCall,
    HttpCall,
    ModuleCall,
    ModuleSource,
    StorageCall,
)
from sngin.bodies.http_body import BodyCost
from sngin.calls.alerts import AlertFailed
from sngin.calls.mail import MailRefused
from sngin.calls.outbound import DEFAULT_TIMEOUT_S
from sngin.calls.rules import email_call_problem, http_call_problem, module_name_problem
from sngin.calls.storage_calls import StorageCalls, StorageRefused
from sngin.errors import CodeFetchError
from sngin.names import file_key

if TYPE_CHECKING:
    from sngin.bodies.budgets import MemoryBudget
    from sngin.calls.alerts import Alerts
    from sngin.calls.mail import Mailer
    from sngin.calls.outbound import Outbound
    from sngin.code.github import GitHubTokens
    from sngin.code.store import CodeSource, Source
    from sngin.tenants.egress import TenantEgress

# Leave the script this long to answer after a call that used up its wall time.
WALL_MARGIN_S: Final = 0.05


MODULE_PATH: Final = re.compile(r"(?:[\w.-]+/)*[\w.-]+\.lua\Z")
MAX_PLACES: Final = 4  # name.lua and name/init.lua, in the tree, then the fallback's two
FALLBACK_BRANCHES: Final = ("master", "main")  # webscript's user/repo/path form


@dataclass(frozen=True, slots=True, kw_only=True)
class PlatformServices:
    """What every request's platform calls use, made once for the server's lifetime: the
    outbound client, the code stores for `require`, the budget for subrequest bodies in
    flight, mail and alerts. A RequestCalls adds one request's budgets to it."""

    outbound: Outbound | None = None
    store: CodeSource | None = None
    github: CodeSource | None = None
    bodies: MemoryBudget | None = None  # the server-wide budget for subrequest bodies
    # "<owner>/<repo>/<ref>": where bare names a tenant does not have are looked for
    default_modules: str | None = None
    mailer: Mailer | None = None
    alerts: Alerts | None = None
    github_tokens: GitHubTokens | None = None


class RequestCalls:
    """Answers one request's platform calls with the server's PlatformServices: http.request
    within its subrequest budget and deadline, and modules for `require` (within their own
    budget) from the tenant's own store or the GitHub raw host. Made at the request's first
    call (sngin.edge.pipeline.CallsOnDemand): it holds only the request's own state."""

    def __init__(
        self,
        services: PlatformServices,
        *,
        tenant: str,
        deadline: float,
        request_id: str,
        max_subrequests: int,
        max_modules: int = 100,
        egress: TenantEgress | None = None,
        alert_webhook: str | None = None,
        github_token: str | None = None,
        storage: StorageCalls | None = None,
    ) -> None:
        self._services = services
        self.storage = storage  # this request's storage, lease and cache calls
        self._github_token = github_token  # the tenant's own, for its fetches only
        self._alert_webhook = alert_webhook  # the tenant's own (_sngin.json alerts.webhook)
        self._egress = egress
        self._tenant = tenant
        self._deadline = deadline
        self._request_id = request_id
        self._left = self._max = max_subrequests
        self._modules_left = self._max_modules = max_modules
        self.cost = BodyCost()  # server CPU this request's subrequest bodies cost
        # Modules this request was given (location: version, text), kept by reference for a
        # replay bundle (sngin.replay), which needs the text even when the worker had it.
        self.modules_given: dict[str, tuple[str, bytes]] = {}

    async def __call__(self, call: Call) -> CallResult:
        asked = call.request
        if isinstance(asked, HttpCall):
            return await self._http(call, asked)
        if isinstance(asked, ModuleCall):
            if self._modules_left <= 0:
                return CallResult(
                    id=call.id,
                    call_id=call.call_id,
                    error=f"more than {self._max_modules} module fetches in one request",
                )
            self._modules_left -= 1
            return await self._module(call, asked)
        if isinstance(asked, StorageCall):
            if self.storage is None:
                return CallResult(id=call.id, call_id=call.call_id, error="not available here")
            try:
                value = await self.storage(asked)
            except StorageRefused as exc:
                return CallResult(id=call.id, call_id=call.call_id, error=str(exc))
            return CallResult(id=call.id, call_id=call.call_id, done=True, value=value)
        return await self._notice(call, asked)

    async def _http(self, call: Call, asked: HttpCall) -> CallResult:
        outbound = self._services.outbound
        if outbound is None:
            return CallResult(id=call.id, call_id=call.call_id, error="not available here")
        if self._left <= 0:
            return CallResult(
                id=call.id,
                call_id=call.call_id,
                error=f"more than {self._max} subrequests in one request",
            )
        problem = http_call_problem(asked)
        if problem is not None:
            return CallResult(id=call.id, call_id=call.call_id, error=problem)
        self._left -= 1
        remaining = self._deadline - trio.current_time() - WALL_MARGIN_S
        timeout = min(asked.timeout_s or DEFAULT_TIMEOUT_S, remaining)
        bodies = self._services.bodies
        lease = bodies.lease(self._tenant) if bodies is not None else None
        try:
            result = await outbound.fetch(
                asked,
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

    async def _notice(self, call: Call, asked: EmailCall | AlertCall) -> CallResult:
        """email.send and alert.*: they count against the subrequest budget too."""
        if self._left <= 0:
            return CallResult(
                id=call.id,
                call_id=call.call_id,
                error=f"more than {self._max} subrequests in one request",
            )
        self._left -= 1
        timeout = self._deadline - trio.current_time() - WALL_MARGIN_S
        if timeout <= 0:
            return CallResult(id=call.id, call_id=call.call_id, error="no time left")
        try:
            if isinstance(asked, EmailCall):
                problem = email_call_problem(asked)
                if problem is not None:
                    raise MailRefused(problem)
                mailer = self._services.mailer
                if mailer is None:
                    raise MailRefused("email is not available here")
                await mailer.send(asked, timeout_s=timeout, egress=self._egress)
            else:
                alerts = self._services.alerts
                if alerts is None:
                    raise AlertFailed("alerts are not available here")
                await alerts.raise_alert(
                    asked,
                    tenant=self._tenant,
                    request_id=self._request_id,
                    webhook=self._alert_webhook,
                    timeout_s=min(timeout, DEFAULT_TIMEOUT_S),
                    egress=self._egress,
                )
        except (MailRefused, AlertFailed) as exc:
            return CallResult(id=call.id, call_id=call.call_id, error=str(exc))
        return CallResult(id=call.id, call_id=call.call_id, done=True)

    async def _module(self, call: Call, asked: ModuleCall) -> CallResult:
        """A require's search (sandbox/lua/prelude/09-modules.lua): the first of its places
        that has the file. 'tenant:' reads this tenant's store only; 'github:' and 'ghpath:'
        (master, else main) and 'default:' (the default module repository) read the GitHub
        raw host; 'platform:<name>', last, answers "none: use the platform library" (a
        tenant's json.lua wins over sngin's json). Module fetches have their own budget (one
        per require), not the subrequests'."""
        looked: list[str] = []
        try:
            places = asked.search.split("|")
            if len(places) > MAX_PLACES:
                raise CodeFetchError("too many places to look for one module")
            for place in places:
                if place.startswith("platform:"):
                    return CallResult(id=call.id, call_id=call.call_id, done=True)
                for location in self._locations(place):
                    try:
                        source, chunkname = await self._fetch_module(location)
                    except CodeFetchError as exc:
                        message = self._unreachable(place, location, looked, exc)
                        raise CodeFetchError(message) from None
                    if source is not None:
                        return self._answer(call, asked.have, location, source, chunkname)
                    looked.append(shown(location, self._tenant))
        except CodeFetchError as exc:
            return CallResult(id=call.id, call_id=call.call_id, error=exc.message)
        where = " or ".join(looked) if looked else "the module sources this server has"
        return CallResult(
            id=call.id, call_id=call.call_id, error=f"module not found (looked for {where})"
        )

    def _unreachable(
        self, place: str, location: str, looked: list[str], exc: CodeFetchError
    ) -> str:
        """Where the search stopped and why, and (for the default module repository) how to
        turn that repository off."""
        text = f"{exc.message} while looking for {shown(location, self._tenant)}"
        if looked:
            text += f" (not found in {' or '.join(looked)})"
        if place.startswith("default:"):
            text += (
                f"; it is the default module repository ({self._services.default_modules}:"
                " SNGIN_DEFAULT_MODULES, empty turns it off)"
            )
        return text

    def _locations(self, place: str) -> list[str]:
        """Where one place of a search may be: "tenant:<path>" or "github:<user>/<repo>/<ref>/
        <path>", each name checked."""
        kind, _, path = place.partition(":")
        problem = module_name_problem(path)
        if problem is not None:
            raise CodeFetchError(problem)
        if not MODULE_PATH.match(path) or ".." in path.split("/"):
            raise CodeFetchError(f"invalid module name {path}")
        if kind == "tenant":
            return [place]
        if kind == "github":
            return [place]
        if kind == "ghpath":
            parts = path.split("/", 2)
            if len(parts) < 3:
                raise CodeFetchError(f"invalid module name {path}")
            user, repo, rest = parts
            return [f"github:{user}/{repo}/{branch}/{rest}" for branch in FALLBACK_BRANCHES]
        if kind == "default":
            return (
                [f"github:{self._services.default_modules}/{path}"]
                if self._services.default_modules
                else []
            )
        raise CodeFetchError(f"invalid module name {place}")

    async def _fetch_module(self, location: str) -> tuple[Source | None, str]:
        kind, _, path = location.partition(":")
        if kind == "tenant":
            store = self._services.store
            if store is None:
                raise CodeFetchError("modules are not available here")
            return await store.fetch(file_key(self._tenant, path)), f"{self._tenant}/{path}"
        github, tokens = self._services.github, self._services.github_tokens
        if github is None:
            raise CodeFetchError("modules from GitHub are not available here")
        # Counted against this tenant's share of the module cache, which every tenant shares:
        # one tenant's many URLs cannot flush the others' modules. A fetch made with a token
        # is cached under its scope (GitHubTokens): no other tenant reads it.
        key = path
        if tokens is not None:
            key = tokens.key_for(path, self._tenant, self._github_token)
        return await github.fetch(key, owner=self._tenant), f"github.com/{path}"

    def _answer(
        self, call: Call, have: str | None, location: str, source: Source, chunkname: str
    ) -> CallResult:
        unchanged = have == f"{location}\0{source.version}"
        self.modules_given[location] = (source.version, source.text)
        module = ModuleSource(
            text=b"" if unchanged else source.text,
            version=source.version,
            chunkname=chunkname,
            location=location,
            unchanged=unchanged,
        )
        return CallResult(id=call.id, call_id=call.call_id, module=module)


def shown(location: str, tenant: str) -> str:
    kind, _, path = location.partition(":")
    return f"{tenant}/{path}" if kind == "tenant" else f"github.com/{path}"
