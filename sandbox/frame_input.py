"""Reading frames: the buffering both ends of a worker's pipes share (`FrameBuffer`, no I/O of
its own), and the worker's blocking reader of its stdin over it. The server's reader
(sngin.workers.pipes.PipeReader) drives the same buffer with trio."""

from __future__ import annotations

import os

from sandbox.protocol import take_prefix

READ_SIZE = 65536


class FrameBuffer:
    """Exact byte counts from a stream read in chunks of up to 64 KiB, so frames queued in a
    pipe cost one read together, not two reads each. A frame larger than one read goes
    straight into a buffer of its own (one copy, from the kernel), not in chunks appended
    here."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def take(self, size: int) -> bytes | None:
        """size bytes if buffered, else None (read `wanted(size)` more and `feed` them)."""
        return take_prefix(self._buffer, size) if len(self._buffer) >= size else None

    def wanted(self, size: int) -> int:
        return max(READ_SIZE, size - len(self._buffer))

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk

    def large_frame(self, size: int) -> tuple[bytearray, int] | None:
        """For a frame larger than one read and not buffered yet: its own buffer, with what was
        buffered already at its start, and how much that is (read the rest into it)."""
        if size <= READ_SIZE or len(self._buffer) >= size:
            return None
        frame = bytearray(size)
        have = len(self._buffer)
        frame[:have] = self._buffer
        self._buffer.clear()
        return frame, have

    @property
    def empty(self) -> bool:
        return not self._buffer


class FrameInput:
    """The worker's reader of its stdin (blocking: the worker has nothing else to do)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._frames = FrameBuffer()

    def read(self, size: int) -> bytes | bytearray | None:
        """size bytes, or None at a clean end of input (the parent closed our stdin)."""
        large = self._frames.large_frame(size)
        if large is not None:
            return self._read_into(*large)
        while (data := self._frames.take(size)) is None:
            chunk = os.read(self._fd, self._frames.wanted(size))
            if not chunk:
                if not self._frames.empty:
                    raise EOFError("input ended inside a frame")
                return None
            self._frames.feed(chunk)
        return data

    def _read_into(self, frame: bytearray, have: int) -> bytearray:
        with memoryview(frame) as view:
            while have < len(frame):
                got = os.readv(self._fd, [view[have:]])
                if not got:
                    raise EOFError("input ended inside a frame")
                have += got
        return frame
