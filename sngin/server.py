"""serve(settings): opens the long-lived resources and runs Hypercorn until SIGTERM/SIGINT."""

from __future__ import annotations

import dataclasses
import logging
import signal
from contextlib import asynccontextmanager
from functools import partial
from typing import TYPE_CHECKING, Any, Final, cast

import trio
from hypercorn.trio import serve as hypercorn_serve

from sngin.admin.coordination import attach_cluster_bus, attach_link, first_of
from sngin.admin.routes import AdminListener, create_admin
from sngin.bodies.budgets import return_large_blocks_to_the_os
from sngin.calls.alerts import Alerts
from sngin.calls.mail import Mailer
from sngin.calls.outbound import open_outbound, system_resolver
from sngin.code.cache import CodeCache
from sngin.code.files import FolderFiles
from sngin.code.github import GitHubTokens, open_github_store
from sngin.code.local_store import LocalStore
from sngin.code.mirror import DiskMirror, mirror_folder
from sngin.code.quota import CodeQuota
from sngin.code.s3_files import S3Files
from sngin.code.s3_store import S3Store, open_s3_store
from sngin.cron.service import cron_runs, runs_cron_here, serve_cron
from sngin.edge.connection_guard import ConnectionGate, GatedConfig, contain_connection_errors
from sngin.edge.deps import Deps
from sngin.edge.descriptors import ADMIN_MAX_CONNECTIONS, connection_limit, raise_descriptor_limit
from sngin.edge.dispatcher import Dispatcher
from sngin.errors import CodeFetchError, ConfigError, StoreMisconfigured
from sngin.limits import MIB, Limits
from sngin.names import is_config_key
from sngin.node.link import ProcessLink
from sngin.node.share import process_settings
from sngin.observe.logsetup import quiet_libraries
from sngin.observe.loop_lag import serve_loop_lag
from sngin.observe.observer import Observer
from sngin.storage.opening import open_tenant_storage
from sngin.storage.redis import RedisCache, RedisStorage
from sngin.storage.script_cache import TenantCache
from sngin.storage.watch import watch_storage
from sngin.tenants.config import TenantConfigs
from sngin.tenants.egress import EgressPolicy
from sngin.workers.pool import PoolConfig, open_pool
from sngin.workers.process import WorkerOptions

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable

    from hypercorn.config import Config

    from sngin.calls.outbound import Outbound
    from sngin.code.files import CodeFiles
    from sngin.code.store import CodeSource
    from sngin.config import Bind, PoolSettings, Settings
    from sngin.edge.dispatcher import ASGIApp
    from sngin.node.link import ProcessRole
    from sngin.storage.tenant_storage import TenantStorage
    from sngin.workers.pool import Pool

log = logging.getLogger(__name__)
LISTEN_BACKLOG: Final = 4096  # the listen queue (see hypercorn_config)


PROBE_TIMEOUT_S = 10.0
# A worker keeps at least this much, whatever SNGIN_KEPT_RUNTIMES_MB (0 included) leaves it:
# switching between a handful of tenants must not rebuild runtimes.
MIN_KEPT_RUNTIMES_BYTES = 4 * MIB


def hypercorn_config(settings: Settings, gate: ConnectionGate | None = None) -> GatedConfig:
    config = GatedConfig()
    config.connection_gate = gate
    config.send_timeout_s = settings.http.send_timeout_s
    config.bind = [str(settings.bind)]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")
    # A slowloris client cannot hold a connection: Hypercorn counts a connection whose request
    # headers are incomplete as idle, so keep_alive_timeout bounds the headers; the app bounds
    # the body (body_timeout_s).
    config.keep_alive_timeout = settings.http.keep_alive_s
    config.read_timeout = settings.http.read_timeout_s
    config.h11_max_incomplete_size = 64 * 1024
    config.graceful_timeout = settings.http.grace_s
    config.include_server_header = False
    # A burst waits in the kernel's queue, not dropped and retried 1 s later (Hypercorn: 100).
    config.backlog = LISTEN_BACKLOG
    return config


