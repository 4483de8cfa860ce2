"""skiff-cri's streaming server driven as kubelet's clients drive it, without crictl: a small SPDY/3.1
client of the test's own (below) takes the URLs RuntimeService.Exec and PortForward hand out, upgrades
(``Upgrade: SPDY/3.1``, ``X-Stream-Protocol-Version``) and opens its streams as client-go does:
remotecommand ``v4.channel.k8s.io`` (error/stdin/stdout/stderr/resize streams by ``streamType``, the
result a JSON metav1.Status on the error stream) and ``portforward.k8s.io`` (an error and a data
stream per connection, paired by ``requestID``). One-time tokens: a used or unknown one is a 404.

The client's framing is written from the SPDY/3.1 draft, apart from the server's: only the header
compression dictionary (a table of the spec) is shared with services/cri/streaming/spdy.py."""

from __future__ import annotations

import asyncio
import json
import struct
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from services.cri.streaming.spdy import DICTIONARY
from services.gen.runtime import v1 as cri
from tests.e2e.cri_stack import CriClient, CriStack, wait_state
from tests.e2e.test_cri_runtime import container_config, cri_stack, pod_config, rt  # noqa: F401 - the fixtures

STEP = 30.0  # seconds any one exchange with the server may take
WEB_PORT = 8080
WEB = f"mkdir -p /www && echo streamed-web > /www/index.html && exec httpd -f -p {WEB_PORT} -h /www"

_SYN_STREAM, _SYN_REPLY, _RST_STREAM, _PING, _GOAWAY = 1, 2, 3, 6, 7
_FIN = 0x01


# ---- a minimal SPDY/3.1 client (the spec's draft 3.1, as spdystream speaks it) -----------------

def _header_block(headers: dict[str, str]) -> bytes:
    """SPDY/3's name/value block: 32-bit count, then 32-bit-length-prefixed names and values."""
    out = bytearray(struct.pack(">I", len(headers)))
    for name, value in headers.items():
        for text in (name.lower().encode(), value.encode()):
            out += struct.pack(">I", len(text)) + text
    return bytes(out)


def _parse_block(block: bytes) -> dict[str, str]:
    (count,) = struct.unpack_from(">I", block, 0)
    pos, out = 4, {}
    for _ in range(count):
        pair = []
        for _ in range(2):
            (n,) = struct.unpack_from(">I", block, pos)
            pair.append(block[pos + 4:pos + 4 + n].decode())
            pos += 4 + n
        out[pair[0]] = pair[1]
    assert pos == len(block), "trailing bytes in a header block"
    return out


@dataclass
class _ClientStream:
    id: int
    data: bytearray = field(default_factory=bytearray)
    replied: asyncio.Event = field(default_factory=asyncio.Event)
    ended: asyncio.Event = field(default_factory=asyncio.Event)  # the server's FIN (or reset)
    reset: bool = False


