"""The recipe: a container built one kernel change at a time.

Each `Step` names one change and the side that makes it. Child steps run inside the process that
becomes the container (only a process can unshare its own namespaces or pivot its own root); parent
steps (placing the child in a cgroup, writing its uid map) are done to it from outside. The same plan
serves `minictl run` (no pauses), a notebook and the visualizer (a pause and a snapshot after each).

The order matters, and each constraint is a lesson:
- the host name is set after the UTS namespace exists, or it would rename the host;
- the process is placed in its cgroup after the pid step, so that only pid 1 and what it starts are
  counted (not the waiter the fork leaves behind), and before it unshares the cgroup namespace, whose
  root is the cgroup it is in at that moment;
- mounts are made private right after the mount namespace exists, before anything is mounted;
- the pid namespace applies to children only, so the child forks: its child is pid 1 inside, and
  everything after that happens in it (the proc mount included, so /proc shows the new namespace);
- /proc, /sys and /dev are mounted inside the new root before pivot_root, while both roots are visible;
- execve comes last; everything before it must be done by the engine's own code.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from .. import cgroups, namespaces, rootfs
from .. import syscalls as sc
from . import channel, execution
from .spec import ContainerSpec


@dataclass(frozen=True)
class Step:
    """One step of the build: its name, a line saying what the kernel is asked, and where it runs."""

    name: str
    title: str
    side: str = "child"


_TITLES = {
    "uts": "unshare(CLONE_NEWUTS): a host name and domain name of its own",
    "ipc": "unshare(CLONE_NEWIPC): System V IPC objects and POSIX message queues of its own",
    "net": "unshare(CLONE_NEWNET): a network stack of its own, holding only a loopback device",
    "cgroup": "mkdir a cgroup, write its limits, write the child's pid to cgroup.procs",
    "cgroupns": "unshare(CLONE_NEWCGROUP): its own cgroup becomes the root it sees",
    "mnt": "unshare(CLONE_NEWNS) and mount --make-rprivate /: a mount table of its own",
    "pid": "unshare(CLONE_NEWPID) and fork(): the child is pid 1 of a new pid namespace",
    "hostname": "sethostname(): rename the container's UTS namespace",
    "rootfs": "mount -t overlay: the image's layers, read-only, under a writable upper directory",
    "proc": "mount -t proc: a /proc that shows the container's own processes",
    "sys": "mount -t sysfs (read-only): a /sys that shows the container's own network devices",
    "cgroupfs": "mount -t cgroup2 (or each v1 tree), read-only: /sys/fs/cgroup shows its own cgroup",
    "dev": "mount -t tmpfs on /dev: device nodes, a devpts instance of its own, /dev/shm",
    "pivot_root": "pivot_root(): the overlay becomes /, the host's root is unmounted",
    "terminal": "open /dev/ptmx, setsid, TIOCSCTTY: a terminal of its own, its master sent to the caller",
    "exec": "execve(): the container's command replaces the engine's code",
    "await_start": "open the exec FIFO: wait, fully built, until `start`; then execve()",
}


def plan(spec: ContainerSpec) -> list[Step]:
    """The ordered steps that build `spec`'s container."""
    names = [kind for kind in ("uts", "ipc", "net") if kind in spec.namespaces]
    if "uts" in names:
        names.insert(names.index("uts") + 1, "hostname")
    names += [kind for kind in ("mnt", "pid") if kind in spec.namespaces]
    names.append("cgroup")
    if "cgroup" in spec.namespaces:
        names.append("cgroupns")
    names += ["rootfs", "proc", "sys", "cgroupfs", "dev", "pivot_root"]
    if spec.tty:
        names.append("terminal")
    names.append("await_start" if spec.exec_fifo else "exec")
    return [Step(name, _TITLES[name], "parent" if name in PARENT_STEPS else "child") for name in names]


# --- the parent's side ----------------------------------------------------------------------------
# Each function does its step to the child `pid` from outside and returns what the stepper keeps.


def _place_in_cgroup(spec: ContainerSpec, pid: int) -> cgroups.Cgroup:
    """The container's cgroup, under the engine's subtree, with the spec's limits; the child moved in."""
    cgroup = cgroups.create(spec.id, spec.limits)
    try:
        cgroup.add(pid)
    except BaseException:
        cgroup.destroy()
        raise
    return cgroup


PARENT_STEPS: dict[str, Callable[[ContainerSpec, int], object]] = {"cgroup": _place_in_cgroup}


def cgroup_mounts(layout: cgroups.Layout) -> list[tuple[str, str, str | None]]:
    """What to mount under /sys/fs/cgroup for this host's cgroup layout (see rootfs.mount_cgroups)."""
    if layout.mode == "v2":
        return [("", "cgroup2", None)]
    trees = {h.mount: h for h in layout.v1.values()}.values()
    mounts = [(h.mount.name, "cgroup", ",".join(sorted(h.controllers))) for h in trees]
    if layout.v2 is not None:
        mounts.append((layout.v2.mount.name, "cgroup2", None))
    return mounts


# --- the child's side of each step --------------------------------------------------------------
# Each function does its step in the calling (child) process and returns the reply's extra fields.


def _unshare(kind: str) -> Callable[[ContainerSpec, socket.socket], dict]:
    def step(spec: ContainerSpec, sock: socket.socket) -> dict:
        namespaces.unshare([kind])
        return {}
    return step


def _hostname(spec: ContainerSpec, sock: socket.socket) -> dict:
    sc.sethostname(spec.hostname)
    return {}


def _mnt(spec: ContainerSpec, sock: socket.socket) -> dict:
    namespaces.unshare(["mnt"])
    namespaces.make_mounts_private()
    return {}


def _pid(spec: ContainerSpec, sock: socket.socket) -> dict | None:
    """Fork into the new pid namespace, answer with the new process's host pid, and exit.

    The controller is a child subreaper (see stepper.Stepper.start), so the new process, orphaned
    by this exit, becomes the controller's own child: the controller waits for pid 1 directly, as
    containerd's shim waits for runc's init. runc gets the same shape with clone(CLONE_PARENT).
    """
    namespaces.unshare(["pid"])
    child = os.fork()
    if child == 0:
        return None  # pid 1 now; the parent answers for this step, as only it knows our host pid
    channel.send(sock, {"ok": True, "pid": child})
    os._exit(0)


def _rootfs(spec: ContainerSpec, sock: socket.socket) -> dict:
    for path in (spec.upper, spec.work, spec.rootfs):
        path.mkdir(parents=True, exist_ok=True)
    rootfs.mount_overlay(spec.lowers, spec.upper, spec.work, spec.rootfs)
    return {}


def _proc(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_proc(spec.rootfs)
    return {}


def _sys(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_sys(spec.rootfs)
    return {}


def _cgroupfs(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_cgroups(spec.rootfs, cgroup_mounts(cgroups.detect()))
    return {}


def _dev(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_dev(spec.rootfs)
    return {}


def _pivot_root(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.pivot_root(spec.rootfs)
    return {}


CHILD_STEPS: dict[str, Callable[[ContainerSpec, socket.socket], dict | None]] = {
    "uts": _unshare("uts"), "ipc": _unshare("ipc"), "net": _unshare("net"), "cgroupns": _unshare("cgroup"),
    "hostname": _hostname, "mnt": _mnt, "pid": _pid, "rootfs": _rootfs, "proc": _proc, "sys": _sys,
    "cgroupfs": _cgroupfs, "dev": _dev, "pivot_root": _pivot_root, "terminal": execution.terminal,
    "exec": execution.exec_now, "await_start": execution.await_start,
}
