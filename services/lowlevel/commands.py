"""One function per command: load what it needs, do it, print in runc's format."""

from __future__ import annotations

import sys

from services.common import jsonio as json
from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.lowlevel import fastos as os
from services.lowlevel import state
from services.lowlevel.args import Parsed, UsageError, need_id, no_args
from services.lowlevel.output import go_json, go_json_indent, table

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


def dispatch(p: Parsed, root: str) -> int:
    return _HANDLERS[p.command](p, root)


def _create_options(p: Parsed, root: str, container_id: str) -> Any:
    from services.lowlevel.create import CreateOptions

    return CreateOptions(
        root=root,
        container_id=container_id,
        bundle=p.flags.get("bundle") or os.getcwd(),
        pid_file=_abs(p.flags.get("pid_file")),
        console_socket=_abs(p.flags.get("console_socket")),
        no_pivot=bool(p.flags.get("no_pivot")),
        preserve_fds=_int_flag(p, "preserve_fds", 0),
    )


def _abs(path: str | None) -> str | None:
    return os.path.abspath(path) if path else None


def _int_flag(p: Parsed, name: str, default: int) -> int:
    value = p.flags.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        # Go's flag package refuses it while parsing (an IntFlag): runc's usage error.
        message = f'invalid value "{value}" for flag -{name.replace("_", "-")}: parse error'
        raise UsageError(message, command=p.command, banner=f"Incorrect Usage: {message}") from None


def cmd_create(p: Parsed, root: str) -> int:
    from services.lowlevel.create import create_container

    create_container(_create_options(p, root, need_id(p)))
    return 0


# runc's check: only a detached process with a terminal hands its pty master to a console socket.
_CONSOLE_SOCKET_UNUSED = "cannot use console socket if runtime will not detach or allocate tty"


def cmd_run(p: Parsed, root: str) -> int:
    from services.lowlevel import lifecycle
    from services.lowlevel import syscalls as sc
    from services.lowlevel.create import create_container

    container_id = need_id(p)
    detach = bool(p.flags.get("detach"))
    options = _create_options(p, root, container_id)
    if not detach and options.console_socket is not None:
        raise InvalidArgument(_CONSOLE_SOCKET_UNUSED)
    listener = None
    if not detach:
        # The init's parent (the intermediate) exits at once: we adopt it to wait for it.
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        if options.console_socket is None:
            from services.lowlevel.run import ConsoleListener

            # Used only if the spec asks for a terminal: then we relay it, as runc does.
            listener = ConsoleListener()
            options.console_socket = listener.path
    try:
        created = create_container(options)
        # What create made is at hand: start and delete need not read it back.
        known = {"st": created.state, "spec": created.spec}
        relay = None
        try:
            if listener is not None and (created.spec.get("process") or {}).get("terminal"):
                relay = _terminal_relay(listener)
            lifecycle.start(root, container_id, **known)
        except BaseException:
            if relay is not None:
                relay.close()
            lifecycle.delete(root, container_id, force=True, cgroup=created.cgroup, **known)
            raise
    finally:
        if listener is not None:
            listener.close()
    if detach:
        return 0
    code = _wait_foreground(created.state.pid, relay)
    if not p.flags.get("keep"):
        lifecycle.delete(root, container_id, force=True, cgroup=created.cgroup, **known)
    return code


def _terminal_relay(listener: Any, host: int | None = None) -> Any:
    """The caller's terminal (``host``, found now if not given), ready to relay the container's
    (tty.py); raw mode is set only now."""
    from services.lowlevel import tty

    opened = host is None
    if host is None:
        host = tty.host_console()
    master = -1
    try:
        master = tty.receive_master(listener.sock)
        return tty.Relay(master, host)
    except BaseException:
        if master >= 0:
            os.close(master)
        if opened and host > 2:
            os.close(host)  # a host given by the caller stays the caller's to close
        raise


def _wait_foreground(pid: int, relay: Any) -> int:
    if relay is None:
        from services.lowlevel.run import wait_forwarding_signals

        return wait_forwarding_signals(pid)
    try:
        return relay.wait(pid)
    finally:
        relay.close()


