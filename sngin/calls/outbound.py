"""http.request on behalf of scripts: httpx, with an egress guard checked at connect time.

The guard sits in httpcore's network backend: it resolves the host itself, refuses the connection
if any address is loopback, private, link-local (the cloud metadata address included), CGNAT,
multicast, unspecified or reserved (IPv4-mapped, 6to4, Teredo and NAT64 spellings too) unless the
operator allowed it, and then connects to exactly the addresses it checked, so a DNS answer that
changes between check and connect (rebinding) cannot slip through. Every redirect hop opens its
connection through the same guard.
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, cast

import httpcore
import httpx
import trio

from sandbox.protocol import HttpCall, HttpResult
from sngin.bodies.http_body import ACCEPT_ENCODING, BodyBudgetExceeded, BodyCost, read_capped
from sngin.config import OutboundSettings
from sngin.tenants.egress import EgressPolicy, TenantEgress, refusal
from sngin.tenants.shares import TenantShares

if TYPE_CHECKING:
    from sngin.bodies.budgets import Lease

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S: Final = 10.0
MAX_RESPONSE_BYTES: Final = 10 * 1024 * 1024
MAX_REDIRECTS: Final = 5
# Connection pools per client: one per this many connections allowed, up to MAX_SHARDS.
CONNECTIONS_PER_SHARD: Final = 16
MAX_SHARDS: Final = 64
KEEPALIVE_PER_SHARD: Final = 20
Resolver = Callable[[str, int], Awaitable[list[str]]]


class EgressRefused(httpcore.ConnectError):
    """The guard refused a destination."""


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the egress guard in connect_tcp (httpcore's interface
    passes timeouts as arguments, hence the ASYNC109 exemptions)."""

    def __init__(
        self,
        policy: EgressPolicy,
        resolver: Resolver = system_resolver,
        tenant: TenantEgress | None = None,
    ) -> None:
        self._policy = policy
        self._tenant = tenant
        self._resolver = resolver
        self._inner = httpcore.TrioBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            with trio.fail_after(timeout if timeout is not None else DEFAULT_TIMEOUT_S):
                addresses = await self._resolver(host, port)
        except (OSError, UnicodeError, ValueError, trio.TooSlowError) as exc:
            # UnicodeError: the name is not valid IDNA ('a..com', a 64-character label).
            raise httpcore.ConnectError(f"cannot resolve {host}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"cannot resolve {host}")
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            refused = refusal(host, address, self._policy, self._tenant)
            if refused is not None:
                raise EgressRefused(refused)
        failure: Exception | None = None
        for text in addresses:
            try:
                return await self._inner.connect_tcp(
                    text, port, timeout, local_address, socket_options
                )
            except httpcore.ConnectError as exc:
                failure = exc
        assert failure is not None
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise EgressRefused("unix sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


def guarded_client(
    policy: EgressPolicy,
    *,
    resolver: Resolver = system_resolver,
    ssl_context: ssl.SSLContext | None = None,
    tenant: TenantEgress | None = None,
    max_connections: int = 100,
) -> httpx.AsyncClient:
    context = ssl_context or ssl.create_default_context()
    shards = max(1, min(MAX_SHARDS, max_connections // CONNECTIONS_PER_SHARD))
    per_shard = max_connections // shards  # never more connections in all than allowed
    transports = []
    for _ in range(shards):
        transport = httpx.AsyncHTTPTransport(verify=context, retries=0)
        # httpx has no public way to pass a network backend; give its transport a pool built
        # the way httpx builds it, with the guarded backend.
        transport._pool = httpcore.AsyncConnectionPool(
            ssl_context=context,
            max_connections=per_shard,
            max_keepalive_connections=min(KEEPALIVE_PER_SHARD, per_shard),
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy, resolver, tenant),
        )
        transports.append(transport)
    return httpx.AsyncClient(
        transport=transports[0] if shards == 1 else ShardedTransport(transports),
        trust_env=False,  # proxy variables must not route around the guard
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        timeout=DEFAULT_TIMEOUT_S,
        headers={"Accept-Encoding": ACCEPT_ENCODING},
    )


class ShardedTransport(httpx.AsyncBaseTransport):
    """Requests spread round robin over several connection pools. httpcore's pool goes over
    every connection it holds (polling each idle one) for each request and each response's
    end: with a thousand requests in flight one pool was the largest share of the server's
    CPU (bench/parked_bench.py)."""

    def __init__(self, transports: list[httpx.AsyncHTTPTransport]) -> None:
        self._transports = transports
        self._next = itertools.cycle(transports)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await next(self._next).handle_async_request(request)

    async def aclose(self) -> None:
        for transport in self._transports:
            await transport.aclose()


class Outbound:
    """Makes scripts' HTTP requests. Tenants with their own egress rule get their own client,
    so a pooled connection opened under one rule is never reused under another."""

    MAX_TENANT_CLIENTS: Final = 256

    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        policy: EgressPolicy | None = None,
        resolver: Resolver = system_resolver,
        ssl_context: ssl.SSLContext | None = None,
        settings: OutboundSettings | None = None,
    ) -> None:
        self._client = client
        self._settings = settings or OutboundSettings()
        self.shares = TenantShares(self._settings.per_tenant)
        self._policy = policy or EgressPolicy()
        self._resolver = resolver
        self._ssl_context = ssl_context
        self._tenant_clients: OrderedDict[TenantEgress, httpx.AsyncClient] = OrderedDict()

    async def client_for(self, egress: TenantEgress | None) -> httpx.AsyncClient:
        if egress is None:
            return self._client
        client = self._tenant_clients.get(egress)
        if client is not None:
            self._tenant_clients.move_to_end(egress)
            return client
        if len(self._tenant_clients) >= self.MAX_TENANT_CLIENTS:
            # The least recently used rule's client goes, connections and all.
            _, oldest = self._tenant_clients.popitem(last=False)
            await oldest.aclose()
        client = self._tenant_clients[egress] = guarded_client(
            self._policy,
            resolver=self._resolver,
            ssl_context=self._ssl_context,
            tenant=egress,
            max_connections=self.shares.per_tenant,  # its calls never hold more
        )
        return client

    async def aclose(self) -> None:
        for client in self._tenant_clients.values():
            await client.aclose()

    async def fetch(
        self,
        call: HttpCall,
        *,
        timeout_s: float,
        request_id: str,
        tenant: str = "",
        egress: TenantEgress | None = None,
        cost: BodyCost | None = None,
        lease: Lease | None = None,
    ) -> HttpResult:
        client = await self.client_for(egress)
        try:
            url = httpx.URL(call.url)
            url.host  # noqa: B018 (decodes an IDNA host: a bad A-label raises here)
        except (httpx.InvalidURL, ValueError) as exc:  # idna's errors are ValueErrors
            return HttpResult(error=f"invalid URL: {str(exc)[:200]}")
        if url.scheme not in ("http", "https") or not url.raw_host:
            return HttpResult(error="only http and https URLs are allowed")
        if timeout_s <= 0:
            return HttpResult(error="no time left for the request")
        headers = [(name.encode("latin-1"), value) for name, value in call.headers]
        headers.append((b"X-Request-Id", request_id.encode()))
        auth = httpx.BasicAuth(*call.auth) if call.auth is not None else None
        request = client.build_request(
            call.method,
            url,
            headers=headers,
            content=call.body,
            timeout=timeout_s,
        )
        holding = False  # one of the tenant's connection slots, once it has one
        try:
            with trio.fail_after(timeout_s):
                async with self.shares.slot(tenant):
                    holding = True
                    response = await client.send(request, auth=auth, stream=True)
                    try:
                        body = await read_capped(
                            response, MAX_RESPONSE_BYTES, cost=cost, lease=lease
                        )
                    finally:
                        await response.aclose()
                if body is None:
                    return HttpResult(error=f"response larger than {MAX_RESPONSE_BYTES} bytes")
        except trio.TooSlowError:
            if not holding:
                share = self.shares.per_tenant
                return HttpResult(
                    error=f"timed out after {timeout_s:.3g} s waiting for a connection: this site"
                    f" already uses its share of {share} outbound connection{'s' * (share != 1)}"
                )
            return HttpResult(error=f"timed out after {timeout_s:.3g} s")
        except BodyBudgetExceeded:
            return HttpResult(
                error="the server is holding as many subrequest bodies as it may"
                " (SNGIN_SUBREQUEST_BODIES_BYTES); try again shortly"
            )
        except httpx.TooManyRedirects:
            return HttpResult(error=f"more than {MAX_REDIRECTS} redirects")
        except httpx.TimeoutException:
            return HttpResult(error=f"timed out after {timeout_s:.3g} s")
        except httpx.HTTPError as exc:
            return HttpResult(error=describe(exc))
        return HttpResult(
            status=response.status_code,
            headers=[(name.decode("latin-1"), value) for name, value in response.headers.raw],
            # The bytearray read_capped filled, not a copy: msgspec frames it as bytes.
            body=cast("bytes", body),
        )


def describe(exc: httpx.HTTPError) -> str:
    """A short message for the script: the guard's refusal, or the first cause with text."""
    text = ""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, EgressRefused):
            return str(cause)
        text = text or str(cause)
        cause = cause.__cause__ or cause.__context__
    return f"request failed: {text or type(exc).__name__}"[:300]


@asynccontextmanager
async def open_outbound(
    policy: EgressPolicy,
    *,
    resolver: Resolver = system_resolver,
    ssl_context: ssl.SSLContext | None = None,
    settings: OutboundSettings | None = None,
) -> AsyncIterator[Outbound]:
    settings = settings or OutboundSettings()
    async with guarded_client(
        policy, resolver=resolver, ssl_context=ssl_context, max_connections=settings.connections
    ) as client:
        outbound = Outbound(
            client, policy=policy, resolver=resolver, ssl_context=ssl_context, settings=settings
        )
        try:
            yield outbound
        finally:
            await outbound.aclose()
