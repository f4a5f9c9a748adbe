"""The `sngin` command: flags override SNGIN_* variables; one line on stderr for a bad setting."""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets as secrets_module
import sys
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sngin import __version__
from sngin.client.remote import TOKEN_HELP, URL_HELP
from sngin.client.remote_storage import ACTIONS as STORAGE_ACTIONS
from sngin.client.remote_storage import USAGE as STORAGE_USAGE
from sngin.config import Settings
from sngin.errors import ConfigError, SnginError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from sngin.node.link import ProcessRole

# flag destination -> the variable it overrides
FLAG_VARIABLES = {
    "bind": "SNGIN_BIND",
    "code_dir": "SNGIN_CODE_DIR",
    "workers": "SNGIN_WORKERS",
    "timeout_ms": "SNGIN_TIMEOUT_MS",
    "log_level": "SNGIN_LOG_LEVEL",
    "processes": "SNGIN_PROCESSES",
}


REMOTE_COMMANDS = ("stats", "purge", "logs", "quarantine", "storage", "token", "deploy", "cron")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sngin", description="Multi-tenant Lua scripting server.")
    parser.add_argument("--version", action="version", version=f"sngin {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--code-dir", help="folder of <host>/<path>/index.lua (SNGIN_CODE_DIR)")
    common.add_argument("--log-level", help="debug, info, warning or error (SNGIN_LOG_LEVEL)")

    serve = commands.add_parser("serve", parents=[common], help="run the HTTP server")
    serve.add_argument("--bind", help="HOST:PORT to listen on (SNGIN_BIND)")
    serve.add_argument("--workers", type=int, help="worker processes (SNGIN_WORKERS)")
    serve.add_argument("--timeout-ms", type=int, help="wall time per request (SNGIN_TIMEOUT_MS)")
    serve.add_argument(
        "--processes",
        help="server processes sharing the listener, or auto: one per core (SNGIN_PROCESSES)",
    )
    # How a node's supervising parent starts each of its processes (not for operators).
    serve.add_argument("--process", help=argparse.SUPPRESS)
    serve.add_argument("--hub-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--admin-fd", type=int, help=argparse.SUPPRESS)

    run = commands.add_parser(
        "run", parents=[common], help="run one script file once in a worker and print the response"
    )
    run.add_argument(
        "file", type=Path, help="a Lua script, e.g. sngin/demo/sites/hello.localhost/index.lua"
    )
    run.add_argument(
        "--host",
        help="the request's Host (the tenant); default: the tenant folder the file is in "
        "under the code dir, else localhost. require() loads that tenant's modules from the "
        "code dir",
    )
    run.add_argument("-X", "--method", default="GET")
    run.add_argument("--path", default="/", help="path and query, e.g. /items?page=2")
    run.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    run.add_argument("-d", "--body", default="", help="request body")

    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--url", help=URL_HELP)
    remote.add_argument("--token", help=TOKEN_HELP)
    remote.add_argument("--json", action="store_true", help="print JSON for scripts")
    commands.add_parser("stats", parents=[remote], help="pool, quarantine and cache statistics")
    purge = commands.add_parser(
        "purge", parents=[remote], help="purge cached code: a tenant, a script or a folder"
    )
    purge.add_argument("host")
    purge.add_argument("path", nargs="?", help="one script's path (default: the whole tenant)")
    purge.add_argument("--folder", action="store_true", help="everything under the path")
    logs = commands.add_parser("logs", parents=[remote], help="follow one tenant's log")
    logs.add_argument("host")
    quarantine = commands.add_parser(
        "quarantine", parents=[remote], help="list quarantined tenants, or lift one's quarantine"
    )
    quarantine.add_argument("--lift", metavar="HOST", help="end this tenant's quarantine now")
    token = commands.add_parser(
        "token", parents=[remote],
        help="tokens scoped to one tenant: create HOST (shown once), list, revoke ID",
    )  # fmt: skip
    deploy = commands.add_parser(
        "deploy", parents=[remote],
        help="upload a sites folder (one folder per host) through the management API",
    )  # fmt: skip
    deploy.add_argument("dir", help="a folder holding one folder per host, like the code root")
    deploy.add_argument("--host", help="only this host's folder")
    deploy.add_argument("--delete", action="store_true", help="delete files not in the folder")
    deploy.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    token.add_argument("action", choices=["create", "list", "revoke"])
    token.add_argument("target", nargs="?", help="HOST for create, ID for revoke")
    cron = commands.add_parser(
        "cron", parents=[remote],
        help="scheduled runs: every site's entries, one site's with its last runs, or --run one",
    )  # fmt: skip
    cron.add_argument("host", nargs="?", help="one site (default: every site with entries)")
    cron.add_argument("--run", type=int, metavar="N", help="run entry N of HOST now")
    replay = commands.add_parser(
        "replay", parents=[remote],
        help="run a failed request's replay bundle again here, offline (--source: a fix)",
    )  # fmt: skip
    replay.add_argument("host", help="the site")
    replay.add_argument("id", help="the bundle's id (its request's X-Request-Id)")
    replay.add_argument("--source", type=Path, help="a changed script to run against it")
    storage = commands.add_parser(
        "storage", parents=[remote], help="tenant storage: list, get, set, delete, export, import",
        epilog=STORAGE_USAGE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    storage.add_argument("action", choices=STORAGE_ACTIONS)
    storage.add_argument("args", nargs="*", help="HOST, KEY, VALUE or FILE (see below)")
    return parser


def merged_env(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    """The environment with the command's flags written over the variables they override."""
    merged = dict(env)
    for dest, variable in FLAG_VARIABLES.items():
        value = getattr(args, dest, None)
        if value is not None:
            merged[variable] = str(value)
    return merged


def settings_from(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    try:
        return Settings.from_env(merged_env(args, env))
    except ConfigError as exc:
        # A value a flag gave is blamed on that flag, not on the variable it stands for.
        for dest, variable in FLAG_VARIABLES.items():
            value = getattr(args, dest, None)
            if value is not None and exc.message.startswith(f"{variable}="):
                flag = "--" + dest.replace("_", "-")
                raise ConfigError(f"{flag} {value}: {exc.message.split(': ', 1)[1]}") from None
        raise


def process_role(args: argparse.Namespace) -> ProcessRole | None:
    """`--process I/N` and the descriptors the node's parent passed (None: not a child)."""
    if args.command != "serve" or args.process is None:
        return None
    from sngin.node.link import ProcessRole

    index, _, count = args.process.partition("/")
    if args.hub_fd is None or args.listen_fd is None:
        raise ConfigError("--process needs --hub-fd and --listen-fd")
    try:
        return ProcessRole(int(index), int(count), args.hub_fd, args.listen_fd, args.admin_fd)
    except ValueError:
        raise ConfigError(f"--process {args.process!r}: expected INDEX/COUNT") from None


def serve_forever(
    settings: Settings, env: Mapping[str, str] | None = None, role: ProcessRole | None = None
) -> int:
    import gc
    import logging

    import trio

    from sngin.node.share import check_processes
    from sngin.observe.logsetup import configure as configure_logging
    from sngin.observe.stderr_writer import stderr_writer
    from sngin.server import serve

    process = role.index if role is not None else None
    chosen = configure_logging(settings.log_level, settings.log_format, process=process)
    settings = dataclasses.replace(settings, log_format=chosen)
    log = logging.getLogger("sngin")
    check_processes(settings)

    if settings.admin_token is None:
        # Nothing is open by default: a token is generated and shown once (the only secret
        # sngin ever writes to its log: the operator has no other way to learn it).
        token = secrets_module.token_urlsafe(24)
        settings = dataclasses.replace(settings, admin_token=token)
        log.warning("admin token for this run (set SNGIN_ADMIN_TOKEN to choose one): %s", token)

    if role is None and settings.processes > 1:
        from sngin.node.parent import run_node

        # Each process parses the same environment; the parent adds what it chose.
        child_env = dict(os.environ if env is None else env)
        child_env |= {"SNGIN_LOG_FORMAT": chosen, "SNGIN_ADMIN_TOKEN": settings.admin_token or ""}
        try:
            return run_node(settings, child_env, lambda binds: startup_line(settings, binds))
        finally:
            stderr_writer().flush()

    async def main_task() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(partial(serve, settings, role=role))
            # Everything made at start-up (modules, clients, the pool) lives as long as the
            # server: out of the collector's sight, a full collection no longer walks it (those
            # walks were the p99 latency spikes under load: 33-43 ms, now ~16 ms).
            gc.freeze()
            if role is None:
                log.info("%s", startup_line(settings, binds))
            else:
                log.info("process %d of %d serving", role.index, role.count)

    try:
        trio.run(main_task)
    except BaseExceptionGroup as group:
        # Start-up errors (e.g. an unusable SNGIN_APP_PATH) surface through nurseries.
        found = first_sngin_error(group)
        if found is None:
            raise
        raise found from None
    finally:
        stderr_writer().flush()  # every queued log line out before the process ends
    return 0


def startup_line(settings: Settings, binds: Sequence[str]) -> str:
    """What is served, where, and where the admin API listens."""
    admin = (
        f"admin API on {binds[-1]}"
        if settings.admin_bind is not None
        else "admin API on the same listener under /__sngin/"
    )
    workers = settings.pool.size
    processes = f"{settings.processes} processes and " if settings.processes > 1 else ""
    return (
        f"serving {code_location(settings)} on {binds[0]} with {processes}{workers} workers;"
        f" {admin}"
    )


def code_location(settings: Settings) -> str:
    if settings.s3 is None:
        return f"folder {settings.code_dir}"
    return f"s3://{settings.s3.bucket}/{settings.s3.prefix}"


def first_sngin_error(error: BaseException) -> SnginError | None:
    if isinstance(error, SnginError):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = first_sngin_error(inner)
            if found is not None:
                return found
    return None


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        merged = merged_env(args, os.environ if env is None else env)
        settings = settings_from(args, os.environ if env is None else env)
        if args.command == "serve":
            return serve_forever(settings, merged, process_role(args))
        if args.command == "run":
            from sngin.client.oneshot import run_file

            return run_file(
                settings,
                args.file,
                host=args.host,
                method=args.method,
                url_path=args.path,
                headers=args.header,
                body=args.body,
            )
        if args.command == "replay":
            from sngin.client.replay import run_replay

            return run_replay(settings, args, os.environ if env is None else env)
        if args.command in REMOTE_COMMANDS:
            from sngin.client.remote import run_remote

            return run_remote(args, os.environ if env is None else env)
    except SnginError as exc:
        print(f"sngin: {exc.message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # Piped into `head`, which stopped reading: not an error worth a traceback. Point
        # stdout at /dev/null so the interpreter's final flush does not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130
    return 0
