"""What the streaming server and the CRI runtime say to each other: the requests a URL stands for,
the process's stdio as the server hands it over (``StreamIO``), and the ``StreamRuntime`` protocol
the runtime implements (run an exec, attach, dial a port in a pod)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TerminalSize:
    width: int
    height: int


@dataclass(frozen=True, slots=True)
class ExecRequest:
    container_id: str
    cmd: list[str]
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class AttachRequest:
    container_id: str
    tty: bool
    stdin: bool
    stdout: bool
    stderr: bool


@dataclass(frozen=True, slots=True)
class PortForwardRequest:
    pod_id: str
    ports: list[int] = field(default_factory=list)


class StreamIO(Protocol):
    """One exec's or attach's stdio, as the client asked for it (``stdin``, ``stdout``, ``stderr``,
    ``tty``: the flags of the CRI request). With a tty there is no stderr: its output is stdout."""

    stdin: bool
    stdout: bool
    stderr: bool
    tty: bool

    async def read_stdin(self) -> bytes:
        """The client's next input; b"" once it closed its stdin (or left), and always without stdin."""

    async def write_stdout(self, data: bytes) -> None:
        """To the client's stdout (dropped when it asked for none, or left)."""

    async def write_stderr(self, data: bytes) -> None:
        """To the client's stderr (dropped when it asked for none, or left)."""

    async def next_resize(self) -> TerminalSize | None:
        """The client's next terminal size (the first comes as soon as it knows its own); None when
        no more will come (no tty, or the client left)."""

    @property
    def client_gone(self) -> asyncio.Event:
        """Set when the client's connection ended: stop feeding it, end an attach."""


class StreamRuntime(Protocol):
    """What the CRI runtime does for the streaming server (services/cri implements it)."""

    async def exec(self, request: ExecRequest, io: StreamIO) -> int:
        """Runs ``request.cmd`` in the running container, wired to ``io`` (a pty when ``io.tty``:
        resize it from ``io.next_resize()``); returns its exit code once it ended and its output
        was written. Raises a SkiffError (NotFound, FailedPrecondition: not running) when it cannot
        start: the client gets the message."""

    async def attach(self, request: AttachRequest, io: StreamIO) -> None:
        """Wires the container's main process to ``io`` until it exits or ``io.client_gone`` is set
        (the container goes on running then). Raises a SkiffError when it cannot attach."""

    async def dial(self, pod_id: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A TCP connection to ``localhost:port`` inside the pod's network namespace (a socket made
        there, e.g. with setns in a thread, then ``asyncio.open_connection(sock=...)``). Raises a
        SkiffError (NotFound: no such pod; Unavailable: refused) when it cannot."""
