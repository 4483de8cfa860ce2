"""The CRI engines critest runs against, each private to one run's root and network namespace:
Debian's containerd 1.6 with its CRI plugin (the baseline: own root, state, socket and config, never
the system's) and Skiff (``skiff up --root``, its CRI socket at ``<run>/cri.sock``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]
CNI_BIN = Path(os.environ.get("SKIFF_CNI_BIN_DIR", "/usr/lib/cni"))


class EngineError(RuntimeError):
    pass


def write_cni_conf(conf_dir: Path, bridge: str, subnet: str) -> None:
    """One bridge network (host-local addresses, portmap for hostPort, loopback) for the run's pods."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    conf = {
        "cniVersion": "0.4.0", "name": "critest",
        "plugins": [
            {"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    (conf_dir / "10-critest.conflist").write_text(json.dumps(conf, indent=2) + "\n")
    (conf_dir / "99-loopback.conf").write_text(json.dumps({"cniVersion": "0.4.0", "name": "lo", "type": "loopback"}))


class Engine:
    kind = "engine"

    def __init__(self, root: Path, certs_d: Path, cni_conf: Path, enter: object) -> None:
        self.root = root
        self.certs_d = certs_d
        self.cni_conf = cni_conf
        self.enter = enter
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"{self.kind}.log"

    @property
    def socket(self) -> Path:
        raise NotImplementedError

    def argv_env(self) -> tuple[list[str], dict[str, str], Path | None]:
        raise NotImplementedError

    def start(self) -> None:
        argv, env, cwd = self.argv_env()
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=env, cwd=cwd, preexec_fn=self.enter,  # type: ignore[arg-type]
                                         start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"{self.kind} did not serve {self.socket}:\n{self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


class Containerd(Engine):
    kind = "containerd"

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    def argv_env(self) -> tuple[list[str], dict[str, str], Path | None]:
        base = self.root / "containerd"
        for sub in ("root", "state", "opt"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = base / "config.toml"
        config.write_text("\n".join([
            "version = 2",
            f'root = "{base / "root"}"',
            f'state = "{base / "state"}"',
            "[grpc]", f'  address = "{self.socket}"',
            "[ttrpc]", f'  address = "{self.socket}.ttrpc"',
            "[debug]", '  address = ""',
            "[metrics]", '  address = ""',
            '[plugins."io.containerd.internal.v1.opt"]', f'  path = "{base / "opt"}"',
            f"[{cri}]", '  sandbox_image = "registry.k8s.io/pause:3.6"',
            f"[{cri}.cni]", f'  bin_dir = "{CNI_BIN}"', f'  conf_dir = "{self.cni_conf}"',
            f"[{cri}.registry]", f'  config_path = "{self.certs_d}"',
            "",
        ]))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)}
        return ["containerd", "--config", str(config)], env, None


class Skiff(Engine):
    kind = "skiff"

    @property
    def socket(self) -> Path:
        return self.root / "skiff" / "run" / "skiff" / "cri.sock"

    def argv_env(self) -> tuple[list[str], dict[str, str], Path | None]:
        env = dict(os.environ, SKIFF_CERTS_D=str(self.certs_d), SKIFF_CNI_CONF_DIR=str(self.cni_conf),
                   SKIFF_CNI_BIN_DIR=str(CNI_BIN), SKIFF_LOG_FORMAT="json",
                   SKIFF_CGROUP_PARENT=f"skiff-critest-{self.root.name}")
        for name in ("SKIFF_ROOT", "DOCKER_HOST"):
            env.pop(name, None)
        python = REPO / ".venv" / "bin" / "python"
        return [str(python if python.exists() else sys.executable), "-m", "services.up", "up",
                "--root", str(self.root / "skiff")], env, REPO


ENGINES: dict[str, type[Engine]] = {"containerd": Containerd, "skiff": Skiff}
