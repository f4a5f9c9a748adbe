"""What the admin commands print, one convention for all: a table or one line whether or not
stdout is a terminal (`sngin stats | head` works), JSON only with `--json`, an error as one line
on stderr with exit status 1."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx


def show(
    response: httpx.Response,
    *,
    as_json: bool,
    line: Callable[[dict[str, Any]], str] | None = None,
) -> int:
    """The CLI's one convention: with --json the answer as JSON; else an error as one line on
    stderr (exit 1), and a success as `line` of its answer (a table is the caller's)."""
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text.strip()[:200] or f"HTTP {response.status_code}"}
    failed = not 200 <= response.status_code < 300
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    elif failed:
        error = data.get("error", data) if isinstance(data, dict) else data
        print(f"sngin: {error} ({response.status_code})", file=sys.stderr)
    elif line is not None:
        print(line(data))
    return 1 if failed else 0
