"""A container's exit is still reported after highlevel stopped cleanly and came back.

A clean stop removes highlevel's socket file, so the daemon's exit watch, reconnecting meanwhile,
met ENOENT (FileNotFoundError) rather than ECONNREFUSED; that was not taken for "away" and the
watch ended for good. `docker kill` then waited 10 s for an exit that never came, and `rm -f` 30 s
(skiff-cri's restart test saw it: 35 s, past docker-py's timeout)."""

from __future__ import annotations

import time

import docker

from tests.e2e.stack import Stack


def test_exit_and_rm_after_a_clean_highlevel_restart(stack: Stack, client: docker.DockerClient) -> None:
    killed = client.containers.run("busybox:latest", ["sleep", "1000"], detach=True, network_mode="none")
    removed = client.containers.run("busybox:latest", ["sleep", "1000"], detach=True, network_mode="none")
    stack.stop("services.highlevel")
    stack.start("services.highlevel")
    killed.kill()
    assert killed.wait(timeout=20)["StatusCode"] == 137
    began = time.monotonic()
    removed.remove(force=True)
    took = time.monotonic() - began
    assert took < 10, f"rm -f took {took:.1f} s"
    killed.remove()
