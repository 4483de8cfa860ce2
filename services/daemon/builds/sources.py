"""COPY and ADD: the sources picked from the context (or another stage's or image's filesystem),
wildcards matched within one path component as Go's filepath.Match, a checksum of what is copied
(the cache key's part, as dockerd's ``file:<hex>``/``dir:<hex>``), and the copy itself: a tar of the
sources extracted into the step's root through services.common.untar (links followed only inside
that root), with --chown/--chmod applied; ADD unpacks a local tar archive. Blocking: run in a thread."""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
import tarfile
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound
from services.common.untar import ExtractOptions, extract_archive, open_in_root
from services.daemon.builds import ignore
from services.daemon.builds.context import Picked, Source, resolve

WILDCARDS = "*?["


def _walk(root: Path) -> list[str]:
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            out.append(name if rel == "." else f"{rel}/{name}")
    return out


def pick(root: Path, patterns: list[str], keyword: str, excluded: list[ignore.Pattern]) -> Picked:
    sources: list[Source] = []
    wildcard = False
    for raw in patterns:
        if raw.startswith(("http://", "https://")):
            if keyword == "copy":
                raise InvalidArgument(f"source can't be a URL for COPY: {raw}")
            raise InvalidArgument(f"ADD of a URL ({raw}) is not supported: Skiff builds fetch nothing from the "
                                  f"network; download it into the build context and ADD or COPY it from there")
        clean = posixpath.normpath("/" + raw).lstrip("/")
        if any(c in clean for c in WILDCARDS):
            wildcard = True
            regex = ignore.compile_pattern(clean)
            hits = [p for p in _walk(root) if regex.match(p) and not ignore.excluded(p, excluded)]
            for rel in hits:
                sources.append(_source(root, rel))
            continue
        if clean and excluded and ignore.excluded(clean, excluded):
            raise NotFound(f"file not found in build context or excluded by .dockerignore: stat {raw}: "
                           f"file does not exist")
        sources.append(_source(root, clean))
    if not sources:
        raise NotFound(f"{keyword.upper()} failed: no source files were specified")
    return Picked(sources, _checksum(sources), wildcard or len(sources) > 1)


def _source(root: Path, rel: str) -> Source:
    parts = resolve(root, rel)
    host = root.joinpath(*parts)
    name = rel.rstrip("/").rsplit("/", 1)[-1] if rel else ""
    try:
        st = os.lstat(host)
    except FileNotFoundError:
        raise NotFound(f"file not found in build context or excluded by .dockerignore: stat {rel}: "
                       f"file does not exist") from None
    return Source(host, name, stat.S_ISDIR(st.st_mode))


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _entry_line(path: Path, rel: str) -> str:
    st = os.lstat(path)
    kind = stat.S_IFMT(st.st_mode)
    body = ""
    if stat.S_ISREG(st.st_mode):
        body = _file_digest(path)
    elif stat.S_ISLNK(st.st_mode):
        body = os.readlink(path)
    # Content, name, mode and owner; never the times (dockerd's tarsum leaves mtime out too).
    return f"{rel}\0{kind}\0{stat.S_IMODE(st.st_mode):o}\0{st.st_uid}:{st.st_gid}\0{body}\n"


def _checksum(sources: list[Source]) -> str:
    parts = []
    for src in sources:
        h = hashlib.sha256()
        if src.is_dir:
            for rel in _walk(src.host):
                h.update(_entry_line(src.host / rel, rel).encode())
        else:
            h.update(_entry_line(src.host, "").encode())
        parts.append(("dir:" if src.is_dir else "file:") + h.hexdigest())
    if len(parts) == 1:
        return parts[0]
    return "multi:" + hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _owner(rootfs: Path, chown: str) -> tuple[int, int]:
    """--chown user[:group]: numbers as given, names from the image's /etc/passwd and /etc/group."""
    user, _, group = chown.partition(":")

    def lookup(name: str, table: str) -> int:
        if name.isdigit():
            return int(name)
        root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            _, etc = open_in_root(root_fd, ["etc"])
            try:
                fd = os.open(table, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=etc)
                with os.fdopen(fd) as f:
                    for line in f:
                        fields = line.strip().split(":")
                        if fields[0] == name and len(fields) > 2 and fields[2].isdigit():
                            return int(fields[2])
            finally:
                os.close(etc)
        except (FileNotFoundError, NotADirectoryError, InvalidArgument):
            pass
        finally:
            os.close(root_fd)
        raise InvalidArgument(f"unable to convert uid/gid chown string to host mapping: can't find uid for "
                              f"user {name}: no such user: {name}" if table == "passwd" else
                              f"unable to convert uid/gid chown string to host mapping: can't find gid for "
                              f"group {name}: no such group: {name}")

    uid = lookup(user, "passwd")
    gid = lookup(group, "group") if group else uid
    return uid, gid