class SpdyClient:
    """One session: the upgrade, client-opened streams (odd ids), DATA both ways, FIN, GOAWAY."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, protocol: str) -> None:
        self.reader, self.writer, self.protocol = reader, writer, protocol
        self.streams: dict[int, _ClientStream] = {}
        self.goaway = asyncio.Event()
        self._next_id = 1
        self._deflate = zlib.compressobj(zdict=DICTIONARY)
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._reader_task = asyncio.ensure_future(self._read_frames())

    @staticmethod
    async def request(url: str, protocols: list[str]) -> tuple[int, dict[str, str], bytes,
                                                               asyncio.StreamReader, asyncio.StreamWriter]:
        """The HTTP/1.1 upgrade request: the status, headers (lowercased), any body of a refusal."""
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None, url
        reader, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port), STEP)
        lines = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: Upgrade",
                 "Upgrade: SPDY/3.1", "Content-Length: 0",
                 *(f"X-Stream-Protocol-Version: {p}" for p in protocols)]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), STEP)
        status_line, *header_lines = head.decode().split("\r\n")
        status = int(status_line.split()[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines if h)}
        body = b""
        if status != 101 and "content-length" in headers:
            body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), STEP)
        return status, headers, body, reader, writer

    @classmethod
    async def connect(cls, url: str, protocols: list[str]) -> SpdyClient:
        status, headers, body, reader, writer = await cls.request(url, protocols)
        if status != 101:
            writer.close()
            raise AssertionError(f"upgrade refused: {status} {body!r}")
        assert headers.get("upgrade", "").lower() == "spdy/3.1", headers
        return cls(reader, writer, headers.get("x-stream-protocol-version", ""))

    async def _read_frames(self) -> None:
        try:
            while True:
                head = await self.reader.readexactly(8)
                length = int.from_bytes(head[5:8], "big")
                flags = head[4]
                payload = await self.reader.readexactly(length)
                if not head[0] & 0x80:  # DATA
                    stream = self.streams[int.from_bytes(head[0:4], "big") & 0x7FFFFFFF]
                    assert not stream.ended.is_set(), f"DATA on stream {stream.id} after its FIN"
                    stream.data += payload
                    if flags & _FIN:
                        stream.ended.set()
                    continue
                version, kind = struct.unpack(">HH", head[0:4])
                assert version == 0x8000 | 3, f"control frame of version {version & 0x7FFF}"
                if kind == _SYN_REPLY:
                    stream = self.streams[int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF]
                    _parse_block(self._inflate.decompress(payload[4:]))  # the context kept in step
                    stream.replied.set()
                    if flags & _FIN:
                        stream.ended.set()
                elif kind == _RST_STREAM:
                    stream = self.streams[int.from_bytes(payload[0:4], "big") & 0x7FFFFFFF]
                    stream.reset = True
                    stream.ended.set()
                elif kind == _GOAWAY:
                    self.goaway.set()
                elif kind == _SYN_STREAM:
                    raise AssertionError("the server opened a stream")
                # PING (ours only, we send none), SETTINGS, WINDOW_UPDATE: nothing to do
        except (asyncio.IncompleteReadError, ConnectionError):
            self.goaway.set()
            for stream in self.streams.values():
                stream.ended.set()

    def open(self, headers: dict[str, str]) -> int:
        """SYN_STREAM: stream id, associated id 0, priority 0 and slot 0, the compressed header block."""
        stream_id, self._next_id = self._next_id, self._next_id + 2
        self.streams[stream_id] = _ClientStream(stream_id)
        block = self._deflate.compress(_header_block(headers)) + self._deflate.flush(zlib.Z_SYNC_FLUSH)
        payload = struct.pack(">IIH", stream_id, 0, 0) + block
        self.writer.write(struct.pack(">HHI", 0x8000 | 3, _SYN_STREAM, len(payload)) + payload)
        return stream_id

    def send(self, stream_id: int, data: bytes, *, fin: bool = False) -> None:
        self.writer.write(struct.pack(">II", stream_id, ((_FIN if fin else 0) << 24) | len(data)) + data)

    async def read_to_end(self, stream_id: int, within: float = STEP) -> bytes:
        stream = self.streams[stream_id]
        await asyncio.wait_for(stream.ended.wait(), within)
        return bytes(stream.data)

    async def wait_for_data(self, stream_id: int, wanted: bytes, within: float = STEP) -> None:
        deadline = time.monotonic() + within
        stream = self.streams[stream_id]
        while wanted not in stream.data:
            assert not stream.ended.is_set(), f"stream ended without {wanted!r}: {bytes(stream.data)!r}"
            assert time.monotonic() < deadline, f"no {wanted!r} within {within} s: {bytes(stream.data)!r}"
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        self.writer.close()
        try:
            await asyncio.wait_for(self.writer.wait_closed(), 5)
        except (ConnectionError, TimeoutError):
            pass
        self._reader_task.cancel()
        try:
            await self._reader_task
        except asyncio.CancelledError:
            pass


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 2 * STEP + 30))


def decode_status(raw: bytes) -> dict[str, Any]:
    status = json.loads(raw)
    assert isinstance(status, dict), raw
    return status


# ---- the cases ---------------------------------------------------------------------------------

async def exec_with_stdin(url: str) -> tuple[bytes, bytes, dict[str, Any], bool]:
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io", "v3.channel.k8s.io"])
    try:
        assert client.protocol == "v4.channel.k8s.io"
        # client-go's order: error first, then the standard streams.
        error = client.open({"streamType": "error"})
        stdin = client.open({"streamType": "stdin"})
        stdout = client.open({"streamType": "stdout"})
        stderr = client.open({"streamType": "stderr"})
        for sid in (error, stdin, stdout, stderr):
            await asyncio.wait_for(client.streams[sid].replied.wait(), STEP)
        client.send(stdin, b"hi\n")
        client.send(stdin, b"", fin=True)
        out = await client.read_to_end(stdout)
        err = await client.read_to_end(stderr)
        status = decode_status(await client.read_to_end(error))
        await asyncio.wait_for(client.goaway.wait(), STEP)  # the server ends the session
        return out, err, status, client.streams[error].reset
    finally:
        await client.close()


async def exec_on_tty(url: str) -> tuple[bytes, dict[str, Any]]:
    client = await SpdyClient.connect(url, ["v4.channel.k8s.io"])
    try:
        error = client.open({"streamType": "error"})
        stdin = client.open({"streamType": "stdin"})
        stdout = client.open({"streamType": "stdout"})
        resize = client.open({"streamType": "resize"})
        client.send(resize, json.dumps({"Width": 100, "Height": 33}).encode())
        await client.wait_for_data(stdout, b"#")  # the shell's prompt
        # The size reaches the terminal beside the typed lines, not in order with them: asked again
        # until the shell reports it.
        deadline = time.monotonic() + STEP
        while b"33 100" not in client.streams[stdout].data:
            assert time.monotonic() < deadline, bytes(client.streams[stdout].data)
            client.send(stdin, b"stty size\n")
            try:
                await client.wait_for_data(stdout, b"33 100", within=1)
            except AssertionError:
                continue
        client.send(stdin, b"tty; echo tty-$((40+2)); exit\n")
        out = await client.read_to_end(stdout)
        status = decode_status(await client.read_to_end(error))
        return out, status
    finally:
        await client.close()


async def port_forward(url: str, connections: int) -> list[tuple[bytes, bytes]]:
    client = await SpdyClient.connect(url, ["portforward.k8s.io"])
    try:
        assert client.protocol == "portforward.k8s.io"
        pairs = []
        for request_id in range(connections):
            # client-go: the error stream first, half-closed at once; then the data stream.
            ids = {"port": str(WEB_PORT), "requestID": str(request_id)}
            error = client.open({"streamType": "error", **ids})
            client.send(error, b"", fin=True)
            data = client.open({"streamType": "data", **ids})
            # All of the request, then a half-close (the error stream's end waits for both ways to end).
            client.send(data, b"GET /index.html HTTP/1.0\r\n\r\n", fin=True)
            pairs.append((error, data))
        answers = []
        for error, data in pairs:
            answers.append((await client.read_to_end(data), await client.read_to_end(error)))
        return answers
    finally:
        await client.close()


async def port_forward_to(url: str, port: int) -> list[tuple[bytes, bytes]]:
    client = await SpdyClient.connect(url, ["portforward.k8s.io"])
    try:
        ids = {"port": str(port), "requestID": "0"}
        error = client.open({"streamType": "error", **ids})
        client.send(error, b"", fin=True)
        data = client.open({"streamType": "data", **ids})
        return [(await client.read_to_end(data), await client.read_to_end(error))]
    finally:
        await client.close()


async def answer_of(url: str, protocols: list[str]) -> tuple[int, bytes]:
    status, _, body, _, writer = await SpdyClient.request(url, protocols)
    writer.close()
    return status, body


def test_streaming_server_without_crictl(cri_stack: CriStack, rt: CriClient, tmp_path: Path) -> None:  # noqa: F811
    config = pod_config("stream", cri_stack, tmp_path / "logs")
    pod = rt.rt("run_pod_sandbox", cri.RunPodSandboxRequest(config=config)).pod_sandbox_id
    cid = rt.rt("create_container", cri.CreateContainerRequest(
        pod_sandbox_id=pod, config=container_config("web", WEB), sandbox_config=config)).container_id
    rt.rt("start_container", cri.StartContainerRequest(container_id=cid))
    wait_state(rt, cid, cri.ContainerState.CONTAINER_RUNNING)

    # (1) exec with stdin: the output streams apart, the exit code in a v4 Status as client-go reads it
    script = "read x; echo got:$x; echo err >&2; exit 3"
    used = rt.rt("exec", cri.ExecRequest(container_id=cid, cmd=["sh", "-c", script], stdin=True, stdout=True,
                                         stderr=True)).url
    out, err, status, error_reset = run(exec_with_stdin(used))
    assert (out, err) == (b"got:hi\n", b"err\n")
    assert not error_reset
    assert status["status"] == "Failure" and status["reason"] == "NonZeroExitCode", status
    assert {"reason": "ExitCode", "message": "3"} in status["details"]["causes"], status
    assert "exit code 3" in status["message"], status

    # (2) exec on a terminal: no stderr stream, a resize stream, exit 0 is a Success Status
    url = rt.rt("exec", cri.ExecRequest(container_id=cid, cmd=["sh"], tty=True, stdin=True, stdout=True)).url
    out, status = run(exec_on_tty(url))
    assert b"/dev/pts/" in out and b"tty-42" in out, out
    assert status == {"metadata": {}, "status": "Success"}, status

    # (3) port-forward: two connections into the pod's network namespace, to httpd on 8080
    url = rt.rt("port_forward", cri.PortForwardRequest(pod_sandbox_id=pod, port=[WEB_PORT])).url
    answers = run(port_forward(url, 2))
    for data, error in answers:
        assert data.startswith(b"HTTP/1.1 200 OK\r\n") and data.endswith(b"streamed-web\n"), data
        assert error == b"", error

    # (4) one-time tokens: used, unknown, or for another kind of request, a 404; no common protocol a 403
    unknown = used.rsplit("/", 1)[0] + "/no-such-token"
    for url in (used, unknown):
        status_code, body = run(answer_of(url, ["v4.channel.k8s.io"]))
        assert status_code == 404, (url, status_code, body)
    pf = rt.rt("port_forward", cri.PortForwardRequest(pod_sandbox_id=pod, port=[WEB_PORT])).url
    assert run(answer_of(pf.replace("/portforward/", "/exec/"), ["v4.channel.k8s.io"]))[0] == 404
    url = rt.rt("exec", cri.ExecRequest(container_id=cid, cmd=["true"], stdout=True)).url
    status_code, body = run(answer_of(url, ["v9.channel.example"]))
    assert status_code == 403 and b"unable to negotiate protocol" in body, (status_code, body)

    # port-forward to a port nothing listens on: the error stream carries why, the data stream is reset
    url = rt.rt("port_forward", cri.PortForwardRequest(pod_sandbox_id=pod, port=[WEB_PORT + 1])).url
    [(data, error)] = run(port_forward_to(url, WEB_PORT + 1))
    assert data == b"" and f"error forwarding port {WEB_PORT + 1}".encode() in error, (data, error)
