"""GET /images/json filters: reference, dangling, label (Docker's matching rules)."""

from __future__ import annotations

import fnmatch
import json

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


def filter_images(images: list[hl.ImageSummary], filters: dict[str, list[str]]) -> list[hl.ImageSummary]:
    out = []
    for image in images:
        dangling = filters.get("dangling")
        if dangling and (not image.repo_tags) != (dangling[0].lower() in ("true", "1")):
            continue
        refs = filters.get("reference")
        if refs and not any(_reference_matches(image, r) for r in refs):
            continue
        labels = _labels(image)
        if not all(_label_matches(labels, w) for w in filters.get("label", [])):
            continue
        out.append(image)
    return out
