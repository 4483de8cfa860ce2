"""Processes run in a container beside its main one: ExecSync, and the streaming server's exec,
attach and port dial (the ``StreamRuntime`` of services/cri/streaming/api.py).

An exec is a highlevel exec of the container's task with the container's own process settings
(user, environment, capabilities, working dir) and the given argv; its output is read through
highlevel's Attach after its start (the shim keeps what it printed before for its first attacher).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import AsyncIterator
from typing import Any

from grpclib.const import Status
from grpclib.exceptions import GRPCError

from services.common.errors import FailedPrecondition, InvalidArgument, SkiffError, Unavailable
from services.common.grpc import call
from services.cri import podns
from services.cri.containers import ContainerManager
from services.cri.state import CriState
from services.cri.streaming.api import AttachRequest, ExecRequest, StreamIO
from services.gen.skiff.highlevel import v1 as hl

MAX_OUTPUT = 16 * 1024 * 1024  # what ExecSync keeps of each stream
DRAIN = 0.5  # seconds the output of an ended process may still take to arrive


class Execs:
    def __init__(self, state: CriState, containers: ContainerManager) -> None:
        self.state = state
        self.containers = containers
        self.tasks = containers.tasks

    async def _begin(self, container_id: str, cmd: list[str], tty: bool, stdin: bool) -> tuple[str, str]:
        record = self.state.container(container_id)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id} is not running")
        if not cmd:
            raise InvalidArgument("exec: a command is required")
        process: dict[str, Any] = (await self.containers.render(record))["process"]
        process.update(args=list(cmd), terminal=tty)
        exec_id = "cri-" + secrets.token_hex(8)
        await call(self.tasks.exec(hl.ExecRequest(id=record.id, exec_id=exec_id, process=json.dumps(process).encode(),
                                                  terminal=tty, stdin=stdin, stdin_once=stdin)))
        try:
            await call(self.tasks.start(hl.StartRequest(id=record.id, exec_id=exec_id)))
        except BaseException:
            await self._end(record.id, exec_id)
            raise
        return record.id, exec_id

    async def _end(self, container_id: str, exec_id: str) -> None:
        with contextlib.suppress(SkiffError):
            await call(self.tasks.delete(hl.DeleteTaskRequest(id=container_id, exec_id=exec_id, force=True)))

    async def exec_sync(self, container_id: str, cmd: list[str], timeout: int) -> tuple[bytes, bytes, int]:
        id_, exec_id = await self._begin(container_id, cmd, False, False)
        out, err = bytearray(), bytearray()
        code = -1

        async def collect() -> None:
            nonlocal code
            async for chunk in self.tasks.attach(hl.AttachRequest(id=id_, exec_id=exec_id, stdout=True, stderr=True)):
                if chunk.eof:
                    code = chunk.exit.exit_code if chunk.exit else 0
                    return
                target = out if chunk.stream == hl.Stream.STDOUT else err
                if len(target) < MAX_OUTPUT:
                    target += chunk.data[: MAX_OUTPUT - len(target)]

        try:
            await asyncio.wait_for(call(collect()), timeout if timeout > 0 else None)
        except TimeoutError:
            with contextlib.suppress(SkiffError):
                await call(self.tasks.kill(hl.KillRequest(id=id_, exec_id=exec_id, signal=9)))
            raise GRPCError(Status.DEADLINE_EXCEEDED, f"command {cmd!r} timed out after {timeout}s") from None
        finally:
            await self._end(id_, exec_id)
        return bytes(out), bytes(err), code

    # ---- the streaming server's side ---------------------------------------------------------

    async def _pump_stdin(self, id_: str, exec_id: str, io: StreamIO) -> None:
        async def chunks() -> AsyncIterator[hl.StdinChunk]:
            yield hl.StdinChunk(id=id_, exec_id=exec_id, close_on_end=True)
            while data := await io.read_stdin():
                yield hl.StdinChunk(data=data)

        with contextlib.suppress(SkiffError):
            await call(self.tasks.write_stdin(chunks()))

    async def _pump_resize(self, id_: str, exec_id: str, io: StreamIO) -> None:
        while (size := await io.next_resize()) is not None:
            with contextlib.suppress(SkiffError):
                await call(self.tasks.resize_pty(hl.ResizePtyRequest(id=id_, exec_id=exec_id, width=size.width,
                                                                     height=size.height)))

    async def _relay(self, id_: str, exec_id: str, io: StreamIO) -> int:
        """Output to the client until the process's end (its exit code) or the client's."""
        helpers = [asyncio.ensure_future(self._pump_resize(id_, exec_id, io))]
        if io.stdin:
            helpers.append(asyncio.ensure_future(self._pump_stdin(id_, exec_id, io)))
        code = -1

        async def output() -> None:
            nonlocal code
            async for chunk in self.tasks.attach(hl.AttachRequest(id=id_, exec_id=exec_id, stdout=True,
                                                                  stderr=True)):
                if chunk.eof:
                    code = chunk.exit.exit_code if chunk.exit else 0
                    return
                if chunk.stream == hl.Stream.STDERR and not io.tty:
                    await io.write_stderr(chunk.data)
                else:
                    await io.write_stdout(chunk.data)

        async def exited() -> int:
            async for answer in self.tasks.wait(hl.WaitRequest(id=id_, exec_id=exec_id)):
                if answer.exited:
                    return answer.exit.exit_code if answer.exit else 0
            return -1

        relay = asyncio.ensure_future(call(output()))
        gone = asyncio.ensure_future(io.client_gone.wait())
        # A terminal's output may not end with its process (the pty outlives it): the exit, from
        # Wait, ends the session too, after what is still buffered has had a moment to drain.
        ended = asyncio.ensure_future(call(exited()))
        try:
            await asyncio.wait([relay, gone, ended], return_when=asyncio.FIRST_COMPLETED)
            if ended.done() and not relay.done() and not ended.exception():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(relay), DRAIN)
                code = ended.result()
            if relay.done():
                relay.result()
        finally:
            for task in (relay, gone, ended, *helpers):
                task.cancel()
        return code

    async def exec(self, request: ExecRequest, io: StreamIO) -> int:
        id_, exec_id = await self._begin(request.container_id, request.cmd, request.tty, request.stdin)
        try:
            code = await self._relay(id_, exec_id, io)
            if code < 0:  # the client left first: the process does not outlive its session
                with contextlib.suppress(SkiffError):
                    await call(self.tasks.kill(hl.KillRequest(id=id_, exec_id=exec_id, signal=9)))
            return code
        finally:
            await self._end(id_, exec_id)

    async def attach(self, request: AttachRequest, io: StreamIO) -> None:
        record = self.state.container(request.container_id)
        if record.state != "running":
            raise FailedPrecondition(f"container {record.id} is not running")
        await self._relay(record.id, "", io)

    async def dial(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sandbox = self.state.sandbox(pod_id)
        try:
            if sandbox.netns:
                sock = await asyncio.to_thread(podns.connect_inside, sandbox.netns, port)
                return await asyncio.open_connection(sock=sock)
            return await asyncio.open_connection("127.0.0.1", port)
        except OSError as exc:
            raise Unavailable(f"port {port} of pod {sandbox.id}: {exc.strerror or exc}") from None
