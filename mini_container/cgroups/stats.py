"""Usage statistics in one set of units (nanoseconds of CPU, bytes of memory and I/O), and CPU%.

What each number is, and where each version keeps it:

- CPU time used by every thread of the cgroup, ever: v1 cpuacct.usage / usage_user / usage_sys
  (ns), v2 cpu.stat usage_usec / user_usec / system_usec (µs). Throttling by the CFS quota: v1
  cpu.stat nr_periods / nr_throttled / throttled_time (ns), v2 cpu.stat nr_periods / nr_throttled /
  throttled_usec.
- memory: usage (v1 memory.usage_in_bytes, v2 memory.current) counts page cache too, so docker
  stats shows the *working set*, usage minus the inactive file cache that the kernel would drop
  first (memory.stat total_inactive_file on v1, inactive_file on v2).
- the OOM killer: when a cgroup is at its memory limit and reclaim frees nothing, the kernel's OOM
  killer picks the process of that cgroup with the highest badness (mostly its memory size, biased
  by oom_score_adj) and SIGKILLs it. v2 counts it in memory.events (`max`: times usage hit the limit,
  `oom`: times reclaim failed, `oom_kill`: processes killed; memory.events is hierarchical,
  memory.events.local is not); v1 counts kills in memory.oom_control `oom_kill` and limit hits in
  memory.failcnt, or in memory.memsw.failcnt when the memory+swap limit is the one reached (it is
  charged first). The kill is also in `dmesg`.
- pids: pids.current (processes and threads, zombies included until reaped), pids.max, and
  pids.events `max` (forks refused at the limit).
- I/O bytes: v1 blkio.throttle.io_service_bytes_recursive (Read/Write per device), v2 io.stat
  (rbytes/wbytes per device). v1 cannot charge buffered writes to the cgroup (the kernel's flusher
  threads write them back later, from the root cgroup); v2 can, with the memory and io controllers.
- PSI (pressure stall information, kernel 4.20+, `psi=1`): cpu.pressure, memory.pressure and
  io.pressure, in every v2 cgroup, even without controllers. "some" is the share of time at least
  one task was stalled waiting for the resource, "full" the share of time all non-idle tasks were;
  averages over 10, 60 and 300 seconds, and a running total in µs.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .files import read_optional

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Pressure:
    """One *.pressure file: stall percentages over 10/60/300 s and total stalled time in µs."""

    some_avg10: float
    some_avg60: float
    some_avg300: float
    some_total_us: int
    full_avg10: float | None = None
    full_avg60: float | None = None
    full_avg300: float | None = None
    full_total_us: int | None = None


def read_pressure(path: Path) -> Pressure | None:
    """Parse a PSI file ("some avg10=0.00 avg60=0.00 avg300=0.00 total=0" and a "full" line)."""
    text = read_optional(path)
    if text is None:
        return None
    values: dict[str, float | int] = {}
    for line in text.splitlines():
        kind, *pairs = line.split()
        for pair in pairs:
            key, _, number = pair.partition("=")
            values[f"{kind}_{key}_us" if key == "total" else f"{kind}_{key}"] = (
                int(number) if key == "total" else float(number))
    return Pressure(**values)  # type: ignore[arg-type]


def system_cpu_ns() -> int:
    """All CPU time the host has had since boot, in ns (docker's denominator, from /proc/stat).

    Like docker, the sum of user, nice, system, idle, iowait, irq and softirq of the "cpu" line,
    whose unit is USER_HZ clock ticks (usually 1/100 s).
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    return sum(int(value) for value in fields[1:8]) * 1_000_000_000 // _CLOCK_TICKS


@dataclass(frozen=True)
class Stats:
    """A cgroup's usage at one moment; None where the host does not provide the number."""

    read_at_ns: int = field(default_factory=time.monotonic_ns)
    system_cpu_ns: int = field(default_factory=system_cpu_ns)
    online_cpus: int = field(default_factory=lambda: os.sysconf("SC_NPROCESSORS_ONLN"))
    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_periods: int | None = None
    cpu_throttled_periods: int | None = None
    cpu_throttled_ns: int | None = None
    memory_usage_bytes: int | None = None
    memory_limit_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    memory_limit_hits: int | None = None  # v1 memory.failcnt + memory.memsw.failcnt, v2 memory.events max
    oom_kills: int | None = None
    pids_current: int | None = None
    pids_max: int | None = None
    pids_limit_hits: int | None = None  # pids.events max: forks refused
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    pressure: dict[str, Pressure] = field(default_factory=dict)  # "cpu", "memory", "io"


def working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """docker stats' memory figure: usage minus the inactive page cache."""
    if usage is None:
        return None
    return usage - inactive_file if inactive_file is not None and inactive_file < usage else usage


def read_pressures(directory: Path) -> dict[str, Pressure]:
    """The PSI files of a v2 cgroup directory that the kernel provides."""
    found = {kind: read_pressure(directory / f"{kind}.pressure") for kind in ("cpu", "memory", "io")}
    return {kind: value for kind, value in found.items() if value is not None}


def cpu_percent(prev: Stats, cur: Stats) -> float:
    """CPU use between two readings, as docker stats computes it: 100.0 means one full core.

    (cgroup CPU time delta / host CPU time delta) * online CPUs * 100. The host delta counts every
    core, busy or idle, so a cgroup that kept one core busy shows 100%, two cores 200%, and a
    quota of half a core at most about 50%. 0.0 when a reading lacks CPU time or no time passed.
    """
    if prev.cpu_usage_ns is None or cur.cpu_usage_ns is None:
        return 0.0
    cpu_delta = cur.cpu_usage_ns - prev.cpu_usage_ns
    system_delta = cur.system_cpu_ns - prev.system_cpu_ns
    if cpu_delta < 0 or system_delta <= 0:
        return 0.0
    return cpu_delta / system_delta * cur.online_cpus * 100.0
