"""The default seccomp profile of a container, and Docker-format profiles made into OCI ones.

What we chose: a *denylist*. Everything is allowed (``SCMP_ACT_ALLOW``) except the groups below,
which fail with EPERM. Docker's own default profile is an allowlist of about 350 syscalls with the
same effect for the calls listed here (its documentation's "significant syscalls blocked" table);
a denylist is short enough to read and review, and a syscall the kernel adds later stays usable
rather than failing mysteriously. The price: a new *dangerous* syscall is not blocked until it is
added here.

Like Docker's profile, most groups are lifted when the container holds the capability that makes
them legitimate (``--cap-add SYS_ADMIN`` allows mount, unshare, setns and namespace flags of clone;
``--cap-add SYS_TIME`` allows setting the clock, and so on). Privileged containers and
``--security-opt seccomp=unconfined`` get no filter at all (the caller decides that).

Limits of a denylist that the runtime's filter language imposes (services/lowlevel/seccomp.py
splits several conditions on one argument into OR-ed rules, as runc does):
- ``clone`` is refused when any namespace flag is set: one rule per flag bit, OR-ed. Flags are
  argument 0 on every architecture but s390/s390x (argument 1); this profile targets the others.
- ``clone3`` takes its flags in a struct the filter cannot read, so without CAP_SYS_ADMIN it fails
  with ENOSYS (Docker's choice too): libc then falls back to ``clone``, which is checked.
- ``personality`` is not filtered: Docker allows only a few personas, which needs "none of these
  values" (an AND on one argument) that cannot be written as OR-ed denials; a persona only changes
  the calling process (ASLR off, READ_IMPLIES_EXEC), not the host.
- ``ptrace`` and ``process_vm_readv``/``writev`` are allowed, as Docker allows them on kernels from
  4.8 on (the seccomp bypass through ptrace was fixed there); the PID namespace and the dropped
  CAP_SYS_PTRACE already confine them to the container's own processes.
Syscalls that libseccomp or the architecture does not know are skipped by the runtime, not errors.
"""

from __future__ import annotations

import errno
import os
import platform
from typing import Any

from services.common.errors import InvalidArgument

# (syscalls, capabilities any one of which lifts the block (empty: always blocked), why)
_GROUPS: list[tuple[tuple[str, ...], tuple[str, ...], str]] = [
    # Kernel modules and kexec replace or extend the one kernel every container shares.
    (("init_module", "finit_module", "delete_module"), ("CAP_SYS_MODULE",), "load/unload kernel modules"),
    (("kexec_load", "kexec_file_load", "reboot"), ("CAP_SYS_BOOT",), "boot another kernel; reboot the host"),
    # Obsolete or removed syscalls: nothing legitimate needs them; old kernel code is attack surface.
    (
        (
            "create_module",
            "get_kernel_syms",
            "query_module",
            "nfsservctl",
            "uselib",
            "sysfs",
            "_sysctl",
            "ustat",
            "vm86",
            "vm86old",
            "afs_syscall",
            "break",
            "ftime",
            "getpmsg",
            "gtty",
            "lock",
            "mpx",
            "prof",
            "profil",
            "putpmsg",
            "security",
            "stty",
            "tuxcall",
            "ulimit",
            "vserver",
        ),
        (),
        "obsolete",
    ),
    # Host-wide state that is not namespaced.
    (("swapon", "swapoff"), (), "start/stop swapping for the whole host"),
    (("acct",), ("CAP_SYS_PACCT",), "process accounting is host-wide"),
    (
        ("clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "settimeofday", "stime"),
        ("CAP_SYS_TIME",),
        "the clock is not namespaced",
    ),
    (
        ("quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init"),
        ("CAP_SYS_ADMIN",),
        "host filesystem quotas, profiling cookies and whole-filesystem notification",
    ),
    (("syslog",), ("CAP_SYS_ADMIN", "CAP_SYSLOG"), "the kernel log may hold addresses and host data"),
    (("vhangup",), ("CAP_SYS_TTY_CONFIG",), "hang up the controlling terminal"),
    (("iopl", "ioperm"), ("CAP_SYS_RAWIO",), "direct I/O port access"),
    # The kernel keyring is not namespaced: keys of the host or other containers.
    (("keyctl", "add_key", "request_key"), (), "the keyring is not namespaced"),
    # Large kernel attack surface (many privilege escalation bugs); Docker blocks them as well.
    (("bpf",), ("CAP_SYS_ADMIN", "CAP_BPF"), "eBPF programs"),
    (("perf_event_open",), ("CAP_SYS_ADMIN", "CAP_PERFMON"), "performance events leak host information"),
    (("userfaultfd",), ("CAP_SYS_PTRACE",), "used to win kernel race conditions"),
    (("io_uring_setup", "io_uring_enter", "io_uring_register"), (), "io_uring bypasses syscall filtering"),
    # File handles skip path lookup: the old "shocker" breakout out of a bind mount.
    (("open_by_handle_at",), ("CAP_DAC_READ_SEARCH",), "open files by handle, outside the mounts"),
    (("name_to_handle_at",), ("CAP_SYS_ADMIN",), "the other half of open_by_handle_at"),
    # Mounts and namespaces: what containment rests on (the runtime has done its pivot_root and
    # mounts before the filter is loaded, so blocking them here costs the container nothing).
    (
        (
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "move_mount",
            "open_tree",
            "mount_setattr",
            "unshare",
            "setns",
            "sethostname",
            "setdomainname",
        ),
        ("CAP_SYS_ADMIN",),
        "mounts and new namespaces (user namespaces are a frequent escalation path)",
    ),
    # NUMA memory policy of the host's memory.
    (
        ("mbind", "set_mempolicy", "get_mempolicy", "move_pages", "set_mempolicy_home_node", "migrate_pages"),
        ("CAP_SYS_NICE",),
        "NUMA placement affects the whole host",
    ),
    (("kcmp", "pidfd_getfd", "process_madvise"), ("CAP_SYS_PTRACE",), "inspect other processes' internals"),
]

# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET (Docker's mask 0x7E020000).
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


def default_profile(caps: list[str]) -> dict[str, Any]:
    """The OCI ``linux.seccomp`` object for a container with these (bounding) capabilities."""
    held = set(caps)
    blocked: list[str] = []
    for names, lifting_caps, _why in _GROUPS:
        if not lifting_caps or not held.intersection(lifting_caps):
            blocked.extend(names)
    syscalls: list[dict[str, Any]] = [{"names": blocked, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}]
    if "CAP_SYS_ADMIN" not in held:
        syscalls.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ERRNO",
                "errnoRet": errno.EPERM,
                # Several conditions on one argument: OR-ed (one rule each), so any namespace flag denies.
                "args": [
                    {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}
                    for flag in _CLONE_NS_FLAGS
                ],
            }
        )
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}


