"""Scheduled runs wired into a serving node: one scheduler per node (the only process, or the
first of `--processes N`: the node's parent keeps that slot filled), its tenants found by a scan
of the folder store and, for any store, whenever a tenant's _sngin.json is parsed anew."""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from sngin.code.local_store import LocalStore
from sngin.cron.runs import CronRuns
from sngin.cron.scheduler import CronScheduler
from sngin.errors import SnginError
from sngin.names import CONFIG_NAME

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sngin.edge.deps import Deps
    from sngin.edge.pipeline import TenantPipeline


def runs_cron_here(deps: Deps) -> bool:
    """The only process of the node, or its first one."""
    return deps.configs is not None and (deps.link is None or deps.link.role.index == 0)


def cron_runs(deps: Deps, pipeline: TenantPipeline) -> CronRuns:
    """What fires runs in this process: the scheduler's ticks, and runs made by hand."""
    bus = deps.purger.bus
    node = f"{bus.node if bus is not None else secrets.token_hex(8)}/{os.getpid()}"
    runs = CronRuns(deps, pipeline, node=node, claims=deps.settings.redis_url is not None)
    deps.started.cron_runs = runs
    deps.started.cron_tenants = tenant_finder(deps)
    return runs


def tenant_finder(deps: Deps) -> Callable[[], Awaitable[list[str]]]:
    """How this node lists the tenants that may have entries, chosen once here: the code
    store's listing of its sites (the folder's folders; on S3, ListObjectsV2 of the prefix,
    page by page: each site's _sngin.json is then read through the code cache, so only a
    changed one costs a GET); with the management API off, the folder store's folders that
    hold a _sngin.json, and on S3 none (sites are found as their configurations are read)."""
    files, store = deps.files, deps.store
    if files is not None:
        listing = files

        async def sites() -> list[str]:
            try:
                return await listing.tenants()
            except SnginError as exc:
                log.warning("cron: the code store's sites could not be listed: %s", exc)
                return []

        return sites
    if isinstance(store, LocalStore):
        root = store.root

        async def folders() -> list[str]:
            return await trio.to_thread.run_sync(folder_tenants, root)

        return folders

    async def none() -> list[str]:
        return []

    return none


def folder_tenants(root: Path) -> list[str]:
    """Blocking: the tenants of a folder store that have a _sngin.json."""
    try:
        with os.scandir(root) as entries:
            return sorted(
                entry.name for entry in entries
                if entry.is_dir() and (Path(entry.path) / CONFIG_NAME).is_file()
            )  # fmt: skip
    except OSError:
        return []


async def serve_cron(
    deps: Deps,
    pipeline: TenantPipeline,
    *,
    task_status: trio.TaskStatus[CronScheduler] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the node's scheduler until cancelled."""
    runs = deps.started.cron_runs or cron_runs(deps, pipeline)
    scheduler = CronScheduler(
        runs,
        deps.started.cron_tenants,
        pipeline.tenant_config,
        rescan_s=deps.settings.cron_rescan_s,
    )
    if deps.configs is not None:
        deps.configs.on_parsed = scheduler.update
    deps.started.cron = scheduler
    await scheduler.run(task_status=task_status)
