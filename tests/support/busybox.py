"""Root filesystems and OCI bundles built from Debian's busybox-static, for every test layer."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")

PASSWD = """root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
skiff:x:1000:1000:skiff test user:/home/skiff:/bin/sh
"""
GROUP = """root:x:0:
daemon:x:1:
tty:x:5:
users:x:100:skiff
skiff:x:1000:
nogroup:x:65534:
"""

_applets: list[str] | None = None


def busybox_applets() -> list[str]:
    global _applets
    if _applets is None:
        out = subprocess.run([str(BUSYBOX), "--list"], check=True, capture_output=True, text=True, timeout=10)
        _applets = [a for a in out.stdout.split() if a and a != "busybox"]
    return _applets


def build_rootfs(dest: Path) -> Path:
    """A minimal Linux root: busybox with its applet links, /etc/passwd and /etc/group."""
    if not BUSYBOX.exists():
        raise FileNotFoundError("busybox-static is not installed (/bin/busybox missing)")
    for d in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "proc", "sys", "dev", "root", "home/skiff", "var"):
        (dest / d).mkdir(parents=True, exist_ok=True)
    os.chmod(dest / "tmp", 0o1777)
    shutil.copy2(BUSYBOX, dest / "bin" / "busybox")
    for applet in busybox_applets():
        link = dest / "bin" / applet
        if not link.exists():
            link.symlink_to("busybox")
    (dest / "etc" / "passwd").write_text(PASSWD)
    (dest / "etc" / "group").write_text(GROUP)
    (dest / "etc" / "hostname").write_text("skiff\n")
    return dest


def default_spec(args: list[str], *, terminal: bool = False) -> dict[str, Any]:
    from services.lowlevel.spec import default_spec as runtime_default_spec

    spec = copy.deepcopy(runtime_default_spec())
    spec["process"]["args"] = args
    spec["process"]["terminal"] = terminal
    return spec


def make_bundle(bundle: Path, args: list[str], *, spec: dict[str, Any] | None = None, terminal: bool = False) -> Path:
    """A bundle folder: ``rootfs/`` from busybox and ``config.json`` (runc's default spec unless given)."""
    bundle.mkdir(parents=True, exist_ok=True)
    build_rootfs(bundle / "rootfs")
    write_spec(bundle, spec if spec is not None else default_spec(args, terminal=terminal))
    return bundle


def write_spec(bundle: Path, spec: dict[str, Any]) -> None:
    (bundle / "config.json").write_text(json.dumps(spec, indent=2))


def docker_archive(out: Path, workdir: Path, tag: str = "busybox:latest") -> Path:
    """A one-layer busybox image in ``docker save``'s classic layout, which dockerd and Skiff load."""
    rootfs = build_rootfs(workdir)
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        tar.add(rootfs, arcname=".")
    layer_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_bytes).hexdigest()
    config = json.dumps({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Cmd": ["sh"], "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "busybox-static from Debian"}],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_name = f"{diff_id[7:]}/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": [layer_name]}]).encode()
    with tarfile.open(out, "w") as tar:
        for name, data in ((config_name, config), (layer_name, layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return out
