"""Images to and from a registry: ``docker pull`` and ``docker push`` over the local image catalogue.

A pull resolves the manifest (choosing this host's platform from an index), fetches the config and
the layers concurrently, unpacks them in order while later ones still download, and only then names
the image; until that record exists every blob and snapshot it wrote is held by a content lease, so a
failed or cancelled pull leaves nothing behind. A push uploads what the registry lacks (cross-mounting
from a repository the image came from when it sits on the same registry) and then the manifest.
"""

from __future__ import annotations

import asyncio

from services.common.errors import InvalidArgument
from services.highlevel.content.store import Lease
from services.highlevel.images.manager import ImageInfo, ImageManager
from services.highlevel.images.manifest import (
    INDEX_TYPES,
    Descriptor,
    ImageConfig,
    Manifest,
    chain_ids,
    media_type_of,
    parse_index,
    pick_platform,
)
from services.highlevel.images.progress import ProgressEvent, ProgressFn, ProgressStatus, no_progress, short_id
from services.highlevel.images.reference import Reference, parse_reference
from services.highlevel.images.registry import Credentials, RegistryClient, RegistryOptions
from services.highlevel.images.store import ImageRecord

MAX_CONFIG_BYTES = 8 << 20


async def pull(images: ImageManager, text: str, *, credentials: dict[str, Credentials] | None = None,
               progress: ProgressFn = no_progress, options: RegistryOptions | None = None) -> ImageInfo:
    ref = parse_reference(text)
    with images.content.lease() as lease:
        try:
            return await _pull(images, ref, lease, credentials, progress, options)
        except BaseException:
            await images.discard(lease)
            raise


async def _pull(images: ImageManager, ref: Reference, lease: Lease, credentials: dict[str, Credentials] | None,
                progress: ProgressFn, options: RegistryOptions | None) -> ImageInfo:
    opts = options or images.registry_options
    async with images.client(credentials, opts) as rc:
        raw, ctype, digest = await rc.get_manifest(ref)
        mt = media_type_of(raw, ctype)
        index_digest: str | None = None
        if mt in INDEX_TYPES:
            lease.digests.add(digest)
            await asyncio.to_thread(images.content.write_bytes, raw, digest)
            index_digest = digest
            chosen = pick_platform(parse_index(raw))
            raw, ctype, digest = await rc.get_manifest(ref, chosen.digest)
            mt = media_type_of(raw, ctype)
        manifest = Manifest.parse(raw, mt)
        progress(ProgressEvent(ref.tag or "", ProgressStatus.RESOLVING,
                               detail=f"Pulling from {ref.familiar_repository}"))
        lease.digests.add(digest)
        await asyncio.to_thread(images.content.write_bytes, raw, digest)
        cfg_desc = manifest.config
        if cfg_desc.size > MAX_CONFIG_BYTES:
            raise InvalidArgument(f"image config of {ref} is larger than {MAX_CONFIG_BYTES} bytes")
        await _fetch(images, rc, ref, cfg_desc, lease, no_progress)
        config = ImageConfig.parse(images.content.read_bytes(cfg_desc.digest))
        diff_ids = config.diff_ids
        if len(diff_ids) != len(manifest.layers):
            raise InvalidArgument(
                f"image config lists {len(diff_ids)} diff IDs for {len(manifest.layers)} layers")
        chains = chain_ids(diff_ids)
        # Layer snapshots unpacked by this pull are leased too, until the image record exists.
        lease.digests.update(chains)
        snapshots = images.snapshots
        for layer, chain in zip(manifest.layers, chains, strict=True):
            exists = snapshots.exists(chain)
            progress(ProgressEvent(short_id(layer.digest),
                                   ProgressStatus.ALREADY_EXISTS if exists else ProgressStatus.PULLING_FS_LAYER))
        sem = asyncio.Semaphore(max(1, opts.concurrency))

        async def download(layer: Descriptor, chain: str) -> None:
            lease.digests.add(layer.digest)
            if snapshots.exists(chain) or images.content.has(layer.digest):
                return
            async with sem:
                await _fetch(images, rc, ref, layer, lease, progress)
            progress(ProgressEvent(short_id(layer.digest), ProgressStatus.DOWNLOAD_COMPLETE))

        tasks = [asyncio.create_task(download(layer, chain))
                 for layer, chain in zip(manifest.layers, chains, strict=True)]
        try:
            # Unpack in order while later layers still download.
            parent: str | None = None
            for task, layer, chain, diff in zip(tasks, manifest.layers, chains, diff_ids, strict=True):
                await task
                if not snapshots.exists(chain):
                    lid = short_id(layer.digest)
                    progress(ProgressEvent(lid, ProgressStatus.EXTRACTING, 0, layer.size))
                    await asyncio.to_thread(snapshots.unpack, chain, parent,
                                            images.content.blob_path(layer.digest), diff)
                    progress(ProgressEvent(lid, ProgressStatus.PULL_COMPLETE))
                parent = chain
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    target = Descriptor(mt, digest, len(raw))
    images.store.put(ImageRecord(str(ref), target, index_digest=index_digest, sources=[ref.repository]))
    progress(ProgressEvent("", ProgressStatus.DIGEST, detail=index_digest or digest))
    progress(ProgressEvent("", ProgressStatus.STATUS, detail=f"Downloaded newer image for {ref.familiar}"))
    return images.inspect(str(ref))


async def _fetch(images: ImageManager, rc: RegistryClient, ref: Reference, desc: Descriptor, lease: Lease,
                 progress: ProgressFn) -> None:
    lease.digests.add(desc.digest)
    if images.content.has(desc.digest):
        return
    writer = await asyncio.to_thread(images.content.writer, desc.digest, desc.size)
    try:
        await rc.fetch_blob(ref, desc, writer, progress)
        progress(ProgressEvent(short_id(desc.digest), ProgressStatus.VERIFYING))
        await asyncio.to_thread(writer.commit)
    finally:
        await asyncio.to_thread(writer.abort)


async def push(images: ImageManager, text: str, *, credentials: dict[str, Credentials] | None = None,
               progress: ProgressFn = no_progress, options: RegistryOptions | None = None) -> str:
    ref = parse_reference(text)
    _, recs = images.resolve(text)
    rec = images.store.find(str(ref)) or recs[0]
    manifest, _ = images.parts(rec)
    raw = images.content.read_bytes(rec.target.digest)
    opts = options or images.registry_options
    async with images.client(credentials, opts) as rc:
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
                await rc.upload_blob(ref, desc.digest, images.content.blob_path(desc.digest), desc.size,
                                     location, progress)
                progress(ProgressEvent(lid, ProgressStatus.PUSHED))

        await asyncio.gather(*(push_blob(d) for d in [*manifest.layers, manifest.config]))
        tag = ref.tag or ref.digest or "latest"
        digest = await rc.put_manifest(ref, raw, rec.target.media_type, tag)
    if ref.repository not in rec.sources:
        rec.sources.append(ref.repository)
        images.store.put(rec)
    progress(ProgressEvent("", ProgressStatus.DIGEST, detail=digest, total=len(raw)))
    return digest
