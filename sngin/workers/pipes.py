"""Frames over a worker's pipes without a scheduler round trip per frame.

trio's FdStream checkpoints before every send_all and receive_some, and a lock around send_all
adds two more; on a busy server each of those is a trip through the run loop per request. Here
a frame is written with one os.write when the pipe has room, and only a full pipe queues the
rest for a flusher task; reads wait for readability only when nothing is buffered. Both ends
are the non-blocking fds trio opened for the process.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from typing import TYPE_CHECKING, Any, Final, TypeVar

import trio

from sandbox.frame_input import FrameBuffer

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T", bytes, int)

READS_BEFORE_YIELD: Final = 16  # a flooding writer cannot keep the reader from yielding


class PipeWriter:
    """Writes whole frames in order. send() never waits: a frame the pipe cannot take now is
    queued, and one flusher task (in the owner's nursery) writes the queue as the pipe drains.
    The queue is bounded by what the caller has in flight (jobs, call results). Queued frames
    are views of the caller's buffers, written from where the pipe stopped: a 10 MiB body that
    crosses a 64 KiB pipe is not copied, nor moved down a buffer, once per write."""

    def __init__(self, fd: int, nursery: trio.Nursery) -> None:
        self._fd = fd
        self._nursery = nursery
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self.closed = False
        self.broken = False

    @property
    def queued(self) -> int:
        return self._queued

    def send(self, frame: bytes | bytearray | memoryview) -> None:
        if self.closed or self.broken:
            return  # the reader sees the process end and fails what is in flight
        if self._queue:
            self._enqueue(memoryview(frame))  # behind earlier frames; the flusher is on it
            return
        sent = self._write(frame)
        if sent < len(frame):
            self._enqueue(memoryview(frame)[sent:])
            self._nursery.start_soon(self._flush)

    def _enqueue(self, view: memoryview) -> None:
        self._queue.append(view)
        self._queued += len(view)

    def _write(self, data: bytes | bytearray | memoryview) -> int:
        try:
            return os.write(self._fd, data)
        except BlockingIOError:
            return 0
        except OSError:
            self.broken = True  # EPIPE: the worker is gone; EBADF: closed meanwhile
            self._drop_queue()
            return len(data)

    async def _flush(self) -> None:
        while self._queue and not self.closed and not self.broken:
            try:
                await trio.lowlevel.wait_writable(self._fd)
            except (trio.ClosedResourceError, OSError):
                self.broken = True
                break
            head = self._queue[0]
            written = self._write(head)
            if not self._queue:
                break  # the write failed and dropped the queue
            self._queued -= written
            if written >= len(head):
                self._queue.popleft()
            else:
                self._queue[0] = head[written:]
        self._drop_queue()

    def _drop_queue(self) -> None:
        self._queue.clear()
        self._queued = 0

    def close(self) -> None:
        """Stop writing; the owner then closes the fd itself (the process's stdin stream).
        Called first: once closed, the fd's number may belong to another file."""
        self.closed = True
        self._drop_queue()


class PipeReader:
    """Reads exact byte counts, waiting for readability only when the buffer runs short (the
    buffering is the worker's own, sandbox.frame_input.FrameBuffer)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = FrameBuffer()
        self._reads = 0
        self.closed = False

    async def receive_exactly(self, size: int) -> bytes | bytearray:
        """size bytes."""
        large = self._frames.large_frame(size)
        if large is not None:
            return await self._receive_into(*large)
        while (data := self._frames.take(size)) is None:
            self._reads += 1
            if self._reads >= READS_BEFORE_YIELD:
                self._reads = 0
                await trio.lowlevel.checkpoint()
                continue
            chunk = await self._read_once(os.read, self._frames.wanted(size))
            if chunk is None:
                self._reads = 0
                continue
            self._frames.feed(chunk)
        return data

    async def _receive_into(self, frame: bytearray, have: int) -> bytearray:
        with memoryview(frame) as view:
            while have < len(frame):
                got = await self._read_once(os.readv, [view[have:]])
                if got is not None:
                    have += got
                    await trio.lowlevel.checkpoint()  # a large frame never starves the others
        return frame

    async def _read_once(self, read: Callable[[int, Any], T], arg: Any) -> T | None:
        """read(fd, arg) once (os.read: bytes; os.readv: a count), or None after waiting for
        readability (read again). An empty read is the other end closing it."""
        if self.closed:
            # Set before the fd is closed: its number may already belong to another file.
            raise trio.ClosedResourceError("the pipe was closed")
        try:
            data = read(self._fd, arg)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(self._fd)
            return None
        except OSError as exc:
            if exc.errno == errno.EBADF:
                raise trio.ClosedResourceError("the pipe was closed") from None
            raise trio.BrokenResourceError from exc
        if not data:
            raise EOFError("the other end closed the pipe")
        return data
