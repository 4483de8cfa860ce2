"""``skiff up [--root PREFIX]``: the engine's services in order; on a signal they stop, the containers do not.

highlevel, daemon and apiserver serve Docker's API; skiff-cri (Kubernetes' CRI on ``<run>/cri.sock``)
comes last, a client of highlevel only.

Each service is started as systemd starts its unit (Type=notify): with a ``NOTIFY_SOCKET`` of its
own, and the next one only after its ``READY=1``, which services.common.service sends once the
service answers. Run under systemd itself, ``skiff up`` passes on READY=1 once all three are ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from services.common.paths import Paths, resolve_paths
from services.common.sd_notify import Notifier

READY_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass(slots=True)
class Service:
    module: str
    socket: Path
    proc: subprocess.Popen[bytes] | None = None


def notify_channel() -> tuple[socket.socket, str]:
    """A datagram socket for one service's READY=1 (abstract: nothing to clean up on disk)."""
    channel = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    channel.bind(f"\0skiff-up-{os.getpid()}-{time.monotonic_ns()}")
    return channel, "@" + channel.getsockname()[1:].decode()


def wait_ready(service: Service, channel: socket.socket, deadline: float, stopping: Callable[[], bool]) -> None:
    while not stopping():
        assert service.proc is not None
        if service.proc.poll() is not None:
            raise RuntimeError(f"{service.module} exited with status {service.proc.returncode}")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise RuntimeError(f"{service.module}: not ready after {READY_TIMEOUT} s")
        channel.settimeout(min(remaining, 0.2))
        try:
            message = channel.recv(4096)
        except TimeoutError:
            continue
        if b"READY=1" in message.split(b"\n"):
            return


def services_of(paths: Paths) -> list[Service]:
    return [
        Service("services.highlevel", paths.highlevel_socket),
        Service("services.daemon", paths.daemon_socket),
        Service("services.apiserver", paths.api_socket),
        Service("services.cri", paths.run / "cri.sock"),
    ]


def stop_all(started: list[Service]) -> None:
    """Reverse order, SIGTERM then SIGKILL after a bound; the containers' shims are not ours to stop."""
    for service in reversed(started):
        if service.proc is None or service.proc.poll() is not None:
            continue
        service.proc.send_signal(signal.SIGTERM)
        try:
            service.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(STOP_TIMEOUT)


def engine_version() -> str:
    """The installed distribution's version (pip install . or -e .), else the source tree's."""
    from importlib import metadata

    try:
        return metadata.version("skiff")
    except metadata.PackageNotFoundError:
        from services.dockermodel.system import ENGINE_VERSION

        return ENGINE_VERSION


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["soak"]:  # a client tool with its own flags (services/soak)
        from services.soak.cli import main as soak

        return soak(argv[1:])
    parser = argparse.ArgumentParser(prog="skiff", description=__doc__)
    parser.add_argument("--version", action="version", version=f"Skiff version {engine_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("soak", help="load and soak test a Docker-API engine (skiff soak --help)")
    up = sub.add_parser("up", help="start the engine in the foreground")
    up.add_argument("--root", help="state prefix (default: $SKIFF_ROOT, else /)")
    up.add_argument("--runtime", help="OCI runtime: skiff-lowlevel, runc, crun or a path")
    up.add_argument("--config-file", help="daemon.json of highlevel, daemon, apiserver (default: <etc>/daemon.json)")
    args = parser.parse_args(argv)
    paths = resolve_paths(args.root)
    env = dict(os.environ, SKIFF_ROOT=str(paths.prefix))
    stopping = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    manager = Notifier.from_environment()  # our own systemd, if any: the children get their own socket
    started: list[Service] = []
    try:
        for service in services_of(paths):
            argv_ = [sys.executable, "-m", service.module, "--root", str(paths.prefix)]
            if args.runtime and service.module != "services.apiserver":
                argv_ += ["--runtime", args.runtime]
            if args.config_file and service.module != "services.cri":  # daemon.json is Docker's
                argv_ += ["--config-file", args.config_file]
            channel, address = notify_channel()
            with channel:
                # Its own process group: a ^C in this terminal reaches skiff up only, which stops them in order.
                service.proc = subprocess.Popen(argv_, env=dict(env, NOTIFY_SOCKET=address), process_group=0)
                started.append(service)
                wait_ready(service, channel, time.monotonic() + READY_TIMEOUT, lambda: stopping)
            if stopping:
                return 0
        manager.send("READY=1", "STATUS=highlevel, daemon, apiserver and cri serving")
        print(f"skiff: ready; export DOCKER_HOST=unix://{paths.api_socket}", file=sys.stderr, flush=True)
        while not stopping:
            for service in started:
                assert service.proc is not None
                if service.proc.poll() is not None:
                    print(f"skiff: {service.module} exited ({service.proc.returncode})", file=sys.stderr)
                    return 1
            time.sleep(0.5)  # a signal interrupts the sleep and sets `stopping`
        manager.send("STOPPING=1")
        return 0
    except RuntimeError as exc:
        print(f"skiff: {exc}", file=sys.stderr)
        return 1
    finally:
        stop_all(started)


if __name__ == "__main__":
    sys.exit(main())
