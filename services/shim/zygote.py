"""``skiff-shim`` fork server: ``python -S -m services.shim.zygote SOCKET``.

One long-lived process imports the shim's code once and forks a shim per request, so the shims
share those pages (interpreter heap, code objects, module dicts) copy-on-write instead of each
building its own. ``gc.freeze()`` keeps the collector from writing to the shared objects.

Protocol: a client connects to SOCKET, sends ``STATE_DIR\\n`` and reads one line: the shim's
answer, exactly what ``skiff-shim STATE_DIR`` prints (``{"pid": N, "shim_pid": M}`` or
``{"error": ...}``). The forked child makes its own session and is the shim, which writes the
answer on the connection itself (shim/__main__.py's ``launch``): each shim has its own session and
never depends on the zygote staying alive (reaped by the kernel while the zygote ignores SIGCHLD,
re-parented once it is gone).

Started like the shim: the launcher binds the socket, double-forks the server into its own session
in the root cgroups, prints ``ready`` and exits.
"""

from __future__ import annotations

import _signal as signal
import _socket as socket
import codecs

# Everything a shim imports is imported here once (the noqa ones too): the forked shims share it.
import ctypes  # noqa: F401 - used by the shim's subreaper prctl
import fcntl  # noqa: F401 - used by resize
import gc
import os
import struct  # noqa: F401
import sys
import termios  # noqa: F401

from services.common import jsonio as json
from services.common.errors import ErrorKind, SyscallError
from services.lowlevel.preload import PRELOAD
from services.shim import __main__ as shim_main
from services.shim import server  # noqa: F401 - loaded by _serve in every shim
from services.shim.prefork import fill_holes, warm_type_cache

# skiff-lowlevel runs inside forked shims (shim/runtime.py): the modules it names are loaded here
# once too. A name that does not import stops the zygote (highlevel then spawns shims directly).
for _module in PRELOAD:
    __import__(f"services.lowlevel.{_module}")
# What a shim would otherwise load on its own, each time: jsonio.loads decodes with utf-8-sig (its
# codec module is imported on first use) and the subreaper's prctl is a ctypes function (a CDLL
# makes a class per library).
codecs.lookup("utf-8-sig")
shim_main.prctl()
# A default container's filter is read from skiff-lowlevel's cache (lowlevel/seccomp.py): the key
# needs libseccomp's version and sha256, each a library load in every runtime command otherwise.
try:
    import _sha256  # noqa: F401

    from services.lowlevel.seccomp import preload as _seccomp_preload

    _seccomp_preload()
except (ImportError, SyscallError):
    pass  # no libseccomp here: a container with a filter fails in its runtime, as without a zygote

REQUEST_TIMEOUT = 5.0


def set_title(argv: list[str]) -> None:
    """Rewrites /proc/self/cmdline in place (arg_start..arg_end of /proc/self/stat), padded with NULs."""
    try:
        with open("/proc/self/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        start, end = int(fields[45]), int(fields[46])  # fields 48 and 49 of proc(5)
        title = b"\0".join(a.encode() for a in argv) + b"\0"
        if len(title) > end - start:
            return
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(title.ljust(end - start, b"\0"))
    except (OSError, ValueError, IndexError):
        pass  # cosmetic: the shim works the same with the zygote's title


def _error(kind: str, message: str) -> bytes:
    return json.dumps({"error": {"kind": kind, "message": message}}).encode() + b"\n"


def _read_request(conn: socket.socket) -> str:
    conn.settimeout(REQUEST_TIMEOUT)
    data = b""
    while not data.endswith(b"\n") and len(data) < 4096:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode().strip()


def _launch(listener: socket.socket, conn: socket.socket, state_dir: str) -> None:
    """In the forked child: exactly ``skiff-shim STATE_DIR``, with the connection as stdout."""
    code = 1
    try:
        listener.close()
        # The zygote ignores SIGCHLD (auto-reap); the shim reaps its own children.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        conn.settimeout(None)
        os.dup2(conn.fileno(), 1)
        conn.close()  # fd 1 is the only reference: the shim's stdio detach ends the client's read
        set_title([sys.executable, "-S", "-m", "services.shim", state_dir])
        code = shim_main.launch(state_dir)
    except BaseException as exc:  # noqa: BLE001 - reported to highlevel on the connection
        try:
            os.write(1, _error(ErrorKind.INTERNAL, f"zygote launch: {exc!r}"))
        except OSError:
            pass
    os._exit(code)


def serve(listener: socket.socket) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    gc.collect()
    warm_type_cache(("services.shim", "services.common"))
    fillers = fill_holes()  # noqa: F841 - kept for the zygote's life: shims allocate around them
    gc.freeze()
    while True:
        try:
            fd, _ = listener._accept()
        except InterruptedError:
            continue
        conn = socket.socket(fileno=fd)
        try:
            _handle(listener, conn)
        except OSError:
            pass  # a client gone mid-request (EPIPE, timeout) never takes the zygote down
        finally:
            conn.close()


def _handle(listener: socket.socket, conn: socket.socket) -> None:
    state_dir = _read_request(conn)
    if not state_dir or not os.path.isabs(state_dir):
        conn.sendall(_error(ErrorKind.INVALID_ARGUMENT, "zygote: bad state dir"))
        return
    try:
        pid = os.fork()
    except OSError as exc:
        conn.sendall(_error(ErrorKind.INTERNAL, f"zygote fork: {exc.strerror}"))
        return
    if pid == 0:
        _launch(listener, conn, state_dir)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m services.shim.zygote SOCKET", file=sys.stderr)
        return 2
    path = args[0]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    listener.bind(path)
    listener.listen(128)
    if os.fork():
        # Connections queue on the bound socket from here on: the caller may use it at once.
        os.wait()
        print("ready", flush=True)
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(path + ".log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)
    shim_main._leave_cgroups()
    # For operators and the bench (its memory is shared by every shim it forked).
    with open(path + ".pid", "w") as f:
        f.write(str(os.getpid()))
    serve(listener)
    return 0


if __name__ == "__main__":
    sys.exit(main())
