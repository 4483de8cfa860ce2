"""The two engines a conformance run compares, each private: a Skiff stack and a Debian dockerd 20.10.

Each gets a folder of the run's temp root, a network namespace (``hostns``), a cgroup parent and a
bridge of its own; ``Engine.close`` removes what the tests left through the API, stops the engine,
then sweeps the host clean of it whether or not the engine stopped well.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from hostns import NetNamespace, make_bridge, private_subnet, survey, sweep

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0


class EngineError(RuntimeError):
    pass


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class Engine:
    """One engine under ``root``: start, load the images, report its socket, close."""

    kind = "engine"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True)
        tag = hashlib.sha256(str(root).encode()).hexdigest()[:8]
        self.cgroup_parent = f"skiff-conformance-{self.kind}-{tag}"
        self.bridge = f"cf{self.kind[:2]}{tag}"  # at most 15 characters, as a link name must be
        self.subnet = private_subnet()
        self.ns: NetNamespace | None = None
        self.procs: list[subprocess.Popen[bytes]] = []
        self.leftovers: list[str] = []
        self.left_at_stop: list[str] = []

    @property
    def socket(self) -> Path:
        raise NotImplementedError

    @property
    def docker_host(self) -> str:
        return f"unix://{self.socket}"

    def log_tail(self, lines: int = 30) -> str:
        return ""

    def start(self) -> None:
        self.ns = NetNamespace.create(self.root / "netns")
        self._start()
        self._wait_ready()

    def _start(self) -> None:
        raise NotImplementedError

    def _spawn(self, argv: list[str], log: Path, env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen[bytes]:
        assert self.ns is not None
        with open(log, "ab") as out:
            # A session of its own: a ^C at the terminal reaches the runner only, which stops it in order.
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=env, cwd=cwd, preexec_fn=self.ns.enter, start_new_session=True)
        self.procs.append(proc)
        return proc

    def request(self, method: str, path: str, body: bytes | None = None, timeout: float = 120.0,
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        conn = _UnixHTTP(self.socket, timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            for proc in self.procs:
                if proc.poll() is not None:
                    raise EngineError(f"{self.kind} exited ({proc.returncode}) while starting:\n{self.log_tail()}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                # /info goes through every layer (an API may answer /_ping before what is behind it).
                if self.request("GET", "/info", timeout=10)[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise EngineError(f"{self.kind} not ready on {self.socket} within {START_TIMEOUT:.0f} s:\n"
                                  f"{self.log_tail()}")
            time.sleep(0.2)

    def load_images(self, archive: Path, tags: list[str]) -> None:
        """``docker load`` of the archive (tagged ``tags[0]``), then the other names as tags of it."""
        status, body = self.request("POST", "/images/load?quiet=1", archive.read_bytes(),
                                    headers={"Content-Type": "application/x-tar"})
        if status != 200 or b'"error' in body:
            raise EngineError(f"{self.kind}: images/load answered {status}: {body[:500]!r}")
        for name in tags[1:]:
            repo, tag = name.rsplit(":", 1)
            status, body = self.request("POST", f"/images/{tags[0]}/tag?repo={repo}&tag={tag}")
            if status not in (200, 201):
                raise EngineError(f"{self.kind}: tag {name} answered {status}: {body[:300]!r}")

    def remove_objects(self) -> None:
        """What the tests left: containers (with their volumes), networks, volumes (best effort)."""
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, body = self.request("GET", "/containers/json?all=1", timeout=30)
            for c in json.loads(body) if status == 200 else []:
                self.request("DELETE", f"/containers/{c['Id']}?force=1&v=1", timeout=60)
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, body = self.request("GET", "/networks", timeout=30)
            for n in json.loads(body) if status == 200 else []:
                if n.get("Name") not in ("bridge", "host", "none"):
                    self.request("DELETE", f"/networks/{n['Id']}", timeout=30)
        with contextlib.suppress(OSError, http.client.HTTPException, ValueError):
            status, body = self.request("GET", "/volumes", timeout=30)
            for v in (json.loads(body).get("Volumes") or []) if status == 200 else []:
                self.request("DELETE", f"/volumes/{v['Name']}?force=1", timeout=30)

    def stop(self) -> None:
        """SIGTERM to the engine's processes, newest first (the API before what is behind it)."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def close(self, keep_root: bool = False) -> list[str]:
        """Everything of this engine gone from the host; returns what could not be removed."""
        try:
            if self.procs and all(p.poll() is None for p in self.procs):
                self.remove_objects()
        finally:
            try:
                self.stop()
            finally:
                # What the engine's own stop left counts as left behind, even when the sweep then ends it.
                self.left_at_stop = survey(self.root, self.ns, self.cgroup_parent)
                self.leftovers = sweep(self.root, self.ns, self.cgroup_parent)
                if not self.leftovers and not keep_root:
                    shutil.rmtree(self.root, ignore_errors=True)
        return self.leftovers


