"""The daemon's messages as Docker's objects: a container's list entry and inspect, an image's list
entry and inspect, a volume, a stats sample, an event."""

from __future__ import annotations

import json
import time
from typing import Any

from services.dockermodel import hostconfig, mounts, networks
from services.dockermodel.health import health_json, healthcheck_json, status_suffix
from services.dockermodel.times import ZERO_TIME, human_duration, parse_time
from services.gen.skiff import highlevel
from services.gen.skiff.daemon.v1 import Container, DockerEvent, HostConfig, State, StatsSample, Volume

hl = highlevel.v1

STATUS_NAMES = {
    State.CREATED: "created", State.RUNNING: "running", State.PAUSED: "paused", State.RESTARTING: "restarting",
    State.REMOVING: "removing", State.EXITED: "exited", State.DEAD: "dead",
}


def _network_mode(host: HostConfig) -> str:
    return host.network_mode if host.network_mode in ("host", "none") else "none"


def status_text(c: Container) -> str:
    """dockerd's State.String(): a paused container is "Up ... (Paused)", a restarting one tells its last exit."""
    return status_at(status_parts(c), time.time())


# A Status as (prefix, since, postfix): the text is prefix + the human duration since ``since`` (a UNIX
# time) + postfix, or prefix alone when since is None. Only this part of a list entry moves with time.
StatusParts = tuple[str, float | None, str]


def status_parts(c: Container) -> StatusParts:
    state = c.state
    status = state.status
    if status in (State.RUNNING, State.PAUSED):
        return "Up ", parse_time(state.started_at), " (Paused)" if status == State.PAUSED else status_suffix(c)
    if status == State.RESTARTING:
        return f"Restarting ({state.exit_code}) ", parse_time(state.finished_at), " ago"
    if status == State.EXITED:
        return f"Exited ({state.exit_code}) ", parse_time(state.finished_at), " ago"
    if status == State.REMOVING:
        return "Removal In Progress", None, ""
    return STATUS_NAMES.get(status, "created").capitalize(), None, ""


def status_at(parts: StatusParts, now: float) -> str:
    prefix, since, postfix = parts
    return prefix if since is None else f"{prefix}{human_duration(now - since)}{postfix}"


def container_summary(c: Container, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """One entry of GET /containers/json; ``fixed`` is :func:`summary_fixed` of ``c`` if the caller keeps it."""
    return {**(fixed if fixed is not None else summary_fixed(c)), **summary_changing(c)}


def summary_fixed(c: Container) -> dict[str, Any]:
    """The fields of a list entry that never change after create (a caller may keep them)."""
    return {
        "Id": c.id,
        "Image": c.image_ref,
        "ImageID": c.image_id,
        "Command": _command_text(_inspect_path_args(c)),
        "Created": int(parse_time(c.created)),
        "Labels": dict(c.config.labels),
        "HostConfig": {"NetworkMode": networks.network_mode(c)},
        "Mounts": mounts.summary_mounts(c),
    }


def summary_changing(c: Container) -> dict[str, Any]:
    """The fields of a list entry that a rename, a start, an exit or a network change move."""
    return {
        "Names": [f"/{c.name}"],
        "Ports": networks.summary_ports(c),
        "State": STATUS_NAMES.get(c.state.status, "created"),
        "Status": status_text(c),
        "NetworkSettings": {"Networks": networks.summary_networks(c)},
    }


def _command_text(path_args: list[str]) -> str:
    """The list's Command as dockerd writes it: an argument with a space in single quotes."""
    return " ".join(f"'{a}'" if " " in a else a for a in path_args)


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
            **({"Health": health} if (health := health_json(state.health)) else {}),
        },
        "Image": c.image_id,
        "ResolvConfPath": c.network_settings.resolv_conf_path,
        "HostnamePath": c.network_settings.hostname_path,
        "HostsPath": c.network_settings.hosts_path,
        # json-file's file only: dockerd keeps the local driver's private, and none has none.
        "LogPath": c.log_path if (host.log_driver or "json-file") == "json-file" else "",
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
            "LogConfig": {"Type": host.log_driver or "json-file", "Config": dict(host.log_opts)},
            "Binds": mounts.binds(c),
            "PortBindings": {},
            **_resources_security_inspect(host),
            **networks.host_config_fields(c),
            **hostconfig.inspect_fields(c),
        },
        "GraphDriver": {"Name": "overlay2", "Data": {"MergedDir": c.rootfs}},
        "Mounts": mounts.inspect_mounts(c),
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
            **({"ExposedPorts": {p: {} for p in cfg.exposed_ports}} if cfg.exposed_ports else {}),  # omitempty
            **({"StopSignal": cfg.stop_signal} if cfg.stop_signal else {}),
            **({"StopTimeout": cfg.stop_timeout} if cfg.stop_timeout >= 0 else {}),
            **({"Healthcheck": check} if (check := healthcheck_json(cfg.healthcheck)) is not None else {}),
        },
        "NetworkSettings": networks.network_settings(c),
    }


