"""Typed settings parsed once from the environment: SNGIN_* and AWS_S3_CODE_PATH (other AWS_*
variables belong to botocore)."""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sngin.config_values import (
    float_range,
    int_range,
    parse_admin_host,
    parse_app_path,
    parse_base_url,
    parse_dir,
    parse_egress,
    parse_file,
    parse_host_patterns,
    parse_http_url,
    parse_log_format,
    parse_log_level,
    parse_module_repo,
    parse_networks,
    parse_on_off,
    parse_owners,
    parse_processes,
    parse_redis_url,
    parse_regex,
    parse_secret,
    parse_token,
    parse_ui,
)
from sngin.errors import ConfigError
from sngin.limits import MIB, Limits
from sngin.machine_defaults import (
    default_kept_runtimes_mb,
    default_max_workers,
    default_outbound_connections,
    default_workers,
)

if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Callable, Mapping

BUNDLED_SITES: Final = Path(__file__).parent / "demo" / "sites"


def default_app_path() -> Path:
    """The platform cache folder for sngin (works without root)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "sngin"


@dataclass(frozen=True, slots=True, kw_only=True)
class Bind:
    host: str = "127.0.0.1"
    port: int = 8080

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSettings:
    """Front-end timeouts that keep slow clients from holding connections."""

    max_request_bytes: int = 10 * MIB  # SNGIN_MAX_REQUEST_BYTES: request body
    # SNGIN_MAX_CONNECTIONS: client connections at once; None: what the descriptor limit leaves
    # after the server's reserve (sngin.edge.descriptors)
    max_connections: int | None = None
    request_bodies_bytes: int = 256 * MIB  # SNGIN_REQUEST_BODIES_BYTES: being received, all told
    responses_bytes: int = 256 * MIB  # SNGIN_RESPONSES_BYTES: large ones not yet sent, all told
    send_timeout_s: float = 30.0  # SNGIN_SEND_TIMEOUT_S: a client that stops reading
    keep_alive_s: float = 5.0  # idle connection, including one still sending its headers
    read_timeout_s: int = 30  # one read from the socket
    body_timeout_s: float = 30.0  # the whole request body
    grace_s: float = 10.0  # in-flight requests at shutdown


@dataclass(frozen=True, slots=True, kw_only=True)
class PoolSettings:
    size: int = 4  # SNGIN_WORKERS; from_env defaults it to 2 x cores
    max_requests_per_worker: int = 10_000  # SNGIN_WORKER_MAX_REQUESTS: recycle to bound leaks
    quarantine_strikes: int = 5  # SNGIN_QUARANTINE_STRIKES limit kills ...
    quarantine_window_s: float = 60.0  # SNGIN_QUARANTINE_WINDOW_S ... within this window ...
    quarantine_s: float = 60.0  # SNGIN_QUARANTINE_S ... pause the tenant this long
    worker_concurrency: int = 32  # SNGIN_WORKER_CONCURRENCY: one tenant's requests per worker
    tenant_concurrency: int = 64  # SNGIN_TENANT_CONCURRENCY: one tenant's requests in flight
    queue_timeout_s: float = 10.0  # SNGIN_QUEUE_TIMEOUT_S: wait for a slot, then 503
    # SNGIN_KEPT_RUNTIMES_MB: Lua heap of the runtimes the node's workers keep for recent
    # tenants (each worker an equal share); from_env defaults it from memory
    kept_runtimes_mb: int = 256
    # SNGIN_MAX_WORKERS: grown to while requests wait on parked workers; from_env defaults it
    # from memory; 0 or SNGIN_WORKERS: a fixed pool
    max_workers: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class Ceilings:
    """The most a tenant's _sngin.json may ask for; 0 means "the operator's default"."""

    max_timeout_ms: int = 0  # SNGIN_MAX_TIMEOUT_MS
    max_cpu_ms: int = 0  # SNGIN_MAX_CPU_MS
    max_memory_mb: int = 0  # SNGIN_MAX_MEMORY_MB
    max_concurrency: int = 0  # SNGIN_MAX_CONCURRENCY
    max_rps: float = 0  # SNGIN_MAX_RPS (0: no ceiling; tenants' rate limits are off by default)
    max_storage_keys: int = 0  # SNGIN_MAX_STORAGE_KEYS
    max_storage_bytes: int = 0  # SNGIN_MAX_STORAGE_BYTES


