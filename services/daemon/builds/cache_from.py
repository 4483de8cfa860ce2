"""A build's ``--cache-from`` images matched by their history, as dockerd's classic builder's
ImageCache does for an image with no local parent chain (pulled or loaded): a step is reused when
the cache image's history starts with its parent image's history (and layers) and its next entry
was made by the same instruction (``created_by``). The last entry is the cache image itself; an
earlier one becomes a new nameless image, the parent's layers plus the cache image's layer there
(highlevel's Compose, sharing the layer), so the next step goes on from it. Once a cache image has
served a step, only it is tried further in that stage (dockerd's rule: no jumping between images;
each FROM starts over with all of them).

Only asked when the build names cache images: the local cache index goes first, untouched."""

from __future__ import annotations

import json
from typing import Any

from services.common.errors import NotFound
from services.common.grpc import call
from services.daemon.builds.kept_images import KeptImages
from services.daemon.containers import ContainerManager
from services.gen.skiff import highlevel

hl = highlevel.v1


class CacheFrom:
    def __init__(self, manager: ContainerManager, images: KeptImages, refs: list[str]) -> None:
        self.manager = manager
        self.images = images
        self.refs = refs
        self.named: list[tuple[str, dict[str, Any]]] | None = None  # (id, image config), read once
        self.sources: list[tuple[str, dict[str, Any]]] = []           # those tried in this stage

    def new_stage(self) -> None:
        if self.named is not None:
            self.sources = list(self.named)

    async def _sources(self) -> list[tuple[str, dict[str, Any]]]:
        if self.named is None:
            self.named = []
            for ref in self.refs:
                try:
                    image = await self.images.inspect(ref)
                except NotFound:
                    continue  # dockerd skips a cache image it cannot find (and logs it)
                self.named.append((image.id, json.loads(image.config or b"{}")))
            self.sources = list(self.named)
        return self.sources

    async def match(self, parent: str, created_by: str, config: dict[str, Any]) -> tuple[str, dict[str, Any]] | None:
        """(image id, Config) of the step over ``parent`` made by ``created_by``, or None."""
        sources = await self._sources()
        if not sources:
            return None
        parent_cfg = json.loads((await self.images.inspect(parent)).config or b"{}") if parent else None
        depth = len((parent_cfg or {}).get("history") or [])
        for source_id, source in sources:
            history = source.get("history") or []
            if not valid_parent(source, parent_cfg) or history[depth].get("created_by", "") != created_by:
                continue
            if len(history) - 1 == depth:
                return source_id, source.get("config") or {}
            layer = layer_at(source, depth)
            if layer is None:
                continue
            with self.manager.changing_images():
                reply = await call(self.manager.images.compose(hl.ComposeImageRequest(
                    parent_image=parent, source_image=source_id, layer_diff_id=layer,
                    config=json.dumps(config).encode(), history=json.dumps(history[depth]).encode())))
            self.sources = [(source_id, source)]
            return reply.id, config
        return None


def valid_parent(image: dict[str, Any], parent: dict[str, Any] | None) -> bool:
    """``image``'s history and layers begin with ``parent``'s (dockerd's isValidParent)."""
    history = image.get("history") or []
    if not history:
        return False
    if parent is None:
        return True
    parent_history = parent.get("history") or []
    parent_diffs = (parent.get("rootfs") or {}).get("diff_ids") or []
    if not parent_history and not parent_diffs:
        return True
    diffs = (image.get("rootfs") or {}).get("diff_ids") or []
    if len(parent_history) >= len(history) or len(parent_diffs) > len(diffs):
        return False
    return history[:len(parent_history)] == parent_history and diffs[:len(parent_diffs)] == parent_diffs


def layer_at(image: dict[str, Any], index: int) -> str | None:
    """The diff id the history entry ``index`` added ("" when it added none), None if the image's
    history and layers disagree."""
    history = image.get("history") or []
    if history[index].get("empty_layer"):
        return ""
    position = sum(1 for entry in history[:index] if not entry.get("empty_layer"))
    diffs = (image.get("rootfs") or {}).get("diff_ids") or []
    return diffs[position] if position < len(diffs) else None
