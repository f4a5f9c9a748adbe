"""Where scripts' HTTP requests may go: the operator's policy (public addresses, plus the
openings of SNGIN_EGRESS_ALLOW) and a tenant's own narrowing rule. Pure: the guard that applies
them at connect time is in sngin.calls.outbound."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from collections.abc import Iterable

NAT64: Final = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def is_public(address: Address) -> bool:
    """True for addresses on the public internet; embedded IPv4 forms are unwrapped first."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return is_public(address.ipv4_mapped)
        if address.sixtofour is not None:
            return is_public(address.sixtofour)
        if address.teredo is not None:
            return all(is_public(part) for part in address.teredo)
        if address in NAT64:
            return is_public(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return address.is_global and not address.is_multicast and not address.is_reserved


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    """The operator's openings (SNGIN_EGRESS_ALLOW) on top of 'public addresses only'."""

    networks: tuple[Network, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        networks, hosts = [], set()
        for entry in entries:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(entry.lower().rstrip("."))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def lists(self, host: str, address: Address) -> bool:
        """Host names match exactly; an entry with a leading dot also matches subdomains."""
        name = host.lower().rstrip(".")
        if name in self.hosts or any(h.startswith(".") and name.endswith(h) for h in self.hosts):
            return True
        return any(address in network for network in self.networks)

    def allows(self, host: str, address: Address) -> bool:
        return self.lists(host, address) or is_public(address)


@dataclass(frozen=True, slots=True)
class TenantEgress:
    """A tenant's own rule (_sngin.json `egress`): it can only narrow the operator's policy."""

    policy: EgressPolicy
    deny_public: bool = False

    def allows(self, host: str, address: Address) -> bool:
        return self.policy.lists(host, address) if self.deny_public else True


def refusal(
    host: str,
    address: Address,
    policy: EgressPolicy,
    tenant: TenantEgress | None,
) -> str | None:
    """Why a destination is refused, naming the rule that refused it (the operator's or the
    site's own), or None. The operator's policy always applies; a site's rule only narrows it."""
    if not policy.allows(host, address):
        return (
            f"the destination {host} ({address}) is not allowed: the server's egress guard"
            " refuses private and local addresses unless the operator lists them in"
            " SNGIN_EGRESS_ALLOW"
        )
    if tenant is not None and not tenant.allows(host, address):
        return (
            f"the destination {host} ({address}) is not allowed by this site's own rule:"
            ' "egress" in its _sngin.json'
        )
    return None
