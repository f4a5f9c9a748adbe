"""Reading an HTTP response body with a size cap (scripts' subrequests, S3 and GitHub fetches)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import httpx


async def read_capped(response: httpx.Response, cap: int) -> bytes | None:
    """The body, or None if it is larger than cap. A declared size is refused unread; an
    undeclared one is read to its end (within the call's timeout) but never kept past cap:
    leaving httpx's stream iterators half-way leaves generators that trio warns about."""
    declared = response.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > cap:
        return None
    body = bytearray()
    too_big = False
    async for chunk in response.aiter_bytes():
        if not too_big:
            body += chunk
            too_big = len(body) > cap
    return None if too_big else bytes(body)
