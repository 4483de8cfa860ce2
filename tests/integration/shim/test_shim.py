"""The shim on its own, driven over its socket: log rotation, a fast writer, stdin, exit record."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.common.config import resolve_runtime
from services.common.shimproto import FrameKind, decode_frames, encode, encode_json
from tests.conftest import needs_root
from tests.support.tasks import Bundles, chosen_runtime, pid_alive, wait_for

CODE_ROOT = str(Path(__file__).resolve().parents[3])


def shim_request(path: str, message: dict[str, Any], timeout: float = 30) -> dict[str, Any]:
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(encode_json(message))
        buf = bytearray()
        while True:
            data = s.recv(65536)
            if not data:
                raise ConnectionError("shim closed without answering")
            buf += data
            frames = decode_frames(buf)
            if frames:
                return json.loads(frames[0][1])


class ShimUnderTest:
    def __init__(self, prefix: Path, id_: str, bundle: Path, **boot: Any) -> None:
        self.state_dir = prefix / "st" / id_
        self.state_dir.mkdir(parents=True)
        self.socket = str(prefix / f"{id_[:8]}.sock")
        self.runtime_root = prefix / "rs"
        self.id = id_
        self.boot = {"id": id_, "bundle": str(bundle), "runtime": resolve_runtime(chosen_runtime()),
                     "runtime_root": str(self.runtime_root), "socket": self.socket} | boot
        (self.state_dir / "bootstrap.json").write_text(json.dumps(self.boot))

    def launch(self) -> dict[str, Any]:
        out = subprocess.run([sys.executable, "-S", "-m", "services.shim", str(self.state_dir)], capture_output=True,
                             env=dict(os.environ, PYTHONPATH=CODE_ROOT), timeout=60)
        return json.loads(out.stdout.decode().strip())

    def call(self, **message: Any) -> dict[str, Any]:
        return shim_request(self.socket, message)

    def cleanup(self) -> None:
        try:
            pid = int((self.state_dir / "shim.pid").read_text())
            # Only if it still is this shim: a gone shim's pid may belong to anything now.
            if str(self.state_dir).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, 9)
        except (OSError, ValueError):
            pass
        subprocess.run([*resolve_runtime(chosen_runtime()), "--root", str(self.runtime_root), "delete", "--force",
                        self.id], capture_output=True, timeout=30)


@pytest.fixture
def shim_factory(prefix: Path):  # noqa: ANN201
    needs_root()
    made: list[ShimUnderTest] = []
    bundles = Bundles(prefix / "bundles")

    def make(id_: str, args: list[str], **boot: Any) -> ShimUnderTest:
        shim = ShimUnderTest(prefix, id_, bundles.make(id_, args), **boot)
        made.append(shim)
        return shim

    try:
        yield make
    finally:
        for shim in made:
            shim.cleanup()


def test_fast_writer_rotated_log_and_exit_record(shim_factory, unique_id: str, prefix: Path) -> None:  # noqa: ANN001
    log = prefix / "logs" / "c.log"
    # ~4 MB of numbered lines with nobody attached: the shim drains it all, rotating at 256 KiB.
    pad = "x" * 60
    script = f"i=0; while [ $i -lt 40000 ]; do echo line-$i-{pad}; i=$((i+1)); done; exit 4"
    shim = shim_factory(unique_id, ["sh", "-c", script], log_path=str(log), log_max_size=256 * 1024, log_max_file=3)
    answer = shim.launch()
    assert answer["pid"] > 0
    assert shim.call(op="start")["status"] == "running"
    final = shim.call(op="wait")
    assert final["exit"]["exit_code"] == 4
    # The record on disk was written before the answer.
    record = json.loads((shim.state_dir / "status.json").read_text())
    assert record["exit"]["exit_code"] == 4 and record["status"] == "stopped"
    files = sorted(p.name for p in log.parent.iterdir())
    assert files == ["c.log", "c.log.1", "c.log.2"]
    assert all(p.stat().st_size <= 256 * 1024 for p in log.parent.iterdir())
    last = [json.loads(line)["log"] for line in log.read_text().splitlines()]
    assert last[-1].startswith("line-39999-")
    deleted = shim.call(op="delete")
    assert deleted["exit"]["exit_code"] == 4
    shim_pid = answer["shim_pid"]
    wait_for(lambda: not pid_alive(shim_pid), 10, "shim exit after delete")
    assert not shim.state_dir.exists() and not os.path.exists(shim.socket)


def test_attach_stdin_once(shim_factory, unique_id: str) -> None:  # noqa: ANN001
    shim = shim_factory(unique_id, ["sh", "-c", "cat; echo done >&2"], stdin=True, stdin_once=True)
    shim.launch()
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(20)
        s.connect(shim.socket)
        s.sendall(encode_json({"op": "attach", "stdin": True}))
        shim.call(op="start")
        s.sendall(encode(FrameKind.STDIN, b"ping\n") + encode(FrameKind.STDIN_CLOSE, b""))
        buf, out, err = bytearray(), b"", b""
        while True:
            data = s.recv(65536)
            if not data:
                break
            buf += data
            for kind, payload in decode_frames(buf):
                if kind == FrameKind.STDOUT:
                    out += payload
                elif kind == FrameKind.STDERR:
                    err += payload
                elif kind == FrameKind.EOF:
                    assert json.loads(payload)["exit_code"] == 0
    assert out == b"ping\n" and err == b"done\n"
    assert shim.call(op="delete")["exit"]["exit_code"] == 0


def test_rejected_bundle_reports_runtime_message(shim_factory, unique_id: str) -> None:  # noqa: ANN001
    shim = shim_factory(unique_id, ["/no/such/binary"])
    answer = shim.launch()
    assert answer["error"]["kind"] == "invalid_argument"
    assert "no such file" in answer["error"]["message"].lower() or "binary" in answer["error"]["message"]
    shim_pid = int((shim.state_dir / "shim.pid").read_text())
    wait_for(lambda: not pid_alive(shim_pid), 10, "shim exit after a failed create")


def test_pids_update_stats_ops(shim_factory, unique_id: str) -> None:  # noqa: ANN001
    # The ops highlevel's ListPids, Update and Stats go through (highlevel runs no runtime for them).
    shim = shim_factory(unique_id, ["sleep", "1000"])
    answer = shim.launch()
    shim.call(op="start")
    assert answer["pid"] in shim.call(op="pids")["pids"]
    stats = shim.call(op="stats")["stats"]
    assert stats["pids"]["current"] >= 1 and stats["memory"]["usage"]["usage"] > 0
    assert shim.call(op="update", resources={"pids": {"limit": 77}}) == {}
    assert shim.call(op="stats")["stats"]["pids"]["limit"] == 77
    assert not list(shim.state_dir.glob("resources*")), "the update's resources file is left behind"
    refused = shim.call(op="update", resources=["not", "an", "object"])
    assert refused["error"]["kind"] == "invalid_argument"
    shim.call(op="kill", signal=9)
    assert shim.call(op="wait")["exit"]["signal"] == 9
    shim.call(op="delete")
