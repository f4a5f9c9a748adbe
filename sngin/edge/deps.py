"""Deps: the long-lived parts a request is served with, opened by sngin.server."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sngin.bodies.budgets import Budgets
from sngin.calls.request_calls import PlatformServices
from sngin.edge.connection_guard import ConnectionGate
from sngin.edge.site_gate import SiteGate
from sngin.node.purger import Purger
from sngin.observe.observer import Observer
from sngin.replay.recording import Recording

if TYPE_CHECKING:
    import ssl

    from sngin.calls.alerts import Alerts
    from sngin.calls.mail import Mailer
    from sngin.calls.outbound import Outbound
    from sngin.code.cache import CodeCache
    from sngin.code.files import CodeFiles
    from sngin.code.github import GitHubTokens
    from sngin.code.store import CodeSource
    from sngin.config import Settings
    from sngin.node.link import ProcessLink
    from sngin.storage.redis import RedisCache
    from sngin.storage.script_cache import TenantCache
    from sngin.storage.tenant_storage import TenantStorage
    from sngin.tenants.config import TenantConfigs
    from sngin.workers.pool import Pool


@dataclass(slots=True)
class Services:
    """What a node starts once it serves, for the parts that reach it later (the admin API's
    cron routes): the scheduler of scheduled runs (sngin.cron), on the node's first process."""

    cron: Any = None  # the scheduler (the node's first process only)
    cron_runs: Any = None  # what fires one run (every process: a run by hand may land anywhere)
    cron_tenants: Any = None  # how the node lists the tenants that may have cron entries
    public_url: str | None = None  # the tenants' listener as bound (the editor's copy-as-curl)


@dataclass(frozen=True, slots=True)
class Deps:
    settings: Settings
    store: CodeSource
    pool: Pool
    outbound: Outbound | None = None  # None: scripts' http.request calls are refused
    github: CodeCache | None = None  # modules by GitHub URL (a code cache over the raw host)
    configs: TenantConfigs | None = None  # tenants' _sngin.json; None: operator defaults only
    observer: Observer = field(default_factory=lambda: Observer())
    mailer: Mailer | None = None  # None: email.send answers "not available here"
    alerts: Alerts | None = None  # None: alert.* answers "not available here"
    github_tokens: GitHubTokens | None = None  # tokens for private module repositories
    storage: TenantStorage | None = None  # None: storage and lease answer "not available"
    tenant_cache: TenantCache | RedisCache | None = None  # scripts' `cache`
    # The CAs an SNS SubscribeURL's certificate is checked against (None: the usual ones).
    events_tls: ssl.SSLContext | None = None
    events_confirm_port: int = 443  # where a SubscribeURL is confirmed (tests: their own server)
    files: CodeFiles | None = None  # the management API's view of the code store; None: off
    # With `--processes N`: this process's link to the node's parent (None: the only process).
    link: ProcessLink | None = None
    purger: Purger = field(init=False)  # on this node, then (with a cluster bus) on every node
    # The public listener's client connections (its limit is set when it starts listening).
    connections: ConnectionGate = field(default_factory=ConnectionGate)
    budgets: Budgets = field(init=False)  # from settings, below
    # Enabled, rate limit: one gate (and one set of buckets) for requests and previews.
    site_gate: SiteGate = field(init=False)
    # What every request's platform calls share (a RequestCalls adds the request's budgets).
    services: PlatformServices = field(init=False)
    started: Services = field(default_factory=Services)  # set once the node serves
    # Replay bundles of failed (or recorded) runs: the pipeline queues, the server writes.
    recording: Recording = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "budgets", Budgets.from_settings(self.settings))
        services = PlatformServices(
            outbound=self.outbound,
            store=self.store,
            github=self.github,
            bodies=self.budgets.subrequest_bodies,
            default_modules=self.settings.default_modules,
            mailer=self.mailer,
            alerts=self.alerts,
            github_tokens=self.github_tokens,
        )
        object.__setattr__(self, "services", services)
        object.__setattr__(self, "purger", Purger(self.store, self.github))
        object.__setattr__(self, "site_gate", SiteGate(self))
        recording = Recording(
            self.settings, self.storage, self.budgets.subrequest_bodies,
            count=self.observer.metrics.replay_bundle,
        )  # fmt: skip
        object.__setattr__(self, "recording", recording)
