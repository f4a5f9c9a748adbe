"""The tenant's `_sngin.json` beside its code: limits, env and secrets, egress, on/off.

Read through the same code source (and cache) as scripts, parsed with a strict schema, clamped to
the operator's ceilings, and cached per version. Loading is I/O, so it lives here, not in
tenants.py.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import msgspec

from sngin.config_values import parse_http_url
from sngin.errors import ScriptError
from sngin.limits import Limits
from sngin.names import CONFIG_NAME, file_key
from sngin.storage.sqlite import Quota
from sngin.tenants.cron import CronEntry, CronProblem, parse_entries
from sngin.tenants.egress import EgressPolicy, TenantEgress

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from sngin.code.store import CodeSource
    from sngin.config import Settings

log = logging.getLogger(__name__)

SECRET: Final = re.compile(r"\$\{secret:([A-Za-z0-9_.-]+)\}\Z")
MAX_PARSED: Final = 10_000


class InvalidConfig(ScriptError):
    """The tenant's _sngin.json is unusable: 500 naming the file and the field."""


# --- the schema --------------------------------------------------------------------------------


class LimitsSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    timeout_ms: int | None = None
    cpu_ms: int | None = None
    memory_mb: int | None = None
    max_body_bytes: int | None = None
    max_subrequests: int | None = None
    concurrency: int | None = None
    rps: float | None = None


class EgressSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    allow: list[str] = []
    deny_public: bool = False


class StorageSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_keys: int | None = None
    max_bytes: int | None = None


class AlertsSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    webhook: str | None = None


class ReplaySpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    keep_headers: bool = False  # a bundle keeps Authorization, Cookie, Proxy-Authorization


