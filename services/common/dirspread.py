"""The Orlov allocator's hint for a folder of unrelated subfolders (ext2/3/4's ``chattr +T``).

Each container's folder and each snapshot's lives in a parent that holds thousands over time. ext4
places a new subfolder, and then every file in it, in its parent's block group; there, every
inode freed in the last minutes (a removed container's, a replaced record's) is skipped one by one
by each allocation on a file system without a journal (``recently_deleted``), and a burst of
launches after a burst of removals spent 12% of the machine's CPU in that scan. With the parent
marked a top directory (``FS_TOPDIR_FL``, what ``chattr +T`` sets, as on /home), ext4 spreads
its subfolders over the groups with the fewest folders, so a new container's inodes are not
allocated among a removed one's. Other file systems have no such flag: nothing changes there.
"""

from __future__ import annotations

import array
import fcntl
import os
from pathlib import Path

FS_IOC_GETFLAGS = 0x80086601  # _IOR('f', 1, long)
FS_IOC_SETFLAGS = 0x40086602  # _IOW('f', 2, long)
FS_TOPDIR_FL = 0x00020000


def spread_subfolders(folder: Path) -> bool:
    """Marks ``folder`` (made if missing) a top directory; False where its file system has no such flag."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        flags = array.array("i", [0])
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, flags, True)
        if not flags[0] & FS_TOPDIR_FL:
            flags[0] |= FS_TOPDIR_FL
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, flags, True)
        return True
    except OSError:  # ENOTTY/EOPNOTSUPP (tmpfs, overlay, ...), EPERM on an immutable folder: a hint only
        return False
    finally:
        os.close(fd)
