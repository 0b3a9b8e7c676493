"""Docker's resource flags and units, turned into the cgroups stage's `Limits`.

    --memory 64m          bytes, with b, k, m, g, t suffixes (powers of 1024), as docker's RAMInBytes
    --memory-swap 128m    memory + swap together; -1 for unlimited swap; equal to --memory: no swap
    --cpus 0.5            half a core: a CFS quota of 50 ms per 100 ms period
    --cpu-shares 512      relative weight (1024 is the default)
    --cpu-quota/--cpu-period   the quota and period in µs, directly
    --pids-limit 50       processes and threads
    --cpuset-cpus 0-1     which CPUs
    --blkio-weight 500    relative I/O weight, 10..1000
    --device-read-bps /dev/vda:1m   (and -write-bps, -read-iops, -write-iops)

Every bad value is refused with one line naming the flag, before anything is created.
"""

from __future__ import annotations

import argparse
import re

from ..cgroups import DeviceThrottle, Limits, device_number, quota_for_cpus
from ..errors import ContainerError, InvalidArgumentError

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40, "p": 1 << 50}
_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([bkmgtp]?)b?$", re.IGNORECASE)


def parse_bytes(flag: str, text: str) -> int:
    """`64m` -> 67108864; the flag's name is in the error."""
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidArgumentError(f"invalid {flag} {text!r}: expected a size such as 512k, 64m or 1g")
    return int(float(match[1]) * _UNITS[match[2].lower()])


def add_limit_flags(parser: argparse.ArgumentParser) -> None:
    """Add docker's resource flags to a `run` parser."""
    group = parser.add_argument_group("resource limits (docker's flags and units)")
    group.add_argument("-m", "--memory", help="memory limit, e.g. 64m")
    group.add_argument("--memory-swap", help="memory + swap limit, e.g. 128m; -1: unlimited swap")
    group.add_argument("--cpus", help="number of CPUs, e.g. 0.5")
    group.add_argument("--cpu-quota", type=int, help="CFS quota in µs per period")
    group.add_argument("--cpu-period", type=int, help="CFS period in µs (default 100000)")
    group.add_argument("-c", "--cpu-shares", type=int, help="relative CPU weight (default 1024)")
    group.add_argument("--pids-limit", type=int, help="maximum number of processes and threads")
    group.add_argument("--cpuset-cpus", help="CPUs allowed, e.g. 0-1,3")
    group.add_argument("--cpuset-mems", help="memory nodes allowed, e.g. 0")
    group.add_argument("--blkio-weight", type=int, help="relative I/O weight, 10..1000")
    for name in ("read-bps", "write-bps", "read-iops", "write-iops"):
        group.add_argument(f"--device-{name}", action="append", default=[], metavar="DEVICE:RATE",
                           help=f"limit {name.replace('-', ' ')} of a device, e.g. /dev/vda:1m")


def limits_from_flags(args: argparse.Namespace) -> Limits:
    """The `Limits` that the parsed flags ask for (InvalidArgumentError names a bad flag)."""
    memory = parse_bytes("--memory", args.memory) if args.memory else None
    swap = _swap(args.memory_swap, memory)
    quota, period = args.cpu_quota, args.cpu_period or 100_000
    if args.cpus is not None:
        try:
            cpus = float(args.cpus)
        except ValueError:
            raise InvalidArgumentError(f"invalid --cpus {args.cpus!r}: expected a number, e.g. 0.5") from None
        if cpus <= 0:
            raise InvalidArgumentError(f"invalid --cpus {args.cpus!r}: it must be more than 0")
        quota = quota_for_cpus(cpus, period)
    if quota is not None and quota <= 0:
        raise InvalidArgumentError(f"invalid --cpu-quota {quota}: it must be a positive number of µs")
    try:
        return Limits(memory_max=memory, memory_swap_max=swap, cpu_quota_us=quota, cpu_period_us=period,
                      cpu_shares=args.cpu_shares, pids_max=args.pids_limit, io_weight=args.blkio_weight,
                      io_throttles=_throttles(args), cpuset_cpus=args.cpuset_cpus,
                      cpuset_mems=args.cpuset_mems)
    except ContainerError as e:
        raise InvalidArgumentError(f"invalid resource limit: {e}") from None


def _swap(text: str | None, memory: int | None) -> int | None:
    """docker's --memory-swap is memory+swap; the stage's limit is the swap on top of memory."""
    if text is None:
        return None
    if memory is None:
        raise InvalidArgumentError("--memory-swap needs --memory too: it is the total of memory and swap")
    if text.strip() == "-1":
        return None
    total = parse_bytes("--memory-swap", text)
    if total < memory:
        raise InvalidArgumentError(f"invalid --memory-swap {text!r}: it is memory + swap, so it must be at "
                                   f"least --memory")
    return total - memory


def _throttles(args: argparse.Namespace) -> tuple[DeviceThrottle, ...]:
    rates: dict[str, dict[str, int]] = {}
    for name in ("read_bps", "write_bps", "read_iops", "write_iops"):
        flag = f"--device-{name.replace('_', '-')}"
        for spec in getattr(args, f"device_{name}"):
            path, sep, rate = spec.rpartition(":")
            if not sep or not path:
                raise InvalidArgumentError(f"invalid {flag} {spec!r}: expected DEVICE:RATE, e.g. /dev/vda:1m")
            try:
                device = device_number(path)
            except (OSError, ContainerError) as e:
                raise InvalidArgumentError(f"invalid {flag} {spec!r}: {e}") from None
            value = parse_bytes(flag, rate) if name.endswith("bps") else _positive_int(flag, rate)
            rates.setdefault(device, {})[name] = value
    return tuple(DeviceThrottle(device, **values) for device, values in rates.items())


def _positive_int(flag: str, text: str) -> int:
    if not text.isdigit() or int(text) <= 0:
        raise InvalidArgumentError(f"invalid {flag} rate {text!r}: expected a positive number of operations")
    return int(text)
