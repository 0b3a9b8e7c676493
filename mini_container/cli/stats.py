"""`minictl stats`: live usage of running containers, read from their cgroups, like `docker stats`.

Each figure comes from the cgroups stage (`Cgroup.stats()`) except network I/O, which the kernel
counts per network device: the bytes of every device but lo in /proc/PID/net/dev, read through the
container's pid 1 (so from inside its network namespace).

CPU % is docker's: the container's CPU time over the host's between two readings, times the number
of CPUs, so 100% is one full core and a 2-core host can show up to 200%. The first line needs two
readings: the first is taken half a second after the one before it.
"""

from __future__ import annotations

import json
import os
import sys
import time

from ..cgroups import Stats, cpu_percent
from ..errors import ContainerError
from ..runtime.containers import ContainerStore
from .table import print_table

KEYS = ("ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs")
INTERVAL = 1.0  # seconds between two lines of a live table
FIRST_INTERVAL = 0.5


def show(store: ContainerStore, names: list[str], stream: bool, fmt: str) -> None:
    """Print the stats table (or JSON lines) once, or every second until interrupted."""
    previous = {record["id"]: reading for record, reading in _read(store, names)}
    time.sleep(FIRST_INTERVAL)  # CPU % is a rate: it needs a first delta
    first = True
    while True:
        rows = []
        for record, current in _read(store, names):
            rows.append(row(record, previous.get(record["id"], current), current))
            previous[record["id"]] = current
        _print(rows, fmt, clear=stream and not first and sys.stdout.isatty())
        first = False
        if not stream:
            return
        time.sleep(INTERVAL)


def _read(store: ContainerStore, names: list[str]) -> list[tuple[dict, Stats]]:
    """(record, cgroup stats) of each target container that is running right now."""
    records = [store.get(name) for name in names] if names else store.list()
    readings = []
    for record in records:
        if record["status"] != "running":
            if names:
                raise ContainerError(f"container {record['name']} is not running")
            continue
        try:
            readings.append((record, store.cgroup(record["id"]).stats()))
        except (ContainerError, OSError):
            continue  # it exited between the listing and the reading
    return readings


def row(record: dict, before: Stats, now: Stats) -> dict[str, str]:
    """One container's line, with docker's keys and docker's formatting of the numbers."""
    used = now.memory_working_set_bytes or 0
    limit = now.memory_limit_bytes or _host_memory()
    received, sent = _network_bytes(record["pid"])
    return {
        "ID": record["id"][:12],
        "Name": record["name"],
        "CPUPerc": f"{cpu_percent(before, now):.2f}%",
        "MemUsage": f"{_binary(used)} / {_binary(limit)}",
        "MemPerc": f"{100 * used / limit:.2f}%" if limit else "0.00%",
        "NetIO": f"{_decimal(received)} / {_decimal(sent)}",
        "BlockIO": f"{_decimal(now.io_read_bytes or 0)} / {_decimal(now.io_write_bytes or 0)}",
        "PIDs": str(now.pids_current or 0),
    }


def _print(rows: list[dict[str, str]], fmt: str, clear: bool) -> None:
    if fmt == "json":
        for line in rows:
            print(json.dumps(line), flush=True)
        return
    if clear:
        print("\033[2J\033[H", end="")  # clear the screen and go home, as docker stats does
    header = ["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"]
    print_table(header, [[line[key] for key in KEYS] for line in rows])
    sys.stdout.flush()


def _network_bytes(pid: int | None) -> tuple[int, int]:
    """Received and sent bytes of every device but lo, in the network namespace of `pid`."""
    received = sent = 0
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            lines = f.readlines()[2:]
    except (FileNotFoundError, TypeError):
        return 0, 0
    for line in lines:
        device, _, counters = line.partition(":")
        if device.strip() != "lo":
            fields = counters.split()
            received, sent = received + int(fields[0]), sent + int(fields[8])
    return received, sent


def _host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _binary(n: float) -> str:
    """docker's memory units: powers of 1024 (B, KiB, MiB, GiB)."""
    return _human(n, 1024, ("B", "KiB", "MiB", "GiB", "TiB"))


def _decimal(n: float) -> str:
    """docker's I/O units: powers of 1000 (B, kB, MB, GB)."""
    return _human(n, 1000, ("B", "kB", "MB", "GB", "TB"))


def _human(n: float, base: int, units: tuple[str, ...]) -> str:
    for unit in units[:-1]:
        if n < base:
            return f"{n:.4g}{unit}"
        n /= base
    return f"{n:.4g}{units[-1]}"
