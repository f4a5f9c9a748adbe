"""Live per-tenant log tails (`/__sngin/logs`): the hub of subscribers, script lines written to
the server log and fed to the tails. With several server processes, lines of a tenant tailed
in another process are forwarded there (sngin.node.link)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

    from sandbox.protocol import Request

TAIL_BUFFER: Final = 1000  # lines a slow subscriber may fall behind before it loses some
TAIL_BUFFER_BYTES: Final = 1024 * 1024  # ... and characters of them


@dataclass(slots=True)
class Subscriber:
    send: trio.MemorySendChannel[str]
    dropped: int = 0
    queued_bytes: int = 0  # published and not yet taken (taken() gives them back)

    def taken(self, line: str) -> None:
        self.queued_bytes -= len(line)


@dataclass(slots=True)
class LogHub:
    """Live tails: each subscriber gets a bounded channel; publishing never waits. With several
    server processes (`--processes`), a line of a tenant tailed in another process is also
    handed to `forward`, and `on_watch` hears of tails opened and closed here."""

    subscribers: dict[str, list[Subscriber]] = field(default_factory=dict)
    closed: bool = False
    remote: frozenset[str] = frozenset()  # tenants tailed in the node's other processes
    watched: set[str] = field(default_factory=set)  # tailed here or there: checked per request
    forward: Callable[[str, str], None] | None = None
    on_watch: Callable[[str, bool], None] | None = None

    def subscribe(
        self, tenant: str, *, counted: bool = False
    ) -> tuple[Subscriber, trio.MemoryReceiveChannel[str]]:
        """A new tail (`counted`: the node's parent counted it already, see TailGate)."""
        send, receive = trio.open_memory_channel[str](TAIL_BUFFER)
        subscriber = Subscriber(send)
        if self.closed:
            send.close()  # shutting down: the tail ends at once
            if counted and self.on_watch is not None:
                self.on_watch(tenant, False)
        else:
            self.subscribers.setdefault(tenant, []).append(subscriber)
            self.watched.add(tenant)
            if self.on_watch is not None and not counted:
                self.on_watch(tenant, True)
        return subscriber, receive

    def refusal(self, tenant: str, per_tenant: int, total: int) -> str | None:
        """Which cap one more tail here would pass ("tenant", "node"), or None."""
        if len(self.subscribers.get(tenant, ())) >= per_tenant:
            return "tenant"
        if sum(len(s) for s in self.subscribers.values()) >= total:
            return "node"
        return None

    def close_all(self) -> None:
        """End every tail (at shutdown: an open follower must not hold the server up)."""
        self.closed = True
        for tenant, subscribers in self.subscribers.items():
            for subscriber in subscribers:
                subscriber.send.close()
                if self.on_watch is not None:
                    self.on_watch(tenant, False)
        self.subscribers.clear()
        self.watched = set(self.remote)

    def unsubscribe(self, tenant: str, subscriber: Subscriber) -> None:
        subscribers = self.subscribers.get(tenant, [])
        if subscriber in subscribers:
            subscribers.remove(subscriber)
            if self.on_watch is not None:
                self.on_watch(tenant, False)
        if not subscribers:
            self.subscribers.pop(tenant, None)
            if tenant not in self.remote:
                self.watched.discard(tenant)
        subscriber.send.close()

    def tailed_elsewhere(self, tenants: frozenset[str]) -> None:
        self.remote = tenants
        self.watched = set(self.subscribers) | tenants

    def publish(self, tenant: str, line: str) -> None:
        if tenant in self.remote and self.forward is not None:
            self.forward(tenant, line)
        self.publish_here(tenant, line)

    def publish_here(self, tenant: str, line: str) -> None:
        for subscriber in self.subscribers.get(tenant, ()):
            if subscriber.queued_bytes + len(line) > TAIL_BUFFER_BYTES:
                subscriber.dropped += 1  # bounded in bytes: lines can be 64 KiB each
                continue
            try:
                subscriber.send.send_nowait(line)
                subscriber.queued_bytes += len(line)
            except trio.WouldBlock:
                subscriber.dropped += 1  # a slow subscriber loses lines, scripts never wait
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass


script_log = logging.getLogger("sngin.script")
HEAD_LINES: Final = 5  # of a run's log kept for its record (sngin.cron)
HEAD_LINE_BYTES: Final = 200
KEPT_LINES: Final = 100  # raw lines a run keeps when asked (a replay bundle's log)


def head_text(
    line: bytes, redact: Callable[[str], str] | None, limit: int = HEAD_LINE_BYTES
) -> str:
    """A kept raw line as a record shows it: text, redacted, cut."""
    text = line[: limit * 4].decode("utf-8", "replace")
    return (redact(text) if redact else text)[:limit]


def forward_script_line(
    tenant: str,
    request: Request,
    line: bytes,
    redact: Callable[[str], str] | None,
    budget: int,
) -> int | None:
    """One print/log line of a script, as it is written: one JSON line in the server log,
    tagged so a tail can follow one tenant or request (the tenant's secrets redacted). It is
    written only if it fits in `budget` bytes as written (bytes that are not UTF-8 become
    U+FFFD, three bytes each); returns the bytes it took, or None if it was dropped."""
    text = line.decode("utf-8", "replace")
    if redact is not None:
        text = redact(text)
    record = {"tenant": tenant, "request": request.id, "path": request.path, "line": text}
    encoded = json.dumps(record, ensure_ascii=False)
    size = len(encoded.encode("utf-8", "surrogatepass"))
    if size > budget:
        return None
    # The tenant and fields travel on the record too: the tail and the JSON log format use
    # them as they are, rather than parsing the line again.
    script_log.info("%s", encoded, extra={"tenant": tenant, "fields": record})
    return size


class ScriptLines:
    """One request's print/log lines on their way to the log: its secrets redacted, at most
    `budget` bytes as written (the worker caps the lines' raw bytes; this caps what is written,
    escaped and with invalid UTF-8 replaced, which is what the documented 64 KiB is about)."""

    __slots__ = ("_head", "_redact", "_request", "_tenant", "budget", "dropped")

    def __init__(
        self,
        tenant: str,
        request: Request,
        redact: Callable[[str], str] | None,
        budget: int,
        *,
        head: list[bytes] | None = None,
    ) -> None:
        self._tenant = tenant
        self._request = request
        self._redact = redact
        self._head = head  # its first KEPT_LINES lines, as written, when a list
        self.budget = budget
        self.dropped = 0  # lines past the budget, dropped here rather than in the worker

    def write(self, line: bytes) -> None:
        written = forward_script_line(self._tenant, self._request, line, self._redact, self.budget)
        if written is None:
            self.dropped += 1
            return
        self.budget -= written
        head = self._head
        if head is not None and len(head) < KEPT_LINES:
            head.append(line)  # as written: made text only if a record keeps it


class TailHandler(logging.Handler):
    """Feeds script lines (sngin.script) to the tails."""

    def __init__(self, hub: LogHub) -> None:
        super().__init__()
        self.hub = hub

    def emit(self, record: logging.LogRecord) -> None:
        if not self.hub.watched:
            return
        # The tenant travels on the record (`extra`): the JSON line is not parsed again.
        tenant = getattr(record, "tenant", None)
        if isinstance(tenant, str):
            self.hub.publish(tenant, record.getMessage())
