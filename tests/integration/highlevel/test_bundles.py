"""Tasks created from a spec: highlevel writes the bundle in the task's folder, and it goes with the task."""

from __future__ import annotations

import json

from services.common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from services.common.grpc import call
from services.gen.skiff.highlevel.v1 import (
    CreateTaskRequest,
    DeleteTaskRequest,
    KillRequest,
    LogConfig,
    StartRequest,
    StateRequest,
    TaskStatus,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel, cgroup_dirs_named, run, wait_for


async def expect(kind: type[Exception], awaitable) -> str:  # noqa: ANN001
    try:
        await call(awaitable)
    except kind as exc:
        return str(exc)
    raise AssertionError(f"expected {kind.__name__}")


def test_create_from_spec_writes_the_bundle_and_delete_takes_it(highlevel: Highlevel, bundles: Bundles,
                                                                new_id: str) -> None:
    spec = (bundles.make(new_id, ["sh", "-c", "echo from-spec"]) / "config.json").read_bytes()
    log_path = highlevel.prefix / "logs" / f"{new_id}-json.log"
    folder = highlevel.paths.highlevel_run / "t" / new_id

    async def body() -> None:
        async with highlevel.client() as tasks:
            await call(tasks.create(CreateTaskRequest(id=new_id, spec=spec, log=LogConfig(path=str(log_path)))))
            assert (folder / "config.json").read_bytes() == spec  # written as sent, once
            state = await call(tasks.state(StateRequest(id=new_id)))
            assert state.bundle == str(folder)
            # A second create of a live task neither replaces its bundle nor removes it.
            await expect(AlreadyExists, tasks.create(CreateTaskRequest(id=new_id, spec=b'{"other": 1}')))
            assert (folder / "config.json").read_bytes() == spec
            await call(tasks.start(StartRequest(id=new_id)))
            async for message in tasks.wait(WaitRequest(id=new_id), timeout=30):
                if message.exited:
                    assert message.exit.exit_code == 0
            await call(tasks.delete(DeleteTaskRequest(id=new_id)))
            assert not folder.exists()
            await expect(NotFound, tasks.state(StateRequest(id=new_id)))

    run(body())
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["log"] for e in lines] == ["from-spec\n"]
    assert highlevel.leftovers([new_id]) == []


def test_bad_specs_leave_no_bundle(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    good = bundles.make(new_id, ["true"])
    bad_args = (bundles.make("bad", ["/no/such/binary"]) / "config.json").read_bytes()

    async def body() -> None:
        async with highlevel.client() as tasks:
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="../x", spec=b"{}")))
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="nj1", spec=b"not json")))
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="brk1", spec=b"{not json")))
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(
                id="both1", spec=(good / "config.json").read_bytes(), bundle=str(good))))
            await expect(InvalidArgument, tasks.create(CreateTaskRequest(id="bad1", spec=bad_args)))

    run(body())
    assert not (highlevel.paths.highlevel_run / "x").exists()
    assert highlevel.leftovers(["nj1", "brk1", "both1", "bad1"]) == []  # nothing under t/ either


async def _kill_and_delete(tasks, task_id: str) -> None:  # noqa: ANN001
    """SIGKILL a running task, see it exit 137, delete it."""
    await call(tasks.kill(KillRequest(id=task_id, signal=9)))
    async for message in tasks.wait(WaitRequest(id=task_id), timeout=30):
        if message.exited:
            assert message.exit.exit_code == 137
    await call(tasks.delete(DeleteTaskRequest(id=task_id)))


def test_create_with_start_runs_the_process_in_one_call(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    """The daemon's launch path: Create with start set answers once the process runs, with its pid."""
    spec = (bundles.make(new_id, ["sh", "-c", "read line; echo got-$line"]) / "config.json").read_bytes()
    log_path = highlevel.prefix / "logs" / f"{new_id}-json.log"

    async def body() -> None:
        async with highlevel.client() as tasks:
            created = await call(tasks.create(CreateTaskRequest(id=new_id, spec=spec, stdin=True, start=True,
                                                                log=LogConfig(path=str(log_path)))))
            state = await call(tasks.state(StateRequest(id=new_id)))
            assert state.pid == created.pid > 0
            assert state.status == TaskStatus.RUNNING
            assert state.started_at  # the shim started it before answering the create, and said when
            # Started already: a second Start is refused as for any running task.
            await expect(FailedPrecondition, tasks.start(StartRequest(id=new_id)))
            await _kill_and_delete(tasks, new_id)

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_a_poststart_hook_still_runs_on_start(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    """A hookless start runs inside the shim (no fork); a container with a poststart hook still gets
    its start from a forked runtime, which runs the hook with the container's state on stdin."""
    seen = highlevel.prefix / f"{new_id}-poststart.json"
    config = json.loads((bundles.make(new_id, ["sleep", "30"]) / "config.json").read_text())
    config["hooks"] = {"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {seen}"]}]}
    spec = json.dumps(config).encode()

    async def body() -> None:
        async with highlevel.client() as tasks:
            created = await call(tasks.create(CreateTaskRequest(id=new_id, spec=spec, start=True)))
            state = json.loads(seen.read_text())
            assert (state["id"], state["pid"], state["status"]) == (new_id, created.pid, "running")
            await _kill_and_delete(tasks, new_id)

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_a_poststop_hook_still_runs_on_delete(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    """A stopped hookless container's delete runs inside the shim; one with a poststop hook still gets
    a forked runtime's delete, which runs the hook."""
    seen = highlevel.prefix / f"{new_id}-poststop.json"
    config = json.loads((bundles.make(new_id, ["true"]) / "config.json").read_text())
    config["hooks"] = {"poststop": [{"path": "/bin/sh", "args": ["sh", "-c", f"cat > {seen}"]}]}
    spec = json.dumps(config).encode()

    async def body() -> None:
        async with highlevel.client() as tasks:
            await call(tasks.create(CreateTaskRequest(id=new_id, spec=spec, start=True)))
            async for message in tasks.wait(WaitRequest(id=new_id), timeout=30):
                if message.exited:
                    assert message.exit.exit_code == 0
            assert not seen.exists()
            await call(tasks.delete(DeleteTaskRequest(id=new_id)))
            assert json.loads(seen.read_text())["id"] == new_id

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_release_on_exit_deletes_the_runtime_state_before_the_delete(highlevel: Highlevel, bundles: Bundles,
                                                                     new_id: str) -> None:
    """The daemon's tasks: once the init has exited and the exit is told, the shim deletes the
    runtime's state (its folder, its cgroups) by itself; the Delete after it finds that done."""
    spec = (bundles.make(new_id, ["true"]) / "config.json").read_bytes()
    state_dir = highlevel.paths.highlevel_run / "runtime-state" / new_id

    async def body() -> None:
        async with highlevel.client() as tasks:
            await call(tasks.create(CreateTaskRequest(id=new_id, spec=spec, start=True, release_on_exit=True)))
            async for message in tasks.wait(WaitRequest(id=new_id), timeout=30):
                if message.exited:
                    assert message.exit.exit_code == 0
            assert wait_for(lambda: not state_dir.exists() and not cgroup_dirs_named(new_id), 10,
                            "the runtime's state gone before any delete")
            state = await call(tasks.state(StateRequest(id=new_id)))
            assert state.status == TaskStatus.STOPPED and state.exit.exit_code == 0  # the shim still tells it
            deleted = await call(tasks.delete(DeleteTaskRequest(id=new_id)))
            assert deleted.exit.exit_code == 0

    run(body())
    assert highlevel.leftovers([new_id]) == []
