"""Modules by GitHub URL: conditional GETs to the raw file host (raw.githubusercontent.com)."""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import httpx
import trio

from sngin.codestore import Missing, Modified, NotModified, Source, StoreResult
from sngin.errors import CodeFetchError
from sngin.http_body import ACCEPT_ENCODING, read_capped

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MAX_MODULE_BYTES: Final = 4 * 1024 * 1024
TIMEOUT_S: Final = 10.0


class GitHubStore:
    """Keys are '<user>/<repo>/<ref>/<path>.lua' under the configured raw base URL. Only that
    host is ever contacted (no redirects are followed), whatever the egress guard allows."""

    def __init__(self, http: httpx.AsyncClient, raw_base: str) -> None:
        self._http = http
        self._base = raw_base.rstrip("/")

    async def get(self, key: str, *, etag: str | None, last_modified: str | None) -> StoreResult:
        headers = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        elif last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        url = f"{self._base}/{quote(key, safe='/~')}"
        try:
            with trio.fail_after(TIMEOUT_S):
                async with self._http.stream("GET", url, headers=headers) as response:
                    if response.status_code == 304:
                        return NotModified()
                    if response.status_code == 404:
                        return Missing()
                    if response.status_code != 200:
                        raise CodeFetchError(f"module host answered {response.status_code}")
                    body = await read_capped(response, MAX_MODULE_BYTES)
        except trio.TooSlowError:
            raise CodeFetchError("module host did not answer in time") from None
        except httpx.HTTPError as exc:
            raise CodeFetchError(f"module host unavailable: {type(exc).__name__}") from None
        if body is None:
            raise CodeFetchError(f"module larger than {MAX_MODULE_BYTES} bytes")
        version = response.headers.get("etag") or response.headers.get("last-modified") or ""
        if not version:
            version = hashlib.blake2b(body, digest_size=12).hexdigest()
        return Modified(Source(bytes(body), version, response.headers.get("last-modified")))


@asynccontextmanager
async def open_github_store(raw_base: str) -> AsyncIterator[GitHubStore]:
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=TIMEOUT_S,
        headers={"Accept-Encoding": ACCEPT_ENCODING},
    ) as http:
        yield GitHubStore(http, raw_base)
