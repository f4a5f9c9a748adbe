"""Per-tenant _sngin.json, operator ceilings, secrets and redaction, egress rules, allowlist and
rate limits: folder store and the S3 fixture, real workers."""

from __future__ import annotations

import json
import re
from contextlib import asynccontextmanager

import pytest
import trio

from sngin.calls.outbound import open_outbound
from sngin.config import Ceilings
from sngin.tenants.admission import RateLimiter, TenantAllowlist
from sngin.tenants.egress import EgressPolicy
from tests.support import TOKEN, code_cache, running

SECRET = "s3cr3t-value-0001"


def write(root, files: dict[str, str]) -> None:
    for path, text in files.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)


@asynccontextmanager
async def site(tmp_path, files: dict[str, str], *, policy=None, **options):
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"a.test": {"API_KEY": SECRET}, "b.test": {"B": "b-only"}}))
    changes = {"secrets_file": secrets, **options.pop("settings_changes", {})}
    root = tmp_path / "sites"
    root.mkdir(exist_ok=True)
    async with (
        open_outbound(policy or EgressPolicy.parse(["127.0.0.1"])) as outbound,
        running(root, tenant_configs=True, outbound=outbound, settings_changes=changes,
                **options) as srv,
    ):  # fmt: skip
        write(root, files)
        yield srv, root


# --- limits --------------------------------------------------------------------------------------


async def test_tenant_limits_are_clamped_to_the_operator_ceiling(tmp_path, upstream):
    files = {
        "a.test/_sngin.json": '{"limits": {"timeout_ms": 600000}}',
        "a.test/wait/index.lua": f"""
            local r = http.request{{url = '{upstream.url("/slow?s=30")}', timeout = 60}}
            return r.err""",
    }
    ceilings = Ceilings(max_timeout_ms=1500)
    async with site(tmp_path, files, settings_changes={"ceilings": ceilings}) as (srv, _):
        response = await srv.get("/wait")
    # The call's timeout is capped by the request's wall time: 1.5 s, not 600 s.
    assert response.status_code == 200
    assert re.fullmatch(r"timed out after 1\.\d+ s", response.text)  # under 1.5 s, not 60


async def test_tenant_can_lower_its_cpu_limit(tmp_path):
    files = {
        "a.test/_sngin.json": '{"limits": {"cpu_ms": 150}}',
        "a.test/burn/index.lua": "while true do end",
    }
    async with site(tmp_path, files, cpu_ms=5000) as (srv, _):
        response = await srv.get("/burn")
    assert response.status_code == 504
    assert "CPU-time limit of 150 ms" in response.text


# --- env, secrets, redaction -----------------------------------------------------------------


async def test_env_and_secrets_reach_the_script(tmp_path):
    files = {
        "a.test/_sngin.json": '{"env": {"KEY": "${secret:API_KEY}", "PLAIN": "x"}}',
        "a.test/env/index.lua": "return env.KEY .. '|' .. env.PLAIN .. '|' .. tostring(env.NONE)",
        "b.test/_sngin.json": '{"env": {"K": "${secret:API_KEY}"}}',
    }
    async with site(tmp_path, files) as (srv, _):
        assert (await srv.get("/env")).text == f"{SECRET}|x|nil"
        stolen = await srv.get("/", host="b.test")
    assert stolen.status_code == 500
    assert stolen.text == "b.test/_sngin.json: env.K: no secret 'API_KEY'\n"


async def test_secrets_are_redacted_in_errors_and_logs(tmp_path, caplog):
    caplog.set_level("INFO", logger="sngin.script")
    files = {
        "a.test/_sngin.json": '{"env": {"KEY": "${secret:API_KEY}"}}',
        "a.test/leak/index.lua": "print('key is ' .. env.KEY) log(env.KEY)\n"
        "error('failed with ' .. env.KEY)",
    }
    async with site(tmp_path, files) as (srv, _):
        response = await srv.get("/leak")
    assert response.status_code == 500
    assert response.text == "a.test/leak:2: failed with ***\n"
    records = [json.loads(r.getMessage()) for r in caplog.records if r.name == "sngin.script"]
    assert [r["line"] for r in records if "line" in r] == ["key is ***", "***"]
    assert [r["error"] for r in records if "error" in r] == ["a.test/leak:2: failed with ***"]
    assert SECRET not in caplog.text


async def test_env_is_read_only(tmp_path):
    files = {
        "a.test/_sngin.json": '{"env": {"A": "1"}}',
        "a.test/w/index.lua": "local ok, err = pcall(function() env.B = 2 end) return err",
    }
    async with site(tmp_path, files) as (srv, _):
        assert (await srv.get("/w")).text.endswith("env is read-only")


