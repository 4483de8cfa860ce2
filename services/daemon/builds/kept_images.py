"""The images a build names (its FROM, a COPY --from, the steps the cache index hands out), as
highlevel describes them, kept between builds while no image changes through the daemon
(``ContainerManager.images_changed``, the generation the create path keeps its answers by): a cached
rebuild asks highlevel nothing, as dockerd's builder reads its image store in process."""

from __future__ import annotations

from services.common.grpc import call
from services.daemon.containers import ContainerManager
from services.gen.skiff import highlevel

hl = highlevel.v1
KEPT_MAX = 256


class KeptImages:
    def __init__(self, manager: ContainerManager) -> None:
        self.manager = manager
        self._kept: dict[str, tuple[int, hl.ImageSummary]] = {}

    async def inspect(self, reference: str) -> hl.ImageSummary:
        """``reference`` (a name or an id) as highlevel has it; NotFound when it has none."""
        kept = self._kept.get(reference)
        if kept is not None and kept[0] == self.manager.images_changed:
            return kept[1]
        generation = self.manager.images_changed
        image = (await call(self.manager.images.inspect(hl.InspectImageRequest(reference=reference)))).image
        if len(self._kept) >= KEPT_MAX:
            self._kept.clear()
        self._kept[reference] = (generation, image)
        return image

    def forget(self) -> None:
        """An answer proved stale (an image removed behind the daemon's back): ask again."""
        self._kept.clear()
