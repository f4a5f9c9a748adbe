"""`python -m sandbox --zygote --control-fd N`: forks workers that start in milliseconds.

It applies a worker's start-up limits (sandbox.limits: address space, no core dumps,
NO_NEW_PRIVS, no inherited fds but its control socket, an empty environment), imports what a
worker needs and compiles the prelude once, then forks a worker for each request of the
server. A forked worker shares those pages: ~4 ms and ~2 MiB of its own, against ~90 ms and
~10 MiB for `python -m sandbox` (bench/spawn_bench.py).

The control socket is a SOCK_SEQPACKET pair: the server sends b"F" to ask for a worker; the
zygote answers b"C <pid>" with the worker's stdin and stdout pipes and a pidfd attached
(SCM_RIGHTS), and later b"X <pid> <exit code>" when it reaps it, so the server tells CPU,
memory and crash exits apart as it does for its own children. It exits when the server closes
the socket.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket

from sandbox import limits


def serve(control: socket.socket, kept_runtimes_bytes: int | None) -> int:
    from sandbox import runtime, worker  # lupa and the prelude, shared with every worker

    runtime.prelude_bytecode()
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_read, False)
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # (the wakeup fd is what matters)
    selector = selectors.DefaultSelector()
    selector.register(control, selectors.EVENT_READ)
    selector.register(wake_read, selectors.EVENT_READ)

    def fork_worker() -> None:
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 70
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()  # a terminal's Ctrl-C reaches the server, which stops its workers
                os.dup2(stdin_read, 0)
                os.dup2(stdout_write, 1)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))
                runtime.random_seeds = runtime.RandomSeeds()  # its own, not the zygote's copy
                code = worker.main(kept_runtimes_bytes=kept_runtimes_bytes)
            finally:
                os._exit(code)
        os.close(stdin_read)
        os.close(stdout_write)
        pidfd = os.pidfd_open(pid)  # before any reaping: it names this process, for good
        try:
            socket.send_fds(control, [b"C %d" % pid], [stdin_write, stdout_read, pidfd])
        finally:
            for fd in (stdin_write, stdout_read, pidfd):
                os.close(fd)

    def reap(*, block: bool = False) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            with contextlib.suppress(OSError):  # the server is gone: nobody to tell
                control.send(b"X %d %d" % (pid, os.waitstatus_to_exitcode(status)))

    while True:
        for key, _ in selector.select():
            if key.fileobj is control:
                request = control.recv(16)
                if not request:
                    # The server is gone or stopping: its workers end with their stdin; reap
                    # them all (none is left a zombie), then leave.
                    signal.set_wakeup_fd(-1)
                    reap(block=True)
                    return 0
                for _ in range(request.count(b"F")):
                    fork_worker()
            else:
                while True:
                    try:
                        if not os.read(wake_read, 4096):
                            break
                    except BlockingIOError:
                        break
        reap()


def main(control_fd: int, address_space_bytes: int | None, kept: int | None) -> int:
    limits.apply_at_start(address_space_bytes, keep_fd=control_fd)
    control = socket.socket(fileno=control_fd)
    try:
        return serve(control, kept)
    except (BrokenPipeError, ConnectionResetError):
        return 0  # the server went away mid-answer
