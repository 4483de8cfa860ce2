"""The daemon's Images service: highlevel's images, plus what only the daemon knows (which images
its containers use, a container's Config), for remove, prune and commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from services.common.daemon_config import DaemonConfig
from services.common.errors import Conflict, FailedPrecondition, NotFound
from services.common.grpc import call, client_errors, grpc_errors
from services.daemon.container_ops import Operations
from services.daemon.containers import EXIT_REPORT_GRACE, ContainerManager
from services.daemon.records import Entry
from services.daemon.spec import merge_env
from services.dockermodel.render import container_inspect
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import (
    CommitContainerRequest,
    Empty,
    ImagePruneRequest,
    ImagePruneResponse,
    ImagesBase,
    ImagesInUseResponse,
    State,
)

hl = highlevel.v1


def _labels_match(labels: dict[str, str], wanted: list[str]) -> bool:
    """Docker's label filters: ``key``, ``key=value``; a leading ``!`` negates (label!=)."""
    for item in wanted:
        negate = item.startswith("!")
        key, sep, value = item.removeprefix("!").partition("=")
        hit = key in labels and (not sep or labels[key] == value)
        if hit == negate:
            return False
    return True


def commit_config(container: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The committed image's Config as dockerd makes it (daemon/commit.go): the container's own Config,
    the client's config and --change over it; Env, Labels, ExposedPorts and Volumes merged key by key
    (the client's winning); an Entrypoint of the client's drops the container's Cmd unless it gave one."""
    out = {**container, **user}
    if user.get("Env"):
        out["Env"] = merge_env(list(container.get("Env") or []), list(user["Env"]))
    for key in ("Labels", "ExposedPorts", "Volumes"):
        if user.get(key):
            out[key] = {**(container.get(key) or {}), **user[key]}
    if user.get("Entrypoint") and "Cmd" not in user:
        out["Cmd"] = None
    return out


async def _exit_reported(entry: Entry, timeout: float) -> bool:
    """True once the container no longer runs (its exit recorded), within ``timeout`` seconds."""
    async def until() -> None:
        while entry.running and not entry.removed:
            await entry.changed.wait()
    try:
        await asyncio.wait_for(until(), timeout)
    except TimeoutError:
        return False
    return True


def with_registry_settings(settings: hl.RegistrySettings | None, config: DaemonConfig, *,
                           pull: bool) -> hl.RegistrySettings:
    """daemon.json's registry keys in force, on a request to highlevel: insecure-registries for every one;
    registry-mirrors and max-concurrent-downloads for a pull. A SIGHUP reload applies from the next request."""
    out = settings or hl.RegistrySettings()
    out.insecure_registries = list(config.insecure_registries)
    if pull:
        out.mirrors = list(config.registry_mirrors)
        out.max_concurrent_downloads = config.max_concurrent_downloads
    return out


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text)


class ImagesService(ImagesBase):
    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager
        self.images = manager.images
        self.ops = Operations(manager)

    def _in_use(self) -> set[str]:
        return {e.record.image_id for e in self.manager.entries.values() if e.record.image_id}

    @grpc_errors
    async def list(self, list_images_request: hl.ListImagesRequest) -> hl.ListImagesResponse:
        return await call(self.images.list(list_images_request))

    @grpc_errors
    async def inspect(self, inspect_image_request: hl.InspectImageRequest) -> hl.InspectImageResponse:
        return await call(self.images.inspect(inspect_image_request))

    @grpc_errors
    async def load(self, load_images_request: hl.LoadImagesRequest) -> hl.LoadImagesResponse:
        with self.manager.changing_images():
            return await call(self.images.load(load_images_request))

    @grpc_errors
    async def remove(self, remove_image_request: hl.RemoveImageRequest) -> hl.RemoveImageResponse:
        r = remove_image_request
        image = (await call(self.images.inspect(hl.InspectImageRequest(reference=r.reference)))).image
        entries = [e for e in self.manager.entries.values() if e.record.image_id == image.id]
        users = [e.record.id for e in entries]
        by_id = r.reference.lower().removeprefix("sha256:")
        named_by_id = len(by_id) >= 4 and _is_hex(by_id) and image.id.removeprefix("sha256:").startswith(by_id)
        if users and not r.force and named_by_id:
            # Docker's wording tells a running user from a stopped one (a running one needs force always).
            state = "running" if entries[0].running else "stopped"
            raise Conflict(f"conflict: unable to delete {image.id[7:19]} (must be forced) - image is being used "
                           f"by {state} container {users[0][:12]}")
        if users and not r.force and len(image.repo_tags) <= 1:
            # Its last name: Docker refuses this too, and says which container holds it.
            raise Conflict(f'conflict: unable to remove repository reference "{r.reference}" (must force) - '
                           f"container {users[0][:12]} is using its referenced image {image.id[7:19]}")
        r.in_use = bool(users)
        with self.manager.changing_images():
            reply = await call(self.images.remove(r))
        if not r.no_prune and any(item.deleted == image.id for item in reply.items):
            reply.items.extend(await self._prune_parents(image))
        return reply

    async def _prune_parents(self, image: hl.ImageSummary) -> list[hl.RemovedImage]:
        """dockerd's delete of a committed image also deletes the images below it that nothing else
        needs: nameless, no other child, no container."""
        items: list[hl.RemovedImage] = []
        used = self._in_use()
        while parent := str(json.loads(image.config or b"{}").get("parent") or ""):
            images = (await call(self.images.list(hl.ListImagesRequest()))).images
            found = [i for i in images if i.id == parent]
            children = [i for i in images if json.loads(i.config or b"{}").get("parent") == parent]
            if not found or found[0].repo_tags or found[0].repo_digests or children or parent in used:
                break
            image = found[0]
            with self.manager.changing_images():
                reply = await call(self.images.remove(hl.RemoveImageRequest(reference=parent, force=True)))
            items.extend(reply.items)
        return items

    @grpc_errors
    async def pull(self, highlevel_v1_pull_image_request: hl.PullImageRequest) -> AsyncIterator[hl.ImageProgress]:
        request = highlevel_v1_pull_image_request
        request.registry = with_registry_settings(request.registry, self.manager.settings.current, pull=True)
        with client_errors(), self.manager.changing_images():
            async for item in self.images.pull(request):
                yield item

    @grpc_errors
    async def push(self, highlevel_v1_push_image_request: hl.PushImageRequest) -> AsyncIterator[hl.ImageProgress]:
        request = highlevel_v1_push_image_request
        request.registry = with_registry_settings(request.registry, self.manager.settings.current, pull=False)
        with client_errors():
            async for item in self.images.push(request):
                yield item

    @grpc_errors
    async def login(self, highlevel_v1_login_request: hl.LoginRequest) -> hl.LoginResponse:
        # highlevel's registry client checks the credentials, as it would for a pull.
        request = highlevel_v1_login_request
        request.registry = with_registry_settings(request.registry, self.manager.settings.current, pull=False)
        return await call(self.images.login(request))

    @grpc_errors
    async def tag(self, highlevel_v1_tag_image_request: hl.TagImageRequest) -> hl.TagImageResponse:
        with self.manager.changing_images():
            return await call(self.images.tag(highlevel_v1_tag_image_request))

    @grpc_errors
    async def save(self, highlevel_v1_save_images_request: hl.SaveImagesRequest) -> hl.SaveImagesResponse:
        return await call(self.images.save(highlevel_v1_save_images_request))

    @grpc_errors
    async def import_(self, highlevel_v1_import_image_request: hl.ImportImageRequest) -> hl.ImportImageResponse:
        with self.manager.changing_images():
            return await call(self.images.import_(highlevel_v1_import_image_request))

    @grpc_errors
    async def commit(self, commit_container_request: CommitContainerRequest) -> hl.CommitImageResponse:
        return await self.commit_container(commit_container_request, pause=not commit_container_request.no_pause)

    async def commit_container(self, request: CommitContainerRequest, *, pause: bool) -> hl.CommitImageResponse:
        """Docker's commit: a running container is frozen (the pause path: cgroup freezer) while its
        filesystem is captured, and thawed after, whatever the outcome. One already paused stays so."""
        entry = self.manager.get(request.container)
        record = entry.record
        paused_here = False
        if pause and record.state.status == State.RUNNING:
            try:
                await self.ops.pause(record.id, True)
                paused_here = True
            except (Conflict, FailedPrecondition):
                # It exited between the look and the pause (the shim refuses to freeze a process that
                # has ended before its exit reaches the record): dockerd commits a stopped container as is.
                if not await _exit_reported(entry, EXIT_REPORT_GRACE):
                    raise
        container_config = container_inspect(record)["Config"]
        config = commit_config(container_config, json.loads(request.config or b"{}"))
        # dockerd's history line for a commit: the container's command.
        created_by = " ".join(container_config.get("Cmd") or [])
        try:
            # The snapshot key is the container id (containers.py prepares it so).
            with self.manager.changing_images():
                reply = await call(self.images.commit(hl.CommitImageRequest(
                    snapshot_key=record.id, parent_image=record.image_id, reference=request.reference,
                    comment=request.comment, author=request.author, config=json.dumps(config).encode(),
                    created_by=created_by)))
            self.manager.emit("commit", entry, {"comment": request.comment, "imageID": reply.id,
                                                "imageRef": request.reference})
            return reply
        finally:
            if paused_here:
                # Shielded: a caller that goes away must not leave the container frozen. Someone may
                # have unpaused it, or it may have been killed or removed meanwhile: nothing to thaw.
                with contextlib.suppress(Conflict, NotFound):
                    await asyncio.shield(self.ops.pause(record.id, False))

    @grpc_errors
    async def prune(self, image_prune_request: ImagePruneRequest) -> ImagePruneResponse:
        r = image_prune_request
        used = self._in_use()
        items: list[hl.RemovedImage] = []
        reclaimed = 0
        removed: set[str] = set()
        # dockerd prunes heads: an image others were committed over goes once they have gone (the next
        # pass), as its delete of a child prunes the nameless parents below it.
        while True:
            images = [i for i in (await call(self.images.list(hl.ListImagesRequest()))).images if i.id not in removed]
            parents = {str(json.loads(i.config or b"{}").get("parent") or "") for i in images}
            before = len(removed)
            for image in images:
                if image.id in used or image.id in parents or (image.repo_tags and not r.all):
                    continue
                labels = (json.loads(image.config or b"{}").get("config") or {}).get("Labels") or {}
                if not _labels_match(labels, list(r.labels)):
                    continue
                # By id and forced: every name goes with it; the in-use check was done above.
                with self.manager.changing_images():
                    reply = await call(self.images.remove(hl.RemoveImageRequest(reference=image.id, force=True)))
                items.extend(reply.items)
                reclaimed += image.size
                removed.add(image.id)
            if len(removed) == before:
                break
        if items:
            await call(self.images.prune(hl.PruneImagesRequest()))
        return ImagePruneResponse(items=items, space_reclaimed=reclaimed)

    @grpc_errors
    async def in_use(self, empty: Empty) -> ImagesInUseResponse:
        return ImagesInUseResponse(ids=sorted(self._in_use()))
