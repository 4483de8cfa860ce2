"""Images built in-process from busybox-static: layer tars, config, manifest; hostile layers too."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.highlevel.images.manifest import (
    DOCKER_CONFIG,
    DOCKER_LAYER_GZIP,
    DOCKER_MANIFEST,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
)
from services.highlevel.images.store import ImageRecord
from tests.support.busybox import build_rootfs


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(slots=True)
class Layer:
    tar: bytes
    blob: bytes
    media_type: str

    @property
    def diff_id(self) -> str:
        return sha(self.tar)

    @property
    def digest(self) -> str:
        return sha(self.blob)


@dataclass(slots=True)
class BuiltImage:
    layers: list[Layer]
    config: bytes
    manifest: bytes
    manifest_type: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def config_digest(self) -> str:
        return sha(self.config)

    @property
    def manifest_digest(self) -> str:
        return sha(self.manifest)


def tar_of_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, root)
            for name in sorted(dirnames) + sorted(filenames):
                rel = name if rel_dir == "." else f"{rel_dir}/{name}"
                tf.add(os.path.join(dirpath, name), arcname=rel, recursive=False)
    return buf.getvalue()


@dataclass(slots=True)
class Entry:
    """One hand-made tar entry (for whiteouts and hostile layers)."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    linkname: str = ""
    mode: int = 0o644
    devmajor: int = 0
    devminor: int = 0


def tar_of_entries(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.mtime = int(time.time())
            info.linkname = e.linkname
            info.devmajor, info.devminor = e.devmajor, e.devminor
            if e.type == tarfile.REGTYPE:
                info.size = len(e.data)
                tf.addfile(info, io.BytesIO(e.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def make_layer(tar: bytes, *, compress: bool = True, oci: bool = False) -> Layer:
    if compress:
        blob = gzip.compress(tar, compresslevel=1, mtime=0)
        return Layer(tar, blob, OCI_LAYER_GZIP if oci else DOCKER_LAYER_GZIP)
    return Layer(tar, tar, "application/vnd.oci.image.layer.v1.tar" if oci else
                 "application/vnd.docker.image.rootfs.diff.tar")


def build_image(layers: list[Layer], *, oci: bool = False, cmd: list[str] | None = None,
                config_extra: dict[str, Any] | None = None) -> BuiltImage:
    config = {
        "architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
        "config": {"Cmd": cmd or ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [x.diff_id for x in layers]},
        "history": [{"created": "2026-01-01T00:00:00Z", "created_by": f"layer {i}"} for i in range(len(layers))],
        **(config_extra or {}),
    }
    cfg = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST if oci else DOCKER_MANIFEST,
        "config": {"mediaType": OCI_CONFIG if oci else DOCKER_CONFIG, "digest": sha(cfg), "size": len(cfg)},
        "layers": [{"mediaType": x.media_type, "digest": x.digest, "size": len(x.blob)} for x in layers],
    }
    return BuiltImage(layers, cfg, json.dumps(manifest).encode(), manifest["mediaType"])  # type: ignore[arg-type]


def docker_save_archive(image: BuiltImage, tag: str, path: Path) -> Path:
    """``image`` as ``docker save`` writes it (the legacy layout: manifest.json, config, layer.tar)."""
    cfg_name = image.config_digest[7:] + ".json"
    entries = {cfg_name: image.config}
    layers = []
    for i, layer in enumerate(image.layers):
        entries[f"{i:064x}/layer.tar"] = layer.tar
        layers.append(f"{i:064x}/layer.tar")
    entries["manifest.json"] = json.dumps([{"Config": cfg_name, "RepoTags": [tag], "Layers": layers}]).encode()
    with tarfile.open(path, "w") as tf:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def busybox_layer(workdir: Path, **kw: Any) -> Layer:
    root = workdir / "busybox-rootfs"
    if not root.exists():
        build_rootfs(root)
    return make_layer(tar_of_dir(root), **kw)


def whiteout_layers() -> list[Layer]:
    """Layers over busybox: layer 2 adds files, layer 3 deletes one and makes a folder opaque."""
    two = tar_of_entries([
        Entry("data", tarfile.DIRTYPE, mode=0o755),
        Entry("data/keep", data=b"keep\n"),
        Entry("data/gone", data=b"gone\n"),
        Entry("opq", tarfile.DIRTYPE, mode=0o755),
        Entry("opq/old1", data=b"old\n"),
        Entry("opq/sub", tarfile.DIRTYPE, mode=0o755),
        Entry("opq/sub/old2", data=b"old\n"),
    ])
    three = tar_of_entries([
        Entry("data", tarfile.DIRTYPE, mode=0o755),
        Entry("data/.wh.gone"),
        Entry("opq", tarfile.DIRTYPE, mode=0o755),
        Entry("opq/.wh..wh..opq"),
        Entry("opq/new", data=b"new\n"),
        Entry("etc", tarfile.DIRTYPE, mode=0o755),
        Entry("etc/.wh.hostname"),
    ])
    return [make_layer(two), make_layer(three)]


def store_image(manager: Any, name: str, image: BuiltImage) -> None:
    """Put a built image straight into a manager's content and image stores (a local build)."""
    from services.highlevel.images.manifest import Descriptor
    from services.highlevel.images.reference import parse_reference

    for layer in image.layers:
        manager.content.write_bytes(layer.blob, layer.digest)
    manager.content.write_bytes(image.config, image.config_digest)
    manager.content.write_bytes(image.manifest, image.manifest_digest)
    target = Descriptor(image.manifest_type, image.manifest_digest, len(image.manifest))
    manager.store.put(ImageRecord(str(parse_reference(name)), target))
