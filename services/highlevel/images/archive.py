"""Image archives: ``docker save`` writes images as a tar, ``docker load`` reads them back.

Save writes Docker ≥ 25's layout: an OCI image layout (``index.json``, ``oci-layout``, ``blobs/``) that
also carries the older ``manifest.json`` and ``repositories``, so both old and new clients read it.
Load takes that layout or the pre-OCI one (``manifest.json`` naming a config and ``<id>/layer.tar``
files); everything it writes is leased until the images are named, so a bad archive leaves nothing.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import tarfile
import time
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.highlevel.content.store import Lease, check_digest
from services.highlevel.images.manager import ImageManager, safe_reference
from services.highlevel.images.manifest import (
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    IMAGE_NAME_ANNOTATION,
    INDEX_TYPES,
    OCI_INDEX,
    OCI_LAYOUT_VERSION,
    REF_NAME_ANNOTATION,
    Descriptor,
    ImageConfig,
    Manifest,
    media_type_of,
    parse_index,
    pick_platform,
)
from services.highlevel.images.progress import ProgressFn, no_progress
from services.highlevel.images.reference import parse_reference
from services.highlevel.images.store import ImageRecord
from services.highlevel.snapshots.unpack import Compression, detect_compression


async def save(images: ImageManager, names: list[str], out: Path) -> None:
    """Docker ≥ 25's ``docker save``: an OCI image layout plus manifest.json and repositories. What each
    name brings, as dockerd's: ``repo:tag`` that tag, a bare ``repo`` every tag of it, an image id the
    image without any name (it loads as ``Loaded image ID``)."""
    entries: list[tuple[ImageRecord, str]] = []
    for text in names:
        image_id, recs = images.resolve(text)
        ref = safe_reference(text)
        named = [r for r in recs if ref is not None and r.name == str(ref)]
        bare = _bare_repository(text)
        if bare is not None and named:
            ids = {r.name: i for i, rs in images.records_by_id().items() for r in rs}
            entries += [(r, ids[r.name]) for r in images.store.list()
                        if r.name in ids and not r.name.startswith("sha256:")
                        and parse_reference(r.name).repository == bare]
        elif named or (ref is not None and ref.digest):
            entries += [(r, image_id) for r in named or recs]
        else:
            # By id: the image alone, its names left behind.
            entries.append((ImageRecord(recs[0].target.digest, recs[0].target), image_id))
    await asyncio.to_thread(_write_save, images, entries, out)


def _bare_repository(text: str) -> str | None:
    """The repository ``text`` names when it gives neither tag nor digest."""
    try:
        ref = parse_reference(text, default_tag=False)
    except InvalidArgument:
        return None
    return ref.repository if ref.tag is None and ref.digest is None else None


def _write_save(images: ImageManager, entries: list[tuple[ImageRecord, str]], out: Path) -> None:
    index: list[dict[str, Any]] = []
    docker_manifest: dict[str, dict[str, Any]] = {}
    repositories: dict[str, dict[str, str]] = {}
    blobs: dict[str, None] = {}
    for rec, image_id in entries:
        manifest, _ = images.parts(rec)
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
            tf.add(images.content.blob_path(d), arcname=f"blobs/sha256/{d[7:]}")
        _add_bytes(tf, "index.json", json.dumps(
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index}).encode())
        _add_bytes(tf, "manifest.json", json.dumps(list(docker_manifest.values())).encode())
        _add_bytes(tf, "oci-layout", json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}).encode())
        if repositories:
            _add_bytes(tf, "repositories", json.dumps(repositories).encode())
    os.rename(tmp, out)


async def load(images: ImageManager, src: Path, progress: ProgressFn = no_progress) -> list[str]:
    """``docker load`` of an OCI layout (Docker ≥ 25) or the older ``<id>/layer.tar`` layout."""
    with images.content.lease() as lease:
        try:
            recs = await asyncio.to_thread(_read_archive, images, src, lease)
            for rec in recs:
                manifest, config = images.parts(rec)
                await images.ensure_unpacked(manifest, config, progress)
        except BaseException:
            await images.discard(lease)
            raise
        out: list[str] = []
        for rec in recs:
            if (notice := _renamed(images, rec)) is not None:
                out.append(notice)
            images.store.put(rec)
            if rec.name.startswith("sha256:"):
                out.append(f"Loaded image ID: {images.parts(rec)[0].config.digest}")
            else:
                out.append(f"Loaded image: {parse_reference(rec.name).familiar}")
    return out


def _renamed(images: ImageManager, rec: ImageRecord) -> str | None:
    """dockerd's notice when a loaded name moves off another image (that one keeps its id only)."""
    old = images.store.find(rec.name) if not rec.name.startswith("sha256:") else None
    if old is None or old.target.digest == rec.target.digest:
        return None
    old_id = images.parts(old)[0].config.digest
    if old_id == images.parts(rec)[0].config.digest:
        return None
    return (f"The image {parse_reference(rec.name).familiar} already exists, renaming the old one with ID "
            f"{old_id} to empty string")