def _is_archive(path: Path) -> bool:
    try:
        with tarfile.open(path, "r:*") as tf:
            return tf.next() is not None
    except (tarfile.TarError, EOFError, OSError):
        return False


def copy_into(picked: Picked, rootfs: Path, dest: str, workdir: str, *, chown: str, chmod: str,
              unpack: bool, scratch: Path) -> None:
    """The copy of ``picked`` into ``rootfs`` at ``dest`` (relative to ``workdir``), as dockerd's
    builder: a folder's contents (not itself) go into dest; a file into dest/ when dest ends with
    ``/`` or is a folder, else as dest."""
    full = dest if dest.startswith("/") else posixpath.join(workdir or "/", dest)
    as_dir = dest.endswith("/") or dest in (".", "") or full.endswith("/.")
    if picked.many and not as_dir:
        raise InvalidArgument("When using COPY with more than one source file, the destination must be a "
                              "directory and end with a /")
    mode = None
    if chmod:
        try:
            mode = int(chmod, 8)
        except ValueError:
            raise InvalidArgument(f"invalid chmod parameter: {chmod}") from None
    uid, gid = _owner(rootfs, chown) if chown else (0, 0)
    parts = [p for p in posixpath.normpath("/" + full).split("/") if p]
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        if not as_dir and parts:
            # A file's destination that is a folder already takes the file inside it.
            try:
                _, fd = open_in_root(root_fd, parts)
                os.close(fd)
                as_dir = True
            except (FileNotFoundError, InvalidArgument):
                pass
        into = parts if as_dir or any(s.is_dir for s in picked.sources) else parts[:-1]
        _, fd = open_in_root(root_fd, into, create=True)
        os.close(fd)
    finally:
        os.close(root_fd)
    tar_path = scratch / "copy.tar"
    with tarfile.open(tar_path, "w", format=tarfile.PAX_FORMAT) as tf:
        for src in picked.sources:
            if unpack and not src.is_dir and _is_archive(src.host):
                continue
            if src.is_dir:
                entries = [(src.host / rel, rel) for rel in _walk(src.host)]
            else:
                renamed = not as_dir and not any(s.is_dir for s in picked.sources) and parts
                name = parts[-1] if renamed else src.name
                entries = [(src.host, name)]
            for host, arcname in entries:
                info = tf.gettarinfo(str(host), arcname)
                info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
                if mode is not None and not info.issym():
                    info.mode = mode
                if info.isreg():
                    with open(host, "rb") as f:
                        tf.addfile(info, f)
                elif info.isdir() or info.issym() or info.islnk():
                    if info.islnk():
                        info.type, info.linkname = tarfile.REGTYPE, ""
                        with open(host, "rb") as f:
                            tf.addfile(info, f)
                        continue
                    tf.addfile(info)
    options = ExtractOptions(allow_setuid=True)
    extract_archive(tar_path, rootfs, options, into)
    if unpack:
        for src in picked.sources:
            if not src.is_dir and _is_archive(src.host):
                # ADD of a local archive: its contents land in the destination folder.
                root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
                try:
                    os.close(open_in_root(root_fd, parts, create=True)[1])
                finally:
                    os.close(root_fd)
                extract_archive(src.host, rootfs, options, parts)
    tar_path.unlink()
