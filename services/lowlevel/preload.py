"""The modules a host that runs skiff-lowlevel in-process imports beforehand, once.

The shim's zygote (services/shim/zygote.py) imports these before it forks shims, so every
forked runtime command finds them loaded and shared copy-on-write. Kept here, beside the modules
it names, so that a module renamed or removed breaks the zygote's start loudly (and
tests/unit/test_shim_preload.py) instead of being skipped.
"""

PRELOAD = (
    "cli", "commands", "state", "lifecycle", "create", "mounts", "process", "syscalls", "capabilities",
    "console", "hooks", "spec", "exec", "cgroups", "cgroups.v1", "cgroups.v2", "seccomp",
)
