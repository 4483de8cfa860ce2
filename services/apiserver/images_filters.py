"""GET /images/json filters: reference, dangling, label, before, since, and which nameless images show
(Docker's matching rules)."""

from __future__ import annotations

import fnmatch
import json

from services.dockermodel.times import parse_time
from services.gen.skiff import highlevel

hl = highlevel.v1


def _reference_matches(image: hl.ImageSummary, pattern: str) -> bool:
    """A pattern without a tag matches the repository name; with one, ``name:tag`` (path.Match)."""
    for name in image.repo_tags:
        repo, _, _tag = name.rpartition(":")
        candidates = [name] if ":" in pattern.rsplit("/", 1)[-1] else [repo]
        # The familiar name and the full one, as Docker matches both.
        for c in candidates:
            if fnmatch.fnmatchcase(c, pattern) or fnmatch.fnmatchcase(c.removeprefix("docker.io/library/"), pattern):
                return True
    return False


def _labels(image: hl.ImageSummary) -> dict[str, str]:
    return (json.loads(image.config or b"{}").get("config") or {}).get("Labels") or {}


def _label_matches(labels: dict[str, str], wanted: str) -> bool:
    key, sep, value = wanted.partition("=")
    return key in labels and (not sep or labels[key] == value)


def filter_images(images: list[hl.ImageSummary], filters: dict[str, list[str]], *, show_all: bool = False,
                  parents: frozenset[str] = frozenset(), before: str = "", since: str = "") -> list[hl.ImageSummary]:
    """dockerd's list: a nameless image that is some image's parent (an intermediate one) only with
    ``all``; ``dangling=true``: nameless or digest-only images no image has as parent; ``before`` and
    ``since``: created strictly before or after the given images' creation times (RFC 3339 text)."""
    out = []
    for image in images:
        nameless = not image.repo_tags and not image.repo_digests
        if nameless and image.id in parents and not show_all:
            continue
        dangling = filters.get("dangling")
        if dangling:
            wanted = dangling[0].lower() in ("true", "1")
            if wanted and (image.repo_tags or image.id in parents):
                continue
            if not wanted and nameless:
                continue
        refs = filters.get("reference")
        if refs and not any(_reference_matches(image, r) for r in refs):
            continue
        labels = _labels(image)
        if not all(_label_matches(labels, w) for w in filters.get("label", [])):
            continue
        if before and parse_time(image.created) >= parse_time(before):
            continue
        if since and parse_time(image.created) <= parse_time(since):
            continue
        out.append(image)
    return out


def parents_of(images: list[hl.ImageSummary]) -> frozenset[str]:
    """The ids that some image (a committed one) names as its parent."""
    return frozenset(str(json.loads(i.config or b"{}").get("parent") or "") for i in images) - {""}