class SkiffEngine(Engine):
    """``skiff up`` of a checkout (its own venv), under a prefix of the run's root."""

    kind = "skiff"

    def __init__(self, root: Path, checkout: Path, runtime: str | None = None) -> None:
        super().__init__(root)
        self.checkout = checkout
        self.python = checkout / ".venv" / "bin" / "python"
        self.runtime = runtime
        self.prefix = root / "prefix"
        self.log = root / "skiff.log"
        # The checkout says where its API socket is under a prefix (the layout may move between commits).
        out = subprocess.run([str(self.python), "-c", "import sys; from services.common.paths import resolve_paths;"
                              " print(resolve_paths(sys.argv[1]).api_socket)", str(self.prefix)],
                             cwd=checkout, capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise EngineError(f"{checkout}: cannot resolve the API socket: {out.stderr[-500:]}")
        self._socket = Path(out.stdout.strip())

    @property
    def socket(self) -> Path:
        return self._socket

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def _start(self) -> None:
        env = dict(os.environ, SKIFF_CGROUP_PARENT=self.cgroup_parent, SKIFF_BRIDGE_NAME=self.bridge,
                   SKIFF_DEFAULT_SUBNET=str(self.subnet), SKIFF_LOG_FORMAT="json")
        for name in ("SKIFF_ROOT", "DOCKER_HOST"):
            env.pop(name, None)
        argv = [str(self.python), "-m", "services.up", "up", "--root", str(self.prefix)]
        if self.runtime:
            argv += ["--runtime", self.runtime]
        self._spawn(argv, self.log, env=env, cwd=self.checkout)


class DockerdEngine(Engine):
    """Debian's dockerd with a containerd of its own; every path, socket and the bridge private."""

    kind = "dockerd"

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        for tool in ("dockerd", "containerd", "containerd-shim-runc-v2", "runc"):
            if shutil.which(tool) is None:
                raise EngineError(f"{tool} not found: apt-get install docker.io")
        self.containerd_socket = root / "containerd" / "containerd.sock"

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    def log_tail(self, lines: int = 30) -> str:
        text = []
        for name in ("containerd.log", "dockerd.log"):
            with contextlib.suppress(OSError):
                text += [f"[{name}] {line}" for line in
                         (self.root / name).read_text(errors="replace").splitlines()[-lines:]]
        return "\n".join(text)

    def _containerd_config(self) -> Path:
        base = self.root / "containerd"
        for sub in ("root", "state", "opt"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        config = base / "config.toml"
        config.write_text("\n".join([
            "version = 2",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
            "[grpc]",
            f'  address = "{self.containerd_socket}"',
            "[ttrpc]",
            f'  address = "{self.containerd_socket}.ttrpc"',
            "[debug]",
            '  address = ""',
            "[metrics]",
            '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]',
            f'  path = "{base / "opt"}"',
            "",
        ]))
        return config

    def _start(self) -> None:
        assert self.ns is not None
        self.ns.run(make_bridge(self.bridge, self.subnet))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)}
        self._spawn(["containerd", "--config", str(self._containerd_config())], self.root / "containerd.log", env=env)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.containerd_socket.exists():
            if self.procs[0].poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"containerd did not start:\n{self.log_tail()}")
            time.sleep(0.1)
        config = self.root / "daemon.json"
        # never /etc/docker/daemon.json, nor /etc/docker/key.json (20.10's identity key)
        config.write_text(json.dumps({"deprecated-key-path": str(self.root / "key.json")}) + "\n")
        self._spawn([
            "dockerd",
            "--config-file", str(config),
            "--data-root", str(self.root / "data"),
            "--exec-root", str(self.root / "exec"),
            "--pidfile", str(self.root / "dockerd.pid"),
            "-H", f"unix://{self.socket}",
            "--containerd", str(self.containerd_socket),
            "--bridge", self.bridge,
            "--cgroup-parent", f"/{self.cgroup_parent}",
            "--storage-driver", "overlay2",
        ], self.root / "dockerd.log", env=env)


def python_of(checkout: Path) -> str:
    """The interpreter pytest runs under: the checkout's venv (docker-py 7.2, pytest, pytest-timeout)."""
    python = checkout / ".venv" / "bin" / "python"
    if not python.exists():
        raise EngineError(f"{python} missing: run scripts/install-deps in {checkout}")
    check = subprocess.run([str(python), "-c", "import docker, pytest, pytest_timeout, paramiko, websocket"],
                           capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        raise EngineError(f"{python} lacks a module docker-py's tests need (docker, pytest, pytest-timeout, "
                          f"paramiko): {check.stderr.strip().splitlines()[-1:]}")
    return str(python)

