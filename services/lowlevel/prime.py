"""Start the cgroup migration lock's RCU grace period early, off the critical path.

Every write to a ``cgroup.procs`` takes the kernel's global ``cgroup_threadgroup_rwsem`` for
writing. That percpu rwsem first switches its readers to the slow path (``rcu_sync_enter``),
which waits for an RCU grace period: 6-20 ms on this machine, for runc as for us (strace -T of
runc's first write to cgroup.procs: 11 ms). It stays switched until about one grace period after
the last writer left, and during that window another write costs nothing.

So ``create``, ``run`` and ``exec`` write their own pid into the cgroup they are already in (a
no-op move) from a thread, as soon as the interpreter is up: the grace period then elapses while
the imports and the spec are dealt with. The thread then repeats the write every few ms (each
costs ~0.05 ms inside the window, and extends it) until ``done()``, so that the container's real
moves, whenever they come, fall into the window. Any failure is ignored: at worst the real move
waits as it did before.

Imports only ``posix``, ``_thread``, ``sys``, ``time`` (loaded at start-up) and, for those three
commands alone, services/common/cgroupfs.py (which finds the cgroup and holds the write loop): it
runs first, and start, delete or state pay for nothing here.
"""

import _thread
import posix
import sys
import time

_COMMANDS = ("create", "run", "exec")
# Global flags that take a value (runc's): their value is not the command.
_VALUED = ("--root", "--log", "--log-format", "--rootless", "--criu")
KEEP_LIMIT = 3.0  # seconds: the thread never outlives a stuck command by much
SWITCH_INTERVAL = 0.0002
_started = False
_done = False


def command_of(argv: list[str]) -> str | None:
    """The command word of a runc command line, skipping the global flags."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in _VALUED:
            i += 2
            continue
        if arg.startswith("-"):
            i += 1
            continue
        return arg
    return None


def prime_for(argv: list[str]) -> None:
    """Prime the lock when this command will move a process into a cgroup; once per process."""
    global _started
    if _started or command_of(argv) not in _COMMANDS:
        return
    _started = True
    try:
        from services.common.cgroupfs import own_procs_file

        target = own_procs_file()
        if target is not None:
            # The main thread is busy importing and seldom lets go of the GIL: with the default
            # switch interval (5 ms) the thread only got to its first write 5 ms late.
            sys.setswitchinterval(SWITCH_INTERVAL)
            _thread.start_new_thread(_keep_switched, (target, str(posix.getpid()).encode()))
    except Exception:  # noqa: BLE001 - an optimisation only: never fail the command for it
        pass


def done() -> None:
    """The real moves are made: the thread stops at its next wake-up."""
    global _done
    _done = True


def _keep_switched(path: str, pid: bytes) -> None:
    from services.common.cgroupfs import keep_switched

    deadline = time.monotonic() + KEEP_LIMIT
    keep_switched(path, pid, lambda: not _done and time.monotonic() < deadline)
