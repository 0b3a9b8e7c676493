"""The cgroup v2 backend: one tree for every controller, handed down by cgroup.subtree_control.

On v2 there is a single hierarchy (usually at /sys/fs/cgroup) and a process has one place in it, so
a container is one directory. Controllers are not mounted but delegated: a cgroup's
`cgroup.controllers` lists what its parent hands it, and writing "+memory +pids" to its
`cgroup.subtree_control` hands those on to its own children, whose directories then get memory.*
and pids.* files. The engine enables what it needs in its parent and in its own subtree
(`<parent>/mini-container`), and names the controllers that the parent was never handed.

The "no internal processes" rule: a cgroup other than the root may either hold processes or
distribute controllers to children, not both. Writing +memory to the subtree_control of a cgroup
that holds processes fails with EBUSY, and a process cannot be moved into a cgroup whose
subtree_control is set. The engine's default parent is the cgroup the engine itself runs in, which
holds the engine: unless that is the root, the engine cannot delegate from it. The engine then
stops with an error that says what to do: run it with MINI_CONTAINER_CGROUP_PARENT pointing at a
cgroup that holds no processes and whose parent delegates the controllers (for example
`mkdir /sys/fs/cgroup/mini && export MINI_CONTAINER_CGROUP_PARENT=/mini` as root, where the root
cgroup delegates everything), or in a systemd unit with Delegate=yes whose processes sit in a leaf.

The files (all in the container's one directory):

    memory   memory.max, memory.swap.max, memory.current, memory.stat (inactive_file),
             memory.events (max, oom, oom_kill)
    cpu      cpu.max ("QUOTA PERIOD", "max 100000" = no limit), cpu.weight; cpu.stat always exists
    pids     pids.max, pids.current, pids.events
    io       io.weight ("default 100"), io.max ("MAJ:MIN rbps=.. wbps=.. riops=.. wiops=.."), io.stat
    cpuset   cpuset.cpus, cpuset.mems
    core     cgroup.procs, cgroup.freeze, cgroup.events ("populated 0|1", "frozen 0|1"), cgroup.kill,
             cgroup.stat, cpu.pressure, memory.pressure, io.pressure (no controller needed)

Freezing (5.2+): write 1 to cgroup.freeze; the kernel stops each task at its next return to user
space and sets `frozen 1` in cgroup.events once all have stopped (cgroup.events is pollable, the
engine polls it by reading). Unlike v1, a frozen task can still be killed: SIGKILL wakes it to die.
Killing (5.14+): writing 1 to cgroup.kill SIGKILLs every process of the cgroup and its descendants
inside the kernel, with no race against fork; before 5.14 the engine falls back to v1's way.

Traps: memory.swap.max exists only with swap accounting; memory.max below current usage does not
fail as on v1, it makes the kernel reclaim and then OOM-kill, so the engine refuses it first;
controllers enabled in the parent stay enabled after the last container is gone (they are shared).
"""

from __future__ import annotations

from pathlib import Path
from typing import Self

from .base import Cgroup, make_container_dir, missing_parents, rollback
from .detect import Hierarchy, Layout
from .files import CgroupError, read, read_int, read_keyed, read_optional, wait_for, write
from .limits import (
    DeviceThrottle,
    Limits,
    blkio_weight_to_io_weight,
    io_weight_to_blkio_weight,
    shares_to_weight,
    weight_to_shares,
)
from .stats import Stats, read_pressures, working_set

CONTROLLERS = ("cpu", "memory", "pids", "io", "cpuset")
IO_MAX_KEYS = {"read_bps": "rbps", "write_bps": "wbps", "read_iops": "riops", "write_iops": "wiops"}


def enable_controllers(directory: Path, controllers: list[str]) -> None:
    """Hand `controllers` to the children of `directory` (its cgroup.subtree_control), if not yet."""
    enabled = set(read(directory / "cgroup.subtree_control").split())
    missing = [name for name in controllers if name not in enabled]
    if not missing:
        return
    is_root = not (directory / "cgroup.type").exists()  # the root cgroup has no cgroup.type
    holders = read(directory / "cgroup.procs").split()
    if holders and not is_root:
        raise CgroupError(f"cannot enable {', '.join(missing)} for the children of {directory}: it holds "
                          f"processes {holders[:5]}, and cgroup v2 lets a non-root cgroup hold processes or "
                          f"delegate controllers, not both. Set MINI_CONTAINER_CGROUP_PARENT to a cgroup "
                          f"with no processes whose parent delegates them (as root: mkdir "
                          f"/sys/fs/cgroup/mini && export MINI_CONTAINER_CGROUP_PARENT=/mini)")
    write(directory / "cgroup.subtree_control", " ".join(f"+{name}" for name in missing))


