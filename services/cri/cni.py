"""Pod networking through CNI plugins, run as the CNI specification says.

The network is the first configuration (by file name) in ``SKIFF_CNI_CONF_DIR``: a ``.conflist`` (a
chain of plugins) or a ``.conf``/``.json`` (one plugin). Each plugin is an executable found in
``SKIFF_CNI_BIN_DIR``, run as a child process with the ``CNI_*`` variables and its network
configuration on stdin (a child process is how the specification defines a plugin call). ADD runs the
chain in order, each plugin given the previous one's result; DEL runs it in reverse, given the
result of the ADD (kept beside the pod). Port mappings reach plugins that declare the
``portMappings`` capability (portmap) through ``runtimeConfig``.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition, Internal, NotFound

PLUGIN_TIMEOUT = 60.0
IFNAME = "eth0"
CONF_SUFFIXES = (".conflist", ".conf", ".json")


@dataclass(frozen=True, slots=True)
class Network:
    name: str
    cni_version: str
    plugins: list[dict[str, Any]]
    source: Path


@dataclass(frozen=True, slots=True)
class Attachment:
    """What the pod's sandbox needs of an ADD: its addresses (the first is the pod's IP)."""

    ips: list[str]
    result: dict[str, Any]


def load_network(conf_dir: Path) -> Network:
    """The network pods join (blocking); NotFound when the folder has no configuration."""
    try:
        candidates = sorted(p for p in conf_dir.iterdir() if p.suffix in CONF_SUFFIXES and p.is_file())
    except FileNotFoundError:
        candidates = []
    for path in candidates:
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if path.suffix == ".conflist":
            plugins = raw.get("plugins")
            if not isinstance(plugins, list) or not plugins:
                continue
        else:
            plugins = [raw]
        if not isinstance(raw.get("name"), str) or not all(isinstance(p, dict) and p.get("type") for p in plugins):
            continue
        return Network(raw["name"], str(raw.get("cniVersion") or "0.4.0"), plugins, path)
    raise NotFound(f"no CNI network configuration in {conf_dir}")


def _pod_args(pod_namespace: str, pod_name: str, sandbox_id: str) -> str:
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={pod_namespace};K8S_POD_NAME={pod_name};"
            f"K8S_POD_INFRA_CONTAINER_ID={sandbox_id}")


class CniRunner:
    def __init__(self, bin_dirs: tuple[Path, ...]) -> None:
        self.bin_dirs = bin_dirs

    def _plugin(self, kind: str) -> Path:
        if "/" in kind:
            raise FailedPrecondition(f"CNI plugin type `{kind}`: a name, not a path, is expected")
        for folder in self.bin_dirs:
            path = folder / kind
            if os.access(path, os.X_OK):
                return path
        raise FailedPrecondition(f"CNI plugin `{kind}` not found in {':'.join(map(str, self.bin_dirs))}")

    async def _exec(self, command: str, plugin: dict[str, Any], network: Network, sandbox_id: str,
                    netns: str, args: str, prev: dict[str, Any] | None,
                    runtime_config: dict[str, Any]) -> dict[str, Any]:
        conf = dict(plugin, name=network.name, cniVersion=network.cni_version)
        if prev is not None:
            conf["prevResult"] = prev
        wanted = {k: v for k, v in runtime_config.items() if (plugin.get("capabilities") or {}).get(k)}
        if wanted:
            conf["runtimeConfig"] = wanted
        env = {
            "CNI_COMMAND": command, "CNI_CONTAINERID": sandbox_id, "CNI_NETNS": netns, "CNI_IFNAME": IFNAME,
            "CNI_ARGS": args, "CNI_PATH": ":".join(map(str, self.bin_dirs)),
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
        }
        proc = await asyncio.create_subprocess_exec(
            str(self._plugin(plugin["type"])), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        try:
            out, err = await asyncio.wait_for(proc.communicate(json.dumps(conf).encode()), PLUGIN_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise Internal(f"CNI {command} of plugin {plugin['type']}: no answer in {PLUGIN_TIMEOUT:.0f}s") from None
        if proc.returncode != 0:
            try:
                failure = json.loads(out)
                message = f"{failure.get('msg', '')} {failure.get('details', '')}".strip()
            except ValueError:
                message = (out or err).decode(errors="replace").strip()
            raise Internal(f"CNI {command} of plugin {plugin['type']} failed: {message}")
        if command != "ADD" or not out.strip():
            return prev or {}
        try:
            return json.loads(out)
        except ValueError:
            raise Internal(f"CNI ADD of plugin {plugin['type']}: not a JSON result") from None

    async def add(self, network: Network, sandbox_id: str, netns: str, pod_namespace: str, pod_name: str,
                  port_mappings: list[dict[str, Any]]) -> Attachment:
        args = _pod_args(pod_namespace, pod_name, sandbox_id)
        runtime_config = {"portMappings": port_mappings} if port_mappings else {}
        result: dict[str, Any] | None = None
        for plugin in network.plugins:
            result = await self._exec("ADD", plugin, network, sandbox_id, netns, args, result, runtime_config)
        result = result or {}
        ips = [str(entry["address"]).split("/")[0] for entry in result.get("ips") or [] if entry.get("address")]
        return Attachment(ips, result)

    async def delete(self, network: Network, sandbox_id: str, netns: str, pod_namespace: str, pod_name: str,
                     port_mappings: list[dict[str, Any]], prev: dict[str, Any] | None) -> None:
        """DEL through the chain in reverse; every plugin is called even when one fails (the first error is
        raised after), so one broken plugin does not keep the others' addresses and rules."""
        args = _pod_args(pod_namespace, pod_name, sandbox_id)
        runtime_config = {"portMappings": port_mappings} if port_mappings else {}
        first: Exception | None = None
        for plugin in reversed(network.plugins):
            try:
                await self._exec("DEL", plugin, network, sandbox_id, netns, args, prev, runtime_config)
            except Exception as exc:  # noqa: BLE001 - collected, the rest of the chain still runs
                first = first or exc
        if first is not None:
            raise first
