"""What both benchmarks share: contenders timed in turns, medians and ratios, the machine described.

Method. Each contender is one way of doing the same work (unpack one layer; run one container). A round
runs every contender once; the order rotates from round to round (A B C, B C A, C A B, ...) so that no
contender always runs right after the same neighbour, whose dirty pages or freed inodes the kernel is
still writing back. A warm-up round comes first and is not counted (page cache, imports, the first
cgroup mkdir). The figure for a contender is its median over the rounds; a ratio is a quotient of two
medians, and the median of the per-round quotients is printed beside it: on a shared machine, where
the load changes from minute to minute, the per-round quotient compares runs made seconds apart.
"""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Contender:
    """One way of doing the work: `run(round)` does it once and returns the seconds it took."""

    name: str
    run: Callable[[int], float]
    times: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.times)


def alternate(contenders: Sequence[Contender], rounds: int, warmup: int = 1,
              between: Callable[[], None] = lambda: None, progress: bool = True) -> None:
    """Run every contender `warmup + rounds` times in rotating order; keep the last `rounds` timings."""
    for number in range(warmup + rounds):
        shift = number % len(contenders)
        taken = {}
        for contender in [*contenders[shift:], *contenders[:shift]]:
            between()
            taken[contender.name] = contender.run(number)
            if number >= warmup:
                contender.times.append(taken[contender.name])
        if progress:
            label = "warm-up" if number < warmup else f"round {number - warmup + 1}/{rounds}"
            print(f"  {label}: " + "  ".join(f"{name} {value:.3f}s" for name, value in taken.items()),
                  file=sys.stderr, flush=True)


def ratio(numerator: Contender, denominator: Contender) -> tuple[float, float]:
    """numerator/denominator as (quotient of the medians, median of the per-round quotients)."""
    paired = [a / b for a, b in zip(numerator.times, denominator.times, strict=True)]
    return numerator.median / denominator.median, statistics.median(paired)


def table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    """A plain-text table, columns left-aligned, for a terminal and for a Markdown code block."""
    cells = [[str(cell) for cell in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def seconds(values: Sequence[float]) -> str:
    return f"{statistics.median(values):.3f}"


def spread(values: Sequence[float]) -> str:
    return f"{min(values):.3f}-{max(values):.3f}"


def require_root() -> None:
    if os.geteuid() != 0:
        raise SystemExit("this benchmark needs root (sudo): it chowns files, mounts and makes namespaces")


def require_tool(name: str, package: str) -> str:
    """The path of a command the benchmark compares against; a clear exit naming the package if missing."""
    path = shutil.which(name)
    if path is None:
        raise SystemExit(f"{name} not found: install it (apt-get install {package})")
    return path


def interpreter() -> str:
    """This interpreter, refused if it is a pyenv shim (a shell script that adds ~100 ms to every start)."""
    executable = sys.executable
    with open(executable, "rb") as f:
        if f.read(2) == b"#!":
            raise SystemExit(f"{executable} is a script (a pyenv shim?): run the benchmark with the real "
                             "interpreter, e.g. .venv/bin/python or ~/.pyenv/versions/3.11.7/bin/python3")
    return executable


def filesystem_of(path: str | Path) -> str:
    """The type and source of the filesystem that holds `path` (the longest mount point that prefixes it)."""
    path = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mountinfo") as mountinfo:
        for line in mountinfo:
            fields = line.split()
            mount_point = fields[4]
            after = fields[fields.index("-") + 1:]
            if (path == mount_point or path.startswith(mount_point.rstrip("/") + "/")) and \
                    len(mount_point) >= len(best):
                best, kind = mount_point, f"{after[0]} ({after[1]}, mounted on {mount_point})"
    return kind


def machine(paths: dict[str, str | Path] | None = None) -> list[str]:
    """Lines describing the machine: CPU, cores, memory, kernel, load, interpreter, filesystems."""
    model = "?"
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    lines = [f"cpu: {model}, {os.cpu_count()} logical cores; memory {total_kib / 2**20:.1f} GiB",
             f"kernel: {platform.release()}; load average {load()}",
             f"python: {sys.executable} {platform.python_version()}"]
    lines += [f"{what}: {path} on {filesystem_of(path)}" for what, path in (paths or {}).items()]
    return lines


def load() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def version(command: Sequence[str]) -> str:
    """The first line a tool prints about its version."""
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return (result.stdout or result.stderr).strip().splitlines()[0]


def timed(action: Callable[[], object]) -> float:
    """Seconds of wall time that `action` took (time.perf_counter, a monotonic clock)."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start
