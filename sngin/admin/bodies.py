"""Request bodies of admin routes, read within a bound: the raw bytes, or JSON whose size and
nesting are bounded (deep nesting is a 400, never a RecursionError and a 500)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import msgspec
from quart import request

from sngin.errors import BadRequest, RequestTooLarge

if TYPE_CHECKING:
    from sngin.admin.access import Answer

MAX_JSON_BYTES: Final = 1024 * 1024  # the small JSON bodies: login, tokens, purge
MAX_JSON_DEPTH: Final = 64
MAX_IMPORT_BYTES: Final = 16 * 1024 * 1024  # a storage import (Quart's own default bound)


async def bounded_body(limit: int) -> bytes | None:
    """The request body, or None when it is over `limit` bytes (a declared length over it is
    refused unread)."""
    declared = request.content_length
    if declared is not None and declared > limit:
        return None
    data = await request.get_data(cache=False)
    body = data if isinstance(data, bytes) else data.encode()
    return body if len(body) <= limit else None


def too_large(limit: int) -> Answer:
    return {"error": f"a request body of at most {limit} bytes"}, 413


def decode_json(data: bytes | str, what: str = "the body") -> Any:
    """JSON nested at most MAX_JSON_DEPTH deep; BadRequest otherwise."""
    try:
        value = msgspec.json.decode(data)
    except RecursionError:
        raise BadRequest(f"{what} is nested too deeply") from None
    except msgspec.DecodeError:
        raise BadRequest(f"{what} is not JSON") from None
    if depth_over(value, MAX_JSON_DEPTH):
        raise BadRequest(f"{what} is nested more than {MAX_JSON_DEPTH} levels deep")
    return value


def depth_over(value: Any, limit: int) -> bool:
    """Whether value nests deeper than limit (iterative: no recursion of its own)."""
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


async def json_body(limit: int = MAX_JSON_BYTES) -> Any:
    """The body as JSON: BadRequest if it is not JSON or nested too deeply, RequestTooLarge
    (413) past `limit` bytes."""
    data = await bounded_body(limit)
    if data is None:
        raise RequestTooLarge(f"a request body of at most {limit} bytes")
    return decode_json(data)
