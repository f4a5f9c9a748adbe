"""Settings.from_env: defaults, conversions, and one clear line per bad variable."""

from __future__ import annotations

import ipaddress

import pytest

from sngin.cli import build_parser, main, settings_from
from sngin.config import BUNDLED_SITES, Bind, Settings
from sngin.errors import ConfigError
from sngin.limits import MIB
from sngin.machine_defaults import default_workers


def test_defaults(tmp_path):
    settings = Settings.from_env({}, cwd=tmp_path)
    assert settings.bind == Bind(host="127.0.0.1", port=8080)
    assert settings.code_dir == BUNDLED_SITES
    assert settings.pool.size == default_workers() >= 2
    assert settings.limits.timeout_ms == 5000
    assert settings.limits.max_body_bytes == 10 * 1024 * 1024
    assert settings.trusted_proxies == ()


def test_sites_folder_in_cwd_is_the_default_code_dir(tmp_path):
    (tmp_path / "sites").mkdir()
    assert Settings.from_env({}, cwd=tmp_path).code_dir == tmp_path / "sites"


def test_values_are_converted(tmp_path):
    settings = Settings.from_env(
        {
            "SNGIN_BIND": "[::1]:9000",
            "SNGIN_CODE_DIR": str(tmp_path),
            "SNGIN_WORKERS": "3",
            "SNGIN_TIMEOUT_MS": "250",
            "SNGIN_MAX_BODY_BYTES": "1_000",
            "SNGIN_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1",
            "SNGIN_LOG_LEVEL": "DEBUG",
            "AWS_S3_CODE_PATH": "ignored/by/settings",
        }
    )
    assert settings.bind == Bind(host="::1", port=9000)
    assert settings.code_dir == tmp_path.resolve()
    assert settings.pool.size == 3
    assert settings.limits.timeout_ms == 250
    assert settings.limits.max_body_bytes == 1000
    assert settings.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
    )
    assert settings.log_level == "debug"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SNGIN_WORKERS": "many"}, "SNGIN_WORKERS='many': not an integer"),
        ({"SNGIN_WORKERS": "1"}, "SNGIN_WORKERS='1': must be between 2 and 1024"),
        ({"SNGIN_TIMEOUT_MS": "0"}, "SNGIN_TIMEOUT_MS='0': must be between"),
        ({"SNGIN_BIND": "8080"}, "SNGIN_BIND='8080': expected HOST:PORT"),
        ({"SNGIN_BIND": "h:99999"}, "SNGIN_BIND='h:99999': port must be"),
        ({"SNGIN_CODE_DIR": "/nonexistent/dir"}, "SNGIN_CODE_DIR='/nonexistent/dir': not a dir"),
        ({"SNGIN_TRUSTED_PROXIES": "10.0.0.0/8 nope"}, "'nope' is not an IP address"),
        ({"SNGIN_LOG_LEVEL": "loud"}, "must be one of"),
        ({"SNGIN_CODE_TTL_S": "-1"}, "SNGIN_CODE_TTL_S='-1': must be between 0 and 86400"),
        ({"SNGIN_CODECACHE_TENANT_SHARE": "2"}, "must be between 0.01 and 1"),
        ({"SNGIN_CODECACHE_SIZE": "lots"}, "SNGIN_CODECACHE_SIZE='lots': not an integer"),
        (
            {"SNGIN_TIMEOUTMS": "5"},
            "SNGIN_TIMEOUTMS: unknown setting (did you mean SNGIN_TIMEOUT_MS?)",
        ),
        ({"SNGIN_WHATEVER": "5"}, "SNGIN_WHATEVER: unknown setting"),
    ],
)
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert message in info.value.message
    assert "\n" not in info.value.message


def test_s3_code_path_and_cache_settings():
    settings = Settings.from_env(
        {
            "AWS_S3_CODE_PATH": "my-bucket/sites/prod/",
            "SNGIN_CODE_TTL_S": "30",
            "SNGIN_CODE_NEGATIVE_TTL_S": "2.5",
            "SNGIN_CODECACHE_SIZE": "500",
            "SNGIN_CODECACHE_BYTES": "67108864",
            "SNGIN_CODECACHE_TENANT_SHARE": "0.5",
        }
    )
    assert settings.s3 is not None
    assert (settings.s3.bucket, settings.s3.prefix) == ("my-bucket", "sites/prod")
    assert settings.cache.ttl_s == 30
    assert settings.cache.negative_ttl_s == 2.5
    assert settings.cache.max_entries == 500
    assert settings.cache.max_bytes == 64 * 1024 * 1024
    assert settings.cache.tenant_share == 0.5
    assert Settings.from_env({"AWS_S3_CODE_PATH": "bucket"}).s3.prefix == ""
    assert Settings.from_env({}).s3 is None
    # As the S3 console shows it: the s3:// is dropped.
    pasted = Settings.from_env({"AWS_S3_CODE_PATH": "s3://my-bucket/sites/prod/"}).s3
    assert (pasted.bucket, pasted.prefix) == ("my-bucket", "sites/prod")


