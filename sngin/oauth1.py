"""OAuth 1.0a request signing (RFC 5849, HMAC-SHA1), for http.request's
`auth = {oauth = {consumertoken=, consumersecret=, accesstoken=, tokensecret=}}`.

Pure: the caller supplies the nonce and timestamp. The signature covers the method, the
normalised URL, the query parameters, the oauth_* parameters and, for a form-encoded body, the
body's parameters (section 3.4.1.3).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass
from typing import Final
from urllib.parse import quote, unquote_to_bytes, urlsplit

FORM_TYPE: Final = "application/x-www-form-urlencoded"
DEFAULT_PORTS: Final = {"http": 80, "https": 443}


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


def base_string_uri(url: str) -> str:
    """Section 3.4.1.2: scheme and host lower-case, the default port left out, no query."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    port = parts.port
    authority = host if port is None or port == DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    return f"{scheme}://{authority}{parts.path or '/'}"


def signature_base_string(
    method: str, url: str, parameters: list[tuple[bytes | str, bytes | str]]
) -> str:
    """Section 3.4.1: METHOD&uri&normalised parameters, each part percent-encoded."""
    encoded = sorted((percent_encode(name), percent_encode(value)) for name, value in parameters)
    normalised = "&".join(f"{name}={value}" for name, value in encoded)
    return "&".join(
        [
            percent_encode(method.upper()),
            percent_encode(base_string_uri(url)),
            percent_encode(normalised),
        ]
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
    url: str,
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
    parameters += form_pairs(urlsplit(url).query.encode())
    if (
        body
        and content_type is not None
        and content_type.split(";")[0].strip().lower() == FORM_TYPE
    ):
        parameters += form_pairs(body)
    base = signature_base_string(method, url, parameters)
    oauth["oauth_signature"] = sign(base, credentials.consumer_secret, credentials.token_secret)
    fields = ", ".join(f'{name}="{percent_encode(value)}"' for name, value in sorted(oauth.items()))
    return f"OAuth {fields}"
