"""`sngin stats | purge | logs` against a running server's admin API."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import httpx

from sngin.errors import BadRequest

if TYPE_CHECKING:
    import argparse
    from collections.abc import Mapping


def run_remote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    token = env.get("SNGIN_ADMIN_TOKEN")
    if not token:
        raise BadRequest("set SNGIN_ADMIN_TOKEN to the server's admin token")
    headers = {"Authorization": f"Bearer {token}"}
    base = args.url.rstrip("/")
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=10, trust_env=False) as client:
            if args.command == "stats":
                return show_stats(client.get("/__sngin/stats"), as_json=args.json)
            if args.command == "purge":
                kind = "folder" if args.folder else "file"
                body = {"host": args.host, "path": args.path, "type": kind}
                return show(client.post("/__sngin/purge", json=body), as_json=args.json)
            return follow(client, args.host, as_json=args.json)
    except httpx.HTTPError as exc:
        raise BadRequest(f"cannot reach {base}: {type(exc).__name__}") from None


def show(response: httpx.Response, *, as_json: bool) -> int:
    data = response.json()
    if as_json or response.status_code != 200:
        print(json.dumps(data, indent=2))
    else:
        print(", ".join(f"{k}: {v}" for k, v in data.items()))
    return 0 if response.status_code == 200 else 1


def show_stats(response: httpx.Response, *, as_json: bool) -> int:
    if response.status_code != 200 or as_json:
        return show(response, as_json=True)
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
    cache = data.get("code_cache")
    if cache:
        print(f"\ncode cache: {cache['entries']} entries, {cache['bytes']} bytes, "
              f"{cache['hits']} hits, {cache['misses']} misses")  # fmt: skip
    return 0


def follow(client: httpx.Client, host: str, *, as_json: bool) -> int:
    with client.stream("GET", "/__sngin/logs", params={"host": host}, timeout=None) as response:
        if response.status_code != 200:
            response.read()
            return show(response, as_json=True)
        event = "message"
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                if event == "dropped":
                    print(f"... {data} lines dropped (the tail fell behind)", file=sys.stderr)
                else:
                    print(data if as_json else readable(data), flush=True)
                event = "message"
    return 0


def readable(data: str) -> str:
    try:
        record = json.loads(data)
    except ValueError:
        return data
    if "line" in record:
        return f"{record.get('request', '')[:8]} {record['line']}"
    if "error" in record:
        return f"{record.get('request', '')[:8]} ERROR {record['error']}"
    return (f"{record.get('id', '')[:8]} {record.get('method')} {record.get('path')} "
            f"{record.get('status')} {record.get('wall_ms')} ms")  # fmt: skip
