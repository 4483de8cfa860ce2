"""``os.path`` for skiff-lowlevel without importing ``os`` (see fastos.py): the few functions it
uses, with posixpath's semantics for str paths."""

from __future__ import annotations

import posix

_S_IFMT = 0o170000
_S_IFDIR = 0o040000
_S_IFREG = 0o100000


def join(a: str, *parts: str) -> str:
    path = a
    for b in parts:
        if b.startswith("/"):
            path = b
        elif not path or path.endswith("/"):
            path += b
        else:
            path += "/" + b
    return path


def dirname(p: str) -> str:
    i = p.rfind("/") + 1
    head = p[:i]
    if head and head != "/" * len(head):
        head = head.rstrip("/")
    return head


def normpath(p: str) -> str:
    if not p:
        return "."
    initial = 1 if p.startswith("/") else 0
    if initial and p.startswith("//") and not p.startswith("///"):
        initial = 2  # POSIX leaves the meaning of exactly two leading slashes open: posixpath keeps them
    out: list[str] = []
    for comp in p.split("/"):
        if comp in ("", "."):
            continue
        if comp != ".." or (not initial and not out) or (out and out[-1] == ".."):
            out.append(comp)
        elif out:
            out.pop()
    joined = "/" * initial + "/".join(out)
    return joined or "."


def abspath(p: str) -> str:
    return normpath(p if p.startswith("/") else join(posix.getcwd(), p))


def exists(p: str) -> bool:
    try:
        posix.stat(p)
    except (OSError, ValueError):
        return False
    return True


def lexists(p: str) -> bool:
    try:
        posix.lstat(p)
    except (OSError, ValueError):
        return False
    return True


def isdir(p: str) -> bool:
    try:
        return posix.stat(p).st_mode & _S_IFMT == _S_IFDIR
    except (OSError, ValueError):
        return False


def isfile(p: str) -> bool:
    try:
        return posix.stat(p).st_mode & _S_IFMT == _S_IFREG
    except (OSError, ValueError):
        return False
