"""The process that holds a pod's shared PID namespace: pid 1 of it, doing nothing, without an image.

A pod whose containers share one PID namespace (``shareProcessNamespace``, and proto3's default
POD) needs a first process there that outlives each of them, as the pause container is for
containerd; as that one, every pod has it (in the node's PID namespace for a hostPID pod). skiff-cri
runs no pause image, so it writes its own pause program: a 129-byte static x86-64 executable whose whole code is
``for (;;) pause();`` (no libc, no loader), assembled here from its machine code. It runs as a
highlevel task of the pod (the task id is the pod's id) in an empty, read-only root with the
program bound in at /pause, in the pod's network, IPC and UTS namespaces and a PID namespace of its
own, which the pod's containers then join through ``/proc/<its pid>/ns/pid``. It has no
capabilities, and no_new_privs; it ends with SIGKILL (pid 1 ignores other signals by default).
"""

from __future__ import annotations

import os
import platform
import struct
from pathlib import Path
from typing import Any

from services.common.errors import FailedPrecondition

BASE = 0x400000
# mov eax, 34 (SYS_pause); syscall; jmp back to the mov.
CODE = bytes([0xB8, 0x22, 0x00, 0x00, 0x00, 0x0F, 0x05, 0xEB, 0xF7])


def program() -> bytes:
    """The ELF file: its header, one loadable segment (the file itself), the code."""
    code_offset = 64 + 56
    size = code_offset + len(CODE)
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)  # 64-bit, little endian, version 1, System V
    header = ident + struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, BASE + code_offset, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, BASE, BASE, size, size, 0x1000)  # PT_LOAD, R+X
    return header + segment + CODE


def install(folder: Path) -> Path:
    """``folder/pause`` (the program) and ``folder/root`` (the empty root it runs in); blocking."""
    if platform.machine() not in ("x86_64", "amd64"):
        raise FailedPrecondition(f"a shared PID namespace needs skiff-cri's pause program, written for x86-64 "
                                 f"only (this node is {platform.machine()})")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "pause"
    if not path.exists() or path.read_bytes() != program():
        tmp = folder / "pause.tmp"
        tmp.write_bytes(program())
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)
    root = folder / "root"
    root.mkdir(exist_ok=True)
    (root / "pause").touch(exist_ok=True)
    return path


def spec(program_path: Path, namespaces: list[dict[str, str]], cgroups_path: str, host_pid: bool) -> dict[str, Any]:
    return {
        "ociVersion": "1.0.2",
        "process": {"terminal": False, "user": {"uid": 65534, "gid": 65534}, "args": ["/pause"], "env": [],
                    "cwd": "/", "noNewPrivileges": True,
                    "capabilities": {k: [] for k in ("bounding", "effective", "permitted")}},
        "root": {"path": str(program_path.parent / "root"), "readonly": True},
        "mounts": [{"destination": "/pause", "type": "bind", "source": str(program_path),
                    "options": ["bind", "ro", "nosuid", "nodev"]}],
        "linux": {"namespaces": [*([] if host_pid else [{"type": "pid"}]), {"type": "mount"}, *namespaces],
                  "cgroupsPath": cgroups_path,
                  "resources": {"devices": [{"allow": False, "access": "rwm"}]}},
    }
