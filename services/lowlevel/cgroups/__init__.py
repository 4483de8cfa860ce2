"""Cgroups for the low-level runtime: one small protocol, a v1 and a v2 implementation behind it.

``open_cgroup`` picks the implementation once per process, from one ``stat`` (a cgroup2 root has
``cgroup.controllers``) and, for v1, one read of ``/proc/self/mountinfo``. Nothing here touches
the file system at import time, and only posix and files.py (the small file operations v1 and
v2 share) are imported: every ``skiff-lowlevel`` launch pays for this module.

Order for the caller: ``create()`` → ``add(pid)`` → ``set(resources)``. ``set`` works before ``add``
too, but v1 cpuset values must be valid before a task can join, which ``create`` guarantees by
copying the parent's ``cpuset.cpus``/``cpuset.mems`` into empty folders.
"""

from __future__ import annotations

from services.common.errors import InvalidArgument
from services.lowlevel import fastos as os
from services.lowlevel.cgroups.files import CGROUP_ROOT

# ``typing`` costs ~2.5 ms to import and is only for the type checker (annotations are strings
# here): at run time ``Cgroup`` is a plain base with no behaviour.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol
else:
    Protocol = object

class Cgroup(Protocol):
    """A container's cgroup, the same surface for v1 and v2 (as youki's libcgroups)."""

    version: int

    def create(self) -> None: ...
    def add(self, pid: int) -> None: ...
    def set(self, resources: dict[str, Any]) -> None: ...
    def pids(self) -> list[int]: ...
    def freeze(self) -> None: ...
    def thaw(self) -> None: ...
    def frozen(self) -> bool: ...
    def stats(self) -> dict[str, Any]: ...
    def oom_kills(self) -> int: ...
    def kill_all(self, sig: int) -> None: ...
    def destroy(self) -> None: ...
    def paths(self) -> dict[str, str]: ...


def open_cgroup(cgroups_path: str | None, container_id: str) -> Cgroup:
    """The container's cgroup for this host's cgroup version (no folder is made until create)."""
    rel = cgroup_relpath(cgroups_path, container_id)
    if cgroup_version() == 2:
        from services.lowlevel.cgroups.v2 import V2Cgroup

        return V2Cgroup(CGROUP_ROOT + rel)
    from services.lowlevel.cgroups.v1 import V1Cgroup, v1_mounts

    return V1Cgroup(rel, v1_mounts())


def cgroup_version() -> int:
    """2 when /sys/fs/cgroup itself is cgroup2 (unified), else 1 (legacy or hybrid).

    One stat instead of statfs (which the stdlib lacks): only a cgroup2 root has
    ``cgroup.controllers``; a hybrid host's /sys/fs/cgroup is a tmpfs of v1 mounts.
    """
    return 2 if os.path.exists(CGROUP_ROOT + "/cgroup.controllers") else 1


# --- paths -----------------------------------------------------------------------------------


def cgroup_relpath(cgroups_path: str | None, container_id: str) -> str:
    """The cgroup's path from each hierarchy's root, always "/a/b" form.

    OCI says a relative path is under the runtime's own cgroup; we treat it like an absolute one
    (simple, and what runc's cgroupfs driver ends up doing for a runtime in the root cgroup).
    The systemd form ``slice:prefix:name`` maps to ``/<expanded slice>/<prefix>-<name>.scope``
    without asking systemd, so a container lands where systemd's driver would have put it.
    """
    if not cgroups_path:
        return _checked("/" + container_id, container_id)
    if not cgroups_path.startswith("/") and cgroups_path.count(":") == 2:
        slice_, prefix, name = cgroups_path.split(":")
        if not name:
            raise InvalidArgument(f"invalid cgroups path {cgroups_path!r}: empty unit name")
        scope = f"{prefix}-{name}.scope" if prefix else f"{name}.scope"
        return _checked(expand_slice(slice_ or "system.slice", cgroups_path) + "/" + scope, cgroups_path)
    return _checked("/" + cgroups_path.lstrip("/"), cgroups_path)


def expand_slice(slice_: str, original: str) -> str:
    """systemd nests dashed slices: "a-b.slice" is /a.slice/a-b.slice ("-.slice" is the root)."""
    if not slice_.endswith(".slice") or "/" in slice_:
        raise InvalidArgument(f"invalid cgroups path {original!r}: bad slice {slice_!r}")
    base = slice_[: -len(".slice")]
    if base in ("", "-"):
        return ""
    if base.startswith("-") or base.endswith("-") or "--" in base:
        raise InvalidArgument(f"invalid cgroups path {original!r}: bad slice {slice_!r}")
    out = ""
    prefix = ""
    for part in base.split("-"):
        prefix = f"{prefix}-{part}" if prefix else part
        out += f"/{prefix}.slice"
    return out


def _checked(path: str, original: str) -> str:
    """Refuse what could escape or alias the hierarchy root (.., ., //, NUL, the root itself)."""
    parts = path[1:].split("/")
    for part in parts:
        if part in ("", ".", "..") or "\0" in part:
            raise InvalidArgument(f"invalid cgroups path {original!r}: bad component {part!r}")
    return path
