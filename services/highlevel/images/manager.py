"""Images end to end: names, pull and push, save/load/import/export, commit, and rootfs preparation.

Ties the content store, the image store, the registry client and the snapshotter together. The
gRPC servicer is a thin translation over this class; the daemon-side integrator may also use it
directly in-process.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import os
import re
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.errors import Conflict, InvalidArgument, NotFound
from services.common.paths import Paths
from services.highlevel.content.store import ContentStore, Lease
from services.highlevel.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    DOCKER_MANIFEST,
    IMAGE_NAME_ANNOTATION,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageConfig,
    Manifest,
    chain_ids,
    host_platform,
    media_type_of,
    parse_index,
    pick_platform,
    sha256_digest,
)
from services.highlevel.images.progress import ProgressEvent, ProgressFn, ProgressStatus, no_progress, short_id
from services.highlevel.images.reference import Reference, parse_reference
from services.highlevel.images.registry import Credentials, RegistryClient, RegistryOptions
from services.highlevel.images.store import ImageRecord, ImageStore
from services.highlevel.snapshots.snapshotter import Driver, Snapshotter
from services.highlevel.snapshots.unpack import Compression, UnpackLimits, detect_compression, open_decompressed

_HEX_RE = re.compile(r"^(sha256:)?[a-f0-9]{3,64}$")
MAX_CONFIG_BYTES = 8 << 20


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


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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
    def _parts(self, rec: ImageRecord) -> tuple[Manifest, ImageConfig]:
        manifest = Manifest.parse(self.content.read_bytes(rec.target.digest), rec.target.media_type)
        config = ImageConfig.parse(self.content.read_bytes(manifest.config.digest))
        return manifest, config

    def _records_by_id(self) -> dict[str, list[ImageRecord]]:
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
                manifest, _ = self._parts(rec)
                return manifest.config.digest, [rec]
        if _HEX_RE.match(text):
            want = text if text.startswith("sha256:") else "sha256:" + text
            hits = {i: recs for i, recs in self._records_by_id().items() if i.startswith(want)}
            if len(hits) > 1:
                raise InvalidArgument(f"ambiguous image id prefix `{text}`")
            if hits:
                image_id, recs = next(iter(hits.items()))
                return image_id, recs
        raise NotFound(f"No such image: {text}")

    def info(self, image_id: str, recs: list[ImageRecord]) -> ImageInfo:
        manifest, config = self._parts(recs[0])
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
        all_recs = self._records_by_id().get(image_id, recs)
        return self.info(image_id, all_recs)

    def list(self) -> list[ImageInfo]:
        return [self.info(i, recs) for i, recs in self._records_by_id().items()]

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
        """Untag, and delete the image when its last name goes. ``in_use(image_id)`` is the daemon's word."""
        image_id, recs = self.resolve(text)
        all_recs = self._records_by_id().get(image_id, recs)
        by_id = not any(r.name == str(_safe_ref(text)) for r in recs) and _HEX_RE.match(text) is not None
        targets = all_recs if by_id else recs
        if by_id and len({parse_reference(r.name).repository for r in all_recs if "/" in r.name}) > 1 and not force:
            raise Conflict(f"conflict: unable to delete {short_id(image_id)} (must be forced) - "
                           "image is referenced in multiple repositories")
        last = len(targets) == len(all_recs)
        if last and in_use is not None and in_use(image_id) and not force:
            raise Conflict(f"conflict: unable to remove repository reference \"{text}\" - "
                           f"image {short_id(image_id)} is being used by a container")
        out: list[RemovedItem] = []
        for r in targets:
            self.store.delete(r.name)
            if not r.name.startswith("sha256:"):
                out.append(RemovedItem(untagged=parse_reference(r.name).familiar))
        if last:
            out.append(RemovedItem(deleted=image_id))
            if prune:
                await self.gc()
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
                manifest, config = self._parts(rec)
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
        manifest, config = self._parts(recs[0])
        top = await self.ensure_unpacked(manifest, config)
        return await asyncio.to_thread(self.snapshots.prepare, key, top, mount=mount,
                                       labels={"image": image_id, **(labels or {})})

    # -- registry -----------------------------------------------------------------------------
    def client(self, credentials: dict[str, Credentials] | None,
               options: RegistryOptions | None = None) -> RegistryClient:
        return RegistryClient(options or self.registry_options, credentials)

    async def pull(self, text: str, *, credentials: dict[str, Credentials] | None = None,
                   progress: ProgressFn = no_progress, options: RegistryOptions | None = None) -> ImageInfo:
        ref = parse_reference(text)
        with self.content.lease() as lease:
            try:
                return await self._pull(ref, lease, credentials, progress, options)
            except BaseException:
                await self._discard(lease)
                raise

    async def _discard(self, lease: Lease) -> None:
        """After a failed pull: drop its blobs and layers no image references."""
        blobs, chains = self.referenced()
        mine = set(lease.digests)
        lease.digests.clear()
        # Other pulls in flight keep what they leased, even what this one also touched.
        others = self.content.leased()
        for d in mine - blobs - others:
            self.content.delete(d)
        await asyncio.to_thread(self.snapshots.gc, chains | others)

    async def _pull(self, ref: Reference, lease: Lease, credentials: dict[str, Credentials] | None,
                    progress: ProgressFn, options: RegistryOptions | None) -> ImageInfo:
        opts = options or self.registry_options
        async with self.client(credentials, opts) as rc:
            raw, ctype, digest = await rc.get_manifest(ref)
            mt = media_type_of(raw, ctype)
            index_digest: str | None = None
            if mt in INDEX_TYPES:
                lease.digests.add(digest)
                await asyncio.to_thread(self.content.write_bytes, raw, digest)
                index_digest = digest
                chosen = pick_platform(parse_index(raw))
                raw, ctype, digest = await rc.get_manifest(ref, chosen.digest)
                mt = media_type_of(raw, ctype)
            manifest = Manifest.parse(raw, mt)
            progress(ProgressEvent(ref.tag or "", ProgressStatus.RESOLVING,
                                   detail=f"Pulling from {ref.familiar_repository}"))
            lease.digests.add(digest)
            await asyncio.to_thread(self.content.write_bytes, raw, digest)
            cfg_desc = manifest.config
            if cfg_desc.size > MAX_CONFIG_BYTES:
                raise InvalidArgument(f"image config of {ref} is larger than {MAX_CONFIG_BYTES} bytes")
            await self._fetch(rc, ref, cfg_desc, lease, no_progress)
            config = ImageConfig.parse(self.content.read_bytes(cfg_desc.digest))
            diff_ids = config.diff_ids
            if len(diff_ids) != len(manifest.layers):
                raise InvalidArgument(
                    f"image config lists {len(diff_ids)} diff IDs for {len(manifest.layers)} layers")
            chains = chain_ids(diff_ids)
            # Layer snapshots unpacked by this pull are leased too, until the image record exists.
            lease.digests.update(chains)
            for layer, chain in zip(manifest.layers, chains, strict=True):
                exists = self.snapshots.exists(chain)
                progress(ProgressEvent(short_id(layer.digest),
                                       ProgressStatus.ALREADY_EXISTS if exists else ProgressStatus.PULLING_FS_LAYER))
            sem = asyncio.Semaphore(max(1, opts.concurrency))

            async def download(layer: Descriptor, chain: str) -> None:
                lease.digests.add(layer.digest)
                if self.snapshots.exists(chain) or self.content.has(layer.digest):
                    return
                async with sem:
                    await self._fetch(rc, ref, layer, lease, progress)
                progress(ProgressEvent(short_id(layer.digest), ProgressStatus.DOWNLOAD_COMPLETE))

            tasks = [asyncio.create_task(download(layer, chain))
                     for layer, chain in zip(manifest.layers, chains, strict=True)]
            try:
                # Unpack in order while later layers still download.
                parent: str | None = None
                for task, layer, chain, diff in zip(tasks, manifest.layers, chains, diff_ids, strict=True):
                    await task
                    if not self.snapshots.exists(chain):
                        lid = short_id(layer.digest)
                        progress(ProgressEvent(lid, ProgressStatus.EXTRACTING, 0, layer.size))
                        await asyncio.to_thread(self.snapshots.unpack, chain, parent,
                                                self.content.blob_path(layer.digest), diff)
                        progress(ProgressEvent(lid, ProgressStatus.PULL_COMPLETE))
                    parent = chain
            finally:
                for t in tasks:
                    t.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        target = Descriptor(mt, digest, len(raw))
        self.store.put(ImageRecord(str(ref), target, index_digest=index_digest, sources=[ref.repository]))
        progress(ProgressEvent("", ProgressStatus.DIGEST, detail=index_digest or digest))
        progress(ProgressEvent("", ProgressStatus.STATUS, detail=f"Downloaded newer image for {ref.familiar}"))
        return self.inspect(str(ref))

    async def _fetch(self, rc: RegistryClient, ref: Reference, desc: Descriptor, lease: Lease,
                     progress: ProgressFn) -> None:
        lease.digests.add(desc.digest)
        if self.content.has(desc.digest):
            return
        writer = await asyncio.to_thread(self.content.writer, desc.digest, desc.size)
        try:
            await rc.fetch_blob(ref, desc, writer, progress)
            progress(ProgressEvent(short_id(desc.digest), ProgressStatus.VERIFYING))
            await asyncio.to_thread(writer.commit)
        finally:
            await asyncio.to_thread(writer.abort)

    async def push(self, text: str, *, credentials: dict[str, Credentials] | None = None,
                   progress: ProgressFn = no_progress, options: RegistryOptions | None = None) -> str:
        ref = parse_reference(text)
        _, recs = self.resolve(text)
        rec = self.store.find(str(ref)) or recs[0]
        manifest, _ = self._parts(rec)
        raw = self.content.read_bytes(rec.target.digest)
        opts = options or self.registry_options
        async with self.client(credentials, opts) as rc:
            sem = asyncio.Semaphore(max(1, opts.concurrency))
            host = rc.host_of(ref)
            sources = [parse_reference(s) for s in rec.sources if s != ref.repository]
            mount_from = next((s.path for s in sources if rc.host_of(s) == host), None)

            async def push_blob(desc: Descriptor) -> None:
                lid = short_id(desc.digest)
                async with sem:
                    progress(ProgressEvent(lid, ProgressStatus.PREPARING))
                    if await rc.blob_exists(ref, desc.digest):
                        progress(ProgressEvent(lid, ProgressStatus.LAYER_EXISTS))
                        return
                    location = None
                    if mount_from is not None:
                        location = await rc.mount_blob(ref, desc.digest, mount_from)
                        if location is None:
                            progress(ProgressEvent(lid, ProgressStatus.MOUNTED, detail=mount_from))
                            return
                    await rc.upload_blob(ref, desc.digest, self.content.blob_path(desc.digest), desc.size,
                                         location, progress)
                    progress(ProgressEvent(lid, ProgressStatus.PUSHED))

            await asyncio.gather(*(push_blob(d) for d in [*manifest.layers, manifest.config]))
            tag = ref.tag or ref.digest or "latest"
            digest = await rc.put_manifest(ref, raw, rec.target.media_type, tag)
        if ref.repository not in rec.sources:
            rec.sources.append(ref.repository)
            self.store.put(rec)
        progress(ProgressEvent("", ProgressStatus.DIGEST, detail=digest, total=len(raw)))
        return digest

    # -- archives -----------------------------------------------------------------------------
    async def save(self, names: list[str], out: Path) -> None:
        """Docker ≥ 25's ``docker save``: an OCI image layout plus manifest.json and repositories."""
        entries: list[tuple[ImageRecord, str]] = []
        for text in names:
            image_id, recs = self.resolve(text)
            ref = _safe_ref(text)
            chosen = [r for r in recs if ref is not None and r.name == str(ref)] or recs
            if _HEX_RE.match(text) and ref is None:
                chosen = self._records_by_id().get(image_id, recs)
            entries += [(r, image_id) for r in chosen]
        await asyncio.to_thread(self._write_save, entries, out)

    def _write_save(self, entries: list[tuple[ImageRecord, str]], out: Path) -> None:
        index: list[dict[str, Any]] = []
        docker_manifest: dict[str, dict[str, Any]] = {}
        repositories: dict[str, dict[str, str]] = {}
        blobs: dict[str, None] = {}
        for rec, image_id in entries:
            manifest, _ = self._parts(rec)
            for d in (rec.target.digest, manifest.config.digest, *(x.digest for x in manifest.layers)):
                blobs[d] = None
            ann: dict[str, str] = {}
            familiar: str | None = None
            if not rec.name.startswith("sha256:"):
                ref = parse_reference(rec.name)
                ann[IMAGE_NAME_ANNOTATION] = str(ref)
                if ref.tag:
                    ann[REF_NAME_ANNOTATION] = ref.tag
                    familiar = ref.familiar
                    top = manifest.layers[-1].digest[7:] if manifest.layers else image_id[7:]
                    repositories.setdefault(ref.familiar_repository, {})[ref.tag] = top
            index.append(Descriptor(rec.target.media_type, rec.target.digest, rec.target.size, ann).to_json())
            entry = docker_manifest.setdefault(image_id, {
                "Config": f"blobs/sha256/{manifest.config.digest[7:]}",
                "RepoTags": [],
                "Layers": [f"blobs/sha256/{x.digest[7:]}" for x in manifest.layers],
            })
            if familiar and familiar not in entry["RepoTags"]:
                entry["RepoTags"].append(familiar)
        tmp = out.with_name(out.name + ".tmp")
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tf:
            _add_bytes(tf, "blobs/", None)
            _add_bytes(tf, "blobs/sha256/", None)
            for d in blobs:
                tf.add(self.content.blob_path(d), arcname=f"blobs/sha256/{d[7:]}")
            _add_bytes(tf, "index.json", json.dumps(
                {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}).encode())
            _add_bytes(tf, "manifest.json", json.dumps(list(docker_manifest.values())).encode())
            _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
            if repositories:
                _add_bytes(tf, "repositories", json.dumps(repositories).encode())
        os.rename(tmp, out)

    async def load(self, src: Path, progress: ProgressFn = no_progress) -> list[str]:
        """``docker load`` of an OCI layout (Docker ≥ 25) or the older ``<id>/layer.tar`` layout."""
        with self.content.lease() as lease:
            try:
                recs = await asyncio.to_thread(self._read_archive, src, lease)
                for rec in recs:
                    manifest, config = self._parts(rec)
                    await self.ensure_unpacked(manifest, config, progress)
            except BaseException:
                await self._discard(lease)
                raise
            for rec in recs:
                self.store.put(rec)
        out = []
        for rec in recs:
            if rec.name.startswith("sha256:"):
                out.append(f"Loaded image ID: {self._parts(rec)[0].config.digest}")
            else:
                out.append(f"Loaded image: {parse_reference(rec.name).familiar}")
        return out

    def _read_archive(self, src: Path, lease: Lease) -> list[ImageRecord]:
        try:
            tf = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by the `with` below
        except (tarfile.TarError, OSError) as exc:
            raise InvalidArgument(f"load {src}: not a tar archive: {exc}") from None
        with tf:
            names = set(tf.getnames())
            if "index.json" in names:
                return self._read_oci(tf, lease, names)
            if "manifest.json" in names:
                return self._read_legacy(tf, lease)
        raise InvalidArgument(f"load {src}: neither index.json nor manifest.json in the archive")

    def _member_blob(self, tf: tarfile.TarFile, name: str, lease: Lease, expected: str | None) -> str:
        if expected is not None and self.content.has(expected):
            lease.digests.add(expected)
            return expected
        try:
            f = tf.extractfile(name)
        except KeyError:
            raise InvalidArgument(f"load: `{name}` missing from the archive") from None
        if f is None:
            raise InvalidArgument(f"load: `{name}` is not a file")
        w = self.content.writer(expected)
        try:
            while block := f.read(1 << 20):
                w.write(block)
        except BaseException:
            w.abort()
            raise
        digest = w.commit()
        lease.digests.add(digest)
        return digest

    def _read_oci(self, tf: tarfile.TarFile, lease: Lease, names: set[str]) -> list[ImageRecord]:
        def blob(d: Descriptor) -> bytes:
            digest = self._member_blob(tf, f"blobs/sha256/{d.digest[7:]}", lease, _checked(d.digest))
            return self.content.read_bytes(digest)

        index_raw = tf.extractfile("index.json").read()  # type: ignore[union-attr]
        legacy_tags: dict[str, list[str]] = {}
        if "manifest.json" in names:
            for e in json.loads(tf.extractfile("manifest.json").read()):  # type: ignore[union-attr]
                legacy_tags[str(e.get("Config", "")).rsplit("/", 1)[-1]] = list(e.get("RepoTags") or [])
        recs: list[ImageRecord] = []
        for desc in parse_index(index_raw):
            raw = blob(desc)
            index_digest = None
            if media_type_of(raw, desc.media_type) in INDEX_TYPES:
                index_digest = desc.digest
                desc = pick_platform(parse_index(raw))
                raw = blob(desc)
            manifest = Manifest.parse(raw, desc.media_type)
            blob(manifest.config)
            for layer in manifest.layers:
                blob(layer)
            target = Descriptor(media_type_of(raw, desc.media_type), desc.digest, len(raw))
            name = desc.annotations.get(IMAGE_NAME_ANNOTATION)
            names_for = [str(parse_reference(name))] if name else [
                str(parse_reference(t)) for t in legacy_tags.get(manifest.config.digest[7:], [])]
            for n in names_for or [target.digest]:
                recs.append(ImageRecord(n, target, index_digest=index_digest))
        return recs

    def _read_legacy(self, tf: tarfile.TarFile, lease: Lease) -> list[ImageRecord]:
        entries = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
        recs: list[ImageRecord] = []
        for e in entries:
            cfg_digest = self._member_blob(tf, str(e["Config"]), lease, None)
            config = ImageConfig.parse(self.content.read_bytes(cfg_digest))
            layers: list[Descriptor] = []
            for path in e.get("Layers") or []:
                digest = self._member_blob(tf, str(path), lease, None)
                with open(self.content.blob_path(digest), "rb") as f:
                    kind = detect_compression(f.read(4))
                mt = DOCKER_LAYER_GZIP if kind is Compression.GZIP else DOCKER_LAYER_TAR
                layers.append(Descriptor(mt, digest, self.content.size(digest)))
            if len(layers) != len(config.diff_ids):
                raise InvalidArgument(f"load: {len(layers)} layers for {len(config.diff_ids)} diff IDs")
            target = self._write_manifest(cfg_digest, layers, lease)
            for tag in e.get("RepoTags") or [target.digest]:
                recs.append(ImageRecord(tag if tag.startswith("sha256:") else str(parse_reference(tag)), target))
        return recs

    def _write_manifest(self, cfg_digest: str, layers: list[Descriptor], lease: Lease) -> Descriptor:
        doc = {
            "schemaVersion": 2, "mediaType": DOCKER_MANIFEST,
            "config": Descriptor(DOCKER_CONFIG, cfg_digest, self.content.size(cfg_digest)).to_json(),
            "layers": [x.to_json() for x in layers],
        }
        raw = json.dumps(doc, indent=3).encode()
        digest = self.content.write_bytes(raw, sha256_digest(raw))
        lease.digests.add(digest)
        return Descriptor(DOCKER_MANIFEST, digest, len(raw))

    def _write_config(self, config: dict[str, Any], lease: Lease) -> str:
        raw = json.dumps(config, separators=(",", ":")).encode()
        digest = self.content.write_bytes(raw, sha256_digest(raw))
        lease.digests.add(digest)
        return digest

    async def import_rootfs(self, src: Path, reference: str | None = None, *, message: str = "",
                            config_overrides: dict[str, Any] | None = None) -> str:
        """``docker import``: a root filesystem tar (plain, gzip or zstd) as a one-layer image."""
        ref = parse_reference(reference) if reference else None
        with self.content.lease() as lease:
            try:
                digest = await asyncio.to_thread(self.content.write_file, src)
                lease.digests.add(digest)
                diff_id = await asyncio.to_thread(_diff_id, self.content.blob_path(digest))
                with open(self.content.blob_path(digest), "rb") as f:
                    kind = detect_compression(f.read(4))
                mt = DOCKER_LAYER_GZIP if kind is Compression.GZIP else DOCKER_LAYER_TAR
                os_name, arch = host_platform()
                now = _now_iso()
                config: dict[str, Any] = {
                    "architecture": arch, "os": os_name, "created": now,
                    "config": dict(config_overrides or {}),
                    "rootfs": {"type": "layers", "diff_ids": [diff_id]},
                    "history": [{"created": now, "created_by": "", "comment": message or "Imported from -"}],
                }
                cfg_digest = self._write_config(config, lease)
                target = self._write_manifest(cfg_digest, [Descriptor(mt, digest, self.content.size(digest))], lease)
                await asyncio.to_thread(self.snapshots.unpack, diff_id, None, self.content.blob_path(digest), diff_id)
            except BaseException:
                await self._discard(lease)
                raise
            self.store.put(ImageRecord(str(ref) if ref else target.digest, target))
        return cfg_digest

    async def export(self, key: str, out: Path) -> None:
        await asyncio.to_thread(self.snapshots.write_export_tar, key, out)

    async def commit(self, key: str, parent_image: str | None, reference: str | None = None, *,
                     comment: str = "", author: str = "", config_overrides: dict[str, Any] | None = None) -> str:
        """``docker commit``: the container's changes as a new gzip layer over its image."""
        # A bad name fails before any work, not after the layer is written.
        name = str(parse_reference(reference)) if reference else None
        base_cfg: dict[str, Any] = {}
        base_layers: list[Descriptor] = []
        if parent_image:
            _, recs = self.resolve(parent_image)
            manifest, config = self._parts(recs[0])
            base_cfg, base_layers = json.loads(json.dumps(config.raw)), list(manifest.layers)
        with self.content.lease() as lease, tempfile.TemporaryDirectory(dir=self.tmp) as td:
            try:
                tar_path = Path(td) / "layer.tar"
                await asyncio.to_thread(self.snapshots.write_diff_tar, key, tar_path)
                diff_id, digest = await asyncio.to_thread(self._gzip_into_store, tar_path)
                lease.digests.add(digest)
                os_name, arch = host_platform()
                now = _now_iso()
                cfg = base_cfg or {"architecture": arch, "os": os_name, "config": {}}
                cfg["created"] = now
                if author:
                    cfg["author"] = author
                if config_overrides:
                    cfg["config"] = {**(cfg.get("config") or {}), **config_overrides}
                rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
                rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), diff_id]
                cfg["history"] = [*cfg.get("history", []),
                                  {"created": now, "author": author, "comment": comment, "created_by": ""}]
                cfg_digest = self._write_config(cfg, lease)
                layers = [*base_layers, Descriptor(DOCKER_LAYER_GZIP, digest, self.content.size(digest))]
                target = self._write_manifest(cfg_digest, layers, lease)
                chains = chain_ids(rootfs["diff_ids"])
                await asyncio.to_thread(self.snapshots.unpack, chains[-1], chains[-2] if len(chains) > 1 else None,
                                        self.content.blob_path(digest), diff_id)
            except BaseException:
                await self._discard(lease)
                raise
            self.store.put(ImageRecord(name or target.digest, target))
        return cfg_digest

    def _gzip_into_store(self, tar_path: Path) -> tuple[str, str]:
        h = hashlib.sha256()
        gz_path = tar_path.with_suffix(".tar.gz")
        with open(tar_path, "rb") as src, open(gz_path, "wb") as raw, \
                gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
            while block := src.read(1 << 20):
                h.update(block)
                gz.write(block)
        return "sha256:" + h.hexdigest(), self.content.write_file(gz_path)


def _diff_for(chain: str, diff_ids: list[str]) -> str:
    return diff_ids[chain_ids(diff_ids).index(chain)]


def _diff_id(blob: Path) -> str:
    h = hashlib.sha256()
    with open(blob, "rb") as raw:
        stream = open_decompressed(raw)
        while block := stream.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _checked(digest: str) -> str:
    from services.highlevel.content.store import check_digest

    return check_digest(digest)


def _safe_ref(text: str) -> Reference | None:
    try:
        return parse_reference(text)
    except InvalidArgument:
        return None


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes | None) -> None:
    import io

    info = tarfile.TarInfo(name)
    info.mtime = int(time.time())
    if data is None:
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tf.addfile(info)
        return
    info.size = len(data)
    info.mode = 0o644
    tf.addfile(info, io.BytesIO(data))

