"""runc's command-line grammar: the flag tables, the parsed command, the argument checks.

Parsing only, as youki's liboci-cli: no operation lives here, so both the entry point (cli.py)
and the commands (commands.py) import it without importing each other. argparse is not used:
its import and parser building cost milliseconds on every launch.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


PROG = "skiff-lowlevel"
HELP_FLAGS = ("-h", "--help")
VERSION_FLAGS = ("-v", "--version")

# flag name -> (destination, takes a value, repeatable)
FlagSpec = dict[str, tuple[str, bool, bool]]
GLOBAL_FLAGS: FlagSpec = {
    "--root": ("root", True, False),
    "--log": ("log", True, False),
    "--log-format": ("log_format", True, False),
    "--debug": ("debug", False, False),
    "--systemd-cgroup": ("systemd_cgroup", False, False),
    "--rootless": ("rootless", True, False),
    "--criu": ("criu", True, False),
}
_CREATE: FlagSpec = {
    "--bundle": ("bundle", True, False),
    "-b": ("bundle", True, False),
    "--console-socket": ("console_socket", True, False),
    "--pid-file": ("pid_file", True, False),
    "--no-pivot": ("no_pivot", False, False),
    "--no-new-keyring": ("no_new_keyring", False, False),
    "--preserve-fds": ("preserve_fds", True, False),
}
COMMANDS: dict[str, tuple[FlagSpec, str]] = {
    "create": (_CREATE, "ID"),
    "run": (
        {
            **_CREATE,
            "--detach": ("detach", False, False),
            "-d": ("detach", False, False),
            "--keep": ("keep", False, False),
        },
        "ID",
    ),
    "start": ({}, "ID"),
    "state": ({}, "ID"),
    "kill": ({"--all": ("all", False, False), "-a": ("all", False, False)}, "ID [SIGNAL]"),
    "delete": ({"--force": ("force", False, False), "-f": ("force", False, False)}, "ID"),
    "exec": (
        {
            "--process": ("process", True, False),
            "-p": ("process", True, False),
            "--tty": ("tty", False, False),
            "-t": ("tty", False, False),
            "--console-socket": ("console_socket", True, False),
            "--pid-file": ("pid_file", True, False),
            "--detach": ("detach", False, False),
            "-d": ("detach", False, False),
            "--cwd": ("cwd", True, False),
            "--env": ("env", True, True),
            "-e": ("env", True, True),
            "--user": ("user", True, False),
            "-u": ("user", True, False),
            "--cap": ("cap", True, True),
            "-c": ("cap", True, True),
            "--no-new-privs": ("no_new_privs", False, False),
            "--preserve-fds": ("preserve_fds", True, False),
            "--additional-gids": ("additional_gids", True, True),
            "-g": ("additional_gids", True, True),
            "--cgroup": ("cgroup", True, True),
            "--ignore-paused": ("ignore_paused", False, False),
            "--process-label": ("process_label", True, False),
            "--apparmor": ("apparmor", True, False),
        },
        "ID COMMAND [ARGS...]",
    ),
    "ps": ({"--format": ("format", True, False), "-f": ("format", True, False)}, "ID [PS OPTIONS]"),
    "list": (
        {
            "--format": ("format", True, False),
            "-f": ("format", True, False),
            "--quiet": ("quiet", False, False),
            "-q": ("quiet", False, False),
        },
        "",
    ),
    "pause": ({}, "ID"),
    "resume": ({}, "ID"),
    "update": (
        {
            "--resources": ("resources", True, False),
            "-r": ("resources", True, False),
            "--memory": ("memory", True, False),
            "--memory-reservation": ("memory_reservation", True, False),
            "--memory-swap": ("memory_swap", True, False),
            "--cpu-share": ("cpu_shares", True, False),
            "--cpu-shares": ("cpu_shares", True, False),
            "--cpu-rt-period": ("cpu_rt_period", True, False),
            "--cpu-rt-runtime": ("cpu_rt_runtime", True, False),
            "--kernel-memory": ("kernel_memory", True, False),
            "--kernel-memory-tcp": ("kernel_memory_tcp", True, False),
            "--cpu-quota": ("cpu_quota", True, False),
            "--cpu-period": ("cpu_period", True, False),
            "--cpuset-cpus": ("cpuset_cpus", True, False),
            "--cpuset-mems": ("cpuset_mems", True, False),
            "--pids-limit": ("pids_limit", True, False),
            "--blkio-weight": ("blkio_weight", True, False),
        },
        "ID",
    ),
    "events": ({"--stats": ("stats", False, False), "--interval": ("interval", True, False)}, "ID"),
    "spec": (
        {"--bundle": ("bundle", True, False), "-b": ("bundle", True, False), "--rootless": ("rootless", False, False)},
        "",
    ),
    "features": ({}, ""),
    # Only so that their help answers as runc's does: running them is refused (no CRIU here).
    "checkpoint": ({}, "ID"),
    "restore": ({}, "ID"),
}
# Commands whose arguments after the ID belong to the container, not to us.
_PASSTHROUGH = {"exec", "ps"}


class UsageError(InvalidArgument):
    """A command line refused as runc's (urfave/cli's) refuses it.

    ``banner`` goes to stdout before the help of ``command`` (the app's help when it is None),
    unless it is None; the error itself goes to the log; ``code`` is the exit code.
    """

    def __init__(self, message: str, *, command: str | None, banner: str | None, code: int = 1) -> None:
        super().__init__(message)
        self.command = command
        self.banner = banner
        self.code = code


class Parsed:
    __slots__ = ("command", "flags", "args", "globals")

    def __init__(self, command: str, flags: dict[str, Any], args: list[str], globals: dict[str, Any]) -> None:
        self.command = command
        self.flags = flags
        self.args = args
        self.globals = globals


def _flag_name(arg: str) -> str:
    """Go's flag package takes -name and --name alike: the tables hold --name for long flags."""
    name = arg.partition("=")[0]
    if len(name) > 2 and not name.startswith("--"):
        return "-" + name
    return name


class _FlagError(Exception):
    pass


def _parse_flags(
    argv: list[str],
    spec: FlagSpec,
    into: dict[str, Any],
    *,
    stop_at_positional: bool,
    passthrough_after_first: bool = False,
) -> list[str]:
    """Flags into ``into``, anywhere before the positional arguments end (runc reorders them so),
    the positional arguments returned; -h/--help sets ``help``. Raises _FlagError in Go's words."""
    positional: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if positional and passthrough_after_first:
            positional.extend(argv[i:])
            break
        if arg == "--":
            positional.extend(argv[i + 1 :])
            break
        if arg.startswith("-") and arg != "-":
            name = _flag_name(arg)
            _, eq, value = arg.partition("=")
            if name in HELP_FLAGS:
                into["help"] = True
                i += 1
                continue
            if name not in spec:
                raise _FlagError(f"flag provided but not defined: -{name.lstrip('-')}")
            dest, takes_value, repeatable = spec[name]
            if takes_value:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise _FlagError(f"flag needs an argument: -{name.lstrip('-')}")
                    value = argv[i]
                if repeatable:
                    into.setdefault(dest, []).append(value)
                else:
                    into[dest] = value
            else:
                into[dest] = value.lower() not in ("false", "0") if eq else True
        else:
            if stop_at_positional:
                positional.extend(argv[i:])
                break
            positional.append(arg)
        i += 1
    return positional


def parse(argv: list[str]) -> Parsed:
    """The command line as runc reads it. ``help`` (with its topic) and ``version`` come back as
    commands of their own; an unknown command is runc's "No help topic" (exit code 3)."""
    globals_: dict[str, Any] = {}
    try:
        rest = _parse_flags(argv, {**GLOBAL_FLAGS, **_VERSION_SPEC}, globals_, stop_at_positional=True)
    except _FlagError as e:
        raise UsageError(str(e), command=None, banner=f"Incorrect Usage. {e}") from None
    if globals_.pop("version", False):
        return Parsed("version", {}, [], globals_)
    if globals_.pop("help", False) or not rest:
        return Parsed("help", {}, rest[:1], globals_)
    command, cmd_argv = rest[0], rest[1:]
    if command in ("help", "h"):
        return Parsed("help", {}, cmd_argv[:1], globals_)
    if command not in COMMANDS:
        raise UsageError(f"No help topic for '{command}'", command=None, banner=None, code=3)
    spec, _ = COMMANDS[command]
    flags: dict[str, Any] = {}
    try:
        args = _parse_flags(
            cmd_argv, spec, flags, stop_at_positional=False, passthrough_after_first=command in _PASSTHROUGH
        )
    except _FlagError as e:
        raise UsageError(str(e), command=command, banner=f"Incorrect Usage: {e}") from None
    if flags.pop("help", False):
        return Parsed("help", {}, [command], globals_)
    return Parsed(command=command, flags=flags, args=args, globals=globals_)


_VERSION_SPEC: FlagSpec = {"--version": ("version", False, False), "-v": ("version", False, False)}


def invoked_as() -> str:
    """The program as it was started (Go's os.Args[0], which runc's usage errors quote)."""
    import posix
    import sys

    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    if argv0.endswith(".py") or argv0 in ("", "-c", "-m"):
        # python -I -S .../__main__.py: the name the installed launcher (a /bin/sh script, which has
        # no exec -a) was called by, else the name a wrapper gave with exec -a, else ours
        launched = posix.environ.get(b"SKIFF_LOWLEVEL_NAME")
        if launched:
            return launched.decode(errors="replace")
        orig = getattr(sys, "orig_argv", None) or [""]
        name = orig[0].rpartition("/")[2]
        return orig[0] if name and not name.startswith("python") else PROG
    return argv0


def program_name() -> str:
    """The name help and version speak of: the file name it was started as (a link named runc
    makes it "runc", as runc's own tests expect), else skiff-lowlevel."""
    return invoked_as().rpartition("/")[2] or PROG


def need_id(p: Parsed, max_args: int | None = 1) -> str:
    """The container id, first argument, checked as runc's checkArgs: exactly one argument, or
    (``max_args`` other than 1) at least one and at most ``max_args`` (None: no limit)."""
    count = len(p.args)
    if max_args == 1 and count != 1:
        _incorrect(p, "requires exactly 1 argument(s)")
    if count < 1:
        _incorrect(p, "requires a minimum of 1 argument(s)")
    if max_args is not None and count > max_args:
        _incorrect(p, f"requires a maximum of {max_args} argument(s)")
    return p.args[0]


def no_args(p: Parsed) -> None:
    if p.args:
        _incorrect(p, "requires exactly 0 argument(s)")


def _incorrect(p: Parsed, what: str) -> None:
    raise UsageError(f'{invoked_as()}: "{p.command}" {what}', command=p.command, banner="Incorrect Usage.")
