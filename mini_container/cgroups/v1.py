"""The cgroup v1 backend: one hierarchy per controller, so one directory per controller per container.

On v1 each controller is its own tree (/sys/fs/cgroup/memory, /sys/fs/cgroup/cpu, ...), and a
process has an independent place in each: a container is the directory `<parent>/mini-container/NAME`
created in every tree, and `add` writes the pid into each of them. A hybrid host also gets the
directory in the v2 tree (no controllers there, but PSI files and process tracking).

The files, by controller (all in the container's directory of that controller's tree):

    memory   memory.limit_in_bytes, memory.memsw.limit_in_bytes (memory+swap), memory.usage_in_bytes,
             memory.stat (total_inactive_file), memory.failcnt, memory.oom_control (oom_kill)
    cpu      cpu.cfs_quota_us (-1 = no limit), cpu.cfs_period_us, cpu.shares, cpu.stat (throttling)
    cpuacct  cpuacct.usage, cpuacct.usage_user, cpuacct.usage_sys (ns)
    cpuset   cpuset.cpus, cpuset.mems
    pids     pids.max, pids.current, pids.events
    blkio    blkio.weight (CFQ) or blkio.bfq.weight (BFQ), blkio.throttle.{read,write}_{bps,iops}_device,
             blkio.throttle.io_service_bytes_recursive
    freezer  freezer.state: write FROZEN or THAWED; reads FREEZING while tasks are still being stopped

Traps of v1:
- memory.memsw.* exists only with swap accounting (CONFIG_MEMCG_SWAP, and `swapaccount=1` on older
  kernels); memsw is memory+swap together and may never be below memory.limit_in_bytes, so the order
  of the two writes depends on whether the limits grow or shrink. It is charged before memory, so
  with memsw equal to the memory limit, memsw is the limit reached, and this kernel does not count
  memsw failures: memory.failcnt stays 0 while the OOM killer works.
- a new cpuset cgroup starts with empty cpuset.cpus and cpuset.mems, and adding a process to it fails
  with ENOSPC until both are set: the engine copies them from the parent.
- writing a memory limit below usage makes the kernel try to reclaim, then fail with EBUSY.
- freezing is asynchronous: freezer.state says FREEZING until every task has stopped (a task in an
  uninterruptible sleep can keep it there), so the engine polls until it reads FROZEN. A frozen task
  shows state D in /proc/PID/stat and does not die of SIGKILL until it is thawed.
- killing all processes means reading cgroup.procs and signalling each: the engine freezes the
  cgroup first so nothing forks in between, signals, then thaws so the SIGKILLs are delivered.
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from .base import Cgroup, make_container_dir, rollback
from .detect import Hierarchy, Layout
from .files import CgroupError, read, read_int, read_keyed, read_optional, wait_for, write
from .limits import DeviceThrottle, Limits
from .stats import Stats, read_pressures, working_set

CONTROLLERS = ("memory", "cpu", "cpuacct", "cpuset", "pids", "blkio", "freezer")
CONTROLLER_FOR = {"memory": "memory", "cpu": "cpu", "pids": "pids", "io": "blkio", "cpuset": "cpuset"}
THROTTLE_FILES = {
    "read_bps": "blkio.throttle.read_bps_device",
    "write_bps": "blkio.throttle.write_bps_device",
    "read_iops": "blkio.throttle.read_iops_device",
    "write_iops": "blkio.throttle.write_iops_device",
}


def _inherit_cpuset(directory: Path) -> None:
    """Copy cpuset.cpus and cpuset.mems from the parent into a new, empty v1 cpuset cgroup."""
    for name in ("cpuset.cpus", "cpuset.mems"):
        if read(directory / name):
            continue
        value = read(directory.parent / name)
        if not value:
            raise CgroupError(f"{directory.parent / name} is empty, so no process could run below it: "
                              f"set it first (copy it from its own parent)")
        write(directory / name, value)


class V1Cgroup(Cgroup):
    """A container's cgroup on the v1 hierarchies (and, on a hybrid host, in the v2 tree too)."""

    version = 1

    @classmethod
    def hierarchies(cls, layout: Layout) -> dict[str, Hierarchy]:
        found = {name: layout.v1[name] for name in CONTROLLERS if name in layout.v1}
        if layout.v2 is not None:
            found["unified"] = layout.v2
        return found

    @classmethod
    def create(cls, name: str, limits: Limits, layout: Layout, parent: str | None = None,
               path: str | None = None) -> Self:
        missing = sorted({CONTROLLER_FOR[resource] for resource in limits.resources()} - layout.v1.keys())
        if missing:
            raise CgroupError(f"the limits need the cgroup v1 controller(s) {', '.join(missing)}, which this "
                              f"host does not mount (it has {', '.join(sorted(layout.v1)) or 'none'}): mount "
                              f"them (mount -t cgroup -o {missing[0]} cgroup /sys/fs/cgroup/{missing[0]}) "
                              f"or drop those limits")
        cgroup = cls.at(name, layout, parent, path)
        created: list[Path] = []
        try:
            for leaf in cgroup.directories():
                made = make_container_dir(leaf, parents=path is not None)
                created += made
                for directory in made:  # the new parents (the subtree) first, then the container
                    if (directory / "cpuset.cpus").exists():
                        _inherit_cpuset(directory)
            cgroup.set_limits(limits)
        except BaseException:
            rollback(created)
            raise
        return cgroup

    def _file(self, controller: str, name: str) -> Path:
        if controller not in self.dirs:
            raise CgroupError(f"the cgroup v1 {controller} controller is not mounted on this host, so "
                              f"{name} is not available: mount it at /sys/fs/cgroup/{controller}")
        return self.dirs[controller] / name

    def _int(self, controller: str, name: str) -> int | None:
        return read_int(self.dirs[controller] / name) if controller in self.dirs else None

    def _keyed(self, controller: str, name: str) -> dict[str, int]:
        return read_keyed(self.dirs[controller] / name) if controller in self.dirs else {}

    # --- limits -----------------------------------------------------------------------------------
    def set_limits(self, limits: Limits) -> None:
        if limits.memory_max is not None:
            self._set_memory(limits.memory_max, limits.memory_swap_max)
        if limits.cpu_quota_us is not None:
            write(self._file("cpu", "cpu.cfs_period_us"), str(limits.cpu_period_us))
            write(self._file("cpu", "cpu.cfs_quota_us"), str(limits.cpu_quota_us),
                  " (a child's quota may not exceed its parent's)")
        if limits.cpu_shares is not None:
            write(self._file("cpu", "cpu.shares"), str(limits.cpu_shares))
        if limits.pids_max is not None:
            write(self._file("pids", "pids.max"), str(limits.pids_max))
        if limits.io_weight is not None:
            write(self._weight_file(), str(limits.io_weight))
        for throttle in limits.io_throttles:
            for rate, value in throttle.rates().items():
                write(self._file("blkio", THROTTLE_FILES[rate]), f"{throttle.device} {value}",
                      " (throttles take a whole disk's MAJ:MIN, not a partition's)")
        if limits.cpuset_cpus is not None:
            write(self._file("cpuset", "cpuset.cpus"), limits.cpuset_cpus,
                  " (the CPUs must exist and be in the parent's cpuset.cpus)")
        if limits.cpuset_mems is not None:
            write(self._file("cpuset", "cpuset.mems"), limits.cpuset_mems,
                  " (the memory nodes must exist and be in the parent's cpuset.mems)")

    def _set_memory(self, memory_max: int, swap_max: int | None) -> None:
        limit_file = self._file("memory", "memory.limit_in_bytes")
        self._check_memory_not_below_usage(memory_max, self._int("memory", "memory.usage_in_bytes"))
        hint = " (the kernel could not reclaim enough to go below the new limit, or memsw is lower)"
        if swap_max is None:
            write(limit_file, str(memory_max), hint)
            return
        memsw_file = self._file("memory", "memory.memsw.limit_in_bytes")
        if not memsw_file.exists():
            raise CgroupError(f"a swap limit needs swap accounting, but {memsw_file} does not exist: boot "
                              f"with swapaccount=1 (CONFIG_MEMCG_SWAP), or drop the swap limit")
        total, current = memory_max + swap_max, read_int(limit_file)
        # memory.limit_in_bytes <= memory.memsw.limit_in_bytes must hold after each write.
        order = [(memsw_file, total), (limit_file, memory_max)]
        if current is None or total < current:
            order.reverse()
        for path, value in order:
            write(path, str(value), hint)

    def _weight_file(self) -> Path:
        for name in ("blkio.weight", "blkio.bfq.weight"):
            path = self._file("blkio", name)
            if path.exists():
                return path
        raise CgroupError(f"no I/O weight file in {self.dirs['blkio']}: weights need the BFQ I/O scheduler "
                          f"(CONFIG_BFQ_GROUP_IOSCHED) or CFQ's blkio.weight; drop the I/O weight")

    def limits(self) -> Limits:
        memory_max = self._int("memory", "memory.limit_in_bytes")
        memsw = self._int("memory", "memory.memsw.limit_in_bytes")
        weight = self._int("blkio", "blkio.weight") or self._int("blkio", "blkio.bfq.weight")
        return Limits(
            memory_max=memory_max,
            memory_swap_max=memsw - memory_max if memsw is not None and memory_max is not None else None,
            cpu_quota_us=self._int("cpu", "cpu.cfs_quota_us"),
            cpu_period_us=self._int("cpu", "cpu.cfs_period_us") or 100_000,
            cpu_shares=self._int("cpu", "cpu.shares"),
            pids_max=self._int("pids", "pids.max"),
            io_weight=weight,
            io_throttles=self._throttles(),
            cpuset_cpus=self._text("cpuset", "cpuset.cpus"),
            cpuset_mems=self._text("cpuset", "cpuset.mems"),
        )

    def _text(self, controller: str, name: str) -> str | None:
        return (read_optional(self.dirs[controller] / name) or None) if controller in self.dirs else None

    def _throttles(self) -> tuple[DeviceThrottle, ...]:
        rates: dict[str, dict[str, int]] = {}
        for rate, name in THROTTLE_FILES.items():
            for line in (self._text("blkio", name) or "").splitlines():
                device, value = line.split()
                rates.setdefault(device, {})[rate] = int(value)
        return tuple(DeviceThrottle(device, **values) for device, values in sorted(rates.items()))

    # --- usage ------------------------------------------------------------------------------------
    def stats(self) -> Stats:
        cpu = self._keyed("cpu", "cpu.stat")
        memory = self._keyed("memory", "memory.stat")
        usage = self._int("memory", "memory.usage_in_bytes")
        io = {"Read": 0, "Write": 0}
        for line in (self._text("blkio", "blkio.throttle.io_service_bytes_recursive") or "").splitlines():
            fields = line.split()
            if len(fields) == 3 and fields[1] in io:
                io[fields[1]] += int(fields[2])
        return Stats(
            cpu_usage_ns=self._int("cpuacct", "cpuacct.usage"),
            cpu_user_ns=self._int("cpuacct", "cpuacct.usage_user"),
            cpu_system_ns=self._int("cpuacct", "cpuacct.usage_sys"),
            cpu_periods=cpu.get("nr_periods"),
            cpu_throttled_periods=cpu.get("nr_throttled"),
            cpu_throttled_ns=cpu.get("throttled_time"),
            memory_usage_bytes=usage,
            memory_limit_bytes=self._int("memory", "memory.limit_in_bytes"),
            memory_working_set_bytes=working_set(usage, memory.get("total_inactive_file")),
            memory_limit_hits=self._limit_hits(),
            oom_kills=self._keyed("memory", "memory.oom_control").get("oom_kill"),
            pids_current=self._int("pids", "pids.current"),
            pids_max=self._int("pids", "pids.max"),
            pids_limit_hits=self._keyed("pids", "pids.events").get("max"),
            io_read_bytes=io["Read"] if "blkio" in self.dirs else None,
            io_write_bytes=io["Write"] if "blkio" in self.dirs else None,
            pressure=read_pressures(self.dirs["unified"]) if "unified" in self.dirs else {},
        )

    def _limit_hits(self) -> int | None:
        """memory.failcnt plus memory.memsw.failcnt: the memory+swap counter is charged first, so a
        cgroup whose memsw limit equals its memory limit fails there, and recent kernels (6.18 here)
        no longer count failures of memsw at all: such a cgroup shows 0 hits while it is OOM-killed."""
        counts = [self._int("memory", name) for name in ("memory.failcnt", "memory.memsw.failcnt")]
        return None if counts[0] is None else sum(count or 0 for count in counts)

    # --- freezing and killing ---------------------------------------------------------------------
    def freeze(self) -> None:
        state = self._file("freezer", "freezer.state")
        write(state, "FROZEN")
        wait_for(lambda: read(state) == "FROZEN", f"{state} to read FROZEN (it reads FREEZING while a task "
                                                  f"is in an uninterruptible sleep)")

    def thaw(self) -> None:
        state = self._file("freezer", "freezer.state")
        write(state, "THAWED")
        wait_for(lambda: read(state) == "THAWED", f"{state} to read THAWED")

    def frozen(self) -> bool:
        return read(self._file("freezer", "freezer.state")) == "FROZEN"

    def kill(self) -> None:
        self._kill_by_signals(frozen_first="freezer" in self.dirs)
