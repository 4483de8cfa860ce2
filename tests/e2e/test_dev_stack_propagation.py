"""Bind propagation as dockerd's, which the dev stack (docker-compose.dev.yml on Skiff) needs: its
daemon's container bind-mounts each container's network namespace under /run/skiff/netns, a
`:rshared` bind, and its highlevel's container must see that mount. A mount made inside a container
below an `rshared` bind reaches the host; below a default (rprivate) bind it does not."""

from __future__ import annotations

import contextlib
import ctypes
import os
import time
from pathlib import Path

import docker

MS_BIND, MS_SHARED, MNT_DETACH = 4096, 1 << 20, 2
_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, flags: int) -> None:
    if _libc.mount(source.encode(), target.encode(), None, ctypes.c_ulong(flags), None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {target}: {os.strerror(err)}")


def _mount_points() -> set[str]:
    return {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}


def test_mounts_below_an_rshared_bind_reach_the_host(client: docker.DockerClient, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    # The source must sit on a shared mount for anything to propagate (dockerd asks the same).
    _mount(str(shared), str(shared), MS_BIND)
    made = [str(shared)]
    try:
        _mount("none", str(shared), MS_SHARED)
        script = "mkdir -p /x/{sub} && mount -t tmpfs none /x/{sub} && echo hi > /x/{sub}/f && sleep 60"
        sharing = client.containers.run("busybox", ["sh", "-c", script.format(sub="m")], privileged=True,
                                        detach=True, volumes={str(shared): {"bind": "/x", "mode": "rshared"}})
        made += [str(shared / "m"), str(shared / "n")]  # stays on the host after the container (as with dockerd)
        deadline = time.monotonic() + 30
        while not (shared / "m" / "f").exists():
            assert time.monotonic() < deadline, sharing.logs()
            time.sleep(0.05)
        assert str(shared / "m") in _mount_points()
        assert [m["Propagation"] for m in client.api.inspect_container(sharing.id)["Mounts"]] == ["rshared"]

        # The default (rprivate): the same mount, made and written inside, never shows on the host (a
        # propagated copy would outlive the container there).
        once = "mkdir -p /x/n && mount -t tmpfs none /x/n && echo hi > /x/n/f && cat /x/n/f"
        private = client.containers.run("busybox", ["sh", "-c", once], privileged=True, detach=True,
                                        volumes={str(shared): {"bind": "/x", "mode": "rw"}})
        assert private.wait(timeout=30)["StatusCode"] == 0
        assert private.logs() == b"hi\n"
        assert str(shared / "n") not in _mount_points() and not (shared / "n" / "f").exists()
        assert [m["Propagation"] for m in client.api.inspect_container(private.id)["Mounts"]] == ["rprivate"]
        for container in (sharing, private):
            container.remove(force=True)
    finally:
        for point in reversed(made):
            if point in _mount_points():
                with contextlib.suppress(OSError):
                    _libc.umount2(point.encode(), MNT_DETACH)
