"""highlevel restarts and dying shims: containers keep running, statuses stay true, no line lost."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from services.gen.skiff.highlevel.v1 import (
    CreateTaskRequest,
    DeleteTaskRequest,
    ExecRequest,
    KillRequest,
    LogConfig,
    StartRequest,
    StateRequest,
    TaskStatus,
    WaitRequest,
)
from tests.support.tasks import Bundles, Highlevel, pid_alive, run, wait_for

COUNTER = "i=0; while true; do echo line-$i; i=$((i+1)); usleep 2000; done"


async def wait_exit(tasks, id_: str):  # noqa: ANN001, ANN201
    async for message in tasks.wait(WaitRequest(id=id_), timeout=30):
        if message.exited:
            return message.exit
    raise AssertionError("wait ended without an exit")


def log_lines(path) -> list[str]:  # noqa: ANN001
    return [json.loads(line)["log"] for line in path.read_text().splitlines()]


def test_restart_keeps_running_and_reports_exits(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    talker, quitter = f"{new_id}a", f"{new_id}b"
    talker_bundle = bundles.make(talker, ["sh", "-c", COUNTER])
    quitter_bundle = bundles.make(quitter, ["sh", "-c", "read line; exit 7"])
    talker_log = highlevel.prefix / "logs" / f"{talker}.log"

    async def before() -> dict[str, int]:
        async with highlevel.client() as tasks:
            await tasks.create(CreateTaskRequest(id=talker, bundle=str(talker_bundle),
                                                 log=LogConfig(path=str(talker_log))))
            await tasks.create(CreateTaskRequest(id=quitter, bundle=str(quitter_bundle), stdin=True))
            await tasks.start(StartRequest(id=talker))
            await tasks.start(StartRequest(id=quitter))
            states = {i: await tasks.state(StateRequest(id=i)) for i in (talker, quitter)}
            return {i: s.pid for i, s in states.items()} | {f"{i}-shim": s.shim_pid for i, s in states.items()}

    pids = run(before())
    wait_for(lambda: talker_log.exists() and len(log_lines(talker_log)) > 20, 10, "talker output")
    highlevel.kill9()
    # While highlevel is down: the quitter ends (its stdin closed through its shim's own socket).
    from tests.integration.shim.test_shim import shim_request

    shim_socket = json.loads((highlevel.paths.highlevel_run / "t" / quitter / "bootstrap.json").read_text())["socket"]
    shim_request(shim_socket, {"op": "close_stdin"})
    wait_for(lambda: not pid_alive(pids[quitter]), 10, "quitter exit")
    lines_while_down = len(log_lines(talker_log))
    wait_for(lambda: len(log_lines(talker_log)) > lines_while_down + 20, 10, "talker output while down")
    highlevel.start()

    async def after() -> None:
        async with highlevel.client() as tasks:
            state = await tasks.state(StateRequest(id=talker))
            assert state.status == TaskStatus.RUNNING and state.pid == pids[talker]
            assert state.shim_pid == pids[f"{talker}-shim"]
            gone = await tasks.state(StateRequest(id=quitter))
            assert gone.status == TaskStatus.STOPPED and gone.exit.exit_code == 7
            assert (await wait_exit(tasks, quitter)).exit_code == 7
            await tasks.kill(KillRequest(id=talker, signal=signal.SIGKILL))
            assert (await wait_exit(tasks, talker)).exit_code == 137
            for id_ in (talker, quitter):
                await tasks.delete(DeleteTaskRequest(id=id_))

    run(after())
    lines = log_lines(talker_log)
    numbers = [int(line.strip().split("-")[1]) for line in lines if line.endswith("\n")]
    assert numbers == list(range(len(numbers))), "a log line was lost or reordered"
    assert len(numbers) > lines_while_down
    assert highlevel.leftovers([talker, quitter]) == []


def test_shim_killed_is_noticed(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sleep", "1000"])

    async def body() -> None:
        async with highlevel.client() as tasks:
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle)))
            await tasks.start(StartRequest(id=new_id))
            state = await tasks.state(StateRequest(id=new_id))
            waiter = asyncio.create_task(wait_exit(tasks, new_id))
            os.kill(state.shim_pid, signal.SIGKILL)
            exit_ = await asyncio.wait_for(waiter, 20)
            assert exit_.exit_code == 137
            after = await tasks.state(StateRequest(id=new_id))
            assert after.status == TaskStatus.STOPPED and after.exit.exit_code == 137
            wait_for(lambda: not pid_alive(state.pid), 10, "container gone with its shim")
            await tasks.delete(DeleteTaskRequest(id=new_id))

    run(body())
    assert highlevel.leftovers([new_id]) == []


def test_shim_killed_while_highlevel_down(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sleep", "1000"])

    async def start() -> tuple[int, int]:
        async with highlevel.client() as tasks:
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle)))
            await tasks.start(StartRequest(id=new_id))
            state = await tasks.state(StateRequest(id=new_id))
            return state.pid, state.shim_pid

    pid, shim_pid = run(start())
    highlevel.kill9()
    os.kill(shim_pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(shim_pid), 10, "shim death")
    highlevel.start()

    async def after() -> None:
        async with highlevel.client() as tasks:
            state = await tasks.state(StateRequest(id=new_id))
            assert state.status == TaskStatus.STOPPED and state.exit.exit_code == 137
            assert (await wait_exit(tasks, new_id)).exit_code == 137
            await tasks.delete(DeleteTaskRequest(id=new_id))

    run(after())
    wait_for(lambda: not pid_alive(pid), 10, "container gone")
    assert highlevel.leftovers([new_id]) == []


def test_execs_survive_a_highlevel_restart(highlevel: Highlevel, bundles: Bundles, new_id: str) -> None:
    bundle = bundles.make(new_id, ["sleep", "1000"])

    def process(*args: str) -> bytes:
        return json.dumps({"args": list(args), "cwd": "/", "env": ["PATH=/bin"]}).encode()

    async def before() -> None:
        async with highlevel.client() as tasks:
            await tasks.create(CreateTaskRequest(id=new_id, bundle=str(bundle)))
            await tasks.start(StartRequest(id=new_id))
            await tasks.exec(ExecRequest(id=new_id, exec_id="done", process=process("sh", "-c", "exit 3")))
            await tasks.start(StartRequest(id=new_id, exec_id="done"))
            assert (await wait_exit_of(tasks, new_id, "done")).exit_code == 3
            await tasks.exec(ExecRequest(id=new_id, exec_id="long", process=process("sleep", "1000")))
            await tasks.start(StartRequest(id=new_id, exec_id="long"))

    run(before())
    highlevel.kill9()
    highlevel.start()

    async def after() -> None:
        async with highlevel.client() as tasks:
            done = await tasks.state(StateRequest(id=new_id, exec_id="done"))
            assert done.status == TaskStatus.STOPPED and done.exit.exit_code == 3
            long = await tasks.state(StateRequest(id=new_id, exec_id="long"))
            assert long.status == TaskStatus.RUNNING and pid_alive(long.pid)
            await tasks.kill(KillRequest(id=new_id, exec_id="long", signal=signal.SIGKILL))
            assert (await wait_exit_of(tasks, new_id, "long")).exit_code == 137
            await tasks.kill(KillRequest(id=new_id, signal=signal.SIGKILL, all=True))
            await wait_exit(tasks, new_id)
            await tasks.delete(DeleteTaskRequest(id=new_id))

    run(after())
    assert highlevel.leftovers([new_id]) == []


async def wait_exit_of(tasks, id_: str, exec_id: str):  # noqa: ANN001, ANN201
    async for message in tasks.wait(WaitRequest(id=id_, exec_id=exec_id), timeout=30):
        if message.exited:
            return message.exit
    raise AssertionError("wait ended without an exit")
