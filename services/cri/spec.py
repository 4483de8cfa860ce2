"""The OCI runtime spec (config.json) of a container in a pod, from its CRI config, the pod and the image.

The container joins its pod's held namespaces (podns.py) by path: network (unless the pod is on the
host's network), IPC when the pod shares it, and UTS (the pod's hostname). PID is the container's
own unless it asks for the host's or the pod's (a pod-wide PID namespace is held by the pod's pause
process, pause.py). The pod's resolv.conf, hosts and hostname are bound in, as the CRI plugins of
containerd and CRI-O do.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import betterproto

from services.common.capabilities import DEFAULT_CAPS, bounding_caps
from services.common.errors import InvalidArgument, NotFound
from services.cri import seccomp
from services.cri.store import SandboxRecord
from services.gen.runtime.v1 import (
    ContainerConfig,
    LinuxContainerResources,
    MountPropagation,
    NamespaceMode,
    SecurityProfile,
    SecurityProfileProfileType,
)

DEFAULT_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MASKED_PATHS = [
    "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
    "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
]
READONLY_PATHS = ["/proc/asound", "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
DEVICE_RULES = [
    {"allow": False, "access": "rwm"},
    *({"allow": True, "type": "c", "major": major, "minor": minor, "access": "rwm"}
      for major, minor in ((1, 3), (1, 5), (1, 7), (1, 8), (1, 9), (5, 0), (5, 1), (5, 2), (136, -1))),
]
PROPAGATION = {
    MountPropagation.PROPAGATION_PRIVATE: "rprivate",
    MountPropagation.PROPAGATION_HOST_TO_CONTAINER: "rslave",
    MountPropagation.PROPAGATION_BIDIRECTIONAL: "rshared",
}


def own_oom_score_adj() -> int:
    """What this process has: a process without CAP_SYS_RESOURCE cannot give a child less."""
    try:
        return int(Path("/proc/self/oom_score_adj").read_text())
    except (OSError, ValueError):
        return 0


def clamp_oom(value: int) -> int:
    """As containerd's restrict_oom_score_adj: never below the engine's own score, never out of range."""
    return max(min(value, 1000), own_oom_score_adj(), -1000)


def _cap_names(names: list[str]) -> list[str]:
    return ["ALL" if n.upper() == "ALL" else "CAP_" + n.upper().removeprefix("CAP_") for n in names]


def capabilities(config: ContainerConfig) -> list[str]:
    sc = config.linux.security_context
    everything = bounding_caps()
    if sc is not None and sc.privileged:
        return everything
    caps = [c for c in DEFAULT_CAPS if c in everything]
    if sc is not None and sc.capabilities:
        adds, drops = _cap_names(sc.capabilities.add_capabilities), _cap_names(sc.capabilities.drop_capabilities)
        caps = everything if "ALL" in adds else caps + [c for c in adds if c not in caps]
        caps = [] if "ALL" in drops else [c for c in caps if c not in drops]
        caps += [c for c in adds if c != "ALL" and c not in caps]
        caps = [c for c in caps if c in everything]
    return caps


def seccomp_filter(config: ContainerConfig, caps: list[str]) -> dict[str, Any] | None:
    sc = config.linux.security_context
    if sc is None or sc.privileged:
        return None
    profile: SecurityProfile = sc.seccomp
    if _set(sc, "seccomp"):
        if profile.profile_type == SecurityProfileProfileType.Localhost:
            return seccomp.localhost(profile.localhost_ref, caps)
        if profile.profile_type == SecurityProfileProfileType.RuntimeDefault:
            return seccomp.runtime_default(caps)
        return None
    path = sc.seccomp_profile_path
    if path in ("runtime/default", "docker/default"):
        return seccomp.runtime_default(caps)
    if path.startswith("localhost/"):
        return seccomp.localhost(path.removeprefix("localhost/"), caps)
    if path in ("", "unconfined"):
        return None
    raise InvalidArgument(f"seccomp profile `{path}`: unknown")


def _passwd_lookup(rootfs: Path, name: str | None, uid: int | None) -> tuple[int, int]:
    """(uid, gid) from the image's /etc/passwd (a root's file, read without following it out)."""
    try:
        text = _read_in_root(rootfs, "etc/passwd")
    except OSError:
        text = ""
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) < 4 or not parts[2].isdigit() or not parts[3].isdigit():
            continue
        if (name is not None and parts[0] == name) or (uid is not None and int(parts[2]) == uid):
            return int(parts[2]), int(parts[3])
    if name is not None:
        raise InvalidArgument(f"user `{name}` not found in the image's /etc/passwd")
    return uid or 0, 0


def _read_in_root(rootfs: Path, relative: str) -> str:
    path = rootfs / relative
    if path.is_symlink() or not str(path.resolve()).startswith(str(rootfs.resolve())):
        raise OSError("outside the root")
    return path.read_text()


def user_of(config: ContainerConfig, image_user: str, rootfs: Path) -> dict[str, Any]:
    sc = config.linux.security_context
    if _set(sc, "run_as_group") and not _set(sc, "run_as_user") and not sc.run_as_username:
        raise InvalidArgument("run_as_group is set without run_as_user or run_as_username")
    gid: int | None = None
    name: str | None = None
    if sc is not None and _set(sc, "run_as_user"):
        uid, found_gid = _passwd_lookup(rootfs, None, sc.run_as_user.value)
    elif sc is not None and sc.run_as_username:
        uid, found_gid = _passwd_lookup(rootfs, sc.run_as_username, None)
        name = sc.run_as_username
    elif image_user:
        user, _, group = image_user.partition(":")
        uid, found_gid = _passwd_lookup(rootfs, None, int(user)) if user.isdigit() else _passwd_lookup(
            rootfs, user, None)
        if group.isdigit():
            gid = int(group)
    else:
        uid, found_gid = 0, 0
    if sc is not None and _set(sc, "run_as_group"):
        gid = sc.run_as_group.value
    user: dict[str, Any] = {"uid": uid, "gid": found_gid if gid is None else gid}
    # As containerd: the groups the image's /etc/group gives the user, then the pod's supplemental ones.
    gids = _image_groups(rootfs, name or _passwd_name(rootfs, uid))
    gids += [int(g) for g in sc.supplemental_groups if int(g) not in gids]
    if gids:
        user["additionalGids"] = gids
    return user


def _passwd_name(rootfs: Path, uid: int) -> str | None:
    try:
        text = _read_in_root(rootfs, "etc/passwd")
    except OSError:
        return None
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) > 2 and parts[2] == str(uid):
            return parts[0]
    return None


def _image_groups(rootfs: Path, name: str | None) -> list[int]:
    if not name:
        return []
    try:
        text = _read_in_root(rootfs, "etc/group")
    except OSError:
        return []
    found = []
    for line in text.splitlines():
        parts = line.split(":")
        if len(parts) == 4 and parts[2].isdigit() and name in parts[3].split(","):
            found.append(int(parts[2]))
    return found


def _set(message: Any, field_name: str) -> bool:
    """A message field (Int64Value, SecurityProfile) the caller sent, told from betterproto's default."""
    return betterproto.serialized_on_wire(getattr(message, field_name))


