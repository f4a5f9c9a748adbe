"""The cluster bus: events every node must see (purges, quarantines) are applied here and
written to a Redis Stream that every node follows (entries are kept, so a node that was away
reads what it missed); beside it, the node registry (a heartbeat key per node).

A node that cannot be sure it saw every entry flushes its whole code cache instead of keeping
code that may be stale: after losing its connection, when the stream was trimmed past its
position (`max-deleted-entry-id`), or when the stream went back (Redis restarted without it). A
purge that cannot be written (Redis down) waits in an outbox and is written on reconnection.
Every entry only ever purges, so applying one twice, or late, is harmless.
"""

from __future__ import annotations

import logging
import secrets
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import coredis
import coredis.exceptions
import msgspec
import trio

from sngin.backoff import Backoff

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

STREAM: Final = "sngin:cluster"
MAX_ENTRIES: Final = 10_000  # kept in the stream (approximately): a node away longer flushes
READ_BLOCK_MS: Final = 1000
NODE_KEY: Final = "sngin:node:"  # the node registry: one key per live node, with a TTL
HEARTBEAT_S: Final = 3.0
NODE_TTL_MS: Final = 10_000
PUBLISH_TIMEOUT_S: Final = 1.0
CONNECT_TIMEOUT_S: Final = 2.0
RETRY_S: Final = 0.2
MAX_RETRY_S: Final = 5.0
OUTBOX_MAX: Final = 10_000  # past it, the queued purges become one "flush everything"
PURGE_KINDS: Final = frozenset({"path", "modules"})
FAILURES = (coredis.exceptions.RedisError, OSError, trio.TooSlowError)


@dataclass(frozen=True, slots=True)
class Purge:
    """One purge as it travels: a tenant's script or folder, or modules by key prefix."""

    tenant: str = ""
    folder: str = ""
    recursive: bool = False
    modules_prefix: str | None = None

    def fields(self, origin: str) -> dict[str, str]:
        return {
            "origin": origin,
            "tenant": self.tenant,
            "folder": self.folder,
            "recursive": "1" if self.recursive else "0",
            "modules": self.modules_prefix if self.modules_prefix is not None else "",
            "kind": "modules" if self.modules_prefix is not None else "path",
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> Purge:
        if fields.get("kind") == "modules":
            return cls(modules_prefix=fields.get("modules", ""))
        return cls(
            tenant=fields.get("tenant", ""),
            folder=fields.get("folder", ""),
            recursive=fields.get("recursive") == "1",
        )


def stream_state(info: dict[str, Any]) -> tuple[str, int]:
    """From XINFO STREAM: the last entry ID and how many entries were ever added."""
    return str(info.get("last-generated-id", "0-0")), int(info.get("entries-added", 0))


def stream_id(text: str) -> tuple[int, int]:
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence or 0)


@dataclass(frozen=True, slots=True)
class BusStatistics:
    node: str
    connected: bool
    published: int
    received: int
    flushes: int
    outbox: int
    nodes_seen: int
    last_error: str | None


