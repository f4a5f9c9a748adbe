"""One sandbox worker subprocess and its framed pipes: call(job) -> Reply."""

from __future__ import annotations

import signal
import subprocess
import sys
from functools import partial
from typing import TYPE_CHECKING

import msgspec
import trio

from sandbox.protocol import HEADER, Job, Reply, decode_reply, encode_frame, frame_length
from sngin.errors import ProtocolError, WorkerCrashed

if TYPE_CHECKING:
    from trio.abc import ReceiveStream, SendStream

WORKER_ARGV = (sys.executable, "-m", "sandbox")
# Versions remembered per worker; past this the set restarts (a miss only resends source).
MAX_KNOWN = 1024


class WorkerProcess:
    """A `python -m sandbox` child. Never reused after a failed or interrupted call."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.pid = process.pid
        assert process.stdin is not None
        assert process.stdout is not None
        self._stdin: SendStream = process.stdin
        self._stdout: ReceiveStream = process.stdout
        self._buffer = bytearray()
        self.tenant: str | None = None
        self.known: set[tuple[str, str]] = set()
        self.broken = False
        self.requests = 0
        self.switches = 0

    @classmethod
    async def start(
        cls, nursery: trio.Nursery, argv: tuple[str, ...] = WORKER_ARGV
    ) -> WorkerProcess:
        process: trio.Process = await nursery.start(
            partial(
                trio.run_process,
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                check=False,
                # Own session: a terminal's Ctrl-C reaches the server, which stops its workers.
                start_new_session=True,
            )
        )
        return cls(process)

    @property
    def alive(self) -> bool:
        return not self.broken and self.process.returncode is None

    def kill(self) -> None:
        """SIGKILL: used when a call was interrupted and the worker's state is unknown."""
        self.broken = True
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)

    async def close(self) -> None:
        """Close stdin so the worker exits by itself."""
        self.broken = True
        await self._stdin.aclose()

    async def call(self, job: Job) -> Reply:
        """Send one job and read its reply; a dead or garbled worker raises and is marked broken."""
        if job.tenant != self.tenant:
            if self.tenant is not None:
                self.switches += 1
            self.tenant = job.tenant
            self.known.clear()
        cache_key = (job.key, job.version)
        reply = None
        if cache_key in self.known:
            # The worker compiled this version already; send the source only if it evicted it.
            reply = await self._round_trip(msgspec.structs.replace(job, source=None))
        if reply is None or reply.need_source:
            reply = await self._round_trip(job)
        if reply.need_source:
            self.kill()
            raise ProtocolError("the script's worker asked for source it was sent")
        if len(self.known) >= MAX_KNOWN:
            self.known.clear()
        self.known.add(cache_key)
        self.requests += 1
        return reply

    async def _round_trip(self, job: Job) -> Reply:
        try:
            await self._stdin.send_all(encode_frame(job))
            header = await self._receive_exactly(HEADER.size)
            body = await self._receive_exactly(frame_length(header))
        except (trio.BrokenResourceError, trio.ClosedResourceError, EOFError) as exc:
            self.kill()
            raise WorkerCrashed("the script's worker process died") from exc
        except ValueError as exc:
            self.kill()
            raise ProtocolError("the script's worker sent a malformed reply") from exc
        try:
            return decode_reply(body)
        except msgspec.DecodeError as exc:
            self.kill()
            raise ProtocolError("the script's worker sent a malformed reply") from exc

    async def _receive_exactly(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self._stdout.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                raise EOFError("worker closed its output")
            self._buffer += chunk
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data
