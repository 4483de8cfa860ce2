"""OCI bundles: the folder a task's runtime is created from, written from the spec a caller sends.

As containerd's task create does, the bundle is the task's own folder (``<run>/highlevel/t/<id>/``,
beside the shim's bootstrap.json and status): ``config.json`` is the caller's spec, bytes as sent,
written once per start (the runtime parses it and keeps its own copy). The folder goes with the task
(delete, a failed create, or highlevel's recovery of a create that never finished), so a bundle is
never left behind without its task.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from services.common.errors import AlreadyExists, InvalidArgument

VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
CONFIG = "config.json"


def check_id(id_: str) -> None:
    """A task id names folders (its bundle among them): nothing that could leave them."""
    if not VALID_ID.match(id_):
        raise InvalidArgument(f"invalid container id `{id_}`: letters, digits, _ . - (at most 128)")


def write_bundle(folder: Path, spec: bytes) -> Path:
    """``folder/config.json`` from ``spec``; the folder must not hold one yet (blocking: call in a thread).

    The spec is not parsed here: the runtime does that once, and rejects a bad one as the caller's
    mistake. A leading ``{`` is checked so that an obviously wrong payload fails before a shim starts."""
    if not spec.lstrip()[:1] == b"{":
        raise InvalidArgument("spec: not an OCI runtime spec (a JSON object is needed)")
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with open(folder / CONFIG, "xb") as f:
            f.write(spec)
    except FileExistsError:
        raise AlreadyExists(f"task {folder.name}: a bundle is already there") from None
    return folder


def remove_bundle(folder: Path) -> None:
    """The config.json of a create that failed, and the folder when nothing else is in it (blocking).

    Only what write_bundle made: the folder may be a live task's (one made from a caller's own bundle)."""
    with contextlib.suppress(FileNotFoundError):
        (folder / CONFIG).unlink()
    with contextlib.suppress(OSError):
        folder.rmdir()