class ClusterBus:
    """Writes this node's purges to the stream and applies the other nodes' (run() follows the
    stream for the life of the server)."""

    def __init__(
        self,
        url: str,
        apply: Callable[[dict[str, str]], Awaitable[Any]],
        flush: Callable[[], Awaitable[Any]],
        resync: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> None:
        self.url = url
        self.node = secrets.token_hex(8)
        self._apply = apply
        self._flush = flush
        self._resync_state = resync  # reads shared state afresh after a (re)connection
        self._outbox: deque[tuple[dict[str, str], tuple[str, int | None] | None]] = deque()
        self.outbox_max = OUTBOX_MAX
        self._pending = trio.Event()
        self._position: str | None = None  # the last entry seen
        self._added = 0  # the stream's entries-added count that goes with that position
        self.connected = False
        self.published = self.received = self.flushes = 0
        self.nodes_seen = 1  # live nodes in the registry at the last heartbeat
        self.describe: Callable[[], dict[str, object]] = dict  # this node's registry entry
        self.last_error: str | None = None
        self._changed = trio.Event()
        self._scope = trio.CancelScope()
        self._reached = False  # this connection attempt got through

    def stop(self) -> None:
        self._scope.cancel()

    # --- writing ----------------------------------------------------------------------------

    def publish(self, purge: Purge) -> None:
        """Send a purge this node applied (the writer task writes it at once when Redis is
        there, else when it is back)."""
        self.send_soon(purge.fields(self.node))

    def send_soon(
        self, fields: dict[str, str], *, key: tuple[str, int | None] | None = None
    ) -> None:
        """Queue an event for every node; `key`: a key to set for `ms` milliseconds with it (or
        to delete, for None), in the same transaction. Kept until Redis takes it; if Redis stays
        away so long that the purges waiting pass the bound, they are replaced by one event that
        makes every node flush (nothing is dropped unannounced)."""
        if len(self._outbox) >= self.outbox_max:
            kept = deque(event for event in self._outbox if event[0].get("kind") not in PURGE_KINDS)
            kept.append(({"origin": self.node, "kind": "flush"}, None))
            self._outbox = kept
        self._outbox.append((fields, key))
        self._pending.set()

    async def _writer(self, client: Any) -> None:
        while True:
            await self._pending.wait()
            self._pending = trio.Event()
            while self._outbox:
                fields, key = self._outbox[0]
                with trio.fail_after(PUBLISH_TIMEOUT_S):
                    await self._write(client, fields, key)
                self._outbox.popleft()

    async def _write(
        self, client: Any, fields: dict[str, str], key: tuple[str, int | None] | None
    ) -> None:
        async with client.pipeline(transaction=True) as pipe:
            if key is not None:
                name, ms = key
                if ms is None:
                    pipe.delete([name])
                else:
                    pipe.set(name, "1", px=ms)
            pipe.xadd(
                STREAM,
                fields,
                trim_strategy=coredis.PureToken.MAXLEN,
                trim_operator=coredis.PureToken.APPROXIMATELY,
                threshold=MAX_ENTRIES,
            )
        self.published += 1
        self._notify()

    # --- following ----------------------------------------------------------------------------

    async def run(self) -> None:
        with self._scope:
            await self._run()

    async def _run(self) -> None:
        backoff = Backoff(RETRY_S, MAX_RETRY_S)
        while True:
            self._reached = False
            try:
                client = coredis.Redis.from_url(
                    self.url,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    stream_timeout=READ_BLOCK_MS / 1000 + 5,
                    decode_responses=True,
                )
                async with client:
                    await self._follow(client)
            except FAILURES as exc:
                self._lost(exc)
            except BaseExceptionGroup as group:  # coredis's own tasks end with the connection
                failures, others = group.split(FAILURES)
                if others is not None or failures is None:
                    raise
                self._lost(failures.exceptions[0])
            # Back off while Redis stays away; start over after a connection that worked.
            if self._reached:
                backoff.succeeded()
            await trio.sleep(backoff.next_delay())

    async def _follow(self, client: Any) -> None:
        last, added = stream_state(await self._info(client))
        if self._position is None:
            # A fresh node: its cache is empty, nothing to catch up.
            self._position, self._added = last, added
        elif not self.connected:
            # Back after losing Redis: entries may be gone for good (Redis restarted, the
            # stream trimmed), so nothing cached is trusted.
            await self._flush_all("the connection to Redis was lost")
            if stream_id(last) < stream_id(self._position) or added < self._added:
                self._position, self._added = last, added  # a new stream: follow it from here
        await self._resync(client)  # before anyone is told it is connected
        self._reached = True
        self.connected = True
        self.last_error = None
        self._notify()
        async with trio.open_nursery() as nursery:
            self._pending.set()  # write what waited for Redis
            nursery.start_soon(self._writer, client)
            nursery.start_soon(self._heartbeat, client)
            while True:
                answer = await client.xread(
                    {STREAM: self._position}, count=100, block=READ_BLOCK_MS
                )
                for _, entries in (answer or {}).items():
                    for entry in entries:
                        await self._receive(entry.identifier, dict(entry.field_values))
                await self._check_gap(client)

    async def _heartbeat(self, client: Any) -> None:
        """Keep this node's registry entry alive, and count the live ones."""
        while True:
            entry = msgspec.json.encode({"node": self.node, **self.describe()}).decode()
            with trio.fail_after(PUBLISH_TIMEOUT_S):
                await client.set(NODE_KEY + self.node, entry, px=NODE_TTL_MS)
                self.nodes_seen = max(1, len(await self.live_nodes(client)))
            self._notify()
            await trio.sleep(HEARTBEAT_S)

    @staticmethod
    async def live_nodes(client: Any) -> list[dict[str, Any]]:
        keys = [key async for key in client.scan_iter(match=NODE_KEY + "*", count=1000)]
        values = await client.mget(keys) if keys else []
        return [msgspec.json.decode(v) for v in values if v is not None]

    async def cluster_view(self) -> dict[str, Any]:
        try:
            return {"nodes": await self.cluster_nodes()}
        except (OSError, trio.TooSlowError, coredis.exceptions.RedisError) as exc:
            return {"error": f"Redis unreachable: {exc}"}

    async def cluster_nodes(self) -> list[dict[str, Any]]:
        """The registry as Redis has it now (its own connection: an admin request)."""
        client = coredis.Redis.from_url(
            self.url, connect_timeout=CONNECT_TIMEOUT_S, decode_responses=True
        )
        async with client:
            with trio.fail_after(PUBLISH_TIMEOUT_S * 2):
                return sorted(await self.live_nodes(client), key=lambda n: str(n.get("node")))

    async def _resync(self, client: Any) -> None:
        if self._resync_state is not None:
            await self._resync_state(client)

    async def _receive(self, identifier: str, fields: dict[str, str]) -> None:
        self._position = identifier
        self._added += 1
        if fields.get("origin") != self.node:  # this node applied its own already
            await self._apply(fields)
            self.received += 1
        self._notify()

    async def _info(self, client: Any) -> dict[str, Any]:
        """XINFO STREAM; empty when there is no stream (yet, or any more)."""
        try:
            return dict(await client.xinfo_stream(STREAM))
        except coredis.exceptions.ResponseError:
            return {}

    async def _check_gap(self, client: Any) -> None:
        """Flush when entries this node has not read are gone: trimmed away (fewer left after
        its position than were added since), or the stream went back (Redis restarted)."""
        assert self._position is not None
        info = await self._info(client)
        last, added = stream_state(info)
        position = stream_id(self._position)
        if stream_id(last) < position or added < self._added:
            await self._flush_all("the event stream went back (Redis restarted?)")
            self._position, self._added = last, added
            await self._resync(client)
            return
        unread = added - self._added
        if unread <= 0:
            return
        first = info.get("first-entry")
        if first is None:
            present = 0
        elif stream_id(str(first.identifier)) > position:
            present = int(info.get("length", 0))
        else:
            return  # an entry at or before our position is still there: none after it went
        if present < unread:
            await self._flush_all("purges were trimmed from the stream before this node read them")
            self._position, self._added = last, added
            await self._resync(client)

    async def _flush_all(self, why: str) -> None:
        log.warning("flushing the code cache: %s", why)
        await self._flush()
        self.flushes += 1
        self._notify()

    def _lost(self, exc: BaseException) -> None:
        if self.connected:
            log.warning("the cluster bus lost Redis (%s): its events are kept to send later", exc)
        self.connected = False
        self.last_error = str(exc) or type(exc).__name__
        self._notify()

    # --- observing ----------------------------------------------------------------------------

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Until condition() holds (tests and start-up wait on the bus's progress this way)."""
        while not condition():
            await self._changed.wait()

    def unreachable(self) -> str | None:
        """Still ready meanwhile: it serves, and flushes its code cache once Redis is back."""
        return None if self.connected else f"Redis unreachable: {self.last_error}"

    def statistics(self) -> BusStatistics:
        return BusStatistics(
            node=self.node,
            connected=self.connected,
            published=self.published,
            received=self.received,
            flushes=self.flushes,
            outbox=len(self._outbox),
            nodes_seen=self.nodes_seen,
            last_error=self.last_error,
        )