def _read_archive(images: ImageManager, src: Path, lease: Lease) -> list[ImageRecord]:
    # The words name no server-side path: the client sent a body, not a file.
    try:
        tf = tarfile.open(src, "r:*")  # noqa: SIM115 - closed by the `with` below
    except (tarfile.TarError, OSError):
        raise InvalidArgument("Error processing tar file: not a tar archive") from None
    with tf:
        try:
            names = set(tf.getnames())
            if "index.json" in names:
                return _read_oci(images, tf, lease, names)
            if "manifest.json" in names:
                return _read_legacy(images, tf, lease)
        except (tarfile.TarError, EOFError) as exc:
            raise InvalidArgument(f"Error processing tar file: {exc or 'unexpected end of archive'}") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # index.json or manifest.json that is no JSON, or not of the shape Docker writes.
            raise InvalidArgument(f"load: invalid index.json or manifest.json: {exc}") from None
    raise InvalidArgument("load: neither index.json nor manifest.json in the archive (not a docker save archive)")


def _member_blob(images: ImageManager, tf: tarfile.TarFile, name: str, lease: Lease, expected: str | None) -> str:
    if expected is not None and images.content.has(expected):
        lease.digests.add(expected)
        return expected
    try:
        f = tf.extractfile(name)
    except KeyError:
        raise InvalidArgument(f"load: `{name}` missing from the archive") from None
    if f is None:
        raise InvalidArgument(f"load: `{name}` is not a file")
    w = images.content.writer(expected)
    try:
        while block := f.read(1 << 20):
            w.write(block)
    except BaseException:
        w.abort()
        raise
    digest = w.commit()
    lease.digests.add(digest)
    return digest


def _read_oci(images: ImageManager, tf: tarfile.TarFile, lease: Lease, names: set[str]) -> list[ImageRecord]:
    def blob(d: Descriptor) -> bytes:
        digest = _member_blob(images, tf, f"blobs/sha256/{d.digest[7:]}", lease, check_digest(d.digest))
        return images.content.read_bytes(digest)

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


def _read_legacy(images: ImageManager, tf: tarfile.TarFile, lease: Lease) -> list[ImageRecord]:
    entries = json.loads(tf.extractfile("manifest.json").read())  # type: ignore[union-attr]
    recs: list[ImageRecord] = []
    for e in entries:
        cfg_digest = _member_blob(images, tf, str(e["Config"]), lease, None)
        config = ImageConfig.parse(images.content.read_bytes(cfg_digest))
        layers: list[Descriptor] = []
        for path in e.get("Layers") or []:
            digest = _member_blob(images, tf, str(path), lease, None)
            with open(images.content.blob_path(digest), "rb") as f:
                kind = detect_compression(f.read(4))
            mt = DOCKER_LAYER_GZIP if kind is Compression.GZIP else DOCKER_LAYER_TAR
            layers.append(Descriptor(mt, digest, images.content.size(digest)))
        if len(layers) != len(config.diff_ids):
            raise InvalidArgument(f"load: {len(layers)} layers for {len(config.diff_ids)} diff IDs")
        target = images.write_manifest(cfg_digest, layers, lease)
        for tag in e.get("RepoTags") or [target.digest]:
            recs.append(ImageRecord(tag if tag.startswith("sha256:") else str(parse_reference(tag)), target))
    return recs


def _add_bytes(tf: tarfile.TarFile, name: str, data: bytes | None) -> None:
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
