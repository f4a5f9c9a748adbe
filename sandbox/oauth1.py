"""OAuth 1.0a request signing (RFC 5849, HMAC-SHA1) for http.request's `auth = {oauth = ...}`.

It runs in the worker, under the tenant's CPU and memory limits: the cost grows with the body
and the URL, which the tenant controls, so it must never run in the shared server process.
The signature covers the URL exactly as the server's HTTP client (httpx) will send it, so the
URL is first put in that client's canonical form (`canonical_url`, which httpx leaves as it is)
and the script's request goes out with that form.

oauthlib is not used: its form decoder refuses raw spaces, non-ASCII, `"` and `#` in bodies,
which scripts send and providers accept.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import re
import secrets
import time
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote_to_bytes

from sandbox.host import HostError, HostResult, expect_bytes

FORM_TYPE: Final = "application/x-www-form-urlencoded"
DEFAULT_PORTS: Final = {"http": 80, "https": 443}

# httpx's own URL grammar and percent-encode sets (httpx/_urlparse.py, after WHATWG).
URL_PARTS: Final = re.compile(
    r"(?:(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*):)?(?://(?P<authority>[^/?#]*))?"
    r"(?P<path>[^?#]*)(?:\?(?P<query>[^#]*))?(?:#(?P<fragment>.*))?",
    re.DOTALL,
)
AUTHORITY_PARTS: Final = re.compile(
    r"(?:(?P<userinfo>.*)@)?(?P<host>\[.*\]|[^:@]*):?(?P<port>.*)?", re.DOTALL
)
UNRESERVED: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~"
SUB_DELIMS: Final = "!$&'()*+,;="
QUERY_SAFE: Final = "".join(
    chr(i) for i in range(0x20, 0x7F) if i not in (0x20, 0x22, 0x23, 0x3C, 0x3E)
)
PATH_SAFE: Final = "".join(c for c in QUERY_SAFE if c not in "?`{}")
USERINFO_SAFE: Final = "".join(c for c in PATH_SAFE if c not in "/;=@[\\]^|")
HOST_SAFE: Final = SUB_DELIMS + '"`{}%|\\'
PERCENT_ENCODED: Final = re.compile("%[A-Fa-f0-9]{2}")
IPV4_STYLE: Final = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\Z")


@dataclass(frozen=True, slots=True)
class CanonicalUrl:
    """A URL as httpx sends it: `text` is its whole canonical form (no fragment), `base_uri`
    the signature's base string URI (section 3.4.1.2), `query` the raw query."""

    text: str
    base_uri: str
    query: str


def _escape(text: str, safe: str) -> str:
    keep = UNRESERVED + safe
    return "".join(c if c in keep else "".join(f"%{b:02X}" for b in c.encode()) for c in text)


def _quote(text: str, safe: str) -> str:
    """httpx's quote: percent-encode what is not safe, leaving existing %XX escapes alone."""
    parts, at = [], 0
    for match in PERCENT_ENCODED.finditer(text):
        parts += [_escape(text[at : match.start()], safe), match.group(0)]
        at = match.end()
    parts.append(_escape(text[at:], safe))
    return "".join(parts)


def _host(host: str) -> str:
    if not host:
        raise HostError("the URL has no host")
    if IPV4_STYLE.match(host):
        try:
            return str(ipaddress.IPv4Address(host))
        except ValueError:
            raise HostError(f"invalid IPv4 address {host[:64]!r}") from None
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise HostError(f"invalid IPv6 address {host[:64]!r}") from None
        return host[1:-1]
    if host.isascii():
        return _quote(host.lower(), HOST_SAFE)
    import idna  # httpx's own IDNA encoder (2008); loaded only by a script that needs it

    try:
        return str(idna.encode(host.lower()).decode("ascii"))
    except idna.IDNAError:
        raise HostError(f"invalid IDNA host name {host[:64]!r}") from None


def _without_dot_segments(path: str) -> str:
    if "." not in path:
        return path
    segments = path.split("/")
    if "." not in segments and ".." not in segments:
        return path
    out: list[str] = []
    for segment in segments:
        if segment == "..":
            if out and out != [""]:
                out.pop()
        elif segment != ".":
            out.append(segment)
    return "/".join(out)


