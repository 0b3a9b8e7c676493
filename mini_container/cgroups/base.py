"""The one interface that both backends implement, and what they share: placing and killing processes.

A container's cgroup is one directory per hierarchy (one on v2; on v1 one per controller tree, and on
a hybrid host one more in the v2 tree for its core files). `create` makes the directories and writes
the limits, undoing everything if a step fails; `destroy` removes them. In between: `add` a pid,
`set_limits`, read `limits` and `stats`, `freeze`/`thaw`, and `kill` every process.

Where: by default `<parent>/mini-container/NAME` (see detect.py). An OCI runtime is told a place instead,
config.json's linux.cgroupsPath, and puts it there as runc does (`cgroup_path_dir`): an absolute path
from the root of each mounted hierarchy ("/docker/ID" is /sys/fs/cgroup/memory/docker/ID), a relative
one below the engine's parent ("tests/ID", below the cgroup the engine runs in unless told otherwise),
with every missing directory on the way made (and, on v1, each new cpuset given its parent's CPUs).

Moving a process: writing its pid to `cgroup.procs` moves the whole thread group (v1's `tasks` file
moves one thread). Children forked afterwards start in the same cgroup, so a container's init is
placed before it execs and everything it starts stays inside. Memory already used is not moved on
v1 (its charge stays with the old cgroup unless `memory.move_charge_at_immigrate` says otherwise).

Killing every process without a race: a process listed in cgroup.procs may exit and its pid be
reused by an unrelated process before we signal it. The safe recipe opens a pidfd for each listed
pid (pidfd_open(2) pins that very process), lists cgroup.procs again, and signals through the pidfd
only the pids still listed: a pid that is still in the cgroup after its pidfd was opened is that
process. Forks during the loop are why v1 freezes the cgroup first (a frozen process cannot fork),
and why v2 has `cgroup.kill` (5.14+), which kills the whole cgroup in the kernel in one write.

Traps:
- rmdir removes only an empty cgroup: no live process, no child cgroup (EBUSY).
- a zombie (exited, not yet waited for by its parent) has left cgroup.procs and does not keep the
  cgroup populated, so rmdir succeeds, but it still counts in pids.current until it is reaped.
- `destroy` never moves a process out of a cgroup to empty it: it refuses while processes remain.
"""

from __future__ import annotations

import os
import re
import signal
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import ClassVar, Self

from mini_container import syscalls
from mini_container.errors import InvalidArgumentError

from .detect import SUBTREE, Hierarchy, Layout, cgroup_of, parent_path, subtree_dir
from .files import CgroupError, make_dir, read_optional, remove_dir, wait_for, write
from .limits import Limits
from .stats import Stats

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_name(name: str) -> str:
    """A container's cgroup name is one path component: letters, digits, '_', '.', '-'."""
    if not _NAME.match(name):
        raise InvalidArgumentError(f"cgroup name {name!r} must be 1-128 letters, digits, '_', '.' or '-', "
                                   f"starting with a letter or digit")
    return name


