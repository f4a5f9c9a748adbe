"""The parent's side of `--processes N`: it carries what the server processes of one node share
without Redis. Events (purges, quarantines) from one process go to the others; the parent keeps
the quarantines in force for a process that starts later. Rate-limit buckets live here, so a
tenant's limit holds for the node. Reports (statistics, metric gauges) are gathered from every
process. Live tails: a process sends a tenant's lines only while another process tails it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from sngin.node.cluster import quarantine_seconds
from sngin.node.protocol import (
    Event,
    FrameReader,
    FrameWriter,
    Gather,
    Gathered,
    Hello,
    Line,
    Message,
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
    from collections.abc import Callable

log = logging.getLogger(__name__)

GATHER_TIMEOUT_S: Final = 2.0  # a process that has not answered by then is reported as silent


@dataclass(slots=True)
class Slot:
    """One process slot: the process serving it now, and how often it was started again."""

    index: int
    pid: int = 0
    restarts: int = 0
    started: float = 0.0  # wall-clock time
    writer: FrameWriter | None = None  # set while its process is connected
    ready: trio.Event = field(default_factory=trio.Event)
    tails: dict[str, int] = field(default_factory=dict)  # tenant -> live tails open in it
    told: frozenset[str] = frozenset()  # the tenants it was last told others tail


@dataclass(slots=True)
class Gathering:
    rows: dict[int, bytes] = field(default_factory=dict)
    expected: set[int] = field(default_factory=set)
    done: trio.Event = field(default_factory=trio.Event)


class Hub:
    def __init__(self, count: int) -> None:
        self.slots = [Slot(index) for index in range(count)]
        self.rates = RateLimiter()
        self._quarantines: dict[str, float] = {}  # tenant -> trio time it ends
        self._gatherings: dict[int, Gathering] = {}
        self._next_id = 0
        self.on_ready: Callable[[Slot, list[str]], None] = lambda slot, binds: None

    async def serve(self, slot: Slot, stream: trio.abc.Stream) -> None:
        """Carry one process's messages until its end of the socket closes."""
        reader = FrameReader(stream)
        writer = FrameWriter(stream)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer.run)
            try:
                hello = await reader.receive()
                if not isinstance(hello, Hello) or hello.index != slot.index:
                    log.error("process %d: unexpected first message %r", slot.index, hello)
                    return
                slot.writer = writer
                self._welcome(writer)
                while (message := await reader.receive()) is not None:
                    self._handle(slot, message, nursery)
            except (trio.BrokenResourceError, trio.ClosedResourceError, ValueError) as exc:
                log.warning("process %d: connection to it lost: %s", slot.index, exc)
            finally:
                slot.writer = None
                slot.tails.clear()
                slot.told = frozenset()
                slot.ready = trio.Event()
                self._tell_tails()
                nursery.cancel_scope.cancel()

    def _welcome(self, writer: FrameWriter) -> None:
        """A process that starts late learns the quarantines in force and the tails open."""
        now = trio.current_time()
        for tenant, until in list(self._quarantines.items()):
            if until <= now:
                del self._quarantines[tenant]
                continue
            seconds = f"{until - now:g}"
            writer.send_soon(
                Event({"origin": "", "kind": "quarantine", "tenant": tenant, "seconds": seconds})
            )
        self._tell_tails()

    def _handle(self, slot: Slot, message: Message, nursery: trio.Nursery) -> None:
        if isinstance(message, Take):
            assert slot.writer is not None
            slot.writer.send_soon(Taken(message.id, self.rates.admit(message.tenant, message.rps)))
        elif isinstance(message, Event):
            self._remember(message.fields)
            self._send_others(slot, message)
        elif isinstance(message, Line):
            for other in self.slots:
                if other is not slot and other.writer is not None and message.tenant in other.tails:
                    other.writer.send_soon(message)
        elif isinstance(message, OpenTail):
            assert slot.writer is not None
            slot.writer.send_soon(TailAnswer(message.id, self._open_tail(slot, message)))
        elif isinstance(message, Watch):
            count = slot.tails.get(message.tenant, 0) + (1 if message.watching else -1)
            if count > 0:
                slot.tails[message.tenant] = count
            else:
                slot.tails.pop(message.tenant, None)
            self._tell_tails()
        elif isinstance(message, Gather):
            nursery.start_soon(self._gather, slot, message)
        elif isinstance(message, Reported):
            gathering = self._gatherings.get(message.id)
            if gathering is not None:
                gathering.rows[slot.index] = message.body
                if gathering.expected <= gathering.rows.keys():
                    gathering.done.set()
        elif isinstance(message, Ready):
            slot.ready.set()
            self.on_ready(slot, message.binds)

    def _remember(self, fields: dict[str, str]) -> None:
        kind, tenant = fields.get("kind"), fields.get("tenant", "")
        if kind == "quarantine":
            seconds = quarantine_seconds(fields)
            if seconds is not None:
                self._quarantines[tenant] = trio.current_time() + seconds
        elif kind == "lift":
            self._quarantines.pop(tenant, None)

    def _send_others(self, origin: Slot, message: Message) -> None:
        for other in self.slots:
            if other is not origin and other.writer is not None:
                other.writer.send_soon(message)

    def _open_tail(self, slot: Slot, ask: OpenTail) -> str | None:
        """Count a new tail of the node's, or say which limit it would pass."""
        open_for_tenant = sum(other.tails.get(ask.tenant, 0) for other in self.slots)
        if open_for_tenant >= ask.per_tenant:
            return "tenant"
        if sum(sum(other.tails.values()) for other in self.slots) >= ask.total:
            return "node"
        slot.tails[ask.tenant] = slot.tails.get(ask.tenant, 0) + 1
        self._tell_tails()
        return None

    def _tell_tails(self) -> None:
        """Tell each process which tenants the other processes tail (when that changed)."""
        for slot in self.slots:
            if slot.writer is None:
                continue
            others = frozenset(
                tenant for other in self.slots if other is not slot for tenant in other.tails
            )
            if others != slot.told:
                slot.told = others
                slot.writer.send_soon(Watched(sorted(others)))

    async def _gather(self, asker: Slot, request: Gather) -> None:
        self._next_id += 1
        gather_id = self._next_id
        gathering = self._gatherings[gather_id] = Gathering()
        try:
            for slot in self.slots:
                if slot.writer is not None and slot.ready.is_set():
                    gathering.expected.add(slot.index)
                    slot.writer.send_soon(Report(gather_id, request.what))
            if gathering.expected:
                with trio.move_on_after(GATHER_TIMEOUT_S):
                    await gathering.done.wait()
        finally:
            del self._gatherings[gather_id]
        rows = [self._row(slot, gathering) for slot in self.slots]
        if asker.writer is not None:
            asker.writer.send_soon(Gathered(request.id, rows))

    @staticmethod
    def _row(slot: Slot, gathering: Gathering) -> ProcessRow:
        row = ProcessRow(slot.index, slot.pid, slot.restarts, slot.started)
        body = gathering.rows.get(slot.index)
        if body is not None:
            row.body = body
        elif slot.writer is None or not slot.ready.is_set():
            row.error = "not running (starting again)"
        else:
            row.error = f"no answer within {GATHER_TIMEOUT_S:g} s"
        return row

    def started(self, slot: Slot, pid: int) -> None:
        if slot.started:
            slot.restarts += 1
        slot.pid = pid
        slot.started = time.time()
