"""A process in the foreground (``run``, ``exec`` without ``--detach``): wait for it, forward
signals; its terminal's console socket when the caller gave none (the relay itself: tty.py)."""

from __future__ import annotations

import _signal as signal
import _socket as socket

from services.lowlevel import fastos as os

FORWARDED_SIGNALS = (
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


def exit_code(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def wait_forwarding_signals(pid: int) -> int:
    """Wait for ``pid`` (this process is its subreaper), reaping any other orphan on the way."""

    def forward(signum: int, _frame: object) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for s in FORWARDED_SIGNALS:
        signal.signal(s, forward)
    while True:
        try:
            reaped, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255
        except InterruptedError:
            continue
        if reaped == pid:
            return exit_code(status)


class ConsoleListener:
    """The console socket of a foreground process: its path goes to create or exec as --console-socket.

    Made with _socket alone (three system calls): a foreground ``run`` makes it before it knows
    whether the spec asks for a terminal, and most do not. Abstract, so there is no file to remove
    and no path-length limit from a deep --root; the runtime connects to it from the host's network
    namespace, before it forks, and tty.receive_master checks that the peer is this process.
    """

    def __init__(self) -> None:
        self.path = f"\0skiff-lowlevel/console/{os.getpid()}/{os.urandom(8).hex()}"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            self.sock.bind(self.path)
            self.sock.listen(1)
        except BaseException:
            self.sock.close()
            raise

    def close(self) -> None:
        self.sock.close()
