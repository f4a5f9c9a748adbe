"""Frames from the server, read from the worker's stdin in chunks of up to 64 KiB."""

from __future__ import annotations

import os

from sandbox.protocol import take_prefix

READ_SIZE = 65536


class FrameInput:
    """Reads exact byte counts from an fd, in chunks of up to 64 KiB: jobs queued in the pipe
    cost one read together, not two reads each."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._buffer = bytearray()

    def read(self, size: int) -> bytes | bytearray | None:
        """size bytes, or None at a clean end of input (the parent closed our stdin). A frame
        larger than one read goes straight into a buffer of its own: one copy, not three."""
        if size > READ_SIZE and len(self._buffer) < size:
            return self._read_large(size)
        while len(self._buffer) < size:
            chunk = os.read(self._fd, max(READ_SIZE, size - len(self._buffer)))
            if not chunk:
                if self._buffer:
                    raise EOFError("input ended inside a frame")
                return None
            self._buffer += chunk
        return take_prefix(self._buffer, size)

    def _read_large(self, size: int) -> bytearray:
        frame = bytearray(size)
        have = len(self._buffer)
        frame[:have] = self._buffer
        self._buffer.clear()
        with memoryview(frame) as view:
            while have < size:
                got = os.readv(self._fd, [view[have:]])
                if not got:
                    raise EOFError("input ended inside a frame")
                have += got
        return frame
