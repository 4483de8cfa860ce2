"""Help and version, laid out as runc's (urfave/cli's templates), in our own words.

Loaded only for ``-h``/``--help``/``help``, ``-v``/``--version`` and usage errors: the text
costs nothing to a launch that does work. The flags come from the grammar (args.py), so a flag
added there is listed here; its line of help is in FLAG_HELP (a flag without one is listed bare).
"""

from __future__ import annotations

from services.lowlevel.args import COMMANDS, GLOBAL_FLAGS, program_name

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from services.lowlevel.args import FlagSpec

SPEC_VERSION = "1.0.2-dev"
DESCRIPTION = """Open Container Initiative runtime

{prog} runs containers from OCI bundles: a folder holding a config.json (the OCI runtime spec) and
the root filesystem it names. It speaks runc's command line, so any tool written for runc can drive
it: create a container, start its process, follow its state, send it signals, delete it.

To run a container from the bundle in the current folder:

    # {prog} run [ -b bundle ] <container-id>

The container id is a name of your choice, unique among the containers under --root."""

# command -> (one-line summary, what follows the flags, longer description or "")
COMMAND_HELP: dict[str, tuple[str, str, str]] = {
    "checkpoint": ("checkpoint a running container (not supported: needs CRIU)", "<container-id>", ""),
    "create": (
        "create a container",
        "<container-id>",
        "Makes the container from the bundle and leaves it waiting for 'start': its process exists\n"
        "   but has not run the program yet. With a terminal in the spec, --console-socket is needed.",
    ),
    "delete": (
        "delete the resources held by a container (its state, cgroup and processes)",
        "<container-id>",
        "A running container is refused unless --force is given.",
    ),
    "events": (
        "show the container's events: OOM kills and resource usage statistics",
        "<container-id>",
        "Prints one JSON object a line until the container ends, or once with --stats.",
    ),
    "exec": (
        "run a new process inside a container",
        "<container-id> <command> [command options]  || -p process.json <container-id>",
        "",
    ),
    "kill": (
        "send a signal (SIGTERM unless told) to the container's init process",
        "<container-id> [signal]",
        "The signal is a name (KILL, SIGKILL) or a number.",
    ),
    "list": ("list the containers under --root", "", ""),
    "pause": ("freeze every process of the container", "<container-id>", ""),
    "ps": (
        "show the processes running in a container",
        "<container-id> [ps options]",
        "Without --format json the host's ps draws the table; its options follow the id.",
    ),
    "restore": ("restore a container from a checkpoint (not supported: needs CRIU)", "<container-id>", ""),
    "resume": ("thaw the processes of a paused container", "<container-id>", ""),
    "run": (
        "create a container and run its process",
        "<container-id>",
        "In the foreground (no --detach) it waits for the process and exits with its code; a\n"
        "   terminal in the spec is relayed on the caller's own.",
    ),
    "spec": ("write a new config.json to start from", "", ""),
    "start": ("run the user's program in a created container", "<container-id>", ""),
    "state": ("print the state of a container as JSON", "<container-id>", ""),
    "update": ("change the resource limits of a running container", "<container-id>", ""),
    "features": ("show what this runtime supports, as JSON", "", ""),
}

FLAG_HELP: dict[str, str] = {
    # global
    "--debug": "log debug records too",
    "--log": "write the log to this file instead of stderr",
    "--log-format": "the log's format: 'text' (default) or 'json'",
    "--root": "the folder of the containers' state (a tmpfs, ideally)",
    "--criu": "accepted for compatibility; checkpoints are not supported",
    "--systemd-cgroup": "accepted for compatibility; cgroups are managed directly",
    "--rootless": "accepted for compatibility ('true', 'false' or 'auto')",
    # commands
    "--bundle": "the bundle's folder (default: the current one)",
    "--console-socket": "a UNIX socket that receives the pty master of the container's terminal",
    "--pid-file": "write the process's pid to this file",
    "--no-pivot": "use chroot, not pivot_root, to enter the root filesystem",
    "--no-new-keyring": "keep the caller's session keyring",
    "--preserve-fds": "hand this many descriptors after stdio to the process",
    "--detach": "do not wait for the process",
    "--keep": "keep the container's state after its process ends",
    "--all": "signal every process of the container, not only its init",
    "--force": "kill a running container first",
    "--process": "the process as a JSON file (the spec's process object)",
    "--tty": "give the process a terminal",
    "--cwd": "the process's working folder",
    "--env": "set an environment variable (repeatable)",
    "--user": "the process's user: UID[:GID]",
    "--cap": "add a capability (repeatable)",
    "--no-new-privs": "set no_new_privs for the process",
    "--additional-gids": "add a supplementary group (repeatable)",
    "--cgroup": "run in this sub-cgroup of the container's: [controller:]path (repeatable)",
    "--ignore-paused": "run even in a paused container",
    "--format": "the output format: 'table' or 'json'",
    "--quiet": "print the ids only",
    "--resources": "the new limits as a JSON file ('-': stdin), the spec's linux.resources",
    "--stats": "print the statistics once and exit",
    "--interval": "time between statistics (default 5s)",
}


