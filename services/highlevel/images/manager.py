"""The local image catalogue: names to images, inspect and list, tag and remove, GC, container roots.

ImageManager ties the content store, the image store (names to manifests) and the snapshotter
together; it resolves names, full and short ids, renders what an image is, removes names and the
blobs and layers no image needs any more, and prepares a container's root filesystem over the
image's unpacked layers. Whatever brings new images in works on top of it: transfer.py (pull, push),
archive.py (save, load), commit.py (commit, import). The gRPC servicer is a thin translation over
these.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import Conflict, InvalidArgument, NotFound
from services.common.paths import Paths
from services.highlevel.content.store import ContentStore, Lease
from services.highlevel.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_MANIFEST,
    Descriptor,
    ImageConfig,
    Manifest,
    chain_ids,
    sha256_digest,
)
from services.highlevel.images.progress import ProgressEvent, ProgressFn, ProgressStatus, no_progress, short_id
from services.highlevel.images.reference import Reference, parse_reference
from services.highlevel.images.registry import Credentials, RegistryClient, RegistryOptions
from services.highlevel.images.store import ImageRecord, ImageStore
from services.highlevel.snapshots.snapshotter import Driver, Snapshotter
from services.highlevel.snapshots.unpack import UnpackLimits

# A full or short image id, with or without its algorithm.
HEX_RE = re.compile(r"^(sha256:)?[a-f0-9]{3,64}$")


@dataclass(slots=True)
class ImageInfo:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    created: str
    size: int
    manifest_digest: str
    media_type: str
    config: dict[str, Any]
    layers: list[Descriptor] = field(default_factory=list)

    @property
    def diff_ids(self) -> list[str]:
        return ImageConfig(self.config).diff_ids

    @property
    def history(self) -> list[dict[str, Any]]:
        return ImageConfig(self.config).history


@dataclass(frozen=True, slots=True)
class RemovedItem:
    untagged: str = ""
    deleted: str = ""


class ImageManager:
    def __init__(self, paths: Paths, *, registry_options: RegistryOptions | None = None,
                 driver: Driver | None = None, limits: UnpackLimits | None = None) -> None:
        lib = paths.highlevel_lib
        self.paths = paths
        self.content = ContentStore(lib / "content")
        self.store = ImageStore(lib / "images")
        self.snapshots = Snapshotter(lib / "snapshots", driver, limits)
        self.registry_options = registry_options or RegistryOptions(certs_d=paths.certs_d)
        self.tmp = lib / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    # -- reading images -----------------------------------------------------------------------
    def parts(self, rec: ImageRecord) -> tuple[Manifest, ImageConfig]:
        manifest = Manifest.parse(self.content.read_bytes(rec.target.digest), rec.target.media_type)
        config = ImageConfig.parse(self.content.read_bytes(manifest.config.digest))
        return manifest, config

    def records_by_id(self) -> dict[str, list[ImageRecord]]:
        out: dict[str, list[ImageRecord]] = {}
        for rec in self.store.list():
            try:
                manifest = Manifest.parse(self.content.read_bytes(rec.target.digest), rec.target.media_type)
            except NotFound:
                continue
            out.setdefault(manifest.config.digest, []).append(rec)
        return out

    def resolve(self, text: str) -> tuple[str, list[ImageRecord]]:
        """(image id, records naming it) for a name, a name@digest, a full or short image id."""
        try:
            ref = parse_reference(text)
        except InvalidArgument:
            ref = None
        if ref is not None:
            rec = self.store.find(str(ref))
            if rec is None and ref.digest:
                # A digest reference matches any name of that repository pinned to that manifest.
                for r in self.store.list():
                    if r.target.digest == ref.digest and parse_reference(r.name).repository == ref.repository:
                        rec = r
                        break
            if rec is not None:
                manifest, _ = self.parts(rec)
                return manifest.config.digest, [rec]
        if HEX_RE.match(text):
            want = text if text.startswith("sha256:") else "sha256:" + text
            hits = {i: recs for i, recs in self.records_by_id().items() if i.startswith(want)}
            if len(hits) > 1:
                raise InvalidArgument(f"ambiguous image id prefix `{text}`")
            if hits:
                image_id, recs = next(iter(hits.items()))
                return image_id, recs
        raise NotFound(f"No such image: {text}")

    def info(self, image_id: str, recs: list[ImageRecord]) -> ImageInfo:
        manifest, config = self.parts(recs[0])
        tags, digests = [], []
        for r in recs:
            ref = parse_reference(r.name) if not r.name.startswith("sha256:") else None
            if ref is None:
                continue
            if ref.tag:
                tags.append(ref.familiar)
            if r.sources or ref.digest:
                digests.append(f"{ref.familiar_repository}@{r.target.digest}")
        return ImageInfo(
            id=image_id, repo_tags=sorted(tags), repo_digests=sorted(set(digests)),
            created=str(config.raw.get("created", "")),
            size=sum(layer.size for layer in manifest.layers),
            manifest_digest=recs[0].target.digest, media_type=recs[0].target.media_type,
            config=config.raw, layers=manifest.layers,
        )

    def inspect(self, text: str) -> ImageInfo:
        image_id, recs = self.resolve(text)
        all_recs = self.records_by_id().get(image_id, recs)
        return self.info(image_id, all_recs)

    def list(self) -> list[ImageInfo]:
        return [self.info(i, recs) for i, recs in self.records_by_id().items()]

    # -- names --------------------------------------------------------------------------------
    def tag(self, source: str, target: str) -> str:
        _, recs = self.resolve(source)
        ref = parse_reference(target)
        if ref.digest:
            raise InvalidArgument("refusing to create a tag with a digest reference")
        src = recs[0]
        self.store.put(ImageRecord(str(ref), src.target, index_digest=src.index_digest, sources=list(src.sources)))
        return str(ref)

    async def remove(self, text: str, *, force: bool = False,
                     in_use: Callable[[str], bool] | None = None, prune: bool = True) -> list[RemovedItem]:
        """Untag, and delete the image when its last name goes. ``in_use(image_id)`` is the daemon's word.
        An image others were committed over stays when its last name goes, nameless (as dockerd keeps
        it), and cannot be deleted by id even forced."""
        image_id, recs = self.resolve(text)
        all_recs = self.records_by_id().get(image_id, recs)
        by_id = not any(r.name == str(safe_reference(text)) for r in recs) and HEX_RE.match(text) is not None
        targets = all_recs if by_id else recs
        if by_id and len({parse_reference(r.name).repository for r in all_recs if "/" in r.name}) > 1 and not force:
            raise Conflict(f"conflict: unable to delete {short_id(image_id)} (must be forced) - "
                           "image is referenced in multiple repositories")
        last = len(targets) == len(all_recs)
        children = self.children(image_id) if last else []
        if by_id and children:
            raise Conflict(f"conflict: unable to delete {short_id(image_id)} (cannot be forced) - "
                           "image has dependent child images")
        if last and in_use is not None and in_use(image_id) and not force:
            raise Conflict(f"conflict: unable to remove repository reference \"{text}\" - "
                           f"image {short_id(image_id)} is being used by a container")
        out: list[RemovedItem] = []
        for r in targets:
            self.store.delete(r.name)
            if not r.name.startswith("sha256:"):
                out.append(RemovedItem(untagged=parse_reference(r.name).familiar))
        if last and children:
            kept = targets[0]
            self.store.put(ImageRecord(kept.target.digest, kept.target, kept.created, index_digest=kept.index_digest))
        elif last:
            out.append(RemovedItem(deleted=image_id))
            if prune:
                await self.gc()
        return out

    def children(self, image_id: str) -> list[str]:
        """The images committed over ``image_id`` (their config names it as parent)."""
        out = []
        for child_id, recs in self.records_by_id().items():
            try:
                _, config = self.parts(recs[0])
            except NotFound:
                continue
            if config.raw.get("parent") == image_id:
                out.append(child_id)
        return out

    def referenced(self) -> tuple[set[str], set[str]]:
        """Blobs and committed snapshots some image still needs."""
        blobs: set[str] = set()
        chains: set[str] = set()
        for rec in self.store.list():
            blobs.add(rec.target.digest)
            if rec.index_digest:
                blobs.add(rec.index_digest)
            try:
                manifest, config = self.parts(rec)
            except NotFound:
                continue
            blobs.add(manifest.config.digest)
            blobs.update(layer.digest for layer in manifest.layers)
            chains.update(chain_ids(config.diff_ids))
        return blobs, chains

    async def gc(self) -> tuple[list[str], list[str]]:
        """Remove blobs and layer snapshots no image needs; a lease (pull, load in flight) keeps its own."""
        blobs, chains = self.referenced()
        removed_blobs = await asyncio.to_thread(self.content.gc, blobs)
        removed_snaps = await asyncio.to_thread(self.snapshots.gc, chains | self.content.leased())
        return removed_blobs, removed_snaps

    # -- rootfs -------------------------------------------------------------------------------
    async def ensure_unpacked(self, manifest: Manifest, config: ImageConfig,
                              progress: ProgressFn = no_progress) -> str | None:
        diff_ids = config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"image config lists {len(diff_ids)} diff IDs for {len(manifest.layers)} layers")
        parent: str | None = None
        for layer, chain in zip(manifest.layers, chain_ids(diff_ids), strict=True):
            if not self.snapshots.exists(chain):
                lid = short_id(layer.digest)
                progress(ProgressEvent(lid, ProgressStatus.EXTRACTING, 0, layer.size))
                await asyncio.to_thread(self.snapshots.unpack, chain, parent,
                                        self.content.blob_path(layer.digest), _diff_for(chain, diff_ids))
                progress(ProgressEvent(lid, ProgressStatus.PULL_COMPLETE))
            parent = chain
        return parent

    async def prepare(self, image: str, key: str, *, mount: bool = True,
                      labels: dict[str, str] | None = None) -> Path:
        """A container's root filesystem: unpack what is missing, then a writable snapshot over it."""
        image_id, recs = self.resolve(image)
        manifest, config = self.parts(recs[0])
        top = await self.ensure_unpacked(manifest, config)
        return await asyncio.to_thread(self.snapshots.prepare, key, top, mount=mount,
                                       labels={"image": image_id, **(labels or {})})

    async def export(self, key: str, out: Path) -> None:
        """``docker export``: a container's whole filesystem as one tar."""
        await asyncio.to_thread(self.snapshots.write_export_tar, key, out)

    # -- writing, for pull, load, import and commit --------------------------------------------
    def client(self, credentials: dict[str, Credentials] | None,
               options: RegistryOptions | None = None) -> RegistryClient:
        return RegistryClient(options or self.registry_options, credentials)

    def write_manifest(self, cfg_digest: str, layers: list[Descriptor], lease: Lease) -> Descriptor:
        doc = {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": Descriptor(DOCKER_CONFIG, cfg_digest, self.content.size(cfg_digest)).to_json(),
            "layers": [x.to_json() for x in layers],
        }
        raw = json.dumps(doc, indent=3).encode()
        digest = self.content.write_bytes(raw, sha256_digest(raw))
        lease.digests.add(digest)
        return Descriptor(DOCKER_MANIFEST, digest, len(raw))

    def write_config(self, config: dict[str, Any], lease: Lease) -> str:
        raw = json.dumps(config, separators=(",", ":")).encode()
        digest = self.content.write_bytes(raw, sha256_digest(raw))
        lease.digests.add(digest)
        return digest

    async def discard(self, lease: Lease) -> None:
        """After a failed pull, load, import or commit: drop its blobs and layers no image references."""
        blobs, chains = self.referenced()
        mine = set(lease.digests)
        lease.digests.clear()
        # Other writers in flight keep what they leased, even what this one also touched.
        others = self.content.leased()
        for d in mine - blobs - others:
            self.content.delete(d)
        await asyncio.to_thread(self.snapshots.gc, chains | others)


def safe_reference(text: str) -> Reference | None:
    """The reference ``text`` names, or None when it is no reference (an image id, say)."""
    try:
        return parse_reference(text)
    except InvalidArgument:
        return None


def _diff_for(chain: str, diff_ids: list[str]) -> str:
    return diff_ids[chain_ids(diff_ids).index(chain)]
