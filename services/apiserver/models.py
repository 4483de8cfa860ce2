"""Docker's JSON shapes, built in one place from the daemon's messages (and parsed from requests)."""

from __future__ import annotations

import json
import os
import platform
import re
import time
from datetime import datetime
from typing import Any

from services.apiserver import mounts as mountmodels
from services.apiserver import netmodels
from services.apiserver.fields import string_list
from services.common.errors import InvalidArgument
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import Container, ContainerConfig, HostConfig, InfoResponse, State, Ulimit

hl = highlevel.v1

API_VERSION = "1.47"
MIN_API_VERSION = "1.24"
ENGINE_VERSION = "0.1.0"
ZERO_TIME = "0001-01-01T00:00:00Z"
STATUS_NAMES = {
    State.CREATED: "created", State.RUNNING: "running", State.PAUSED: "paused", State.RESTARTING: "restarting",
    State.REMOVING: "removing", State.EXITED: "exited", State.DEAD: "dead",
}


def parse_time(value: str) -> float:
    """RFC 3339 (nanoseconds allowed) to a UNIX time; 0 when empty or unparsable."""
    if not value:
        return 0.0
    try:
        head, _, frac = value.rstrip("Z").partition(".")
        base = datetime.fromisoformat(head + "+00:00").timestamp()
        return base + (float(f"0.{frac}") if frac.isdigit() else 0.0)
    except ValueError:
        return 0.0


def _human(seconds: float) -> str:
    """Docker's units.HumanDuration, approximately."""
    s = int(seconds)
    if s < 1:
        return "Less than a second"
    if s == 1:
        return "1 second"
    if s < 60:
        return f"{s} seconds"
    minutes = s // 60
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = round(s / 3600)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    return f"{s // 86400} days"


def _int(value: Any, field: str, bits: int = 64) -> int:
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"invalid {field}: expected an integer")
    # What does not fit the daemon's field cannot cross the boundary: a 400, not a 500 (schemathesis).
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise InvalidArgument(f"invalid {field}: {value} is out of range")
    return value


RESTART_POLICIES = ("", "no", "on-failure", "always", "unless-stopped")


def _restart_policy(host_body: dict[str, Any]) -> dict[str, Any]:
    """HostConfig.RestartPolicy, checked as dockerd does (a name it knows; not with AutoRemove)."""
    policy = host_body.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidArgument("invalid RestartPolicy: expected an object")
    name = str(policy.get("Name") or "")
    retries = _int(policy.get("MaximumRetryCount"), "MaximumRetryCount")
    if name not in RESTART_POLICIES:
        raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'")
    if retries < 0 or (retries and name != "on-failure"):
        raise InvalidArgument("invalid restart policy: maximum retry count can only be used with 'on-failure'")
    if name not in ("", "no") and host_body.get("AutoRemove"):
        raise InvalidArgument("conflicting options: cannot specify both --restart and --rm")
    return {"restart_policy": name, "restart_max_retries": retries}


SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1024, "m": 1024**2, "mb": 1024**2, "g": 1024**3, "gb": 1024**3}


def _log_config(host_body: dict[str, Any]) -> dict[str, int]:
    """HostConfig.LogConfig of the json-file driver: max-size ("10k", "1m") and max-file."""
    log_config = host_body.get("LogConfig") or {}
    if not isinstance(log_config, dict):
        raise InvalidArgument("invalid LogConfig: expected an object")
    kind = log_config.get("Type") or "json-file"
    if kind not in ("json-file", "local"):
        raise InvalidArgument(f'logger: no log driver named \'{kind}\' is registered')
    options = log_config.get("Config") or {}
    if not isinstance(options, dict):
        raise InvalidArgument("invalid LogConfig.Config: expected an object")
    size_text = str(options.get("max-size") or "").strip().lower()
    size = 0
    if size_text and size_text != "-1":
        number = size_text.rstrip("bkmg")
        unit = size_text[len(number):]
        try:
            size = int(float(number) * SIZE_UNITS[unit])
        except (ValueError, KeyError, OverflowError):
            raise InvalidArgument(f"invalid max-size: {options.get('max-size')}") from None
    files_text = str(options.get("max-file") or "1")
    if not files_text.isdigit() or int(files_text) < 1:
        raise InvalidArgument(f"invalid max-file: {options.get('max-file')}")
    if int(files_text) > 1 and size <= 0:
        raise InvalidArgument("max-file cannot be set without max-size")
    return {"log_max_size": size, "log_max_file": min(int(files_text), 1000)}


