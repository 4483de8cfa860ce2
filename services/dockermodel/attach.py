"""The container states that refuse an attach, and the words of the refusal: the daemon's attach
stream checks them, and so does the apiserver for an attach that asks for no stream."""

from __future__ import annotations

from services.common.errors import Conflict
from services.gen.skiff.daemon.v1 import State


def check_attachable(ref: str, status: State) -> None:
    """``ref``: the container as the client named it."""
    if status == State.PAUSED:
        raise Conflict(f"container {ref} is paused, unpause the container before attach")
    if status == State.RESTARTING:
        raise Conflict(f"container {ref} is restarting, wait until the container is running")
