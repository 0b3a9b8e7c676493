"""Resource limits in one set of units, and docker's conversions between v1 and v2 scales.

Units: bytes for memory and I/O rates, operations per second for IOPS, microseconds for CPU time.

- memory: `memory_max` is the most RAM the cgroup's pages may use; past it the kernel reclaims (page
  cache first) and, when nothing can be reclaimed, the OOM killer kills a process of the cgroup.
  `memory_swap_max` is the swap it may use on top of that (v2 memory.swap.max). v1 has no swap-only
  file: it limits memory+swap together (memory.memsw.limit_in_bytes), so v1 writes
  memory_max + memory_swap_max there.
- CPU bandwidth (CFS quota/period): in every `cpu_period_us` the cgroup's threads together may run
  `cpu_quota_us`; when the quota is spent they are throttled until the next period. 50_000/100_000 is
  half a core, 150_000/100_000 one and a half cores (docker's `--cpus 1.5`): `quota_for_cpus`.
  The kernel accepts quotas of 1 ms or more and periods from 1 ms to 1 s.
- CPU share (how contended CPU is split): v1 `cpu.shares` (2..262144, default 1024), v2 `cpu.weight`
  (1..10000, default 100). `cpu_shares` is in docker's v1 unit; v2 converts with docker's (runc's)
  linear map, so 1024 shares is weight 39, not 100; reading it back converts weight to shares, which
  may round (1024 -> 39 -> 998).
- I/O weight: docker's `--blkio-weight` unit (10..1000), converted for v2's io.weight (1..10000).
  It only matters with an I/O scheduler that honours weights (BFQ, or v2's io.cost).
- I/O throttles: per block device ("MAJ:MIN" of a whole disk, not a partition), read/write
  bytes per second and operations per second.
- cpuset: the CPUs and memory nodes the cgroup may use, in the kernel's list format ("0-1,3").

None means "no limit set": at creation the kernel's default (unlimited), on an update "leave as is".
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from mini_container.errors import InvalidArgumentError

MIN_CPU_QUOTA_US = 1_000  # the kernel refuses a quota below 1 ms (EINVAL)
CPU_PERIOD_RANGE_US = (1_000, 1_000_000)
SHARES_RANGE = (2, 262_144)
BLKIO_WEIGHT_RANGE = (10, 1_000)
_DEVICE = re.compile(r"^\d+:\d+$")
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")


def shares_to_weight(shares: int) -> int:
    """v1 cpu.shares (2..262144) to v2 cpu.weight (1..10000), docker's and runc's linear map."""
    return 1 + ((shares - 2) * 9_999) // 262_142


def weight_to_shares(weight: int) -> int:
    """v2 cpu.weight (1..10000) to v1 cpu.shares (2..262144), the inverse map (rounds down)."""
    return 2 + ((weight - 1) * 262_142) // 9_999


def blkio_weight_to_io_weight(weight: int) -> int:
    """docker's blkio weight (10..1000) to v2 io.weight (1..10000), runc's map."""
    return 1 + ((weight - 10) * 9_999) // 990


def io_weight_to_blkio_weight(weight: int) -> int:
    """v2 io.weight (1..10000) to docker's blkio weight (10..1000), the inverse map (rounds down)."""
    return 10 + ((weight - 1) * 990) // 9_999


def quota_for_cpus(cpus: float, period_us: int = 100_000) -> int:
    """The CFS quota (µs per period) that lets a cgroup use `cpus` cores: docker's `--cpus`."""
    return round(cpus * period_us)


def device_number(path: str) -> str:
    """"MAJ:MIN" of a block device file, for an I/O throttle (give a whole disk, not a partition)."""
    device = os.stat(path).st_rdev
    return f"{os.major(device)}:{os.minor(device)}"


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidArgumentError(message)


