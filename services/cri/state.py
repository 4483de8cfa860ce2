"""skiff-cri's tables of pods and containers (memory and disk), and the names each has reserved.

As containerd's CRI plugin, a pod's name (name, uid, namespace, attempt) and a container's name
within its pod are reserved while the object exists: kubelet retrying a create gets an error, not a
second pod.
"""

from __future__ import annotations

from services.common.errors import AlreadyExists, NotFound
from services.cri.settings import CriSettings
from services.cri.store import ContainerRecord, RecordStore, SandboxRecord


class CriState:
    def __init__(self, settings: CriSettings) -> None:
        self.settings = settings
        self.sandbox_store = RecordStore(settings.state / "sandboxes", SandboxRecord)
        self.container_store = RecordStore(settings.state / "containers", ContainerRecord)
        self.sandboxes: dict[str, SandboxRecord] = {r.id: r for r in self.sandbox_store.load_all()}
        self.containers: dict[str, ContainerRecord] = {r.id: r for r in self.container_store.load_all()}
        self.names: dict[str, str] = {}
        for s in self.sandboxes.values():
            self.names[pod_name(s)] = s.id
        for c in self.containers.values():
            self.names[container_name(c, self.sandboxes.get(c.sandbox_id))] = c.id

    def reserve(self, name: str, owner: str) -> None:
        held = self.names.get(name)
        if held is not None and held != owner:
            raise AlreadyExists(f"the name `{name}` is reserved for {held}")
        self.names[name] = owner

    def release(self, name: str, owner: str) -> None:
        if self.names.get(name) == owner:
            del self.names[name]

    def sandbox(self, id_or_prefix: str) -> SandboxRecord:
        return _find(self.sandboxes, id_or_prefix, "pod sandbox")

    def container(self, id_or_prefix: str) -> ContainerRecord:
        return _find(self.containers, id_or_prefix, "container")

    def save(self, record: SandboxRecord | ContainerRecord) -> None:
        (self.sandbox_store if isinstance(record, SandboxRecord) else self.container_store).save(record)

    def of_sandbox(self, sandbox_id: str) -> list[ContainerRecord]:
        return [c for c in self.containers.values() if c.sandbox_id == sandbox_id]


def _find(table: dict, id_or_prefix: str, what: str):  # type: ignore[no-untyped-def]
    """By id, or by a unique prefix of one (as crictl's short ids)."""
    if id_or_prefix in table:
        return table[id_or_prefix]
    if id_or_prefix:
        found = [v for k, v in table.items() if k.startswith(id_or_prefix)]
        if len(found) == 1:
            return found[0]
    raise NotFound(f"{what} `{id_or_prefix}`: not found")


def pod_name(record: SandboxRecord) -> str:
    m = record.config.metadata
    return f"{m.name}_{m.namespace}_{m.uid}_{m.attempt}"


def container_name(record: ContainerRecord, sandbox: SandboxRecord | None) -> str:
    m = record.config.metadata
    pod = pod_name(sandbox) if sandbox is not None else record.sandbox_id
    return f"{m.name}_{pod}_{m.attempt}"
