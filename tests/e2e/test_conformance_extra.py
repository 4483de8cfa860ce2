"""What docker-py's own integration suite (scripts/conformance, issue 11) showed beyond the issue's list of
causes, guarded here without docker-py's source: a client that stops reading a logs stream half-way
(docker-py closes a stream it is done with) ends the request quietly, as with dockerd, instead of an
"Error handling request" traceback in the apiserver's log."""

from __future__ import annotations

import time

import docker

from tests.e2e.stack import Stack
from tests.support.tasks import wait_for

QUIET_WINDOW = 3.0  # s: a failed write shows within milliseconds of the client's close; this is the bound


def _assert_quiet(stack: Stack, client: docker.DockerClient) -> None:
    """Within the bound, the apiserver logs no handler error (nor a stream cut for a daemon's fault)
    and still answers."""
    log = stack.logs["services.apiserver"]
    deadline = time.monotonic() + QUIET_WINDOW
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        assert "Error handling request" not in text and "stream cut" not in text, text[-3000:]
        assert client.ping()
        time.sleep(0.1)


def test_logs_follower_gone_then_container_removed_ends_quietly(stack: Stack,
                                                                client: docker.DockerClient) -> None:
    """docker-py's test_logs_streaming_and_follow_and_cancel: a follower closes its stream (docker-py's
    CancellableStream.close shuts the socket down) while the container runs on, quiet; the test's
    teardown then removes the container by force, which ends the follow on a connection long gone."""
    container = client.containers.run("busybox", ["sh", "-c", "echo hello; sleep 600"], detach=True)
    try:
        stream = client.api.logs(container.id, stream=True, follow=True)
        assert next(stream) == b"hello\n"
        stream.close()
    finally:
        container.remove(force=True)
    _assert_quiet(stack, client)


def test_logs_follower_gone_while_output_comes_ends_quietly(stack: Stack, client: docker.DockerClient) -> None:
    """The same follower gone while the container keeps writing: the next write finds the connection
    closed. That is the client's doing, not a daemon's death: no 'stream cut' warning either."""
    container = client.containers.run("busybox", ["sh", "-c", "while true; do echo more; usleep 20000; done"],
                                      detach=True)
    try:
        stream = client.api.logs(container.id, stream=True, follow=True)
        assert next(stream) == b"more\n"
        stream.close()
        _assert_quiet(stack, client)
        container.reload()
        assert container.status == "running"
    finally:
        container.remove(force=True)


def test_archive_reader_gone_before_the_end_ends_quietly(stack: Stack, client: docker.DockerClient) -> None:
    """docker-py's get_archive hands back a stream the caller may leave unread: a client that closes a
    GET /containers/{id}/archive answer half-way ends the request quietly."""
    container = client.containers.run("busybox", ["sh", "-c", "dd if=/dev/zero of=/big bs=1M count=8; sleep 600"],
                                      detach=True)
    try:
        wait_for(lambda: container.exec_run(["stat", "-c", "%s", "/big"]).output.strip() == b"8388608",
                 timeout=30, what="the 8 MiB file")
        chunks, stat = container.get_archive("/big", chunk_size=4096)
        assert stat["size"] == 8388608
        assert next(chunks)
        chunks.close()  # a generator: closing it drops the response and its connection
        _assert_quiet(stack, client)
        assert container.get_archive("/big")[1]["size"] == 8388608
    finally:
        container.remove(force=True)
