"""The engine's own objects: the API versions it speaks, GET /version and GET /info."""

from __future__ import annotations

import os
import platform
from typing import Any

from services.gen.skiff.daemon.v1 import InfoResponse

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "0.1.0"


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def version() -> dict[str, Any]:
    """GET /version."""
    uname = os.uname()
    details = {"ApiVersion": API_VERSION, "MinAPIVersion": MIN_API_VERSION, "Os": "linux",
               "Arch": _arch(), "KernelVersion": uname.release}
    return {
        "Platform": {"Name": "Skiff"},
        "Components": [{"Name": "Engine", "Version": ENGINE_VERSION, "Details": details}],
        "Version": ENGINE_VERSION,
        "GitCommit": "",
        "GoVersion": f"python{platform.python_version()}",
        "BuildTime": "",
        **details,
    }


def info(data: InfoResponse, hostname: str, mem_total: int) -> dict[str, Any]:
    """GET /info, from the daemon's counts and the host's name and memory."""
    uname = os.uname()
    return {
        "ID": "skiff", "Containers": data.containers, "ContainersRunning": data.running,
        "ContainersPaused": data.paused, "ContainersStopped": data.stopped, "Images": data.images,
        "Driver": "overlay2", "DriverStatus": [], "DockerRootDir": data.root, "Name": hostname,
        "OperatingSystem": "Skiff", "OSType": "linux", "OSVersion": "", "Architecture": uname.machine,
        "KernelVersion": uname.release, "NCPU": os.cpu_count() or 1, "MemTotal": mem_total,
        "ServerVersion": ENGINE_VERSION, "CgroupDriver": "cgroupfs", "CgroupVersion": "2",
        "DefaultRuntime": data.runtime, "Runtimes": {data.runtime: {"path": data.runtime}},
        "LoggingDriver": "json-file", "SecurityOptions": [], "Warnings": [], "Labels": [],
        "ExperimentalBuild": False, "LiveRestoreEnabled": True, "Plugins": {"Volume": ["local"],
                                                                           "Network": ["host", "null"],
                                                                           "Log": ["json-file", "local"]},
        "Swarm": {"LocalNodeState": "inactive"}, "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"]},
    }
