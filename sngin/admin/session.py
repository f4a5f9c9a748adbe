"""The web UI's session: a signed cookie made at login with a token (the operator's admin token
or a tenant's), carrying who it is for, when it ends and its CSRF token. Signed with a key
derived from the admin token, so every process of a node (and every node with the same
token) reads it, and changing the admin token ends every session.

The cookie is `HttpOnly` and `SameSite=Strict`, `Secure` behind TLS, scoped to `/__sngin/`.
A request authenticated by the cookie that changes anything must carry the session's CSRF
token in `X-CSRF-Token` (the page reads it from the login answer, never from the cookie)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from typing import Final

import msgspec

COOKIE: Final = "sngin_session"
CSRF_HEADER: Final = "X-CSRF-Token"
SESSION_S: Final = 8 * 3600
MAX_COOKIE_BYTES: Final = 1024


class Session(msgspec.Struct, frozen=True):
    host: str | None  # None: the operator
    expires: float  # time.time()
    csrf: str
    token_key: str | None = None  # a tenant session: its token's hash, checked on every use


def session_key(admin_token: str) -> bytes:
    return hashlib.sha256(b"sngin ui session\0" + admin_token.encode()).digest()


def new_session(host: str | None, token_key: str | None = None) -> Session:
    return Session(
        host=host, expires=time.time() + SESSION_S, csrf=secrets.token_urlsafe(24),
        token_key=token_key,
    )  # fmt: skip


def sign(session: Session, admin_token: str) -> str:
    payload = base64.urlsafe_b64encode(msgspec.json.encode(session)).decode().rstrip("=")
    mac = hmac.new(session_key(admin_token), payload.encode(), hashlib.sha256).hexdigest()
    return f"{payload}.{mac}"


def verify(cookie: str, admin_token: str) -> Session | None:
    """The session a cookie carries, or None (forged, altered, expired or malformed)."""
    if len(cookie) > MAX_COOKIE_BYTES:
        return None
    payload, _, mac = cookie.partition(".")
    expected = hmac.new(session_key(admin_token), payload.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac.encode(), expected.encode()):
        return None
    try:
        data = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
        session = msgspec.json.decode(data, type=Session)
    except (ValueError, msgspec.DecodeError):
        return None
    return session if session.expires > time.time() else None