def _flag_lines(spec: FlagSpec, extra: list[tuple[str, str]]) -> list[str]:
    """One line a flag, its names together (``--force, -f``), aligned as tabwriter does (padding 2)."""
    names: dict[str, list[str]] = {}
    for name, (dest, _, _) in spec.items():
        names.setdefault(dest, []).append(name)
    rows = []
    for group in names.values():
        long = next((n for n in group if n.startswith("--")), group[0])
        takes_value = spec[long][1]
        shown = ", ".join(n + (" value" if takes_value else "") for n in sorted(group, key=lambda n: -len(n)))
        rows.append((shown, FLAG_HELP.get(long, "")))
    rows += extra
    width = max((len(n) for n, _ in rows), default=0) + 2
    return [f"   {n.ljust(width)}{h}".rstrip() for n, h in rows]


def app_help() -> str:
    prog = program_name()
    lines = ["NAME:", f"   {prog} - " + DESCRIPTION.format(prog=prog), "", "USAGE:"]
    lines += [f"   {prog} [global options] command [command options] [arguments...]", "", "VERSION:"]
    # urfave/cli prints the whole version text there: its first line is the bare version.
    lines += ["   " + _project_version(), version_text().split("\n", 1)[1], "", "COMMANDS:"]
    entries = [(name, COMMAND_HELP.get(name, ("", "", ""))[0]) for name in COMMANDS]
    entries.append(("help, h", "show the commands, or the help of one command"))
    width = max(len(n) for n, _ in entries) + 2
    lines += [f"   {n.ljust(width)}{summary}".rstrip() for n, summary in entries]
    lines += ["", "GLOBAL OPTIONS:"]
    lines += _flag_lines(GLOBAL_FLAGS, [("--help, -h", "show help"), ("--version, -v", "print the version")])
    return "\n".join(lines) + "\n"


def command_help(command: str) -> str:
    prog = program_name()
    spec, _ = COMMANDS[command]
    summary, args_usage, description = COMMAND_HELP.get(command, ("", "", ""))
    usage = f"{prog} {command}" + (" [command options]" if spec else "") + (f" {args_usage}" if args_usage else "")
    lines = ["NAME:", f"   {prog} {command} - {summary}", "", "USAGE:", f"   {usage}"]
    if description:
        lines += ["", "DESCRIPTION:", f"   {description}"]
    if spec:
        lines += ["", "OPTIONS:", *_flag_lines(spec, [])]
    return "\n".join(lines) + "\n"


def version_text() -> str:
    """As runc's -v: name and version, then commit, spec, the language's version and libseccomp's."""
    import sys

    info = sys.version_info
    lines = [
        f"{program_name()} version {_project_version()}",
        f"commit: {_commit()}",
        f"spec: {SPEC_VERSION}",
        f"python: {info[0]}.{info[1]}.{info[2]}",
    ]
    seccomp = _libseccomp_version()
    if seccomp:
        lines.append(f"libseccomp: {seccomp}")
    return "\n".join(lines)


def _source_root() -> str:
    return __file__.rsplit("/", 3)[0]


def _project_version() -> str:
    """pyproject.toml's [project] version, read from the source tree skiff-lowlevel runs from."""
    try:
        with open(_source_root() + "/pyproject.toml") as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "version":
                    return value.strip().strip('"')
    except OSError:
        pass
    return "unknown"


def _commit() -> str:
    """The source tree's git commit, read from .git without running git."""
    git = _source_root() + "/.git"
    try:
        with open(git + "/HEAD") as f:
            head = f.read().strip()
        if not head.startswith("ref: "):
            return head
        ref = head[5:]
        try:
            with open(f"{git}/{ref}") as f:
                return f.read().strip()
        except FileNotFoundError:
            with open(git + "/packed-refs") as f:
                for line in f:
                    if line.rstrip().endswith(" " + ref):
                        return line.split()[0]
    except OSError:
        pass
    return "unknown"


def _libseccomp_version() -> str:
    """libseccomp's own seccomp_version(), when the library is there."""
    import _ctypes

    from services.lowlevel.libc import CDLL, Structure, c_uint

    class _Version(Structure):
        _fields_ = [("major", c_uint), ("minor", c_uint), ("micro", c_uint)]

    try:
        lib = CDLL("libseccomp.so.2")
        version = lib.function("seccomp_version", [], _ctypes.POINTER(_Version))().contents
    except (OSError, AttributeError, ValueError):
        return ""
    return f"{version.major}.{version.minor}.{version.micro}"
