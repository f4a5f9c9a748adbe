"""Who the client is: the peer address and scheme, or what X-Forwarded-For and
X-Forwarded-Proto say when (and only when) the peer is a trusted proxy."""

from __future__ import annotations

import ipaddress
from collections.abc import MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]


def in_networks(address: str, networks: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_of(
    scope: Scope, headers: list[tuple[bytes, bytes]], trusted: Networks
) -> tuple[str, str]:
    """remote_addr and scheme; the right-most address not in `trusted` is the client."""
    peer = (scope.get("client") or ("", 0))[0]
    scheme = scope.get("scheme", "http")
    if not trusted or not in_networks(peer, trusted):
        return peer, scheme
    forwarded = [v for n, v in headers if n == b"x-forwarded-for"]
    hops = [h.strip() for v in forwarded for h in v.decode("latin-1").split(",") if h.strip()]
    client = peer
    for hop in reversed(hops):
        client = hop
        if not in_networks(hop, trusted):
            break
    proto = next((v for n, v in headers if n == b"x-forwarded-proto"), b"").decode("latin-1")
    proto = proto.split(",")[0].strip().lower()
    return client, proto if proto in ("http", "https") else scheme