def cmd_start(p: Parsed, root: str) -> int:
    from services.lowlevel import lifecycle

    lifecycle.start(root, need_id(p))
    return 0


def cmd_state(p: Parsed, root: str) -> int:
    st = state.load(root, need_id(p))
    # As runc: json.MarshalIndent written as it is, without a newline.
    sys.stdout.write(go_json_indent(state.oci_state(root, st), "  "))
    return 0


def cmd_kill(p: Parsed, root: str) -> int:
    from services.lowlevel import lifecycle

    container_id = need_id(p, 2)
    sig = lifecycle.parse_signal(p.args[1]) if len(p.args) > 1 else 15
    lifecycle.kill(root, container_id, sig, all_processes=bool(p.flags.get("all")))
    return 0


def cmd_delete(p: Parsed, root: str) -> int:
    from services.lowlevel import lifecycle

    lifecycle.delete(root, need_id(p), force=bool(p.flags.get("force")))
    return 0


def cmd_exec(p: Parsed, root: str) -> int:
    from services.lowlevel import exec as exec_

    container_id = need_id(p, None)
    state.load(root, container_id)  # an unknown id is "does not exist", not a missing file
    if p.flags.get("process"):
        process = exec_.load_process_file(p.flags["process"])
    else:
        if len(p.args) < 2:
            raise InvalidArgument("exec: give a command after the container id, or --process")
        spec = exec_.load_spec_of(root, container_id)
        process = exec_.process_from_args(
            spec,
            p.args[1:],
            tty=bool(p.flags.get("tty")),
            cwd=p.flags.get("cwd"),
            env=p.flags.get("env") or [],
            user=p.flags.get("user"),
            caps=p.flags.get("cap") or [],
            no_new_privs=bool(p.flags.get("no_new_privs")),
        )
    if p.flags.get("tty"):
        process["terminal"] = True
    exec_.add_gids(process, p.flags.get("additional_gids") or [])
    detach = bool(p.flags.get("detach"))
    console_socket = _abs(p.flags.get("console_socket"))
    if console_socket is not None and not (detach and process.get("terminal")):
        raise InvalidArgument(_CONSOLE_SOCKET_UNUSED)
    listener = None
    host = None
    if process.get("terminal") and not detach and console_socket is None:
        from services.lowlevel import syscalls as sc
        from services.lowlevel import tty
        from services.lowlevel.run import ConsoleListener

        # In the foreground the terminal is relayed on ours (as runc): exec starts the process
        # detached, adopted by us (subreaper), and we wait for it around the relay. Without a
        # terminal of ours, nothing is started.
        host = tty.host_console()
        sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
        listener = ConsoleListener()
        console_socket = listener.path
    try:
        result = exec_.exec_in_container(
            exec_.ExecOptions(
                root=root,
                container_id=container_id,
                process=process,
                console_socket=console_socket,
                pid_file=_abs(p.flags.get("pid_file")),
                detach=detach or listener is not None,
                preserve_fds=_int_flag(p, "preserve_fds", 0),
                sub_cgroups=p.flags.get("cgroup") or [],
                ignore_paused=bool(p.flags.get("ignore_paused")),
            )
        )
        if listener is None:
            return 0 if detach else result
        try:
            relay = _terminal_relay(listener, host)
            host = None  # the relay's now
        except BaseException:
            _kill_and_reap(result)
            raise
    finally:
        if listener is not None:
            listener.close()
        if host is not None and host > 2:
            os.close(host)
    return _wait_foreground(result, relay)


