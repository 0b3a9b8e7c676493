"""Finding the cgroup hierarchies: v1, v2 or hybrid, read from /proc/self/mountinfo.

A cgroup filesystem is mounted like any other; /proc/self/mountinfo lists each mount as

    35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
    ID PARENT DEV ROOT MOUNT-POINT OPTIONS - FSTYPE SOURCE SUPER-OPTIONS

- fstype `cgroup` is a v1 hierarchy; its super-options name the controllers bound to it (`memory`,
  or `cpu,cpuacct` when two are co-mounted, or `name=systemd` for a hierarchy with no controller that
  only tracks processes). Each v1 controller lives in exactly one hierarchy: one tree per controller.
- fstype `cgroup2` is the v2 hierarchy: a single tree for every controller, whose root lists the
  controllers it can hand out in `cgroup.controllers`.
- hybrid (systemd's name) is both at once: controllers on v1 trees and a v2 tree, usually at
  /sys/fs/cgroup/unified, with no controller (a controller is bound to one version at a time) but
  with v2's core files (cgroup.procs, cgroup.freeze, cgroup.kill, cgroup.events, *.pressure).

Where a process is, is in /proc/PID/cgroup, one line per hierarchy: `4:memory:/process_api/ab12`
(v1: hierarchy id, its controllers, the path) and `0::/` (v2: id 0, no controller list). The path is
relative to the root of the reader's cgroup namespace; ROOT in mountinfo is the cgroup that the mount
shows at its top, so the directory is MOUNT-POINT + (path - ROOT).

The engine never puts a container beside the cgroup it runs in, always below it: the parent of its
subtree is, per hierarchy, the engine's own cgroup (or MINI_CONTAINER_CGROUP_PARENT, relative to the
own cgroup, or absolute from the hierarchy's root), so a container can never escape the limits that
its caller is under.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mini_container.errors import InvalidArgumentError

from .files import CgroupError, read_optional

ENV_PARENT = "MINI_CONTAINER_CGROUP_PARENT"
SUBTREE = "mini-container"  # the directory the engine owns below the parent, one cgroup per container in it


@dataclass(frozen=True)
class Hierarchy:
    """One mounted cgroup tree: v1 (one per controller or co-mounted group) or the v2 tree."""

    version: int
    mount: Path
    root: str  # the cgroup path that the mount shows at its top (mountinfo's ROOT field)
    controllers: frozenset[str]  # v1: bound to this tree; v2: listed in its root's cgroup.controllers

    def directory(self, cgroup_path: str) -> Path:
        """The directory of the cgroup that /proc/PID/cgroup names `cgroup_path` in this hierarchy."""
        relative = posixpath.relpath(cgroup_path, self.root)
        if relative == ".":
            return self.mount
        if relative.startswith(".."):
            raise CgroupError(f"cgroup {cgroup_path} is outside the part of the hierarchy mounted at "
                              f"{self.mount} (which shows {self.root}): mount the whole hierarchy")
        return self.mount / relative


@dataclass(frozen=True)
class Layout:
    """The cgroup hierarchies of this host: `mode` is "v1", "v2" or "hybrid"."""

    mode: str
    v1: Mapping[str, Hierarchy] = field(default_factory=dict)  # controller -> its v1 hierarchy
    v2: Hierarchy | None = None


def _unescape(text: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\040-style octal."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), text)


def known_controllers() -> frozenset[str]:
    """The controller names this kernel was built with (first column of /proc/cgroups)."""
    lines = Path("/proc/cgroups").read_text().splitlines()
    return frozenset(line.split()[0] for line in lines if line and not line.startswith("#"))


def detect(mountinfo: str | None = None, controllers: frozenset[str] | None = None) -> Layout:
    """Read the hierarchies from mountinfo text (default: /proc/self/mountinfo) and name the mode."""
    mountinfo = Path("/proc/self/mountinfo").read_text() if mountinfo is None else mountinfo
    controllers = known_controllers() if controllers is None else controllers
    v1: dict[str, Hierarchy] = {}
    v2: Hierarchy | None = None
    for line in mountinfo.splitlines():
        before, _, after = line.partition(" - ")
        fields, tail = before.split(), after.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        root, mount, fstype = _unescape(fields[3]), Path(_unescape(fields[4])), tail[0]
        if fstype == "cgroup2" and v2 is None:
            offered = read_optional(mount / "cgroup.controllers") or ""
            v2 = Hierarchy(2, mount, root, frozenset(offered.split()))
        elif fstype == "cgroup":
            bound = frozenset(option for option in tail[2].split(",") if option in controllers)
            hierarchy = Hierarchy(1, mount, root, bound)
            for name in bound:
                v1.setdefault(name, hierarchy)
    if v1 and v2:
        return Layout("hybrid", v1, v2)
    if v1:
        return Layout("v1", v1, None)
    if v2:
        return Layout("v2", {}, v2)
    raise CgroupError("no cgroup filesystem is mounted: mount one with "
                      "`mount -t cgroup2 none /sys/fs/cgroup`")


def cgroup_of(pid: int | str, hierarchy: Hierarchy) -> str:
    """The cgroup path of process `pid` ("self" for this one) in `hierarchy`, from /proc/PID/cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        number, names, path = line.split(":", 2)
        if hierarchy.version == 2 and number == "0" and names == "":
            return path
        if hierarchy.version == 1 and hierarchy.controllers == frozenset(names.split(",")) - {""}:
            return path
    raise CgroupError(f"/proc/{pid}/cgroup has no line for the hierarchy mounted at {hierarchy.mount}")


def parent_path(hierarchy: Hierarchy, parent: str | None = None) -> str:
    """The cgroup path under which the engine keeps its subtree in `hierarchy`.

    `parent` (default: $MINI_CONTAINER_CGROUP_PARENT, else "") is absolute ("/tests") from the
    hierarchy's root, or relative ("tests") to the cgroup this process is in; "" is that cgroup.
    A relative parent may not climb with "..": that would leave the limits the engine runs under.
    """
    parent = os.environ.get(ENV_PARENT, "") if parent is None else parent
    if ".." in parent.split("/"):
        raise InvalidArgumentError(f"cgroup parent {parent!r} may not contain '..': give an absolute path "
                                   f"instead if the engine should leave its own cgroup")
    if parent.startswith("/"):
        return posixpath.normpath(parent)
    return posixpath.normpath(posixpath.join(cgroup_of("self", hierarchy), parent))


def subtree_dir(hierarchy: Hierarchy, parent: str | None = None) -> Path:
    """The directory of the engine's own subtree ("mini-container") in `hierarchy`."""
    return hierarchy.directory(parent_path(hierarchy, parent)) / SUBTREE