@dataclass(frozen=True)
class DeviceThrottle:
    """Bandwidth and IOPS caps for one block device; None leaves a direction unthrottled."""

    device: str  # "MAJ:MIN" of a whole disk, e.g. device_number("/dev/vda")
    read_bps: int | None = None
    write_bps: int | None = None
    read_iops: int | None = None
    write_iops: int | None = None

    def __post_init__(self) -> None:
        _require(bool(_DEVICE.match(self.device)),
                 f"I/O throttle device {self.device!r} is not MAJ:MIN (use device_number('/dev/sda'))")
        for name in ("read_bps", "write_bps", "read_iops", "write_iops"):
            value = getattr(self, name)
            _require(value is None or value > 0, f"I/O throttle {name} must be positive, got {value}")

    def rates(self) -> dict[str, int]:
        """The set rates by name (read_bps, write_bps, read_iops, write_iops)."""
        names = ("read_bps", "write_bps", "read_iops", "write_iops")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


@dataclass(frozen=True)
class Limits:
    """What a container may use. Every field is optional; see the module docstring for units."""

    memory_max: int | None = None  # bytes
    memory_swap_max: int | None = None  # bytes of swap on top of memory_max
    cpu_quota_us: int | None = None  # µs of CPU time per period, for all threads together
    cpu_period_us: int = 100_000  # µs
    cpu_shares: int | None = None  # docker's --cpu-shares, 2..262144
    pids_max: int | None = None  # processes and threads
    io_weight: int | None = None  # docker's --blkio-weight, 10..1000
    io_throttles: tuple[DeviceThrottle, ...] = ()
    cpuset_cpus: str | None = None  # "0-1,3"
    cpuset_mems: str | None = None  # "0"

    def __post_init__(self) -> None:
        _require(self.memory_max is None or self.memory_max > 0,
                 f"memory limit must be a positive number of bytes, got {self.memory_max}")
        _require(self.memory_swap_max is None or self.memory_swap_max >= 0,
                 f"swap limit must be zero or more bytes, got {self.memory_swap_max}")
        _require(self.memory_swap_max is None or self.memory_max is not None,
                 "a swap limit needs a memory limit too (v1 limits memory and swap together)")
        _require(self.cpu_quota_us is None or self.cpu_quota_us >= MIN_CPU_QUOTA_US,
                 f"cpu quota must be at least {MIN_CPU_QUOTA_US} µs (1 ms) per period, got "
                 f"{self.cpu_quota_us}: leave it unset (None) for no CPU limit")
        low, high = CPU_PERIOD_RANGE_US
        _require(low <= self.cpu_period_us <= high,
                 f"cpu period must be {low}..{high} µs, got {self.cpu_period_us}")
        low, high = SHARES_RANGE
        _require(self.cpu_shares is None or low <= self.cpu_shares <= high,
                 f"cpu shares must be {low}..{high}, got {self.cpu_shares}")
        _require(self.pids_max is None or self.pids_max > 0,
                 f"pids limit must be at least 1, got {self.pids_max}: leave it unset (None) for no limit")
        low, high = BLKIO_WEIGHT_RANGE
        _require(self.io_weight is None or low <= self.io_weight <= high,
                 f"I/O weight must be {low}..{high}, got {self.io_weight}")
        for name in ("cpuset_cpus", "cpuset_mems"):
            value = getattr(self, name)
            _require(value is None or bool(_CPU_LIST.match(value)),
                     f"{name} must be a list like '0-1,3', got {value!r}")

    @property
    def cpus(self) -> float | None:
        """The CPU quota in cores (quota / period), as docker's `--cpus` shows it."""
        return None if self.cpu_quota_us is None else self.cpu_quota_us / self.cpu_period_us

    def resources(self) -> set[str]:
        """The resources these limits touch: a subset of memory, cpu, pids, io, cpuset."""
        wanted = {
            "memory": self.memory_max is not None or self.memory_swap_max is not None,
            "cpu": self.cpu_quota_us is not None or self.cpu_shares is not None,
            "pids": self.pids_max is not None,
            "io": self.io_weight is not None or bool(self.io_throttles),
            "cpuset": self.cpuset_cpus is not None or self.cpuset_mems is not None,
        }
        return {name for name, used in wanted.items() if used}
