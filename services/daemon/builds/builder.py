"""One build, as dockerd's classic builder runs it: the Dockerfile's stages (ARG before FROM, FROM
with AS/--platform/scratch, a stage not needed by the target skipped), each instruction a step
("Step i/n : ..."), reused from the cache when its parent and instruction (and a COPY's files) match
(or, given cachefrom, found in a named image's history: cache_from.py), else made (steps.py) and
recorded; the build's labels a last LABEL step; tags at the end."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import posixpath
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.common.errors import InvalidArgument, NotFound, SkiffError
from services.common.grpc import call
from services.common.untar import open_in_root
from services.daemon.builds import instructions as ins_
from services.daemon.builds.cache import BuildCache, step_key
from services.daemon.builds.cache_from import CacheFrom
from services.daemon.builds.context import Context, read_dockerfile
from services.daemon.builds.dockerfile import Instruction, ParseError, arg_list, parse, parse_line
from services.daemon.builds.expand import env_map, process_word, process_words
from services.daemon.builds.kept_images import KeptImages
from services.daemon.builds.sources import copy_into, pick
from services.daemon.builds.steps import Steps
from services.daemon.containers import ContainerManager
from services.daemon.images import with_registry_settings
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import BuildOptions

hl = highlevel.v1
Emit = Callable[[str], Awaitable[None]]
PROXY_ARGS = frozenset({"HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "FTP_PROXY", "ftp_proxy",
                        "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"})
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le", "s390x": "s390x"}


def host_platform() -> tuple[str, str]:
    return "linux", _ARCH.get(platform.machine(), platform.machine())


def platform_args() -> dict[str, str]:
    os_name, arch = host_platform()
    plat = f"{os_name}/{arch}"
    return {"TARGETPLATFORM": plat, "TARGETOS": os_name, "TARGETARCH": arch, "TARGETVARIANT": "",
            "BUILDPLATFORM": plat, "BUILDOS": os_name, "BUILDARCH": arch, "BUILDVARIANT": ""}


@dataclass(slots=True)
class Stage:
    index: int
    name: str
    from_: Instruction
    body: list[Instruction]
    image: str = ""                      # the current image id ("" scratch, nothing yet)
    config: dict[str, Any] = field(default_factory=dict)
    args: dict[str, str | None] = field(default_factory=dict)
    cmd_set: bool = False
    author: str = ""


_HEREDOC_MARK = re.compile(r"<<(-?)([\"']?)([A-Za-z_][A-Za-z0-9_]*)\2")


class StaleCache(Exception):
    """An image the cache index named is gone."""


def split_stages(instructions: list[Instruction]) -> tuple[list[Instruction], list[Stage]]:
    """The ARGs before the first FROM, and the stages."""
    head: list[Instruction] = []
    stages: list[Stage] = []
    for item in instructions:
        if item.keyword == "from":
            words = item.rest.split()
            name = words[2].lower() if len(words) == 3 and words[1].lower() == "as" else ""
            if len(words) not in (1, 3) or (len(words) == 3 and not name):
                raise ParseError("FROM requires either one or three arguments")
            stages.append(Stage(len(stages), name, item, []))
        elif not stages:
            if item.keyword != "arg":
                raise ParseError("Please provide a source image with `from` prior to commit")
            head.append(item)
        else:
            stages[-1].body.append(item)
    if not stages:
        raise ParseError("No build stage in current context")
    return head, stages


class Build:
    def __init__(self, manager: ContainerManager, cache: BuildCache, images: KeptImages, options: BuildOptions,
                 ctx: Context, scratch: Path, emit: Emit) -> None:
        self.manager = manager
        self.cache = cache
        self.images = images
        self.options = options
        self.ctx = ctx
        self.scratch = scratch
        self.emit_raw = emit
        self.steps = Steps(manager, options, self.say)
        self.escape = "\\"
        self.global_args: dict[str, str | None] = {}
        self.consumed: set[str] = set()
        self.stages: list[Stage] = []
        self.step = 0
        self.total = 0
        self.unverified: set[str] = set()  # images taken from the cache index, not yet asked for
        self.hit_keys: list[str] = []
        self.final: hl.ImageSummary | None = None  # the built image, as highlevel has it
        self.cache_from = self._cache_from()

    def _cache_from(self) -> CacheFrom | None:
        if not self.options.cache_from or self.options.no_cache:
            return None
        return CacheFrom(self.manager, self.images, list(self.options.cache_from))

    async def say(self, text: str) -> None:
        await self.emit_raw(text)  # (quiet: the outlet holds it back)

    # ---- plan ----

    def _global_env(self) -> dict[str, str]:
        return {**platform_args(), **{k: v for k, v in self.global_args.items() if v is not None}}

    def _stage_ref(self, name: str, before: int) -> Stage | None:
        lowered = name.lower()
        for stage in self.stages[:before]:
            if stage.name and stage.name == lowered:
                return stage
        if name.isdigit() and int(name) < before:
            return self.stages[int(name)]
        return None

    def _needed(self, target: Stage) -> list[Stage]:
        needed: set[int] = set()

        def visit(stage: Stage) -> None:
            if stage.index in needed:
                return
            needed.add(stage.index)
            env = self._global_env()
            base = process_word(stage.from_.rest.split()[0], env, self.escape)
            dep = self._stage_ref(base, stage.index)
            if dep:
                visit(dep)
            for item in stage.body:
                if item.keyword in ("copy", "add") and "from" in item.flags:
                    dep = self._stage_ref(process_word(item.flags["from"], env, self.escape), stage.index)
                    if dep:
                        visit(dep)

        visit(target)
        return [s for s in self.stages if s.index in needed]

    async def run(self) -> str:
        try:
            return await self._run_once()
        except StaleCache:
            # An image the cache index named was removed since: those steps are forgotten and the
            # build made again (once; this time every missing step is made).
            for key in self.hit_keys:
                self.cache.forget(key)
            self.global_args, self.consumed, self.step = {}, set(), 0
            self.unverified, self.hit_keys = set(), []
            self.cache_from = self._cache_from()
            return await self._run_once()

    async def _run_once(self) -> str:
        dockerfile = parse(read_dockerfile(self.ctx))
        self.escape = dockerfile.escape
        head, self.stages = split_stages(dockerfile.instructions)
        for item in head:
            for name, default in arg_list(item, self.escape):
                value = self.options.build_args[name] if name in self.options.build_args else (
                    process_word(default, self._global_env(), self.escape) if default is not None else None)
                self.global_args[name] = value
                self.consumed.add(name)
        target = self.stages[-1]
        if self.options.target:
            found = [s for s in self.stages if s.name == self.options.target.lower()]
            if not found:
                raise InvalidArgument(f"failed to reach build target {self.options.target} in Dockerfile")
            target = found[0]
        if self.options.labels:
            pairs = sorted(self.options.labels.items())
            text = "LABEL " + " ".join(f"{json.dumps(k)}={json.dumps(v)}" for k, v in pairs)
            target.body.append(parse_line(text))
        stages = self._needed(target)
        self.total = sum(1 + len(s.body) for s in stages)
        try:
            for stage in stages:
                await self._stage(stage)
        finally:
            await self.steps.close()
            self.cache.save()
        image = target.image
        if not image:
            raise InvalidArgument("No image was generated. Is your Dockerfile empty?")
        self.final = await self._verify(image)
        given = [*self.options.build_args, *self.options.build_args_null]  # null: named without a value
        unused = sorted(k for k in given if k not in self.consumed and k not in PROXY_ARGS)
        if unused:
            await self.say(f"[Warning] One or more build-args [{' '.join(unused)}] were not consumed\n")
        return image

    # ---- a stage ----

    def env_of(self, stage: Stage) -> dict[str, str]:
        args = {k: v for k, v in stage.args.items() if v is not None}
        return {**args, **env_map(list(stage.config.get("Env") or []))}

    async def _stage(self, stage: Stage) -> None:
        if self.cache_from is not None:
            self.cache_from.new_stage()
        self.step += 1
        await self.say(f"Step {self.step}/{self.total} : {stage.from_.original}\n")
        await self._from(stage)
        for item in stage.body:
            self.step += 1
            await self.say(f"Step {self.step}/{self.total} : {item.original}\n")
            await self._dispatch(stage, item)

    async def _from(self, stage: Stage) -> None:
        env = self._global_env()
        base = process_word(stage.from_.rest.split()[0], env, self.escape)
        wanted = stage.from_.flags.get("platform")
        if wanted:
            plat = process_word(wanted, env, self.escape)
            os_name, arch = host_platform()
            if plat not in (os_name, f"{os_name}/{arch}") and not plat.startswith(f"{os_name}/{arch}/"):
                raise InvalidArgument(f"FROM --platform={plat}: Skiff builds for this host only ({os_name}/{arch})")
        dep = self._stage_ref(base, stage.index)
        if dep is not None:
            stage.image, stage.config = dep.image, json.loads(json.dumps(dep.config))
        elif base.lower() == "scratch":
            stage.image, stage.config = "", {}
        else:
            image = await self._base_image(base)
            stage.image = image.id
            stage.config = json.loads(image.config or b"{}").get("config") or {}
        await self.say(f" ---> {_short(stage.image)}\n" if stage.image else "")
        triggers = list(stage.config.get("OnBuild") or [])
        if triggers:
            await self.say(f"# Executing {len(triggers)} build trigger{'s' if len(triggers) > 1 else ''}\n")
            stage.config["OnBuild"] = None
            for text in triggers:
                await self._dispatch(stage, parse_line(text))

    async def _base_image(self, reference: str) -> hl.ImageSummary:
        if not self.options.pull:
            try:
                return await self.images.inspect(reference)
            except NotFound:
                pass
        await self.say(f"Pulling {reference}\n")
        try:
            with self.manager.changing_images():
                # daemon.json's registry-mirrors, insecure-registries and max-concurrent-downloads, as a docker pull.
                registry = with_registry_settings(None, self.manager.settings.current, pull=True)
                async for _ in self.manager.images.pull(hl.PullImageRequest(reference=reference, registry=registry)):
                    pass
        except SkiffError as exc:
            raise NotFound(f"pull access denied for {reference}, repository does not exist or may require "
                           f"'docker login': {exc.message}") from None
        return await self.images.inspect(reference)

    async def _dispatch(self, stage: Stage, item: Instruction) -> None:
        k = item.keyword
        env = self.env_of(stage)
        cfg = json.loads(json.dumps(stage.config))
        shell = list(cfg.get("Shell") or ins_.DEFAULT_SHELL)
        if k == "run":
            await self._run(stage, item, shell)
            return
        if k in ("copy", "add"):
            await self._copy(stage, item, env)
            return
        if k == "workdir":
            await self._workdir(stage, item, env)
            return
        if k == "arg":
            created_by = self._arg(stage, item, env)
        elif k == "env":
            created_by = ins_.apply_env(cfg, item, env, self.escape)
        elif k == "label":
            created_by = ins_.apply_label(cfg, item, env, self.escape)
        elif k == "expose":
            created_by = ins_.apply_expose(cfg, item, env, self.escape)
        elif k == "volume":
            created_by = ins_.apply_volume(cfg, item, env, self.escape)
        elif k == "user":
            created_by = ins_.apply_user(cfg, item, env, self.escape)
        elif k == "stopsignal":
            created_by = ins_.apply_stopsignal(cfg, item, env, self.escape)
        elif k == "cmd":
            created_by = ins_.apply_cmd(cfg, item, shell)
            stage.cmd_set = True
        elif k == "entrypoint":
            created_by = ins_.apply_entrypoint(cfg, item, shell, stage.cmd_set)
        elif k == "shell":
            created_by = ins_.apply_shell(cfg, item)
        elif k == "onbuild":
            created_by = ins_.apply_onbuild(cfg, item)
        elif k == "healthcheck":
            created_by = ins_.apply_healthcheck(cfg, item, shell)
        elif k == "maintainer":
            stage.author = item.rest
            created_by = ins_.nop("MAINTAINER " + item.rest)
        else:
            raise ParseError(f"unknown instruction: {k.upper()}")
        await self._config_step(stage, cfg, created_by)

    def _arg(self, stage: Stage, item: Instruction, env: dict[str, str]) -> str:
        shown = []
        for name, default in arg_list(item, self.escape):
            if name in self.options.build_args:
                value: str | None = self.options.build_args[name]
            elif default is not None:
                value = process_word(default, env, self.escape)
            else:
                value = self.global_args.get(name, platform_args().get(name))
            stage.args[name] = value
            self.consumed.add(name)
            shown.append(name if default is None else f"{name}={process_word(default, env, self.escape)}")
        return ins_.nop("ARG " + " ".join(shown))

    async def _cached(self, stage: Stage, key: str, created_by: str, config: dict[str, Any]) -> bool:
        """The step reused: from the local cache index, else (cachefrom) matched in a cache image's
        history; ``config`` is the Config the step makes."""
        if self.options.no_cache:
            return False
        if await self._local_hit(stage, key):
            return True
        if self.cache_from is None:
            return False
        await self._verify(stage.image)
        hit = await self.cache_from.match(stage.image, created_by, config)
        if hit is None:
            return False
        stage.image, stage.config = hit[0], json.loads(json.dumps(hit[1]))
        await self.say(" ---> Using cache\n")
        await self.say(f" ---> {_short(stage.image)}\n")
        return True

    async def _local_hit(self, stage: Stage, key: str) -> bool:
        entry = self.cache.lookup(key)
        if entry is None:
            return False
        if entry.config is None:
            try:
                summary = await self._inspect(entry.image)
            except NotFound:
                self.cache.forget(key)
                return False
            config = json.loads(summary.config or b"{}").get("config") or {}
        else:
            # Trusted until the image is needed (a step made over it, COPY --from, the end): one
            # question to highlevel a build, not one a step.
            config = json.loads(json.dumps(entry.config))
            self.unverified.add(entry.image)
        if self.options.cache_from and not await self._in_cache_from(entry.image):
            return False
        self.hit_keys.append(key)
        stage.image, stage.config = entry.image, config
        await self.say(" ---> Using cache\n")
        await self.say(f" ---> {_short(entry.image)}\n")
        return True

    async def _inspect(self, image: str) -> hl.ImageSummary:
        return await self.images.inspect(image)

    async def _verify(self, image: str) -> hl.ImageSummary | None:
        """``image`` still there when it came from the cache index (StaleCache if not)."""
        if image not in self.unverified:
            return None
        try:
            summary = await self._inspect(image)
        except NotFound:
            raise StaleCache(image) from None
        self.unverified.discard(image)
        return summary

    async def _in_cache_from(self, image_id: str) -> bool:
        """cachefrom: only steps in the history of the images named are reused."""
        for ref in self.options.cache_from:
            try:
                current = (await call(self.manager.images.inspect(hl.InspectImageRequest(reference=ref)))).image
            except NotFound:
                continue
            while True:
                if current.id == image_id:
                    return True
                parent = json.loads(current.config or b"{}").get("parent")
                if not parent:
                    break
                try:
                    current = (await call(self.manager.images.inspect(hl.InspectImageRequest(reference=parent)))).image
                except NotFound:
                    break
        return False

    def _record(self, stage: Stage, key: str, parent: str, image: str, created_by: str, config: dict[str, Any]) -> None:
        self.cache.put(key, image, parent, created_by, config)
        stage.image, stage.config = image, config

    async def _config_step(self, stage: Stage, cfg: dict[str, Any], created_by: str) -> None:
        key = step_key(stage.image, created_by, json.dumps(cfg, sort_keys=True) + stage.author)
        if await self._cached(stage, key, created_by, cfg):
            return
        await self._verify(stage.image)
        parent = stage.image
        image = await self.steps.commit(parent, cfg, created_by, stage.author)
        self._record(stage, key, parent, image, created_by, cfg)
        await self.say(f" ---> {_short(image)}\n")

    async def _run(self, stage: Stage, item: Instruction, shell: list[str]) -> None:
        argv = ins_.command_form(item, shell)
        if item.heredocs:
            # RUN <<EOF: the body is the script; RUN cmd <<EOF: the shell reads the here-document.
            bare = _HEREDOC_MARK.sub("", item.rest).strip() == ""
            script = item.heredocs[0][1] if bare and len(item.heredocs) == 1 else \
                item.rest + "\n" + "".join(body + word + "\n" for word, body in item.heredocs)
            argv = [*shell, script]
        env_keys = {e.partition("=")[0] for e in stage.config.get("Env") or []}
        args = sorted((k, v) for k, v in stage.args.items() if v is not None and k not in env_keys)
        shown = [f"{k}={v}" for k, v in args if k not in PROXY_ARGS]
        created_by = " ".join(argv)
        if shown:
            created_by = f"|{len(shown)} {' '.join(shown)} {created_by}"
        proxies = [(k, v) for k, v in self.options.build_args.items() if k in PROXY_ARGS and k not in stage.args]
        run_env = [f"{k}={v}" for k, v in [*args, *proxies]] + list(stage.config.get("Env") or [])
        key = step_key(stage.image, created_by, json.dumps(stage.config, sort_keys=True))
        if await self._cached(stage, key, created_by, stage.config):
            return
        await self._verify(stage.image)
        parent = stage.image
        if not parent:
            raise InvalidArgument(f"The command '{' '.join(argv)}' cannot run in an empty (scratch) image")
        cfg = json.loads(json.dumps(stage.config))
        image = await self.steps.run(parent, cfg, argv, run_env, created_by, stage.author)
        self._record(stage, key, parent, image, created_by, cfg)
        await self.say(f" ---> {_short(image)}\n")

    async def _copy(self, stage: Stage, item: Instruction, env: dict[str, str]) -> None:
        words = item.json_args if item.json_args is not None else process_words(item.rest, env, self.escape)
        if item.json_args is not None:
            words = [process_word(w, env, self.escape) for w in words]
        if len(words) < 2:
            raise ParseError(f"{item.keyword.upper()} requires at least two arguments")
        for flag in item.flags:
            if flag not in ("chown", "chmod", "from"):
                raise ParseError(f"Unknown flag: {flag}")
        srcs, dest = words[:-1], words[-1]
        chown = process_word(item.flags.get("chown", ""), env, self.escape)
        chmod = process_word(item.flags.get("chmod", ""), env, self.escape)
        root, patterns = self.ctx.root, self.ctx.patterns
        origin = ""
        docs = dict(item.heredocs)
        inline = [w for w in srcs if w.startswith("<<")]
        if inline:
            if len(inline) != len(srcs) or "from" in item.flags:
                raise InvalidArgument(f"{item.keyword.upper()}: here-documents cannot be mixed with other sources")
            # COPY <<EOF /dest: each here-document a file of its own, named after its word.
            root = self.scratch / f"heredoc-{self.step}"
            root.mkdir(exist_ok=True)
            for word in inline:
                name = _HEREDOC_MARK.sub(r"\3", word)
                (root / name).write_text(docs.get(name, ""))
                (root / name).chmod(0o644)
            srcs, patterns = [_HEREDOC_MARK.sub(r"\3", w) for w in inline], []
        if "from" in item.flags:
            ref = process_word(item.flags["from"], {**self._global_env(), **env}, self.escape)
            dep = self._stage_ref(ref, stage.index)
            if dep is None and ref.lower() == stage.name:
                raise InvalidArgument(f"{item.keyword.upper()} --from={ref}: a stage cannot copy from itself")
            source_image = dep.image if dep is not None else (await self._base_image(ref)).id
            await self._verify(source_image)
            root, patterns, origin = await self.steps.view(source_image), [], source_image
        if root is self.ctx.root:
            # The context's folder never changes: its picks (the files' checksums) are kept with it.
            memo = (item.keyword, tuple(srcs))
            picked = self.ctx.picks.get(memo)
            if picked is None:
                picked = await asyncio.to_thread(pick, root, srcs, item.keyword, patterns)
                self.ctx.picks[memo] = picked
        else:
            picked = await asyncio.to_thread(pick, root, srcs, item.keyword, patterns)
        workdir = str(stage.config.get("WorkingDir") or "/")
        full = dest if dest.startswith("/") else posixpath.join(workdir, dest)
        created_by = f"/bin/sh -c #(nop) {item.keyword.upper()} {picked.checksum} in {full} "
        extra = f"{chown}\0{chmod}\0{origin}\0{json.dumps(stage.config, sort_keys=True)}"
        key = step_key(stage.image, created_by, extra)
        if await self._cached(stage, key, created_by, stage.config):
            return
        await self._verify(stage.image)
        parent = stage.image
        cfg = json.loads(json.dumps(stage.config))

        def work(rootfs: Path) -> None:
            copy_into(picked, rootfs, dest, workdir, chown=chown, chmod=chmod, unpack=item.keyword == "add",
                      scratch=self.scratch)

        image = await self.steps.in_snapshot(parent, cfg, created_by, stage.author, work)
        self._record(stage, key, parent, image, created_by, cfg)
        await self.say(f" ---> {_short(image)}\n")

    async def _workdir(self, stage: Stage, item: Instruction, env: dict[str, str]) -> None:
        path = process_word(item.rest, env, self.escape)
        if not path:
            raise ParseError("WORKDIR requires exactly one argument")
        full = posixpath.normpath(path if path.startswith("/") else posixpath.join(
            str(stage.config.get("WorkingDir") or "/"), path))
        cfg = json.loads(json.dumps(stage.config))
        cfg["WorkingDir"] = full
        created_by = ins_.nop("WORKDIR " + full)
        key = step_key(stage.image, created_by, json.dumps(cfg, sort_keys=True))
        if await self._cached(stage, key, created_by, cfg):
            return
        await self._verify(stage.image)
        parent = stage.image

        def make(rootfs: Path) -> None:
            # The folder exists in the image, as dockerd's builder makes it (owned by root, 0755).
            fd = os.open(rootfs, os.O_RDONLY)
            try:
                os.close(open_in_root(fd, [p for p in full.split("/") if p], create=True)[1])
            finally:
                os.close(fd)

        image = await self.steps.in_snapshot(parent, cfg, created_by, stage.author, make)
        self._record(stage, key, parent, image, created_by, cfg)
        await self.say(f" ---> {_short(image)}\n")


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]
