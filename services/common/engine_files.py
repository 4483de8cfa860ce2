"""The paths in a container's root that belong to the engine, not to the container.

The daemon bind-mounts its own ``/etc/hosts``, ``/etc/hostname`` and ``/etc/resolv.conf`` over these
paths (services/daemon/spec.py), and the runtime creates the mount targets (and ``/proc``, ``/sys``
and ``/dev`` for an image without them) in the container's writable layer. dockerd keeps all of them
in an init layer below the container's own, so ``docker diff`` and ``docker commit`` never show
them; Skiff has no init layer, so highlevel leaves them out of a container's changes instead (and
the folder that holds them when nothing else in it changed).
"""

from __future__ import annotations

# Hidden whatever the change: the container writes through the bind mount, never into its layer.
ENGINE_FILES = ("/etc/hosts", "/etc/hostname", "/etc/resolv.conf")
# Hidden when the runtime added them as mount points (an image without them) and they hold nothing.
MOUNT_POINT_DIRS = ("/proc", "/sys", "/dev")