def _image_comment(config: dict[str, Any]) -> str:
    """dockerd's inspect: the config's comment, else the last history entry's (a commit's message)."""
    history = config.get("history") or []
    last = history[-1] if history and isinstance(history[-1], dict) else {}
    return str(config.get("comment") or last.get("comment") or "")


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
        "ParentId": str(config.get("parent") or ""),
        "RepoTags": list(image.repo_tags),
        "RepoDigests": list(image.repo_digests),
        "Created": int(parse_time(image.created)),
        "Size": image.size,
        "SharedSize": -1,
        "VirtualSize": image.size,  # API <= 1.43 lists it, equal to Size since dockerd 20.10
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
        # A committed image names the image it came from (dockerd: its store's parent link).
        "Parent": str(config.get("parent") or ""),
        "Comment": _image_comment(config),
        "Created": image.created,
        "DockerVersion": str(config.get("docker_version") or ""),
        "Author": config.get("author", ""),
        "Config": config.get("config") or {},
        "Architecture": config.get("architecture", ""),
        "Os": config.get("os", ""),
        "Size": image.size,
        "VirtualSize": image.size,
        "GraphDriver": {"Name": "overlay2", "Data": None},
        "RootFS": {"Type": "layers", "Layers": list(image.diff_ids)},
        "Metadata": {"LastTagTime": ZERO_TIME},
    }


def volume_json(v: Volume) -> dict[str, Any]:
    """Docker's Volume object."""
    body: dict[str, Any] = {
        "Name": v.name, "Driver": v.driver, "Mountpoint": v.mountpoint, "Labels": dict(v.labels) or None,
        "Scope": v.scope, "Options": dict(v.options) or None, "CreatedAt": v.created_at,
    }
    if v.size >= 0 or v.ref_count >= 0:
        body["UsageData"] = {"Size": v.size, "RefCount": v.ref_count}
    return body


def stats_json(sample: StatsSample, previous: StatsSample | None) -> dict[str, Any]:
    """Docker's stats shape from the runtime's numbers; precpu is the previous sample (zeros at first)."""
    raw = json.loads(sample.raw or b"{}")
    memory_stats: dict[str, Any] = {}
    if sample.raw:
        stats = (raw.get("memory") or {}).get("raw") or {}
        memory_stats = {"usage": sample.memory_usage, "limit": sample.memory_limit, "stats": stats}
        if "max_usage" in ((raw.get("memory") or {}).get("usage") or {}):
            memory_stats["max_usage"] = raw["memory"]["usage"]["max_usage"]

    def cpu(s: StatsSample | None) -> dict[str, Any]:
        if s is None or not s.raw:
            return {"cpu_usage": {"total_usage": 0, "usage_in_kernelmode": 0, "usage_in_usermode": 0},
                    "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}
        usage = (json.loads(s.raw).get("cpu") or {}).get("usage") or {}
        return {"cpu_usage": {"total_usage": s.cpu_usage_ns, "usage_in_kernelmode": usage.get("kernel", 0),
                              "usage_in_usermode": usage.get("user", 0)},
                "system_cpu_usage": s.system_cpu_ns, "online_cpus": s.online_cpus,
                "throttling_data": {"periods": 0, "throttled_periods": 0, "throttled_time": 0}}

    return {
        "id": sample.id, "name": sample.name, "read": sample.read,
        "preread": previous.read if previous else ZERO_TIME,
        "pids_stats": {"current": sample.pids_current} if sample.raw else {},
        "blkio_stats": {"io_service_bytes_recursive": None, "io_serviced_recursive": None},
        "num_procs": 0, "storage_stats": {},
        "cpu_stats": cpu(sample), "precpu_stats": cpu(previous), "memory_stats": memory_stats,
        "networks": {},
    }


def event_json(e: DockerEvent) -> dict[str, Any]:
    """One line of GET /events; container events carry the old top-level fields too."""
    body = {"Type": e.type, "Action": e.action, "Actor": {"ID": e.id, "Attributes": dict(e.attributes)},
            "scope": e.scope, "time": e.time_nano // 1_000_000_000, "timeNano": e.time_nano}
    if e.type == "container":
        body |= {"status": e.action, "id": e.id, "from": e.attributes.get("image", "")}
    return body
