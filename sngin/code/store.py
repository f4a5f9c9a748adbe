"""Where tenants' scripts live: the seams between the server, the cache and the stores."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sngin.code.cache import CacheStatistics
    from sngin.observe.notes import FetchNote


@dataclass(frozen=True, slots=True)
class Source:
    """A script's text and its version (a content hash, or the S3 ETag)."""

    text: bytes
    version: str
    last_modified: str | None = None


class CodeSource(Protocol):
    """What the server asks for a script: the folder store directly, or the S3 code cache."""

    async def fetch(
        self,
        key: str,
        *,
        revalidate: bool = False,
        note: FetchNote | None = None,
        owner: str | None = None,
    ) -> Source | None:
        """The script for key ('host/a/b' -> host/a/b/index.lua), or None if there is none.

        revalidate: the request carries `$cb`; confirm with the store before answering.
        note: where to say how the fetch was answered (hit, miss, ...).
        owner: the tenant a cached copy counts against (for keys that name no tenant).
        """
        ...

    async def purge(self, tenant: str, folder: str, *, recursive: bool) -> int:
        """Forget cached copies of one script or a folder of them; returns how many."""
        ...

    async def probe(self) -> None:
        """Raise CodeFetchError or StoreMisconfigured if the store does not answer as it
        should (the readiness probe)."""
        ...

    def statistics(self) -> CacheStatistics | None:
        """The code cache's figures (None: a store without a cache of its own)."""
        ...

    def forget_memory(self) -> int:
        """Forget every copy held in memory (a flush); returns how many."""
        ...


@dataclass(frozen=True, slots=True)
class Modified:
    source: Source


@dataclass(frozen=True, slots=True)
class NotModified:
    pass


@dataclass(frozen=True, slots=True)
class Missing:
    pass


StoreResult = Modified | NotModified | Missing


class ConditionalStore(Protocol):
    """A remote store answering conditional GETs; raises CodeFetchError when it cannot answer."""

    async def get(
        self, key: str, *, etag: str | None, last_modified: str | None
    ) -> StoreResult: ...
