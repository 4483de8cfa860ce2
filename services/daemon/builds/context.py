"""The build context: the request body (a tar, plain or gzip/bzip2/xz, or a Dockerfile alone)
extracted into the build's own folder through services.common.untar (no ``..``, links followed only
inside the folder), ``.dockerignore`` applied, the Dockerfile read from any path in it. Paths in it
(COPY sources, the Dockerfile) are resolved with symlinks clamped at its root, as Docker's
FollowSymlinkInScope does."""

from __future__ import annotations

import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from services.common.errors import InvalidArgument, NotFound
from services.common.untar import ExtractOptions, RootExtractor, remove_entry, split_name
from services.daemon.builds import ignore

MAX_HOPS = 40
DOCKERFILE_ALONE = "Dockerfile"


@dataclass(slots=True)
class Source:
    """A COPY/ADD source (sources.py picks them)."""

    host: Path            # the resolved file or folder on the host, inside its root
    name: str             # the name it is copied as (the source's base name)
    is_dir: bool


@dataclass(slots=True)
class Picked:
    sources: list[Source]
    checksum: str         # "file:<hex>", "dir:<hex>" or "multi:<hex>"
    many: bool            # several sources or a wildcard: the destination must be a folder


@dataclass(slots=True)
class Context:
    root: Path
    dockerfile: str
    patterns: list[ignore.Pattern] = field(default_factory=list)
    # COPY/ADD sources picked from this context, by (keyword, sources): the folder never changes
    # after its extraction, so neither do they nor their checksum (kept_contexts.py reuses it).
    picks: dict[tuple[str, tuple[str, ...]], Picked] = field(default_factory=dict)


COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")


def _is_tar(head: bytes) -> bool:
    """A tar (ustar magic at 257) or a compressed stream (tarfile tells later if it holds no tar)."""
    return head.startswith(COMPRESSED) or head[257:262] == b"ustar"


def receive(body: Path | bytes, root: Path, dockerfile: str) -> Context:
    """The body (a file, or its bytes when small enough to be kept in memory) extracted under
    ``root`` (which exists and is empty); blocking."""
    name = dockerfile or "Dockerfile"
    if isinstance(body, bytes):
        head, stream = body[:512], io.BytesIO(body)
    else:
        with open(body, "rb") as f:
            head = f.read(512)
        stream = None
    if not head:
        raise InvalidArgument("the build context is empty: send a tar or a Dockerfile")
    if not _is_tar(head):
        # docker build - < Dockerfile: the body is the Dockerfile itself, no other files.
        (root / DOCKERFILE_ALONE).write_bytes(body if isinstance(body, bytes) else body.read_bytes())
        return Context(root, DOCKERFILE_ALONE)
    try:
        with tarfile.open(None if stream else body, "r:*", fileobj=stream) as tf, \
                RootExtractor(root, ExtractOptions()) as ex:
            members = tf.getmembers()
            # Every name checked before the first is written: a refused context leaves nothing behind.
            for member in members:
                split_name(member.name, "context entry")
                if member.islnk():
                    split_name(member.linkname, "hard link target")
            for member in members:
                if member.isdev() or member.isfifo():
                    continue
                ex.entry(tf, member)
            ex.finish()
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidArgument(f"invalid build context: {exc}") from None
    patterns: list[ignore.Pattern] = []
    if (root / ".dockerignore").is_file() and not (root / ".dockerignore").is_symlink():
        patterns = ignore.parse((root / ".dockerignore").read_text(errors="replace"))
    ctx = Context(root, name, patterns)
    if patterns:
        keep = {ctx.dockerfile.strip("/"), ".dockerignore"}
        _drop_excluded(root, patterns, keep)
    return ctx


def _drop_excluded(root: Path, patterns: list[ignore.Pattern], keep: set[str]) -> None:
    """Removes what .dockerignore leaves out (the Dockerfile and .dockerignore stay to be read; COPY
    refuses them by the same patterns)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        _walk_drop(fd, "", patterns, keep)
    finally:
        os.close(fd)


def _walk_drop(dir_fd: int, prefix: str, patterns: list[ignore.Pattern], keep: set[str]) -> None:
    for name in os.listdir(dir_fd):
        rel = f"{prefix}{name}"
        st = os.lstat(name, dir_fd=dir_fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        if ignore.excluded(rel, patterns) and rel not in keep:
            # A folder with an exception below it stays, for the exception's sake.
            exceptions = any(p.exclusion and p.text.startswith(rel + "/") for p in patterns)
            if not (is_dir and exceptions) and not any(k.startswith(rel + "/") for k in keep):
                remove_entry(name, dir_fd, st)
                continue
        if is_dir:
            sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
            try:
                _walk_drop(sub, rel + "/", patterns, keep)
            finally:
                os.close(sub)


def resolve(root: Path, path: str, *, follow_last: bool = True) -> list[str]:
    """``path``'s real components below ``root``: every symlink followed inside it (an absolute
    target restarts at the root, ``..`` stops there), as FollowSymlinkInScope. Missing: NotFound."""
    pending = [p for p in path.split("/") if p not in ("", ".")]
    resolved: list[str] = []
    hops = 0
    while pending:
        comp = pending.pop(0)
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        here = root.joinpath(*resolved, comp)
        try:
            st = os.lstat(here)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"file not found in build context or excluded by .dockerignore: stat {path}: "
                           f"file does not exist") from None
        if stat.S_ISLNK(st.st_mode) and (pending or follow_last):
            hops += 1
            if hops > MAX_HOPS:
                raise InvalidArgument(f"too many links resolving {path}")
            target = os.readlink(here)
            if target.startswith("/"):
                resolved = []
            pending = [p for p in target.split("/") if p not in ("", ".")] + pending
            continue
        resolved.append(comp)
    return resolved


def read_dockerfile(ctx: Context) -> str:
    parts = resolve(ctx.root, ctx.dockerfile)
    path = ctx.root.joinpath(*parts)
    if not path.is_file():
        raise NotFound(f"Cannot locate specified Dockerfile: {ctx.dockerfile}")
    return path.read_text(errors="replace")