@dataclass(frozen=True, slots=True, kw_only=True)
class S3Settings:
    """AWS_S3_CODE_PATH=bucket/prefix; credentials, region and endpoint are botocore's."""

    bucket: str
    prefix: str = ""
    attempt_timeout_s: float = 3.0  # one S3 request
    deadline_s: float = 8.0  # one fetch, retries included
    max_attempts: int = 4


@dataclass(frozen=True, slots=True, kw_only=True)
class CacheSettings:
    ttl_s: float = 60.0  # SNGIN_CODE_TTL_S: revalidate a cached script after this long
    negative_ttl_s: float = 10.0  # SNGIN_CODE_NEGATIVE_TTL_S: remember a missing script
    max_entries: int = 10_000  # SNGIN_CODECACHE_SIZE
    max_bytes: int = 256 * MIB  # SNGIN_CODECACHE_BYTES
    tenant_share: float = 0.25  # SNGIN_CODECACHE_TENANT_SHARE: of max_bytes, per tenant
    revalidate_wait_s: float = 1.0  # how long a request waits for a revalidation
    cb_interval_s: float = 1.0  # SNGIN_CB_INTERVAL_S: `$cb` forces a fetch at most this often


def default_data_path() -> Path:
    """Durable data (tenant storage): $XDG_DATA_HOME/sngin, i.e. ~/.local/share/sngin."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sngin"


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageSettings:
    """Scripts' `storage`, `lease` and `cache`."""

    data_path: Path = field(default_factory=default_data_path)  # SNGIN_DATA_PATH
    max_key_bytes: int = 1024
    max_value_bytes: int = MIB
    max_keys: int = 10_000  # SNGIN_STORAGE_MAX_KEYS: per tenant
    max_bytes: int = 16 * MIB  # SNGIN_STORAGE_MAX_BYTES: per tenant, keys and values
    max_ops: int = 1000  # SNGIN_MAX_STORAGE_OPS: storage, lease and cache calls per request
    cache_bytes: int = 64 * MIB  # SNGIN_CACHE_BYTES: `cache`, all tenants together
    cache_tenant_share: float = 0.25  # SNGIN_CACHE_TENANT_SHARE


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundSettings:
    """Scripts' http.request connections, shared by all tenants."""

    # SNGIN_OUTBOUND_CONNECTIONS: open at once, all tenants together; from_env defaults it to
    # 1,000 (fewer when the descriptor limit is low)
    connections: int = 100
    tenant_share: float = 0.25  # SNGIN_OUTBOUND_TENANT_SHARE: of connections, per tenant
    bodies_bytes: int = 256 * MIB  # SNGIN_SUBREQUEST_BODIES_BYTES: in flight, all told

    @property
    def per_tenant(self) -> int:
        return max(1, int(self.connections * self.tenant_share))


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    bind: Bind = field(default_factory=Bind)
    code_dir: Path = BUNDLED_SITES
    log_level: str = "info"
    log_format: str | None = None  # SNGIN_LOG_FORMAT: json or text; None: text on a terminal
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    limits: Limits = field(default_factory=Limits)
    pool: PoolSettings = field(default_factory=PoolSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    s3: S3Settings | None = None
    cache: CacheSettings = field(default_factory=CacheSettings)
    app_path: Path = field(default_factory=default_app_path)  # SNGIN_APP_PATH: the disk mirror
    mirror_bytes: int = 1024 * MIB  # SNGIN_MIRROR_BYTES; 0 turns the mirror off
    admin_token: str | None = field(default=None, repr=False)  # SNGIN_ADMIN_TOKEN
    events_token: str | None = field(default=None, repr=False)  # SNGIN_EVENTS_TOKEN
    # SNGIN_SNS_CONFIRM_HOSTS: host patterns an SNS SubscribeURL may name to be confirmed
    sns_confirm_hosts: tuple[str, ...] = ("sns.*.amazonaws.com",)
    egress_allow: tuple[str, ...] = ()  # SNGIN_EGRESS_ALLOW: CIDRs and host names scripts may reach
    outbound: OutboundSettings = field(default_factory=OutboundSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    github_raw_url: str = "https://raw.githubusercontent.com"  # SNGIN_GITHUB_RAW_URL
    # SNGIN_DEFAULT_MODULES: "<owner>/<repo>/<ref>" where bare `require` names a tenant lacks are
    # looked for; None: off
    default_modules: str | None = "webscriptio/lib/master"
    email_enabled: bool = True  # SNGIN_EMAIL: on or off (email.send)
    # SNGIN_REDIS_URL: tenant storage and leases on Redis instead of the SQLite file
    redis_url: str | None = field(default=None, repr=False)
    # SNGIN_GITHUB_TOKEN, used only for modules of SNGIN_GITHUB_TOKEN_OWNERS (comma-separated)
    github_token: str | None = field(default=None, repr=False)
    github_token_owners: frozenset[str] = frozenset()
    alert_webhook: str | None = None  # SNGIN_ALERT_WEBHOOK: alerts of tenants without their own
    ceilings: Ceilings = field(default_factory=Ceilings)
    secrets_file: Path | None = None  # SNGIN_SECRETS_FILE: {"<host>": {"NAME": "value"}}
    tenants_allow: re.Pattern[str] | None = None  # SNGIN_TENANTS_ALLOW: Hosts served (regex)
    tenants_allow_file: Path | None = None  # SNGIN_TENANTS_ALLOW_FILE: host or *.suffix lines
    metrics_tenants: int = 100  # SNGIN_METRICS_TENANTS: tenants with their own metrics label
    max_tails_per_tenant: int = 4  # SNGIN_MAX_TAILS_PER_TENANT: live log tails open per tenant
    max_tails: int = 64  # SNGIN_MAX_TAILS: live log tails open on the node, all tenants
    code_quota_bytes: int = 64 * MIB  # SNGIN_CODE_QUOTA_BYTES: a tenant's code, history included
    code_quota_files: int = 2000  # SNGIN_CODE_QUOTA_FILES: files a tenant's code may hold
    admin_bind: Bind | None = None  # SNGIN_ADMIN_BIND: a separate listener for the admin API
    # SNGIN_ADMIN_HOST: besides IP literals and localhost, the Host the public listener answers
    # the web UI and cookie sessions on (never a tenant)
    admin_host: str | None = None
    probe_interval_s: float = 10.0  # how often readiness checks the code store
    ui: str = "on"  # SNGIN_UI: the management API writes (on), only reads (readonly), or is off
    processes: int = 1  # SNGIN_PROCESSES: server processes sharing the listener; "auto": cores
    cron_max_per_tenant: int = 10  # SNGIN_CRON_MAX_PER_TENANT: entries of a tenant's `cron`
    cron_min_interval_s: float = 60.0  # SNGIN_CRON_MIN_INTERVAL_S: a schedule fires no more often
    cron_rescan_s: float = 300.0  # SNGIN_CRON_RESCAN_S: how often every tenant's cron is re-read
    replay_max_bundles: int = 50  # SNGIN_REPLAY_MAX_BUNDLES: replay bundles kept per tenant
    replay_max_bytes: int = 16 * MIB  # SNGIN_REPLAY_MAX_BYTES: and their bytes, per tenant

    @classmethod
    def from_env(cls, env: Mapping[str, str], *, cwd: Path | None = None) -> Settings:
        """Parse SNGIN_* variables; raise ConfigError naming the first bad or unknown one."""
        values: dict[str, Any] = {}
        for name in sorted(env):
            if not name.startswith("SNGIN_"):
                continue
            spec = VARIABLES.get(name)
            if spec is None:
                raise ConfigError(f"{name}: unknown setting{_suggest(name)}")
            target, convert = spec
            try:
                values[target] = convert(env[name])
            except ValueError as exc:
                shown = name if name in SECRET_VARIABLES else f"{name}={env[name]!r}"
                raise ConfigError(f"{shown}: {exc}") from None
        code_path = env.get(S3_CODE_PATH)
        if code_path is not None:
            try:
                values["s3"] = parse_s3_code_path(code_path)
            except ValueError as exc:
                raise ConfigError(f"{S3_CODE_PATH}={code_path!r}: {exc}") from None
        if "code_dir" not in values:
            local_sites = (cwd or Path.cwd()) / "sites"
            values["code_dir"] = local_sites if local_sites.is_dir() else BUNDLED_SITES
        values.setdefault("pool.size", default_workers())
        values.setdefault("pool.kept_runtimes_mb", default_kept_runtimes_mb())
        memory_mb = values.get("limits.memory_mb", Limits().memory_mb)
        values.setdefault("pool.max_workers", default_max_workers(values["pool.size"], memory_mb))
        values.setdefault("outbound.connections", default_outbound_connections())
        sections = {
            "limits": Limits,
            "pool": PoolSettings,
            "cache": CacheSettings,
            "ceilings": Ceilings,
            "http": HttpSettings,
            "outbound": OutboundSettings,
            "storage": StorageSettings,
        }
        for section, kind in sections.items():
            prefix = section + "."
            fields = {
                k.removeprefix(prefix): values.pop(k) for k in list(values) if k.startswith(prefix)
            }
            values[section] = kind(**fields)
        return cls(**values)


def _suggest(name: str) -> str:
    close = difflib.get_close_matches(name, VARIABLES, n=1)
    return f" (did you mean {close[0]}?)" if close else ""


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]\Z")


def parse_s3_code_path(text: str) -> S3Settings:
    """'bucket' or 'bucket/prefix/nested' (slashes around the prefix are ignored), with or
    without the `s3://` the console shows."""
    text = text.strip()
    if text[:5].lower() == "s3://":
        text = text[5:]
    bucket, _, prefix = text.partition("/")
    if not _BUCKET.match(bucket) or ".." in bucket:
        raise ValueError("expected BUCKET/PREFIX with a valid S3 bucket name")
    prefix = prefix.strip("/")
    if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
        raise ValueError("the prefix has an empty, '.' or '..' segment")
    return S3Settings(bucket=bucket, prefix=prefix)


def parse_bind(text: str) -> Bind:
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 or [::1]:8080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("port is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError("port must be between 0 and 65535")
    return Bind(host=host, port=port)


# name -> (Settings field, converter); the only place SNGIN_* names are known.
VARIABLES: Final[dict[str, tuple[str, Callable[[str], Any]]]] = {
    "SNGIN_BIND": ("bind", parse_bind),
    "SNGIN_CODE_DIR": ("code_dir", parse_dir),
    "SNGIN_LOG_LEVEL": ("log_level", parse_log_level),
    "SNGIN_LOG_FORMAT": ("log_format", parse_log_format),
    "SNGIN_TRUSTED_PROXIES": ("trusted_proxies", parse_networks),
    "SNGIN_WORKERS": ("pool.size", int_range(2, 1024)),
    "SNGIN_PROCESSES": ("processes", parse_processes),
    "SNGIN_UI": ("ui", parse_ui),
    "SNGIN_KEPT_RUNTIMES_MB": ("pool.kept_runtimes_mb", int_range(0, 1024 * 1024)),
    "SNGIN_MAX_WORKERS": ("pool.max_workers", int_range(0, 100_000)),
    "SNGIN_TIMEOUT_MS": ("limits.timeout_ms", int_range(1, 3_600_000)),
    "SNGIN_CPU_MS": ("limits.cpu_ms", int_range(1, 3_600_000)),
    "SNGIN_MEMORY_MB": ("limits.memory_mb", int_range(1, 64 * 1024)),
    "SNGIN_WORKER_MAX_REQUESTS": ("pool.max_requests_per_worker", int_range(1, 10**9)),
    "SNGIN_QUARANTINE_STRIKES": ("pool.quarantine_strikes", int_range(1, 10_000)),
    "SNGIN_QUARANTINE_WINDOW_S": ("pool.quarantine_window_s", float_range(0.001, 86400)),
    "SNGIN_QUARANTINE_S": ("pool.quarantine_s", float_range(0, 86400)),
    "SNGIN_MAX_BODY_BYTES": ("limits.max_body_bytes", int_range(0, 1024 * MIB)),
    "SNGIN_MAX_REQUEST_BYTES": ("http.max_request_bytes", int_range(0, 1024 * MIB)),
    "SNGIN_MAX_CONNECTIONS": ("http.max_connections", int_range(1, 10_000_000)),
    "SNGIN_REQUEST_BODIES_BYTES": ("http.request_bodies_bytes", int_range(MIB, 1024**4)),
    "SNGIN_RESPONSES_BYTES": ("http.responses_bytes", int_range(MIB, 1024**4)),
    "SNGIN_SEND_TIMEOUT_S": ("http.send_timeout_s", float_range(0.1, 86400)),
    "SNGIN_SUBREQUEST_BODIES_BYTES": ("outbound.bodies_bytes", int_range(MIB, 1024**4)),
    "SNGIN_CODE_TTL_S": ("cache.ttl_s", float_range(0, 86400)),
    "SNGIN_CODE_NEGATIVE_TTL_S": ("cache.negative_ttl_s", float_range(0, 86400)),
    "SNGIN_CODECACHE_SIZE": ("cache.max_entries", int_range(1, 10_000_000)),
    "SNGIN_CODECACHE_BYTES": ("cache.max_bytes", int_range(MIB, 64 * 1024 * MIB)),
    "SNGIN_CODECACHE_TENANT_SHARE": ("cache.tenant_share", float_range(0.01, 1.0)),
    "SNGIN_CB_INTERVAL_S": ("cache.cb_interval_s", float_range(0, 3600)),
    "SNGIN_APP_PATH": ("app_path", parse_app_path),
    "SNGIN_MIRROR_BYTES": ("mirror_bytes", int_range(0, 1024 * 1024 * MIB)),
    "SNGIN_ADMIN_TOKEN": ("admin_token", parse_token),
    "SNGIN_EVENTS_TOKEN": ("events_token", parse_token),
    "SNGIN_SNS_CONFIRM_HOSTS": ("sns_confirm_hosts", parse_host_patterns),
    "SNGIN_MAX_SUBREQUESTS": ("limits.max_subrequests", int_range(0, 10_000)),
    "SNGIN_MAX_MODULES": ("limits.max_modules", int_range(0, 10_000)),
    "SNGIN_EGRESS_ALLOW": ("egress_allow", parse_egress),
    "SNGIN_OUTBOUND_CONNECTIONS": ("outbound.connections", int_range(1, 100_000)),
    "SNGIN_OUTBOUND_TENANT_SHARE": ("outbound.tenant_share", float_range(0.01, 1.0)),
    "SNGIN_GITHUB_RAW_URL": ("github_raw_url", parse_base_url),
    "SNGIN_DEFAULT_MODULES": ("default_modules", parse_module_repo),
    "SNGIN_EMAIL": ("email_enabled", parse_on_off),
    "SNGIN_REDIS_URL": ("redis_url", parse_redis_url),
    "SNGIN_DATA_PATH": ("storage.data_path", parse_app_path),
    "SNGIN_STORAGE_MAX_KEYS": ("storage.max_keys", int_range(1, 100_000_000)),
    "SNGIN_STORAGE_MAX_BYTES": ("storage.max_bytes", int_range(MIB, 1024**4)),
    "SNGIN_MAX_STORAGE_OPS": ("storage.max_ops", int_range(0, 1_000_000)),
    "SNGIN_CACHE_BYTES": ("storage.cache_bytes", int_range(MIB, 1024**4)),
    "SNGIN_CACHE_TENANT_SHARE": ("storage.cache_tenant_share", float_range(0.01, 1.0)),
    "SNGIN_GITHUB_TOKEN": ("github_token", parse_secret),
    "SNGIN_GITHUB_TOKEN_OWNERS": ("github_token_owners", parse_owners),
    "SNGIN_ALERT_WEBHOOK": ("alert_webhook", parse_http_url),
    "SNGIN_MAX_TIMEOUT_MS": ("ceilings.max_timeout_ms", int_range(1, 3_600_000)),
    "SNGIN_MAX_CPU_MS": ("ceilings.max_cpu_ms", int_range(1, 3_600_000)),
    "SNGIN_MAX_MEMORY_MB": ("ceilings.max_memory_mb", int_range(1, 64 * 1024)),
    "SNGIN_MAX_CONCURRENCY": ("ceilings.max_concurrency", int_range(1, 100_000)),
    "SNGIN_MAX_RPS": ("ceilings.max_rps", float_range(0.001, 1_000_000)),
    "SNGIN_MAX_STORAGE_KEYS": ("ceilings.max_storage_keys", int_range(1, 100_000_000)),
    "SNGIN_MAX_STORAGE_BYTES": ("ceilings.max_storage_bytes", int_range(MIB, 1024**4)),
    "SNGIN_SECRETS_FILE": ("secrets_file", parse_file),
    "SNGIN_TENANTS_ALLOW": ("tenants_allow", parse_regex),
    "SNGIN_TENANTS_ALLOW_FILE": ("tenants_allow_file", parse_file),
    "SNGIN_METRICS_TENANTS": ("metrics_tenants", int_range(0, 100_000)),
    "SNGIN_MAX_TAILS_PER_TENANT": ("max_tails_per_tenant", int_range(1, 10_000)),
    "SNGIN_MAX_TAILS": ("max_tails", int_range(1, 100_000)),
    "SNGIN_CRON_MAX_PER_TENANT": ("cron_max_per_tenant", int_range(0, 1000)),
    "SNGIN_CRON_MIN_INTERVAL_S": ("cron_min_interval_s", float_range(1, 86400)),
    "SNGIN_CRON_RESCAN_S": ("cron_rescan_s", float_range(1, 86400)),
    "SNGIN_REPLAY_MAX_BUNDLES": ("replay_max_bundles", int_range(0, 10_000)),
    "SNGIN_REPLAY_MAX_BYTES": ("replay_max_bytes", int_range(MIB, 1024**3)),
    "SNGIN_CODE_QUOTA_BYTES": ("code_quota_bytes", int_range(MIB, 1024**4)),
    "SNGIN_CODE_QUOTA_FILES": ("code_quota_files", int_range(1, 10_000_000)),
    "SNGIN_ADMIN_BIND": ("admin_bind", parse_bind),
    "SNGIN_ADMIN_HOST": ("admin_host", parse_admin_host),
    "SNGIN_WORKER_CONCURRENCY": ("pool.worker_concurrency", int_range(1, 1024)),
    "SNGIN_TENANT_CONCURRENCY": ("pool.tenant_concurrency", int_range(1, 100_000)),
    "SNGIN_QUEUE_TIMEOUT_S": ("pool.queue_timeout_s", float_range(0, 3600)),
}
# Their values never appear in an error message.
# (a Redis URL may carry a password)
SECRET_VARIABLES: Final = frozenset(
    {"SNGIN_ADMIN_TOKEN", "SNGIN_EVENTS_TOKEN", "SNGIN_GITHUB_TOKEN", "SNGIN_REDIS_URL"}
)
# The one AWS_* name sngin reads itself (the seed's): it selects the S3 store.
S3_CODE_PATH: Final = "AWS_S3_CODE_PATH"
