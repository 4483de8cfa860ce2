"""A service SIGKILLed under load (what ``skiff soak`` found): every call in flight is answered, never
left hanging; what a cut operation made is finished or cleaned up; nothing half-written stays."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import aiohttp
import docker
import pytest

from tests.e2e.stack import Stack
from tests.support.tasks import pid_alive, wait_for

# More calls in flight than one HTTP/2 connection's streams (h2's 100): the rest queue in grpclib.
IN_FLIGHT = 130
ANSWER_WITHIN = 20.0
# The container exits 7 once this file appears in its root filesystem.
WAITER = "while [ ! -e /go ]; do sleep 0.05; done; echo bye; exit 7"


def _kill(stack: Stack, module: str) -> None:
    proc = stack.procs[module]
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


async def _waits_through_a_daemon_kill(stack: Stack, cid: str) -> list[str]:
    """IN_FLIGHT waits on a container that never starts; the daemon killed once most are registered.
    Each outcome: ``http <status> <body>``, or what went wrong with it."""
    registered = 0
    url = f"http://skiff/containers/{cid}/wait?condition=next-exit"

    async def one(session: aiohttp.ClientSession) -> str:
        nonlocal registered
        try:
            async with session.post(url) as response:
                registered += 1
                body = b""
                try:
                    async for chunk in response.content.iter_any():
                        body += chunk
                except aiohttp.ClientPayloadError:
                    # The stream cut short: clean when nothing came before the end (no error text inside).
                    return "cut" if not body and response.status == 200 else f"garbled {body!r}"
                return f"http {response.status} {body.decode(errors='replace').strip()}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            return f"broken {type(exc).__name__}: {exc}"

    connector = aiohttp.UnixConnector(path=str(stack.paths.api_socket), limit=0)
    async with aiohttp.ClientSession(connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN + 60)) as session:
        calls = [asyncio.ensure_future(one(session)) for _ in range(IN_FLIGHT)]
        deadline = asyncio.get_running_loop().time() + 30
        while registered < 90 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert registered >= 90, f"only {registered} waits registered"
        await asyncio.to_thread(_kill, stack, "services.daemon")
        done, pending = await asyncio.wait(calls, timeout=ANSWER_WITHIN)
        for call in pending:
            call.cancel()
        return [c.result() for c in done] + ["hang"] * len(pending)


def test_calls_in_flight_when_the_daemon_dies_are_answered(stack: Stack, client: docker.DockerClient) -> None:
    """The soak's hang: waits in flight in the apiserver when the daemon was SIGKILLed were never
    answered: those registered got an HTTP error written into their started stream (garbled, and the
    client waited for the rest), those parked in grpclib for want of a free stream waited for ever
    (grpclib issue 216). Each ends now: an error status with Docker's JSON, or its started stream
    closed at once; and the apiserver reaches the restarted daemon again."""
    cid = client.api.create_container("busybox", ["true"])["Id"]
    try:
        outcomes = asyncio.run(_waits_through_a_daemon_kill(stack, cid))
    finally:
        stack.start("services.daemon")
    wrong = [o for o in outcomes if not _clean_answer(o)]
    assert not wrong, f"{len(wrong)} of {len(outcomes)}: {sorted(set(wrong))[:5]}"
    client.api.remove_container(cid, force=True)
    assert client.api.containers(all=True) == []


def _clean_answer(outcome: str) -> bool:
    """An error status with Docker's JSON; or, the 200 already out, the stream ended at once (as when
    dockerd dies under a wait: the client retries or reports it)."""
    if outcome == "cut":
        return True
    if not outcome.startswith("http "):
        return False
    status, _, body = outcome[5:].partition(" ")
    try:
        answer = json.loads(body)
    except ValueError:
        return False
    return status.startswith("5") and bool(answer.get("message"))


def test_a_wait_rides_out_a_highlevel_kill(stack: Stack, client: docker.DockerClient) -> None:
    """The daemon's watch on highlevel's Tasks.Wait notices highlevel's death, waits for its return
    and keeps the exit code of a container that exited meanwhile: the client's wait gets it."""
    box = client.containers.run("busybox", ["sh", "-c", WAITER], detach=True)
    box.reload()
    pid = box.attrs["State"]["Pid"]
    api = docker.APIClient(base_url=stack.base_url, timeout=60)
    try:
        with ThreadedWait(api, box.id) as waiting:
            _kill(stack, "services.highlevel")
            try:
                (Path(f"/proc/{pid}/root") / "go").touch()
                wait_for(lambda: not pid_alive(pid), 15, "the exit while highlevel is down")
            finally:
                stack.start("services.highlevel")
            assert waiting.result(30) == {"StatusCode": 7, "Error": None}
        assert box.logs() == b"bye\n"
        box.remove()
    finally:
        api.close()


