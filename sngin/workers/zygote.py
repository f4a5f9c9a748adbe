"""The server's side of the worker zygote (sandbox/zygote.py): one `python -m sandbox
--zygote-fd 3` child, started like a worker, that forks workers on request in milliseconds.

A forked worker is not the server's child: `ForkedProcess` stands in for trio.Process with what
WorkerProcess uses (pid, stdin, stdout, wait, returncode, send_signal). Its exit status comes
from the zygote, which reaps it; kills go through a pidfd, which names that process for good.
If the zygote itself ends, a worker's end is still seen (its pidfd turns readable) and counted
as a crash, and the next worker is forked by a new zygote.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import socket
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from sngin.errors import WorkerError

if TYPE_CHECKING:
    from collections.abc import Sequence

log = logging.getLogger(__name__)

FORK_TIMEOUT_S: Final = 10.0
STATUS_WAIT_S: Final = 2.0  # for the zygote to exit once its control socket is closed
LOST_STATUS: Final = -int(signal.SIGKILL)  # a worker whose status the zygote did not report


class ZygoteGone(WorkerError):
    """The zygote ended or did not answer: start workers another way (or a new zygote)."""


class ForkedProcess:
    """A worker the zygote forked, as WorkerProcess uses a trio.Process."""

    def __init__(self, pid: int, stdin_fd: int, stdout_fd: int, pidfd: int) -> None:
        self.pid = pid
        self.stdin = trio.lowlevel.FdStream(stdin_fd)
        self.stdout = trio.lowlevel.FdStream(stdout_fd)
        self._pidfd = pidfd
        self.returncode: int | None = None
        self._reported = trio.Event()

    def reported(self, code: int) -> None:
        """Its exit status, from the zygote (or lost with it)."""
        if self.returncode is None:
            self.returncode = code
        self._close_pidfd()
        self._reported.set()

    async def wait(self) -> int:
        await self._reported.wait()
        assert self.returncode is not None
        return self.returncode

    async def watch(self) -> None:
        """The zygote is gone: the end of this worker is seen on its pidfd, status unknown."""
        with contextlib.suppress(trio.ClosedResourceError, OSError):
            if self._pidfd >= 0:
                await trio.lowlevel.wait_readable(self._pidfd)
        self.reported(LOST_STATUS)

    def send_signal(self, number: int) -> None:
        if self._pidfd < 0:
            return
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self._pidfd, number)

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            with contextlib.suppress(OSError):
                trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1


class Zygote:
    """Owns the zygote process and its control socket; `fork()` gives a ForkedProcess."""

    def __init__(
        self, process: trio.Process, control: trio.socket.SocketType, nursery: trio.Nursery
    ) -> None:
        self._process = process
        self.pid = process.pid
        self._nursery = nursery
        self._control = control
        self._children: dict[int, ForkedProcess] = {}
        self._forked: trio.MemorySendChannel[ForkedProcess]
        self._forked, self._next = trio.open_memory_channel[ForkedProcess](math.inf)
        self._lock = trio.Lock()  # one fork request at a time: answers come in order
        self.gone = False

    @classmethod
    async def start(cls, nursery: trio.Nursery, argv: Sequence[str]) -> Zygote:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with ours, theirs:
            process: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [*argv, "--zygote-fd", str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),),
                    check=False,
                    env={},
                    start_new_session=True,
                )
            )
            control = trio.socket.from_stdlib_socket(ours.dup())
        zygote = cls(process, control, nursery)
        nursery.start_soon(zygote._read)
        return zygote

    async def fork(self) -> ForkedProcess:
        if self.gone:
            raise ZygoteGone("the worker zygote has ended")
        async with self._lock:
            try:
                with trio.fail_after(FORK_TIMEOUT_S):
                    await self._control.send(b"F")
                    return await self._next.receive()
            except (OSError, trio.TooSlowError, trio.EndOfChannel) as exc:
                self.gone = True
                raise ZygoteGone(f"the worker zygote did not fork: {exc!r}") from None

    async def _read(self) -> None:
        """The zygote's answers: a forked worker's pipes, or a worker's exit status."""
        try:
            while True:
                data, fds = await self._recv_fds()
                if not data:
                    break
                kind, _, rest = data.partition(b" ")
                if kind == b"C" and len(fds) == 3:
                    child = ForkedProcess(int(rest), fds[0], fds[1], fds[2])
                    self._children[child.pid] = child
                    self._forked.send_nowait(child)
                elif kind == b"X":
                    pid, code = (int(x) for x in rest.split())
                    exited = self._children.pop(pid, None)
                    if exited is not None:
                        exited.reported(code)
                else:
                    for fd in fds:
                        os.close(fd)
        except trio.ClosedResourceError:
            pass  # aclose(): the server is stopping
        except OSError as exc:
            log.warning("worker zygote: %s", exc)
        finally:
            self.gone = True
            self._forked.close()
            self._control.close()
            for child in self._children.values():  # their statuses will not come now
                self._nursery.start_soon(child.watch)
            self._children.clear()

    async def _recv_fds(self) -> tuple[bytes, list[int]]:
        message, ancillary, _, _ = await self._control.recvmsg(64, socket.CMSG_SPACE(3 * 4))
        fds: list[int] = []
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += list(memoryview(payload[:usable]).cast("i"))
        return message, fds

    async def aclose(self) -> None:
        """Close the control socket: the zygote reaps its workers (each ends when its stdin
        closes) and exits; past the wait, it is killed."""
        self._control.close()
        with trio.move_on_after(STATUS_WAIT_S):
            await self._process.wait()
        if self._process.returncode is None:
            self._process.kill()
