"""Image endpoints: list, inspect, history, tag, remove, prune; pull and import (POST /images/create),
push, save (get), load and commit, over the daemon's Images service. Pulls, pushes and loads stream
Docker's JSON messages (chunked, one per line); archives travel through a file beside the sockets
(same host)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from services.apiserver.app import Routes, backend
from services.apiserver.images_changes import apply_changes
from services.apiserver.images_filters import filter_images, parents_of
from services.apiserver.images_progress import error_message, line, pull_message, push_message, registry_auth
from services.apiserver.params import flag, parse_filters
from services.common.errors import InvalidArgument, NotFound, SkiffError
from services.common.grpc import call, client_errors
from services.dockermodel.render import image_inspect, image_summary
from services.dockermodel.times import parse_time
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import CommitContainerRequest, ImagePruneRequest

hl = highlevel.v1
CHUNK = 1 << 20


async def list_(request: web.Request) -> web.Response:
    stub = backend(request).images
    reply = await call(stub.list(hl.ListImagesRequest()))
    filters = parse_filters(request.query.get("filters"))
    # before/since name images: resolved as any image reference (a missing one is dockerd's 404).
    bounds = {}
    for key in ("before", "since"):
        for value in filters.get(key, []):
            bounds[key] = (await call(stub.inspect(hl.InspectImageRequest(reference=value)))).image.created
    images = list(reply.images)
    shown = filter_images(images, filters, show_all=flag(request, "all"), parents=parents_of(images), **bounds)
    # dockerd names a nameless image <none> for clients older than API 1.43, empty lists after.
    wanted = request.match_info.get("api_version")
    use_none = wanted is not None and tuple(int(x) for x in wanted.split(".")) < (1, 43)
    out = []
    for image in shown:
        body = image_summary(image)
        if use_none and not image.repo_tags and not image.repo_digests:
            body["RepoTags"], body["RepoDigests"] = ["<none>:<none>"], ["<none>@<none>"]
        out.append(body)
    return web.json_response(out)


async def inspect(request: web.Request) -> web.Response:
    reply = await call(backend(request).images.inspect(hl.InspectImageRequest(reference=request.match_info["name"])))
    return web.json_response(image_inspect(reply.image))


async def remove(request: web.Request) -> web.Response:
    reply = await call(backend(request).images.remove(hl.RemoveImageRequest(
        reference=request.match_info["name"], force=flag(request, "force"), no_prune=flag(request, "noprune"))))
    items = []
    for item in reply.items:
        if item.untagged:
            items.append({"Untagged": item.untagged})
        if item.deleted:
            items.append({"Deleted": item.deleted})
    return web.json_response(items)


def _reference(name: str, tag: str) -> str:
    if not tag:
        return name
    return f"{name}@{tag}" if tag.startswith("sha256:") else f"{name}:{tag}"


async def _stream_progress(request: web.Request, progress: AsyncIterator[hl.ImageProgress],
                           render: Callable[[hl.ImageProgress], list[dict[str, Any]]],
                           first: list[dict[str, Any]] | None = None) -> web.StreamResponse:
    """The first message is awaited before the 200 goes out, so an early failure (no such image,
    denied) is an HTTP error; a later one is Docker's errorDetail line in the stream."""
    with client_errors():
        head = await anext(progress, None)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for msg in first or []:
        await response.write(line(msg))
    try:
        item = head
        while item is not None:
            for msg in render(item):
                await response.write(line(msg))
            with client_errors():
                item = await anext(progress, None)
    except SkiffError as exc:
        await response.write(line(error_message(exc.message)))
    await response.write_eof()
    return response


def _render_pull(p: hl.ImageProgress) -> list[dict[str, Any]]:
    return [] if p.status == "Done" else [pull_message(p)]


async def _pull(request: web.Request, image: str, tag: str) -> web.StreamResponse:
    if not tag and ":" not in image.rsplit("/", 1)[-1] and "@" not in image:
        tag = "latest"
    reference = _reference(image, tag)
    stream = backend(request).images.pull(hl.PullImageRequest(reference=reference, auth=registry_auth(request)))
    return await _stream_progress(request, stream.__aiter__(), _render_pull)


def _upload_file(folder: Path, prefix: str) -> tuple[int, str]:
    folder.mkdir(parents=True, exist_ok=True)
    return tempfile.mkstemp(prefix=prefix, suffix=".tar", dir=folder)


