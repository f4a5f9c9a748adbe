"""`sngin storage ...`: tenant storage through a running server's admin API."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Final

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
    action, rest = args.action, args.args
    api = "/__sngin/storage"

    def need(count: int, usage: str) -> list[str]:
        if len(rest) != count:
            raise BadRequest(f"usage: sngin storage {action} {usage}")
        return list(rest)

    if action == "list":
        if not rest:
            return printed(client.get(api))
        (host,) = need(1, "[HOST]")
        after, status = "", 0
        while True:  # every page
            response = client.get(f"{api}/{host}", params={"after": after, "limit": 1000})
            if response.status_code != 200:
                return printed(response)
            page = response.json()
            for entry in page["keys"]:
                print(f"{entry['bytes']:>10}  {entry['key']}")
            if page["next"] is None:
                return status
            after = page["next"]
    if action == "get":
        host, key = need(2, "HOST KEY")
        response = client.get(f"{api}/{host}/value", params={"key": key})
        if response.status_code != 200:
            return printed(response)
        sys.stdout.buffer.write(response.content)
        return 0
    if action == "set":
        host, key, value = need(3, "HOST KEY VALUE")
        return printed(client.put(f"{api}/{host}/value", params={"key": key}, content=value))
    if action == "delete":
        host, key = need(2, "HOST KEY")
        return printed(client.delete(f"{api}/{host}/value", params={"key": key}))
    if action == "export":
        if not rest:
            return printed(client.get("/__sngin/storage-export"))
        (host,) = need(1, "[HOST]")
        return printed(client.get(f"{api}/{host}/export"))
    if action == "import":
        if len(rest) == 1:
            return printed(client.post("/__sngin/storage-import", json=read_json(rest[0])))
        host, source = need(2, "[HOST] FILE")
        return printed(client.post(f"{api}/{host}/import", json=read_json(source)))
    (host,) = need(1, "HOST")
    return printed(client.delete(f"{api}/{host}"))


def read_json(source: str) -> object:
    text = sys.stdin.read() if source == "-" else Path(source).read_text()
    try:
        return json.loads(text)
    except ValueError as exc:
        raise BadRequest(f"{source}: not JSON: {exc}") from None


def printed(response: httpx.Response) -> int:
    print(json.dumps(response.json(), indent=2, ensure_ascii=False))
    return 0 if response.status_code == 200 else 1
