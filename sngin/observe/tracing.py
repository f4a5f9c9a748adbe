"""Per-request tracing: request ids (kept from a well-formed X-Request-Id, else generated) and
the trace the access log, the metrics and the Server-Timing header report."""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

import trio

from sngin.observe.notes import FetchNote, RunNote

if TYPE_CHECKING:
    from collections.abc import Iterable

REQUEST_ID: Final = re.compile(rb"[A-Za-z0-9._:-]{1,64}\Z")


class RequestIds:
    """A well-formed incoming X-Request-Id is kept (tracing across services); else a new one:
    a random prefix per server and a counter, 32 hex digits like a UUID without a syscall."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._count = itertools.count(1)

    def of(self, candidates: Iterable[bytes]) -> str:
        """The first well-formed of the request's X-Request-Id values, else a new id."""
        for value in candidates:
            if REQUEST_ID.match(value):
                return str(value.decode("ascii"))
        return f"{self._prefix}{next(self._count):016x}"


@dataclass(slots=True)
class RequestTrace:
    """What the access log, the metrics and the response's timing headers report."""

    id: str
    started: float
    tenant: str | None = None
    status: int = 500
    size: int = 0
    cpu_ms: float = 0.0
    decode_ms: float = 0.0  # server CPU inflating the request's subrequest bodies
    storage_ms: float = 0.0  # wall time in storage, lease and cache calls
    error: str | None = None
    fetch: FetchNote = field(default_factory=FetchNote)  # the script's code fetch
    run: RunNote = field(default_factory=RunNote)  # its worker, and a limit kill

    def headers(self) -> list[tuple[bytes, bytes]]:
        wall_ms = (trio.current_time() - self.started) * 1000
        timing = (
            f"cpu;dur={self.cpu_ms:.2f}, wall;dur={wall_ms:.2f}, code;desc={self.fetch.outcome}"
        )
        if self.decode_ms:
            timing += f", decode;dur={self.decode_ms:.2f}"
        if self.storage_ms:
            timing += f", storage;dur={self.storage_ms:.2f}"
        return [(b"server-timing", timing.encode()), (b"x-request-id", self.id.encode())]
