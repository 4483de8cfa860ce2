"""cgroup v2 (unified): one folder, OCI's v1-shaped values converted as runc's fs2 driver does.

Device rules need an eBPF program attached to the folder (BPF_CGROUP_DEVICE); they are skipped
here, as this runtime's hosts run v1 or rely on the container's /dev being built from the spec.
"""

from __future__ import annotations

import errno

from services.common.errors import FailedPrecondition, Internal, InvalidArgument, SkiffError, SyscallError
from services.lowlevel import fastos as os
from services.lowlevel.cgroups.files import (
    CGROUP_ROOT,
    add_pid,
    parse_id_list,
    read_keyed,
    read_optional,
    read_uint,
    remove_tree,
    signal_pids,
    wait_for,
    walk_pids,
    write_file,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_UINT64 = 2**64 - 1
# SIGKILL is 9 on every Linux architecture; spelled out to spare importing ``signal`` per launch.
SIGKILL = 9


# --- conversions from OCI's v1 vocabulary (runc's libcontainer/cgroups/utils.go) ---------------


def cpu_weight(shares: int) -> int:
    """cpu.shares [2..262144] to cpu.weight [1..10000], linearly (0 stays "unset")."""
    if shares == 0:
        return 0
    return 1 + ((shares - 2) * 9999) // 262142


def cpu_max(quota: int, period: int) -> str | None:
    """OCI quota/period to cpu.max "$MAX $PERIOD" ("max" for no quota); None when neither is set."""
    if quota == 0 and period == 0:
        return None
    text = str(quota) if quota > 0 else "max"
    if period:
        text += f" {period}"
    return text


def io_weight(weight: int) -> int:
    """blkio weight [10..1000] to io.weight [1..10000], linearly (0 stays "unset")."""
    if weight == 0:
        return 0
    return 1 + ((weight - 10) * 9999) // 990


def swap_max(swap: int, limit: int) -> int:
    """OCI swap is memory+swap; memory.swap.max is swap alone. -1 is "max", 0 "unset".

    Unlimited memory with swap unset means unlimited swap too (v1 compatibility, as runc).
    """
    if limit == -1 and swap == 0:
        return -1
    if swap in (-1, 0):
        return swap
    if limit in (0, -1):
        raise InvalidArgument("invalid memory swap: a swap limit needs a memory limit")
    if limit < 0:
        raise InvalidArgument(f"invalid memory limit {limit}")
    if swap < limit:
        raise InvalidArgument(f"invalid memory swap {swap}: memory+swap must be >= memory limit {limit}")
    return swap - limit


def _num(value: int) -> str:
    """runc's numToStr: 0 is unset (""), -1 is "max"."""
    if value == 0:
        return ""
    if value == -1:
        return "max"
    return str(value)


class V2Cgroup:
    """A container's folder in the unified hierarchy."""

    version = 2

    def __init__(self, path: str, root: str = CGROUP_ROOT) -> None:
        if not path.startswith(root + "/"):
            raise InvalidArgument(f"cgroup {path!r} is not under {root!r}")
        self.path = path
        self.root = root

    # --- lifecycle -----------------------------------------------------------------------------

    def paths(self) -> dict[str, str]:
        return {"": self.path}

    def create(self) -> None:
        """Make the folder and its parents (idempotent), delegating every available controller
        down each parent's cgroup.subtree_control so that the leaf gets them (runc's
        CreateCgroupPath)."""
        current = self.root
        for part in self.path[len(self.root) + 1 :].split("/"):
            self._enable_controllers(current)
            current = current + "/" + part
            try:
                os.mkdir(current, 0o755)
            except FileExistsError:
                pass
            except OSError as e:
                raise SyscallError("mkdir", current, e.errno) from None

    @staticmethod
    def _enable_controllers(folder: str) -> None:
        available = (read_optional(folder + "/cgroup.controllers") or "").split()
        if not available:
            return
        enabled = set((read_optional(folder + "/cgroup.subtree_control") or "").split())
        missing = [c for c in available if c not in enabled]
        if missing:
            write_file(folder + "/cgroup.subtree_control", " ".join("+" + c for c in missing))

    def add(self, pid: int) -> None:
        add_pid(self.path, pid)

    def destroy(self) -> None:
        remove_tree(self.path)

    # --- tasks ---------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        return walk_pids(self.path)

    def kill_all(self, sig: int) -> None:
        """SIGKILL through cgroup.kill when the kernel has it (5.14+: atomic, no fork race);
        otherwise signal every task while frozen, as runc does."""
        if sig == SIGKILL and os.path.exists(self.path + "/cgroup.kill"):
            write_file(self.path + "/cgroup.kill", "1")
            return
        frozen = False
        if os.path.exists(self.path + "/cgroup.freeze"):
            try:
                self.freeze()
                frozen = True
            except SkiffError:
                # Killing matters more than the race freezing closes: signal anyway.
                frozen = False
        signal_pids(self.pids(), sig)
        if frozen:
            self.thaw()

    def freeze(self) -> None:
        self._freeze_to(True)

    def thaw(self) -> None:
        self._freeze_to(False)

    def frozen(self) -> bool:
        return read_keyed(self.path + "/cgroup.events").get("frozen") == 1

    def _freeze_to(self, frozen: bool) -> None:
        path = self.path + "/cgroup.freeze"
        if not os.path.exists(path):
            raise FailedPrecondition(f"{path} is missing: this kernel has no cgroup v2 freezer")
        write_file(path, "1" if frozen else "0")
        # cgroup.events reports "frozen 1" only once every task has stopped.
        if wait_for(lambda: self.frozen() == frozen):
            return
        if frozen:
            write_file(path, "0")  # a half-frozen container is worse than a running one
        raise Internal(f"{'freeze' if frozen else 'thaw'} {self.path}: cgroup.events did not settle in time")

    def oom_kills(self) -> int:
        return read_keyed(self.path + "/memory.events").get("oom_kill", 0)

    # --- resources -----------------------------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources``; only the sections given cost anything; ``unified``
        goes last so that its raw values win over the converted ones (as runc)."""
        if memory := resources.get("memory"):
            self._set_memory(memory)
        if cpu := resources.get("cpu"):
            self._set_cpu(cpu)
        if (pids := resources.get("pids")) and pids.get("limit"):
            limit = int(pids["limit"])
            write_file(self.path + "/pids.max", str(limit) if limit > 0 else "max")
        if block := resources.get("blockIO"):
            self._set_io(block)
        # devices: v2 enforces them with an eBPF program, not files; not done here (see module doc).
        # hugepageLimits and rdma are accepted and ignored: no caller of ours sets them.
        for key, value in (resources.get("unified") or {}).items():
            if "/" in key or key.startswith(".") or "." not in key:
                raise InvalidArgument(f"invalid linux.resources.unified key {key!r}")
            write_file(self.path + "/" + key, str(value))

    def _set_memory(self, memory: dict[str, Any]) -> None:
        limit = int(memory.get("limit") or 0)
        swap = int(memory.get("swap") or 0)
        converted = swap_max(swap, limit)
        swap_text = _num(converted)
        if not swap_text and converted == 0 and swap > 0:
            swap_text = "0"  # memory == memory+swap: no swap at all
        if swap_text:
            try:
                write_file(self.path + "/memory.swap.max", swap_text)
            except SyscallError as e:
                # Without swap accounting the file is absent; "max" or "0" then mean nothing.
                if not (e.errno == errno.ENOENT and swap_text in ("max", "0")):
                    raise
        if limit_text := _num(limit):
            write_file(self.path + "/memory.max", limit_text)
        if reservation_text := _num(int(memory.get("reservation") or 0)):
            write_file(self.path + "/memory.low", reservation_text)
        # swappiness and disableOOMKiller have no v2 file; kernel/kernelTCP are deprecated. Ignored.

    def _set_cpu(self, cpu: dict[str, Any]) -> None:
        if cpu.get("mems"):
            write_file(self.path + "/cpuset.mems", str(cpu["mems"]))
        if cpu.get("cpus"):
            write_file(self.path + "/cpuset.cpus", str(cpu["cpus"]))
        if weight := cpu_weight(int(cpu.get("shares") or 0)):
            write_file(self.path + "/cpu.weight", str(weight))
        if (limit := cpu_max(int(cpu.get("quota") or 0), int(cpu.get("period") or 0))) is not None:
            write_file(self.path + "/cpu.max", limit)
        if cpu.get("burst") is not None:
            write_file(self.path + "/cpu.max.burst", str(int(cpu["burst"])))
        if cpu.get("idle") is not None:
            write_file(self.path + "/cpu.idle", str(int(cpu["idle"])))
        # realtimeRuntime/realtimePeriod: v2 has no real-time group scheduling; skipped.

    def _set_io(self, block: dict[str, Any]) -> None:
        # With BFQ, io.bfq.weight takes v1's range as is; otherwise io.weight wants [1..10000].
        bfq = os.path.exists(self.path + "/io.bfq.weight")
        if weight := int(block.get("weight") or 0):
            if bfq:
                write_file(self.path + "/io.bfq.weight", str(weight))
            else:
                write_file(self.path + "/io.weight", f"default {io_weight(weight)}")
        for dev in block.get("weightDevice") or ():
            if dev_weight := int(dev.get("weight") or 0):
                if bfq:
                    write_file(self.path + "/io.bfq.weight", f"{dev['major']}:{dev['minor']} {dev_weight}")
                else:
                    text = f"{dev['major']}:{dev['minor']} {io_weight(dev_weight)}"
                    write_file(self.path + "/io.weight", text)
        # leafWeight has no v2 equivalent: ignored.
        for key, name in _IO_MAX_KEYS:
            for dev in block.get(key) or ():
                write_file(self.path + "/io.max", f"{dev['major']}:{dev['minor']} {name}={int(dev['rate'])}")

    # --- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The ``data`` of ``runc events --stats`` in runc's v1-shaped form (fs2's conversions)."""
        return {
            "cpu": self._cpu_stats(),
            "cpuset": self._cpuset_stats(),
            "memory": self._memory_stats(),
            "pids": self._pids_stats(),
            "blkio": self._io_stats(),
            "hugetlb": {},
            "intel_rdt": {},
            "network_interfaces": None,
        }

    def _cpu_stats(self) -> dict[str, Any]:
        stat = read_keyed(self.path + "/cpu.stat")  # microseconds; runc reports nanoseconds
        usage: dict[str, Any] = {}
        if stat.get("usage_usec"):
            usage["total"] = stat["usage_usec"] * 1000
        usage["kernel"] = stat.get("system_usec", 0) * 1000
        usage["user"] = stat.get("user_usec", 0) * 1000
        throttling: dict[str, int] = {}
        for key, name, scale in (
            ("periods", "nr_periods", 1),
            ("throttledPeriods", "nr_throttled", 1),
            ("throttledTime", "throttled_usec", 1000),
        ):
            if stat.get(name):
                throttling[key] = stat[name] * scale
        return {"usage": usage, "throttling": throttling}

    def _cpuset_stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, name in (("cpus", "cpuset.cpus.effective"), ("mems", "cpuset.mems.effective")):
            text = read_optional(self.path + "/" + name)
            if text and text.strip():
                out[key] = parse_id_list(text)
        return out

    def _memory_stats(self) -> dict[str, Any]:
        if not os.path.exists(self.path + "/memory.current"):
            return {}
        raw = read_keyed(self.path + "/memory.stat")
        events = read_keyed(self.path + "/memory.events")
        usage = {"limit": read_uint(self.path + "/memory.max", MAX_UINT64)}
        if current := read_uint(self.path + "/memory.current"):
            usage["usage"] = current
        if peak := read_uint(self.path + "/memory.peak"):
            usage["max"] = peak
        usage["failcnt"] = events.get("max", 0)
        # v1 reports swap as memory+swap: add memory to v2's swap-only numbers, as runc does.
        swap_limit = read_uint(self.path + "/memory.swap.max", MAX_UINT64)
        if swap_limit != MAX_UINT64 and usage["limit"] != MAX_UINT64:
            swap_limit += usage["limit"]
        swap = {"limit": swap_limit}
        if swap_usage := read_uint(self.path + "/memory.swap.current") + current:
            swap["usage"] = swap_usage
        swap["failcnt"] = read_keyed(self.path + "/memory.swap.events").get("max", 0)
        out: dict[str, Any] = {}
        if raw.get("file"):
            out["cache"] = raw["file"]
        out["usage"] = usage
        out["swap"] = swap
        out["kernel"] = {"limit": 0, "failcnt": 0}
        out["kernelTCP"] = {"limit": 0, "failcnt": 0}
        if raw:
            out["raw"] = dict(sorted(raw.items()))  # a Go map: runc prints its keys sorted
        return out

    def _pids_stats(self) -> dict[str, int]:
        out: dict[str, int] = {}
        if current := read_uint(self.path + "/pids.current"):
            out["current"] = current
        limit = read_uint(self.path + "/pids.max")
        if limit and limit != MAX_UINT64:
            out["limit"] = limit
        return out

    def _io_stats(self) -> dict[str, Any]:
        text = read_optional(self.path + "/io.stat")
        if not text:
            return {}
        service_bytes: list[dict[str, Any]] = []
        serviced: list[dict[str, Any]] = []
        for line in text.splitlines():
            fields = line.split()
            if not fields or ":" not in fields[0]:
                continue
            major, _, minor = fields[0].partition(":")
            dev = {"major": int(major), "minor": int(minor)}
            values = dict(f.split("=", 1) for f in fields[1:] if "=" in f)
            for target, key, op in (
                (service_bytes, "rbytes", "Read"),
                (service_bytes, "wbytes", "Write"),
                (serviced, "rios", "Read"),
                (serviced, "wios", "Write"),
            ):
                entry: dict[str, Any] = {k: v for k, v in dev.items() if v}
                entry["op"] = op
                if value := int(values.get(key, "0")):
                    entry["value"] = value
                target.append(entry)
        out: dict[str, Any] = {}
        if service_bytes:
            out["ioServiceBytesRecursive"] = service_bytes
        if serviced:
            out["ioServicedRecursive"] = serviced
        return out


_IO_MAX_KEYS = (
    ("throttleReadBpsDevice", "rbps"),
    ("throttleWriteBpsDevice", "wbps"),
    ("throttleReadIOPSDevice", "riops"),
    ("throttleWriteIOPSDevice", "wiops"),
)
