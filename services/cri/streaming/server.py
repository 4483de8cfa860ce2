"""The streaming server: an aiohttp server on a loopback port whose URLs stand for one exec, attach
or port-forward each, as kubelet's CRI streaming server (pkg/kubelet/cri/streaming) hands them out.

``get_exec_url`` and the others check the request, keep it under a random one-time token and answer
``http://127.0.0.1:<port>/exec/<token>``; the first request to that URL takes the token (an unknown,
used or expired one is a 404), upgrades to SPDY and runs it through the ``StreamRuntime``."""

from __future__ import annotations

import secrets
import socket
import time
from dataclasses import dataclass

import structlog
from aiohttp import web

from services.common.errors import InvalidArgument
from services.cri.streaming import portforward, remotecommand
from services.cri.streaming.api import AttachRequest, ExecRequest, PortForwardRequest, StreamIO, StreamRuntime

log = structlog.get_logger(service="cri")

TOKEN_TTL = 60.0  # kubelet's: a URL not used within a minute is gone
MAX_TOKENS = 1000  # kubelet's cache size; the oldest go first


@dataclass(slots=True)
class _Pending:
    request: ExecRequest | AttachRequest | PortForwardRequest
    expires: float


def _check_stdio(tty: bool, stdin: bool, stdout: bool, stderr: bool) -> None:
    """kubelet's validateExecRequest / validateAttachRequest."""
    if tty and stderr:
        raise InvalidArgument("tty and stderr cannot both be true")
    if not (stdin or stdout or stderr):
        raise InvalidArgument("one of stdin, stdout, or stderr must be set")


class StreamingServer:
    def __init__(self, runtime: StreamRuntime, *, address: str = "127.0.0.1", port: int = 0,
                 token_ttl: float = TOKEN_TTL) -> None:
        self.runtime = runtime
        self.address = address
        self.port = port
        self.token_ttl = token_ttl
        self._pending: dict[str, _Pending] = {}
        self._runner: web.AppRunner | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        app = web.Application()
        for kind in ("exec", "attach", "portforward"):
            app.router.add_route("*", f"/{kind}/{{token}}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        # Bound here, not by aiohttp: the port the kernel picks (port 0) is known before the first URL.
        sock = socket.socket(socket.AF_INET6 if ":" in self.address else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.address, self.port))
        sock.set_inheritable(False)
        self.port = int(sock.getsockname()[1])
        await web.SockSite(self._runner, sock).start()
        log.info("streaming server listening", url=self.base_url)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the URLs ------------------------------------------------------------------------------
    def _keep(self, kind: str, request: ExecRequest | AttachRequest | PortForwardRequest) -> str:
        now = time.monotonic()
        for token in [t for t, p in self._pending.items() if p.expires <= now]:
            del self._pending[token]
        while len(self._pending) >= MAX_TOKENS:
            del self._pending[next(iter(self._pending))]
        token = secrets.token_urlsafe(12)
        self._pending[token] = _Pending(request, now + self.token_ttl)
        return f"{self.base_url}/{kind}/{token}"

    def get_exec_url(self, container_id: str, cmd: list[str], tty: bool, stdin: bool, stdout: bool,
                     stderr: bool) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        if not cmd:
            raise InvalidArgument("cmd is required")
        _check_stdio(tty, stdin, stdout, stderr)
        return self._keep("exec", ExecRequest(container_id, list(cmd), tty, stdin, stdout, stderr))

    def get_attach_url(self, container_id: str, tty: bool, stdin: bool, stdout: bool, stderr: bool) -> str:
        if not container_id:
            raise InvalidArgument("missing required container_id")
        _check_stdio(tty, stdin, stdout, stderr)
        return self._keep("attach", AttachRequest(container_id, tty, stdin, stdout, stderr))

    def get_port_forward_url(self, pod_id: str, ports: list[int]) -> str:
        if not pod_id:
            raise InvalidArgument("missing required pod_sandbox_id")
        return self._keep("portforward", PortForwardRequest(pod_id, list(ports)))

    # -- serving them --------------------------------------------------------------------------
    def _take(self, kind: str, token: str) -> ExecRequest | AttachRequest | PortForwardRequest | None:
        pending = self._pending.get(token)
        if pending is None or pending.expires <= time.monotonic():
            self._pending.pop(token, None)
            return None
        wanted = {"exec": ExecRequest, "attach": AttachRequest, "portforward": PortForwardRequest}[kind]
        if not isinstance(pending.request, wanted):
            return None
        del self._pending[token]
        return pending.request

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        kind = request.path.split("/")[1]
        taken = self._take(kind, request.match_info["token"])
        if taken is None:
            return web.Response(status=404, text="404 page not found\n")
        if isinstance(taken, ExecRequest):
            exec_request = taken

            async def run_exec(io: StreamIO) -> int | None:
                return await self.runtime.exec(exec_request, io)

            return await remotecommand.serve(
                request, stdin=taken.stdin, stdout=taken.stdout, stderr=taken.stderr, tty=taken.tty,
                what=f"exec {taken.cmd!r} in container {taken.container_id}", run=run_exec)
        if isinstance(taken, AttachRequest):
            attach_request = taken

            async def run_attach(io: StreamIO) -> int | None:
                await self.runtime.attach(attach_request, io)
                return None

            return await remotecommand.serve(
                request, stdin=taken.stdin, stdout=taken.stdout, stderr=taken.stderr, tty=taken.tty,
                what=f"attach to container {taken.container_id}", run=run_attach)
        return await portforward.serve(request, taken.pod_id, self.runtime)
