"""The CRI streaming server: ``Exec``, ``Attach`` and ``PortForward`` answer a URL, and the client
(kubelet's proxy, crictl, critest) speaks kubelet's streaming protocols to it over SPDY/3.1:
remotecommand ``v4.channel.k8s.io`` (and v3, v2, ``channel.k8s.io``) for exec and attach,
``portforward.k8s.io`` for port-forward. Websocket clients are not served (400).

How the CRI runtime uses it::

    from services.cri.streaming import StreamingServer

    streaming = StreamingServer(runtime)          # runtime: a StreamRuntime (below)
    await streaming.start()                       # binds 127.0.0.1:<a free port>
    url = streaming.get_exec_url(container_id, cmd, tty, stdin, stdout, stderr)   # ExecResponse.url
    url = streaming.get_attach_url(container_id, tty, stdin, stdout, stderr)      # AttachResponse.url
    url = streaming.get_port_forward_url(pod_id, ports)                           # PortForwardResponse.url
    await streaming.close()

The ``get_*_url`` calls raise InvalidArgument as kubelet's checks do (tty with stderr; none of
stdin/stdout/stderr; no container or pod id); the runtime checks beforehand that the container
exists and runs (containerd answers NotFound/FailedPrecondition from Exec itself). Each URL works
once, within a minute.

The runtime implements ``StreamRuntime`` (services/cri/streaming/api.py):
- ``async exec(request: ExecRequest, io: StreamIO) -> int``: run ``request.cmd`` in the container
  with ``io`` as its stdio (a pty when ``io.tty``, resized from ``io.next_resize()``); the exit code.
- ``async attach(request: AttachRequest, io: StreamIO) -> None``: wire the main process's stdio to
  ``io`` until it exits or ``io.client_gone`` is set.
- ``async dial(pod_id, port) -> (StreamReader, StreamWriter)``: a TCP connection to the port in the
  pod's network namespace.
A SkiffError raised by them reaches the client as the failure's message.

``StreamIO``: ``read_stdin()`` (b"" at the end), ``write_stdout(data)``, ``write_stderr(data)``,
``next_resize() -> TerminalSize | None``, ``client_gone`` (an Event), and the flags ``stdin``,
``stdout``, ``stderr``, ``tty``.
"""

from services.cri.streaming.api import (
    AttachRequest,
    ExecRequest,
    PortForwardRequest,
    StreamIO,
    StreamRuntime,
    TerminalSize,
)
from services.cri.streaming.server import StreamingServer

__all__ = [
    "AttachRequest",
    "ExecRequest",
    "PortForwardRequest",
    "StreamIO",
    "StreamRuntime",
    "StreamingServer",
    "TerminalSize",
]
