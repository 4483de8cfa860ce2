"""POST /containers/create's body (Config fields at the top, HostConfig inside) as the daemon's
ContainerConfig, checked as dockerd checks it: restart policy, log options, CPU limits and cpusets,
ulimits, sysctls, security options; networking and mounts come from their own modules."""

from __future__ import annotations

import json
import re
from typing import Any

from services.common.errors import InvalidArgument
from services.dockermodel import hostconfig, mounts, networks
from services.dockermodel.fields import integer, string, string_list
from services.dockermodel.health import healthcheck_from_request
from services.gen.skiff.daemon.v1 import ContainerConfig, HostConfig, Ulimit

RESTART_POLICIES = ("", "no", "on-failure", "always", "unless-stopped")
CPUSET_RE = re.compile(r"^[0-9]+(-[0-9]+)?(,[0-9]+(-[0-9]+)?)*$")
# Docker's list of namespaced sysctls (the CLI's ValidateSysctl): what a container may set for itself.
SYSCTL_NAMES = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall", "kernel.shmmax",
                "kernel.shmmni", "kernel.shm_rmid_forced")
SYSCTL_PREFIXES = ("net.", "fs.mqueue.")


def _restart_policy(host_body: dict[str, Any]) -> dict[str, Any]:
    """HostConfig.RestartPolicy, checked as dockerd does (a name it knows; not with AutoRemove)."""
    policy = host_body.get("RestartPolicy") or {}
    if not isinstance(policy, dict):
        raise InvalidArgument("invalid RestartPolicy: expected an object")
    name = str(policy.get("Name") or "")
    retries = integer(policy.get("MaximumRetryCount"), "MaximumRetryCount")
    if name not in RESTART_POLICIES:
        raise InvalidArgument(f"invalid restart policy: unknown policy '{name}'")
    if retries < 0 or (retries and name != "on-failure"):
        raise InvalidArgument("invalid restart policy: maximum retry count can only be used with 'on-failure'")
    if name not in ("", "no") and host_body.get("AutoRemove"):
        raise InvalidArgument("conflicting options: cannot specify both --restart and --rm")
    return {"restart_policy": name, "restart_max_retries": retries}


def _log_config(host_body: dict[str, Any]) -> dict[str, Any]:
    """HostConfig.LogConfig as given: the driver's name and its options (strings); the daemon checks them."""
    log_config = host_body.get("LogConfig") or {}
    if not isinstance(log_config, dict):
        raise InvalidArgument("invalid LogConfig: expected an object")
    kind = log_config.get("Type") or ""
    if not isinstance(kind, str):
        raise InvalidArgument("invalid LogConfig.Type: expected a string")
    options = log_config.get("Config") or {}
    if not isinstance(options, dict) or not all(isinstance(v, str) for v in options.values()):
        raise InvalidArgument("invalid LogConfig.Config: expected an object of strings")
    return {"log_driver": kind, "log_opts": {str(k): v for k, v in options.items()}}


def _ulimits(value: Any) -> list[Ulimit]:
    """HostConfig.Ulimits: [{"Name": "nofile", "Soft": 1024, "Hard": 2048}] (names checked by the daemon)."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(u, dict) for u in value):
        raise InvalidArgument("invalid Ulimits: expected a list of objects")
    out: list[Ulimit] = []
    for item in value:
        name = string(item.get("Name"), "Ulimits.Name")
        soft, hard = integer(item.get("Soft"), "Ulimits.Soft"), integer(item.get("Hard"), "Ulimits.Hard")
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
    nano_cpus = integer(host_body.get("NanoCpus"), "NanoCpus")
    quota, period = integer(host_body.get("CpuQuota"), "CpuQuota"), integer(host_body.get("CpuPeriod"), "CpuPeriod")
    if nano_cpus and period:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Period cannot both be set")
    if nano_cpus and quota:
        raise InvalidArgument("Conflicting options: Nano CPUs and CPU Quota cannot both be set")
    if nano_cpus < 0 or quota < 0 and quota != -1 or period < 0:
        raise InvalidArgument("invalid CPU limit: negative value")
    fields: dict[str, Any] = {"nano_cpus": nano_cpus, "cpu_quota": max(quota, 0), "cpu_period": period,
                              "cpu_shares": integer(host_body.get("CpuShares"), "CpuShares")}
    for key, field in (("CpusetCpus", "cpuset_cpus"), ("CpusetMems", "cpuset_mems")):
        text = string(host_body.get(key), key).strip()
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
        memory=integer(host_body.get("Memory"), "Memory"),
        pids_limit=integer(host_body.get("PidsLimit"), "PidsLimit"),
        cap_add=string_list(host_body.get("CapAdd"), "CapAdd"),
        cap_drop=string_list(host_body.get("CapDrop"), "CapDrop"),
        privileged=bool(host_body.get("Privileged")),
        readonly_rootfs=bool(host_body.get("ReadonlyRootfs")),
        network_mode=str(host_body.get("NetworkMode") or ""),
        **_restart_policy(host_body),
        **_log_config(host_body),
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
        stop_timeout=-1 if stop_timeout is None else integer(stop_timeout, "StopTimeout", bits=32),
        hostname=str(body.get("Hostname") or ""),
        healthcheck=healthcheck_from_request(body.get("Healthcheck")),
        host=host,
    )
    networks.apply_request(body, host_body, config)
    mounts.apply_request(body, host_body, config)
    hostconfig.apply_request(body, host_body, config.host)
    return config
