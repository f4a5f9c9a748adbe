"""Whether the tenant storage backend answers, watched from start-up: one log line when it
stops answering (and at start if it never did), one when it answers again, and the reason in
`/__sngin/ready` meanwhile (still 200: everything but storage serves)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from sngin.observe.observer import Observer
    from sngin.storage.tenant_storage import TenantStorage

log = logging.getLogger(__name__)

WATCH_INTERVAL_S: Final = 2.0


async def watch_storage(storage: TenantStorage, observer: Observer) -> None:
    """Ask the backend every WATCH_INTERVAL_S; log the changes (until cancelled)."""
    where = storage.backend.location
    first = True
    while True:
        problem = await storage.problem()
        if problem != observer.storage_problem or first:
            if problem is not None:
                log.error(
                    'storage: %s: %s; scripts get "storage unavailable" until it answers',
                    where,
                    problem,
                )
            elif not first:
                log.warning("storage: %s answers again", where)
        observer.storage_problem = problem
        first = False
        await trio.sleep(WATCH_INTERVAL_S)