# --- egress --------------------------------------------------------------------------------------


def call_script(upstream) -> str:
    return f"local r = http.request('{upstream.url('/e')}') return r.err or 'reached'"


async def test_tenant_egress_narrows(tmp_path, upstream):
    files = {
        "a.test/_sngin.json": '{"egress": {"allow": ["127.0.0.1"], "deny_public": true}}',
        "a.test/e/index.lua": call_script(upstream),
        "b.test/_sngin.json": '{"egress": {"allow": ["api.example.com"], "deny_public": true}}',
        "b.test/e/index.lua": call_script(upstream),
    }
    async with site(tmp_path, files) as (srv, _):
        assert (await srv.get("/e")).text == "reached"
        refused = (await srv.get("/e", host="b.test")).text
    assert 'is not allowed by this site\'s own rule: "egress" in its _sngin.json' in refused


async def test_tenant_egress_cannot_widen(tmp_path, upstream):
    files = {
        "a.test/_sngin.json": '{"egress": ["127.0.0.1/8", "localhost"]}',
        "a.test/e/index.lua": call_script(upstream),
    }
    async with site(tmp_path, files, policy=EgressPolicy()) as (srv, _):
        assert "unless the operator lists them in SNGIN_EGRESS_ALLOW" in (await srv.get("/e")).text


# --- on/off and invalid files --------------------------------------------------------------------


async def test_disabled_tenant_answers_503_without_running_code(tmp_path, caplog):
    caplog.set_level("INFO", logger="sngin.script")
    files = {"a.test/_sngin.json": '{"enabled": false}', "a.test/index.lua": "print('ran')"}
    async with site(tmp_path, files) as (srv, _):
        response = await srv.get("/")
        assert (await srv.get("/", host="b.test")).status_code == 200
    assert response.status_code == 503
    assert response.text == "this site is disabled by its configuration\n"
    assert "ran" not in caplog.text


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ('{"limits": {"timeout_ms": "soon"}}', "limits.timeout_ms: expected int, got str"),
        ('{"limits": {"cpu_ms": -5}}', "limits.cpu_ms: must be positive"),
        ('{"nope": 1}', "unknown field nope"),
        ('{"env": {"K": 5}}', "env: expected str, got int"),
        ('{"egress": {"allow": ["not a host!"]}}', "egress: 'not a host!' is neither"),
        ("{broken", "invalid JSON"),
    ],
)
async def test_invalid_file_names_the_field(tmp_path, config, message):
    async with site(tmp_path, {"a.test/_sngin.json": config}) as (srv, _):
        response = await srv.get("/")
        assert (await srv.get("/", host="b.test")).status_code == 200
    assert response.status_code == 500
    assert response.text.startswith("a.test/_sngin.json: ")
    assert message in response.text


async def test_config_file_is_never_served(tmp_path):
    files = {"a.test/_sngin.json": '{"env": {"A": "1"}}'}
    async with site(tmp_path, files) as (srv, _):
        assert (await srv.get("/_sngin.json")).status_code == 404
        require = "local ok, err = pcall(require, '_sngin') return tostring(ok)"
        write(tmp_path / "sites", {"a.test/r/index.lua": require})
        assert (await srv.get("/r")).text == "false"


# --- change, purge, S3 ---------------------------------------------------------------------


async def test_change_is_picked_up_after_the_ttl_and_after_purge(proxy, bucket, tmp_path):
    bucket.put("a.test/index.lua", "return env.V or 'none'")
    bucket.put("a.test/_sngin.json", '{"env": {"V": "one"}}')
    async with (
        code_cache(proxy, bucket, ttl_s=0) as fast,
        running(tmp_path / "fast", store=fast, tenant_configs=True) as srv,
    ):
        assert (await srv.get("/")).text == "one"
        bucket.put("a.test/_sngin.json", '{"env": {"V": "two"}}')
        assert (await srv.get("/")).text == "two"
    async with (
        code_cache(proxy, bucket, ttl_s=600) as slow,
        running(tmp_path / "slow", store=slow, tenant_configs=True, admin_token=TOKEN) as srv,
    ):
        assert (await srv.get("/")).text == "two"
        bucket.put("a.test/_sngin.json", '{"env": {"V": "three"}}')
        assert (await srv.get("/")).text == "two"  # cached for the TTL
        purged = await srv.client.post(
            srv.url + "/__sngin/purge",
            json={"host": "a.test", "path": "/_sngin.json", "type": "file"},
            headers={"Authorization": f"Bearer {TOKEN}"},
        )
        assert purged.json()["purged"] >= 1
        assert (await srv.get("/")).text == "three"


