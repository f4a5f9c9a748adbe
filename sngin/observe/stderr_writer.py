"""The server's log lines to stderr without ever blocking the event loop on a stalled reader.

When stderr is a pipe (a log collector, a container runtime), it gets a write end of its own
(re-opened through /proc, so the non-blocking flag does not reach the workers sharing the
original): a line is written at once when the pipe has room, the common case and as cheap as
before; when it is full, lines wait in a bounded queue that a thread drains as the reader
catches up, and past MAX_PENDING_BYTES they are dropped and counted
(`sngin_access_log_lost_lines`). Other stderrs (a terminal, a file) are written directly, as
before: they do not stall. The queue is flushed at shutdown, so an orderly stop loses nothing.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import select
import stat
import sys
import threading
from collections import deque
from typing import BinaryIO, Final

MAX_PENDING_BYTES: Final = 8 * 1024 * 1024
FLUSH_AT_EXIT_S: Final = 5.0
DRAIN_WAIT_S: Final = 0.5


class StderrWriter:
    def __init__(self, stream: BinaryIO, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self._stream = stream
        self._max = max_pending_bytes
        self._fd = self._own_pipe_end(stream)
        self._backlog: deque[bytes] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.lost = 0

    @staticmethod
    def _own_pipe_end(stream: BinaryIO) -> int | None:
        """A non-blocking write end of our own when stream is a pipe, else None."""
        try:
            fd = stream.fileno()
            if not stat.S_ISFIFO(os.fstat(fd).st_mode):
                return None
            own = os.open(f"/proc/self/fd/{fd}", os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except (OSError, ValueError, AttributeError):
            return None
        return own

    def write(self, line: bytes) -> bool:
        """Write or queue a line (from any thread); False (counted in `lost`) if it is lost."""
        if self._fd is None:
            try:
                self._stream.write(line)
                self._stream.flush()
            except (OSError, ValueError):  # a closed pipe, a full disk
                self.lost += 1
                return False
            return True
        with self._cond:
            if not self._backlog:
                try:
                    written = os.write(self._fd, line)
                except BlockingIOError:
                    written = 0
                except OSError:
                    self.lost += 1
                    return False
                if written == len(line):
                    return True
                line = line[written:]
            if self._pending + len(line) > self._max:
                self.lost += 1
                return False
            self._backlog.append(line)
            self._pending += len(line)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._drain, name="sngin-stderr", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()
        return True

    def _drain(self) -> None:
        """Writes the backlog as the reader makes room."""
        assert self._fd is not None
        while True:
            with self._cond:
                while not self._backlog:
                    self._cond.wait()
                data = self._backlog[0]
            with contextlib.suppress(OSError, ValueError):
                select.select([], [self._fd], [], DRAIN_WAIT_S)
            try:
                written = os.write(self._fd, data)
            except BlockingIOError:
                continue
            except OSError:
                written = len(data)  # the reader is gone: these bytes are lost
                with self._cond:
                    self.lost += 1
            with self._cond:
                if written == len(data):
                    self._backlog.popleft()
                else:
                    self._backlog[0] = data[written:]
                self._pending -= written
                self._cond.notify_all()

    def flush(self, timeout_s: float = FLUSH_AT_EXIT_S) -> bool:
        """Wait until the backlog is written (or timeout_s); True if it was."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending == 0, timeout_s)


_writer: StderrWriter | None = None


def stderr_writer() -> StderrWriter:
    """The process's writer for sys.stderr (made at first use; flushed at exit)."""
    global _writer
    if _writer is None:
        _writer = StderrWriter(sys.stderr.buffer)
        atexit.register(_writer.flush)
    return _writer
