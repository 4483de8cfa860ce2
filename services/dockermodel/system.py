"""The engine's own objects: the API versions it speaks, GET /version and GET /info."""

from __future__ import annotations

import ipaddress
import os
import platform
from typing import Any

from services.common.daemon_config import BUILTIN_RUNTIMES, DaemonConfig
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


def info(data: InfoResponse, hostname: str, mem_total: int, settings: DaemonConfig | None = None) -> dict[str, Any]:
    """GET /info, from the daemon's counts, the configuration it has in force (daemon.json), and the
    host's name and memory."""
    uname = os.uname()
    settings = settings or DaemonConfig()
    # Docker's runc names are Skiff's own runtime (the daemon's --runtime); daemon.json adds others.
    runtimes = {name: {"path": data.runtime} for name in BUILTIN_RUNTIMES}
    runtimes.update({name: {"path": r.path, **({"runtimeArgs": list(r.runtime_args)} if r.runtime_args else {})}
                     for name, r in settings.runtimes.items()})
    insecure = ["127.0.0.0/8", *(r for r in settings.insecure_registries if _is_cidr(r))]
    index_configs = {name: {"Name": name, "Mirrors": [], "Secure": False, "Official": False}
                     for name in settings.insecure_registries if not _is_cidr(name)}
    mirrors = [m.rstrip("/") + "/" for m in settings.registry_mirrors]
    index_configs["docker.io"] = {"Name": "docker.io", "Mirrors": mirrors, "Secure": True, "Official": True}
    return {
        "ID": "skiff", "Containers": data.containers, "ContainersRunning": data.running,
        "ContainersPaused": data.paused, "ContainersStopped": data.stopped, "Images": data.images,
        "Driver": "overlay2", "DriverStatus": [], "DockerRootDir": data.root, "Name": hostname,
        "OperatingSystem": "Skiff", "OSType": "linux", "OSVersion": "", "Architecture": uname.machine,
        "KernelVersion": uname.release, "NCPU": os.cpu_count() or 1, "MemTotal": mem_total,
        "ServerVersion": ENGINE_VERSION, "CgroupDriver": "cgroupfs",
        "DefaultRuntime": settings.default_runtime, "Runtimes": runtimes,
        "LoggingDriver": settings.log_driver, "SecurityOptions": ["name=seccomp,profile=default"], "Warnings": [],
        "Labels": list(settings.labels),
        "Debug": settings.debug, "CgroupParent": settings.cgroup_parent or None,
        "ExperimentalBuild": False, "LiveRestoreEnabled": True, "Plugins": {"Volume": ["local"],
                                                                           "Network": ["bridge", "host", "null"],
                                                                           "Log": ["json-file", "local"]},
        "Swarm": {"LocalNodeState": "inactive"}, "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": index_configs, "InsecureRegistryCIDRs": insecure,
                           "Mirrors": mirrors},
        "DefaultAddressPools": [{"Base": p.base, "Size": p.size} for p in settings.default_address_pools] or None,
    }


def _is_cidr(text: str) -> bool:
    try:
        ipaddress.ip_network(text)
    except ValueError:
        return False
    return "/" in text
