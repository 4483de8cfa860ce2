"""Media types, descriptors and the parsing of manifests, indexes and image configs."""

from __future__ import annotations

import hashlib
import json
import platform
from dataclasses import dataclass, field
from typing import Any

from services.common.errors import InvalidArgument, NotFound

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_TAR = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYOUT_VERSION = "1.0.0"

MANIFEST_TYPES = (DOCKER_MANIFEST, OCI_MANIFEST)
INDEX_TYPES = (DOCKER_LIST, OCI_INDEX)
LAYER_TYPES = (
    DOCKER_LAYER_GZIP, DOCKER_LAYER_TAR, OCI_LAYER_TAR, OCI_LAYER_GZIP, OCI_LAYER_ZSTD,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", DOCKER_FOREIGN,
)
ACCEPT = ", ".join((OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST))
IMAGE_NAME_ANNOTATION = "io.containerd.image.name"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "i686": "386", "ppc64le": "ppc64le",
         "s390x": "s390x", "riscv64": "riscv64"}


def host_platform() -> tuple[str, str]:
    return "linux", _ARCH.get(platform.machine(), platform.machine())


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The OCI spec's ChainID: each layer named by itself and everything below it."""
    out: list[str] = []
    for d in diff_ids:
        out.append(d if not out else sha256_digest(f"{out[-1]} {d}".encode()))
    return out


@dataclass(slots=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    annotations: dict[str, str] = field(default_factory=dict)
    platform: dict[str, Any] | None = None
    urls: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.annotations:
            out["annotations"] = self.annotations
        if self.platform:
            out["platform"] = self.platform
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Descriptor:
        try:
            return cls(
                media_type=str(d.get("mediaType", "")),
                digest=str(d["digest"]),
                size=int(d["size"]),
                annotations=dict(d.get("annotations") or {}),
                platform=d.get("platform"),
                urls=list(d.get("urls") or []),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InvalidArgument(f"invalid descriptor {d!r}: {exc}") from None


@dataclass(slots=True)
class Manifest:
    media_type: str
    config: Descriptor
    layers: list[Descriptor]

    @classmethod
    def parse(cls, raw: bytes, media_type: str | None = None) -> Manifest:
        doc = _load(raw)
        mt = doc.get("mediaType") or media_type or OCI_MANIFEST
        if mt not in MANIFEST_TYPES:
            raise InvalidArgument(f"unsupported manifest media type `{mt}`")
        if doc.get("schemaVersion") != 2:
            raise InvalidArgument("unsupported manifest: schemaVersion must be 2 (schema 1 is not supported)")
        return cls(mt, Descriptor.from_json(doc["config"]), [Descriptor.from_json(x) for x in doc.get("layers", [])])


def parse_index(raw: bytes) -> list[Descriptor]:
    doc = _load(raw)
    return [Descriptor.from_json(m) for m in doc.get("manifests", [])]


def media_type_of(raw: bytes, header: str | None) -> str:
    doc = _load(raw)
    mt = doc.get("mediaType") or ""
    if mt:
        return str(mt)
    if "manifests" in doc:
        return OCI_INDEX
    if header and header.split(";")[0].strip() in (*MANIFEST_TYPES, *INDEX_TYPES):
        return header.split(";")[0].strip()
    return OCI_MANIFEST


def pick_platform(manifests: list[Descriptor]) -> Descriptor:
    """linux/<this machine's arch>; attestation manifests (unknown/unknown) never match."""
    want_os, want_arch = host_platform()
    for m in manifests:
        p = m.platform or {}
        if p.get("os") == want_os and p.get("architecture") == want_arch:
            return m
    found = ", ".join(f"{(m.platform or {}).get('os')}/{(m.platform or {}).get('architecture')}" for m in manifests)
    raise NotFound(f"no matching manifest for {want_os}/{want_arch} in the manifest list (has: {found})")


@dataclass(slots=True)
class ImageConfig:
    raw: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> ImageConfig:
        return cls(_load(raw))

    @property
    def diff_ids(self) -> list[str]:
        rootfs = self.raw.get("rootfs") or {}
        return [str(d) for d in rootfs.get("diff_ids") or []]

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.raw.get("history") or [])


def _load(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument(f"invalid JSON document: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidArgument("invalid JSON document: not an object")
    return doc