@pytest.mark.parametrize(
    "value",
    ["", "/prefix", "Bad_Bucket/x", "ab/x", "bucket/a//b", "bucket/../x", "b..c/x", "s3://"],
)
def test_bad_s3_code_path(value):
    with pytest.raises(ConfigError, match="AWS_S3_CODE_PATH"):
        Settings.from_env({"AWS_S3_CODE_PATH": value})


def test_settings_are_frozen():
    settings = Settings()
    with pytest.raises(AttributeError):
        settings.log_level = "debug"  # type: ignore[misc]


def test_cli_bad_env_is_one_line_and_exit_2(capsys):
    assert main(["run", "hello.localhost"], env={"SNGIN_WORKERS": "x"}) == 2
    err = capsys.readouterr().err
    assert err == "sngin: SNGIN_WORKERS='x': not an integer\n"


@pytest.mark.parametrize(
    ("argv", "env", "said"),
    [
        (["serve", "--bind", "127.0.0.1:99999"], {},
         "sngin: --bind 127.0.0.1:99999: port must be between 0 and 65535\n"),
        (["serve", "--processes", "autp"], {},
         "sngin: --processes autp: must be a number from 1 to 256, or auto\n"),
        (["serve"], {"SNGIN_PROCESSES": "autp"},
         "sngin: SNGIN_PROCESSES='autp': must be a number from 1 to 256, or auto\n"),
        (["serve", "--workers", "1"], {"SNGIN_WORKERS": "4"},
         "sngin: --workers 1: must be between 2 and 1024\n"),
    ],
)  # fmt: skip
def test_a_bad_value_names_the_flag_or_the_variable_that_gave_it(capsys, argv, env, said):
    assert main(argv, env=env) == 2
    assert capsys.readouterr().err == said


def test_cli_flag_overrides_env():
    args = build_parser().parse_args(["serve", "--workers", "3", "--timeout-ms", "700"])
    settings = settings_from(args, {"SNGIN_WORKERS": "5", "SNGIN_TIMEOUT_MS": "100"})
    assert (settings.pool.size, settings.limits.timeout_ms) == (3, 700)


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"], env={})
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("sngin ")


def test_cli_runs_a_script_file_in_a_worker(capsys):
    script = BUNDLED_SITES / "hello.localhost" / "index.lua"
    argv = ["run", str(script), "--host", "hello.localhost", "--path", "/?name=ci"]
    assert main(argv, env={}) == 0
    out = capsys.readouterr().out
    assert out.startswith("HTTP 200\n")
    assert out.endswith("Hello, ci!\n")


def test_cli_run_reports_limits(capsys, tmp_path):
    script = tmp_path / "spin.lua"
    script.write_text("while true do end")
    assert main(["run", str(script)], env={"SNGIN_CPU_MS": "100"}) == 1
    out = capsys.readouterr().out
    assert out == "HTTP 504\n\nthe script exceeded its CPU-time limit of 100 ms\n"


def test_cli_missing_script_is_a_clear_error(capsys):
    assert main(["run", "/nonexistent/script.lua"], env={}) == 2
    err = capsys.readouterr().err
    assert err == "sngin: cannot read /nonexistent/script.lua: No such file or directory\n"


def test_cli_run_shows_the_scripts_lines(capsys, tmp_path):
    script = tmp_path / "talk.lua"
    script.write_text("print('from the script') return 'done'")
    assert main(["run", str(script)], env={}) == 0
    captured = capsys.readouterr()
    assert captured.out.endswith("done\n")
    assert '"line": "from the script"' in captured.err


def test_the_start_up_line_names_the_code_location_and_the_admin_listener(tmp_path):
    from sngin.cli import startup_line
    from sngin.config import Bind, S3Settings, Settings

    folder = Settings(code_dir=tmp_path)
    assert startup_line(folder, ["http://127.0.0.1:8080"]) == (
        f"serving folder {tmp_path} on http://127.0.0.1:8080 with 4 workers; "
        "admin API on the same listener under /__sngin/"
    )
    s3 = Settings(
        s3=S3Settings(bucket="my-scripts", prefix="prod/eu"),
        admin_bind=Bind(host="127.0.0.1", port=9090),
    )
    assert startup_line(s3, ["http://0.0.0.0:8080", "http://127.0.0.1:9090"]) == (
        "serving s3://my-scripts/prod/eu on http://0.0.0.0:8080 with 4 workers; "
        "admin API on http://127.0.0.1:9090"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("webscriptio/lib", "webscriptio/lib/master"),
        ("me/modules@v1.2", "me/modules/v1.2"),
        ("", None),
    ],
)
def test_default_modules_repository(value, expected):
    settings = Settings.from_env({"SNGIN_DEFAULT_MODULES": value})
    assert settings.default_modules == expected


@pytest.mark.parametrize("value", ["just-one", "a/b/c", "a/..", "a/b@", "a/b@x/y"])
def test_a_bad_default_modules_repository_is_one_clear_error(value):
    with pytest.raises(ConfigError, match="SNGIN_DEFAULT_MODULES"):
        Settings.from_env({"SNGIN_DEFAULT_MODULES": value})


