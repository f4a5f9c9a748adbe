"""`sngin serve --processes N`: the supervising parent of a node's server processes.

The parent binds the listeners and passes them to N children (`sngin serve --process I/N`), so
every process accepts from the same sockets and a process that restarts loses no queued
connection. It restarts a process that dies with the workers' boot-failure policy: at start-up
a configuration error, or MAX_BOOT_FAILURES failures in a row, stops the node; once serving, a
process is started again for ever with capped backoff. SIGTERM/SIGINT: every process finishes
its requests (SNGIN_GRACE_S) and is killed if it has not ended STOP_MARGIN_S after that. The
parent also carries what the processes share without Redis (sngin.node.hub), and the
metrics folder of prometheus-client's multiprocess mode.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sys
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import multiprocess

from sngin.backoff import Backoff
from sngin.errors import ConfigError
from sngin.node.hub import Hub, Slot
from sngin.observe.observer import MULTIPROC_DIR
from sngin.workers.supervisor import MAX_BOOT_FAILURES, MAX_SPAWN_RETRY_S, SPAWN_RETRY_S

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from sngin.config import Bind, Settings

log = logging.getLogger(__name__)

CONFIG_ERROR_STATUS: Final = 2  # how `sngin` exits on a bad setting: no use starting it again
STOP_MARGIN_S: Final = 10.0  # past the grace time, a process that has not ended is killed
BACKLOG: Final = 4096  # as the single process's listener (sngin.server.LISTEN_BACKLOG)


def listening_socket(bind: Bind) -> socket.socket:
    """A listening TCP socket the children inherit; one line naming the address if it fails."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((bind.host, bind.port))
        sock.listen(BACKLOG)
    except OSError as exc:
        sock.close()
        reason = (exc.strerror or str(exc)).lower()
        raise ConfigError(f"cannot listen on {bind}: {reason}") from None
    sock.set_inheritable(True)
    return sock


