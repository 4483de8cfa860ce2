"""What dockerd settles at a container's create beyond its OCI spec: Config.Env and Labels merged
with the image's, a host-network container's host name, a missing working folder made in the
container's root, and the name a missing image goes by."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.common.untar import UnsafeArchive, open_in_root, split_name
from services.daemon.spec import config_env
from services.gen.skiff.daemon.v1 import ContainerConfig


def settle_config(config: ContainerConfig, image_config: dict[str, Any]) -> None:
    """The config as inspect shows it (dockerd's mergeAndVerifyConfig and initializeNetworking)."""
    config.env = config_env(list(image_config.get("Env") or []), list(config.env))
    image_labels = image_config.get("Labels") or {}
    if image_labels:
        config.labels = {**{str(k): str(v) for k, v in image_labels.items()}, **dict(config.labels)}
    if config.host.network_mode == "host" and not config.hostname:
        config.hostname = socket.gethostname()  # a host-network container has the host's name


def make_workdir(rootfs: Path, workdir: str) -> None:
    """dockerd's SetupWorkingDirectory: a missing working folder is made (root's, 0755) in the
    container's root, its links followed inside that root only (blocking)."""
    if not workdir:
        return
    root_fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _, fd = open_in_root(root_fd, split_name(workdir, "working directory"), create=True)
        os.close(fd)
    except (UnsafeArchive, FileExistsError):
        raise InvalidArgument(f"Cannot mkdir: {workdir} is not a directory") from None
    finally:
        os.close(root_fd)


def tagged(reference: str) -> str:
    """A reference as dockerd names a missing image: with its tag, ":latest" when it has none."""
    if "@" in reference or ":" in reference.rsplit("/", 1)[-1]:
        return reference
    return f"{reference}:latest"