def test_the_default_modules_repository_is_webscripts_library():
    assert Settings.from_env({}).default_modules == "webscriptio/lib/master"


def test_github_token_owners_and_the_token_stays_out_of_errors():
    settings = Settings.from_env(
        {"SNGIN_GITHUB_TOKEN": "ghp_x", "SNGIN_GITHUB_TOKEN_OWNERS": "corp, other-org"}
    )
    assert settings.github_token == "ghp_x"
    assert settings.github_token_owners == frozenset({"corp", "other-org"})
    assert "ghp_x" not in repr(settings)
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"SNGIN_GITHUB_TOKEN": "two words"})
    assert "two words" not in str(caught.value)
    with pytest.raises(ConfigError, match="SNGIN_GITHUB_TOKEN_OWNERS"):
        Settings.from_env({"SNGIN_GITHUB_TOKEN_OWNERS": "bad/owner"})


def test_kept_runtimes_memory_defaults_from_the_machine_and_is_split_over_the_workers():
    from sngin.machine_defaults import default_kept_runtimes_mb, usable_memory_bytes
    from sngin.server import MIN_KEPT_RUNTIMES_BYTES, pool_config

    default = Settings.from_env({})
    assert default.pool.kept_runtimes_mb == default_kept_runtimes_mb()
    assert 32 <= default_kept_runtimes_mb() <= 512
    assert default_kept_runtimes_mb() <= max(32, usable_memory_bytes() // 16 // MIB)

    settings = Settings.from_env({"SNGIN_KEPT_RUNTIMES_MB": "300", "SNGIN_WORKERS": "3"})
    command = pool_config(settings).worker.command()
    share = int(command[command.index("--kept-runtimes-bytes") + 1])
    assert share == 100 * MIB
    # The address-space backstop makes room for the kept runtimes it allows.
    bigger = Settings.from_env({"SNGIN_KEPT_RUNTIMES_MB": "3000", "SNGIN_WORKERS": "3"})
    assert (
        pool_config(bigger).worker.address_space_bytes
        == pool_config(settings).worker.address_space_bytes + 2 * 900 * MIB
    )
    # Nothing left to share still leaves each worker a few runtimes.
    none = Settings.from_env({"SNGIN_KEPT_RUNTIMES_MB": "0"})
    assert pool_config(none).worker.kept_runtimes_bytes == MIN_KEPT_RUNTIMES_BYTES
    with pytest.raises(ConfigError, match="SNGIN_KEPT_RUNTIMES_MB='lots': not an integer"):
        Settings.from_env({"SNGIN_KEPT_RUNTIMES_MB": "lots"})


def test_events_settings_parse_and_keep_the_token_out_of_errors():
    settings = Settings.from_env(
        {
            "SNGIN_EVENTS_TOKEN": "e" * 24,
            "SNGIN_SNS_CONFIRM_HOSTS": "sns.*.amazonaws.com, SNS.x.test",
        }
    )
    assert settings.events_token == "e" * 24
    assert settings.sns_confirm_hosts == ("sns.*.amazonaws.com", "sns.x.test")
    assert Settings.from_env({}).sns_confirm_hosts == ("sns.*.amazonaws.com",)
    with pytest.raises(ConfigError) as short:
        Settings.from_env({"SNGIN_EVENTS_TOKEN": "short-secret"})
    assert "short-secret" not in str(short.value)
    with pytest.raises(ConfigError, match="SNGIN_SNS_CONFIRM_HOSTS="):
        Settings.from_env({"SNGIN_SNS_CONFIRM_HOSTS": "https://sns.example/"})


def test_the_pool_grows_by_default_to_what_half_the_memory_holds_at_the_lua_cap():
    from sngin.machine_defaults import (
        default_outbound_connections,
        descriptor_limit,
        usable_memory_bytes,
    )

    default = Settings.from_env({"SNGIN_WORKERS": "4"})
    by_descriptors = descriptor_limit() // 24  # 6 descriptors a worker, a quarter of them
    fits = usable_memory_bytes() // 2 // ((128 + 32) * MIB)
    assert default.pool.max_workers == max(4, min(512, fits, by_descriptors))
    smaller = Settings.from_env({"SNGIN_WORKERS": "4", "SNGIN_MEMORY_MB": "1024"})
    fits = usable_memory_bytes() // 2 // (1056 * MIB)
    assert smaller.pool.max_workers == max(4, min(512, fits, by_descriptors))
    assert smaller.pool.max_workers <= default.pool.max_workers
    fixed = Settings.from_env({"SNGIN_MAX_WORKERS": "0"})
    assert fixed.pool.max_workers == 0  # a fixed pool, as documented
    expected = max(16, min(1000, descriptor_limit() // 4))
    assert default.outbound.connections == default_outbound_connections() == expected
    assert Settings.from_env({"SNGIN_OUTBOUND_CONNECTIONS": "50"}).outbound.connections == 50