class V2Cgroup(Cgroup):
    """A container's cgroup in the v2 tree: one directory."""

    version = 2

    @classmethod
    def hierarchies(cls, layout: Layout) -> dict[str, Hierarchy]:
        if layout.v2 is None:
            raise CgroupError("no cgroup v2 hierarchy is mounted: mount -t cgroup2 none /sys/fs/cgroup")
        return {"unified": layout.v2}

    @property
    def dir(self) -> Path:
        return self.dirs["unified"]

    @classmethod
    def create(cls, name: str, limits: Limits, layout: Layout, parent: str | None = None,
               path: str | None = None) -> Self:
        cgroup = cls.at(name, layout, parent, path)
        # the cgroups between the last existing one (`top`) and the container, which hand it controllers
        between = [cgroup.dir.parent] if path is None else missing_parents(cgroup.dir)
        top = (between[0] if between else cgroup.dir).parent
        if not top.is_dir():
            raise CgroupError(f"the parent cgroup {top} does not exist: create it, or choose "
                              f"another parent with MINI_CONTAINER_CGROUP_PARENT")
        offered = set(read(top / "cgroup.controllers").split())
        missing = sorted(limits.resources() - offered)
        if missing:
            raise CgroupError(f"the limits need the cgroup v2 controller(s) {', '.join(missing)}, which the "
                              f"parent cgroup {top} is not offered (its cgroup.controllers lists "
                              f"{', '.join(sorted(offered)) or 'none'}): enable them in its parent's "
                              f"cgroup.subtree_control (echo +{missing[0]} > "
                              f"{top.parent}/cgroup.subtree_control) or drop those limits")
        wanted = [controller for controller in CONTROLLERS if controller in offered]
        created: list[Path] = []
        try:
            enable_controllers(top, wanted)
            created += make_container_dir(cgroup.dir, parents=path is not None)
            for directory in between:  # down to the container's parent, which adds their files to it
                enable_controllers(directory, wanted)
            cgroup.set_limits(limits)
        except BaseException:
            rollback(created)
            raise
        return cgroup

    # --- limits -----------------------------------------------------------------------------------
    def set_limits(self, limits: Limits) -> None:
        if limits.memory_max is not None:
            self._check_memory_not_below_usage(limits.memory_max, read_int(self.dir / "memory.current"))
            write(self.dir / "memory.max", str(limits.memory_max))
        if limits.memory_swap_max is not None:
            if not (self.dir / "memory.swap.max").exists():
                raise CgroupError(f"a swap limit needs swap accounting, but {self.dir}/memory.swap.max does "
                                  f"not exist (CONFIG_MEMCG_SWAP): drop the swap limit")
            write(self.dir / "memory.swap.max", str(limits.memory_swap_max))
        if limits.cpu_quota_us is not None:
            write(self.dir / "cpu.max", f"{limits.cpu_quota_us} {limits.cpu_period_us}")
        if limits.cpu_shares is not None:
            write(self.dir / "cpu.weight", str(shares_to_weight(limits.cpu_shares)))
        if limits.pids_max is not None:
            write(self.dir / "pids.max", str(limits.pids_max))
        if limits.io_weight is not None:
            self._set_io_weight(limits.io_weight)
        for throttle in limits.io_throttles:
            rates = " ".join(f"{IO_MAX_KEYS[rate]}={value}" for rate, value in throttle.rates().items())
            write(self.dir / "io.max", f"{throttle.device} {rates}",
                  " (throttles take a whole disk's MAJ:MIN, not a partition's)")
        if limits.cpuset_cpus is not None:
            write(self.dir / "cpuset.cpus", limits.cpuset_cpus, " (the CPUs must exist on this host)")
        if limits.cpuset_mems is not None:
            write(self.dir / "cpuset.mems", limits.cpuset_mems, " (the memory nodes must exist on this host)")

    def _set_io_weight(self, blkio_weight: int) -> None:
        if (self.dir / "io.weight").exists():  # blk-iocost, 1..10000
            write(self.dir / "io.weight", f"default {blkio_weight_to_io_weight(blkio_weight)}")
        elif (self.dir / "io.bfq.weight").exists():  # BFQ, 1..1000 like v1
            write(self.dir / "io.bfq.weight", f"default {blkio_weight}")
        else:
            raise CgroupError(f"no io.weight or io.bfq.weight in {self.dir}: weights need io.cost "
                              f"(CONFIG_BLK_CGROUP_IOCOST) or the BFQ scheduler; drop the I/O weight")

    def limits(self) -> Limits:
        memory_max = read_int(self.dir / "memory.max")
        quota, _, period = (read_optional(self.dir / "cpu.max") or "max 100000").partition(" ")
        weight = read_optional(self.dir / "cpu.weight")
        return Limits(
            memory_max=memory_max,
            memory_swap_max=read_int(self.dir / "memory.swap.max") if memory_max is not None else None,
            cpu_quota_us=None if quota == "max" else int(quota),
            cpu_period_us=int(period),
            cpu_shares=weight_to_shares(int(weight)) if weight else None,
            pids_max=read_int(self.dir / "pids.max"),
            io_weight=self._io_weight(),
            io_throttles=self._throttles(),
            cpuset_cpus=read_optional(self.dir / "cpuset.cpus") or None,
            cpuset_mems=read_optional(self.dir / "cpuset.mems") or None,
        )

    def _io_weight(self) -> int | None:
        for name, convert in (("io.weight", io_weight_to_blkio_weight), ("io.bfq.weight", int)):
            for line in (read_optional(self.dir / name) or "").splitlines():
                key, _, value = line.partition(" ")
                if key == "default":
                    return convert(int(value))
        return None

    def _throttles(self) -> tuple[DeviceThrottle, ...]:
        names = {key: rate for rate, key in IO_MAX_KEYS.items()}
        found = []
        for line in (read_optional(self.dir / "io.max") or "").splitlines():
            device, *pairs = line.split()
            settings = (pair.split("=") for pair in pairs)
            rates = {names[key]: int(value) for key, value in settings if value != "max"}
            if rates:
                found.append(DeviceThrottle(device, **rates))
        return tuple(found)

    # --- usage ------------------------------------------------------------------------------------
    def stats(self) -> Stats:
        cpu = read_keyed(self.dir / "cpu.stat")
        memory = read_keyed(self.dir / "memory.stat")
        events = read_keyed(self.dir / "memory.events")
        usage = read_int(self.dir / "memory.current")
        io_stat = read_optional(self.dir / "io.stat")
        io = {"rbytes": 0, "wbytes": 0}
        for line in (io_stat or "").splitlines():
            for key, _, value in (pair.partition("=") for pair in line.split()[1:]):
                if key in io:
                    io[key] += int(value)

        def ns(key: str) -> int | None:
            return cpu[key] * 1_000 if key in cpu else None

        return Stats(
            cpu_usage_ns=ns("usage_usec"),
            cpu_user_ns=ns("user_usec"),
            cpu_system_ns=ns("system_usec"),
            cpu_periods=cpu.get("nr_periods"),
            cpu_throttled_periods=cpu.get("nr_throttled"),
            cpu_throttled_ns=ns("throttled_usec"),
            memory_usage_bytes=usage,
            memory_limit_bytes=read_int(self.dir / "memory.max"),
            memory_working_set_bytes=working_set(usage, memory.get("inactive_file")),
            memory_limit_hits=events.get("max"),
            oom_kills=events.get("oom_kill"),
            pids_current=read_int(self.dir / "pids.current"),
            pids_max=read_int(self.dir / "pids.max"),
            pids_limit_hits=read_keyed(self.dir / "pids.events").get("max"),
            io_read_bytes=io["rbytes"] if io_stat is not None else None,
            io_write_bytes=io["wbytes"] if io_stat is not None else None,
            pressure=read_pressures(self.dir),
        )

    # --- freezing and killing ---------------------------------------------------------------------
    def _events(self) -> dict[str, int]:
        return read_keyed(self.dir / "cgroup.events")

    def freeze(self) -> None:
        self._write_freeze("1")
        wait_for(lambda: self._events().get("frozen") == 1, f"{self.dir}/cgroup.events to say frozen 1")

    def thaw(self) -> None:
        self._write_freeze("0")
        wait_for(lambda: self._events().get("frozen") == 0, f"{self.dir}/cgroup.events to say frozen 0")

    def _write_freeze(self, value: str) -> None:
        if not (self.dir / "cgroup.freeze").exists():
            raise CgroupError(f"{self.dir} has no cgroup.freeze: the v2 freezer needs Linux 5.2 or newer")
        write(self.dir / "cgroup.freeze", value)

    def frozen(self) -> bool:
        return self._events().get("frozen") == 1

    def kill(self) -> None:
        if not (self.dir / "cgroup.kill").exists():  # before Linux 5.14
            self._kill_by_signals(frozen_first=(self.dir / "cgroup.freeze").exists())
            return
        write(self.dir / "cgroup.kill", "1")
        wait_for(lambda: self._events().get("populated") == 0, f"{self.dir}/cgroup.events to say populated 0")
