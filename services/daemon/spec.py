"""The OCI runtime spec (config.json) of a container: the image's config, then the container's.

Built twice, never stored: at create to check the container's settings (a bad one is the create's
400, not a failed start) and to learn its argv, then at every start, after networking, rendered to
the bytes highlevel writes into the task's bundle. A start therefore sees the record as it is then
(docker update's limits, networks connected meanwhile), as dockerd renders its spec at each start.
"""

from __future__ import annotations

import json
import os
import resource
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.capabilities import ALL_CAPS, DEFAULT_CAPS, bounding_caps
from services.common.config import INIT_PATH_ENV, resolve_init_path
from services.common.errors import Internal, InvalidArgument
from services.common.seccomp_default import default_profile, from_docker_profile
from services.daemon.hostopts import StartContext, apply_spec, with_groups
from services.daemon.mounts import oci_mounts
from services.gen.skiff.daemon.v1 import Container, ContainerConfig, HostConfig, MountPoint

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MASKED_PATHS = [
    "/proc/asound", "/proc/acpi", "/proc/interrupts", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
    "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
    "/sys/devices/virtual/powercap",
]
READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
# Docker's default device rules: deny all, then the usual character devices.
DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
      for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, -1))),
]


CGROUP_PARENT_ENV = "SKIFF_CGROUP_PARENT"
# The image config's keys a spec reads: the record keeps these (image_config), so that a start renders
# the same spec even once the image is gone (docker rmi -f of a used image); and Shell, which health
# probes of the CMD-SHELL kind run under.
IMAGE_KEYS = ("Entrypoint", "Cmd", "Env", "User", "WorkingDir", "Shell")
# The files networking writes for a container; its own versions replace any mount at these places.
NETWORK_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """What a start's networking gives the spec: the namespace to join and the files to bind."""

    netns_path: str  # "": the host's network (no network namespace of its own)
    mounts: Sequence[dict[str, Any]] = field(default_factory=tuple)  # binds of NETWORK_FILES, when written


def cgroup_parent() -> str:
    parent = os.environ.get(CGROUP_PARENT_ENV, "skiff").strip("/")
    if not parent or ".." in parent.split("/"):
        raise InvalidArgument(f"{CGROUP_PARENT_ENV}: invalid cgroup parent {parent!r}")
    return parent


def normalise_cap(name: str) -> str:
    upper = name.strip().upper()
    return upper if upper.startswith("CAP_") or upper == "ALL" else f"CAP_{upper}"


def capabilities(config: ContainerConfig) -> list[str]:
    host = config.host
    if host.privileged:
        # All the engine itself may grant: a capability outside its own bounding set cannot be
        # raised in the container either (capset fails), as in a sandboxed or rootless engine.
        return bounding_caps()
    adds = [normalise_cap(c) for c in host.cap_add]
    drops = [normalise_cap(c) for c in host.cap_drop]
    for cap in adds + drops:
        if cap != "ALL" and cap not in ALL_CAPS:
            raise InvalidArgument(f"unknown capability: \"{cap}\"")
    caps = list(ALL_CAPS) if "ALL" in adds else list(DEFAULT_CAPS)
    caps = [] if "ALL" in drops else [c for c in caps if c not in drops]
    # Docker: an explicit add wins over a drop of ALL.
    caps += [c for c in adds if c != "ALL" and c not in caps]
    return caps


def merge_env(image_env: list[str], env: list[str]) -> list[str]:
    merged: dict[str, str] = {}
    for item in [*image_env, *env]:
        key = item.split("=", 1)[0]
        merged[key] = item
    return list(merged.values())


def config_env(image_env: list[str], env: list[str]) -> list[str]:
    """Config.Env as dockerd stores it: the container's own, then each of the image's it does not set."""
    keys = {item.split("=", 1)[0] for item in env}
    return [*env, *(item for item in image_env if item.split("=", 1)[0] not in keys)]


