"""One thread writes the server's log lines to stderr, so a reader that stalls (a stopped log
collector, a full pipe) never blocks the event loop: lines wait in a bounded queue, and past
MAX_PENDING_BYTES they are dropped and counted (`sngin_access_log_lost_lines`). The queue is
flushed at shutdown, so an orderly stop loses nothing."""

from __future__ import annotations

import atexit
import sys
import threading
from collections import deque
from typing import BinaryIO, Final

MAX_PENDING_BYTES: Final = 8 * 1024 * 1024
FLUSH_AT_EXIT_S: Final = 5.0


class StderrWriter:
    def __init__(self, stream: BinaryIO, max_pending_bytes: int = MAX_PENDING_BYTES) -> None:
        self._stream = stream
        self._max = max_pending_bytes
        self._lines: deque[bytes] = deque()
        self._pending = 0
        self._cond = threading.Condition()
        self.lost = 0
        self._thread: threading.Thread | None = None

    def write(self, line: bytes) -> bool:
        """Queue a line (from any thread); False (counted in `lost`) if the queue is full."""
        with self._cond:
            if self._pending + len(line) > self._max:
                self.lost += 1
                return False
            self._lines.append(line)
            self._pending += len(line)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="sngin-stderr", daemon=True)
                self._thread.start()
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._lines:
                    self._cond.wait()
                batch = list(self._lines)
                self._lines.clear()
            data = b"".join(batch)
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError):  # stderr is gone (a closed pipe, a full disk)
                with self._cond:
                    self.lost += len(batch)
            with self._cond:
                self._pending -= len(data)
                self._cond.notify_all()

    def flush(self, timeout_s: float = FLUSH_AT_EXIT_S) -> bool:
        """Wait until every queued line is written (or timeout_s); True if it was."""
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
