"""CRI's ``runtime.v1.ImageService`` over highlevel's Images service: the same content store and
image catalogue as Docker's images (a CRI pull is seen by ``docker images`` and the other way round).

Semantics follow containerd's CRI plugin (pkg/cri/server/image_*.go):
- names are shown fully qualified (``docker.io/library/busybox:latest``), never Docker's familiar form;
- ``ImageStatus`` of an unknown image is an empty answer, not an error; ``RemoveImage`` of one is
  a success; removing an image by any of its names or its id removes it with all its names;
- the image's user splits into ``uid`` (numeric) or ``username``, as kubelet's ``runAsNonRoot``
  checks read it;
- ``ImageFsInfo`` reports the snapshot folder's usage (bytes and inodes), what kubelet's image GC
  watches.
``AuthConfig.registry_token`` (a bearer token handed over as is) is not supported by highlevel's
registry client: it is ignored with a warning and the pull goes on with the other fields.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import time
from pathlib import Path

import structlog
from grpclib.client import Channel

from services.common.errors import InvalidArgument, NotFound
from services.common.grpc import client_errors, grpc_errors
from services.common.paths import Paths, resolve_paths
from services.gen.runtime.v1 import (
    AuthConfig,
    FilesystemIdentifier,
    FilesystemUsage,
    Image,
    ImageFsInfoRequest,
    ImageFsInfoResponse,
    ImageServiceBase,
    ImageSpec,
    ImageStatusRequest,
    ImageStatusResponse,
    Int64Value,
    ListImagesRequest,
    ListImagesResponse,
    PullImageRequest,
    PullImageResponse,
    RemoveImageRequest,
    RemoveImageResponse,
    UInt64Value,
)
from services.gen.skiff.highlevel.v1 import (
    ImagesStub,
    ImageSummary,
    InspectImageRequest,
    RegistryAuth,
)
from services.gen.skiff.highlevel.v1 import (
    ListImagesRequest as HlListImagesRequest,
)
from services.gen.skiff.highlevel.v1 import (
    PullImageRequest as HlPullImageRequest,
)
from services.gen.skiff.highlevel.v1 import (
    RemoveImageRequest as HlRemoveImageRequest,
)

log = structlog.get_logger(service="cri")

DEFAULT_DOMAIN = "docker.io"
OFFICIAL_PREFIX = "library/"


def qualified(name: str) -> str:
    """Docker's familiar name (``busybox:latest``, ``user/app@sha256:…``) as the full one CRI shows
    (``docker.io/library/busybox:latest``); a name whose first part is a host stays as it is."""
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return name
    if not sep:
        return f"{DEFAULT_DOMAIN}/{OFFICIAL_PREFIX}{name}"
    return f"{DEFAULT_DOMAIN}/{name}"


def image_user(config: dict[str, object]) -> tuple[int | None, str]:
    """The image config's ``User`` as containerd's getUserFromImage: ``uid[:gid]`` gives the uid,
    ``name[:group]`` the username; no user gives neither."""
    inner = config.get("config") or {}
    user = str(inner.get("User") or "") if isinstance(inner, dict) else ""
    name = user.split(":", 1)[0]
    if not name:
        return None, ""
    try:
        return int(name), ""
    except ValueError:
        return None, name


def to_cri_image(summary: ImageSummary) -> Image:
    config = json.loads(summary.config or b"{}")
    uid, username = image_user(config)
    return Image(
        id=summary.id,
        repo_tags=[qualified(t) for t in summary.repo_tags],
        repo_digests=[qualified(d) for d in summary.repo_digests],
        size=max(summary.size, 1),  # CRI: "must be > 0"; a config-only image has no layer bytes
        uid=Int64Value(value=uid) if uid is not None else None,
        username=username,
        spec=ImageSpec(image=summary.id),
    )


def _verbose_info(summary: ImageSummary) -> dict[str, str]:
    """containerd's verbose ImageStatus: ``info`` holds the chain id and the image config."""
    config = json.loads(summary.config or b"{}")
    chain = summary.chain_ids[-1] if summary.chain_ids else ""
    return {"info": json.dumps({"chainID": chain, "imageSpec": config})}