def resolve_args(image_config: dict[str, Any], config: ContainerConfig) -> list[str]:
    """Docker's rule: an explicit entrypoint drops the image's cmd unless a cmd is given too."""
    if config.entrypoint_set:
        entrypoint = list(config.entrypoint)
        cmd = list(config.cmd)
    else:
        entrypoint = list(image_config.get("Entrypoint") or [])
        cmd = list(config.cmd) or list(image_config.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument("no command specified")
    return args


def _lookup(path: Path, name: str, field: int) -> int | None:
    """A user or group name from the container's /etc/passwd or /etc/group; never outside the root."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(":")
        if len(parts) > field and parts[0] == name:
            try:
                return int(parts[field])
            except ValueError:
                return None
    return None


def resolve_user(rootfs: Path, user: str) -> dict[str, Any]:
    """``uid``, ``name``, ``uid:gid`` or ``name:group`` (blocking: reads the rootfs; call in a thread)."""
    if not user:
        return {"uid": 0, "gid": 0}
    name, _, group = user.partition(":")
    passwd = rootfs / "etc" / "passwd"
    if name.isdigit():
        uid = int(name)
        gid = 0
        for line in _read_lines(passwd):
            parts = line.split(":")
            if len(parts) > 3 and parts[2] == name and parts[3].isdigit():
                gid = int(parts[3])
                break
    else:
        found = _lookup(passwd, name, 2)
        if found is None:
            raise InvalidArgument(f"unable to find user {name}: no matching entries in passwd file")
        uid = found
        gid = _lookup(passwd, name, 3) or 0
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            found_gid = _lookup(rootfs / "etc" / "group", group, 2)
            if found_gid is None:
                raise InvalidArgument(f"unable to find group {group}: no matching entries in group file")
            gid = found_gid
    return {"uid": uid, "gid": gid}


def _read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()
    except OSError:
        return []


# Docker's ulimit names (go-units); each is RLIMIT_<NAME upper-cased> in the OCI spec.
ULIMIT_NAMES = ("as", "core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
                "rss", "rtprio", "rttime", "sigpending", "stack")
INIT_DEST = "/sbin/docker-init"  # where Docker mounts its init; the command becomes INIT_DEST -- args
CPU_PERIOD = 100_000  # microseconds: Docker's period for NanoCpus


def parse_cpu_list(text: str) -> set[int]:
    """A kernel list ("0-3,5") as a set; ValueError when it is not one."""
    numbers: set[int] = set()
    for part in text.strip().split(","):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(text)
        first, last = int(low), int(high) if dash else int(low)
        if last < first or last > 1 << 16:
            raise ValueError(text)
        numbers.update(range(first, last + 1))
    return numbers


def _available(paths: tuple[str, ...], fallback: str) -> str:
    for path in paths:
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text:
            return text
    return fallback


def _check_cpuset(value: str, kind: str) -> None:
    """Docker's checks of CpusetCpus/CpusetMems against what this host (its root cpuset) has."""
    if not value:
        return
    if kind == "cpus":
        available = _available(("/sys/fs/cgroup/cpuset/cpuset.cpus", "/sys/fs/cgroup/cpuset.cpus.effective",
                                "/sys/devices/system/cpu/online"), "0")
        what = "CPUs"
    else:
        available = _available(("/sys/fs/cgroup/cpuset/cpuset.mems", "/sys/fs/cgroup/cpuset.mems.effective",
                                "/sys/devices/system/node/online"), "0")
        what = "memory nodes"
    try:
        requested = parse_cpu_list(value)
    except ValueError:
        raise InvalidArgument(f"Invalid value {value} for cpuset {kind}") from None
    if not requested <= parse_cpu_list(available):
        raise InvalidArgument(f"Requested {what} are not available - requested {value}, available: {available}")


def cpu_resources(host: HostConfig) -> dict[str, Any]:
    """OCI linux.resources.cpu: shares, quota/period (NanoCpus as a quota of a 100 ms period), cpuset."""
    cpu: dict[str, Any] = {}
    if host.nano_cpus:
        if host.cpu_quota or host.cpu_period:
            raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period/Quota cannot both be set")
        count = os.cpu_count() or 1
        if host.nano_cpus < 10_000_000 or host.nano_cpus > count * 1_000_000_000:
            raise InvalidArgument(f"Range of CPUs is from 0.01 to {count}.00, as there are only {count} CPUs "
                                  "available")
        cpu["quota"], cpu["period"] = host.nano_cpus * CPU_PERIOD // 1_000_000_000, CPU_PERIOD
    else:
        if host.cpu_quota:
            cpu["quota"] = host.cpu_quota
        if host.cpu_period:
            cpu["period"] = host.cpu_period
    if host.cpu_shares:
        cpu["shares"] = host.cpu_shares
    _check_cpuset(host.cpuset_cpus, "cpus")
    _check_cpuset(host.cpuset_mems, "mems")
    if host.cpuset_cpus:
        cpu["cpus"] = host.cpuset_cpus
    if host.cpuset_mems:
        cpu["mems"] = host.cpuset_mems
    return cpu


def rlimits(host: HostConfig) -> list[dict[str, Any]]:
    """Docker's default nofile (1048576 where the engine's own hard limit allows), then Ulimits."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nofile = 1048576 if hard == resource.RLIM_INFINITY else min(hard, 1048576)
    limits: dict[str, dict[str, Any]] = {"RLIMIT_NOFILE": {"type": "RLIMIT_NOFILE", "hard": nofile, "soft": nofile}}
    for ulimit in host.ulimits:
        if ulimit.name not in ULIMIT_NAMES:
            raise InvalidArgument(f"invalid ulimit type: {ulimit.name}")
        if ulimit.soft < 0 or ulimit.hard < 0:
            raise InvalidArgument(f"invalid ulimit {ulimit.name}: negative (unlimited) values are not supported")
        if ulimit.soft > ulimit.hard:
            raise InvalidArgument(f"ulimit soft limit must be less than or equal to hard limit: "
                                  f"{ulimit.soft} > {ulimit.hard}")
        kind = f"RLIMIT_{ulimit.name.upper()}"
        limits[kind] = {"type": kind, "hard": ulimit.hard, "soft": ulimit.soft}
    return list(limits.values())


def seccomp(host: HostConfig, caps: list[str]) -> dict[str, Any] | None:
    """OCI linux.seccomp: none when privileged or unconfined; the client's profile; else ours."""
    if host.privileged or host.seccomp_profile == "unconfined":
        return None
    if not host.seccomp_profile or host.seccomp_profile == "builtin":
        return default_profile(caps)
    try:
        profile = json.loads(host.seccomp_profile)
    except (ValueError, RecursionError) as exc:
        raise InvalidArgument(f"Decoding seccomp profile failed: {exc}") from None
    oci = from_docker_profile(profile, caps)
    # The runtime's own parser: a profile it cannot load is a 400 now, not a failed start later.
    from services.common.oci_seccomp import validate_seccomp

    try:
        validate_seccomp(oci)
    except InvalidArgument as exc:
        raise InvalidArgument(f"invalid seccomp profile: {exc.message}") from None
    return oci


def init_mount() -> dict[str, Any]:
    """The engine's init, read-only at /sbin/docker-init (a 500 naming the setting when it is missing)."""
    path = resolve_init_path()
    if not os.path.isfile(path) or not os.access(path, os.X_OK):
        raise Internal(f"--init: the init binary {path} is missing or not executable (install tini, or set "
                       f"{INIT_PATH_ENV})")
    return {"destination": INIT_DEST, "type": "bind", "source": path, "options": ["rbind", "ro", "nosuid", "nodev"]}


def image_keys(image_config: dict[str, Any]) -> bytes:
    """The part of an image's config the record keeps for its starts (IMAGE_KEYS), as JSON."""
    return json.dumps({k: image_config[k] for k in IMAGE_KEYS if image_config.get(k)}).encode()


def _process_env(container_id: str, image_config: dict[str, Any], config: ContainerConfig) -> list[str]:
    env = merge_env(list(image_config.get("Env") or [DEFAULT_PATH]), list(config.env))
    hostname = config.hostname or container_id[:12]
    env = merge_env([f"HOSTNAME={hostname}"], env)
    if not any(e.startswith("PATH=") for e in env):
        env.insert(0, DEFAULT_PATH)
    if config.tty and not any(e.startswith("TERM=") for e in env):
        env.append("TERM=xterm")
    return env


def build_process(container_id: str, image_config: dict[str, Any], config: ContainerConfig,
                  rootfs: Path) -> dict[str, Any]:
    """The spec's ``process``: the container's, and the base of its execs' (blocking: reads the rootfs)."""
    host = config.host
    caps = capabilities(config)
    args = resolve_args(image_config, config)
    if host.init:
        args = [INIT_DEST, "--", *args]
    user = config.user or image_config.get("User") or ""
    return {
        "terminal": config.tty,
        "user": with_groups(resolve_user(rootfs, user), rootfs, host.group_add, user),
        "args": args,
        "env": _process_env(container_id, image_config, config),
        "cwd": config.working_dir or image_config.get("WorkingDir") or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "rlimits": rlimits(host),
        "noNewPrivileges": host.no_new_privileges,
    }


def build_spec(container_id: str, image_config: dict[str, Any], config: ContainerConfig, rootfs: Path, *,
               mounts: Sequence[MountPoint] = (), network: NetworkAttachment | None = None,
               context: StartContext | None = None) -> dict[str, Any]:
    """The whole config.json (blocking for the user lookup: call in a thread).

    ``mounts`` are the container's resolved volumes, binds and tmpfs (a user's replaces a default at the
    same place); ``network`` is its start's networking: without it (at create) the spec has a network
    namespace of its own unless the mode is host, as a start's would; ``context`` what its start
    takes from other containers (hostopts: a pid namespace to join, links' variables)."""
    host = config.host
    caps = capabilities(config)
    namespaces = [{"type": t} for t in ("mount", "uts", "pid", "ipc", "cgroup")]
    if network is not None:
        if network.netns_path:
            namespaces.append({"type": "network", "path": network.netns_path})
    elif host.network_mode != "host":
        namespaces.append({"type": "network"})
    resources: dict[str, Any] = {"devices": DEVICE_RULES if not host.privileged else [{"allow": True, "access": "rwm"}]}
    if host.memory > 0:
        resources["memory"] = {"limit": host.memory}
    if host.pids_limit > 0:
        resources["pids"] = {"limit": host.pids_limit}
    if cpu := cpu_resources(host):
        resources["cpu"] = cpu
    linux: dict[str, Any] = {
        "namespaces": namespaces,
        "resources": resources,
        # Under one parent so that every container of the engine is found (and cleaned) together;
        # SKIFF_CGROUP_PARENT gives engines sharing a host (test stacks) parents of their own.
        "cgroupsPath": f"/{cgroup_parent()}/{container_id}",
    }
    if not host.privileged:
        linux["maskedPaths"] = MASKED_PATHS
        linux["readonlyPaths"] = READONLY_PATHS
    if host.sysctls:
        linux["sysctl"] = dict(host.sysctls)
    if (filter_ := seccomp(host, caps)) is not None:
        linux["seccomp"] = filter_
    extra_mounts = [init_mount()] if host.init else []
    process = build_process(container_id, image_config, config, rootfs)
    sys_options = ["nosuid", "noexec", "nodev", "ro" if not host.privileged else "rw"]
    base = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime",
                                                                              "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": sys_options},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec",
                                                                                       "nodev"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        *extra_mounts,
    ]
    if mounts:
        ours = oci_mounts(list(mounts))
        taken = {m["destination"] for m in ours}
        # A user's mount replaces the default one at the same place (e.g. a tmpfs on /dev/shm).
        base = [m for m in base if m["destination"] not in taken] + ours
        # As dockerd: mounts made below a shared bind reach the host only from a shared root.
        kinds = {m.propagation for m in mounts}
        if kinds & {"shared", "rshared"}:
            linux["rootfsPropagation"] = "rshared"
        elif kinds & {"slave", "rslave"}:
            linux["rootfsPropagation"] = "rslave"
    if network is not None:
        base = [m for m in base if m["destination"] not in NETWORK_FILES] + list(network.mounts)
    spec = {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": str(rootfs), "readonly": host.readonly_rootfs},
        "hostname": config.hostname or container_id[:12],
        "mounts": base,
        "linux": linux,
    }
    apply_spec(spec, config, context)  # PidMode, UTSMode, CgroupnsMode, device rules, swap
    return spec


def render_spec(record: Container, image_config: dict[str, Any], network: NetworkAttachment,
                context: StartContext | None = None) -> bytes:
    """A start's config.json bytes, from the record as it is now (blocking: call in a thread)."""
    spec = build_spec(record.id, image_config, record.config, Path(record.rootfs),
                      mounts=list(record.mount_points), network=network, context=context)
    return json.dumps(spec).encode()
