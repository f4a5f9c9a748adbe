"""The admin app: one guard before every route, one error handler for each kind of error,
and the route tables of admin/ (node, storage, code, tokens, UI, events); and the app of the
SNGIN_ADMIN_BIND listener."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from quart_trio import QuartTrio
from werkzeug.exceptions import HTTPException

from sngin.admin.code import CodeRoutes
from sngin.admin.cron import CronRoutes
from sngin.admin.events import EventRoutes
from sngin.admin.guard import ADMIN_LISTENER, Guard, add_routes
from sngin.admin.node import NodeRoutes
from sngin.admin.replays import ReplayRoutes
from sngin.admin.storage import StorageRoutes
from sngin.admin.tokens import TokenRoutes
from sngin.admin.ui import UiRoutes
from sngin.errors import SnginError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from sngin.admin.access import Answer
    from sngin.edge.deps import Deps

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]


def create_admin(deps: Deps) -> QuartTrio:
    admin = QuartTrio("sngin.admin")
    guard = Guard(deps)
    admin.extensions["sngin.guard"] = guard  # (the route table test reads every route's access)
    admin.before_request(guard.check)  # every route: who calls, which tenant, CSRF (sessions)

    @admin.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Answer:
        # Unknown /__sngin/ paths and wrong methods: JSON like every other admin answer.
        code = error.code or 500
        headers = {name: value for name, value in error.get_headers() if name == "Allow"}
        return {"error": f"{code} {error.name}"}, code, headers

    @admin.errorhandler(SnginError)
    async def sngin_error(error: SnginError) -> Answer:
        # What a route raises (a bad or too deep body, a bad host): its status, JSON.
        return {"error": error.message}, error.status, error.headers

    add_routes(admin, guard, NodeRoutes(deps).routes())
    add_routes(admin, guard, StorageRoutes(deps).routes())
    add_routes(admin, guard, CodeRoutes(deps).routes())
    add_routes(admin, guard, CronRoutes(deps).routes())
    add_routes(admin, guard, ReplayRoutes(deps).routes())
    add_routes(admin, guard, TokenRoutes(deps).routes())  # the operator's only
    add_routes(admin, guard, UiRoutes(deps).routes())
    add_routes(admin, guard, EventRoutes(deps).routes())
    return admin


class AdminListener:
    """The ASGI app of the SNGIN_ADMIN_BIND listener: the admin API only. The public listener
    already ran the admin app's lifespan, so this one answers lifespan events itself."""

    def __init__(self, admin: QuartTrio) -> None:
        self.admin = admin

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        scope[ADMIN_LISTENER] = True  # the admin origin, whatever the Host (sngin.admin.guard)
        await self.admin(scope, receive, send)  # type: ignore[arg-type]
