"""`sngin stats | purge | logs | quarantine | token` against a running server's admin API."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Final

import httpx

from sngin.client.output import show
from sngin.client.remote_storage import run_storage
from sngin.errors import BadRequest

if TYPE_CHECKING:
    import argparse
    from collections.abc import Iterator, Mapping


DEFAULT_ADDRESS: Final = "127.0.0.1:8080"
URL_HELP: Final = (
    "the running server's admin API (default: SNGIN_ADMIN_BIND, else SNGIN_BIND, else "
    f"{DEFAULT_ADDRESS}); a scheme is optional"
)
TOKEN_HELP: Final = "the admin token (default: SNGIN_ADMIN_TOKEN)"


def admin_url(given: str | None, env: Mapping[str, str]) -> str:
    """http://HOST:PORT of the admin API: --url, else where the server's settings put it."""
    address = given or env.get("SNGIN_ADMIN_BIND") or env.get("SNGIN_BIND") or DEFAULT_ADDRESS
    address = address.strip().rstrip("/")
    if "://" not in address:
        address = "http://" + address
    # A server bound to every interface is reached on loopback.
    return address.replace("//0.0.0.0:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


@contextmanager
def admin_client(args: argparse.Namespace, env: Mapping[str, str]) -> Iterator[httpx.Client]:
    """A client of the admin API with --token (else SNGIN_ADMIN_TOKEN): the admin token, or a
    site's for its own routes. A connection failure is one line naming the address."""
    token = args.token or env.get("SNGIN_ADMIN_TOKEN")
    if not token:
        raise BadRequest(
            "give a token with --token or SNGIN_ADMIN_TOKEN (the server's admin token, or the"
            " site's)"
        )
    headers = {"Authorization": f"Bearer {token}"}
    base = admin_url(args.url, env)
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=30, trust_env=False) as client:
            yield client
    except httpx.HTTPError as exc:
        raise BadRequest(f"cannot reach {base}: {describe(exc)}") from None


def run_remote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    with admin_client(args, env) as client:
        if args.command == "stats":
            return show_stats(client.get("/__sngin/stats"), as_json=args.json)
        if args.command == "purge":
            # No path: the whole tenant. A path: that script, or with --folder all below.
            kind = "folder" if args.folder or args.path is None else "file"
            body = {"host": args.host, "path": args.path or "/", "type": kind}
            return show(
                    client.post("/__sngin/purge", json=body), as_json=args.json,
                    line=lambda d: f"purged {d['purged']} cached entries of {d['host']}{d['path']}"
                    f" ({d['type']})",
                )  # fmt: skip
        if args.command == "storage":
            return run_storage(client, args)
        if args.command == "deploy":
            from sngin.client.deploy import deploy

            return deploy(client, args)
        if args.command == "token":
            return run_token(client, args)
        if args.command == "cron":
            from sngin.client.cron import run_cron

            return run_cron(client, args)
        if args.command == "quarantine":
            if args.lift:
                path = f"/__sngin/quarantine/{args.lift}"
                return show(
                        client.delete(path), as_json=args.json,
                        line=lambda d: f"{d['host']}: quarantine lifted" if d["lifted"]
                        else f"{d['host']} was not quarantined",
                    )  # fmt: skip
            return show_quarantine(client.get("/__sngin/quarantine"), as_json=args.json)
        return follow(client, args.host, as_json=args.json)


def run_token(client: httpx.Client, args: argparse.Namespace) -> int:
    """`sngin token create HOST | list | revoke ID`."""
    if args.action == "create":
        if args.target is None:
            raise BadRequest("sngin token create HOST")
        answer = client.post("/__sngin/tokens", json={"host": args.target})
        if answer.status_code != 201 or args.json:
            return show(answer, as_json=args.json)
        made = answer.json()
        print(made["token"])
        print(f"(for {made['host']}, id {made['id']}: shown once, only its hash is kept)",
              file=sys.stderr)  # fmt: skip
        return 0
    if args.action == "revoke":
        if args.target is None:
            raise BadRequest("sngin token revoke ID")
        return show(
            client.delete(f"/__sngin/tokens/{args.target}"), as_json=args.json,
            line=lambda d: f"revoked token {d['id']} (for {d['host']})",
        )  # fmt: skip
    answer = client.get("/__sngin/tokens")
    if answer.status_code != 200 or args.json:
        return show(answer, as_json=args.json)
    rows = answer.json()["tokens"]
    if not rows:
        print("no tenant tokens")
    for row in rows:
        print(f"{row['id']}  {row['host']:40} created {row['created']}")
    return 0


