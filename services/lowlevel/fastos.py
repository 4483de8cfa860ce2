"""The part of ``os`` skiff-lowlevel uses, on ``posix`` alone.

``import os`` costs about 2.5 ms of a launch here (``os`` itself, ``_collections_abc``,
``posixpath``, ``genericpath``, ``stat``): 7 % of a whole ``run``. ``os`` re-exports ``posix``'s
functions and constants unchanged; what it adds and the runtime needs is here: ``path``
(fastpath.py), ``makedirs`` and ``fdopen``. Modules import it as ``os``.
"""

from __future__ import annotations

import io
from posix import *  # noqa: F403 - the functions and constants os re-exports from posix
from posix import _exit  # noqa: F401 - not covered by the star import
from posix import mkdir as _mkdir

from services.lowlevel import fastpath as path

# typing costs milliseconds of import on every launch; annotations are strings here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def makedirs(name: str, mode: int = 0o777, exist_ok: bool = False) -> None:
    name = name.rstrip("/") or name
    head = path.dirname(name)
    if head and head != name and not path.exists(head):
        try:
            makedirs(head, exist_ok=exist_ok)
        except FileExistsError:
            pass  # made meanwhile by another process
    try:
        _mkdir(name, mode)
    except OSError:
        if not exist_ok or not path.isdir(name):
            raise


def fdopen(fd: int, *args: Any, **kwargs: Any) -> Any:
    return io.open(fd, *args, **kwargs)  # noqa: UP020 - the star import's posix.open shadows the builtin
