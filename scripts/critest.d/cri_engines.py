"""The CRI engines critest runs against, each private to one run's root and network namespace:
Debian's containerd 1.6 with its CRI plugin (the baseline: own root, state, socket and config, never
the system's) and Skiff (highlevel and skiff-cri under ``--root``, its CRI socket at ``<run>/cri.sock``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

START_TIMEOUT = 90.0
STOP_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]
CNI_BIN = Path(os.environ.get("SKIFF_CNI_BIN_DIR", "/usr/lib/cni"))


class EngineError(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Command:
    argv: list[str]
    env: dict[str, str]
    socket: Path
    cwd: Path | None = None


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
        self.procs: list[subprocess.Popen[bytes]] = []
        self.log = root / f"{self.kind}.log"

    @property
    def socket(self) -> Path:
        raise NotImplementedError

    def commands(self) -> list[Command]:
        """The processes to start, in order; each is waited for until its socket exists."""
        raise NotImplementedError

    def start(self) -> None:
        for command in self.commands():
            with open(self.log, "ab") as out:
                proc = subprocess.Popen(command.argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        env=command.env, cwd=command.cwd,
                                        preexec_fn=self.enter,  # type: ignore[arg-type]
                                        start_new_session=True)
            self.procs.append(proc)
            deadline = time.monotonic() + START_TIMEOUT
            while not command.socket.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise EngineError(f"{self.kind}: {command.argv[:3]} did not serve {command.socket}:\n"
                                      f"{self.log_tail()}")
                time.sleep(0.2)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """The processes stopped in the reverse order of their start (SIGTERM, then SIGKILL)."""
        for proc in reversed(self.procs):
            if proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)


class Containerd(Engine):
    kind = "containerd"

    @property
    def socket(self) -> Path:
        return self.root / "containerd" / "containerd.sock"

    def commands(self) -> list[Command]:
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
            # A box without CAP_SYS_RESOURCE cannot lower oom_score_adj: the sandbox's -998 fails runc
            # ("can't get final child's PID from pipe") unless clamped to containerd's own.
            f"[{cri}]", '  sandbox_image = "registry.k8s.io/pause:3.6"', "  restrict_oom_score_adj = true",
            f"[{cri}.cni]", f'  bin_dir = "{CNI_BIN}"', f'  conf_dir = "{self.cni_conf}"',
            f"[{cri}.registry]", f'  config_path = "{self.certs_d}"',
            "",
        ]))
        env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(self.root)}
        return [Command(["containerd", "--config", str(config)], env, self.socket)]


class Skiff(Engine):
    """highlevel and skiff-cri of this checkout (the CRI needs no daemon nor apiserver)."""

    kind = "skiff"

    @property
    def prefix(self) -> Path:
        return self.root / "skiff"

    @property
    def socket(self) -> Path:
        return self.prefix / "run" / "skiff" / "cri.sock"

    def commands(self) -> list[Command]:
        env = dict(os.environ, SKIFF_CERTS_D=str(self.certs_d), SKIFF_CNI_CONF_DIR=str(self.cni_conf),
                   SKIFF_CNI_BIN_DIR=str(CNI_BIN), SKIFF_LOG_FORMAT="json",
                   SKIFF_CGROUP_PARENT=f"skiff-critest-{self.root.name}")
        for name in ("SKIFF_ROOT", "DOCKER_HOST"):
            env.pop(name, None)
        venv = REPO / ".venv" / "bin" / "python"
        python = str(venv if venv.exists() else sys.executable)
        highlevel = self.prefix / "run" / "skiff" / "highlevel.sock"
        return [
            Command([python, "-m", "services.highlevel", "--root", str(self.prefix)], env, highlevel, REPO),
            Command([python, "-m", "services.cri", "--root", str(self.prefix)], env, self.socket, REPO),
        ]


ENGINES: dict[str, type[Engine]] = {"containerd": Containerd, "skiff": Skiff}