def describe(exc: httpx.HTTPError) -> str:
    cause = exc.__cause__ or exc.__context__
    text = str(cause or exc) or type(exc).__name__
    return text.splitlines()[0][:200]


def show_stats(response: httpx.Response, *, as_json: bool) -> int:
    if response.status_code != 200 or as_json:
        return show(response, as_json=as_json)
    data: dict[str, Any] = response.json()
    pool = data["pool"]
    print(f"workers: {pool['live']} live, {pool['idle']} idle, {pool['replaced']} replaced")
    print(f"{'PID':>8} {'STATE':6} {'TENANT':30} {'REQS':>8} {'RSS MiB':>8}")
    for worker in pool["workers"]:
        print(f"{worker['pid']:>8} {worker['state']:6} {worker['tenant'] or '-':30} "
              f"{worker['requests']:>8} {worker['rss_bytes'] / 2**20:>8.1f}")  # fmt: skip
    print(f"\n{'TENANT':30} {'REQS':>8} {'5XX':>6} {'KILLS':>6} {'CPU MS':>10}")
    for name, t in sorted(pool["tenants"].items()):
        kills = t["wall_kills"] + t["cpu_kills"] + t["memory_kills"]
        print(f"{name:30} {t['requests']:>8} {t['status_5xx']:>6} {kills:>6} {t['cpu_ms']:>10.1f}")
    paused = data.get("quarantined") or []
    if paused:
        print(f"\n{'QUARANTINED':30} {'UNTIL':25} {'LEFT S':>8}")
        for entry in paused:
            print(f"{entry['host']:30} {entry['until']:25} {entry['remaining_s']:>8.1f}")
    cache = data.get("code_cache")
    if cache:
        print(f"\ncode cache: {cache['entries']} entries, {cache['bytes']} bytes, "
              f"{cache['hits']} hits, {cache['misses']} misses")  # fmt: skip
    show_processes(data.get("processes") or [])
    return 0


def show_processes(rows: list[dict[str, Any]]) -> None:
    """The node's server processes (`--processes N`); the figures above are their totals."""
    if not rows:
        return
    print(f"\n{'PROCESS':>7} {'PID':>8} {'RESTARTS':>8} {'STARTED':25} {'WORKERS':>7} {'CONNS':>6}")
    for row in rows:
        start = f"{row['process']:>7} {row['pid']:>8} {row['restarts']:>8} {row['started']:25}"
        if "error" in row:
            print(f"{start} {row['error']}")
        else:
            print(f"{start} {row['pool']['live']:>7} {row['connections']['open']:>6}")


def show_quarantine(response: httpx.Response, *, as_json: bool) -> int:
    if response.status_code != 200 or as_json:
        return show(response, as_json=as_json)
    paused = response.json()["quarantined"]
    if not paused:
        print("no tenant is quarantined")
    for entry in paused:
        print(f"{entry['host']} until {entry['until']} ({entry['remaining_s']:.1f} s left)")
    return 0


def follow(client: httpx.Client, host: str, *, as_json: bool) -> int:
    try:
        with client.stream("GET", "/__sngin/logs", params={"host": host}, timeout=None) as answer:
            if answer.status_code != 200:
                answer.read()
                return show(answer, as_json=as_json)
            event = "message"
            for line in answer.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    data = line[6:]
                    if event == "dropped":
                        print(f"... {data} lines dropped (the tail fell behind)", file=sys.stderr)
                    else:
                        print(data if as_json else readable(data), flush=True)
                    event = "message"
    except httpx.TransportError:
        print("sngin: the server went away", file=sys.stderr)
        return 1
    print("sngin: the server ended the log (it is shutting down)", file=sys.stderr)
    return 0


def short_id(request_id: object) -> str:
    """The part of a request id that tells requests apart: generated ids share a per-server
    prefix and end in a counter, so the end is what differs."""
    return str(request_id or "-")[-8:]


def readable(data: str) -> str:
    try:
        record = json.loads(data)
    except ValueError:
        return data
    if "line" in record:
        return f"{short_id(record.get('request'))} {record['line']}"
    if "error" in record:
        return f"{short_id(record.get('request'))} ERROR {record['error']}"
    return (f"{short_id(record.get('id'))} {record.get('method')} {record.get('path')} "
            f"{record.get('status')} {record.get('wall_ms')} ms")  # fmt: skip