CPUSET_RE = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
# Docker's list of namespaced sysctls (the CLI's ValidateSysctl): what a container may set for itself.
SYSCTL_NAMES = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
                "kernel.shmmni", "kernel.shm_rmid_forced")
SYSCTL_PREFIXES = ("net.", "fs.mqueue.")


def _string(value: Any, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidArgument(f"invalid {field}: expected a string")
    return value


def _ulimits(value: Any) -> list[Ulimit]:
    """HostConfig.Ulimits: [{"Name": "nofile", "Soft": 1024, "Hard": 2048}] (names checked by the daemon)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(u, dict) for u in value):
        raise InvalidArgument("invalid Ulimits: expected a list of objects")
    out: list[Ulimit] = []
    for item in value:
        name = _string(item.get("Name"), "Ulimits.Name")
        soft, hard = _int(item.get("Soft"), "Ulimits.Soft"), _int(item.get("Hard"), "Ulimits.Hard")
        if not name:
            raise InvalidArgument("invalid ulimit: a Name is required")
        out.append(Ulimit(name=name, soft=soft, hard=hard))
    return out


def _sysctls(value: Any, network_mode: str) -> dict[str, str]:
    """HostConfig.Sysctls: namespaced ones only; none of net.* when the container shares the host's network."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidArgument("invalid Sysctls: expected an object of strings")
    for key in value:
        if key not in SYSCTL_NAMES and not key.startswith(SYSCTL_PREFIXES):
            raise InvalidArgument(f"invalid argument: sysctl '{key}' is not allowed: only namespaced sysctls "
                                  "(net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*) can be set")
        if key.startswith("net.") and network_mode == "host":
            raise InvalidArgument(f"invalid argument: sysctl '{key}' is not allowed in host network mode")
    return {str(k): v for k, v in value.items()}


def _security_opt(value: Any) -> dict[str, Any]:
    """HostConfig.SecurityOpt, parsed as dockerd does (daemon_unix.go parseSecurityOpt)."""
    opts = string_list(value, "SecurityOpt", allow_single=False)
    no_new_privileges, profile = False, ""
    for opt in opts:
        if opt == "no-new-privileges":
            no_new_privileges = True
            continue
        if opt == "disable":
            continue  # label=disable's short form
        if "=" in opt:
            key, _, val = opt.partition("=")
        elif ":" in opt:  # the separator of old clients
            key, _, val = opt.partition(":")
        else:
            raise InvalidArgument(f'invalid --security-opt 1: "{opt}"')
        if key in ("label", "apparmor"):
            continue  # no SELinux or AppArmor here: accepted and ignored, as dockerd does without them
        if key == "seccomp":
            if not val:
                raise InvalidArgument(f'invalid --security-opt 2: "{opt}"')
            if val not in ("unconfined", "builtin"):
                try:
                    parsed = json.loads(val)
                except (ValueError, RecursionError) as exc:
                    raise InvalidArgument(f"Decoding seccomp profile failed: {exc}") from None
                if not isinstance(parsed, dict):
                    raise InvalidArgument("Decoding seccomp profile failed: expected a JSON object")
            profile = val
        elif key == "no-new-privileges":
            if val.lower() not in ("1", "t", "true", "0", "f", "false"):
                raise InvalidArgument(f'invalid --security-opt 2: "{opt}"')
            no_new_privileges = val.lower() in ("1", "t", "true")
        else:
            raise InvalidArgument(f'invalid --security-opt 2: "{opt}"')
    return {"security_opt": opts, "no_new_privileges": no_new_privileges, "seccomp_profile": profile}


def _resources_security(host_body: dict[str, Any]) -> dict[str, Any]:
    """CPU limits and cpusets, Ulimits, Sysctls, SecurityOpt and Init of HostConfig."""
    nano_cpus = _int(host_body.get("NanoCpus"), "NanoCpus")
    quota, period = _int(host_body.get("CpuQuota"), "CpuQuota"), _int(host_body.get("CpuPeriod"), "CpuPeriod")
    if nano_cpus and period:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano_cpus and quota:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    if nano_cpus < 0 or quota < 0 and quota != -1 or period < 0:
        raise InvalidArgument("invalid CPU limit: negative value")
    fields: dict[str, Any] = {"nano_cpus": nano_cpus, "cpu_quota": max(quota, 0), "cpu_period": period,
                              "cpu_shares": _int(host_body.get("CpuShares"), "CpuShares")}
    for key, field in (("CpusetCpus", "cpuset_cpus"), ("CpusetMems", "cpuset_mems")):
        text = _string(host_body.get(key), key).strip()
        if text and not CPUSET_RE.match(text):
            raise InvalidArgument(f"Invalid value {text} for cpuset {field.removeprefix('cpuset_')}")
        fields[field] = text
    fields["ulimits"] = _ulimits(host_body.get("Ulimits"))
    fields["sysctls"] = _sysctls(host_body.get("Sysctls"), str(host_body.get("NetworkMode") or ""))
    fields.update(_security_opt(host_body.get("SecurityOpt")))
    init = host_body.get("Init")
    if init is not None and not isinstance(init, bool):
        raise InvalidArgument("invalid Init: expected a boolean")
    fields["init"] = bool(init)
    return fields


def container_config_from_request(body: Any) -> ContainerConfig:
    """POST /containers/create's body (Config fields at the top, HostConfig inside)."""
    if not isinstance(body, dict):
        raise InvalidArgument("invalid JSON body: expected an object")
    host_body = body.get("HostConfig") or {}
    if not isinstance(host_body, dict):
        raise InvalidArgument("invalid HostConfig: expected an object")
    labels = body.get("Labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidArgument("invalid Labels: expected an object of strings")
    entrypoint = body.get("Entrypoint")
    stop_timeout = body.get("StopTimeout")
    host = HostConfig(
        auto_remove=bool(host_body.get("AutoRemove")),
        memory=_int(host_body.get("Memory"), "Memory"),
        pids_limit=_int(host_body.get("PidsLimit"), "PidsLimit"),
        cap_add=string_list(host_body.get("CapAdd"), "CapAdd"),
        cap_drop=string_list(host_body.get("CapDrop"), "CapDrop"),
        privileged=bool(host_body.get("Privileged")),
        readonly_rootfs=bool(host_body.get("ReadonlyRootfs")),
        network_mode=str(host_body.get("NetworkMode") or ""),
        **_restart_policy(host_body),  # area A
        **_log_config(host_body),  # area A
        **_resources_security(host_body),
    )
    config = ContainerConfig(
        image=str(body.get("Image") or ""),
        cmd=string_list(body.get("Cmd"), "Cmd"),
        entrypoint=string_list(entrypoint, "Entrypoint"),
        entrypoint_set=entrypoint is not None,
        env=string_list(body.get("Env"), "Env"),
        working_dir=str(body.get("WorkingDir") or ""),
        user=str(body.get("User") or ""),
        labels={str(k): v for k, v in labels.items()},
        tty=bool(body.get("Tty")),
        open_stdin=bool(body.get("OpenStdin")),
        stdin_once=bool(body.get("StdinOnce")),
        stop_signal=str(body.get("StopSignal") or ""),
        stop_timeout=-1 if stop_timeout is None else _int(stop_timeout, "StopTimeout", bits=32),
        hostname=str(body.get("Hostname") or ""),
        host=host,
    )
    netmodels.apply_request(body, host_body, config)
    mountmodels.apply_request(body, host_body, config)
    return config


def _network_mode(host: HostConfig) -> str:
    return host.network_mode if host.network_mode in ("host", "none") else "none"


def _status_text(c: Container) -> str:
    state = c.state
    if state.status == State.RUNNING:
        return f"Up {_human(time.time() - parse_time(state.started_at))}"
    if state.status == State.EXITED:
        return f"Exited ({state.exit_code}) {_human(time.time() - parse_time(state.finished_at))} ago"
    return STATUS_NAMES.get(state.status, "created").capitalize()


def container_summary(c: Container, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of GET /containers/json; ``fixed`` is :func:`summary_fixed` of ``c`` if the caller keeps it."""
    return {**(fixed if fixed is not None else summary_fixed(c)), **summary_changing(c)}


def summary_fixed(c: Container) -> dict[str, Any]:
    """The fields of a list entry that never change after create (a caller may keep them)."""
    return {
        "Id": c.id,
        "Image": c.image_ref,
        "ImageID": c.image_id,
        "Command": " ".join(_inspect_path_args(c)),
        "Created": int(parse_time(c.created)),
        "Labels": dict(c.config.labels),
        "HostConfig": {"NetworkMode": netmodels.network_mode(c)},
        "Mounts": mountmodels.summary_mounts(c),
    }


def summary_changing(c: Container) -> dict[str, Any]:
    """The fields of a list entry that a rename, a start, an exit or a network change move."""
    return {
        "Names": [f"/{c.name}"],
        "Ports": netmodels.summary_ports(c),
        "State": STATUS_NAMES.get(c.state.status, "created"),
        "Status": _status_text(c),
        "NetworkSettings": {"Networks": netmodels.summary_networks(c)},
    }


def _inspect_path_args(c: Container) -> list[str]:
    """The command as the client knows it: without the init that --init put in front of it."""
    args = list(c.path_args)
    if c.config.host.init and args[:2] == ["/sbin/docker-init", "--"]:
        return args[2:]
    return args


def _resources_security_inspect(host: HostConfig) -> dict[str, Any]:
    return {
        "NanoCpus": host.nano_cpus,
        "CpuShares": host.cpu_shares,
        "CpuQuota": host.cpu_quota,
        "CpuPeriod": host.cpu_period,
        "CpusetCpus": host.cpuset_cpus,
        "CpusetMems": host.cpuset_mems,
        "Ulimits": [{"Name": u.name, "Soft": u.soft, "Hard": u.hard} for u in host.ulimits] or None,
        **({"Sysctls": dict(host.sysctls)} if host.sysctls else {}),
        "SecurityOpt": list(host.security_opt) or None,
        **({"Init": True} if host.init else {}),
    }


def container_inspect(c: Container) -> dict[str, Any]:
    """GET /containers/{id}/json."""
    cfg, host, state = c.config, c.config.host, c.state
    status = state.status
    path_args = _inspect_path_args(c)
    return {
        "Id": c.id,
        "Created": c.created,
        "Path": path_args[0] if path_args else "",
        "Args": path_args[1:],
        "State": {
            "Status": STATUS_NAMES.get(status, "created"),
            "Running": status in (State.RUNNING, State.PAUSED, State.RESTARTING),
            "Paused": status == State.PAUSED,
            "Restarting": status == State.RESTARTING,
            "OOMKilled": state.oom_killed,
            "Dead": status == State.DEAD,
            "Pid": state.pid,
            "ExitCode": state.exit_code,
            "Error": state.error,
            "StartedAt": state.started_at or ZERO_TIME,
            "FinishedAt": state.finished_at or ZERO_TIME,
        },
        "Image": c.image_id,
        "ResolvConfPath": c.network_settings.resolv_conf_path,
        "HostnamePath": c.network_settings.hostname_path,
        "HostsPath": c.network_settings.hosts_path,
        "LogPath": c.log_path,
        "Name": f"/{c.name}",
        "RestartCount": c.restart_count,
        "Driver": "overlay2",
        "Platform": "linux",
        "MountLabel": "",
        "ProcessLabel": "",
        "AppArmorProfile": "",
        "ExecIDs": None,
        "HostConfig": {
            "AutoRemove": host.auto_remove,
            "Memory": host.memory,
            "PidsLimit": host.pids_limit or None,
            "CapAdd": list(host.cap_add) or None,
            "CapDrop": list(host.cap_drop) or None,
            "Privileged": host.privileged,
            "ReadonlyRootfs": host.readonly_rootfs,
            "NetworkMode": _network_mode(host),
            "RestartPolicy": {"Name": host.restart_policy or "no", "MaximumRetryCount": host.restart_max_retries},
            "LogConfig": {"Type": "json-file", "Config": {
                **({"max-size": str(host.log_max_size)} if host.log_max_size else {}),
                **({"max-file": str(host.log_max_file)} if host.log_max_file > 1 else {})}},
            "Binds": mountmodels.binds(c),
            "PortBindings": {},
            **_resources_security_inspect(host),
            **netmodels.host_config_fields(c),
        },
        "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": c.rootfs}},
        "Mounts": mountmodels.inspect_mounts(c),
        "Config": {
            "Hostname": cfg.hostname or c.id[:12],
            "Domainname": "",
            "User": cfg.user,
            "AttachStdin": False,
            "AttachStdout": True,
            "AttachStderr": True,
            "Tty": cfg.tty,
            "OpenStdin": cfg.open_stdin,
            "StdinOnce": cfg.stdin_once,
            "Env": list(cfg.env),
            "Cmd": list(cfg.cmd) or None,
            "Image": c.image_ref,
            "Volumes": {v: {} for v in cfg.volumes} or None,
            "WorkingDir": cfg.working_dir,
            "Entrypoint": list(cfg.entrypoint) if cfg.entrypoint_set else None,
            "OnBuild": None,
            "Labels": dict(cfg.labels),
            "ExposedPorts": {p: {} for p in cfg.exposed_ports} or None,
            **({"StopSignal": cfg.stop_signal} if cfg.stop_signal else {}),
            **({"StopTimeout": cfg.stop_timeout} if cfg.stop_timeout >= 0 else {}),
        },
        "NetworkSettings": netmodels.network_settings(c),
    }


def _image_config(image: hl.ImageSummary) -> dict[str, Any]:
    try:
        return json.loads(image.config or b"{}")
    except ValueError:
        return {}


def image_summary(image: hl.ImageSummary) -> dict[str, Any]:
    """One entry of GET /images/json."""
    config = _image_config(image)
    return {
        "Id": image.id,
        "ParentId": "",
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Created": int(parse_time(image.created)),
        "Size": image.size,
        "SharedSize": -1,
        "Labels": (config.get("config") or {}).get("Labels") or {},
        "Containers": -1,
    }


def image_inspect(image: hl.ImageSummary) -> dict[str, Any]:
    """GET /images/{name}/json."""
    config = _image_config(image)
    return {
        "Id": image.id,
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Parent": "",
        "Comment": "",
        "Created": image.created,
        "DockerVersion": "",
        "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": image.size,
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def version() -> dict[str, Any]:
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


def _arch() -> str:
    machine = os.uname().machine
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def info(data: InfoResponse, hostname: str, mem_total: int) -> dict[str, Any]:
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
                                                                           "Log": ["json-file"]},
        "Swarm": {"LocalNodeState": "inactive"}, "IndexServerAddress": "https://index.docker.io/v1/",
        "RegistryConfig": {"IndexConfigs": {}, "InsecureRegistryCIDRs": ["127.0.0.0/8"]},
    }
