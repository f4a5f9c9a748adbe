"""What `/__sngin/stats` and `/__sngin/metrics` report: this process's figures, and with
`--processes N` the node's, gathered from every process (per-process rows and node totals)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

from sngin.observe.series import Bucket, merged, points
from sngin.storage.tenant_storage import StorageUnavailable

if TYPE_CHECKING:
    from sngin.edge.deps import Deps

SERIES = "series:"  # a report of one tenant's buckets
SUMMARY = "summary"  # a report of every tenant's last ten minutes, added up
PER_PROCESS = frozenset({"process", "pid", "restarts", "started"})  # not added up
LAG = "event_loop_lag_ms"  # per process; the node's is the maximum of each figure


def plain(value: Any) -> Any:
    """A statistics snapshot (frozen dataclasses, read-only mappings, tuples) as JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, tuple | list):
        return [plain(item) for item in value]
    return value


def process_statistics(deps: Deps) -> dict[str, Any]:
    """This process's own figures (the node's, with one process)."""
    gate = deps.connections
    body: dict[str, Any] = {
        "pool": plain(deps.pool.statistics()),
        "connections": {"open": gate.open, "limit": gate.limit, "refused": gate.refused},
        "budgets": plain(deps.budgets.statistics()),
        "event_loop_lag_ms": plain(deps.observer.loop_lag.statistics()),
    }
    if deps.storage is not None:
        body["storage_operations"] = deps.storage.operations
    for name, source in (("code_cache", deps.store), ("module_cache", deps.github)):
        figures = source.statistics() if source is not None else None
        if figures is not None:
            body[name] = plain(figures)
    bus = deps.purger.bus
    if bus is not None:
        body["cluster_bus"] = plain(bus.statistics())
    hub = deps.observer.hub
    # Tenants tailed here, and (several processes) those whose lines go to another process.
    body["live_tails"] = {"here": sorted(hub.subscribers), "forwarded": sorted(hub.remote)}
    return body


async def node_statistics(deps: Deps, *, cluster: bool) -> dict[str, Any]:
    """The whole node: with several processes, their figures added up (lists joined), each
    process's own under `processes`; what they share (quarantines, storage) once."""
    link = deps.link
    if link is None:
        body = process_statistics(deps)
    else:
        rows = await link.gather("stats")
        reports = []
        for row in rows:
            report: dict[str, Any] = {"process": row.index, "pid": row.pid}
            report |= {"restarts": row.restarts, "started": stamp(row.started)}
            if row.body is not None:
                report |= msgspec.json.decode(row.body)
            else:
                report["error"] = row.error
            reports.append(report)
        answered = [r for r in reports if "error" not in r]
        body = added_up(answered, skip=PER_PROCESS | {LAG})
        body[LAG] = worst_lag(answered)
        body["processes"] = reports
    body["quarantined"] = quarantine_list(deps)
    storage_operations = body.pop("storage_operations", None)
    if deps.storage is not None:
        body["storage"] = {
            "operations": storage_operations,
            "database_bytes": deps.storage.database_bytes(),
            "tenants": await storage_usage(deps),
        }
    bus = deps.purger.bus
    if cluster and bus is not None:
        view = await bus.cluster_view()
        if view is not None:
            body["cluster"] = view
    return body


def worst_lag(reports: list[dict[str, Any]]) -> dict[str, float]:
    """The node's event-loop lag: one stalled process stalls every request it holds, so each
    figure is the worst process's (samples are added up)."""
    lags = [r[LAG] for r in reports if LAG in r]
    if not lags:
        return {}
    worst = {key: max(lag[key] for lag in lags) for key in lags[0]}
    worst["samples"] = sum(lag.get("samples", 0) for lag in lags)
    return worst


def added_up(
    reports: list[dict[str, Any]], *, skip: set[str] | frozenset[str] = frozenset()
) -> dict[str, Any]:
    """Several processes' reports as one: numbers added, lists joined, mappings merged key by
    key; anything else (names, flags) as the first report has it."""
    total: dict[str, Any] = {}
    for report in reports:
        for key, value in report.items():
            if key in skip:
                continue
            total[key] = combined(total[key], value) if key in total else value
    return total