async def wait_for_signal() -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("received %s: finishing in-flight requests", signal.Signals(signum).name)
            return


async def serve(
    settings: Settings,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]] = wait_for_signal,
    role: ProcessRole | None = None,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until shutdown_trigger returns; reports the bound URLs through task_status.
    `role`: this is one of the node's `--processes` (its share of the settings, the listeners
    its parent passed, and the link to that parent)."""
    link = None
    if role is not None:
        settings = process_settings(settings, role.index, role.count)
        link = ProcessLink.from_role(role)
        shutdown_trigger = first_of(shutdown_trigger, link.lost.wait)
    descriptors = raise_descriptor_limit()
    return_large_blocks_to_the_os()
    log.info(
        "file descriptors: %d; client connections: at most %d",
        descriptors,
        connection_limit(settings, descriptors),  # a setting it cannot honour stops start-up here
    )
    limits_for = default_limits(settings)
    tokens = GitHubTokens(settings.github_token, settings.github_token_owners)
    async with (
        open_tenant_storage(settings) as storage,
        open_code_source(settings, role) as store,
        open_github_modules(settings, tokens) as github,
        open_outbound(
            EgressPolicy.parse(settings.egress_allow), settings=settings.outbound
        ) as outbound,
        open_pool(pool_config(settings), limits_for) as pool,
    ):
        observer = Observer(
            settings.metrics_tenants,
            text_log=settings.log_format == "text",
            process=role.index if role is not None else None,
        )
        deps = assemble_deps(
            settings,
            store=store,
            pool=pool,
            observer=observer,
            storage=storage,
            outbound=outbound,
            github=github,
            github_tokens=tokens,
            configs=TenantConfigs(store, settings),
            mailer=Mailer(
                EgressPolicy.parse(settings.egress_allow),
                system_resolver,
                enabled=settings.email_enabled,
            ),
            link=link,
            files=code_files_for(settings, store),
        )
        async with trio.open_nursery() as nursery:
            attach_cluster_bus(deps, nursery)
            if link is not None:
                attach_link(deps, link, nursery)
            await serve_app(deps, shutdown_trigger=shutdown_trigger, task_status=task_status)
            nursery.cancel_scope.cancel()


def assemble_deps(
    settings: Settings,
    *,
    store: CodeSource,
    pool: Pool,
    observer: Observer,
    storage: TenantStorage | None,
    outbound: Outbound | None = None,
    github: CodeCache | None = None,
    github_tokens: GitHubTokens | None = None,
    configs: TenantConfigs | None = None,
    mailer: Mailer | None = None,
    link: ProcessLink | None = None,
    files: CodeFiles | None = None,
    **more: Any,
) -> Deps:
    """The one assembly of Deps, for serve() and for the tests' servers: what follows from the
    parts (alerts over the outbound client, the scripts' cache over the storage) is made here."""
    alerts = None
    if outbound is not None:
        alerts = Alerts(outbound, webhook=settings.alert_webhook, count=observer.metrics.alert)
    return Deps(
        settings=settings,
        store=store,
        pool=pool,
        outbound=outbound,
        github=github,
        configs=configs,
        observer=observer,
        mailer=mailer,
        alerts=alerts,
        github_tokens=github_tokens,
        storage=storage,
        tenant_cache=tenant_cache_for(settings, storage),
        link=link,
        files=files,
        **more,
    )


def code_files_for(settings: Settings, store: CodeSource) -> CodeFiles | None:
    """The management API's view of the code store (None with SNGIN_UI=off)."""
    if settings.ui == "off":
        return None
    quota = CodeQuota(max_bytes=settings.code_quota_bytes, max_files=settings.code_quota_files)
    if isinstance(store, LocalStore):
        data = settings.storage.data_path
        return FolderFiles(store.root, data / "code-locks", data / "code-history", quota)
    if isinstance(store, CodeCache) and isinstance(store.origin, S3Store):
        return S3Files(store.origin, quota)
    return None


def tenant_cache_for(settings: Settings, storage: TenantStorage | None) -> TenantCache | RedisCache:
    """`cache`: in Redis with the storage when SNGIN_REDIS_URL is set, else node-local."""
    bounds = settings.storage
    if storage is not None and isinstance(storage.backend, RedisStorage):
        return RedisCache(
            storage.backend, max_bytes=bounds.cache_bytes, tenant_share=bounds.cache_tenant_share
        )
    return TenantCache(max_bytes=bounds.cache_bytes, tenant_share=bounds.cache_tenant_share)


def kept_runtimes_share(pool: PoolSettings) -> int:
    """One worker's share of SNGIN_KEPT_RUNTIMES_MB (the node's total)."""
    return max(MIN_KEPT_RUNTIMES_BYTES, pool.kept_runtimes_mb * MIB // pool.size)


def pool_config(settings: Settings) -> PoolConfig:
    p, limits = settings.pool, settings.limits
    # RLIMIT_AS for a worker: Python and its libraries (~30 MB measured), twice the Lua cap (a
    # growing string briefly holds old and new), and a few copies of the largest bodies.
    largest_body = max(settings.http.max_request_bytes, limits.max_body_bytes)
    # And the runtimes a worker keeps for recent tenants (their Lua heap, with LuaJIT's own
    # structures about twice that).
    kept_runtimes = kept_runtimes_share(p)
    address_space = 64 * MIB + 2 * limits.memory_mb * MIB + 4 * largest_body + 2 * kept_runtimes
    return PoolConfig(
        **{f.name: getattr(p, f.name) for f in dataclasses.fields(p)},
        worker=WorkerOptions(address_space_bytes=address_space, kept_runtimes_bytes=kept_runtimes),
    )


def default_limits(settings: Settings) -> Callable[[str], Limits]:
    """Every tenant's limits before its _sngin.json: the operator's."""
    return lambda tenant: settings.limits


@asynccontextmanager
async def open_github_modules(
    settings: Settings, tokens: GitHubTokens | None = None
) -> AsyncIterator[CodeCache]:
    """Modules by GitHub URL, behind their own code cache (TTL, 304s, single-flight, stale)."""
    async with (
        open_github_store(settings.github_raw_url, tokens) as store,
        trio.open_nursery() as nursery,
    ):
        yield CodeCache(store, settings.cache, nursery)
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def open_code_source(
    settings: Settings, role: ProcessRole | None = None
) -> AsyncIterator[CodeSource]:
    """The S3 store behind the code cache when AWS_S3_CODE_PATH is set, else the folder. Each
    of several processes keeps its own disk mirror (no two write one file), with its share of
    SNGIN_MIRROR_BYTES; process 0 uses the folder a single process would."""
    if settings.s3 is None:
        log.info("code store: folder %s", settings.code_dir)
        yield LocalStore(settings.code_dir)
        return
    async with open_s3_store(settings.s3) as s3, trio.open_nursery() as nursery:
        mirror = None
        if settings.mirror_bytes > 0:
            folder = mirror_folder(settings.app_path, s3.location)
            if role is not None and role.index > 0:
                folder = folder / f"process-{role.index}"
            mirror = DiskMirror(folder, settings.mirror_bytes)
            try:
                await mirror.open()
            except OSError as exc:
                raise ConfigError(
                    f"SNGIN_APP_PATH: cannot use {settings.app_path}: {exc}"
                ) from None
        yield CodeCache(s3, settings.cache, nursery, mirror, mirror_absence=is_config_key)
        nursery.cancel_scope.cancel()


async def serve_app(
    deps: Deps,
    *,
    shutdown_trigger: Callable[[], Awaitable[None]],
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run Hypercorn for the app over already opened resources, with the readiness probe."""
    contain_connection_errors()
    quiet_libraries()
    admin_app = create_admin(deps)
    app: Any = Dispatcher(deps, cast("ASGIApp", admin_app))
    settings = deps.settings
    deps.connections.limit = connection_limit(settings)
    deps.observer.attach()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(probe_forever, deps)
            nursery.start_soon(serve_loop_lag, deps.observer.loop_lag)
            nursery.start_soon(deps.recording.write_forever)  # replay bundles, off the path
            cron_runs(deps, app.pipeline)  # (runs by hand: any process)
            if runs_cron_here(deps):
                await nursery.start(serve_cron, deps, app.pipeline)
            if deps.storage is not None:
                nursery.start_soon(watch_storage, deps.storage, deps.observer)
            # One trigger for every listener (a signal is delivered to one receiver only).
            stop = trio.Event()

            async def trigger() -> None:
                await shutdown_trigger()
                deps.observer.hub.close_all()  # live tails end now, not at the grace deadline
                stop.set()

            nursery.start_soon(trigger)
            async with trio.open_nursery() as servers:
                role = deps.link.role if deps.link is not None else None
                config = hypercorn_config(settings, deps.connections)
                if role is not None:  # the listener the node's parent bound
                    config.bind = [f"fd://{role.listen_fd}"]
                binds: list[str] = await listen(servers, app, config, settings.bind, stop)
                deps.started.public_url = binds[0] if binds else None
                if settings.admin_bind is not None:
                    admin_gate = ConnectionGate(ADMIN_MAX_CONNECTIONS)
                    admin_config = hypercorn_config(settings, admin_gate)
                    admin_config.bind = [str(settings.admin_bind)]
                    if role is not None and role.admin_fd is not None:
                        admin_config.bind = [f"fd://{role.admin_fd}"]
                    admin: Any = AdminListener(admin_app)
                    binds += await listen(servers, admin, admin_config, settings.admin_bind, stop)
                if deps.link is not None:
                    deps.link.ready(binds)
                task_status.started(binds)
            nursery.cancel_scope.cancel()
    finally:
        deps.observer.detach()


async def listen(
    nursery: trio.Nursery, app: Any, config: Config, bind: Bind, stop: trio.Event
) -> list[str]:
    """Start one Hypercorn listener; a bind that fails is one line naming the address."""
    try:
        urls: list[str] = await nursery.start(
            partial(hypercorn_serve, app, config, shutdown_trigger=stop.wait)
        )
    except (OSError, BaseExceptionGroup) as exc:
        # Hypercorn binds inside nested nurseries: the OSError arrives wrapped in groups.
        error = exc
        while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:
            error = error.exceptions[0]
        if not isinstance(error, OSError):
            raise
        reason = (error.strerror or str(error)).lower()
        raise ConfigError(f"cannot listen on {bind}: {reason}") from None
    return urls


async def probe_once(deps: Deps) -> None:
    """Does the code store answer as it should? Owned by the server, so readiness never waits
    on requests. A change of state is logged once."""
    reason = ""
    try:
        with trio.fail_after(PROBE_TIMEOUT_S):
            await deps.store.probe()
    except StoreMisconfigured as exc:
        reason = f"code store misconfigured: {exc.message}"
    except CodeFetchError as exc:
        reason = f"code store unreachable: {exc.message}"
    except trio.TooSlowError:
        reason = f"code store unreachable: no answer within {PROBE_TIMEOUT_S:g} s"
    observer = deps.observer
    if not observer.probed or reason != observer.not_ready_reason:
        if reason:
            log.error("not ready: %s", reason)
        else:
            log.info("code store answered: ready")
    observer.probed = True
    observer.ready = not reason
    observer.not_ready_reason = reason


async def probe_forever(deps: Deps) -> None:
    while True:
        await probe_once(deps)
        await trio.sleep(deps.settings.probe_interval_s)
