"""New images from a filesystem: ``docker commit`` and ``docker import``; and a build's --cache-from
hit composed of layers already held (``compose``).

Commit turns a container's snapshot changes into one gzip layer over its image's layers, with the
image's config carried over (and the caller's overrides applied); import makes a one-layer image of a
root filesystem tar as given (plain, gzip or zstd). Both unpack the new layer as a committed snapshot
at once, so a container runs from the new image without a second pass, and both hold what they
write in a content lease until the image is named.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import json
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument
from services.highlevel.images.manager import ImageManager
from services.highlevel.images.manifest import (
    DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR,
    Descriptor,
    chain_ids,
    host_platform,
)
from services.highlevel.images.reference import parse_reference
from services.highlevel.images.store import ImageRecord
from services.highlevel.snapshots.unpack import Compression, detect_compression, open_decompressed


async def import_rootfs(images: ImageManager, src: Path, reference: str | None = None, *, message: str = "",
                        config_overrides: dict[str, Any] | None = None) -> str:
    """``docker import``: a root filesystem tar (plain, gzip or zstd) as a one-layer image."""
    ref = parse_reference(reference) if reference else None
    with images.content.lease() as lease:
        try:
            digest = await asyncio.to_thread(images.content.write_file, src)
            lease.digests.add(digest)
            diff_id = await asyncio.to_thread(_diff_id, images.content.blob_path(digest))
            with open(images.content.blob_path(digest), "rb") as f:
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
            cfg_digest = images.write_config(config, lease)
            target = images.write_manifest(cfg_digest, [Descriptor(mt, digest, images.content.size(digest))], lease)
            await asyncio.to_thread(images.snapshots.unpack, diff_id, None, images.content.blob_path(digest), diff_id)
        except BaseException:
            await images.discard(lease)
            raise
        images.store.put(ImageRecord(str(ref) if ref else target.digest, target))
    return cfg_digest


async def commit(images: ImageManager, key: str, parent_image: str | None, reference: str | None = None, *,
                 comment: str = "", author: str = "", config_overrides: dict[str, Any] | None = None,
                 created_by: str = "") -> str:
    """``docker commit``: the container's changes as a new gzip layer over its image (none when nothing
    changed), the image recorded as the new one's ``parent`` (docker inspect's Parent)."""
    # A bad name fails before any work, not after the layer is written.
    name = str(parse_reference(reference)) if reference else None
    base_cfg: dict[str, Any] = {}
    base_layers: list[Descriptor] = []
    parent_id = ""
    if parent_image:
        parent_id, recs = images.resolve(parent_image)
        manifest, config = images.parts(recs[0])
        base_cfg, base_layers = json.loads(json.dumps(config.raw)), list(manifest.layers)
    with images.content.lease() as lease, tempfile.TemporaryDirectory(dir=images.tmp) as td:
        try:
            tar_path = Path(td) / "layer.tar"
            # No key: a build step that changes only the config (no layer, as dockerd's builder).
            written = key and await asyncio.to_thread(images.snapshots.write_diff_tar, key, tar_path,
                                                      of_container=True)
            os_name, arch = host_platform()
            now = _now_iso()
            cfg = base_cfg or {"architecture": arch, "os": os_name, "config": {}}
            # As dockerd's NewChildImage: this commit's author only, the image it came from as parent.
            cfg["created"] = now
            cfg.pop("author", None)
            cfg.pop("parent", None)
            if author:
                cfg["author"] = author
            if parent_id:
                cfg["parent"] = parent_id
            if config_overrides:
                cfg["config"] = {**(cfg.get("config") or {}), **config_overrides}
            rootfs = cfg.setdefault("rootfs", {"type": "layers", "diff_ids": []})
            entry: dict[str, Any] = {"created": now, **({"author": author} if author else {}),
                                     **({"created_by": created_by} if created_by else {}),
                                     **({"comment": comment} if comment else {})}
            layers = list(base_layers)
            if written:
                diff_id, digest = await asyncio.to_thread(_gzip_into_store, images, tar_path)
                lease.digests.add(digest)
                rootfs["diff_ids"] = [*rootfs.get("diff_ids", []), diff_id]
                layers.append(Descriptor(DOCKER_LAYER_GZIP, digest, images.content.size(digest)))
            else:
                # Nothing changed: no layer, as dockerd (an empty layer is only noted in the history).
                entry["empty_layer"] = True
            cfg["history"] = [*cfg.get("history", []), entry]
            cfg_digest = images.write_config(cfg, lease)
            target = images.write_manifest(cfg_digest, layers, lease)
            if written:
                chains = chain_ids(rootfs["diff_ids"])
                await asyncio.to_thread(images.snapshots.unpack, chains[-1], chains[-2] if len(chains) > 1 else None,
                                        images.content.blob_path(digest), diff_id)
        except BaseException:
            await images.discard(lease)
            raise
        images.store.put(ImageRecord(name or target.digest, target))
    return cfg_digest


async def compose(images: ImageManager, parent_image: str | None, source_image: str, layer_diff_id: str,
                  config: dict[str, Any], history: dict[str, Any]) -> str:
    """As dockerd's restoreCachedImage (a --cache-from step matched by its history): the parent's
    layers plus, when ``layer_diff_id`` is given, that layer of ``source_image``; the blob and its
    unpacked snapshot are the source's own (the chain ids agree, the parent's layers being the
    source's first ones), so nothing is copied or unpacked."""
    source_id, source_recs = images.resolve(source_image)
    source_manifest, source_cfg = images.parts(source_recs[0])
    layers: list[Descriptor] = []
    diff_ids: list[str] = []
    parent_history: list[dict[str, Any]] = []
    parent_id = ""
    if parent_image:
        parent_id, recs = images.resolve(parent_image)
        manifest, parent_cfg = images.parts(recs[0])
        layers, diff_ids, parent_history = list(manifest.layers), list(parent_cfg.diff_ids), parent_cfg.history
    if layer_diff_id:
        # The layer right above the parent's in the source: the chain ids agree, so the snapshot
        # unpacked for the source is this image's too.
        index = len(diff_ids)
        source_diffs = source_cfg.diff_ids
        if (len(source_diffs) != len(source_manifest.layers) or index >= len(source_diffs)
                or source_diffs[index] != layer_diff_id or source_diffs[:index] != diff_ids):
            raise InvalidArgument(f"image {source_id} has no layer {layer_diff_id} over the layers of "
                                  f"{parent_id or 'scratch'}")
        layers.append(source_manifest.layers[index])
        diff_ids.append(layer_diff_id)
    raw = source_cfg.raw
    cfg: dict[str, Any] = {key: raw[key] for key in ("architecture", "os", "os.version", "os.features", "variant",
                                                      "author") if key in raw}
    cfg.update({"config": config, "created": history.get("created", ""),
                "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": [*parent_history, history]})
    if parent_id:
        cfg["parent"] = parent_id
    with images.content.lease() as lease:
        try:
            cfg_digest = images.write_config(cfg, lease)
            target = images.write_manifest(cfg_digest, layers, lease)
        except BaseException:
            await images.discard(lease)
            raise
        images.store.put(ImageRecord(target.digest, target))
    return cfg_digest


def _gzip_into_store(images: ImageManager, tar_path: Path) -> tuple[str, str]:
    h = hashlib.sha256()
    gz_path = tar_path.with_suffix(".tar.gz")
    with open(tar_path, "rb") as src, open(gz_path, "wb") as raw, \
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as gz:
        while block := src.read(1 << 20):
            h.update(block)
            gz.write(block)
    return "sha256:" + h.hexdigest(), images.content.write_file(gz_path)



def _diff_id(blob: Path) -> str:
    h = hashlib.sha256()
    with open(blob, "rb") as raw:
        stream = open_decompressed(raw)
        while block := stream.read(1 << 20):
            h.update(block)
    return "sha256:" + h.hexdigest()


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