async def _receive_body(request: web.Request, prefix: str) -> str:
    """The body goes to a file beside the sockets: highlevel reads it there (same host)."""
    fd, path = await asyncio.to_thread(_upload_file, backend(request).config.paths.run / "apiserver", prefix)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await request.content.read(CHUNK):
                await asyncio.to_thread(out.write, chunk)
    except BaseException:
        await asyncio.to_thread(_unlink, path)
        raise
    return path


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


async def _import(request: web.Request) -> web.StreamResponse:
    if request.query.get("fromSrc") != "-":
        raise InvalidArgument("import from a URL is not supported: send the archive as the body (fromSrc=-)")
    repo, tag = request.query.get("repo", ""), request.query.get("tag", "")
    reference = _reference(repo, tag or "latest") if repo and ":" not in repo.rsplit("/", 1)[-1] else repo
    config = apply_changes(request.query.getall("changes", []))
    path = await _receive_body(request, "import-")
    try:
        reply = await call(backend(request).images.import_(hl.ImportImageRequest(
            path=path, reference=reference, message=request.query.get("message", ""),
            config=json.dumps(config).encode() if config else b"")))
    finally:
        await asyncio.to_thread(_unlink, path)
    return web.Response(body=line({"status": reply.id}), content_type="application/json")


async def create(request: web.Request) -> web.StreamResponse:
    """POST /images/create: fromImage (pull) or fromSrc (import)."""
    if request.query.get("fromImage"):
        return await _pull(request, request.query["fromImage"], request.query.get("tag", ""))
    if request.query.get("fromSrc"):
        return await _import(request)
    raise InvalidArgument("fromImage or fromSrc is required")


async def push(request: web.Request) -> web.StreamResponse:
    name, tag = request.match_info["name"], request.query.get("tag", "")
    reference = _reference(name, tag)
    repository = name.rsplit("@", 1)[0]
    if not tag and ":" in repository.rsplit("/", 1)[-1]:
        repository, tag = repository.rsplit(":", 1)
    tag = tag or "latest"
    image = (await call(backend(request).images.inspect(hl.InspectImageRequest(reference=reference)))).image
    # highlevel reports the config blob too; Docker's output lists layers only.
    config_id = image.id.removeprefix("sha256:")[:12]
    stream = backend(request).images.push(hl.PushImageRequest(reference=reference, auth=registry_auth(request)))
    first = [{"status": f"The push refers to repository [{repository}]"}]

    def render(p: hl.ImageProgress) -> list[dict[str, Any]]:
        return [] if p.status == "Done" or (p.id and p.id == config_id) else push_message(p, tag)

    return await _stream_progress(request, stream.__aiter__(), render, first)


async def tag(request: web.Request) -> web.Response:
    repo = request.query.get("repo", "")
    if not repo:
        raise InvalidArgument("repository name (repo) is required")
    target = _reference(repo, request.query.get("tag", "") or ("" if "@" in repo else "latest"))
    await call(backend(request).images.tag(hl.TagImageRequest(source=request.match_info["name"], target=target)))
    return web.Response(status=201)


async def history(request: web.Request) -> web.Response:
    """dockerd's history: one row per history entry, newest first; the rows from the top down carry
    the ids and tags of the image and then of its parents (a committed image's), the rest <missing>."""
    images = backend(request).images
    reply = await call(images.inspect(hl.InspectImageRequest(reference=request.match_info["name"])))
    image = reply.image
    config = json.loads(image.config or b"{}")
    layers = list(image.layers)
    rows: list[dict[str, Any]] = []
    for entry in config.get("history") or []:
        size = 0
        if not entry.get("empty_layer") and layers:
            size = layers.pop(0).size
        rows.append({"Id": "<missing>", "Created": int(parse_time(entry.get("created", ""))),
                     "CreatedBy": entry.get("created_by", ""), "Tags": None, "Size": size,
                     "Comment": entry.get("comment", "")})
    if not rows:
        rows.append({"Id": "<missing>", "Created": int(parse_time(image.created)), "CreatedBy": "", "Tags": None,
                     "Size": image.size, "Comment": ""})
    rows.reverse()
    current: hl.ImageSummary | None = image
    for row in rows:
        if current is None:
            break
        row["Id"], row["Tags"] = current.id, list(current.repo_tags) or None
        parent = str(json.loads(current.config or b"{}").get("parent") or "")
        current = None
        if parent:
            with contextlib.suppress(NotFound):
                current = (await call(images.inspect(hl.InspectImageRequest(reference=parent)))).image
    return web.json_response(rows)


