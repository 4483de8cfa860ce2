"""The Images gRPC servicer: a thin translation between proto messages and the image modules
(manager.py's catalogue, transfer.py, archive.py, commit.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.common.grpc import grpc_errors
from services.common.paths import Paths
from services.gen.skiff.highlevel.v1 import (
    CommitImageRequest,
    CommitImageResponse,
    ComposeImageRequest,
    ComposeImageResponse,
    ImageProgress,
    ImagesBase,
    ImageSummary,
    ImportImageRequest,
    ImportImageResponse,
    InspectImageRequest,
    InspectImageResponse,
    ListImagesRequest,
    ListImagesResponse,
    LoadImagesRequest,
    LoadImagesResponse,
    LoginRequest,
    LoginResponse,
    PruneImagesRequest,
    PruneImagesResponse,
    PullImageRequest,
    PushImageRequest,
    RegistryAuth,
    RegistrySettings,
    RemovedImage,
    RemoveImageRequest,
    RemoveImageResponse,
    SaveImagesRequest,
    SaveImagesResponse,
    TagImageRequest,
    TagImageResponse,
)
from services.gen.skiff.highlevel.v1 import (
    Descriptor as PbDescriptor,
)
from services.highlevel.images import archive, commit, transfer
from services.highlevel.images.manager import ImageInfo, ImageManager
from services.highlevel.images.manifest import chain_ids
from services.highlevel.images.progress import ProgressEvent, ProgressFn
from services.highlevel.images.reference import parse_reference
from services.highlevel.images.registry import Credentials, RegistryClient, RegistryOptions, registry_host


def summary(info: ImageInfo) -> ImageSummary:
    return ImageSummary(
        id=info.id, repo_tags=info.repo_tags, repo_digests=info.repo_digests, created=info.created,
        size=info.size, manifest_digest=info.manifest_digest, media_type=info.media_type,
        config=json.dumps(info.config).encode(),
        layers=[PbDescriptor(media_type=x.media_type, digest=x.digest, size=x.size) for x in info.layers],
        diff_ids=info.diff_ids, chain_ids=chain_ids(info.diff_ids),
    )


def _progress_pb(ev: ProgressEvent) -> ImageProgress:
    return ImageProgress(id=ev.id, status=ev.status.value, current=ev.current, total=ev.total, detail=ev.detail)


def _credentials(reference: str, auth: RegistryAuth | None) -> dict[str, Credentials] | None:
    if auth is None or not (auth.username or auth.identity_token):
        return None
    host = registry_host(auth.server_address) if auth.server_address else \
        RegistryClient.host_of(parse_reference(reference))
    return {host: Credentials(auth.username, auth.password, auth.identity_token)}


def _options(base: RegistryOptions, s: RegistrySettings | None) -> RegistryOptions:
    if s is None:
        return base
    changes: dict[str, Any] = {}
    if s.ca_file:
        changes["ca_file"] = Path(s.ca_file)
    if s.plain_http:
        changes["plain_http"] = True
    if s.timeout_seconds > 0:
        changes["connect_timeout"] = changes["read_timeout"] = s.timeout_seconds
    if s.retries:
        changes["retries"] = s.retries
    if s.mirrors:
        changes["mirrors"] = tuple(s.mirrors)
    if s.insecure_registries:
        changes["insecure"] = tuple(s.insecure_registries)
    if s.max_concurrent_downloads:
        changes["concurrency"] = s.max_concurrent_downloads
    if not changes:
        return base
    return dataclasses.replace(base, **changes)


async def _stream(run: Callable[[ProgressFn], Awaitable[ImageProgress]]) -> AsyncIterator[ImageProgress]:
    """Run an operation that reports progress, yielding its events as they come, then its result."""
    queue: asyncio.Queue[ImageProgress | None] = asyncio.Queue()

    async def worker() -> ImageProgress:
        try:
            return await run(lambda ev: queue.put_nowait(_progress_pb(ev)))
        finally:
            queue.put_nowait(None)

    task = asyncio.create_task(worker())
    try:
        while (item := await queue.get()) is not None:
            yield item
        yield await task
    finally:
        # A client that goes away cancels the pull; its lease then lets GC take the partial blobs.
        task.cancel()


class ImagesService(ImagesBase):
    def __init__(self, paths: Paths, manager: ImageManager | None = None) -> None:
        self.manager = manager or ImageManager(paths)

    @grpc_errors
    async def pull(self, request: PullImageRequest) -> AsyncIterator[ImageProgress]:
        creds = _credentials(request.reference, request.auth)
        opts = _options(self.manager.registry_options, request.registry)

        async def run(progress: ProgressFn) -> ImageProgress:
            info = await transfer.pull(self.manager, request.reference, credentials=creds, progress=progress,
                                       options=opts)
            return ImageProgress(status="Done", image=summary(info))

        async for item in _stream(run):
            yield item

    @grpc_errors
    async def login(self, request: LoginRequest) -> LoginResponse:
        auth = request.auth or RegistryAuth()
        host = registry_host(auth.server_address)
        creds = {host: Credentials(auth.username, auth.password, auth.identity_token)}
        async with RegistryClient(_options(self.manager.registry_options, request.registry), creds) as client:
            await client.login(host)
        return LoginResponse(status="Login Succeeded")

    @grpc_errors
    async def push(self, request: PushImageRequest) -> AsyncIterator[ImageProgress]:
        creds = _credentials(request.reference, request.auth)
        opts = _options(self.manager.registry_options, request.registry)

        async def run(progress: ProgressFn) -> ImageProgress:
            digest = await transfer.push(self.manager, request.reference, credentials=creds, progress=progress,
                                         options=opts)
            return ImageProgress(status="Done", digest=digest)

        async for item in _stream(run):
            yield item

    @grpc_errors
    async def list(self, request: ListImagesRequest) -> ListImagesResponse:
        infos = await asyncio.to_thread(self.manager.list)
        return ListImagesResponse(images=[summary(i) for i in infos])

    @grpc_errors
    async def inspect(self, request: InspectImageRequest) -> InspectImageResponse:
        return InspectImageResponse(image=summary(await asyncio.to_thread(self.manager.inspect, request.reference)))

    @grpc_errors
    async def tag(self, request: TagImageRequest) -> TagImageResponse:
        return TagImageResponse(name=self.manager.tag(request.source, request.target))

    @grpc_errors
    async def remove(self, request: RemoveImageRequest) -> RemoveImageResponse:
        items = await self.manager.remove(request.reference, force=request.force,
                                          in_use=lambda _id: request.in_use, prune=not request.no_prune)
        return RemoveImageResponse(items=[RemovedImage(untagged=i.untagged, deleted=i.deleted) for i in items])

    @grpc_errors
    async def save(self, request: SaveImagesRequest) -> SaveImagesResponse:
        if not request.path:
            raise InvalidArgument("save: an output path is required")
        await archive.save(self.manager, list(request.references), Path(request.path))
        return SaveImagesResponse()

    @grpc_errors
    async def load(self, request: LoadImagesRequest) -> LoadImagesResponse:
        return LoadImagesResponse(messages=await archive.load(self.manager, Path(request.path)))

    @grpc_errors
    async def import_(self, request: ImportImageRequest) -> ImportImageResponse:
        overrides = json.loads(request.config) if request.config else None
        image_id = await commit.import_rootfs(self.manager, Path(request.path), request.reference or None,
                                              message=request.message, config_overrides=overrides)
        return ImportImageResponse(id=image_id)

    @grpc_errors
    async def commit(self, request: CommitImageRequest) -> CommitImageResponse:
        overrides = json.loads(request.config) if request.config else None
        image_id = await commit.commit(
            self.manager, request.snapshot_key, request.parent_image or None, request.reference or None,
            comment=request.comment, author=request.author, config_overrides=overrides,
            created_by=request.created_by)
        return CommitImageResponse(id=image_id)

    @grpc_errors
    async def compose(self, request: ComposeImageRequest) -> ComposeImageResponse:
        image_id = await commit.compose(
            self.manager, request.parent_image or None, request.source_image, request.layer_diff_id,
            json.loads(request.config or b"{}"), json.loads(request.history or b"{}"))
        return ComposeImageResponse(id=image_id)

    @grpc_errors
    async def prune(self, request: PruneImagesRequest) -> PruneImagesResponse:
        blobs, snaps = await self.manager.gc()
        return PruneImagesResponse(blobs=blobs, snapshots=snaps)


def make_services(config: Any) -> list[Any]:
    """The highlevel server's plugin hook: both servicers over one shared manager."""
    from services.highlevel.snapshots.service import SnapshotsService

    manager = ImageManager(config.paths)
    return [ImagesService(config.paths, manager), SnapshotsService(config.paths, manager)]
