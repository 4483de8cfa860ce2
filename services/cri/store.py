"""skiff-cri's records of pods and containers: in memory, and one JSON file each under ``<lib>/cri/``.

A record is written (atomically) at every change of state, so a restarted skiff-cri finds every pod
and container again; the CRI config a record was made from is kept as its protobuf bytes (base64).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from services.common.atomic import atomic_write
from services.gen.runtime.v1 import ContainerConfig, PodSandboxConfig

R = TypeVar("R", "SandboxRecord", "ContainerRecord")


@dataclass(slots=True)
class SandboxRecord:
    id: str
    config_b64: str
    created_at: int  # ns since the epoch
    ready: bool = True
    host_network: bool = False
    netns: str = ""  # the pinned network namespace ("" : the host's)
    ipc: str = ""
    uts: str = ""
    ip: str = ""
    additional_ips: list[str] = field(default_factory=list)
    cni_result: str = ""  # the ADD's result (JSON), handed to DEL as prevResult
    cgroup_parent: str = ""
    files: str = ""  # folder of its resolv.conf, hosts, hostname
    network_torn_down: bool = False
    pause_pid: int = 0  # the pid 1 of a shared PID namespace (pause.py), a task with the pod's id

    @property
    def config(self) -> PodSandboxConfig:
        return PodSandboxConfig().parse(base64.b64decode(self.config_b64))


@dataclass(slots=True)
class ContainerRecord:
    id: str
    sandbox_id: str
    config_b64: str
    image_ref: str  # what the config named
    image_id: str
    created_at: int
    state: str = "created"  # created, running, exited
    started_at: int = 0
    finished_at: int = 0
    exit_code: int = 0
    reason: str = ""
    message: str = ""
    pid: int = 0
    log_path: str = ""  # absolute
    rootfs: str = ""
    task: bool = False  # highlevel has its task (created, not yet deleted)
    resources_json: str = ""  # linux.resources as last updated (JSON of the OCI object)

    @property
    def config(self) -> ContainerConfig:
        return ContainerConfig().parse(base64.b64decode(self.config_b64))


def encode_config(message: Any) -> str:
    return base64.b64encode(bytes(message)).decode()


class RecordStore:
    """One folder of JSON records of one kind (blocking file work: small, local, called inline)."""

    def __init__(self, folder: Path, kind: type[R]) -> None:
        self.folder = folder
        self.kind = kind
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, record: SandboxRecord | ContainerRecord) -> None:
        atomic_write(self.folder / f"{record.id}.json", json.dumps(asdict(record)).encode(), durable=False)

    def delete(self, record_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.folder / f"{record_id}.json")

    def load_all(self) -> list[Any]:
        known = {f.name for f in fields(self.kind)}
        out = []
        for path in sorted(self.folder.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
                out.append(self.kind(**{k: v for k, v in raw.items() if k in known}))
            except (OSError, ValueError, TypeError):
                continue  # a record half-written before atomic_write existed cannot be; skip what fails
        return out
