"""The seccomp profiles a CRI container asks for: RuntimeDefault, Unconfined or a localhost file.

RuntimeDefault is a denylist of the syscalls that reach host-wide state (modules, kexec, the clock,
swap, the keyring, accounting) or that containment rests on (mounts and new namespaces), each lifted
by the capability that makes it legitimate, as Docker's default profile does. It is a short form of
the daemon's default (services/daemon/seccomp_default.py), which skiff-cri may not import: once
that module is shared (services/common), both should use the one profile.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument

_GROUPS: list[tuple[tuple[str, ...], tuple[str, ...]]] = [
    (("init_module", "finit_module", "delete_module"), ("CAP_SYS_MODULE",)),
    (("kexec_load", "kexec_file_load", "reboot"), ("CAP_SYS_BOOT",)),
    (("swapon", "swapoff"), ()),
    (("acct",), ("CAP_SYS_PACCT",)),
    (("clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "settimeofday", "stime"),
     ("CAP_SYS_TIME",)),
    (("keyctl", "add_key", "request_key"), ()),
    (("bpf",), ("CAP_SYS_ADMIN", "CAP_BPF")),
    (("perf_event_open",), ("CAP_SYS_ADMIN", "CAP_PERFMON")),
    (("open_by_handle_at",), ("CAP_DAC_READ_SEARCH",)),
    (("iopl", "ioperm"), ("CAP_SYS_RAWIO",)),
    (("syslog",), ("CAP_SYS_ADMIN", "CAP_SYSLOG")),
    (("mount", "umount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount",
      "open_tree", "mount_setattr", "unshare", "setns", "sethostname", "setdomainname"), ("CAP_SYS_ADMIN",)),
]
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


def runtime_default(caps: list[str]) -> dict[str, Any]:
    held = set(caps)
    blocked = [name for names, lifting in _GROUPS if not held.intersection(lifting) for name in names]
    syscalls: list[dict[str, Any]] = [{"names": blocked, "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM}]
    if "CAP_SYS_ADMIN" not in held:
        syscalls.append({"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EPERM,
                         "args": [{"index": 0, "value": f, "valueTwo": f, "op": "SCMP_CMP_MASKED_EQ"}
                                  for f in _CLONE_NS_FLAGS]})
        syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": syscalls}


def localhost(path: str) -> dict[str, Any]:
    """A profile file on the node (OCI's linux.seccomp, or Docker's format with ``syscalls`` of names)."""
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp profile `{path}`: an absolute path is needed")
    try:
        profile = json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument(f"seccomp profile `{path}`: {exc.strerror}") from None
    except ValueError:
        raise InvalidArgument(f"seccomp profile `{path}`: not JSON") from None
    if not isinstance(profile, dict) or "defaultAction" not in profile:
        raise InvalidArgument(f"seccomp profile `{path}`: no defaultAction")
    # Docker's format: one "name" a rule, architectures under archMap; the runtime takes OCI's.
    for rule in profile.get("syscalls") or []:
        if "name" in rule and "names" not in rule:
            rule["names"] = [rule.pop("name")]
        for key in ("includes", "excludes", "comment"):
            rule.pop(key, None)
    if "archMap" in profile:
        profile["architectures"] = [m["architecture"] for m in profile.pop("archMap") if "architecture" in m]
    return profile