def combined(left: Any, right: Any) -> Any:
    if isinstance(left, bool) or isinstance(right, bool):
        return left
    if isinstance(left, int | float) and isinstance(right, int | float):
        return left + right
    if isinstance(left, list) and isinstance(right, list):
        return left + right
    if isinstance(left, dict) and isinstance(right, dict):
        return added_up([left, right])
    return left


def stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def quarantine_list(deps: Deps) -> list[dict[str, Any]]:
    """Paused tenants, each with its seconds left and the wall-clock time it ends."""
    now = time.time()
    return [
        {"host": tenant, "remaining_s": round(left, 1), "until": stamp(now + left)}
        for tenant, left in deps.pool.quarantined().items()
    ]


async def storage_usage(deps: Deps) -> list[dict[str, Any]]:
    """Keys and bytes of the first SNGIN_METRICS_TENANTS tenants with storage (bounded, like
    the metrics' labels); `storage unavailable` leaves it empty rather than failing stats."""
    storage = deps.storage
    if storage is None:
        return []
    rows = []
    try:
        for tenant in (await storage.tenants())[: deps.settings.metrics_tenants]:
            keys, size = await storage.usage(tenant)
            rows.append({"host": tenant, "keys": keys, "bytes": size})
    except StorageUnavailable:
        return []
    return rows


def observe_gauges(deps: Deps) -> None:
    """Point-in-time values, read when Prometheus scrapes."""
    metrics = deps.observer.metrics
    stats = deps.pool.statistics()
    metrics.workers.set(stats.live)
    metrics.busy.set(stats.live - stats.idle)
    metrics.access_lost.set(deps.observer.access.lost)
    cache = deps.store.statistics()
    if cache is not None:
        metrics.cache_entries.set(cache.entries)
        metrics.cache_bytes.set(cache.bytes)


async def observe_storage(deps: Deps) -> None:
    metrics = deps.observer.metrics
    for row in await storage_usage(deps):
        metrics.storage_bytes.labels(metrics.labels(row["host"])).set(row["bytes"])


async def render_metrics(deps: Deps) -> bytes:
    """The exposition: with several processes, every one refreshes its gauges first."""
    observe_gauges(deps)
    if deps.link is not None:
        await deps.link.gather("gauges")
    await observe_storage(deps)
    return deps.observer.metrics.render()


async def tenant_series(deps: Deps, tenant: str) -> list[dict[str, Any]]:
    """A site's last ten minutes: with several processes, every process's added up."""
    now = time.time()
    own = deps.observer.series.buckets(tenant, now)
    if deps.link is None:
        return points(own)
    rows = await deps.link.gather(SERIES + tenant)
    reports = [msgspec.json.decode(r.body, type=list[Bucket]) for r in rows if r.body]
    return points(merged(*reports) if reports else own)


async def site_totals(deps: Deps) -> dict[str, list[float]]:
    """Every site's [requests, 5xx, CPU ms] over the last ten minutes; with several
    processes, every process's added up (one round trip for all sites)."""
    own = deps.observer.series.totals(time.time())
    if deps.link is None:
        return own
    total: dict[str, list[float]] = {}
    for row in await deps.link.gather(SUMMARY):
        if row.body:
            for tenant, figures in msgspec.json.decode(row.body).items():
                into = total.setdefault(tenant, [0.0, 0.0, 0.0])
                for i, value in enumerate(figures):
                    into[i] += value
    return total


async def report(deps: Deps, what: str) -> bytes:
    """This process's answer to a report the node's parent asks for."""
    if what == "stats":
        return msgspec.json.encode(process_statistics(deps))
    if what == SUMMARY:
        return msgspec.json.encode(deps.observer.series.totals(time.time()))
    if what.startswith(SERIES):
        return msgspec.json.encode(deps.observer.series.buckets(what[len(SERIES) :], time.time()))
    if what == "gauges":
        observe_gauges(deps)
    return b"{}"
