"""Reading and writing cgroup files: the whole interface to the kernel's resource control.

A cgroup is a directory in a cgroup filesystem, and everything about it is a file in that directory:
`mkdir` creates a cgroup, writing a pid to `cgroup.procs` moves a process into it, writing to
`memory.max` (v2) or `memory.limit_in_bytes` (v1) sets a limit, reading `memory.stat` reads usage,
and `rmdir` removes it: open/read/write/mkdir/rmdir are the whole interface (killing uses signals).

Traps these helpers handle:
- one value per write(2): the kernel parses each write on its own, so a file that takes several
  lines (`io.max`, `blkio.throttle.read_bps_device`) takes one write per line, and a buffered
  writer that splits or joins writes would change their meaning;
- a rejected value comes back as an errno from write(2) (EINVAL for a bad value, EBUSY for a memory
  limit below usage on v1 or for a v2 rule about processes, ENOSPC for an empty v1 cpuset);
- "max" means "no limit" in v2 files, and -1 or a huge page-rounded number in v1 files;
- rmdir only removes a cgroup with no live process and no child cgroup (EBUSY otherwise); the
  files inside it are not real files and are never unlinked one by one.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from pathlib import Path

from mini_container.errors import ContainerError

# v1 shows "no limit" as the largest page-aligned counter value (PAGE_COUNTER_MAX * PAGE_SIZE).
UNLIMITED_FLOOR = 1 << 62


class CgroupError(ContainerError):
    """A cgroup operation failed: the message names the file or controller and what to do next."""


def read(path: Path) -> str:
    """The content of a cgroup file, without its trailing newline."""
    return path.read_text().strip()


def read_optional(path: Path) -> str | None:
    """The content of a cgroup file, or None when the file does not exist (controller absent)."""
    try:
        return read(path)
    except FileNotFoundError:
        return None


def parse_limit(text: str | None) -> int | None:
    """A limit as an int, with None for "no limit" ("max" on v2, -1 or a huge value on v1)."""
    if text is None or text in ("max", "-1", ""):
        return None
    value = int(text)
    return None if value >= UNLIMITED_FLOOR else value


def read_int(path: Path) -> int | None:
    """An integer file (a counter or a limit), None when absent or unlimited."""
    return parse_limit(read_optional(path))


def read_keyed(path: Path) -> dict[str, int]:
    """A flat keyed file ("key value" per line: memory.stat, cpu.stat, memory.events); {} if absent."""
    text = read_optional(path)
    if not text:
        return {}
    pairs = [line.split() for line in text.splitlines()]
    return {pair[0]: int(pair[1]) for pair in pairs if len(pair) == 2 and pair[1].lstrip("-").isdigit()}


def write(path: Path, value: str, hint: str = "") -> None:
    """Write one value to a cgroup file in a single write(2), naming file and value on failure."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except FileNotFoundError:
        raise CgroupError(f"{path} does not exist: the controller that provides {path.name} is not "
                          f"enabled for this cgroup{hint}") from None
    try:
        os.write(fd, value.encode())
    except OSError as error:
        name = errno.errorcode.get(error.errno or 0, str(error.errno))
        message = f"the kernel refused {value!r} for {path}: {name} ({error.strerror}){hint}"
        raise CgroupError(message) from None
    finally:
        os.close(fd)


def make_dir(path: Path) -> bool:
    """mkdir a cgroup; True when this call created it, False when it already existed."""
    try:
        path.mkdir()
    except FileExistsError:
        return False
    except FileNotFoundError:
        message = (f"cannot create cgroup {path}: its parent cgroup {path.parent} does not exist (create it, "
                   f"or choose another parent with MINI_CONTAINER_CGROUP_PARENT)")
        raise CgroupError(message) from None
    return True


def remove_dir(path: Path) -> None:
    """rmdir a cgroup (already gone is fine); EBUSY means processes or child cgroups remain."""
    try:
        path.rmdir()
    except FileNotFoundError:
        pass
    except OSError as error:
        if error.errno != errno.EBUSY:
            raise CgroupError(f"cannot remove cgroup {path}: {error.strerror}") from None
        children = sorted(entry.name for entry in path.iterdir() if entry.is_dir())
        procs = (read_optional(path / "cgroup.procs") or "").split()
        message = (f"cannot remove cgroup {path}: it is busy (processes: {procs or 'none'}, child cgroups: "
                   f"{children or 'none'}); kill its processes and remove its children first")
        raise CgroupError(message) from None


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll `condition` until it holds; a CgroupError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise CgroupError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.01)
