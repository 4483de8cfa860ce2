"""A foreground container's terminal relayed on the caller's, as runc's tty.go does.

``run`` or ``exec`` in the foreground with ``process.terminal`` and no ``--console-socket``: the
runtime itself receives the pty master the container's init makes (over a console socket of its
own: run.ConsoleListener, made before create or exec knows whether it is needed), puts the
caller's terminal in raw mode, copies stdin to the master and the master to stdout, keeps the
window size in step (SIGWINCH), forwards signals, and restores the terminal when the process ends.
Only a detached container needs the caller's console socket.

Imported only on that path: ``select``, ``termios`` and ``array`` cost nothing to the others.
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import array
import fcntl
import select
import struct
import termios

from services.common.errors import FailedPrecondition, SyscallError
from services.lowlevel import fastos as os
from services.lowlevel.run import FORWARDED_SIGNALS, exit_code

RECEIVE_TIMEOUT = 10.0
_WINSIZE = struct.Struct("HHHH")


def receive_master(listener: socket.socket) -> int:
    """The pty master the container's process sent to ``listener`` (a run.ConsoleListener's socket);
    it is queued by the time create or exec returns."""
    listener.settimeout(RECEIVE_TIMEOUT)
    while True:
        try:
            conn, _ = listener._accept()
        except TimeoutError:
            raise FailedPrecondition("no terminal was received from the container") from None
        peer = socket.socket(fileno=conn)
        try:
            creds = peer.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
            if struct.unpack("iii", creds)[0] != os.getpid():
                continue  # not our own connection: someone else found the name
            peer.settimeout(RECEIVE_TIMEOUT)
            _, ancdata, _, _ = peer.recvmsg(4096, socket.CMSG_SPACE(4))
        finally:
            peer.close()
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                for extra in fds[1:]:
                    os.close(extra)
                return fds[0]
        raise FailedPrecondition("the container's console socket message carried no terminal")


def host_console() -> int:
    """The caller's terminal: stderr, stdout or stdin if one is a tty, else the controlling tty."""
    for fd in (2, 1, 0):
        if os.isatty(fd):
            return fd
    try:
        return os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SyscallError("open", "/dev/tty", e.errno or 0) from None


def _raw(attrs: list) -> list:
    """containerd/console's SetRaw, which runc uses: cfmakeraw, but output processing kept (OPOST,
    so the terminal's own ONLCR still ends lines with CR LF) and the character size bits cleared."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = attrs
    iflag &= ~(
        termios.IGNBRK | termios.BRKINT | termios.PARMRK | termios.ISTRIP
        | termios.INLCR | termios.IGNCR | termios.ICRNL | termios.IXON
    )
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    return [iflag, oflag | termios.OPOST, cflag, lflag, ispeed, ospeed, cc]


class Relay:
    """The caller's terminal in raw mode around the copying; restored by close() whatever happens."""

    def __init__(self, master: int, host: int) -> None:
        self.master = master
        self.host = host
        # The container's output reaches a terminal already: no second CR before each LF.
        attrs = termios.tcgetattr(master)
        attrs[1] &= ~termios.ONLCR
        termios.tcsetattr(master, termios.TCSANOW, attrs)
        self.saved = termios.tcgetattr(host)
        termios.tcsetattr(host, termios.TCSANOW, _raw(self.saved))
        self.resize()

    def resize(self) -> None:
        try:
            size = fcntl.ioctl(self.host, termios.TIOCGWINSZ, b"\0" * _WINSIZE.size)
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)
        except OSError:
            pass  # the terminal may be gone (a SIGHUP race): as runc, never fatal

    def wait(self, pid: int) -> int:
        """Copy both ways until ``pid`` exits (we are its subreaper), forwarding signals; its exit code."""
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        handled = (*FORWARDED_SIGNALS, signal.SIGCHLD)
        previous = {s: signal.signal(s, _note) for s in handled}
        old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        try:
            return self._loop(pid, wake_r)
        finally:
            signal.set_wakeup_fd(old_wakeup)
            for s, handler in previous.items():
                signal.signal(s, handler)
            os.close(wake_r)
            os.close(wake_w)

    def _loop(self, pid: int, wake_r: int) -> int:
        poller = select.poll()
        poller.register(wake_r, select.POLLIN)
        poller.register(self.master, select.POLLIN)
        stdin_open = True
        try:
            poller.register(0, select.POLLIN)
        except (OSError, ValueError):
            stdin_open = False
        while True:
            code = _reap(pid)
            if code is not None:
                self._drain()
                return code
            for fd, _ in poller.poll():
                if fd == wake_r:
                    for signum in os.read(wake_r, 64):
                        if signum == signal.SIGWINCH:
                            # The kernel tells the container's foreground group itself (as runc).
                            self.resize()
                        elif signum != signal.SIGCHLD:
                            try:
                                os.kill(pid, signum)
                            except ProcessLookupError:
                                pass
                elif fd == self.master:
                    if not self._copy(self.master, 1):
                        poller.unregister(self.master)
                elif fd == 0 and stdin_open and not self._copy(0, self.master):
                    poller.unregister(0)
                    stdin_open = False

    def _copy(self, src: int, dst: int) -> bool:
        """One read and its write; False once this direction is over: the end of ``src`` (EOF, or
        EIO of a master whose slave is closed) or a ``dst`` gone (EPIPE). As runc's io.Copy, that
        ends the copying, never the wait for the process."""
        try:
            data = os.read(src, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(dst, view) :]
            except BlockingIOError:
                select.select([], [dst], [])
            except OSError:
                return False
        return True

    def _drain(self) -> None:
        """What the process wrote before it ended and is still in the pty: read it to stdout."""
        os.set_blocking(self.master, False)
        while self._copy(self.master, 1):
            if not select.select([self.master], [], [], 0)[0]:
                break

    def close(self) -> None:
        try:
            termios.tcsetattr(self.host, termios.TCSANOW, self.saved)
        except OSError:
            pass
        os.close(self.master)
        if self.host > 2:
            os.close(self.host)


def _note(_signum: int, _frame: object) -> None:
    """Signals are read from the wakeup pipe in the loop; the handler only keeps them from their default."""


def _reap(pid: int) -> int | None:
    """Reap every exited child (orphans of the container too); ``pid``'s exit code once it is gone."""
    while True:
        try:
            reaped, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return 255
        except InterruptedError:
            continue
        if reaped == 0:
            return None
        if reaped == pid:
            return exit_code(status)