class NodeParent:
    def __init__(
        self,
        settings: Settings,
        env: Mapping[str, str],
        metrics_dir: str,
        *,
        serving_line: Callable[[list[str]], str],
    ) -> None:
        self.settings = settings
        self.count = settings.processes
        self.hub = Hub(self.count)
        self.hub.on_ready = self._ready
        self._env = dict(env) | {MULTIPROC_DIR: metrics_dir}
        self._metrics_dir = metrics_dir
        self._serving_line = serving_line
        self._listeners: list[socket.socket] = []
        self._processes: dict[int, trio.Process] = {}
        self._ran_ok: set[int] = set()  # slots whose current process reached Ready
        self._binds: list[str] = []
        self.serving = False  # every process reached Ready once
        self.stopping = trio.Event()
        self._ended = trio.Event()  # a process ended (set, then replaced)
        self.status = 0

    def open_listeners(self) -> None:
        self._listeners.append(listening_socket(self.settings.bind))
        if self.settings.admin_bind is not None:
            self._listeners.append(listening_socket(self.settings.admin_bind))

    def close_listeners(self) -> None:
        for sock in self._listeners:
            sock.close()

    def command(self, slot: Slot, hub_fd: int) -> list[str]:
        args = [sys.executable, "-m", "sngin", "serve", "--process", f"{slot.index}/{self.count}"]
        args += ["--hub-fd", str(hub_fd), "--listen-fd", str(self._listeners[0].fileno())]
        if len(self._listeners) > 1:
            args += ["--admin-fd", str(self._listeners[1].fileno())]
        return args

    async def run(self) -> int:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            async with trio.open_nursery() as slots:
                for slot in self.hub.slots:
                    slots.start_soon(self._keep, slot)
            nursery.cancel_scope.cancel()
        return self.status

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async for signum in signals:
                log.info("received %s: stopping every server process", signal.Signals(signum).name)
                await self.stop()

    async def stop(self) -> None:
        """Every process finishes its requests and ends; one still there later is killed."""
        if self.stopping.is_set():
            return
        self.stopping.set()
        for process in list(self._processes.values()):
            send_signal(process, signal.SIGTERM)
        with trio.move_on_after(self.settings.http.grace_s + STOP_MARGIN_S):
            while self._processes:
                await self._ended.wait()
        for index, process in list(self._processes.items()):
            log.error("process %d (pid %d) did not stop in time: killed", index, process.pid)
            send_signal(process, signal.SIGKILL)

    def _ready(self, slot: Slot, binds: list[str]) -> None:
        self._ran_ok.add(slot.index)
        if not self.serving and all(s.ready.is_set() for s in self.hub.slots):
            self.serving = True
            self._binds = binds
            log.info("%s", self._serving_line(binds))

    async def _keep(self, slot: Slot) -> None:
        """Run slot's process, and start it again each time it ends, until the node stops."""
        failures = 0  # at start-up: failed starts in a row
        backoff = Backoff(SPAWN_RETRY_S, MAX_SPAWN_RETRY_S)
        while not self.stopping.is_set():
            status = await self._run_once(slot)
            if self.stopping.is_set():
                return
            ran_ok = slot.index in self._ran_ok
            self._ran_ok.discard(slot.index)
            if not self.serving:
                failures = 0 if ran_ok else failures + 1
                if status == CONFIG_ERROR_STATUS or failures >= MAX_BOOT_FAILURES:
                    log.error(
                        "process %d could not start (%s): stopping", slot.index, exit_text(status)
                    )
                    self.status = 1
                    await self.stop()
                    return
            # 0.5 s after a process that had served; doubled per failure in a row (to 30 s).
            if ran_ok:
                backoff.succeeded()
            delay = backoff.next_delay()
            log.error(
                "process %d (pid %d) %s: starting it again in %.1f s",
                slot.index, slot.pid, exit_text(status), delay,
            )  # fmt: skip
            with trio.move_on_after(delay):
                await self.stopping.wait()

    async def _run_once(self, slot: Slot) -> int:
        parent_end, child_end = socket.socketpair()
        try:
            process = await trio.lowlevel.open_process(
                self.command(slot, child_end.fileno()),
                env=self._env,
                pass_fds=[child_end.fileno(), *(s.fileno() for s in self._listeners)],
                # Its own process group: a terminal's Ctrl-C reaches the parent, which stops
                # the processes in order, instead of all of them at once.
                process_group=0,
            )
        except OSError as exc:
            parent_end.close()
            log.error("process %d: cannot start: %s", slot.index, exc)
            return -1
        finally:
            child_end.close()
        self._processes[slot.index] = process
        self.hub.started(slot, process.pid)
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(parent_end))
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.hub.serve, slot, stream)
                status = await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            del self._processes[slot.index]
            self._ended.set()
            self._ended = trio.Event()
            await stream.aclose()
            # Its gauges leave the sums; its counters stay in them (they never go back).
            multiprocess.mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
        return status


def send_signal(process: trio.Process, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        process.send_signal(signum)


def exit_text(status: int) -> str:
    if status < 0:
        try:
            return f"was killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"was killed by signal {-status}"
    return f"exited with status {status}"


def run_node(
    settings: Settings, env: Mapping[str, str], serving_line: Callable[[list[str]], str]
) -> int:
    """Supervise settings.processes server processes until SIGTERM/SIGINT; the exit status."""
    import shutil
    import tempfile

    from sngin.storage.opening import prepare_storage_database

    metrics_dir = tempfile.mkdtemp(prefix="sngin-metrics-")
    parent = NodeParent(settings, env, metrics_dir, serving_line=serving_line)
    try:
        parent.open_listeners()
        prepare_storage_database(settings)
        return trio.run(parent.run)
    finally:
        parent.close_listeners()
        shutil.rmtree(metrics_dir, ignore_errors=True)