def _kill_and_reap(pid: int) -> None:
    try:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def cmd_ps(p: Parsed, root: str) -> int:
    from services.lowlevel.lifecycle import cgroup_of

    container_id = need_id(p, None)
    st = state.load(root, container_id)
    if state.current_status(root, st) == state.Status.STOPPED:
        pids: list[int] = []
    else:
        pids = sorted(cgroup_of(st).pids())
    fmt = p.flags.get("format") or "table"
    if fmt == "json":
        print(go_json(pids))
        return 0
    if fmt != "table":
        raise InvalidArgument(f"invalid format option {fmt!r}")
    import subprocess

    # As runc: the host's ps draws the table; we keep the header and the container's rows.
    ps_args = p.args[1:] or ["-ef"]
    out = subprocess.run(["ps", *ps_args], capture_output=True, text=True, timeout=10, check=False)
    if out.returncode != 0:
        raise FailedPrecondition(f"ps {' '.join(ps_args)}: {out.stderr.strip()}")
    lines = out.stdout.splitlines()
    header = lines[0].split()
    if "PID" not in header:
        raise InvalidArgument("couldn't find PID field in ps output")
    col = header.index("PID")
    wanted = set(pids)
    print(lines[0])
    for line in lines[1:]:
        fields = line.split()
        if len(fields) > col and fields[col].isdigit() and int(fields[col]) in wanted:
            print(line)
    return 0


def cmd_list(p: Parsed, root: str) -> int:
    no_args(p)
    entries: list[dict[str, Any]] = []
    try:
        names = sorted(os.listdir(root))
    except FileNotFoundError:
        names = []
    for name in names:
        try:
            st = state.load(root, name)
            owner = _owner_name(os.stat(state.container_dir(root, name)).st_uid)
        except (NotFound, InvalidArgument, ValueError, OSError):
            continue
        entry = state.oci_state(root, st)
        entry["owner"] = owner  # as runc's list: the state folder's owner, by name
        entries.append(entry)
    fmt = p.flags.get("format") or "table"
    if p.flags.get("quiet"):
        for e in entries:
            print(e["id"])
    elif fmt == "json":
        print(go_json(entries) if entries else "null")  # a nil slice, as Go encodes it
    elif fmt == "table":
        rows = [["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"]]
        rows += [[e["id"], str(e["pid"]), e["status"], e["bundle"], e["created"], e["owner"]] for e in entries]
        sys.stdout.write(table(rows))
    else:
        raise InvalidArgument("invalid format option")
    return 0


