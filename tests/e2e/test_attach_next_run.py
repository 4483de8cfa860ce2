"""An attach to a container that just exited follows its next run (docker start -a after a wait).

The daemon counted an exit only after the exit's network teardown and record save, while a wait
already answered on the "exited" status: an attach made in that window took the late count for
the end of the next run and ended with nothing (test_attach_to_stopped_container failed so under
load). Each round here attaches right after the wait, on the default bridge, whose teardown makes
the window widest."""

from __future__ import annotations

import socket

import docker

from tests.e2e.stack import Stack
from tests.e2e.test_exec_attach_conformance import _read_frame


def test_attach_right_after_an_exit_gets_the_next_run(stack: Stack, client: docker.DockerClient) -> None:
    api = client.api
    box = api.create_container("busybox", ["echo", "run"])
    try:
        for round_ in range(8):
            api.start(box)
            assert api.wait(box, timeout=30)["StatusCode"] == 0
            raw = api.attach_socket(box, {"stream": 1, "stdout": 1, "stderr": 1})
            sock: socket.socket = getattr(raw, "_sock", raw)
            sock.settimeout(30)
            try:
                api.start(box)
                assert _read_frame(sock) == (1, b"run\n"), round_
                assert sock.recv(1) == b""  # the run's exit ends the stream
            finally:
                sock.close()
            api.wait(box, timeout=30)
    finally:
        api.remove_container(box, force=True)
