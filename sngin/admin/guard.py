"""The one guard in front of every admin route: who is calling, which tenant the route may
reach, CSRF for cookie sessions, and where the web UI and its sessions exist at all.

Each route declares its access with `guard.allow(...)` and `guard.check` runs before every
request (Quart's before_request), so no route carries its own stanza and an undeclared route
is the operator's only:
- `PUBLIC`: no credentials (health; `events/s3` checks its own token);
- `UI`: the web UI's page, assets and login: only on the admin origin, 404 elsewhere;
- `OPERATOR`: the admin token or an operator's UI session (a tenant token is 401);
- `TENANT`: the operator, or a tenant's token or session for the tenant the route names (its
  `<host>`, or `?host=`; 403 for another tenant); a route naming none sees only the caller's.

The admin origin is the admin listener (SNGIN_ADMIN_BIND), or on the public listener a Host
that is an IP literal, `localhost` or SNGIN_ADMIN_HOST: never a tenant's hostname, so a
tenant's pages can never read the UI's CSRF token or ride an operator's session. Elsewhere a
session cookie is ignored; bearer-token calls (no ambient authority) work on any Host.
"""

from __future__ import annotations

import enum
import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, Final, TypeVar

from quart import g, request

from sngin.admin.access import (
    DISABLED,
    FORBIDDEN,
    WRONG_TOKEN,
    Answer,
    Caller,
    bearer,
    lookup_token,
    token_alive,
)
from sngin.admin.session import COOKIE, CSRF_HEADER, Session, verify
from sngin.errors import BadRequest
from sngin.names import host_of, names_admin_origin, tenant_of

if TYPE_CHECKING:
    from quart_trio import QuartTrio

    from sngin.config import Settings
    from sngin.edge.deps import Deps

ADMIN_LISTENER: Final = "sngin.admin_listener"  # set in the ASGI scope by the admin listener
SAFE_METHODS: Final = frozenset({"GET", "HEAD", "OPTIONS"})
NOT_FOUND: Answer = {"error": "404 Not Found"}, 404
View = TypeVar("View", bound=Callable[..., Awaitable[Any]])


class Access(enum.Enum):
    PUBLIC = "public"
    UI = "ui"
    OPERATOR = "operator"
    TENANT = "tenant"


def is_admin_host(host: str, settings: Settings) -> bool:
    """An IP literal, `localhost` or SNGIN_ADMIN_HOST: the names the admin origin answers to."""
    return names_admin_origin(host, settings.admin_host)


def on_admin_origin(settings: Settings) -> bool:
    if request.scope.get(ADMIN_LISTENER):
        return True
    return is_admin_host(host_of(request.headers.get("Host", "")), settings)


def session_here(deps: Deps) -> Session | None:
    """The UI session of this request: only on the admin origin, only with a valid cookie."""
    cookie = request.cookies.get(COOKIE)
    token = deps.settings.admin_token
    if cookie is None or token is None or not on_admin_origin(deps.settings):
        return None
    return verify(cookie, token)


async def session_unexpired(session: Session) -> bool:
    return session.expires > time.time()


def csrf_ok(session: Session) -> bool:
    offered = request.headers.get(CSRF_HEADER, "")
    return hmac.compare_digest(offered.encode(), session.csrf.encode())


async def always() -> bool:
    return True


@dataclass(frozen=True, slots=True)
class Credential:
    """Who a request's credential names, and how to tell later that it still holds."""

    caller: Caller
    still_valid: Callable[[], Awaitable[bool]]


@dataclass(frozen=True, slots=True)
class Granted:
    """What the guard found, for the route: the caller, the tenant its route names, and how to
    tell later whether the credential still holds (a long-lived answer, a live tail, asks)."""

    caller: Caller
    tenant: str | None
    still_valid: Callable[[], Awaitable[bool]] = always


def granted() -> Granted:
    """The guard's finding for this request (set by Guard.check before the route runs)."""
    found: Granted = g.granted
    return found


class Guard:
    def __init__(self, deps: Deps) -> None:
        self._deps = deps
        self._access: dict[str, Access] = {}

    def access_of(self, endpoint: str) -> Access:
        """What a route declared; a route that declared nothing is the operator's."""
        return self._access.get(endpoint, Access.OPERATOR)

    def allow(self, access: Access) -> Callable[[View], View]:
        """Declare who may call the route below (by its endpoint, the function's name)."""

        def declare(view: View) -> View:
            self._access[view.__name__] = access
            return view

        return declare

    async def check(self) -> Answer | None:
        endpoint = request.endpoint
        if endpoint is None:
            return None  # no such route, or a wrong method: the 404/405 handler answers
        access = self.access_of(endpoint)
        if access is Access.PUBLIC:
            return None
        settings = self._deps.settings
        if access is Access.UI:
            return None if on_admin_origin(settings) else NOT_FOUND
        found = await self._caller(operator_only=access is Access.OPERATOR)
        if not isinstance(found, Credential):
            return found
        caller = found.caller
        if access is Access.OPERATOR and caller.host is not None:
            return WRONG_TOKEN
        named = (request.view_args or {}).get("host")
        if named is None and access is Access.TENANT:
            named = request.args.get("host")
        tenant = None
        if isinstance(named, str):
            try:
                tenant = tenant_of(named)
            except BadRequest as exc:
                return {"error": exc.message}, 400
            if is_admin_host(tenant, settings):
                return {"error": f"{tenant} is the admin origin, not a site"}, 400
            if not caller.may(tenant):
                return FORBIDDEN
        g.granted = Granted(caller, tenant, found.still_valid)
        return None

    async def _caller(self, *, operator_only: bool) -> Credential | Answer:
        """The operator or a tenant, from a bearer token or (on the admin origin) a session,
        with the check that it still holds; a session's changing request must carry its CSRF
        token."""
        deps = self._deps
        admin_token = deps.settings.admin_token
        if admin_token is None:
            return DISABLED
        offered = bearer()
        if offered:
            if hmac.compare_digest(offered.encode(), admin_token.encode()):
                return Credential(Caller(host=None), always)
            if operator_only:  # no lookup: an operator route answers 401 to any other token
                return WRONG_TOKEN
            caller = await lookup_token(deps, offered)
            if not isinstance(caller, Caller):
                return caller

            async def token_still_there() -> bool:
                return isinstance(await lookup_token(deps, offered), Caller)

            return Credential(caller, token_still_there)
        session = session_here(deps)
        if session is None:
            return WRONG_TOKEN
        if request.method not in SAFE_METHODS and not csrf_ok(session):
            return {"error": "missing or wrong CSRF token"}, 403
        if session.host is None:
            return Credential(Caller(host=None), partial(session_unexpired, session))
        if operator_only:
            return WRONG_TOKEN
        if not await token_alive(deps, session.token_key):
            return {"error": "this session's token was revoked"}, 401

        async def session_still_holds() -> bool:
            return await session_unexpired(session) and await token_alive(deps, session.token_key)

        return Credential(Caller(host=session.host), session_still_holds)


@dataclass(frozen=True, slots=True)
class Route:
    """One row of an admin route table: its methods, path, view and who may call it."""

    methods: tuple[str, ...]
    path: str
    view: Callable[..., Awaitable[Any]]
    access: Access = Access.OPERATOR


def add_routes(admin: QuartTrio, guard: Guard, routes: list[Route]) -> None:
    """Register a route table: each view under its own name as endpoint, its access declared
    to the guard, which checks it before every request."""
    for route in routes:
        guard.allow(route.access)(route.view)
        admin.add_url_rule(route.path, view_func=route.view, methods=list(route.methods))
