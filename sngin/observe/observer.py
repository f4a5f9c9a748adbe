"""Observability: Prometheus metrics with bounded tenant labels, the JSON access log, and the
code outcome of each request (the live tails are sngin.observe.live_tails)."""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, BinaryIO, Final

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from sngin.observe.live_tails import LogHub, TailHandler
from sngin.observe.loop_lag import LoopLag
from sngin.observe.series import TenantSeries
from sngin.observe.stderr_writer import stderr_writer

OTHER: Final = "other"
MULTIPROC_DIR: Final = "PROMETHEUS_MULTIPROC_DIR"  # set by the parent of several processes


class TenantLabels:
    """The first `limit` tenants seen get their own label; the rest share "other", so the
    metrics' cardinality is capped and every series only ever grows."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._named: set[str] = set()

    def __call__(self, tenant: str) -> str:
        if tenant in self._named:
            return tenant
        if len(self._named) < self._limit:
            self._named.add(tenant)
            return tenant
        return OTHER


@dataclass(frozen=True, slots=True)
class RequestSeries:
    """The labelled series one (tenant label, status class) updates on every request."""

    requests: Any
    wall: Any
    cpu: Any


class Metrics:
    """Counters updated per request, gauges read from the pool and cache at scrape time."""

    def __init__(self, tenant_limit: int) -> None:
        self.registry = CollectorRegistry()
        self.labels = TenantLabels(tenant_limit)
        self.requests = Counter(
            "sngin_requests", "Tenant requests answered", ["tenant", "status"],
            registry=self.registry,
        )  # fmt: skip
        self.cpu = Counter(
            "sngin_cpu_seconds", "CPU time used by scripts", ["tenant"], registry=self.registry
        )
        self.decode_cpu = Counter(
            "sngin_decode_cpu_seconds",
            "Server CPU spent inflating scripts' compressed subrequest bodies",
            ["tenant"],
            registry=self.registry,
        )
        self.storage_ops = Counter(
            "sngin_storage_operations", "Scripts' storage, lease and cache calls", ["tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.storage_seconds = Counter(
            "sngin_storage_seconds", "Wall time of scripts' storage, lease and cache calls",
            ["tenant"], registry=self.registry,
        )  # fmt: skip
        self.storage_bytes = Gauge(
            "sngin_storage_bytes", "Bytes of keys and values in a tenant's storage",
            ["tenant"], registry=self.registry, multiprocess_mode="mostrecent",
        )  # fmt: skip
        self.s3_events = Counter(
            "sngin_s3_events", "S3 event notification records, by outcome (purged, ignored, "
            "confirmed: an SNS subscription)", ["outcome"], registry=self.registry,
        )  # fmt: skip
        self.alerts = Counter(
            "sngin_alerts", "Scripts' alert.email/alert.sms calls, by outcome",
            ["tenant", "kind", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.wall = Histogram(
            "sngin_request_seconds", "Wall time of tenant requests", ["tenant"],
            registry=self.registry,
        )  # fmt: skip
        self.loop_lag = Histogram(
            "sngin_event_loop_lag_seconds",
            "How late a 10 ms sleep on the server's event loop wakes up (a stall delays every"
            " tenant)", registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )  # fmt: skip
        self.cron_runs = Counter(
            "sngin_cron_runs", "Scheduled runs, by outcome (ok, error, killed, skipped, lost)",
            ["tenant", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.cron_lateness = Histogram(
            "sngin_cron_lateness_seconds", "From a scheduled run's tick to its start",
            registry=self.registry,
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
        )  # fmt: skip
        self.replay_bundles = Counter(
            "sngin_replay_bundles", "Replay bundles of failed or recorded runs, by outcome"
            " (written, rate_limited, queue_full, too_large, failed)", ["tenant", "outcome"],
            registry=self.registry,
        )  # fmt: skip
        self.kills = Counter(
            "sngin_limit_kills", "Requests stopped for a limit or a crash", ["tenant", "reason"],
            registry=self.registry,
        )  # fmt: skip
        # With several server processes, a gauge is the sum over the live ones.
        self.workers = self._live_sum("sngin_workers", "Live worker processes")
        self.busy = self._live_sum("sngin_workers_busy", "Workers running requests")
        self.cache_entries = self._live_sum("sngin_code_cache_entries", "Scripts in the code cache")
        self.cache_bytes = self._live_sum("sngin_code_cache_bytes", "Bytes in the code cache")
        self.access_lost = self._live_sum(
            "sngin_access_log_lost_lines", "Access-log lines stderr would not take, since start"
        )
        # Looking a labelled series up costs more than updating it (~9 vs ~2 us a request).
        # Bounded: labels are capped by TenantLabels, status classes are 1xx-5xx.
        self._series: dict[tuple[str, int], RequestSeries] = {}

    def _live_sum(self, name: str, documentation: str) -> Gauge:
        return Gauge(name, documentation, registry=self.registry, multiprocess_mode="livesum")

    def request_finished(
        self,
        tenant: str,
        status: int,
        wall_s: float,
        cpu_s: float,
        kill: str | None,
        decode_s: float = 0.0,
    ) -> None:
        label = self.labels(tenant)
        series = self._series.get((label, status // 100))
        if series is None:
            series = self._series[(label, status // 100)] = RequestSeries(
                self.requests.labels(label, f"{status // 100}xx"),
                self.wall.labels(label),
                self.cpu.labels(label),
            )
        series.requests.inc()
        series.wall.observe(wall_s)
        if cpu_s > 0:
            series.cpu.inc(cpu_s)
        if kill is not None:
            self.kills.labels(label, kill).inc()
        if decode_s > 0:
            self.decode_cpu.labels(label).inc(decode_s)

    def cron_run(self, tenant: str, outcome: str, lateness_s: float) -> None:
        self.cron_runs.labels(self.labels(tenant), outcome).inc()
        if outcome not in ("skipped", "lost"):
            self.cron_lateness.observe(lateness_s)

    def storage_used(self, tenant: str, operations: int, seconds: float) -> None:
        label = self.labels(tenant)
        self.storage_ops.labels(label).inc(operations)
        self.storage_seconds.labels(label).inc(seconds)

    def alert(self, tenant: str, kind: str, outcome: str) -> None:
        self.alerts.labels(self.labels(tenant), kind, outcome).inc()

    def replay_bundle(self, tenant: str, outcome: str) -> None:
        self.replay_bundles.labels(self.labels(tenant), outcome).inc()

    def render(self) -> bytes:
        """The exposition; with several server processes (prometheus-client's multiprocess
        mode, PROMETHEUS_MULTIPROC_DIR set by the parent), every process's values, those of
        processes that ended included, so counters never go back."""
        folder = os.environ.get(MULTIPROC_DIR)
        if folder is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=folder)  # type: ignore[no-untyped-call]
        return generate_latest(registry)


class AccessLog:
    """One JSON line per finished request, on stderr (or `stream`) and to the live tails of the
    request's tenant. Written directly rather than through logging: ~1.5 us a line instead of
    ~17 us, on every request. Lines go to stderr through the writer thread
    (sngin.observe.stderr_writer), flushed at shutdown."""

    def __init__(
        self,
        hub: LogHub,
        stream: BinaryIO | None = None,
        *,
        text: bool = False,
        process: int | None = None,
    ) -> None:
        self._hub = hub
        self._process = process  # which of the node's several server processes writes it
        self._stream = stream
        self._text = text  # SNGIN_LOG_FORMAT=text: the server log's text form (tails get JSON)
        self._encode = msgspec.json.Encoder().encode
        self._second = -1
        self._stamp = ""
        self._lost = 0  # lines an explicit stream would not take

    def write(
        self,
        *,
        request_id: str,
        tenant: str,
        method: str,
        path: str,
        status: int,
        size: int,
        wall_ms: float,
        cpu_ms: float,
        code: str,
        worker: int | None,
    ) -> None:
        record = {
            "time": self._now(),
            "level": "info",
            "logger": "sngin.access",
            "id": request_id,
            "tenant": tenant,
            "method": method,
            "path": path,
            "status": status,
            "bytes": size,
            "wall_ms": round(wall_ms, 2),
            "cpu_ms": round(cpu_ms, 2),
            "code": code,
            "worker": worker,
        }
        if self._process is not None:
            record["process"] = self._process
        # JSON only where it is read: the log in json format, and this tenant's live tails.
        tailed = tenant in self._hub.watched
        json_line = self._json_line(record) if tailed or not self._text else b""
        if tailed:
            self._hub.publish(tenant, json_line[:-1].decode())
        line = text_line(record) if self._text else json_line
        stream = self._stream
        if stream is None:
            # The server's stderr: through the writer thread, so a stalled reader never blocks
            # the event loop (a full queue costs the line, counted there).
            stderr_writer().write(line)
            return
        try:
            stream.write(line)
            stream.flush()
        except (OSError, ValueError):
            # the stream is gone (a closed pipe, a full disk): requests still get answered.
            self._lost += 1

    @property
    def lost(self) -> int:
        """Lines the log could not take, since start."""
        return self._lost + (stderr_writer().lost if self._stream is None else 0)

    def _json_line(self, record: dict[str, Any]) -> bytes:
        try:
            return self._encode(record) + b"\n"
        except UnicodeEncodeError:  # a lone surrogate: JSON's \u escapes carry it
            return json.dumps(record).encode() + b"\n"

    def _now(self) -> str:
        """The local time to the second, formatted once per second."""
        now = time.time()
        if int(now) != self._second:
            self._second = int(now)
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(now))
        return self._stamp


def text_line(record: dict[str, Any]) -> bytes:
    """An access-log record in the text log format."""
    return (
        f"{record['time']} INFO sngin.access: {record['method']} {record['tenant']}"
        f"{record['path']} {record['status']} {record['bytes']}B {record['wall_ms']}ms"
        f" cpu={record['cpu_ms']}ms code={record['code']} worker={record['worker']}"
        f" id={record['id']}"
        + (f" process={record['process']}" if "process" in record else "")
        + "\n"
    ).encode("utf-8", "backslashreplace")


class Observer:
    """Everything the admin API reads: metrics, tails, readiness."""

    def __init__(
        self,
        tenant_labels: int = 100,
        access_stream: BinaryIO | None = None,
        *,
        text_log: bool = False,
        process: int | None = None,
    ) -> None:
        self.metrics = Metrics(tenant_labels)
        self.series = TenantSeries()  # each tenant's last minutes, for the UI's charts
        self.hub = LogHub()
        self.loop_lag = LoopLag(self.metrics.loop_lag)
        self.access = AccessLog(self.hub, access_stream, text=text_log, process=process)
        self.ready = True
        self.not_ready_reason = ""
        self.storage_problem: str | None = None  # the storage backend's, while it has one
        self.probed = False  # the code store has been probed once
        self._handler = TailHandler(self.hub)

    def attach(self) -> None:
        """Feed script lines to the live tails (the access log feeds them itself)."""
        logger = logging.getLogger("sngin.script")
        if self._handler not in logger.handlers:
            logger.addHandler(self._handler)
        if logger.level == logging.NOTSET or logger.level > logging.INFO:
            logger.setLevel(logging.INFO)

    def detach(self) -> None:
        logging.getLogger("sngin.script").removeHandler(self._handler)
