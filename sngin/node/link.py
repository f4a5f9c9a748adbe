"""A server process's side of `--processes N`: its link to the node's supervising parent
(sngin.node.hub). Without Redis it is the cluster bus of the node's processes (purges and
quarantines go to the others); it takes rate-limit tokens from the node's buckets; it answers
the parent's report requests and gathers every process's; it forwards tail lines.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

from sngin.node.hub import GATHER_TIMEOUT_S
from sngin.node.protocol import (
    Event,
    FrameReader,
    FrameWriter,
    Gather,
    Gathered,
    Hello,
    Line,
    OpenTail,
    ProcessRow,
    Ready,
    Report,
    Reported,
    TailAnswer,
    Take,
    Taken,
    Watch,
    Watched,
)
from sngin.tenants.admission import RateLimiter

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sngin.node.cluster_bus import Purge
    from sngin.observe.live_tails import LogHub

log = logging.getLogger(__name__)

TAKE_TIMEOUT_S: Final = 0.25  # the parent answers in microseconds; past this, a local share


@dataclass(frozen=True, slots=True)
class ProcessRole:
    """Which of the node's processes this one is, and the descriptors its parent passed it."""

    index: int
    count: int
    hub_fd: int
    listen_fd: int
    admin_fd: int | None = None


@dataclass(slots=True)
class Waiting:
    done: trio.Event = field(default_factory=trio.Event)
    answer: Any = None


@dataclass(frozen=True, slots=True)
class LinkStatistics:
    node: str
    connected: bool
    published: int
    received: int
    tail_lines_dropped: int


class ProcessLink:
    def __init__(self, role: ProcessRole, stream: trio.abc.Stream) -> None:
        self.role = role
        self.node = f"process-{role.index}-{secrets.token_hex(4)}"  # the origin of its events
        self._reader = FrameReader(stream)
        self._writer = FrameWriter(stream)
        self._waiting: dict[int, Waiting] = {}
        self._next_id = 0
        self._local_rates = RateLimiter()
        self.connected = True
        # The parent is gone (its end of the socket closed, however it ended): this process
        # stops too. (Not PR_SET_PDEATHSIG: it fires when the parent's *thread* that started
        # the process ends, and trio starts processes from a worker thread.)
        self.lost = trio.Event()
        self.last_error: str | None = None
        self.published = self.received = 0
        self.nodes_seen = 1
        # Set by the server once its parts exist:
        self.on_event: Callable[[dict[str, str]], Awaitable[Any]] | None = None
        self.on_report: Callable[[str], Awaitable[bytes]] | None = None
        self._hub: LogHub | None = None
        self._writer.send_soon(Hello(role.index, os.getpid()))  # first, whatever is sent next

    @classmethod
    def from_role(cls, role: ProcessRole) -> ProcessLink:
        import socket

        sock = socket.socket(fileno=role.hub_fd)
        return cls(role, trio.SocketStream(trio.socket.from_stdlib_socket(sock)))

    # --- the cluster bus of the node's processes --------------------------------------------

    def publish(self, purge: Purge) -> None:
        self.send_soon(purge.fields(self.node))

    def send_soon(
        self, fields: dict[str, str], *, key: tuple[str, int | None] | None = None
    ) -> None:
        """An event for the other processes (`key` is Redis's; the parent keeps quarantines
        from the event itself)."""
        self._writer.send_soon(Event(fields))
        self.published += 1

    def unreachable(self) -> None:
        return None  # a process whose parent is gone stops: readiness has nothing to add

    async def cluster_view(self) -> None:
        return None  # the node's registry is the cluster bus's, in the parent

    def statistics(self) -> LinkStatistics:
        return LinkStatistics(
            node=self.node,
            connected=self.connected,
            published=self.published,
            received=self.received,
            tail_lines_dropped=self._writer.dropped_lines,
        )

    # --- rate limits held for the node ------------------------------------------------------

    async def admit(self, tenant: str, rps: float) -> float | None:
        """None if the request may run; else the seconds to wait (the node's bucket, in the
        parent; this process's share of the rate if the parent does not answer)."""
        if self.connected:
            with trio.move_on_after(TAKE_TIMEOUT_S):
                answer: float | None = await self._ask(lambda i: Take(i, tenant, rps))
                return answer
        return self._local_rates.admit(tenant, rps / self.role.count)

    # --- reports ----------------------------------------------------------------------------

    async def gather(self, what: str) -> list[ProcessRow]:
        """Every process's report (this one's included), or why there is none."""
        with trio.fail_after(GATHER_TIMEOUT_S + 1):
            rows: list[ProcessRow] | None = await self._ask(lambda i: Gather(i, what))
        return rows or []

    async def open_tail(self, tenant: str, per_tenant: int, total: int) -> str | None:
        """Whether a live tail may open here, the node's tails counted by the parent: None
        (granted and counted), or the limit it would pass ("tenant", "node"); "node" too when
        the parent does not answer in time (it may count a grant this process never uses)."""
        with trio.move_on_after(TAKE_TIMEOUT_S):
            answer: str | None = await self._ask(lambda i: OpenTail(i, tenant, per_tenant, total))
            return answer
        return "node"

    async def _ask(self, make: Callable[[int], Take | Gather | OpenTail]) -> Any:
        self._next_id += 1
        request_id = self._next_id
        waiting = self._waiting[request_id] = Waiting()
        try:
            self._writer.send_soon(make(request_id))
            await waiting.done.wait()
            return waiting.answer
        finally:
            del self._waiting[request_id]

    async def _report(self, request: Report) -> None:
        body = b"{}"
        if self.on_report is not None:
            try:
                body = await self.on_report(request.what)
            except Exception:
                log.exception("report %r failed", request.what)
        self._writer.send_soon(Reported(request.id, body))

    # --- live tails ------------------------------------------------------------------------

    def attach_tails(self, hub: LogHub) -> None:
        self._hub = hub
        hub.forward = lambda tenant, line: self._writer.send_soon(Line(tenant, line))
        hub.on_watch = lambda tenant, on: self._writer.send_soon(Watch(tenant, on))

    # --- the connection ---------------------------------------------------------------------

    def ready(self, binds: list[str]) -> None:
        self._writer.send_soon(Ready(binds))

    async def run(self) -> None:
        """Read the parent's messages for the life of the process."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._writer.run)
            try:
                while (message := await self._reader.receive()) is not None:
                    await self._handle(message, nursery)
                reason = "the parent closed the connection"
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
                reason = str(exc) or type(exc).__name__
            self.connected = False
            self.last_error = reason
            log.error("lost the node's parent process (%s): stopping", reason)
            for waiting in self._waiting.values():
                waiting.done.set()  # answer None: admitted / no rows
            self.lost.set()
            nursery.cancel_scope.cancel()

    async def _handle(self, message: object, nursery: trio.Nursery) -> None:
        if isinstance(message, Taken | Gathered | TailAnswer):
            waiting = self._waiting.get(message.id)
            if waiting is not None:
                if isinstance(message, Taken):
                    waiting.answer = message.wait
                elif isinstance(message, Gathered):
                    waiting.answer = message.rows
                else:
                    waiting.answer = message.refusal
                waiting.done.set()
        elif isinstance(message, Event):
            self.received += 1
            if self.on_event is not None:
                await self.on_event(message.fields)
        elif isinstance(message, Line):
            if self._hub is not None:
                self._hub.publish_here(message.tenant, message.line)
        elif isinstance(message, Watched):
            if self._hub is not None:
                self._hub.tailed_elsewhere(frozenset(message.tenants))
        elif isinstance(message, Report):
            nursery.start_soon(self._report, message)
