"""The default OCI spec (what ``spec`` writes) and the parsed form the runtime works from."""

from __future__ import annotations

from services.common import jsonio as json
from services.common.errors import InvalidArgument, NotFound
from services.lowlevel import fastos as os

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


OCI_VERSION = "1.0.2-dev"
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")

DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]


def default_spec() -> dict[str, Any]:
    """runc's default spec, field for field, so that ``spec`` output is interchangeable."""
    return {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": True,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {k: list(DEFAULT_CAPS) for k in ("bounding", "effective", "permitted", "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {
                "destination": "/dev",
                "type": "tmpfs",
                "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
            },
            {
                "destination": "/dev/pts",
                "type": "devpts",
                "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
            },
            {
                "destination": "/dev/shm",
                "type": "tmpfs",
                "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
            },
            {
                "destination": "/dev/mqueue",
                "type": "mqueue",
                "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {
                "destination": "/sys/fs/cgroup",
                "type": "cgroup",
                "source": "cgroup",
                "options": ["nosuid", "noexec", "nodev", "relatime", "ro"],
            },
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/asound",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/sys/firmware",
                "/proc/scsi",
            ],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }


def load_spec(bundle: str) -> dict[str, Any]:
    """Read and check ``config.json``: every error names the file and what is wrong."""
    path = os.path.join(bundle, "config.json")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise NotFound(f"open {path}: no such file or directory") from None
    except OSError as e:
        raise InvalidArgument(f"open {path}: {e.strerror}") from None
    try:
        # A BOM is tolerated (as by utf-8-sig, whose codec would be one more import a launch).
        spec = json.loads(raw.decode().removeprefix("\ufeff"))
    except ValueError as e:
        raise InvalidArgument(f"parse {path}: invalid JSON: {e}") from None
    validate_spec(spec, bundle)
    return spec


def validate_spec(spec: Any, bundle: str) -> None:
    if not isinstance(spec, dict):
        raise InvalidArgument("config.json: the top level must be a JSON object")
    process = spec.get("process")
    if process is not None:
        if not isinstance(process, dict):
            raise InvalidArgument("config.json: process must be an object")
        args = process.get("args")
        if not args or not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise InvalidArgument("config.json: process.args must be a non-empty list of strings")
        cwd = process.get("cwd", "/")
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise InvalidArgument(f"config.json: process.cwd {cwd!r} must be an absolute path")
    root = spec.get("root")
    if not isinstance(root, dict) or not isinstance(root.get("path"), str):
        raise InvalidArgument("config.json: root.path is required")
    rootfs = rootfs_path(spec, bundle)
    if not os.path.isdir(rootfs):
        raise NotFound(f"rootfs ({rootfs}) does not exist")
    linux = spec.get("linux") or {}
    if not isinstance(linux, dict):
        raise InvalidArgument("config.json: linux must be an object")
    seen: set[str] = set()
    for ns in linux.get("namespaces") or []:
        kind = ns.get("type") if isinstance(ns, dict) else None
        if kind not in NAMESPACE_TYPES:
            raise InvalidArgument(f"config.json: unknown namespace type {kind!r}")
        if kind in seen:
            raise InvalidArgument(f"config.json: namespace {kind!r} given twice")
        seen.add(kind)
    for m in spec.get("mounts") or []:
        if not isinstance(m, dict) or not str(m.get("destination", "")).startswith("/"):
            raise InvalidArgument(f"config.json: mount destination must be an absolute path: {m!r}")


def load_spec_checked(bundle: str) -> dict[str, Any]:
    """config.json, loaded and refused as runc refuses it before anything is made."""
    from services.lowlevel.process import validate_process  # create imports it anyway; `spec` need not

    spec = load_spec(bundle)
    process = spec.get("process") or {}
    validate_process(process)
    linux = spec.get("linux") or {}
    ns_types = {ns.get("type") for ns in linux.get("namespaces") or ()}
    # runc's config validator: what only a namespace of the container's own can do.
    if spec.get("hostname") and "uts" not in ns_types:
        raise InvalidArgument("unable to set hostname without a private UTS namespace")
    if (linux.get("maskedPaths") or linux.get("readonlyPaths")) and "mount" not in ns_types:
        raise InvalidArgument("unable to restrict sys entries without a private MNT namespace")
    for device in linux.get("devices") or ():
        # Checked before anything is made, as runc's spec conversion does.
        if device.get("type") not in ("c", "u", "b", "p"):
            raise InvalidArgument(f"invalid device type {json.dumps(device.get('type'))}")
    seccomp = (spec.get("linux") or {}).get("seccomp")
    if seccomp:
        from services.common.oci_seccomp import validate_seccomp

        validate_seccomp(seccomp)
    return spec


def rootfs_path(spec: dict[str, Any], bundle: str) -> str:
    return os.path.normpath(os.path.join(bundle, spec["root"]["path"]))
