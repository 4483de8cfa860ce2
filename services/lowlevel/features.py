"""What ``features`` reports: the OCI runtime features document."""

from __future__ import annotations

from services.lowlevel.mounts import _FLAG_OPTIONS, _RECURSIVE_ALIASES, PROPAGATION_OPTIONS

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def features() -> dict[str, Any]:
    from services.lowlevel.capabilities import CAPABILITIES

    return {
        "ociVersionMin": "1.0.0",
        "ociVersionMax": "1.0.2-dev",
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": sorted({*_FLAG_OPTIONS, *PROPAGATION_OPTIONS, *_RECURSIVE_ALIASES}),
        "linux": {
            "namespaces": ["cgroup", "ipc", "mount", "network", "pid", "user", "uts"],
            "capabilities": list(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {
                "enabled": True,
                "actions": [
                    "SCMP_ACT_ALLOW",
                    "SCMP_ACT_ERRNO",
                    "SCMP_ACT_KILL",
                    "SCMP_ACT_KILL_PROCESS",
                    "SCMP_ACT_KILL_THREAD",
                    "SCMP_ACT_LOG",
                    "SCMP_ACT_TRACE",
                    "SCMP_ACT_TRAP",
                ],
                "operators": [
                    "SCMP_CMP_EQ",
                    "SCMP_CMP_GE",
                    "SCMP_CMP_GT",
                    "SCMP_CMP_LE",
                    "SCMP_CMP_LT",
                    "SCMP_CMP_MASKED_EQ",
                    "SCMP_CMP_NE",
                ],
                "archs": ["SCMP_ARCH_X86", "SCMP_ARCH_X86_64", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
            },
            "apparmor": {"enabled": False},
            "selinux": {"enabled": False},
        },
        "annotations": {"org.opencontainers.runc.version": "1.1.5-compatible", "io.skiff.runtime": "skiff-lowlevel"},
    }
