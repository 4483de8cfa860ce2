"""docker build / POST /build (Docker's classic builder) through the real docker CLI and docker-py:
multi-stage with COPY --from, build args, .dockerignore, the layer cache (a rebuild runs no step, a
changed file reruns only the steps after its COPY), a failing RUN with and without --force-rm,
--target, the image config (HEALTHCHECK, USER, WORKDIR) and history, the built image run; hostile
contexts refused cleanly with nothing written outside the build's folders."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import docker
import pytest

from services.daemon.builds.kept_contexts import KEEP
from tests.e2e.stack import Stack

pytestmark = pytest.mark.skipif(shutil.which("docker") is None, reason="docker CLI not installed")

MULTI = """\
# syntax=docker/dockerfile:1
ARG BASE=busybox
FROM ${BASE} AS builder
ARG GREETING=hello
WORKDIR /src
COPY greet.txt ./
RUN echo "$GREETING from $(cat greet.txt)" > /src/out.txt \\
 && echo built
FROM busybox AS unused
RUN echo this stage is never built && false
FROM busybox
LABEL org.example.kind=test
COPY --from=builder /src/out.txt /app/out.txt
COPY data/ /app/data/
RUN echo final step ran
USER 1000:1000
WORKDIR /app
HEALTHCHECK --interval=5s --timeout=3s --retries=2 CMD cat /app/out.txt
CMD ["cat", "/app/out.txt"]
"""


def env_of(stack: Stack, buildkit: str | None = None) -> dict[str, str]:
    env = dict(os.environ, DOCKER_HOST=stack.base_url, DOCKER_CONFIG=str(stack.prefix / "docker-config"))
    env.pop("DOCKER_BUILDKIT", None)
    if buildkit is not None:
        env["DOCKER_BUILDKIT"] = buildkit
    return env


def cli(stack: Stack, *args: str, buildkit: str | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["docker", *args], capture_output=True, text=True, timeout=timeout,
                          env=env_of(stack, buildkit))


def make_context(folder: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return folder


def multi_context(folder: Path) -> Path:
    return make_context(folder, {
        "Dockerfile": MULTI, "greet.txt": "skiff\n", "data/a.txt": "A\n", "data/secret.key": "nope\n",
        "data/keep.key": "kept\n", "notes.md": "ignored\n",
        ".dockerignore": "# comment\n*.md\ndata/*.key\n!data/keep.key\n"})


def build_py(client: docker.DockerClient, context: Path, **kwargs: Any) -> tuple[str, list[dict[str, Any]]]:
    """docker-py's low-level build: the image id and every message."""
    messages = list(client.api.build(path=str(context), decode=True, **kwargs))
    ids = [m["aux"]["ID"] for m in messages if "aux" in m]
    return (ids[-1] if ids else ""), messages


def text_of(messages: list[dict[str, Any]]) -> str:
    return "".join(m.get("stream", "") for m in messages)