async def test_allowlist_denies_with_zero_store_requests(proxy, bucket, tmp_path):
    bucket.put("a.test/index.lua", "return 'a'")
    changes = {"tenants_allow": re.compile(r"a\.test")}
    async with (
        code_cache(proxy, bucket) as cache,
        running(tmp_path, store=cache, tenant_configs=True, settings_changes=changes) as srv,
    ):
        denied = ("evil.test", "b.test", "a.test.evil")
        for host in denied:
            assert (await srv.get("/", host=host)).status_code == 404
        # The server's own work may be in flight (its readiness probe, the scheduler listing
        # the sites and reading a.test's configuration); no request may be for a denied host.
        asked = [path for (_, path, _) in proxy.counts]
        assert [path for path in asked if any(f"/{host}/" in path for host in denied)] == []
        assert (await srv.get("/")).text == "a"


def test_allowlist_file_is_reloaded(tmp_path):
    path = tmp_path / "allow.txt"
    path.write_text("a.test\n*.example.com  # customers\n")
    allowlist = TenantAllowlist(None, path)
    assert allowlist.allows("a.test")
    assert allowlist.allows("shop.example.com")
    assert not allowlist.allows("example.com")
    assert not allowlist.allows("b.test")
    path.write_text("b.test\n")
    assert allowlist.allows("b.test")
    assert not allowlist.allows("a.test")


# --- rate limit --------------------------------------------------------------------------------


async def test_token_bucket(autojump_clock):
    limiter = RateLimiter()
    assert limiter.admit("a.test", rps=2) is None
    for _ in range(3):
        assert limiter.admit("a.test", rps=2) is None  # burst of 2 x rps = 4
    assert limiter.admit("a.test", rps=2) == 0.5
    assert limiter.admit("b.test", rps=2) is None
    await trio.sleep(0.5)
    assert limiter.admit("a.test", rps=2) is None
    assert limiter.admit("a.test", rps=2) == 0.5


async def test_rate_limited_tenant_gets_429(tmp_path, mock_clock):
    """On trio's mock clock, frozen unless the test moves it: however slow the machine, no
    token refills between requests."""
    files = {"a.test/_sngin.json": '{"limits": {"rps": 1}}'}
    async with site(tmp_path, files) as (srv, _):
        statuses = [(await srv.get("/")).status_code for _ in range(3)]
        limited = await srv.get("/")
        assert (await srv.get("/", host="b.test")).status_code == 200
        mock_clock.jump(1.0)  # one token back
        again = [(await srv.get("/")).status_code for _ in range(2)]
    assert statuses == [200, 200, 429]  # a burst of 2 x rps, then refused
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "1"
    assert again == [200, 429]


def test_without_ceilings_a_tenant_cannot_lift_a_limit_past_the_default(tmp_path, caplog):
    from sngin.code.local_store import LocalStore
    from sngin.config import PoolSettings, Settings
    from sngin.limits import Limits
    from sngin.tenants.config import TenantConfigs

    settings = Settings(
        code_dir=tmp_path,
        limits=Limits(timeout_ms=5000, cpu_ms=2000, memory_mb=128),
        pool=PoolSettings(tenant_concurrency=64),
    )
    configs = TenantConfigs(LocalStore(tmp_path), settings)
    greedy = b"""{"limits": {"timeout_ms": 999999, "cpu_ms": 999999, "memory_mb": 4096,
                             "concurrency": 100000}}"""
    caplog.set_level("WARNING", logger="sngin.tenants.config")
    for _ in range(3):
        config = configs.parse("a.test", greedy)
    limits = config.limits
    assert (limits.timeout_ms, limits.cpu_ms, limits.memory_mb) == (5000, 2000, 128)
    assert config.concurrency == 64
    clamps = [r.getMessage() for r in caplog.records if "ceiling" in r.getMessage()]
    assert len(clamps) == 4  # each clamp logged once, not once per parse
    assert any("limits.cpu_ms 999999 above the operator's ceiling 2000" in c for c in clamps)
    modest = configs.parse("a.test", b'{"limits": {"cpu_ms": 500, "memory_mb": 64}}').limits
    assert (modest.cpu_ms, modest.memory_mb) == (500, 64)


async def test_a_greedy_tenant_is_killed_at_the_operators_default_cpu_limit(tmp_path):
    from sngin.limits import Limits

    files = {
        "a.test/_sngin.json": '{"limits": {"cpu_ms": 999999, "memory_mb": 4096}}',
        "a.test/spin/index.lua": "while true do end",
    }
    changes = {"limits": Limits(cpu_ms=300)}
    async with site(tmp_path, files, settings_changes=changes) as (srv, _):
        response = await srv.get("/spin")
    assert response.status_code == 504
    assert "CPU-time limit of 300 ms" in response.text
