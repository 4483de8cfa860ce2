"""cgroup v1: one folder per mounted hierarchy, as runc's libcontainer/cgroups/fs.

Which hierarchies a container joins: cpu, cpuacct, cpuset, memory, devices, freezer, blkio, pids,
and hugetlb, net_cls, net_prio, perf_event, rdma and name=systemd when they are mounted, the
set runc's fs driver joins. name=systemd is joined like runc does so that the container's tasks
are accounted under its own folder there too (and a systemd inside the container can find its
cgroup); it costs one mkdir and one write. The cgroup2 mount of a hybrid host
(/sys/fs/cgroup/unified) holds no controllers but is joined too, under the key "" as runc's fs
driver does: a process's cgroup v2 path (the "0::" line of /proc/<pid>/cgroup) is then the
container's, for its init and every exec alike. It is not mounted inside the container, as
runc mounts only the v1 hierarchies there. Co-mounted controllers ("cpu,cpuacct") share one
folder, which is made, joined and removed once.
"""

from __future__ import annotations

import errno

from services.common.errors import FailedPrecondition, Internal, InvalidArgument, SkiffError, SyscallError
from services.lowlevel import fastos as os
from services.lowlevel.cgroups.files import (
    add_pid,
    device_rule,
    parse_id_list,
    read_file,
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

JOINED = frozenset(
    (
        "cpu",
        "cpuacct",
        "cpuset",
        "memory",
        "devices",
        "freezer",
        "blkio",
        "pids",
        "hugetlb",
        "net_cls",
        "net_prio",
        "perf_event",
        "rdma",
        "name=systemd",
    )
)

# The key of a hybrid host's cgroup2 hierarchy, as in runc's cgroup_paths.
UNIFIED = ""
HYBRID_UNIFIED_MOUNT = "/sys/fs/cgroup/unified"

# The hierarchy whose cgroup.procs answers "which tasks" (any joined one would do; these are the
# ones every container has).
_PIDS_FROM = ("freezer", "pids", "memory", "devices", "cpu")


def v1_mounts(mountinfo: str = "/proc/self/mountinfo") -> dict[str, str]:
    """Controller name -> mount point of each v1 hierarchy we join (first mount wins)."""
    mounts: dict[str, str] = {}
    for line in read_file(mountinfo).splitlines():
        head, sep, tail = line.partition(" - ")
        if not sep:
            continue
        if tail.startswith("cgroup2 "):
            # A hybrid host's unified hierarchy, where runc looks for it (a cgroup2 mounted
            # elsewhere is someone else's business).
            if head.split(" ")[4] == HYBRID_UNIFIED_MOUNT:
                mounts[UNIFIED] = HYBRID_UNIFIED_MOUNT
            continue
        if not tail.startswith("cgroup "):
            continue
        fields = head.split(" ")
        # Mount points escape spaces as \040; cgroup mount points never have them in practice.
        mount_point = fields[4].replace("\\040", " ")
        options = tail.split(" ")[2].split(",") if tail.count(" ") >= 2 else []
        for option in options:
            if option in JOINED and option not in mounts:
                mounts[option] = mount_point
    return mounts


class V1Cgroup:
    """A container's folders in every joined v1 hierarchy."""

    version = 1

    def __init__(self, relpath: str, mounts: dict[str, str]) -> None:
        self.relpath = relpath
        self._dirs = {name: mount + relpath for name, mount in mounts.items()}
        self._mounts = dict(mounts)
        # Unique folders: co-mounted controllers appear once.
        self._unique = list(dict.fromkeys(self._dirs.values()))

    # --- lifecycle -----------------------------------------------------------------------------

    def paths(self) -> dict[str, str]:
        """Hierarchy name -> this cgroup's host folder (runc's cgroup_paths keys)."""
        return dict(self._dirs)

    def create(self) -> None:
        """Make every folder (idempotent); cpuset folders get the parent's cpus/mems when empty."""
        cpuset = self._dirs.get("cpuset")
        for folder in self._unique:
            if folder == cpuset:
                self._create_cpuset(self._mounts["cpuset"])
            else:
                _mkdirs(folder)

    def _create_cpuset(self, mount: str) -> None:
        # A v1 cpuset folder starts with empty cpus/mems and refuses tasks until they are set,
        # so each level we walk through inherits its parent's values (runc's ensureParent).
        parent = mount
        for part in self.relpath[1:].split("/"):
            folder = parent + "/" + part
            _mkdir(folder)
            for name in ("cpuset.cpus", "cpuset.mems"):
                if not read_file(folder + "/" + name).strip():
                    write_file(folder + "/" + name, read_file(parent + "/" + name).strip())
            parent = folder

    def add(self, pid: int) -> None:
        """Move ``pid`` (and its threads) into every joined hierarchy."""
        for folder in self._unique:
            add_pid(folder, pid)

    def destroy(self) -> None:
        """Remove every folder (and sub-folders); a missing one is fine. Raises the first failure
        only after trying every hierarchy, so one busy folder does not leak the others."""
        first: SkiffError | None = None
        for folder in self._unique:
            try:
                remove_tree(folder)
            except SkiffError as e:
                first = first or e
        if first is not None:
            raise first

    # --- tasks ---------------------------------------------------------------------------------

    def pids(self) -> list[int]:
        return walk_pids(self._pids_dir())

    def _pids_dir(self) -> str:
        for name in _PIDS_FROM:
            if name in self._dirs:
                return self._dirs[name]
        if not self._unique:
            raise FailedPrecondition("no cgroup v1 hierarchy is mounted")
        return self._unique[0]

    def kill_all(self, sig: int) -> None:
        """Signal every task, frozen meanwhile (as runc) so that none forks a child we miss."""
        frozen = False
        if "freezer" in self._dirs and os.path.isdir(self._dirs["freezer"]):
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
        self._freezer_to("FROZEN")

    def thaw(self) -> None:
        self._freezer_to("THAWED")

    def frozen(self) -> bool:
        return self._freezer_state() == "FROZEN"

    def _freezer_state(self) -> str:
        return read_file(self._need("freezer") + "/freezer.state").strip()

    def _freezer_to(self, state: str) -> None:
        # FREEZING can linger while tasks are in uninterruptible sleep; the kernel only retries
        # on a new write, so the state is written again every few polls (as runc does).
        path = self._need("freezer") + "/freezer.state"
        write_file(path, state)
        if wait_for(lambda: self._freezer_state() == state, retry=lambda: write_file(path, state)):
            return
        last = self._freezer_state()
        if state == "FROZEN":
            write_file(path, "THAWED")  # a half-frozen container is worse than a running one
        raise Internal(f"{state.lower()} {path}: still {last} after the deadline")

    def oom_kills(self) -> int:
        return read_keyed(self._need("memory") + "/memory.oom_control").get("oom_kill", 0)

    # --- resources -----------------------------------------------------------------------------

    def set(self, resources: dict[str, Any]) -> None:
        """Apply OCI ``linux.resources``; only the sections given cost anything."""
        if memory := resources.get("memory"):
            self._set_memory(memory)
        if cpu := resources.get("cpu"):
            self._set_cpu(cpu)
        if (pids := resources.get("pids")) and pids.get("limit"):
            limit = int(pids["limit"])
            write_file(self._need("pids") + "/pids.max", str(limit) if limit > 0 else "max")
        if block := resources.get("blockIO"):
            self._set_blkio(block)
        if (devices := resources.get("devices")) is not None:
            self._set_devices(devices)
        if network := resources.get("network"):
            self._set_network(network)
        if resources.get("unified"):
            raise InvalidArgument("invalid configuration: cannot use unified on cgroup v1")
        # hugepageLimits and rdma are accepted and ignored: no caller of ours sets them.

    def _set_memory(self, memory: dict[str, Any]) -> None:
        folder = self._need("memory")
        limit = int(memory.get("limit") or 0)
        swap = int(memory.get("swap") or 0)
        memsw = folder + "/memory.memsw.limit_in_bytes"
        if limit == -1 and swap == 0 and os.path.exists(memsw):
            swap = -1  # runc: unlimited memory with swap unset means unlimited swap as well
        if limit and swap:
            # The kernel keeps limit <= memsw at every step, so the order depends on direction.
            current = read_uint(folder + "/memory.limit_in_bytes")
            if swap == -1 or current < swap:
                write_file(memsw, str(swap))
                write_file(folder + "/memory.limit_in_bytes", str(limit))
            else:
                write_file(folder + "/memory.limit_in_bytes", str(limit))
                write_file(memsw, str(swap))
        elif limit:
            write_file(folder + "/memory.limit_in_bytes", str(limit))
        elif swap:
            write_file(memsw, str(swap))
        if reservation := memory.get("reservation"):
            write_file(folder + "/memory.soft_limit_in_bytes", str(int(reservation)))
        swappiness = memory.get("swappiness")
        if swappiness is not None and int(swappiness) != -1:
            if not 0 <= int(swappiness) <= 100:
                raise InvalidArgument(f"invalid memory swappiness {swappiness}: must be 0..100")
            write_file(folder + "/memory.swappiness", str(int(swappiness)))
        if memory.get("disableOOMKiller"):
            write_file(folder + "/memory.oom_control", "1")
        # kernel and kernelTCP are deprecated by the kernel and ignored, as recent runc does.

    def _set_cpu(self, cpu: dict[str, Any]) -> None:
        if cpu.get("cpus") or cpu.get("mems"):
            folder = self._need("cpuset")
            if cpu.get("mems"):
                write_file(folder + "/cpuset.mems", str(cpu["mems"]))
            if cpu.get("cpus"):
                write_file(folder + "/cpuset.cpus", str(cpu["cpus"]))
        keys = ("shares", "quota", "period", "burst", "realtimeRuntime", "realtimePeriod", "idle")
        if not any(cpu.get(k) is not None for k in keys):
            return
        folder = self._need("cpu")
        if shares := cpu.get("shares"):
            write_file(folder + "/cpu.shares", str(int(shares)))
        quota = int(cpu.get("quota") or 0)
        period = int(cpu.get("period") or 0)
        retry_period = False
        if period:
            try:
                write_file(folder + "/cpu.cfs_period_us", str(period))
            except SyscallError as e:
                # A smaller period can be refused (EINVAL) while the old quota/new period ratio
                # exceeds the parent's; writing the quota first then the period again succeeds.
                if e.errno != errno.EINVAL or not quota:
                    raise
                retry_period = True
        if quota:
            write_file(folder + "/cpu.cfs_quota_us", str(quota if quota > 0 else -1))
            if retry_period:
                write_file(folder + "/cpu.cfs_period_us", str(period))
        if cpu.get("burst") is not None:
            write_file(folder + "/cpu.cfs_burst_us", str(int(cpu["burst"])))
        # Real-time budgets exist only with CONFIG_RT_GROUP_SCHED: skip when the files are absent.
        # The period goes first so that the runtime is checked against the new period.
        for key, name in (("realtimePeriod", "cpu.rt_period_us"), ("realtimeRuntime", "cpu.rt_runtime_us")):
            if cpu.get(key):
                path = folder + "/" + name
                if os.path.exists(path):
                    write_file(path, str(int(cpu[key])))
        if cpu.get("idle") is not None:
            write_file(folder + "/cpu.idle", str(int(cpu["idle"])))

    def _set_blkio(self, block: dict[str, Any]) -> None:
        folder = self._need("blkio")
        # CFQ is gone from modern kernels; BFQ offers blkio.bfq.weight(_device) instead.
        cfq = os.path.exists(folder + "/blkio.weight")
        weight_file = "/blkio.weight" if cfq else "/blkio.bfq.weight"
        weight_device_file = "/blkio.weight_device" if cfq else "/blkio.bfq.weight_device"
        if weight := block.get("weight"):
            write_file(folder + weight_file, str(int(weight)))
        if (leaf := block.get("leafWeight")) and cfq:
            # Leaf weights are CFQ-only; BFQ has no equivalent, so they are skipped there.
            write_file(folder + "/blkio.leaf_weight", str(int(leaf)))
        for dev in block.get("weightDevice") or ():
            if dev.get("weight"):
                write_file(folder + weight_device_file, f"{dev['major']}:{dev['minor']} {int(dev['weight'])}")
            if dev.get("leafWeight") and cfq:
                leaf_text = f"{dev['major']}:{dev['minor']} {int(dev['leafWeight'])}"
                write_file(folder + "/blkio.leaf_weight_device", leaf_text)
        for key, name in _THROTTLE_FILES:
            for dev in block.get(key) or ():
                write_file(folder + "/" + name, f"{dev['major']}:{dev['minor']} {int(dev['rate'])}")

    def _set_devices(self, rules: list[dict[str, Any]]) -> None:
        # runc's semantics: start from deny-all, then apply the rules in order. (runc computes a
        # minimal transition to avoid a moment of deny-all on update; a new container has no
        # tasks using devices yet, and an update is rare, so the simple order is kept.)
        folder = self._need("devices")
        write_file(folder + "/devices.deny", "a")
        for rule in rules:
            text = device_rule(rule)
            if text is None:
                continue
            write_file(folder + ("/devices.allow" if rule.get("allow") else "/devices.deny"), text)

    def _set_network(self, network: dict[str, Any]) -> None:
        if network.get("classID") is not None:
            write_file(self._need("net_cls") + "/net_cls.classid", str(int(network["classID"])))
        for prio in network.get("priorities") or ():
            text = f"{prio['name']} {int(prio['priority'])}"
            write_file(self._need("net_prio") + "/net_prio.ifpriomap", text)

    def _need(self, name: str) -> str:
        try:
            return self._dirs[name]
        except KeyError:
            raise FailedPrecondition(f"cgroup v1 controller {name!r} is not mounted on this host") from None

    # --- stats ---------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """The ``data`` of ``runc events --stats`` (runc's types/events.go, omitempty honoured)."""
        return {
            "cpu": self._cpu_stats(),
            "cpuset": self._cpuset_stats(),
            "memory": self._memory_stats(),
            "pids": self._pids_stats(),
            "blkio": self._blkio_stats(),
            "hugetlb": {},
            "intel_rdt": {},
            "network_interfaces": None,
        }

    def _cpu_stats(self) -> dict[str, Any]:
        usage: dict[str, Any] = {}
        throttling: dict[str, int] = {}
        acct = self._dirs.get("cpuacct")
        if acct is not None:
            if total := read_uint(acct + "/cpuacct.usage"):
                usage["total"] = total
            for key, name in (
                ("percpu", "cpuacct.usage_percpu"),
                ("percpu_kernel", "cpuacct.usage_percpu_sys"),
                ("percpu_user", "cpuacct.usage_percpu_user"),
            ):
                text = read_optional(acct + "/" + name)
                if text and text.split():
                    usage[key] = [int(v) for v in text.split()]
            # cpuacct.stat counts USER_HZ ticks; runc reports nanoseconds.
            ticks = read_keyed(acct + "/cpuacct.stat")
            ns_per_tick = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
            usage["kernel"] = ticks.get("system", 0) * ns_per_tick
            usage["user"] = ticks.get("user", 0) * ns_per_tick
        else:
            usage.update(kernel=0, user=0)
        cpu = self._dirs.get("cpu")
        if cpu is not None:
            stat = read_keyed(cpu + "/cpu.stat")
            for key, name in (
                ("periods", "nr_periods"),
                ("throttledPeriods", "nr_throttled"),
                ("throttledTime", "throttled_time"),
            ):
                if stat.get(name):
                    throttling[key] = stat[name]
        return {"usage": usage, "throttling": throttling}

    def _cpuset_stats(self) -> dict[str, Any]:
        folder = self._dirs.get("cpuset")
        if folder is None:
            return {}
        out: dict[str, Any] = {}
        for key, name in (("cpus", "cpuset.cpus"), ("mems", "cpuset.mems")):
            text = read_optional(folder + "/" + name)
            if text and text.strip():
                out[key] = parse_id_list(text)
        for key in (
            "cpu_exclusive",
            "mem_hardwall",
            "mem_exclusive",
            "memory_migrate",
            "memory_spread_page",
            "memory_spread_slab",
            "memory_pressure",
            "sched_load_balance",
            "sched_relax_domain_level",
        ):
            text = read_optional(folder + "/cpuset." + key)
            out[key] = int(text) if text and text.strip().lstrip("-").isdigit() else 0
        # runc's order (its CpusetStats struct): cpus, cpu_exclusive, mems, then the rest.
        return {**{k: out[k] for k in ("cpus", "cpu_exclusive", "mems") if k in out}, **out}

    def _memory_stats(self) -> dict[str, Any]:
        folder = self._dirs.get("memory")
        if folder is None:
            return {}
        raw = read_keyed(folder + "/memory.stat")
        out: dict[str, Any] = {}
        if raw.get("cache"):
            out["cache"] = raw["cache"]
        for key, infix in _MEMORY_ENTRIES:
            out[key] = _memory_entry(folder + "/memory." + infix)
        if raw:
            out["raw"] = dict(sorted(raw.items()))  # a Go map: runc prints its keys sorted
        return out

    def _pids_stats(self) -> dict[str, int]:
        folder = self._dirs.get("pids")
        if folder is None:
            return {}
        out: dict[str, int] = {}
        if current := read_uint(folder + "/pids.current"):
            out["current"] = current
        limit = read_uint(folder + "/pids.max")
        if limit and limit != 2**64 - 1:  # "max" is no limit: runc reports 0, omitted
            out["limit"] = limit
        return out

    def _blkio_stats(self) -> dict[str, Any]:
        folder = self._dirs.get("blkio")
        if folder is None:
            return {}
        # Prefer the scheduler's own counters (CFQ, then BFQ); fall back to the throttle layer's,
        # which count every I/O whatever the scheduler, as runc does.
        for prefix in ("blkio.", "blkio.bfq.", "blkio.throttle."):
            service_bytes = _blkio_entries(folder + "/" + prefix + "io_service_bytes_recursive")
            serviced = _blkio_entries(folder + "/" + prefix + "io_serviced_recursive")
            if service_bytes or serviced:
                out: dict[str, Any] = {}
                if service_bytes:
                    out["ioServiceBytesRecursive"] = service_bytes
                if serviced:
                    out["ioServicedRecursive"] = serviced
                return out
        return {}


_MEMORY_ENTRIES = (("usage", ""), ("swap", "memsw."), ("kernel", "kmem."), ("kernelTCP", "kmem.tcp."))

_THROTTLE_FILES = (
    ("throttleReadBpsDevice", "blkio.throttle.read_bps_device"),
    ("throttleWriteBpsDevice", "blkio.throttle.write_bps_device"),
    ("throttleReadIOPSDevice", "blkio.throttle.read_iops_device"),
    ("throttleWriteIOPSDevice", "blkio.throttle.write_iops_device"),
)


def _memory_entry(prefix: str) -> dict[str, int]:
    """runc's MemoryEntry from memory.[memsw.|kmem.]{limit_in_bytes,usage_in_bytes,...}."""
    entry = {"limit": read_uint(prefix + "limit_in_bytes")}
    if usage := read_uint(prefix + "usage_in_bytes"):
        entry["usage"] = usage
    if peak := read_uint(prefix + "max_usage_in_bytes"):
        entry["max"] = peak
    entry["failcnt"] = read_uint(prefix + "failcnt")
    return entry


def _blkio_entries(path: str) -> list[dict[str, Any]]:
    """Lines "8:0 Read 4096" as runc's BlkioEntry (the trailing "Total N" line is dropped)."""
    text = read_optional(path)
    entries: list[dict[str, Any]] = []
    if not text:
        return entries
    for line in text.splitlines():
        fields = line.split()
        if len(fields) != 3 or ":" not in fields[0]:
            continue
        major, _, minor = fields[0].partition(":")
        entry: dict[str, Any] = {}
        if int(major):
            entry["major"] = int(major)
        if int(minor):
            entry["minor"] = int(minor)
        entry["op"] = fields[1]
        if int(fields[2]):
            entry["value"] = int(fields[2])
        entries.append(entry)
    return entries


def _mkdir(path: str) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        pass
    except OSError as e:
        raise SyscallError("mkdir", path, e.errno) from None


def _mkdirs(path: str) -> None:
    try:
        os.makedirs(path, 0o755, exist_ok=True)
    except OSError as e:
        raise SyscallError("mkdir", path, e.errno) from None