def test_multistage_build_cli_and_run(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ctx = multi_context(tmp_path / "ctx")
    result = cli(stack, "build", "-t", "built:v1", "-t", "built:v2", "--build-arg", "GREETING=hi", str(ctx))
    assert result.returncode == 0, result.stderr + result.stdout
    out = result.stdout
    assert "Step 1/" in out and ": FROM ${BASE} AS builder" in out
    assert "this stage is never built" not in out
    assert " ---> Running in " in out and "built\n" in out
    assert "Successfully tagged built:v1" in out and "Successfully tagged built:v2" in out
    image = client.images.get("built:v1")
    cfg = image.attrs["Config"]
    assert cfg["User"] == "1000:1000" and cfg["WorkingDir"] == "/app"
    assert cfg["Healthcheck"] == {"Test": ["CMD-SHELL", "cat /app/out.txt"], "Interval": 5_000_000_000,
                                  "Timeout": 3_000_000_000, "Retries": 2}
    assert cfg["Labels"]["org.example.kind"] == "test"
    assert cfg["Cmd"] == ["cat", "/app/out.txt"]
    # The built image runs: the first stage's output, the context's files minus .dockerignore's.
    assert client.containers.run("built:v1", remove=True) == b"hi from skiff\n"
    listing = client.containers.run("built:v1", ["ls", "/app/data"], remove=True).decode().split()
    assert listing == ["a.txt", "keep.key"]
    history = cli(stack, "image", "history", "--no-trunc", "--format", "{{.CreatedBy}}", "built:v1").stdout
    assert '/bin/sh -c #(nop)  CMD ["cat" "/app/out.txt"]' in history
    assert "/bin/sh -c #(nop)  WORKDIR /app" in history
    assert "/bin/sh -c echo final step ran" in history
    builder_history = [h["CreatedBy"] for h in client.api.history("built:v1")]
    assert any(h.startswith("/bin/sh -c #(nop) COPY dir:") for h in builder_history)


CACHED = """\
FROM busybox
ENV STAGE=one
RUN echo first > /first
COPY input.txt /input.txt
RUN cat /input.txt > /copied
CMD ["cat", "/copied"]
"""


def test_cache_rebuild_runs_nothing_and_a_changed_file_reruns_after_its_copy(
        stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": CACHED, "input.txt": "v1\n"})
    first = cli(stack, "build", "-t", "cached:1", str(ctx), buildkit="0")
    assert first.returncode == 0, first.stderr
    assert first.stdout.count(" ---> Running in ") == 2
    again = cli(stack, "build", "-t", "cached:1", str(ctx), buildkit="0")
    assert again.returncode == 0, again.stderr
    assert " ---> Running in " not in again.stdout
    assert again.stdout.count(" ---> Using cache") == 5
    assert client.images.get("cached:1").id == client.images.get("cached:1").id
    (ctx / "input.txt").write_text("v2\n")
    changed = cli(stack, "build", "-t", "cached:2", str(ctx), buildkit="0")
    assert changed.returncode == 0, changed.stderr
    steps = changed.stdout.split("Step ")[1:]
    # ENV and the first RUN reused; the COPY and everything after it made again.
    assert [" ---> Using cache" in s for s in steps] == [False, True, True, False, False, False]
    assert changed.stdout.count(" ---> Running in ") == 1
    assert client.containers.run("cached:2", remove=True) == b"v2\n"
    nocache = cli(stack, "build", "--no-cache", "-q", str(ctx), buildkit="0")
    assert nocache.returncode == 0 and nocache.stdout.strip().startswith("sha256:")
    # The cache is counted by /system/df, and docker builder prune empties it.
    assert len(client.df()["BuildCache"]) >= 5
    pruned = client.api.post(client.api._url("/build/prune")).json()
    assert pruned["SpaceReclaimed"] >= 0
    assert client.df()["BuildCache"] == []
    rebuilt = cli(stack, "build", "-t", "cached:1", str(ctx), buildkit="0")
    assert "Using cache" not in rebuilt.stdout


FAILING = "FROM busybox\nRUN echo before\nRUN echo about to fail && false\nRUN echo never\n"


def test_failing_run_keeps_its_container_unless_force_rm(stack: Stack, client: docker.DockerClient,
                                                         tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": FAILING})
    result = cli(stack, "build", str(ctx), buildkit="0")
    assert result.returncode == 1
    assert "about to fail" in result.stdout and "never" not in result.stdout
    assert "The command '/bin/sh -c echo about to fail && false' returned a non-zero code: 1" in result.stderr
    left = client.containers.list(all=True)
    assert len(left) == 1 and left[0].attrs["State"]["ExitCode"] == 1
    left[0].remove()
    forced = cli(stack, "build", "--force-rm", "--no-cache", str(ctx), buildkit="0")
    assert forced.returncode == 1
    assert client.containers.list(all=True) == []
    # docker-py sees the errorDetail with the command's code.
    messages = list(client.api.build(path=str(ctx), forcerm=True, decode=True))
    errors = [m for m in messages if "errorDetail" in m]
    assert errors and errors[0]["errorDetail"]["code"] == 1
    assert "returned a non-zero code: 1" in errors[0]["error"]


def test_target_buildargs_and_labels_with_docker_py(stack: Stack, client: docker.DockerClient,
                                                    tmp_path: Path) -> None:
    ctx = multi_context(tmp_path / "ctx")
    buildargs = {"GREETING": "hey", "UNUSED": "x", "NULLED": None}
    image_id, messages = build_py(client, ctx, target="builder", buildargs=buildargs,
                                  labels={"built.by": "skiff"}, tag="target:test")
    text = text_of(messages)
    assert image_id.startswith("sha256:")
    assert "COPY --from=builder" not in text  # the last stage is not built
    # A build arg given as null (the CLI's --build-arg NAME with NAME unset) is named in the warning too.
    assert "[Warning] One or more build-args [NULLED UNUSED] were not consumed" in text
    image = client.images.get("target:test")
    assert image.id == image_id
    assert image.attrs["Config"]["WorkingDir"] == "/src"
    assert image.attrs["Config"]["Labels"] == {"built.by": "skiff"}
    assert client.containers.run(image_id, ["cat", "/src/out.txt"], remove=True) == b"hey from skiff\n"
    history = [h["CreatedBy"] for h in client.api.history(image_id)]
    assert any(h.startswith("|1 GREETING=hey /bin/sh -c echo") for h in history), history
    # docker-py's high-level build returns the image and the log.
    built, log = client.images.build(path=str(ctx), target="builder", buildargs={"GREETING": "hey"})
    assert built.id == image_id or any("Successfully built" in m.get("stream", "") for m in log)
    with pytest.raises(docker.errors.BuildError, match="failed to reach build target nope"):
        client.images.build(path=str(ctx), target="nope")
    with pytest.raises(docker.errors.APIError, match="squash is only supported with experimental mode"):
        list(client.api.build(path=str(ctx), squash=True))


def test_dockerfile_alone_and_elsewhere_add_and_more_instructions(stack: Stack, client: docker.DockerClient,
                                                                  tmp_path: Path) -> None:
    # A Dockerfile sent alone as the body.
    alone = list(client.api.build(fileobj=io.BytesIO(b"FROM busybox\nENV A=1\nCMD [\"env\"]\n"), decode=True))
    assert any("aux" in m for m in alone), alone
    # dockerfile= at another path; ADD of a local tar unpacks it; --chown/--chmod; ONBUILD recorded
    # and triggered in a child; EXPOSE, VOLUME, STOPSIGNAL, SHELL, ENTRYPOINT.
    ctx = tmp_path / "ctx"
    (ctx / "sub").mkdir(parents=True)
    with tarfile.open(ctx / "bundle.tar.gz", "w:gz") as tf:
        info = tarfile.TarInfo("inner/file.txt")
        info.size = 6
        tf.addfile(info, io.BytesIO(b"inner\n"))
    (ctx / "owned.txt").write_text("mine\n")
    (ctx / "sub" / "Build.file").write_text(
        "FROM busybox\nADD bundle.tar.gz /unpacked/\nCOPY --chown=skiff:users --chmod=640 owned.txt /owned.txt\n"
        "EXPOSE 8080/udp\nVOLUME /data\nSTOPSIGNAL SIGUSR1\nSHELL [\"/bin/sh\", \"-ec\"]\n"
        "ONBUILD RUN echo triggered > /triggered\nMAINTAINER someone\nENTRYPOINT [\"/bin/sh\", \"-c\"]\n"
        "CMD [\"cat /unpacked/inner/file.txt; stat -c '%u:%g %a' /owned.txt\"]\n")
    parent_id, messages = build_py(client, ctx, dockerfile="sub/Build.file", tag="parent:onbuild")
    assert parent_id, text_of(messages)
    attrs = client.images.get(parent_id).attrs
    cfg = attrs["Config"]
    assert cfg["ExposedPorts"] == {"8080/udp": {}} and cfg["Volumes"] == {"/data": {}}
    assert cfg["StopSignal"] == "SIGUSR1" and cfg["OnBuild"] == ["RUN echo triggered > /triggered"]
    assert attrs["Author"] == "someone"
    assert client.containers.run(parent_id, remove=True) == b"inner\n1000:100 640\n"
    child = make_context(tmp_path / "child", {"Dockerfile": "FROM parent:onbuild\nCMD [\"cat /triggered\"]\n"})
    child_id, messages = build_py(client, child)
    assert "# Executing 1 build trigger" in text_of(messages)
    assert client.containers.run(child_id, remove=True) == b"triggered\n"
    assert not client.images.get(child_id).attrs["Config"].get("OnBuild")
    # ADD of a URL is a clear refusal (builds fetch nothing from the network).
    url = make_context(tmp_path / "url", {"Dockerfile": "FROM busybox\nADD http://example.com/x /x\n"})
    _, messages = build_py(client, url)
    assert "ADD of a URL (http://example.com/x) is not supported" in messages[-1]["error"]


def _tar(entries: list[tarfile.TarInfo], data: dict[str, bytes]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for info in entries:
            body = data.get(info.name)
            if body is not None:
                info.size = len(body)
            tf.addfile(info, io.BytesIO(body) if body is not None else None)
    buf.seek(0)
    return buf


def _file(name: str) -> tarfile.TarInfo:
    return tarfile.TarInfo(name)


def _link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    info.linkname = target
    return info


def _error_of(client: docker.DockerClient, context: io.BytesIO) -> str:
    messages = list(client.api.build(fileobj=context, custom_context=True, decode=True))
    errors = [m["error"] for m in messages if "error" in m]
    assert errors, messages
    return errors[-1]


def test_hostile_contexts_fail_cleanly_and_write_nothing_outside(stack: Stack, client: docker.DockerClient,
                                                                 tmp_path: Path) -> None:
    marker = f"skiff-build-escape-{os.getpid()}"
    builds = stack.paths.run / "daemon" / "builds"
    dockerfile = b"FROM busybox\nCOPY . /ctx/\n"
    # `..` in a name, and a hard link climbing out: refused before anything is written.
    for entries in ([_file("Dockerfile"), _file(f"../{marker}")],
                    [_file("Dockerfile"), _file("a"), _link("b", f"../../{marker}", hard=True)]):
        error = _error_of(client, _tar(entries, {"Dockerfile": dockerfile, f"../{marker}": b"x", "a": b"a"}))
        assert "climbs out of the root" in error
    # A link pointing outside, then an entry written through it: the walk stays in the context.
    error_or_ok = list(client.api.build(fileobj=_tar(
        [_file("Dockerfile"), _link("up", "../../../../../../.."), _file(f"up/tmp/{marker}")],
        {"Dockerfile": b"FROM busybox\nCOPY up/tmp/ /got/\nCMD [\"ls\", \"/got\"]\n", f"up/tmp/{marker}": b"in"}),
        custom_context=True, decode=True))
    ids = [m["aux"]["ID"] for m in error_or_ok if "aux" in m]
    if ids:
        assert client.containers.run(ids[-1], remove=True).decode().split() == [marker]
    # A COPY source escaping through an absolute or climbing symlink finds only what the context holds.
    for target in ("/etc", "../../../../../../etc"):
        error = _error_of(client, _tar([_file("Dockerfile"), _link("hostetc", target)],
                                       {"Dockerfile": b"FROM busybox\nCOPY hostetc/hostname /stolen\n"}))
        assert "file not found in build context" in error
    error = _error_of(client, _tar([_file("Dockerfile"), _link("secret", "/etc/hostname")],
                                   {"Dockerfile": b"FROM busybox\nCOPY secret /stolen\n"}))
    assert "file not found in build context" in error
    # Nothing was written outside: no marker on the host, and every build folder is gone.
    for root in (Path("/"), Path("/tmp"), stack.prefix, stack.paths.run, stack.paths.run / "daemon"):
        assert not (root / marker).exists()
    found = subprocess.run(["find", str(stack.prefix), "-name", marker], capture_output=True, text=True).stdout
    kept = builds / "contexts"  # contexts kept for a rebuild of the same bytes (kept_contexts.py)
    assert all("/snapshots/" in line or "/content/" in line or line.startswith(f"{kept}/")
               for line in found.splitlines())
    # Each build's folder goes once its answer has been sent; a refused context is not kept.
    deadline = time.monotonic() + 10
    while builds.exists() and _build_folders(builds) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not builds.exists() or _build_folders(builds) == []
    assert len(list(kept.iterdir())) <= KEEP


def _build_folders(builds: Path) -> list[Path]:
    return [p for p in builds.iterdir() if p.name != "contexts"]


RESOURCES = """\
FROM busybox
RUN cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes
RUN echo "nofile=$(ulimit -n)"
RUN echo "links=$(ls /sys/class/net | tr '\\n' ' ')"
RUN echo "shm=$(df -k /dev/shm | tail -n 1 | awk '{print $2}')k"
RUN echo "shares=$(cat /sys/fs/cgroup/cpu.weight 2>/dev/null || cat /sys/fs/cgroup/cpu/cpu.shares)"
"""


def test_run_steps_honour_memory_ulimits_and_network_mode(stack: Stack, client: docker.DockerClient,
                                                          tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": RESOURCES})
    result = cli(stack, "build", "--memory", "64m", "--ulimit", "nofile=512:512", "--network", "none",
                 "--shm-size", "16m", "--cpu-shares", "512", str(ctx), buildkit="0")
    assert result.returncode == 0, result.stderr
    assert "67108864" in result.stdout
    assert "nofile=512" in result.stdout
    assert "links=lo \n" in result.stdout
    assert "shm=16384k" in result.stdout
    # cgroup v1 keeps the shares as given; v2 converts them to a weight (512 -> 20, as runc converts).
    assert "shares=512" in result.stdout or "shares=20\n" in result.stdout


LIMITS = """\
FROM busybox
RUN echo "memsw=$(cat /sys/fs/cgroup/memory/memory.memsw.limit_in_bytes 2>/dev/null \
    || cat /sys/fs/cgroup/memory.swap.max)"
RUN echo "cpus=$(cat /sys/fs/cgroup/cpuset/cpuset.cpus 2>/dev/null || cat /sys/fs/cgroup/cpuset.cpus)"
RUN echo "mems=$(cat /sys/fs/cgroup/cpuset/cpuset.mems 2>/dev/null || cat /sys/fs/cgroup/cpuset.mems)"
RUN echo "cfs=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us 2>/dev/null \
    || cat /sys/fs/cgroup/cpu.max)" | tr '\\n' ' '; echo
RUN echo "hosts=$(grep -h -e buildhost -e pyhost /etc/hosts | tr '\\t\\n' '  ')"
"""


def test_run_steps_honour_swap_cpuset_cfs_and_extra_hosts(stack: Stack, client: docker.DockerClient,
                                                          tmp_path: Path) -> None:
    """memswap, cpusetcpus/cpusetmems, cpuperiod/cpuquota and extrahosts reach each RUN step's
    container, as dockerd's hostConfigFromOptions hands them on (the CLI, then docker-py)."""
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": LIMITS})
    result = cli(stack, "build", "--no-cache", "--memory", "64m", "--memory-swap", "128m", "--cpuset-cpus", "0",
                 "--cpuset-mems", "0", "--cpu-period", "50000", "--cpu-quota", "25000",
                 "--add-host", "buildhost:10.11.12.13", str(ctx), buildkit="0")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    v1 = Path("/sys/fs/cgroup/memory").is_dir()
    if not v1 or Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists():  # swap accounting on
        assert ("memsw=134217728" if v1 else "memsw=67108864") in out, out
    assert "cpus=0\n" in out and "mems=0\n" in out, out
    assert ("cfs=25000 50000 " if v1 else "cfs=25000 50000") in out, out
    assert "hosts=10.11.12.13 buildhost" in out, out
    # docker-py: container_limits' memswap and cpusetcpus, extra_hosts as a dict.
    messages = list(client.api.build(path=str(ctx), nocache=True, decode=True, extra_hosts={"pyhost": "10.9.8.7"},
                                     container_limits={"memory": 64 << 20, "memswap": -1, "cpusetcpus": "0"}))
    text = "".join(m.get("stream", "") for m in messages)
    assert not any("error" in m for m in messages), messages
    assert "hosts=10.9.8.7 pyhost" in text and "cpus=0\n" in text, text
    if v1 and Path("/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes").exists():
        assert "memsw=9223372036854771712" in text, text  # -1: unlimited swap
    # A swap limit below the memory limit fails the step's create with dockerd's words.
    bad = list(client.api.build(path=str(ctx), nocache=True, decode=True,
                                container_limits={"memory": 64 << 20, "memswap": 32 << 20}))
    assert "Minimum memoryswap limit should be larger than memory limit" in bad[-1].get("error", ""), bad


def test_quiet_holds_the_output_back_and_texts_come_as_lines(stack: Stack, client: docker.DockerClient) -> None:
    """q=1 as dockerd: a success answers only the image id; a failure first what was held back, then
    the error. Without q every text is a {"stream"} line of its own, also when sent together."""
    good = io.BytesIO(b"FROM busybox\nENV QUIET=1\nRUN echo held-back\n")
    quiet = list(client.api.build(fileobj=good, quiet=True, decode=True))
    assert len(quiet) == 1 and quiet[0]["stream"].startswith("sha256:"), quiet
    failing = io.BytesIO(b"FROM busybox\nRUN echo said-before && false\n")
    held = list(client.api.build(fileobj=failing, quiet=True, forcerm=True, decode=True))
    text = "".join(m.get("stream", "") for m in held)
    assert "Step 1/2 : FROM busybox" in text and "said-before" in text, held
    assert held[-1]["error"] == "The command '/bin/sh -c echo said-before && false' returned a non-zero code: 1"
    good.seek(0)
    loud = list(client.api.build(fileobj=good, decode=True))  # a cached rebuild: one message from the daemon
    streams = [m["stream"] for m in loud if "stream" in m]
    assert streams[:3] == ["Step 1/3 : FROM busybox\n", f" ---> {busybox_short(client)}\n", "Step 2/3 : ENV QUIET=1\n"]
    assert " ---> Using cache\n" in streams
    assert any("aux" in m for m in loud) and streams[-1].startswith("Successfully built "), loud


def busybox_short(client: docker.DockerClient) -> str:
    return client.images.get("busybox").id.removeprefix("sha256:")[:12]


def test_cache_from_limits_reuse_to_the_images_named(stack: Stack, client: docker.DockerClient,
                                                     tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": "FROM busybox\nRUN echo one > /one\nCMD [\"cat\", \"/one\"]\n"})
    assert cli(stack, "build", "-t", "source:cache", str(ctx), buildkit="0").returncode == 0
    reused = cli(stack, "build", "--cache-from", "source:cache", str(ctx), buildkit="0")
    assert reused.returncode == 0 and reused.stdout.count("Using cache") == 2
    elsewhere = cli(stack, "build", "--cache-from", "busybox", str(ctx), buildkit="0")
    assert elsewhere.returncode == 0 and "Using cache" not in elsewhere.stdout


def test_base_image_pulled_from_the_loopback_registry_and_builder_prune_cli(
        stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    from tests.support.registry import REGISTRY_BIN, run_registry

    if not REGISTRY_BIN.exists():
        pytest.skip("docker-registry not installed")
    with run_registry(tmp_path / "registry") as reg:
        base = f"{reg.host}:{reg.port}/build/base:1"
        assert cli(stack, "tag", "busybox", base).returncode == 0
        assert cli(stack, "push", base).returncode == 0, "push"
        assert cli(stack, "rmi", base).returncode == 0
        ctx = make_context(tmp_path / "ctx", {"Dockerfile": f"FROM {base}\nRUN echo pulled > /p\n"})
        first = cli(stack, "build", "-t", "from-registry", str(ctx), buildkit="0")
        assert first.returncode == 0, first.stderr
        assert f"Pulling {base}" in first.stdout
        assert client.images.get(base)
        again = cli(stack, "build", "--pull", "-t", "from-registry", str(ctx), buildkit="0")
        assert again.returncode == 0 and f"Pulling {base}" in again.stdout and "Using cache" in again.stdout
    df = cli(stack, "system", "df")
    assert "Build Cache" in df.stdout
    pruned = cli(stack, "builder", "prune", "-f")
    assert pruned.returncode == 0, pruned.stderr
    assert "Total" in pruned.stdout
    assert client.df()["BuildCache"] == []
    kept = stack.paths.run / "daemon" / "builds" / "contexts"  # the contexts kept for rebuilds go too
    deadline = time.monotonic() + 10
    while kept.exists() and list(kept.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not kept.exists() or list(kept.iterdir()) == []
    assert client.containers.run("from-registry", ["cat", "/p"], remove=True) == b"pulled\n"


def test_cache_naming_removed_images_builds_again(stack: Stack, client: docker.DockerClient,
                                                  tmp_path: Path) -> None:
    dockerfile = "FROM busybox\nENV A=1\nRUN echo a > /a\nCMD [\"cat\", \"/a\"]\n"
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": dockerfile})
    assert cli(stack, "build", "-t", "stale:1", str(ctx), buildkit="0").returncode == 0
    assert cli(stack, "rmi", "stale:1").returncode == 0  # its nameless parents go with it
    again = cli(stack, "build", "-t", "stale:1", str(ctx), buildkit="0")
    assert again.returncode == 0, again.stderr
    assert " ---> Running in " in again.stdout
    assert client.containers.run("stale:1", remove=True) == b"a\n"


def test_client_gone_mid_run_stops_and_removes_the_step_container(stack: Stack, client: docker.DockerClient,
                                                                  tmp_path: Path) -> None:
    import socket

    body = _tar([_file("Dockerfile")], {"Dockerfile": b"FROM busybox\nRUN echo started && sleep 60\n"}).getvalue()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(30)
    sock.connect(str(stack.paths.api_socket))
    sock.sendall(b"POST /v1.41/build?rm=1 HTTP/1.1\r\nHost: skiff\r\nContent-Type: application/x-tar\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    seen = b""
    while b'"started\\n"' not in seen:  # the command's output, not the Step line
        chunk = sock.recv(4096)
        assert chunk, seen
        seen += chunk
    assert client.containers.list()  # the step's container runs
    sock.close()
    deadline = time.monotonic() + 30
    # The raw list: docker-py's containers.list inspects each one listed, which may be gone meanwhile.
    while client.api.containers(all=True) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert client.api.containers(all=True) == []


HEREDOCS = """\
FROM busybox
RUN <<EOF
echo first line > /script.txt
echo second line >> /script.txt
EOF
RUN cat <<END > /fed.txt
fed through the shell
END
COPY <<CONF /etc/app.conf
key=value
CONF
COPY --from=busybox /bin/busybox /opt/busybox
CMD ["cat", "/script.txt", "/fed.txt", "/etc/app.conf"]
"""


def test_heredocs_and_copy_from_an_image(stack: Stack, client: docker.DockerClient, tmp_path: Path) -> None:
    ctx = make_context(tmp_path / "ctx", {"Dockerfile": HEREDOCS})
    result = cli(stack, "build", "-t", "heredocs", str(ctx), buildkit="0")
    assert result.returncode == 0, result.stderr + result.stdout
    assert client.containers.run("heredocs", remove=True) == \
        b"first line\nsecond line\nfed through the shell\nkey=value\n"
    assert client.containers.run("heredocs", ["/opt/busybox", "echo", "ok"], remove=True) == b"ok\n"
