"""Picking the backend by detection, and the engine's subtree: create, look up, list, observe.

v2 when the host has only the v2 tree; v1 on a v1 or hybrid host, because there the controllers are
bound to the v1 trees (a controller lives in one version at a time). Every container is
`<parent>/mini-container/<name>` in each hierarchy, with the parent resolved per hierarchy by
`detect.parent_path` (the engine's own cgroup unless told otherwise).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .base import Cgroup
from .detect import Layout, cgroup_of, detect, subtree_dir
from .files import CgroupError
from .limits import Limits
from .v1 import V1Cgroup
from .v2 import V2Cgroup


def backend_for(layout: Layout) -> type[Cgroup]:
    """V2Cgroup on a pure v2 host, V1Cgroup on v1 and hybrid hosts."""
    return V2Cgroup if layout.mode == "v2" else V1Cgroup


def create(name: str, limits: Limits | None = None, parent: str | None = None,
           layout: Layout | None = None, path: str | None = None) -> Cgroup:
    """Create the cgroup of container `name` with `limits` (at `path`, an OCI cgroupsPath, if given);
    undo with `.destroy()`."""
    layout = layout or detect()
    return backend_for(layout).create(name, limits or Limits(), layout, parent, path)


def lookup(name: str, parent: str | None = None, layout: Layout | None = None) -> Cgroup:
    """The existing cgroup of container `name`."""
    layout = layout or detect()
    cgroup = backend_for(layout).at(name, layout, parent)
    if not cgroup.exists():
        looked = [str(path) for path in cgroup.directories()]
        raise CgroupError(f"no cgroup for container {name!r}: looked at {looked}")
    return cgroup


def names(parent: str | None = None, layout: Layout | None = None) -> list[str]:
    """The containers with a cgroup in the engine's subtree, in any hierarchy (for garbage collection)."""
    layout = layout or detect()
    found: set[str] = set()
    for hierarchy in backend_for(layout).hierarchies(layout).values():
        directory = subtree_dir(hierarchy, parent)
        if directory.is_dir():
            found.update(entry.name for entry in directory.iterdir() if entry.is_dir())
    return sorted(found)


def observe(pid: int) -> dict[str, Any]:
    """The cgroup state of process `pid`: its cgroup path per hierarchy, its limits and its usage."""
    layout = detect()
    backend = backend_for(layout)
    cgroup = backend.of_pid(pid, layout)
    return {
        "mode": layout.mode,
        "version": backend.version,
        "cgroups": {key: cgroup_of(pid, hierarchy) for key, hierarchy in backend.hierarchies(layout).items()},
        "directories": cgroup.paths(),
        "limits": asdict(cgroup.limits()),
        "usage": asdict(cgroup.stats()),
    }
