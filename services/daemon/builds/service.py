"""The daemon's Builds service: a build's request (options, then the context's bytes) received in
memory (spilled to a file past IN_MEMORY_MAX), its context extracted or reused (kept_contexts.py),
the build run (builder.py) in a scratch folder of its own while its messages stream back through an
Outlet, the folder removed after whatever the outcome; the cache's prune and usage."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import structlog

from services.common.errors import InvalidArgument, NotFound, SkiffError
from services.common.grpc import call, grpc_errors
from services.daemon.builds.builder import Build
from services.daemon.builds.cache import BuildCache
from services.daemon.builds.kept_contexts import KeptContexts
from services.daemon.builds.kept_images import KeptImages
from services.daemon.builds.outlet import Outlet
from services.daemon.builds.steps import StepFailed
from services.daemon.containers import ContainerManager
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    BuildCacheRecord,
    BuildChunk,
    BuildMessage,
    BuildOptions,
    BuildPruneRequest,
    BuildPruneResponse,
    BuildsBase,
    BuildUsageRequest,
    BuildUsageResponse,
)

hl = highlevel.v1
log = structlog.get_logger(service="daemon")
IN_MEMORY_MAX = 16 << 20  # a context up to this size is kept in memory, a larger one goes to a file


@dataclass(slots=True)
class Body:
    data: Path | bytes      # the request's bytes, or the file they were spilled to
    size: int
    digest: str             # sha256 of the bytes: kept_contexts.py's key


def _tag_name(tag: str) -> str:
    """docker build -t name: ``name:latest`` (what Successfully tagged shows)."""
    last = tag.rsplit("/", 1)[-1]
    return tag if ":" in last or "@" in tag else f"{tag}:latest"


class BuildsService(BuildsBase):
    def __init__(self, manager: ContainerManager, cache_file: Path, work: Path) -> None:
        self.manager = manager
        self.cache = BuildCache(cache_file)
        self.images = KeptImages(manager)
        self.contexts = KeptContexts(work / "contexts")
        self.work = work
        self.cleanups: set[asyncio.Future[None]] = set()
        # Folders of builds cut short by a stop or a crash of the daemon: nothing reads them again.
        shutil.rmtree(work, ignore_errors=True)

    async def build(self, build_chunk_iterator: AsyncIterator[BuildChunk]) -> AsyncIterator[BuildMessage]:
        folder = self.work / secrets.token_hex(12)
        (folder / "scratch").mkdir(parents=True)
        try:
            options, body = await self._receive(build_chunk_iterator, folder / "body")
            outlet = Outlet(options.quiet)
            task = asyncio.ensure_future(self._run(options, body, folder, outlet))
            try:
                async for message in outlet.messages():
                    yield message
            finally:
                if not task.done():
                    task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        except SkiffError as exc:
            yield BuildMessage(error=exc.message, error_code=1)
        finally:
            # The folder goes after the answer has: the client's wait does not include the removal.
            cleanup = asyncio.ensure_future(asyncio.to_thread(shutil.rmtree, folder, True))
            self.cleanups.add(cleanup)
            cleanup.add_done_callback(self.cleanups.discard)

    async def _receive(self, chunks: AsyncIterator[BuildChunk], spill: Path) -> tuple[BuildOptions, Body]:
        """The options and the context: its bytes, or past IN_MEMORY_MAX the file ``spill`` holding them."""
        options: BuildOptions | None = None
        held: list[bytes] = []
        size = 0
        digest = hashlib.sha256()
        out = None
        try:
            async for chunk in chunks:
                if options is None:
                    options = chunk.options or BuildOptions()
                if not chunk.data:
                    continue
                digest.update(chunk.data)
                if out is None:
                    held.append(chunk.data)
                    if size + len(chunk.data) > IN_MEMORY_MAX:
                        out = await asyncio.to_thread(open, spill, "wb")
                        await asyncio.to_thread(out.writelines, held)
                        held = []
                else:
                    await asyncio.to_thread(out.write, chunk.data)
                size += len(chunk.data)
        finally:
            if out is not None:
                out.close()
        if options is None:
            raise InvalidArgument("empty build request")
        return options, Body(spill if out is not None else b"".join(held), size, digest.hexdigest())

    async def _run(self, options: BuildOptions, body: Body, folder: Path, outlet: Outlet) -> None:
        ctx = None
        try:
            started = time.perf_counter()
            ctx = await self.contexts.acquire(body.data, body.size, body.digest, options.dockerfile)
            received = time.perf_counter()
            build = Build(self.manager, self.cache, self.images, options, ctx, folder / "scratch", outlet.emit)
            image = await build.run()
            stepped = time.perf_counter()
            named = set(build.final.repo_tags) if build.final is not None else set()
            for tag in options.tags:
                if _tag_name(tag) in named:
                    continue  # a cached rebuild's image has its names already
                try:
                    with self.manager.changing_images():
                        await call(self.manager.images.tag(hl.TagImageRequest(source=image, target=tag)))
                except NotFound:
                    self.images.forget()  # removed behind the daemon's back: the next build asks again
                    raise
            log.info("built", image=image, context_s=round(received - started, 4),
                     steps_s=round(stepped - received, 4), tags_s=round(time.perf_counter() - stepped, 4))
            outlet.succeed(image, [_tag_name(tag) for tag in options.tags])
        except StepFailed as exc:
            outlet.fail(exc.message, exc.code)
        except SkiffError as exc:
            outlet.fail(exc.message, 1)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fault of ours: the client hears it, the log keeps the traceback
            log.exception("build failed")
            outlet.fail(f"{type(exc).__name__}: {exc}", 1)
        finally:
            if ctx is not None:
                self.contexts.release(ctx)
            outlet.end()

    @grpc_errors
    async def prune(self, build_prune_request: BuildPruneRequest) -> BuildPruneResponse:
        """docker builder prune: the cache's steps forgotten, and their images that nothing else needs
        (no name, no child image, no container) removed."""
        used = {e.record.image_id for e in self.manager.entries.values()}
        deleted: list[str] = []
        reclaimed = 0
        keys = list(self.cache.entries)
        images = {e.image for e in self.cache.entries.values()}
        for key in keys:
            self.cache.forget(key)
        self.contexts.drop_unused()
        while True:
            listed = (await call(self.manager.images.list(hl.ListImagesRequest()))).images
            parents = {str(json.loads(i.config or b"{}").get("parent") or "") for i in listed}
            removable = [i for i in listed if i.id in images and not i.repo_tags and i.id not in parents
                         and i.id not in used]
            if not removable:
                break
            for image in removable:
                with contextlib.suppress(NotFound), self.manager.changing_images():
                    await call(self.manager.images.remove(hl.RemoveImageRequest(reference=image.id, force=True)))
                    deleted.append(image.id)
                    reclaimed += image.size
                images.discard(image.id)
        if deleted:
            await call(self.manager.images.prune(hl.PruneImagesRequest()))
        await asyncio.to_thread(self.cache.save)
        return BuildPruneResponse(caches_deleted=deleted, space_reclaimed=reclaimed)

    @grpc_errors
    async def usage(self, build_usage_request: BuildUsageRequest) -> BuildUsageResponse:
        from datetime import UTC, datetime

        def iso(ts: float) -> str:
            return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        listed = {i.id: i for i in (await call(self.manager.images.list(hl.ListImagesRequest()))).images}
        records = []
        for key, entry in self.cache.entries.items():
            image = listed.get(entry.image)
            if image is None:
                continue
            records.append(BuildCacheRecord(
                id=key[:25], parent=entry.parent, type="regular", description=entry.description,
                in_use=bool(image.repo_tags), shared=False, size=image.size, created_at=iso(entry.created),
                last_used_at=iso(entry.last_used), usage_count=entry.uses))
        return BuildUsageResponse(records=records)
