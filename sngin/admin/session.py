"""The web UI's session: a signed cookie made at login with a token (the operator's admin token
or a tenant's), carrying who it is for, when it ends and its CSRF token. Signed with a key
derived from the admin token, so every process of a node (and every node with the same
token) reads it, and changing the admin token ends every session.

The cookie is `HttpOnly` and `SameSite=Strict`, `Secure` behind TLS, scoped to `/__sngin/`.
A request authenticated by the cookie that changes anything must carry the session's CSRF
token in `X-CSRF-Token` (the page reads it from the login answer, never from the cookie)."""

from __future__ import annotations

import hashlib
import secrets
import time
from typing import Final

import itsdangerous
import msgspec

COOKIE: Final = "sngin_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_S: Final = 8 * 3600
MAX_COOKIE_BYTES: Final = 1024
SALT: Final = "sngin ui session"


class Session(msgspec.Struct, frozen=True):
    host: str | None  # None: the operator
    expires: float  # time.time()
    csrf: str
    token_key: str | None = None  # a tenant session: its token's hash, checked on every use


def new_session(host: str | None, token_key: str | None = None) -> Session:
    return Session(
        host=host, expires=time.time() + SESSION_S, csrf=secrets.token_urlsafe(24),
        token_key=token_key,
    )  # fmt: skip


def serializer(admin_token: str) -> itsdangerous.URLSafeSerializer:
    """itsdangerous signs and checks the cookie (HMAC-SHA256 under a key it derives from the
    admin token and the salt); the session's own `expires` bounds its life."""
    return itsdangerous.URLSafeSerializer(
        admin_token, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256}
    )


def sign(session: Session, admin_token: str) -> str:
    return serializer(admin_token).dumps(msgspec.to_builtins(session))


def verify(cookie: str, admin_token: str) -> Session | None:
    """The session a cookie carries, or None (forged, altered, expired or malformed)."""
    if len(cookie) > MAX_COOKIE_BYTES:
        return None
    try:
        session = msgspec.convert(serializer(admin_token).loads(cookie), type=Session)
    except (itsdangerous.BadData, msgspec.ValidationError):
        return None
    return session if session.expires > time.time() else None
