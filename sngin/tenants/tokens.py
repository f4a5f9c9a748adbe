"""Tokens scoped to one tenant (`sngin token create HOST`): a tenant may edit, try and watch its
own code with one, and nothing else. Stored in the tenant storage backend (SQLite or Redis)
under sngin's own namespace, keyed by the token's SHA-256: the token itself is shown once, at
creation, and never stored."""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import msgspec

from sngin.storage.sqlite import Quota

if TYPE_CHECKING:
    from sngin.storage.tenant_storage import TenantStorage

NAMESPACE: Final = "__sngin.tokens"
PREFIX: Final = "sngt_"  # recognisable in a leaked log or a secret scanner
MAX_TOKENS: Final = 100_000
QUOTA: Final = Quota(max_keys=MAX_TOKENS, max_bytes=MAX_TOKENS * 512)


class TokenRecord(msgspec.Struct, frozen=True):
    id: str
    host: str
    created: str


@dataclass(frozen=True, slots=True)
class NewToken:
    record: TokenRecord
    token: str


def token_key(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest().encode()


class TenantTokens:
    def __init__(self, storage: TenantStorage) -> None:
        self._storage = storage

    async def create(self, host: str) -> NewToken:
        token = PREFIX + secrets.token_urlsafe(32)
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        record = TokenRecord(id=secrets.token_hex(6), host=host, created=created)
        await self._storage.set(NAMESPACE, token_key(token), msgspec.json.encode(record), QUOTA)
        return NewToken(record, token)

    async def host_of(self, token: str) -> str | None:
        """The tenant a token is for, or None (not one of ours, or revoked)."""
        if not token.startswith(PREFIX) or len(token) > 128:
            return None
        value = await self._storage.get(NAMESPACE, token_key(token))
        if value is None:
            return None
        return msgspec.json.decode(value, type=TokenRecord).host

    async def alive(self, key: str) -> bool:
        """Is the token with this hash still there (a UI session made with it ends with it)?"""
        return await self._storage.get(NAMESPACE, key.encode()) is not None

    async def list(self) -> list[TokenRecord]:
        items = await self._storage.items(NAMESPACE)
        records = [msgspec.json.decode(value, type=TokenRecord) for _, value in items]
        return sorted(records, key=lambda r: (r.host, r.created, r.id))

    async def revoke(self, token_id: str) -> TokenRecord | None:
        for key, value in await self._storage.items(NAMESPACE):
            record = msgspec.json.decode(value, type=TokenRecord)
            if record.id == token_id:
                await self._storage.set(NAMESPACE, key, None, QUOTA)
                return record
        return None
