"""Progress events of pulls and pushes, in the words Docker's JSON progress messages use."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass


class ProgressStatus(enum.Enum):
    RESOLVING = "Resolving"
    PULLING_FS_LAYER = "Pulling fs layer"
    WAITING = "Waiting"
    DOWNLOADING = "Downloading"
    VERIFYING = "Verifying Checksum"
    DOWNLOAD_COMPLETE = "Download complete"
    EXTRACTING = "Extracting"
    PULL_COMPLETE = "Pull complete"
    ALREADY_EXISTS = "Already exists"
    RETRYING = "Retrying"
    PREPARING = "Preparing"
    PUSHING = "Pushing"
    PUSHED = "Pushed"
    LAYER_EXISTS = "Layer already exists"
    MOUNTED = "Mounted from"
    DIGEST = "Digest"
    STATUS = "Status"


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """``id`` is the short layer id (12 hex), as Docker shows it; empty for whole-image messages."""

    id: str
    status: ProgressStatus
    current: int = 0
    total: int = 0
    detail: str = ""


ProgressFn = Callable[[ProgressEvent], None]


def no_progress(_: ProgressEvent) -> None:
    return None


def short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]
