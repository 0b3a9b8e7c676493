"""Garbage collection: find and remove what crashed runs left behind.

Most of a container cleans itself up: its mounts live in its own mount namespace, which the kernel
tears down with its last process. What outlives a crash (`kill -9` of minictl, of a monitor, of
mini-runc in the middle of create) is what lives in shared places:

- cgroups in the engine's subtree whose container is gone (an empty cgroup is never removed by the
  kernel; a cgroup with processes keeps them running, limited, invisible to `minictl ps`);
- container records that still say "running" though nothing runs;
- half-made directories: a container directory without its record, an OCI state directory stuck in
  "creating" or whose pid 1 died before anyone deleted it.

`collect()` removes each, and returns one line per thing it removed, so that `minictl gc` can say
what it did. It never touches a container whose pid 1 is alive.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

from .. import cgroups
from ..errors import ContainerError
from .containers import ContainerStore, process_alive
from .lifecycle import Lifecycle


def collect(engine_root: str | Path, runtime_root: str | Path) -> list[str]:
    """Remove every leftover of crashed runs; return what was removed, one line each.

    Only this engine's own containers count: a cgroup is removed when its name is the id of a
    container recorded under `engine_root` or `runtime_root` that no longer runs. The cgroup subtree
    may be shared by other engine roots (every test session has its own), whose cgroups are left alone.
    """
    removed: list[str] = []
    known: set[str] = set()
    live = _live_containers(engine_root, runtime_root, removed, known)
    layout = cgroups.detect()
    for name in cgroups.names(layout=layout):
        if name in live or name not in known:
            continue
        cgroup = cgroups.backend_for(layout).at(name, layout)
        cgroup.thaw()
        cgroup.kill()
        cgroup.destroy()
        removed.append(f"cgroup {name}")
    return removed


def _live_containers(engine_root: str | Path, runtime_root: str | Path, removed: list[str],
                     known: set[str]) -> set[str]:
    """The ids of containers that still run; records and state directories of dead ones are fixed.

    `known` collects the id of every container this engine has a record or state directory of.
    """
    live: set[str] = set()
    store = ContainerStore(engine_root)
    with store.locked():  # a container being created holds it between its mkdir and its record
        _check_records(store, live, removed, known)
    runtime = Lifecycle(runtime_root)
    for state_path in sorted(runtime.root.glob("*/state.json")) if runtime.root.is_dir() else []:
        container_id = state_path.parent.name
        known.add(container_id)
        with contextlib.suppress(ContainerError):
            state = runtime.state(container_id)
            if state["status"] in ("created", "running", "paused"):
                live.add(container_id)
            elif state["status"] == "creating" and not runtime.busy(container_id):
                shutil.rmtree(state_path.parent, ignore_errors=True)
                removed.append(f"half-created OCI container {container_id}")
    return live


def _check_records(store: ContainerStore, live: set[str], removed: list[str], known: set[str]) -> None:
    for directory in sorted(store.dir.iterdir()) if store.dir.is_dir() else []:
        if not directory.is_dir():
            continue
        record_path = directory / "container.json"
        if not record_path.exists():
            shutil.rmtree(directory, ignore_errors=True)
            removed.append(f"half-made container directory {directory.name}")
            continue
        record = json.loads(record_path.read_text())
        known.add(record["id"])
        if process_alive(record.get("monitor")) or (record["status"] == "running"
                                                    and process_alive(record["pid"])):
            live.add(record["id"])  # being built, running, or its monitor is still recording its exit
        elif record["status"] in ("running", "created"):
            store.update(record["id"], status="exited", pid=None)
            removed.append(f"stale state of container {record['name']} (now exited)")
