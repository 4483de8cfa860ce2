"""The container's terminal: a pty made inside the container, its master sent to --console-socket."""

from __future__ import annotations

import _socket as socket
import array
import fcntl
import struct
import termios

from services.common.errors import SyscallError
from services.lowlevel import fastos as os

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


TIOCSPTLCK = 0x40045431
TIOCGPTN = 0x80045430


def connect_console_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as e:
        sock.close()
        raise SyscallError("connect console socket", path, e.errno or 0) from None
    return sock


def open_pty() -> tuple[int, str]:
    """A new pty from this mount namespace's /dev/ptmx: (master fd, slave path)."""
    try:
        master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise SyscallError("open", "/dev/ptmx", e.errno or 0) from None
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    buf = array.array("i", [0])
    fcntl.ioctl(master, TIOCGPTN, buf, True)
    return master, f"/dev/pts/{buf[0]}"


def set_size(fd: int, size: dict[str, Any] | None) -> None:
    if size:
        fcntl.ioctl(
            fd, termios.TIOCSWINSZ, struct.pack("HHHH", int(size.get("height", 0)), int(size.get("width", 0)), 0, 0)
        )


def send_master(sock: socket.socket, master: int, name: str) -> None:
    """SCM_RIGHTS by hand: socket.send_fds lives in the ``socket`` module, which imports enum."""
    sock.sendmsg([name.encode()], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [master]).tobytes())])


def become_terminal_owner(slave_path: str) -> None:
    """Make the pty slave this session's controlling terminal and stdio."""
    slave = os.open(slave_path, os.O_RDWR)
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def setup_console(console_sock: socket.socket, size: dict[str, Any] | None) -> None:
    master, slave_path = open_pty()
    try:
        set_size(master, size)
        send_master(console_sock, master, slave_path)
    finally:
        os.close(master)
        console_sock.close()
    become_terminal_owner(slave_path)
