"""Modules by GitHub URL: conditional GETs to the raw file host (raw.githubusercontent.com)."""

from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Final
from urllib.parse import quote

import httpx
import trio

from sngin.bodies.http_body import ACCEPT_ENCODING, read_capped
from sngin.code.store import Missing, Modified, NotModified, Source, StoreResult
from sngin.errors import CodeFetchError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

MAX_MODULE_BYTES: Final = 4 * 1024 * 1024
TIMEOUT_S: Final = 10.0


SCOPE_MARK: Final = "\0"  # key = path, or path + SCOPE_MARK + the token's scope


class GitHubTokens:
    """Tokens for private repositories, and which fetches may use them: a tenant's own (its
    _sngin.json github_token) for that tenant's fetches only, else the operator's
    (SNGIN_GITHUB_TOKEN) for the owners in SNGIN_GITHUB_TOKEN_OWNERS only. A fetch made with a
    token is cached under a key naming its scope, so no other scope reads what it fetched."""

    def __init__(
        self, operator_token: str | None = None, owners: frozenset[str] = frozenset()
    ) -> None:
        self._operator = operator_token
        self._owners = frozenset(o.lower() for o in owners)
        self._tenants: dict[str, str] = {}

    def key_for(self, path: str, tenant: str, tenant_token: str | None) -> str:
        """The cache key of a fetch of path for tenant (remembering its token for the store)."""
        if tenant_token:
            self._tenants[tenant] = tenant_token
            return f"{path}{SCOPE_MARK}tenant:{tenant}"
        self._tenants.pop(tenant, None)
        owner = path.split("/", 1)[0].lower()
        if self._operator and owner in self._owners:
            return f"{path}{SCOPE_MARK}operator"
        return path

    def token(self, scope: str) -> str | None:
        if scope == "operator":
            return self._operator
        if scope.startswith("tenant:"):
            return self._tenants.get(scope.removeprefix("tenant:"))
        return None


class GitHubStore:
    """Keys are '<user>/<repo>/<ref>/<path>.lua' under the configured raw base URL, with a
    token's scope appended (GitHubTokens) when one is used. Only that host is ever contacted,
    and so the only one a token is sent to (no redirects are followed), whatever the egress
    guard allows."""

    def __init__(
        self, http: httpx.AsyncClient, raw_base: str, tokens: GitHubTokens | None = None
    ) -> None:
        self._http = http
        self._base = raw_base.rstrip("/")
        self.tokens = tokens or GitHubTokens()

    async def get(self, key: str, *, etag: str | None, last_modified: str | None) -> StoreResult:
        headers = {}
        if etag is not None:
            headers["If-None-Match"] = etag
        elif last_modified is not None:
            headers["If-Modified-Since"] = last_modified
        path, _, scope = key.partition(SCOPE_MARK)
        if scope:
            token = self.tokens.token(scope)
            if token is None:
                raise CodeFetchError("the token for this module is no longer configured")
            headers["Authorization"] = f"token {token}"
        url = f"{self._base}/{quote(path, safe='/~')}"
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
async def open_github_store(
    raw_base: str, tokens: GitHubTokens | None = None
) -> AsyncIterator[GitHubStore]:
    async with httpx.AsyncClient(
        trust_env=False,
        follow_redirects=False,
        timeout=TIMEOUT_S,
        headers={"Accept-Encoding": ACCEPT_ENCODING},
    ) as http:
        yield GitHubStore(http, raw_base, tokens)
