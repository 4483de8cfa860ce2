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

# flag name -> (destination, takes a value, repeatable)
FlagSpec = dict[str, tuple[str, bool, bool]]
_GLOBAL: FlagSpec = {
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
_COMMANDS: dict[str, tuple[FlagSpec, str]] = {
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
            "--cpu-shares": ("cpu_shares", True, False),
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
}
# Commands whose arguments after the ID belong to the container, not to us.
_PASSTHROUGH = {"exec", "ps"}


class Parsed:
    __slots__ = ("command", "flags", "args", "globals")

    def __init__(self, command: str, flags: dict[str, Any], args: list[str], globals: dict[str, Any]) -> None:
        self.command = command
        self.flags = flags
        self.args = args
        self.globals = globals


def _parse_flags(
    argv: list[str],
    spec: FlagSpec,
    into: dict[str, Any],
    *,
    stop_at_positional: bool,
    passthrough_after_first: bool = False,
) -> list[str]:
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
            name, eq, value = arg.partition("=")
            if name not in spec:
                if stop_at_positional:
                    positional.extend(argv[i:])
                    break
                raise InvalidArgument(f"flag provided but not defined: {name}")
            dest, takes_value, repeatable = spec[name]
            if takes_value:
                if not eq:
                    i += 1
                    if i >= len(argv):
                        raise InvalidArgument(f"flag needs an argument: {name}")
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
    globals_: dict[str, Any] = {}
    rest = _parse_flags(argv, _GLOBAL, globals_, stop_at_positional=True)
    if not rest:
        raise InvalidArgument(
            f"usage: {PROG} [global options] COMMAND [options] [ARGS]; commands: " + ", ".join(_COMMANDS)
        )
    command, cmd_argv = rest[0], rest[1:]
    if command not in _COMMANDS:
        raise InvalidArgument(f"no such command: {command}")
    spec, _ = _COMMANDS[command]
    flags: dict[str, Any] = {}
    args = _parse_flags(
        cmd_argv, spec, flags, stop_at_positional=False, passthrough_after_first=command in _PASSTHROUGH
    )
    return Parsed(command=command, flags=flags, args=args, globals=globals_)


def need_id(p: Parsed, max_args: int = 1) -> str:
    usage = _COMMANDS[p.command][1]
    if not p.args:
        raise InvalidArgument(f'"{p.command}" requires a container id; usage: {PROG} {p.command} {usage}')
    if len(p.args) > max_args:
        raise InvalidArgument(f'"{p.command}" takes {usage}, got {len(p.args)} arguments')
    return p.args[0]