def _registry_auth(auth: AuthConfig | None) -> RegistryAuth | None:
    """CRI's AuthConfig as highlevel's RegistryAuth (for the reference's own registry)."""
    if auth is None:
        return None
    username, password = auth.username, auth.password
    if auth.auth:
        try:
            decoded = base64.b64decode(auth.auth, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidArgument("auth config: `auth` is not base64 of user:password") from None
        user, sep, secret = decoded.partition(":")
        if not sep:
            raise InvalidArgument("auth config: `auth` does not decode to user:password")
        username, password = user, secret
    if auth.registry_token:
        log.warning("cri pull: registry_token is not supported; pulling with the other credentials")
    if not (username or auth.identity_token):
        return None
    return RegistryAuth(username=username, password=password, identity_token=auth.identity_token)


def _disk_usage(root: Path) -> tuple[int, int]:
    """Bytes (allocated blocks) and inodes below ``root``, each hard-linked inode counted once."""
    seen: set[tuple[int, int]] = set()
    used = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # removed meanwhile (a snapshot going away)
            key = (st.st_dev, st.st_ino)
            if key in seen:
                continue
            seen.add(key)
            used += st.st_blocks * 512
    return used, len(seen)


class CriImageService(ImageServiceBase):
    """``runtime.v1.ImageService``: each call one or two calls to highlevel's Images."""

    def __init__(self, highlevel_channel: Channel, paths: Paths | None = None) -> None:
        self.images = ImagesStub(highlevel_channel)
        self.fs_root = (paths or resolve_paths()).highlevel_lib / "snapshots"

    async def _find(self, reference: str) -> ImageSummary | None:
        """The image a name, name@digest or (short) id names; None when there is none."""
        if not reference:
            raise InvalidArgument("image reference is empty")
        try:
            with client_errors():
                found = await self.images.inspect(InspectImageRequest(reference=reference))
        except NotFound:
            return None
        except InvalidArgument:
            return None  # not a valid reference: no image has it (containerd answers empty too)
        return found.image

    @grpc_errors
    async def list_images(self, request: ListImagesRequest) -> ListImagesResponse:
        wanted = request.filter.image.image if request.filter and request.filter.image else ""
        if wanted:
            found = await self._find(wanted)
            return ListImagesResponse(images=[to_cri_image(found)] if found else [])
        with client_errors():
            listed = await self.images.list(HlListImagesRequest())
        return ListImagesResponse(images=[to_cri_image(s) for s in listed.images])

    @grpc_errors
    async def image_status(self, request: ImageStatusRequest) -> ImageStatusResponse:
        found = await self._find(request.image.image)
        if found is None:
            return ImageStatusResponse()
        info = _verbose_info(found) if request.verbose else {}
        return ImageStatusResponse(image=to_cri_image(found), info=info)

    @grpc_errors
    async def pull_image(self, request: PullImageRequest) -> PullImageResponse:
        reference = request.image.image
        if not reference:
            raise InvalidArgument("PullImage: image reference is empty")
        pull = HlPullImageRequest(reference=reference, auth=_registry_auth(request.auth))
        image_id = ""
        with client_errors():
            async for progress in self.images.pull(pull):
                if progress.image.id:
                    image_id = progress.image.id
        if not image_id:
            raise NotFound(f"PullImage {reference}: the pull ended without an image")
        log.info("cri pull", reference=reference, image=image_id)
        return PullImageResponse(image_ref=image_id)

    @grpc_errors
    async def remove_image(self, request: RemoveImageRequest) -> RemoveImageResponse:
        found = await self._find(request.image.image)
        if found is None:
            return RemoveImageResponse()
        # By id with force: every name goes with the image, as containerd deletes all its references.
        try:
            with client_errors():
                await self.images.remove(HlRemoveImageRequest(reference=found.id, force=True))
        except NotFound:
            pass  # removed meanwhile
        return RemoveImageResponse()

    @grpc_errors
    async def image_fs_info(self, request: ImageFsInfoRequest) -> ImageFsInfoResponse:
        used, inodes = await asyncio.to_thread(_disk_usage, self.fs_root)
        usage = FilesystemUsage(
            timestamp=time.time_ns(),
            fs_id=FilesystemIdentifier(mountpoint=str(self.fs_root)),
            used_bytes=UInt64Value(value=used),
            inodes_used=UInt64Value(value=inodes),
        )
        return ImageFsInfoResponse(image_filesystems=[usage])
