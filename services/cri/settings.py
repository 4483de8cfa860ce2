"""skiff-cri's settings: where it keeps its state and listens, and the CNI and cgroup choices (env)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from services.common.paths import Paths

NAMESPACE = "k8s.io"  # highlevel's task namespace and the snapshots' label, as containerd's CRI plugin's
NAMESPACE_LABEL = "skiff.namespace"  # the daemon's reconcile leaves snapshots labelled otherwise than moby
RUNTIME_NAME = "skiff"
RUNTIME_API_VERSION = "v1"
CRI_VERSION = "0.1.0"  # the kubelet-facing version of the runtime API (as containerd answers it)


@dataclass(frozen=True, slots=True)
class CriSettings:
    paths: Paths
    cni_conf_dir: Path
    cni_bin_dirs: tuple[Path, ...]
    cgroup_parent: str  # when a pod names none: below the engine's own parent
    runtime: str  # the OCI runtime of every task ("" : highlevel's default)

    @property
    def socket(self) -> Path:
        return self.paths.run / "cri.sock"

    @property
    def state(self) -> Path:
        """Sandbox and container records (they outlive skiff-cri's restarts)."""
        return self.paths.lib / "cri"

    @property
    def run(self) -> Path:
        """Pinned pod namespaces and the pods' resolv.conf/hosts/hostname (gone with a reboot, as pods)."""
        return self.paths.run / "cri"

    @classmethod
    def from_env(cls, paths: Paths, runtime: str = "") -> CriSettings:
        bins = os.environ.get("SKIFF_CNI_BIN_DIR") or "/usr/lib/cni"
        return cls(
            paths=paths,
            cni_conf_dir=Path(os.environ.get("SKIFF_CNI_CONF_DIR") or "/etc/cni/net.d"),
            cni_bin_dirs=tuple(Path(p) for p in bins.split(":") if p),
            cgroup_parent=os.environ.get("SKIFF_CGROUP_PARENT") or "skiff",
            runtime=runtime,
        )
