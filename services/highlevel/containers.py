"""Container metadata (id, image, OCI spec, labels, runtime, bundle), one JSON file per container."""

from __future__ import annotations

import asyncio
import base64
import json
import re
from pathlib import Path

from services.common.atomic import atomic_write
from services.common.errors import AlreadyExists, InvalidArgument, NotFound
from services.common.grpc import grpc_errors
from services.common.shimproto import rfc3339_nano
from services.gen.skiff.highlevel.v1 import (
    Container,
    ContainersBase,
    CreateContainerRequest,
    CreateContainerResponse,
    DeleteContainerRequest,
    DeleteContainerResponse,
    GetContainerRequest,
    GetContainerResponse,
    ListContainersRequest,
    ListContainersResponse,
)

VALID_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_id(id_: str) -> None:
    if not VALID_ID.match(id_):
        raise InvalidArgument(f"invalid container id `{id_}`: letters, digits, _ . - (at most 128)")


def write_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, data)


class ContainerStore:
    """Records under ``<lib>/highlevel/containers/<id>.json``, cached in memory."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._records: dict[str, Container] = {}
        self._lock = asyncio.Lock()
        for path in folder.glob("*.json"):
            raw = json.loads(path.read_text())
            raw["spec"] = base64.b64decode(raw.get("spec", ""))
            self._records[raw["id"]] = Container(**raw)

    def get(self, id_: str) -> Container:
        record = self._records.get(id_)
        if record is None:
            raise NotFound(f"container {id_}: not found")
        return record

    def find(self, id_: str) -> Container | None:
        return self._records.get(id_)

    def list(self, labels: dict[str, str]) -> list[Container]:
        return [c for c in self._records.values() if all(c.labels.get(k) == v for k, v in labels.items())]

    async def create(self, container: Container) -> Container:
        check_id(container.id)
        if container.spec:
            try:
                json.loads(container.spec)
            except ValueError as exc:
                raise InvalidArgument(f"container {container.id}: spec is not JSON: {exc}") from exc
        async with self._lock:
            if container.id in self._records:
                raise AlreadyExists(f"container {container.id} already exists")
            container.created_at = container.created_at or rfc3339_nano()
            raw = {"id": container.id, "image": container.image, "spec": base64.b64encode(container.spec).decode(),
                   "labels": dict(container.labels), "runtime": container.runtime, "bundle": container.bundle,
                   "created_at": container.created_at}
            await asyncio.to_thread(write_atomic, self.folder / f"{container.id}.json", json.dumps(raw).encode())
            self._records[container.id] = container
        return container

    async def delete(self, id_: str) -> None:
        async with self._lock:
            self.get(id_)
            await asyncio.to_thread((self.folder / f"{id_}.json").unlink, True)
            del self._records[id_]


class ContainersService(ContainersBase):
    def __init__(self, store: ContainerStore) -> None:
        self.store = store

    @grpc_errors
    async def create(self, create_container_request: CreateContainerRequest) -> CreateContainerResponse:
        return CreateContainerResponse(container=await self.store.create(create_container_request.container))

    @grpc_errors
    async def get(self, get_container_request: GetContainerRequest) -> GetContainerResponse:
        return GetContainerResponse(container=self.store.get(get_container_request.id))

    @grpc_errors
    async def list(self, list_containers_request: ListContainersRequest) -> ListContainersResponse:
        return ListContainersResponse(containers=self.store.list(dict(list_containers_request.labels)))

    @grpc_errors
    async def delete(self, delete_container_request: DeleteContainerRequest) -> DeleteContainerResponse:
        await self.store.delete(delete_container_request.id)
        return DeleteContainerResponse()
