"""Stage 2: control groups, the kernel's resource limits for a group of processes.

A namespace changes what a process can *see*; a cgroup limits what it can *use*. A cgroup is a
set of processes that the kernel accounts and limits together: memory, CPU time, number of
processes, block I/O, which CPUs. It is a directory in a cgroup filesystem; every child process
starts in its parent's cgroup, so once a container's first process is placed, all it starts stays
inside. Everything is file I/O (see `files`): mkdir, write a pid to cgroup.procs, write limits,
read usage, rmdir. Look at it live: `cat /proc/PID/cgroup`, then `ls` the directory it names.

Two versions (`detect` finds which this host has):

    v1 (2008)  one hierarchy per controller: /sys/fs/cgroup/memory, /sys/fs/cgroup/cpu, ... A process
               sits in one cgroup of each tree, independently. File names differ per controller
               (memory.limit_in_bytes, cpu.cfs_quota_us, blkio.throttle.read_bps_device, freezer.state).
    v2 (4.5+)  one tree for all controllers (/sys/fs/cgroup). A parent hands controllers down through
               cgroup.subtree_control; only the root or a cgroup without processes may do so ("no
               internal processes"). Uniform names (memory.max, cpu.max, io.max, pids.max), core files
               in every cgroup (cgroup.freeze, cgroup.kill, cgroup.events, *.pressure).
    hybrid     v1 trees for the controllers plus a v2 tree (often /sys/fs/cgroup/unified) with none.

| what            | v1 file                                | v2 file                      |
| --------------- | -------------------------------------- | ---------------------------- |
| memory limit    | memory.limit_in_bytes (+ memory.memsw) | memory.max, memory.swap.max  |
| CPU quota       | cpu.cfs_quota_us / cpu.cfs_period_us   | cpu.max "QUOTA PERIOD"       |
| CPU share       | cpu.shares (1024)                      | cpu.weight (100)             |
| processes       | pids.max                               | pids.max                     |
| I/O             | blkio.throttle.*_device, blkio.weight  | io.max, io.weight            |
| OOM kills       | memory.oom_control oom_kill            | memory.events oom_kill       |
| freeze          | freezer.state FROZEN / THAWED          | cgroup.freeze 1 / 0          |
| kill all        | signal each pid of cgroup.procs        | cgroup.kill (5.14+)          |

One interface for both (`Cgroup`), with a backend per version picked by detection:

    cg = cgroups.create("web", Limits(memory_max=256 << 20, pids_max=64, cpu_quota_us=50_000))
    cg.add(pid); cg.stats(); cg.freeze(); cg.thaw(); cg.kill(); cg.destroy()

The engine only ever works below its own cgroup: each container is `<own cgroup>/mini-container/NAME`
in every hierarchy (the parent can be changed with `parent=` or MINI_CONTAINER_CGROUP_PARENT), so a
container cannot escape the limits its caller is under, and the engine writes to no one else's cgroup.
"""

from .backend import backend_for, create, lookup, names, observe
from .base import Cgroup
from .detect import ENV_PARENT, SUBTREE, Hierarchy, Layout, cgroup_of, detect, parent_path, subtree_dir
from .files import CgroupError
from .limits import (
    DeviceThrottle,
    Limits,
    blkio_weight_to_io_weight,
    device_number,
    io_weight_to_blkio_weight,
    quota_for_cpus,
    shares_to_weight,
    weight_to_shares,
)
from .stats import Pressure, Stats, cpu_percent
from .v1 import V1Cgroup
from .v2 import V2Cgroup

__all__ = [
    "ENV_PARENT", "SUBTREE", "Cgroup", "CgroupError", "DeviceThrottle", "Hierarchy", "Layout", "Limits",
    "Pressure", "Stats", "V1Cgroup", "V2Cgroup", "backend_for", "blkio_weight_to_io_weight", "cgroup_of",
    "cpu_percent", "create", "detect", "device_number", "io_weight_to_blkio_weight", "lookup", "names",
    "observe", "parent_path", "quota_for_cpus", "shares_to_weight", "subtree_dir", "weight_to_shares",
]