def argv(config: ContainerConfig, image_config: dict[str, Any]) -> list[str]:
    """As kubelet's container runtimes: command replaces the entrypoint (and the image's cmd), args the cmd."""
    entrypoint = list(config.command) or list(image_config.get("Entrypoint") or [])
    cmd = list(config.args) if (config.args or config.command) else list(image_config.get("Cmd") or [])
    args = entrypoint + cmd
    if not args:
        raise InvalidArgument("no command specified: neither the config nor the image names one")
    return args


def environment(config: ContainerConfig, image_config: dict[str, Any]) -> list[str]:
    env: dict[str, str] = {}
    for entry in image_config.get("Env") or [DEFAULT_PATH]:
        key, _, value = entry.partition("=")
        env[key] = value
    for kv in config.envs:
        env[kv.key] = kv.value
    return [f"{k}={v}" for k, v in env.items()]


def resources(res: LinuxContainerResources | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if res is None:
        return out
    cpu: dict[str, Any] = {}
    if res.cpu_shares:
        cpu["shares"] = res.cpu_shares
    if res.cpu_quota:
        cpu["quota"] = res.cpu_quota
    if res.cpu_period:
        cpu["period"] = res.cpu_period
    if res.cpuset_cpus:
        cpu["cpus"] = res.cpuset_cpus
    if res.cpuset_mems:
        cpu["mems"] = res.cpuset_mems
    if cpu:
        out["cpu"] = cpu
    if res.memory_limit_in_bytes:
        out["memory"] = {"limit": res.memory_limit_in_bytes}
        if res.memory_swap_limit_in_bytes:
            out["memory"]["swap"] = res.memory_swap_limit_in_bytes
    if res.hugepage_limits:
        out["hugepageLimits"] = [{"pageSize": h.page_size, "limit": h.limit} for h in res.hugepage_limits]
    if res.unified:
        out["unified"] = dict(res.unified)
    return out


def _namespaces(config: ContainerConfig, sandbox: SandboxRecord) -> list[dict[str, str]]:
    sc = config.linux.security_context
    opts = sc.namespace_options if sc is not None else None
    spaces = [{"type": "mount"}]
    if sandbox.netns:
        spaces.append({"type": "network", "path": sandbox.netns})
    pid_mode = opts.pid if opts is not None else NamespaceMode.CONTAINER
    if pid_mode == NamespaceMode.TARGET:
        raise InvalidArgument("pid namespace mode TARGET: not supported")
    if pid_mode == NamespaceMode.POD:
        if not sandbox.pause_pid:
            raise InvalidArgument("pid namespace mode POD: the pod was not made with a shared PID namespace")
        spaces.append({"type": "pid", "path": f"/proc/{sandbox.pause_pid}/ns/pid"})
    elif pid_mode != NamespaceMode.NODE:
        spaces.append({"type": "pid"})
    if sandbox.ipc:
        spaces.append({"type": "ipc", "path": sandbox.ipc})
    if sandbox.uts:
        spaces.append({"type": "uts", "path": sandbox.uts})
    return spaces


def _bind(source: str, destination: str, readonly: bool, propagation: str = "rprivate") -> dict[str, Any]:
    options = ["rbind", propagation] + (["ro"] if readonly else ["rw"])
    return {"destination": destination, "type": "bind", "source": source, "options": options}


def _devices(config: ContainerConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    devices, rules = [], []
    for dev in config.devices:
        try:
            st = os.stat(dev.host_path)
        except OSError:
            raise NotFound(f"device `{dev.host_path}`: not found on the node") from None
        kind = "c" if stat.S_ISCHR(st.st_mode) else "b" if stat.S_ISBLK(st.st_mode) else ""
        if not kind:
            raise InvalidArgument(f"device `{dev.host_path}`: not a device")
        major, minor = os.major(st.st_rdev), os.minor(st.st_rdev)
        devices.append({"path": dev.container_path, "type": kind, "major": major, "minor": minor,
                        "fileMode": stat.S_IMODE(st.st_mode), "uid": 0, "gid": 0})
        rules.append({"allow": True, "type": kind, "major": major, "minor": minor,
                      "access": dev.permissions or "rwm"})
    return devices, rules


def build(container_id: str, config: ContainerConfig, sandbox: SandboxRecord, image_config: dict[str, Any],
          rootfs: Path, cgroups_path: str) -> dict[str, Any]:
    """The whole config.json (blocking: reads the image's /etc/passwd and the devices)."""
    sc = config.linux.security_context
    privileged = bool(sc is not None and sc.privileged)
    caps = capabilities(config)
    res = config.linux.resources
    process: dict[str, Any] = {
        "terminal": config.tty,
        "user": user_of(config, str(image_config.get("User") or ""), rootfs),
        "args": argv(config, image_config),
        "env": environment(config, image_config),
        "cwd": config.working_dir or image_config.get("WorkingDir") or "/",
        "capabilities": {k: caps for k in ("bounding", "effective", "permitted")},
        "noNewPrivileges": bool(sc is not None and sc.no_new_privs),
        "oomScoreAdj": clamp_oom(res.oom_score_adj if res is not None else 0),
    }
    devices, device_rules = _devices(config)
    linux_resources: dict[str, Any] = {"devices": ([{"allow": True, "access": "rwm"}] if privileged
                                                   else DEVICE_RULES + device_rules)}
    linux_resources.update(resources(res))
    linux: dict[str, Any] = {"namespaces": _namespaces(config, sandbox), "resources": linux_resources,
                             "cgroupsPath": cgroups_path}
    if devices:
        linux["devices"] = devices
    if not privileged:
        linux["maskedPaths"] = list(sc.masked_paths) if sc is not None and sc.masked_paths else MASKED_PATHS
        linux["readonlyPaths"] = (list(sc.readonly_paths) if sc is not None and sc.readonly_paths
                                  else READONLY_PATHS)
    pod_linux = sandbox.config.linux
    if pod_linux is not None and pod_linux.sysctls:
        linux["sysctl"] = dict(pod_linux.sysctls)
    if (profile := seccomp_filter(config, caps)) is not None:
        linux["seccomp"] = profile
    mounts = [
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime",
                                                                              "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "rw" if privileged else "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "rw" if privileged else "ro"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    ]
    readonly_root = bool(sc is not None and sc.readonly_rootfs)
    theirs = {m.container_path for m in config.mounts}
    for name in ("hosts", "resolv.conf", "hostname"):
        if f"/etc/{name}" not in theirs and sandbox.files:
            mounts.append(_bind(f"{sandbox.files}/{name}", f"/etc/{name}", readonly_root))
    for m in config.mounts:
        if not m.host_path or not m.container_path.startswith("/"):
            raise InvalidArgument(f"mount `{m.host_path}:{m.container_path}`: absolute paths are needed")
        if not os.path.exists(m.host_path):
            os.makedirs(m.host_path, exist_ok=True)  # as containerd: a missing host folder is made
        mounts = [x for x in mounts if x["destination"] != m.container_path]
        mounts.append(_bind(m.host_path, m.container_path, m.readonly, PROPAGATION.get(m.propagation, "rprivate")))
    # A bidirectional (or host-to-container) mount needs the root's propagation to carry it, as containerd.
    kinds = {PROPAGATION.get(m.propagation) for m in config.mounts}
    if "rshared" in kinds:
        linux["rootfsPropagation"] = "rshared"
    elif "rslave" in kinds:
        linux["rootfsPropagation"] = "rslave"
    if privileged:
        linux.pop("maskedPaths", None)
    return {
        "ociVersion": "1.0.2",
        "process": process,
        "root": {"path": str(rootfs), "readonly": readonly_root},
        "mounts": mounts,
        "linux": linux,
    }
