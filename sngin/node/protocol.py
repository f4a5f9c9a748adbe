"""Messages between a node's supervising parent and its server processes (`--processes N`):
msgspec structs, length-prefixed msgpack frames over a socket pair.

Child to parent: Hello, Ready, Event, Take, Gather, Reported, OpenTail, Watch, Line.
Parent to child: Event, Taken, Report, Gathered, TailAnswer, Watched, Line.
"""

from __future__ import annotations

import struct
from typing import Final

import msgspec
import trio

HEADER = struct.Struct(">I")
MAX_FRAME_BYTES: Final = 64 * 1024 * 1024  # a statistics report with every tenant's row


class Hello(msgspec.Struct, tag=True):
    """The first frame of a process: which slot it serves."""

    index: int
    pid: int


class Ready(msgspec.Struct, tag=True):
    """The process listens and serves."""

    binds: list[str]


class Event(msgspec.Struct, tag=True):
    """A cluster-bus event (purge, quarantine, lift, flush), with the same fields as on Redis."""

    fields: dict[str, str]


class Take(msgspec.Struct, tag=True):
    """Take a token from a tenant's bucket, which the parent holds for the whole node."""

    id: int
    tenant: str
    rps: float


class Taken(msgspec.Struct, tag=True):
    id: int
    wait: float | None  # None: admitted; else the seconds to wait


class Gather(msgspec.Struct, tag=True):
    """Ask every process for a report (`stats`, or `gauges`: refresh the metrics' gauges)."""

    id: int
    what: str


class Report(msgspec.Struct, tag=True):
    id: int
    what: str


class Reported(msgspec.Struct, tag=True):
    id: int
    body: bytes  # JSON


class ProcessRow(msgspec.Struct):
    index: int
    pid: int
    restarts: int
    started: float  # wall-clock time the process was started
    body: bytes | None = None  # its report (JSON); None if it did not answer in time
    error: str | None = None


class Gathered(msgspec.Struct, tag=True):
    id: int
    rows: list[ProcessRow]


class Watch(msgspec.Struct, tag=True):
    """A live tail of `tenant` opened (or, watching False, closed) in this process."""

    tenant: str
    watching: bool


class OpenTail(msgspec.Struct, tag=True):
    """May a live tail of `tenant` open here? The parent counts the node's tails: granted, it
    counts this one at once (a later Watch(tenant, False) closes it)."""

    id: int
    tenant: str
    per_tenant: int
    total: int


class TailAnswer(msgspec.Struct, tag=True):
    id: int
    refusal: str | None  # None: granted; "tenant" or "node": which limit is reached


class Watched(msgspec.Struct, tag=True):
    """The tenants tailed in other processes: this process sends their lines to the parent."""

    tenants: list[str]


class Line(msgspec.Struct, tag=True):
    tenant: str
    line: str


Message = (
    Hello
    | Ready
    | Event
    | Take
    | Taken
    | Gather
    | Report
    | Reported
    | Gathered
    | OpenTail
    | TailAnswer
    | Watch
    | Watched
    | Line
)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode_message(message: Message) -> bytes:
    body = _encoder.encode(message)
    return HEADER.pack(len(body)) + body


class FrameReader:
    """Reads whole messages from a stream; None at the end of the stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def receive(self) -> Message | None:
        while True:
            if len(self._buffer) >= HEADER.size:
                (length,) = HEADER.unpack_from(self._buffer)
                if length > MAX_FRAME_BYTES:
                    raise ValueError(f"a frame of {length} bytes between server processes")
                end = HEADER.size + length
                if len(self._buffer) >= end:
                    frame = bytes(self._buffer[HEADER.size : end])
                    del self._buffer[:end]
                    message: Message = _decoder.decode(frame)
                    return message
            chunk = await self._stream.receive_some(256 * 1024)
            if not chunk:
                return None
            self._buffer += chunk


MAX_QUEUED_LINE_BYTES: Final = 4 * 1024 * 1024  # tail lines waiting to be sent; past it, dropped


class FrameWriter:
    """Sends messages in order from one task (run()); send_soon() never waits, so sync code
    (a log handler, a quarantine callback) can send. Tail lines are dropped past a bound; every
    other message is kept."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._outbox: list[bytes] = []
        self._queued_lines = 0
        self._wake = trio.Event()
        self.dropped_lines = 0

    def send_soon(self, message: Message) -> None:
        frame = encode_message(message)
        if isinstance(message, Line):
            if self._queued_lines + len(frame) > MAX_QUEUED_LINE_BYTES:
                self.dropped_lines += 1
                return
            self._queued_lines += len(frame)
        self._outbox.append(frame)
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            frames, self._outbox = self._outbox, []
            self._queued_lines = 0
            if frames:
                await self._stream.send_all(b"".join(frames))