async def _save(request: web.Request, references: list[str]) -> web.StreamResponse:
    if not references:
        raise InvalidArgument("no image names given")
    fd, path = await asyncio.to_thread(_upload_file, backend(request).config.paths.run / "apiserver", "save-")
    os.close(fd)
    try:
        await call(backend(request).images.save(hl.SaveImagesRequest(references=references, path=path)))
        response = web.StreamResponse(headers={"Content-Type": "application/x-tar"})
        with open(path, "rb") as archive:  # noqa: ASYNC230 - opening is instant; reads go to a thread
            await response.prepare(request)
            while chunk := await asyncio.to_thread(archive.read, CHUNK):
                await response.write(chunk)
        await response.write_eof()
        return response
    finally:
        await asyncio.to_thread(_unlink, path)


async def get_one(request: web.Request) -> web.StreamResponse:
    return await _save(request, [request.match_info["name"]])


async def get_many(request: web.Request) -> web.StreamResponse:
    return await _save(request, request.query.getall("names", []))


async def prune(request: web.Request) -> web.Response:
    filters = parse_filters(request.query.get("filters"))
    dangling = [v.lower() for v in filters.get("dangling", ["true"])]
    labels = list(filters.get("label", [])) + [f"!{x}" for x in filters.get("label!", [])]
    reply = await call(backend(request).images.prune(ImagePruneRequest(
        all=dangling in (["false"], ["0"]), labels=labels)))
    deleted = [{"Untagged": i.untagged} if i.untagged else {"Deleted": i.deleted} for i in reply.items]
    return web.json_response({"ImagesDeleted": deleted or None, "SpaceReclaimed": reply.space_reclaimed})


async def commit(request: web.Request) -> web.Response:
    q = request.query
    container = q.get("container", "")
    if not container:
        raise InvalidArgument("container is required")
    body: dict[str, Any] = {}
    if request.can_read_body:
        with contextlib.suppress(ValueError):
            loaded = await request.json()
            body = loaded if isinstance(loaded, dict) else {}
    # Only what the client set: the image's own Config stays for the rest.
    config = apply_changes(q.getall("changes", []), {k: v for k, v in body.items() if v not in (None, "", [], {})})
    repo = q.get("repo", "")
    reference = _reference(repo, q.get("tag", "") or "latest") if repo else ""
    # Docker's default pauses the container while its filesystem is captured (the daemon does it).
    reply = await call(backend(request).images.commit(CommitContainerRequest(
        container=container, reference=reference, comment=q.get("comment", ""), author=q.get("author", ""),
        config=json.dumps(config).encode() if config else b"", no_pause=not flag(request, "pause", True))))
    return web.json_response({"Id": reply.id}, status=201)


async def load(request: web.Request) -> web.StreamResponse:
    """POST /images/load as dockerd answers it: always 200 once the body is read, the outcome as JSON
    messages streamed (chunked) one per line, a failure as the errorDetail message (docker-py raises
    ImageLoadError from it, the CLI exits 1 with its text). ``quiet`` (dockerd's default: true) only
    silences layer progress, which Skiff does not report (the load is one call); errors are streamed in
    both modes, as dockerd does."""
    path = await _receive_body(request, "load-")
    try:
        reply = await call(backend(request).images.load(hl.LoadImagesRequest(path=path)))
        messages = [{"stream": f"{m}\n"} for m in reply.messages]
    except SkiffError as exc:
        messages = [error_message(exc.message)]
    finally:
        await asyncio.to_thread(_unlink, path)
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    for msg in messages:
        await response.write(line(msg))
    await response.write_eof()
    return response


def register(routes: Routes) -> None:
    routes.add("GET", "/images/json", list_)
    routes.add("POST", "/images/create", create)
    routes.add("POST", "/images/load", load)
    routes.add("POST", "/images/prune", prune)
    routes.add("GET", "/images/get", get_many)
    routes.add("POST", "/commit", commit)
    routes.add("POST", "/images/{name:.+}/push", push)
    routes.add("POST", "/images/{name:.+}/tag", tag)
    routes.add("GET", "/images/{name:.+}/history", history)
    routes.add("GET", "/images/{name:.+}/get", get_one)
    routes.add("GET", "/images/{name:.+}/json", inspect)
    routes.add("DELETE", "/images/{name:.+}", remove)
