"""``skiff-shim STATE_DIR``: detaches, creates the container, then serves its socket.

The state folder holds ``bootstrap.json`` (written by highlevel: id, bundle, runtime argv and
root, socket path, stdio and log settings). The launching process exits once the container is
created (status 0, ``{"pid": N, "shim_pid": M}`` on stdout; with bootstrap's ``start`` the init is
started too, and ``started_at`` is added) or creation failed (status 1, ``{"error": ...}``);
the shim itself lives on in its own session, re-parented to init, in the root cgroups. Forked by
the zygote instead (``launch``), it is the zygote's own child and answers on its connection.
"""

from __future__ import annotations

import os
import sys

from services.common import cgroupfs
from services.common import jsonio as json
from services.common.errors import ErrorKind, SkiffError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

PR_SET_CHILD_SUBREAPER = 36


_prctl: Any = None


def prctl() -> Any:
    """libc's prctl, made once: the zygote makes it before it forks (services/shim/zygote.py)."""
    global _prctl
    if _prctl is None:
        # ctypes is imported here only, in the detached shim: the launcher never pays for it.
        import ctypes

        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    return _prctl


def _become_subreaper() -> None:
    if prctl()(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        import ctypes

        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _leave_cgroups() -> None:
    """Moves the shim to every hierarchy's root, so stopping the caller's cgroup spares it.

    Hierarchies where it already is at the root are skipped: a cgroup v1 migration takes a percpu
    rwsem whose first writer waits out an RCU grace period (8-20 ms here), even when the process is
    already where it is moved, so skipping those is free speed.
    """
    base = cgroupfs.ROOT
    away = cgroupfs.hierarchies_away_from_root()
    if not away:
        return
    candidates = [(base, "")] + [(os.path.join(base, name), name) for name in os.listdir(base)]
    pid = str(os.getpid()).encode()
    done: set[str] = set()
    for folder, name in candidates:
        procs = os.path.join(folder, "cgroup.procs")
        real = os.path.realpath(folder)
        if real in done or ("*" not in away and name not in away) or not os.path.exists(procs):
            continue
        done.add(real)
        try:
            fd = os.open(procs, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        except OSError:
            # A hierarchy that refuses (cgroup v2 threaded/domain rules) keeps the shim: harmless.
            continue


def _detach_stdio(state_dir: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(os.path.join(state_dir, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: skiff-shim STATE_DIR", file=sys.stderr)
        return 2
    state_dir = os.path.abspath(args[0])
    # Binary files throughout: a text file's codec objects would be made in every shim.
    with open(os.path.join(state_dir, "bootstrap.json"), "rb") as f:
        boot = json.loads(f.read())

    ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
    first = os.fork()
    if first:
        os.close(ready_w)
        chunks = []
        while chunk := os.read(ready_r, 65536):
            chunks.append(chunk)
        os.waitpid(first, 0)
        answer = b"".join(chunks).strip() or json.dumps(
            {"error": {"kind": ErrorKind.INTERNAL, "message": "shim died during create"}}).encode()
        sys.stdout.write(answer.decode() + "\n")
        sys.stdout.flush()
        return 0 if b'"error"' not in answer else 1

    os.close(ready_r)
    os.setsid()
    if os.fork():
        os._exit(0)
    return _serve(state_dir, boot, ready_w)


def launch(state_dir: str) -> int:
    """The zygote's launch (services/shim/zygote.py), stdout being its client's connection.

    The zygote forked this process, so it leads no process group: it makes its own session and is
    the shim itself, answering on the connection. The zygote ignores SIGCHLD, so the kernel reaps
    a shim that ends while the zygote lives; once the zygote is gone, the shim is re-parented like
    any orphan. Two forks fewer than ``main``'s on every launch: a forked child's first write to
    each page shared with the zygote is a copy, and the launcher in between cost 1.7 ms of them."""
    with open(os.path.join(state_dir, "bootstrap.json"), "rb") as f:
        boot = json.loads(f.read())
    answer_fd = os.dup(1)  # _serve's stdio detach replaces fd 1
    os.setsid()
    return _serve(state_dir, boot, answer_fd)


def _answer(fd: int, answer: dict[str, Any]) -> None:
    os.write(fd, json.dumps(answer).encode() + b"\n")


def _serve(state_dir: str, boot: dict, ready_w: int) -> int:
    from services.shim.server import Shim

    _detach_stdio(state_dir)
    try:
        _leave_cgroups()
        _become_subreaper()
        with open(os.path.join(state_dir, "shim.pid"), "wb") as f:
            f.write(str(os.getpid()).encode())
        shim = Shim(state_dir, boot)
        answer: dict[str, Any] = {}
        if boot.get("start"):
            answer["pid"], answer["started_at"] = shim.create_and_start()
        else:
            answer["pid"] = shim.create()
    except SkiffError as exc:
        _answer(ready_w, {"error": {"kind": exc.kind, "message": exc.message}})
        os._exit(1)
    except Exception as exc:  # noqa: BLE001 - reported to highlevel, which owns the clean-up
        _answer(ready_w, {"error": {"kind": ErrorKind.INTERNAL, "message": f"shim: {exc!r}"}})
        os._exit(1)
    answer["shim_pid"] = os.getpid()
    _answer(ready_w, answer)
    os.close(ready_w)
    shim.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