class ThreadedWait:
    """``docker wait`` in a thread, registered before the block's body runs."""

    def __init__(self, api: docker.APIClient, cid: str) -> None:
        import concurrent.futures

        self.pool = concurrent.futures.ThreadPoolExecutor(1)
        self.api, self.cid = api, cid

    def __enter__(self) -> ThreadedWait:
        self.future = self.pool.submit(self.api.wait, self.cid)
        # Registered once the container's wait shows in the daemon; no API says so: a bounded poll
        # of the thread having sent it is the best there is, and a late one still sees the exit.
        wait_for(lambda: self.future.running() or self.future.done(), 10, "the wait sent")
        return self

    def result(self, timeout: float) -> object:
        return self.future.result(timeout)

    def __exit__(self, *exc: object) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


def test_a_start_whose_apiserver_dies_finishes(stack: Stack, client: docker.DockerClient) -> None:
    """The soak's orphan shim: a start in flight when the apiserver was SIGKILLed was cancelled in the
    daemon, which cancelled highlevel's task create after the shim was forked. The start finishes
    now: the container runs, highlevel knows its shim, and a removal leaves nothing."""
    ids = [client.api.create_container("busybox", ["sleep", "300"])["Id"] for _ in range(6)]
    api = docker.APIClient(base_url=stack.base_url, timeout=60)
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(len(ids)) as pool:
        starts = [pool.submit(api.start, cid) for cid in ids]
        # Killed while the starts are under way (some may be done already, some not begun).
        wait_for(lambda: any(f.running() for f in starts), 10, "starts sent")
        wait_for(lambda: stack.shim_pids(), 20, "a shim forked")
        _kill(stack, "services.apiserver")
        concurrent.futures.wait(starts, 30)
    api.close()
    stack.start("services.apiserver")
    restored = docker.DockerClient(base_url=stack.base_url, timeout=30)
    try:
        def settled() -> bool:
            states = {c["Id"]: c["State"] for c in restored.api.containers(all=True)}
            # Every shim belongs to a running container: none forked and forgotten.
            return sum(s == "running" for s in states.values()) == len(stack.shim_pids())
        wait_for(settled, 30, "every shim a running container's")
        for cid in ids:
            restored.api.remove_container(cid, force=True)
        wait_for(lambda: not stack.shim_pids(), 30, "no shim left")
    finally:
        restored.close()


def test_temporaries_of_a_killed_writer_are_swept(stack: Stack, client: docker.DockerClient) -> None:
    """A service SIGKILLed inside atomic_write leaves ``.<name>.<pid>.tmp``: its successor's first
    write into that folder removes the temporaries of writers no longer alive."""
    cid = client.api.create_container("busybox", ["true"])["Id"]
    folder = stack.paths.daemon_lib / "containers" / cid
    _kill(stack, "services.daemon")
    dead = 4194303  # above any pid in use here (pid_max's ceiling): a dead writer's
    while Path(f"/proc/{dead}").exists():
        dead -= 1
    left = folder / f".record.pb.{dead}.tmp"
    left.write_bytes(b"half")
    stack.start("services.daemon")
    client.api.start(cid)  # the record is saved again
    client.api.wait(cid, timeout=30)
    assert not left.exists(), os.listdir(folder)
    client.api.remove_container(cid)


@pytest.mark.parametrize("module", ["services.daemon", "services.highlevel"])
def test_an_rm_container_that_exits_while_a_service_is_down_goes(stack: Stack, client: docker.DockerClient,
                                                                module: str) -> None:
    """``--rm`` honoured across a kill: a container that exited while the daemon (or highlevel) was
    down is removed once it is back (its removal failed on the refused connection and stayed undone)."""
    box = client.containers.run("busybox", ["sh", "-c", WAITER], detach=True, auto_remove=True)
    box.reload()
    pid = box.attrs["State"]["Pid"]
    _kill(stack, module)
    try:
        (Path(f"/proc/{pid}/root") / "go").touch()
        wait_for(lambda: not pid_alive(pid), 15, "the exit while the service is down")
    finally:
        stack.start(module)
    wait_for(lambda: client.api.containers(all=True) == [], 30, "the --rm container removed")