def canonical_url(url: str) -> CanonicalUrl:
    """The URL in httpx's canonical form, which httpx sends unchanged (tested against httpx)."""
    parts = URL_PARTS.match(url)
    assert parts is not None  # every group is optional: the pattern matches any text
    scheme = (parts["scheme"] or "").lower()
    if scheme not in DEFAULT_PORTS:
        raise HostError("only http and https URLs are allowed")
    authority = AUTHORITY_PARTS.match(parts["authority"] or "")
    assert authority is not None
    host = _host(authority["host"] or "")
    port_text = authority["port"] or ""
    port: int | None = None
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise HostError(f"invalid port {port_text[:16]!r}")
        port = None if int(port_text) == DEFAULT_PORTS[scheme] else int(port_text)
    raw_path = parts["path"] or ""
    if raw_path and not raw_path.startswith("/"):
        raise HostError("the URL's path must begin with /")
    path = _quote(_without_dot_segments(raw_path), PATH_SAFE)
    query = parts["query"]
    query = None if query is None else _quote(query, QUERY_SAFE)
    userinfo = _quote(authority["userinfo"] or "", USERINFO_SAFE)
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    text = "".join(
        [
            f"{scheme}://",
            f"{userinfo}@" if userinfo else "",
            netloc,
            path,
            f"?{query}" if query is not None else "",
        ]
    )
    return CanonicalUrl(text, f"{scheme}://{netloc}{path or '/'}", query or "")


@dataclass(frozen=True, slots=True)
class OAuth1Credentials:
    consumer_key: str
    consumer_secret: str
    token: str | None = None  # absent in the request-token step of the OAuth dance
    token_secret: str | None = None


def percent_encode(value: str | bytes) -> str:
    """Section 3.6: UTF-8, then every byte but the unreserved characters as %XX."""
    data = value.encode() if isinstance(value, str) else value
    return quote(data, safe="-._~")


def form_pairs(text: bytes) -> list[tuple[bytes, bytes]]:
    """application/x-www-form-urlencoded pairs (`+` is a space), as bytes."""
    pairs = []
    for part in text.split(b"&"):
        if part:
            name, _, value = part.partition(b"=")
            pairs.append(
                (
                    unquote_to_bytes(name.replace(b"+", b" ")),
                    unquote_to_bytes(value.replace(b"+", b" ")),
                )
            )
    return pairs


def signature_base_string(
    method: str, base_uri: str, parameters: list[tuple[bytes | str, bytes | str]]
) -> str:
    """Section 3.4.1: METHOD&uri&normalised parameters, each part percent-encoded."""
    encoded = sorted((percent_encode(name), percent_encode(value)) for name, value in parameters)
    normalised = "&".join(f"{name}={value}" for name, value in encoded)
    return "&".join(
        [percent_encode(method.upper()), percent_encode(base_uri), percent_encode(normalised)]
    )


def sign(base_string: str, consumer_secret: str, token_secret: str | None) -> str:
    """Section 3.4.2: HMAC-SHA1 keyed by the two secrets, base64."""
    key = f"{percent_encode(consumer_secret)}&{percent_encode(token_secret or '')}"
    digest = hmac.new(key.encode(), base_string.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode()


def authorization_header(
    credentials: OAuth1Credentials,
    *,
    method: str,
    url: CanonicalUrl,
    body: bytes | None,
    content_type: str | None,
    nonce: str,
    timestamp: int,
) -> str:
    """The `Authorization: OAuth ...` value for one request (section 3.5.1)."""
    oauth = {
        "oauth_consumer_key": credentials.consumer_key,
        "oauth_nonce": nonce,
        "oauth_signature_method": "HMAC-SHA1",
        "oauth_timestamp": str(timestamp),
        "oauth_version": "1.0",
    }
    if credentials.token is not None:
        oauth["oauth_token"] = credentials.token
    parameters: list[tuple[bytes | str, bytes | str]] = list(oauth.items())
    parameters += form_pairs(url.query.encode())
    if (
        body
        and content_type is not None
        and content_type.split(";")[0].strip().lower() == FORM_TYPE
    ):
        parameters += form_pairs(body)
    base = signature_base_string(method, url.base_uri, parameters)
    oauth["oauth_signature"] = sign(base, credentials.consumer_secret, credentials.token_secret)
    fields = ", ".join(f'{name}="{percent_encode(value)}"' for name, value in sorted(oauth.items()))
    return f"OAuth {fields}"


def _text(value: Any, what: str) -> str:
    return expect_bytes(value, what).decode("utf-8", "replace")


def _optional(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def sign_request(
    method: Any,
    url: Any,
    body: Any,
    content_type: Any,
    consumer_key: Any,
    consumer_secret: Any,
    token: Any = None,
    token_secret: Any = None,
) -> HostResult:
    """The host function behind http.request's oauth: (canonical URL, Authorization value),
    with a fresh nonce and the current time."""
    canonical = canonical_url(_text(url, "url"))
    header = authorization_header(
        OAuth1Credentials(
            _text(consumer_key, "auth.oauth.consumertoken"),
            _text(consumer_secret, "auth.oauth.consumersecret"),
            _optional(token, "auth.oauth.accesstoken"),
            _optional(token_secret, "auth.oauth.tokensecret"),
        ),
        method=_text(method, "method"),
        url=canonical,
        body=None if body is None else expect_bytes(body, "body"),
        content_type=_optional(content_type, "the Content-Type header"),
        nonce=secrets.token_hex(16),
        timestamp=int(time.time()),
    )
    return (canonical.text.encode(), header.encode())