def cgroup_path_dir(hierarchy: Hierarchy, path: str, parent: str | None = None) -> Path:
    """The directory of an OCI linux.cgroupsPath in `hierarchy`, as runc places it: an absolute path from
    the root of the mounted hierarchy, a relative one below the engine's parent (`detect.parent_path`).
    A path may not climb with "..": a container must not land outside the tree it was given."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise InvalidArgumentError(f"cgroup path {path!r} must name a cgroup without '..': an absolute path "
                                   f"from the hierarchy's root, or one relative to the engine's parent")
    base = hierarchy.mount if path.startswith("/") else hierarchy.directory(parent_path(hierarchy, parent))
    return base.joinpath(*parts)


def missing_parents(path: Path) -> list[Path]:
    """The ancestors of `path` that do not exist yet, from the top down."""
    missing = []
    while not path.parent.is_dir() and path.parent != path:
        path = path.parent
        missing.append(path)
    return missing[::-1]


def make_container_dir(path: Path, parents: bool = False) -> list[Path]:
    """mkdir the engine's subtree if needed (with `parents`, every missing ancestor), then the container's
    cgroup; return the directories made, from the top down.

    `destroy` removes the subtree with its last container, so another engine process may rmdir it
    between our two mkdirs (ENOENT): then the subtree is made again.
    """
    for _ in range(3):
        above = missing_parents(path) if parents else [path.parent]
        created = [directory for directory in above if make_dir(directory)]
        try:
            path.mkdir()
        except FileNotFoundError:
            continue
        except FileExistsError:
            rollback(created)
            raise CgroupError(f"cgroup {path} already exists: destroy that container or pick another "
                              f"name") from None
        return [*created, path]
    raise CgroupError(f"cannot create {path}: its parent {path.parent} keeps disappearing")


def rollback(created: Iterable[Path]) -> None:
    """Remove the directories a failed create made, newest first (a shared one still in use stays)."""
    for path in reversed(list(created)):
        with suppress(CgroupError):
            remove_dir(path)


class Cgroup(ABC):
    """A container's cgroup: `dirs` maps each hierarchy key (a controller, or "unified") to its directory."""

    version: ClassVar[int]

    def __init__(self, name: str, dirs: Mapping[str, Path]) -> None:
        self.name = name
        self.dirs = dict(dirs)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, {[str(d) for d in self.directories()]})"

    # --- where it lives --------------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def hierarchies(cls, layout: Layout) -> dict[str, Hierarchy]:
        """The hierarchies this backend uses on `layout`, by key (a controller name, or "unified")."""

    @classmethod
    def at(cls, name: str, layout: Layout, parent: str | None = None, path: str | None = None) -> Self:
        """The container `name` in the engine's subtree, or at the cgroup `path` (an OCI cgroupsPath:
        see `cgroup_path_dir`); it may or may not exist yet."""
        check_name(name)
        hierarchies = cls.hierarchies(layout)
        if path is not None:
            return cls(name, {key: cgroup_path_dir(h, path, parent) for key, h in hierarchies.items()})
        return cls(name, {key: subtree_dir(h, parent) / name for key, h in hierarchies.items()})

    @classmethod
    def of_pid(cls, pid: int, layout: Layout) -> Self:
        """The cgroup that process `pid` is in now (any cgroup, not only the engine's)."""
        dirs = {key: h.directory(cgroup_of(pid, h)) for key, h in cls.hierarchies(layout).items()}
        return cls(next(iter(dirs.values())).name, dirs)

    @classmethod
    @abstractmethod
    def create(cls, name: str, limits: Limits, layout: Layout, parent: str | None = None,
               path: str | None = None) -> Self:
        """mkdir the cgroup under the engine's subtree (or at `path`, making what is missing on the way)
        and write `limits`; nothing is left on failure."""

    def directories(self) -> list[Path]:
        """Each directory once (co-mounted v1 controllers share one)."""
        return list(dict.fromkeys(self.dirs.values()))

    def paths(self) -> dict[str, str]:
        """The directory per hierarchy key, as text (for snapshots and messages)."""
        return {key: str(path) for key, path in self.dirs.items()}

    def exists(self) -> bool:
        return any(path.is_dir() for path in self.directories())

    # --- processes --------------------------------------------------------------------------------
    def add(self, pid: int) -> None:
        """Move process `pid` (all its threads) into this cgroup, in every hierarchy."""
        for path in self.directories():
            write(path / "cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        """The live processes in this cgroup (zombies are no longer listed)."""
        found: set[int] = set()
        for path in self.directories():
            found.update(int(pid) for pid in (read_optional(path / "cgroup.procs") or "").split())
        return sorted(found)

    def _signal_listed(self, signum: int = signal.SIGKILL) -> list[int]:
        """Signal every listed process through a pidfd (never a reused pid); return the ones listed."""
        pidfds: dict[int, int] = {}
        for pid in self.procs():
            with suppress(ProcessLookupError):
                pidfds[pid] = syscalls.pidfd_open(pid)
        try:
            listed = self.procs()
            for pid in set(listed) & pidfds.keys():
                with suppress(ProcessLookupError):
                    syscalls.pidfd_send_signal(pidfds[pid], signum)
            return listed
        finally:
            for fd in pidfds.values():
                os.close(fd)

    def _kill_by_signals(self, frozen_first: bool) -> None:
        """v1's way (and v2's before cgroup.kill): freeze, SIGKILL each listed process, thaw, repeat."""
        if frozen_first:
            self.freeze()
            try:
                self._signal_listed()
            finally:
                self.thaw()
        wait_for(lambda: not self._signal_listed(), f"the processes of cgroup {self.name} to die")

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup and wait until none is left."""

    def destroy(self) -> None:
        """rmdir the cgroup in every hierarchy (the undo of `create`); refuses while processes remain.

        The engine's subtree goes too once its last container is gone (rmdir fails while it has others).
        """
        remaining = self.procs()
        if remaining:
            raise CgroupError(f"cgroup {self.name} still holds processes {remaining}: kill() them first "
                              f"(destroy never moves a process out of a cgroup)")
        for path in self.directories():
            remove_dir(path)
            if path.parent.name == SUBTREE:
                with suppress(OSError):
                    path.parent.rmdir()

    # --- limits, usage, freezing ------------------------------------------------------------------
    @abstractmethod
    def set_limits(self, limits: Limits) -> None:
        """Write every limit that `limits` sets (None fields are left as they are)."""

    @abstractmethod
    def limits(self) -> Limits:
        """Read the limits back from the kernel's files (None where there is no limit)."""

    @abstractmethod
    def stats(self) -> Stats:
        """Read usage now, in the units of `Stats`."""

    @abstractmethod
    def freeze(self) -> None:
        """Stop every process of the cgroup where it is, and return once all are frozen."""

    @abstractmethod
    def thaw(self) -> None:
        """Let the frozen processes run again."""

    @abstractmethod
    def frozen(self) -> bool:
        """Whether the cgroup is frozen now."""

    def _check_memory_not_below_usage(self, limit: int, usage: int | None) -> None:
        """Refuse a memory limit below what the cgroup uses now (v1 says EBUSY, v2 would OOM-kill)."""
        if usage is not None and limit < usage:
            raise CgroupError(f"memory limit {limit} bytes is below the {usage} bytes that cgroup "
                              f"{self.name} uses now: raise the limit, or free memory in the container first")