def _owner_name(uid: int) -> str:
    """The user's name, or ``#uid`` when there is none (runc's list)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"#{uid}"


def cmd_pause(p: Parsed, root: str) -> int:
    from services.lowlevel import lifecycle

    lifecycle.pause(root, need_id(p))
    return 0


def cmd_resume(p: Parsed, root: str) -> int:
    from services.lowlevel import lifecycle

    lifecycle.resume(root, need_id(p))
    return 0


def _update_resources(p: Parsed) -> dict[str, Any]:
    source = p.flags.get("resources")
    if source is not None:
        if source == "-":
            raw = sys.stdin.read()
        else:
            with open(source) as f:
                raw = f.read()
        try:
            resources = json.loads(raw)
        except ValueError as e:
            raise InvalidArgument(f"update: resources are not valid JSON: {e}") from None
        if not isinstance(resources, dict):
            raise InvalidArgument("update: resources must be a JSON object")
        return resources
    resources: dict[str, Any] = {}

    def put(section: str, key: str, flag: str, conv: Callable[[str], Any] = int) -> None:
        if p.flags.get(flag) is not None:
            try:
                resources.setdefault(section, {})[key] = conv(p.flags[flag])
            except ValueError:
                raise InvalidArgument(f"invalid value {p.flags[flag]!r} for --{flag.replace('_', '-')}") from None

    put("memory", "limit", "memory", _bytes)
    put("memory", "reservation", "memory_reservation", _bytes)
    put("memory", "swap", "memory_swap", _bytes)
    put("cpu", "shares", "cpu_shares")
    put("cpu", "quota", "cpu_quota")
    put("cpu", "period", "cpu_period")
    put("cpu", "realtimePeriod", "cpu_rt_period")
    put("cpu", "realtimeRuntime", "cpu_rt_runtime")
    put("cpu", "cpus", "cpuset_cpus", str)
    put("cpu", "mems", "cpuset_mems", str)
    put("pids", "limit", "pids_limit")
    put("blockIO", "weight", "blkio_weight")
    return resources


def _bytes(text: str) -> int:
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    t = text.strip().lower().rstrip("b")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def cmd_update(p: Parsed, root: str) -> int:
    from services.lowlevel.lifecycle import cgroup_of, load_spec_of

    container_id = need_id(p)
    st = state.load(root, container_id)
    if state.current_status(root, st) == state.Status.STOPPED:
        raise FailedPrecondition("container not running")
    resources = _update_resources(p)
    cgroup_of(st).set(resources)
    # Keep the stored spec current, so that later commands see what is in force.
    spec = load_spec_of(root, container_id)
    current = spec.setdefault("linux", {}).setdefault("resources", {})
    for section, values in resources.items():
        if isinstance(values, dict) and isinstance(current.get(section), dict):
            current[section].update(values)
        else:
            current[section] = values
    from services.common.atomic import atomic_write

    path = os.path.join(state.container_dir(root, container_id), state.CONFIG_FILE)
    atomic_write(path, json.dumps(spec).encode(), durable=False)
    return 0


def cmd_events(p: Parsed, root: str) -> int:
    from services.lowlevel import events

    text = p.flags.get("interval") or "5s"
    interval = events.parse_duration(text)
    if interval is None:
        # Go's flag package refuses it while parsing: a usage error, before any argument check.
        message = f'invalid value "{text}" for flag -interval: parse error'
        raise UsageError(message, command="events", banner=f"Incorrect Usage: {message}")
    container_id = need_id(p)
    return events.follow(root, container_id, interval=interval, stats_once=bool(p.flags.get("stats")))


def cmd_spec(p: Parsed, root: str) -> int:
    no_args(p)
    from services.lowlevel.spec import default_spec

    bundle = p.flags.get("bundle") or "."
    path = os.path.join(bundle, "config.json")
    spec = default_spec()
    if p.flags.get("rootless"):
        spec["linux"]["namespaces"].append({"type": "user"})
        spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": os.getuid(), "size": 1}]
        spec["linux"]["gidMappings"] = [{"containerID": 0, "hostID": os.getgid(), "size": 1}]
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        raise AlreadyExists(f"File {path} exists. Remove it first") from None
    with os.fdopen(fd, "w") as f:
        f.write(go_json_indent(spec, "\t"))  # runc's: tabs, no final newline
    return 0


def cmd_features(p: Parsed, root: str) -> int:
    no_args(p)
    from services.lowlevel.features import features

    print(go_json_indent(features(), "    "))
    return 0


def cmd_help(p: Parsed, root: str) -> int:
    """The app's help, or one command's; an unknown topic is runc's error (exit code 3)."""
    from services.lowlevel import usage
    from services.lowlevel.args import COMMANDS

    if not p.args:
        sys.stdout.write(usage.app_help())
    elif p.args[0] in COMMANDS:
        sys.stdout.write(usage.command_help(p.args[0]))
    elif p.args[0] in ("help", "h"):
        sys.stdout.write(usage.app_help())
    else:
        raise UsageError(f"No help topic for '{p.args[0]}'", command=None, banner=None, code=3)
    return 0


def cmd_version(p: Parsed, root: str) -> int:
    from services.lowlevel.usage import version_text

    print(version_text())
    return 0


def cmd_checkpoint(p: Parsed, root: str) -> int:
    need_id(p)
    raise FailedPrecondition(f"{p.command} is not supported: it needs CRIU, which skiff-lowlevel does not use")


_HANDLERS: dict[str, Callable[[Parsed, str], int]] = {
    "create": cmd_create,
    "run": cmd_run,
    "start": cmd_start,
    "state": cmd_state,
    "kill": cmd_kill,
    "delete": cmd_delete,
    "exec": cmd_exec,
    "ps": cmd_ps,
    "list": cmd_list,
    "pause": cmd_pause,
    "resume": cmd_resume,
    "update": cmd_update,
    "events": cmd_events,
    "spec": cmd_spec,
    "features": cmd_features,
    "help": cmd_help,
    "version": cmd_version,
    "checkpoint": cmd_checkpoint,
    "restore": cmd_checkpoint,
}