class ConfigSpec(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    limits: LimitsSpec = msgspec.field(default_factory=LimitsSpec)
    env: dict[str, str] = {}
    egress: EgressSpec | list[str] | None = None
    alerts: AlertsSpec = msgspec.field(default_factory=AlertsSpec)
    github_token: str | None = None  # for private module repositories; "${secret:NAME}"
    storage: StorageSpec = msgspec.field(default_factory=StorageSpec)
    replay: ReplaySpec = msgspec.field(default_factory=ReplaySpec)
    # Scheduled runs: checked entry by entry (sngin.tenants.cron); a bad one never fails the rest
    cron: Any = None


# --- what the server uses ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TenantConfig:
    enabled: bool = True
    limits: Limits = field(default_factory=Limits)  # its wire form is derived once, here
    concurrency: int | None = None
    rps: float | None = None
    env: dict[str, str] = field(default_factory=dict)
    egress: TenantEgress | None = None
    secrets: tuple[str, ...] = ()
    alert_webhook: str | None = None  # alerts.webhook: where alert.* calls are delivered
    github_token: str | None = None  # sent to the raw host for this tenant's module fetches
    storage_quota: Quota | None = None  # its own storage quota (None: the operator's)
    cron: tuple[CronEntry, ...] = ()  # its scheduled runs
    cron_problems: tuple[CronProblem, ...] = ()  # the entries not used, each with why
    # Replay bundles: each secret's value and its placeholder (`${secret:NAME}`), longest
    # first; whether they keep the request's credential headers.
    placeholders: tuple[tuple[str, str], ...] = ()
    replay_keeps_headers: bool = False

    def redact(self, text: str) -> str:
        """Best effort: exact secret values become *** (longest first)."""
        for value in self.secrets:
            text = text.replace(value, "***")
        return text


def describe_error(error: msgspec.ValidationError | msgspec.DecodeError) -> str:
    """msgspec's 'Expected `int | null`, got `str` - at `$.limits.timeout_ms`' as
    'limits.timeout_ms: expected int, got str'."""
    text = str(error)
    if not isinstance(error, msgspec.ValidationError):
        return f"invalid JSON: {text}"
    message, _, where = text.partition(" - at `$")
    path = where.rstrip("`").lstrip(".").replace("[...]", "")
    message = message.replace("`", "").replace(" | null", "")
    message = message[:1].lower() + message[1:]
    return f"{path}: {message}" if path else message


class SecretsFile:
    """The operator's SNGIN_SECRETS_FILE ({"<host>": {"NAME": "value"}}), re-read on change."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._stamp: tuple[int, int] | None = None
        self._secrets: dict[str, dict[str, str]] = {}

    def for_host(self, host: str) -> dict[str, str]:
        if self._path is None:
            return {}
        try:
            stat = os.stat(self._path)
            stamp = (stat.st_mtime_ns, stat.st_size)
            if stamp != self._stamp:
                data = json.loads(self._path.read_bytes())
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
                self._secrets = {
                    str(h): {str(k): str(v) for k, v in values.items()}
                    for h, values in data.items()
                    if isinstance(values, dict)
                }
                self._stamp = stamp
        except (OSError, ValueError) as exc:
            log.error("cannot read SNGIN_SECRETS_FILE: %s", exc)
        return self._secrets.get(host, {})


class TenantConfigs:
    """Loads, validates and caches each tenant's configuration."""

    def __init__(self, store: CodeSource, settings: Settings) -> None:
        self._store = store
        self._settings = settings
        self._secrets = SecretsFile(settings.secrets_file)
        self._parsed: dict[tuple[str, str], TenantConfig] = {}
        self._clamped_logged: set[tuple[str, str, float]] = set()
        self._default = self._build(None, "", ConfigSpec())
        # Told of each tenant's configuration when a new version is parsed (the scheduler of
        # scheduled runs, sngin.cron: its entries from the next tick on).
        self.on_parsed: Callable[[str, TenantConfig], None] | None = None

    async def get(self, tenant: str, *, revalidate: bool = False) -> TenantConfig:
        source = await self._store.fetch(file_key(tenant, CONFIG_NAME), revalidate=revalidate)
        if source is None:
            return self._default
        key = (tenant, source.version)
        config = self._parsed.get(key)
        if config is None:
            config = self.parse(tenant, source.text)
            if len(self._parsed) >= MAX_PARSED:
                self._parsed.clear()
            self._parsed[key] = config
            for problem in config.cron_problems:
                log.warning("%s/%s: %s", tenant, CONFIG_NAME, problem)
            if self.on_parsed is not None:
                self.on_parsed(tenant, config)
        return config

    def parse(self, tenant: str, text: bytes) -> TenantConfig:
        where = f"{tenant}/{CONFIG_NAME}"
        try:
            spec = msgspec.json.decode(text, type=ConfigSpec)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise InvalidConfig(f"{where}: {describe_error(exc)}") from None
        return self._build(tenant, where, spec)

    def _build(self, tenant: str | None, where: str, spec: ConfigSpec) -> TenantConfig:
        s = self._settings
        limits, ceilings = s.limits, s.ceilings
        wanted = spec.limits

        def pick(name: str, value: float | None, default: float, ceiling: float) -> float:
            label = name if "." in name else f"limits.{name}"
            if value is None:
                return default
            if value <= 0:
                raise InvalidConfig(f"{where}: {label}: must be positive")
            if ceiling and value > ceiling:
                if tenant is not None and (tenant, name, value) not in self._clamped_logged:
                    self._clamped_logged.add((tenant, name, value))
                    log.warning("%s: %s %g above the operator's ceiling %g; using %g",
                                where, label, value, ceiling, ceiling)  # fmt: skip
                return ceiling
            return value

        # An unset ceiling (0) is the operator's default: a tenant may lower a limit, never
        # lift it past what the operator chose, unless the operator set a ceiling above it.
        tenant_limits = Limits(
            timeout_ms=int(pick("timeout_ms", wanted.timeout_ms, limits.timeout_ms,
                                ceilings.max_timeout_ms or limits.timeout_ms)),
            cpu_ms=int(pick("cpu_ms", wanted.cpu_ms, limits.cpu_ms,
                            ceilings.max_cpu_ms or limits.cpu_ms)),
            memory_mb=int(pick("memory_mb", wanted.memory_mb, limits.memory_mb,
                               ceilings.max_memory_mb or limits.memory_mb)),
            max_body_bytes=int(pick("max_body_bytes", wanted.max_body_bytes,
                                    limits.max_body_bytes, limits.max_body_bytes)),
            max_subrequests=int(pick("max_subrequests", wanted.max_subrequests,
                                     limits.max_subrequests, limits.max_subrequests)),
            max_modules=limits.max_modules,
        )  # fmt: skip
        concurrency = None
        if wanted.concurrency is not None:
            default = s.pool.tenant_concurrency
            concurrency = int(pick("concurrency", wanted.concurrency, default,
                                   ceilings.max_concurrency or default))  # fmt: skip
        rps = None
        if wanted.rps is not None:
            rps = pick("rps", wanted.rps, 0, ceilings.max_rps)
        storage = s.storage
        keys_ceiling = ceilings.max_storage_keys or storage.max_keys
        bytes_ceiling = ceilings.max_storage_bytes or storage.max_bytes
        storage_quota = None
        if spec.storage.max_keys is not None or spec.storage.max_bytes is not None:
            storage_quota = Quota(
                max_keys=int(pick("storage.max_keys", spec.storage.max_keys, storage.max_keys,
                                  keys_ceiling)),
                max_bytes=int(pick("storage.max_bytes", spec.storage.max_bytes,
                                   storage.max_bytes, bytes_ceiling)),
            )  # fmt: skip
        env, secrets = self._resolve_env(tenant, where, spec.env)
        github_token = None
        if spec.github_token is not None:
            resolved, token_secrets = self._resolve_env(
                tenant, where, {"github_token": spec.github_token}
            )
            github_token = resolved["github_token"] or None
            secrets |= token_secrets | ({github_token} if github_token else set())
        cron, cron_problems = self._cron(where, spec.cron)
        named = {(env[n], raw) for n, raw in spec.env.items() if SECRET.match(raw) and env[n]}
        if github_token and spec.github_token and SECRET.match(spec.github_token):
            named.add((github_token, spec.github_token))
        return TenantConfig(
            enabled=spec.enabled,
            limits=tenant_limits,
            concurrency=concurrency,
            rps=rps,
            env=env,
            egress=self._egress(where, spec.egress),
            secrets=tuple(sorted(secrets, key=len, reverse=True)),
            alert_webhook=self._webhook(where, spec.alerts.webhook),
            github_token=github_token,
            storage_quota=storage_quota,
            cron=cron,
            cron_problems=cron_problems,
            placeholders=tuple(sorted(named, key=lambda pair: len(pair[0]), reverse=True)),
            replay_keeps_headers=spec.replay.keep_headers,
        )  # fmt: skip

    def _cron(self, where: str, raw: Any) -> tuple[tuple[CronEntry, ...], tuple[CronProblem, ...]]:
        """The usable entries, and the others with their reasons (logged by get, once per
        version of the file; kept for the listings)."""
        if raw is None:
            return (), ()
        if not isinstance(raw, list):
            problems: tuple[CronProblem, ...] = (
                CronProblem(0, "", "cron: expected a list of entries"),
            )
            entries: tuple[CronEntry, ...] = ()
        else:
            s = self._settings
            entries, problems = parse_entries(
                raw, max_entries=s.cron_max_per_tenant, min_interval_s=s.cron_min_interval_s
            )
        return entries, problems

    def _resolve_env(
        self, tenant: str | None, where: str, values: dict[str, str]
    ) -> tuple[dict[str, str], set[str]]:
        env, secrets = {}, set()
        available = self._secrets.for_host(tenant) if tenant is not None else {}
        for name, value in values.items():
            match = SECRET.match(value)
            if match is None:
                env[name] = value
                continue
            secret = available.get(match.group(1))
            if secret is None:
                raise InvalidConfig(f"{where}: env.{name}: no secret {match.group(1)!r}")
            env[name] = secret
            if secret:
                secrets.add(secret)
        return env, secrets

    @staticmethod
    def _webhook(where: str, url: str | None) -> str | None:
        if url is None:
            return None
        try:
            return parse_http_url(url)
        except ValueError as exc:
            raise InvalidConfig(f"{where}: alerts.webhook: {exc}") from None

    @staticmethod
    def _egress(where: str, spec: EgressSpec | list[str] | None) -> TenantEgress | None:
        if spec is None:
            return None
        rule = EgressSpec(allow=spec) if isinstance(spec, list) else spec
        for entry in rule.allow:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not re.fullmatch(r"\.?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*", entry):
                    raise InvalidConfig(
                        f"{where}: egress: {entry!r} is neither a host name nor a CIDR"
                    ) from None
        return TenantEgress(EgressPolicy.parse(rule.allow), deny_public=rule.deny_public)
