"""`sngin storage ...`: tenant storage through a running server's admin API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

from sngin.client.output import show
from sngin.errors import BadRequest

if TYPE_CHECKING:
    import argparse

    import httpx

ACTIONS: Final = ("list", "get", "set", "delete", "export", "import", "drop")
USAGE: Final = """actions:
  list [HOST]              tenants with their usage, or one tenant's keys
  get HOST KEY             one value (raw bytes on stdout)
  set HOST KEY VALUE       store a value (e.g. configuration a script reads)
  delete HOST KEY          delete one key
  export [HOST]            JSON of one tenant's storage, or every tenant's
  import [HOST] FILE       load such JSON (FILE may be -, for stdin)
  drop HOST                delete every key of a tenant"""


def run_storage(client: httpx.Client, args: argparse.Namespace) -> int:
    action, rest, as_json = args.action, args.args, args.json
    api = "/__sngin/storage"

    def need(count: int, usage: str) -> list[str]:
        if len(rest) != count:
            raise BadRequest(f"usage: sngin storage {action} {usage}")
        return list(rest)

    if action == "list":
        if not rest:
            return show_tenants(client.get(api), as_json=as_json)
        (host,) = need(1, "[HOST]")
        return list_keys(client, host, as_json=as_json)
    if action == "get":
        host, key = need(2, "HOST KEY")
        response = client.get(f"{api}/{host}/value", params={"key": key})
        if response.status_code != 200:
            return show(response, as_json=as_json)
        sys.stdout.buffer.write(response.content)
        return 0
    if action == "set":
        host, key, value = need(3, "HOST KEY VALUE")
        answer = client.put(f"{api}/{host}/value", params={"key": key}, content=value)
        return show(answer, as_json=as_json, line=lambda d: f"stored {d['key']} for {d['host']}")
    if action == "delete":
        host, key = need(2, "HOST KEY")
        answer = client.delete(f"{api}/{host}/value", params={"key": key})
        return show(answer, as_json=as_json, line=lambda d: f"deleted {d['key']} of {d['host']}")
    if action == "export":  # JSON is what an export is, with or without --json
        if not rest:
            return show(client.get("/__sngin/storage-export"), as_json=True)
        (host,) = need(1, "[HOST]")
        return show(client.get(f"{api}/{host}/export"), as_json=True)
    if action == "import":
        if len(rest) == 1:
            answer = client.post("/__sngin/storage-import", json=read_json(rest[0]))
            return show(answer, as_json=as_json, line=lambda d: "imported " + ", ".join(
                f"{count} keys into {tenant}" for tenant, count in d["imported"].items()
            ) if d["imported"] else "imported nothing: the file names no tenant")  # fmt: skip
        host, source = need(2, "[HOST] FILE")
        answer = client.post(f"{api}/{host}/import", json=read_json(source))
        return show(answer, as_json=as_json,
                    line=lambda d: f"imported {d['imported']} keys into {d['host']}")  # fmt: skip
    (host,) = need(1, "HOST")
    answer = client.delete(f"{api}/{host}")
    return show(
        answer, as_json=as_json, line=lambda d: f"dropped {d['deleted']} keys of {d['host']}"
    )


def show_tenants(response: httpx.Response, *, as_json: bool) -> int:
    if response.status_code != 200 or as_json:
        return show(response, as_json=as_json)
    rows = response.json()["tenants"]
    if not rows:
        print("no tenant has storage")
        return 0
    print(f"{'HOST':40} {'KEYS':>8} {'BYTES':>12}")
    for row in rows:
        print(f"{row['host']:40} {row['keys']:>8} {row['bytes']:>12}")
    return 0


def list_keys(client: httpx.Client, host: str, *, as_json: bool) -> int:
    """Every page of one tenant's keys: a table, or with --json the pages' keys as one list."""
    after, keys = "", []
    while True:
        response = client.get(f"/__sngin/storage/{host}", params={"after": after, "limit": 1000})
        if response.status_code != 200:
            return show(response, as_json=as_json)
        page = response.json()
        keys += page["keys"]
        if page["next"] is None:
            break
        after = page["next"]
    if as_json:
        print(json.dumps({"host": host, "keys": keys}, indent=2, ensure_ascii=False))
    elif not keys:
        print(f"no keys for {host}")
    else:
        print(f"{'BYTES':>10}  KEY")
        for entry in keys:
            print(f"{entry['bytes']:>10}  {entry['key']}")
    return 0


def read_json(source: str) -> object:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{source}: not JSON: {exc}") from None
