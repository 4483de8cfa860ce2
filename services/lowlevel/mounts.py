"""The container's filesystem, set up by its init inside the new mount namespace.

The order follows runc: propagation, the rootfs bind, spec mounts, /dev, then (after the
createRuntime/createContainer hooks) pivot_root, masked and read-only paths, the read-only root.
"""

from __future__ import annotations

import errno
import stat

from services.common.errors import InvalidArgument, SyscallError
from services.lowlevel import fastos as os
from services.lowlevel import syscalls as sc

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    CgroupPaths = dict[str, str] | Callable[[], dict[str, str]]


_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    # option: (clear?, flag)
    "ro": (False, sc.MS_RDONLY),
    "rw": (True, sc.MS_RDONLY),
    "nosuid": (False, sc.MS_NOSUID),
    "suid": (True, sc.MS_NOSUID),
    "nodev": (False, sc.MS_NODEV),
    "dev": (True, sc.MS_NODEV),
    "noexec": (False, sc.MS_NOEXEC),
    "exec": (True, sc.MS_NOEXEC),
    "sync": (False, sc.MS_SYNCHRONOUS),
    "async": (True, sc.MS_SYNCHRONOUS),
    "dirsync": (False, sc.MS_DIRSYNC),
    "remount": (False, sc.MS_REMOUNT),
    "mand": (False, sc.MS_MANDLOCK),
    "nomand": (True, sc.MS_MANDLOCK),
    "noatime": (False, sc.MS_NOATIME),
    "atime": (True, sc.MS_NOATIME),
    "nodiratime": (False, sc.MS_NODIRATIME),
    "diratime": (True, sc.MS_NODIRATIME),
    "relatime": (False, sc.MS_RELATIME),
    "norelatime": (True, sc.MS_RELATIME),
    "strictatime": (False, sc.MS_STRICTATIME),
    "nostrictatime": (True, sc.MS_STRICTATIME),
    "lazytime": (False, sc.MS_LAZYTIME),
    "nolazytime": (True, sc.MS_LAZYTIME),
    "nosymfollow": (False, sc.MS_NOSYMFOLLOW),
    "symfollow": (True, sc.MS_NOSYMFOLLOW),
    "silent": (False, sc.MS_SILENT),
    "loud": (True, sc.MS_SILENT),
    "bind": (False, sc.MS_BIND),
    "rbind": (False, sc.MS_BIND | sc.MS_REC),
    "defaults": (False, 0),
}
PROPAGATION_OPTIONS = {
    "private": sc.MS_PRIVATE,
    "rprivate": sc.MS_PRIVATE | sc.MS_REC,
    "shared": sc.MS_SHARED,
    "rshared": sc.MS_SHARED | sc.MS_REC,
    "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE,
    "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# Recursive attribute options (mount_setattr) are accepted and applied as their plain forms.
_RECURSIVE_ALIASES = {
    "rro": "ro",
    "rrw": "rw",
    "rnosuid": "nosuid",
    "rsuid": "suid",
    "rnodev": "nodev",
    "rdev": "dev",
    "rnoexec": "noexec",
    "rexec": "exec",
    "rnoatime": "noatime",
    "ratime": "atime",
    "rrelatime": "relatime",
    "rnorelatime": "norelatime",
    "rstrictatime": "strictatime",
    "rnostrictatime": "nostrictatime",
    "rnodiratime": "nodiratime",
    "rdiratime": "diratime",
    "rnosymfollow": "nosymfollow",
    "rsymfollow": "symfollow",
}
_IGNORED_OPTIONS = {"tmpcopyup", "idmap", "ridmap", "acl", "noacl", "iversion", "noiversion"}
# Flags a bind remount must keep, or the kernel refuses it in a user namespace.
_LOCKED_BY_STATVFS = (
    (os.ST_RDONLY, sc.MS_RDONLY),
    (os.ST_NOSUID, sc.MS_NOSUID),
    (os.ST_NODEV, sc.MS_NODEV),
    (os.ST_NOEXEC, sc.MS_NOEXEC),
    (os.ST_NOATIME, sc.MS_NOATIME),
    (os.ST_NODIRATIME, sc.MS_NODIRATIME),
    (os.ST_RELATIME, sc.MS_RELATIME),
)

DEFAULT_DEVICES = (
    # path, major, minor, mode
    ("/dev/null", 1, 3, 0o666),
    ("/dev/zero", 1, 5, 0o666),
    ("/dev/full", 1, 7, 0o666),
    ("/dev/random", 1, 8, 0o666),
    ("/dev/urandom", 1, 9, 0o666),
    ("/dev/tty", 5, 0, 0o666),
)
DEV_SYMLINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


def parse_options(options: list[str]) -> tuple[int, int, str]:
    """Split mount options into (flags, propagation flags, data string)."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for opt in options:
        opt = _RECURSIVE_ALIASES.get(opt, opt)
        if opt in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[opt]
            flags = flags & ~flag if clear else flags | flag
        elif opt in PROPAGATION_OPTIONS:
            propagation |= PROPAGATION_OPTIONS[opt]
        elif opt in _IGNORED_OPTIONS:
            continue
        else:
            data.append(opt)
    return flags, propagation, ",".join(data)


def secure_join(root: str, unsafe: str) -> str:
    """``unsafe`` resolved inside ``root``: symlinks and ``..`` never lead out of it."""
    parts = [p for p in unsafe.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            target = os.readlink(candidate)
        except OSError:
            resolved.append(part)
            continue
        hops += 1
        if hops > 255:
            raise SyscallError("resolve", unsafe, errno.ELOOP)
        if target.startswith("/"):
            resolved = []
        parts = [p for p in target.split("/") if p] + parts
    return os.path.join(root, *resolved)


def _statvfs_flags(path: str) -> int:
    st = os.statvfs(path)
    return sum(flag for bit, flag in _LOCKED_BY_STATVFS if st.f_flag & bit)


def _make_mountpoint(dest: str, source: str | None, is_bind: bool) -> None:
    if is_bind and source is not None:
        try:
            if not stat.S_ISDIR(os.stat(source).st_mode):
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                if not os.path.exists(dest):
                    os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
                return
        except FileNotFoundError:
            raise SyscallError("stat bind source", source, errno.ENOENT) from None
    os.makedirs(dest, mode=0o755, exist_ok=True)


def mount_one(rootfs: str, m: dict[str, Any], cgroup_paths: CgroupPaths, bundle: str) -> None:
    kind = m.get("type") or ""
    options = m.get("options") or []
    flags, propagation, data = parse_options(options)
    source = m.get("source")
    if kind in ("proc", "sysfs"):
        _refuse_non_directory(rootfs, m["destination"], kind)
    dest = secure_join(rootfs, m["destination"])
    is_bind = bool(flags & sc.MS_BIND) or kind == "bind"
    if is_bind and source and not source.startswith("/"):
        source = os.path.join(bundle, source)

    if kind == "cgroup":
        _mount_cgroup(dest, flags, cgroup_paths() if callable(cgroup_paths) else cgroup_paths)
    elif is_bind:
        _make_mountpoint(dest, source, True)
        sc.mount(source, dest, None, sc.MS_BIND | (flags & sc.MS_REC))
        # A bind mount ignores other flags until it is remounted with them.
        extra = flags & ~(sc.MS_BIND | sc.MS_REC | sc.MS_REMOUNT)
        if extra:
            sc.mount(None, dest, None, sc.MS_BIND | sc.MS_REMOUNT | extra | _statvfs_flags(dest))
    else:
        _make_mountpoint(dest, None, False)
        if _read_only_later(m, flags):
            flags &= ~sc.MS_RDONLY  # /dev gets its nodes first: see remount_read_only_later
        try:
            sc.mount(source or kind, dest, kind, flags, data or None)
        except SyscallError as e:
            if kind == "sysfs" and e.errno == errno.EPERM:
                # Without its own network namespace a user namespace may not mount sysfs.
                sc.mount("/sys", dest, None, sc.MS_BIND | sc.MS_REC)
                sc.mount(
                    None,
                    dest,
                    None,
                    sc.MS_BIND | sc.MS_REMOUNT | sc.MS_REC | (flags & sc.MS_RDONLY) | _statvfs_flags(dest),
                )
            elif kind == "mqueue" and e.errno in (errno.EPERM, errno.EINVAL):
                sc.mount("/dev/mqueue", dest, None, sc.MS_BIND | sc.MS_REC)
            else:
                raise
    if propagation:
        sc.mount(None, dest, None, propagation)


def _read_only_later(m: dict[str, Any], flags: int) -> bool:
    """A read-only tmpfs, or /dev, is mounted writable and made read-only after pivot_root, as
    runc does: /dev's nodes and symlinks, and a tmpfs's mode, are set up in between."""
    return bool(flags & sc.MS_RDONLY) and (m.get("type") == "tmpfs" or os.path.normpath(m["destination"]) == "/dev")


def remount_read_only_later(spec: dict[str, Any]) -> None:
    """The second half of _read_only_later, inside the container (paths are the container's)."""
    for m in spec.get("mounts") or ():
        if "ro" not in (m.get("options") or ()) or m.get("type") in ("bind", "cgroup"):
            continue
        flags = parse_options(m["options"])[0]
        if flags & (sc.MS_BIND | sc.MS_REMOUNT) or not _read_only_later(m, flags):
            continue
        sc.mount(None, m["destination"], None, flags | sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY)


def _refuse_non_directory(rootfs: str, destination: str, kind: str) -> None:
    """procfs and sysfs go on a plain folder of the rootfs or nowhere, as runc insists: through a
    symlink the image chose, they could land on a host path (how procfs escapes were built)."""
    dest = os.path.normpath(rootfs + "/" + destination)
    try:
        st = os.lstat(dest)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        raise InvalidArgument(f'filesystem "{kind}" must be mounted on ordinary directory')


def _mount_cgroup(dest: str, flags: int, cgroup_paths: dict[str, str]) -> None:
    """The container's own cgroup folders, bound where it expects /sys/fs/cgroup."""
    os.makedirs(dest, mode=0o755, exist_ok=True)
    ro = flags & sc.MS_RDONLY
    base = flags & (sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    if len(cgroup_paths) == 1 and "" in cgroup_paths:  # cgroup v2: one unified folder
        sc.mount(cgroup_paths[""], dest, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, dest, None, sc.MS_BIND | sc.MS_REMOUNT | base | ro)
        return
    sc.mount("tmpfs", dest, "tmpfs", base, "mode=755")
    for name, host_path in sorted(cgroup_paths.items()):
        if not name:
            continue  # a hybrid host's cgroup2 folder: joined, but not shown, as runc does
        sub = os.path.join(dest, name.removeprefix("name="))
        os.makedirs(sub, exist_ok=True)
        sc.mount(host_path, sub, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, sub, None, sc.MS_BIND | sc.MS_REMOUNT | base | ro)
    if ro:
        sc.mount(None, dest, None, sc.MS_REMOUNT | base | sc.MS_RDONLY, "mode=755")


def needs_dev_setup(spec: dict[str, Any]) -> bool:
    return not any(
        m.get("destination") == "/dev" and ("bind" in (m.get("options") or []) or m.get("type") == "bind")
        for m in spec.get("mounts") or []
    )


def create_devices(rootfs: str, devices: list[dict[str, Any]], *, bind: bool, defaults: bool) -> None:
    """Default and asked-for device nodes; bind-mounted from the host inside a user namespace."""
    todo: list[tuple[str, str, int, int, int, int, int]] = []
    if defaults:
        todo += [(p, "c", ma, mi, mode, 0, 0) for p, ma, mi, mode in DEFAULT_DEVICES]
    for d in devices:
        todo.append(
            (
                d["path"],
                d.get("type", "c"),
                int(d.get("major", 0)),
                int(d.get("minor", 0)),
                int(d.get("fileMode", 0o666)),
                int(d.get("uid", 0)),
                int(d.get("gid", 0)),
            )
        )
    for path, kind, major, minor, mode, uid, gid in todo:
        dest = secure_join(rootfs, path)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if bind:
            if not os.path.exists(dest):
                os.close(os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644))
            sc.mount(path, dest, None, sc.MS_BIND)
            continue
        type_bits = {"c": stat.S_IFCHR, "u": stat.S_IFCHR, "b": stat.S_IFBLK, "p": stat.S_IFIFO}.get(kind)
        if type_bits is None:
            raise InvalidArgument(f"device {path}: unknown type {kind!r}")
        if os.path.lexists(dest):
            os.unlink(dest)
        sc.mknod(dest, type_bits | (mode & 0o7777), os.makedev(major, minor))
        os.chmod(dest, mode & 0o7777)
        os.chown(dest, uid, gid)


def create_dev_symlinks(rootfs: str, *, ptmx: bool) -> None:
    links = list(DEV_SYMLINKS)
    if os.path.exists("/proc/kcore"):
        links.append(("/proc/kcore", "/dev/core"))
    if ptmx:
        links.append(("pts/ptmx", "/dev/ptmx"))
    for target, link in links:
        dest = os.path.join(rootfs, link.lstrip("/"))
        if ptmx and link == "/dev/ptmx" and os.path.lexists(dest):
            os.unlink(dest)
        try:
            os.symlink(target, dest)
        except FileExistsError:
            pass


def setup_rootfs(spec: dict[str, Any], rootfs: str, bundle: str, cgroup_paths: CgroupPaths, *, in_userns: bool) -> None:
    """Everything before pivot_root: propagation, the rootfs bind mount, spec mounts and /dev.

    ``cgroup_paths`` may be a function: called when a cgroup mount comes, not before.
    """
    linux = spec.get("linux") or {}
    propagation = PROPAGATION_OPTIONS.get(linux.get("rootfsPropagation") or "rslave", sc.MS_SLAVE | sc.MS_REC)
    sc.mount(None, "/", None, propagation)
    if propagation & sc.MS_SHARED:
        # pivot_root refuses a shared parent mount: as runc (rootfsParentMountPrivate), the mount
        # holding the rootfs turns private, the rootfs itself when it is a mount point (an overlay):
        # else the rootfs's bind would be its peer and every mount of the container reach the host.
        try:
            sc.mount(None, mount_point_of(rootfs.rstrip("/") or "/"), None, sc.MS_PRIVATE)
        except SyscallError:
            pass
    sc.mount(rootfs, rootfs, None, sc.MS_BIND | sc.MS_REC)
    mounts = spec.get("mounts") or []
    devpts = False
    for m in mounts:
        mount_one(rootfs, m, cgroup_paths, bundle)
        devpts = devpts or m.get("type") == "devpts"
    if needs_dev_setup(spec):
        create_devices(rootfs, linux.get("devices") or [], bind=in_userns, defaults=True)
        create_dev_symlinks(rootfs, ptmx=devpts)
    elif linux.get("devices"):
        create_devices(rootfs, linux["devices"], bind=in_userns, defaults=False)


def mount_point_of(path: str) -> str:
    """The mount point of the mount ``path`` lies on (the longest one that is a prefix of it)."""
    with open("/proc/self/mountinfo", "rb") as f:
        lines = f.read().decode().splitlines()
    best = "/"
    for line in lines:
        point = line.split(" ", 5)[4].replace("\\040", " ")
        if (path == point or path.startswith(point.rstrip("/") + "/")) and len(point) > len(best):
            best = point
    return best


def enter_rootfs(rootfs: str, *, no_pivot: bool) -> None:
    """pivot_root into the rootfs; MS_MOVE and chroot where pivot_root cannot work (a ramfs root)."""
    if not no_pivot:
        old = os.open("/", os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        new = os.open(rootfs, os.O_DIRECTORY | os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fchdir(new)
            try:
                sc.pivot_root(".", ".")
            except SyscallError as e:
                if e.errno != errno.EINVAL:
                    raise
                no_pivot = True
            if not no_pivot:
                os.fchdir(old)
                # The old root must not propagate our unmount back to the host.
                sc.mount(None, ".", None, sc.MS_SLAVE | sc.MS_REC)
                sc.umount(".", sc.MNT_DETACH)
                os.chdir("/")
                return
        finally:
            os.close(old)
            os.close(new)
    os.chdir(rootfs)
    sc.mount(rootfs, "/", None, sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def mask_paths(paths: list[str]) -> None:
    for path in paths:
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        if stat.S_ISDIR(st.st_mode):
            sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY, "size=0k")
        else:
            sc.mount("/dev/null", path, None, sc.MS_BIND)


def readonly_paths(paths: list[str]) -> None:
    for path in paths:
        if not os.path.exists(path):
            continue
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | sc.MS_REC | _statvfs_flags(path))


def readonly_root() -> None:
    sc.mount(None, "/", None, sc.MS_BIND | sc.MS_REMOUNT | sc.MS_RDONLY | _statvfs_flags("/"))


def apply_sysctl(values: dict[str, str]) -> None:
    for key, value in values.items():
        if "/" in key.replace(".", "/").strip("/") and ".." in key:
            raise InvalidArgument(f"sysctl {key!r}: invalid name")
        path = "/proc/sys/" + key.replace(".", "/")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError as e:
            raise SyscallError("open sysctl", path, e.errno or 0) from None
        try:
            os.write(fd, str(value).encode())
        except OSError as e:
            raise SyscallError(f"write {value!r} to sysctl", path, e.errno or 0) from None
        finally:
            os.close(fd)