# Docker's architecture names (its profile's archMap) of the machine we run on.
_NATIVE_ARCH = {
    "x86_64": "SCMP_ARCH_X86_64",
    "aarch64": "SCMP_ARCH_AARCH64",
    "armv7l": "SCMP_ARCH_ARM",
    "ppc64le": "SCMP_ARCH_PPC64LE",
    "s390x": "SCMP_ARCH_S390X",
    "riscv64": "SCMP_ARCH_RISCV64",
    "i686": "SCMP_ARCH_X86",
    "mips64": "SCMP_ARCH_MIPS64",
}


def _kernel_version() -> tuple[int, int]:
    release = os.uname().release
    parts = release.split("-")[0].split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return 0, 0


def _min_kernel(text: object, field: str) -> tuple[int, int]:
    parts = str(text).split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts[:2]):
        raise InvalidArgument(f"invalid seccomp profile: {field}.minKernel: invalid kernel version {text!r}")
    return int(parts[0]), int(parts[1])


def from_docker_profile(profile: Any, caps: list[str]) -> dict[str, Any]:
    """A profile as Docker takes it (``--security-opt seccomp=FILE``: the CLI sends the content)
    made into the OCI object, as dockerd does: ``archMap`` picks the native architecture and its
    sub-architectures; a rule's ``includes``/``excludes`` (caps, arches, minKernel) decide whether it
    applies to this container. An OCI-shaped profile passes through the same way. The runtime
    checks the rest (actions, operators, errno values) and refuses what it cannot load."""
    if not isinstance(profile, dict):
        raise InvalidArgument("invalid seccomp profile: expected a JSON object")
    if profile.get("architectures") and profile.get("archMap"):
        raise InvalidArgument(
            "invalid seccomp profile: both 'architectures' and 'archMap' are specified in the "
            "seccomp profile, use either 'architectures' or 'archMap'"
        )
    if "defaultAction" not in profile:
        raise InvalidArgument("invalid seccomp profile: defaultAction is required")
    native = _NATIVE_ARCH.get(platform.machine(), "")
    out: dict[str, Any] = {"defaultAction": profile["defaultAction"]}
    for key in ("defaultErrnoRet", "flags"):
        if profile.get(key) is not None:
            out[key] = profile[key]
    if profile.get("architectures"):
        out["architectures"] = profile["architectures"]
    arch_map = profile.get("archMap") or []
    if not isinstance(arch_map, list):
        raise InvalidArgument("invalid seccomp profile: archMap: expected a list")
    for entry in arch_map:
        if not isinstance(entry, dict):
            raise InvalidArgument("invalid seccomp profile: archMap: expected a list of objects")
        if entry.get("architecture") == native:
            out["architectures"] = [native, *(entry.get("subArchitectures") or [])]
    held, kernel = set(caps), _kernel_version()
    syscalls = profile.get("syscalls") or []
    if not isinstance(syscalls, list):
        raise InvalidArgument("invalid seccomp profile: syscalls: expected a list")
    rules: list[dict[str, Any]] = []
    for i, call in enumerate(syscalls):
        field = f"syscalls[{i}]"
        if not isinstance(call, dict):
            raise InvalidArgument(f"invalid seccomp profile: {field}: expected an object")
        if call.get("name") and call.get("names"):
            raise InvalidArgument("invalid seccomp profile: use either 'name' or 'names'")
        names = call.get("names") or ([call["name"]] if call.get("name") else [])
        includes, excludes = call.get("includes") or {}, call.get("excludes") or {}
        if not isinstance(includes, dict) or not isinstance(excludes, dict):
            raise InvalidArgument(f"invalid seccomp profile: {field}: includes/excludes: expected objects")
        for key in ("caps", "arches"):
            for part, value in (("includes", includes.get(key)), ("excludes", excludes.get(key))):
                if value is not None and not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                    raise InvalidArgument(f"invalid seccomp profile: {field}.{part}.{key}: expected a list of strings")
        if includes.get("arches") and native not in includes["arches"]:
            continue
        if includes.get("caps") and not all(c in held for c in includes["caps"]):
            continue
        if includes.get("minKernel") and kernel < _min_kernel(includes["minKernel"], field):
            continue
        if excludes.get("arches") and native in excludes["arches"]:
            continue
        if excludes.get("caps") and any(c in held for c in excludes["caps"]):
            continue
        if excludes.get("minKernel") and kernel >= _min_kernel(excludes["minKernel"], field):
            continue
        rule = {"names": names, "action": call.get("action")}
        for key in ("errnoRet", "args"):
            if call.get(key) is not None:
                rule[key] = call[key]
        rules.append(rule)
    out["syscalls"] = rules
    return out
