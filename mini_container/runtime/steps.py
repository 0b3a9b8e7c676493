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
- /proc, /sys, /dev and the spec's mounts are mounted inside the new root before pivot_root, while
  both roots are visible (a bind's source is a host path), each target resolved inside the new root;
- the hooks of create run where runc runs them: prestart and createRuntime (by the engine, in its own
  namespaces) once the mounts are made, then createContainer (by the container's process, in its
  namespaces), both before pivot_root; startContainer runs in the exec step, just before execve;
- sysctls are written after pivot_root, through the container's own /proc, and before the read-only
  paths make /proc/sys read-only; the masks come after, and the root is made read-only last, once
  nothing more needs to be mounted in it (rootfs.py explains each);
- execve comes last; everything before it must be done by the engine's own code.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import cgroups, namespaces, network, rootfs
from .. import syscalls as sc
from . import channel, execution, hooks
from .spec import ContainerSpec, Mount


@dataclass(frozen=True)
class Step:
    """One step of the build: its name, a line saying what the kernel is asked, and where it runs."""

    name: str
    title: str
    side: str = "child"


_TITLES = {
    "uts": "unshare(CLONE_NEWUTS): a host name and domain name of its own",
    "ipc": "unshare(CLONE_NEWIPC): System V IPC objects and POSIX message queues of its own",
    "net": "unshare(CLONE_NEWNET): a network stack of its own, holding only a loopback device, brought up",
    "cgroup": "mkdir a cgroup, write its limits, write the child's pid to cgroup.procs",
    "netjoin": "setns(/proc/PID/ns/net): share another container's network namespace",
    "network": "a veth pair, one end born in the container as eth0, an address, a route, NAT",
    "cgroupns": "unshare(CLONE_NEWCGROUP): its own cgroup becomes the root it sees",
    "mnt": "unshare(CLONE_NEWNS) and mount --make-rprivate /: a mount table of its own",
    "pid": "unshare(CLONE_NEWPID) and fork(): the child is pid 1 of a new pid namespace",
    "hostname": "sethostname(): rename the container's UTS namespace",
    "rootfs": "mount -t overlay: the image's layers, read-only, under a writable upper directory",
    "proc": "mount -t proc: a /proc that shows the container's own processes",
    "sys": "mount -t sysfs (read-only): a /sys that shows the container's own network devices",
    "cgroupfs": "mount -t cgroup2 (or each v1 tree), read-only: /sys/fs/cgroup shows its own cgroup",
    "bundle_root": "mount --rbind ROOT ROOT: the bundle's root directory becomes a mount point of its own",
    "dev": "mount -t tmpfs on /dev: device nodes, a devpts instance of its own, /dev/shm",
    "mqueue": "mount -t mqueue on /dev/mqueue: the POSIX message queues of its IPC namespace",
    "mounts": "mount the spec's binds and filesystems, each destination resolved inside the new root",
    "runtime_hooks": "run the prestart and createRuntime hooks, from the engine, in the host's namespaces",
    "container_hooks": "run the createContainer hooks, in the container's namespaces, before pivot_root",
    "pivot_root": "pivot_root(): the new root becomes /, the host's root is unmounted",
    "move_root": "mount --move ROOT / and chroot(\".\"): the fallback where pivot_root cannot work",
    "sysctl": "write /proc/sys/...: kernel parameters of the container's own namespaces",
    "readonly_paths": "mount --bind P P, then remount it read-only: /proc/sys, /proc/sysrq-trigger, ...",
    "masked_paths": "mount /dev/null or an empty read-only tmpfs over /proc/kcore, /proc/keys, ...",
    "readonly_root": "mount -o remount,bind,ro /: the root filesystem becomes read-only",
    "terminal": "open /dev/ptmx, setsid, TIOCSCTTY: a terminal of its own, its master sent to the caller",
    "exec": "execve(): the container's command replaces the engine's code",
    "await_start": "open the exec FIFO: wait, fully built, until `start`; then execve()",
}


def plan(spec: ContainerSpec) -> list[Step]:
    """The ordered steps that build `spec`'s container."""
    names = [kind for kind in ("uts", "ipc", "net") if kind in spec.namespaces]
    if "uts" in names:
        names.insert(names.index("uts") + 1, "hostname")
    if spec.network == "container":
        names.append("netjoin")
    names += [kind for kind in ("mnt", "pid") if kind in spec.namespaces]
    names.append("cgroup")
    if spec.network == "bridge" and "net" in spec.namespaces:  # "none" is done by the child's net step
        names.append("network")
    if "cgroup" in spec.namespaces:
        names.append("cgroupns")
    names += ["bundle_root" if spec.root_path else "rootfs", "proc", "sys", "cgroupfs", "dev", "mqueue"]
    if extra_mounts(spec):
        names.append("mounts")
    if spec.hooks.get("prestart") or spec.hooks.get("createRuntime"):
        names.append("runtime_hooks")
    if spec.hooks.get("createContainer"):
        names.append("container_hooks")
    names.append("move_root" if spec.no_pivot else "pivot_root")
    after_pivot = {"sysctl": spec.sysctls, "readonly_paths": spec.readonly_paths,
                   "masked_paths": spec.masked_paths, "readonly_root": spec.readonly_rootfs}
    names += [name for name, wanted in after_pivot.items() if wanted]
    if spec.tty:
        names.append("terminal")
    names.append("await_start" if spec.exec_fifo else "exec")
    return [Step(name, _title(spec, name), "parent" if name in PARENT_STEPS else "child") for name in names]


def _title(spec: ContainerSpec, name: str) -> str:
    kind = "cgroup" if name == "cgroupns" else name
    if kind in spec.namespace_paths:
        return f"setns({spec.namespace_paths[kind]}): join that {kind} namespace instead of making one"
    return _TITLES[name]


# --- the parent's side ----------------------------------------------------------------------------
# Each function does its step to the child `pid` from outside and returns what the stepper keeps.


def _place_in_cgroup(spec: ContainerSpec, pid: int) -> cgroups.Cgroup:
    """The container's cgroup, under the engine's subtree or at the spec's cgroup path, with the spec's
    limits; the child moved in."""
    cgroup = cgroups.create(spec.id, spec.limits, path=spec.cgroup_path)
    try:
        cgroup.add(pid)
    except BaseException:
        cgroup.destroy()
        raise
    return cgroup


def _attach_network(spec: ContainerSpec, pid: int) -> object:
    """Plug pid 1's network namespace into the bridge: a veth whose end inside is eth0, an address, NAT."""
    return network.attach(spec.id, pid, spec.network, spec.publish, state_dir=spec.network_dir,
                          name=spec.name, hostname=spec.hostname, files_dir=spec.directory / "network")


def _run_runtime_hooks(spec: ContainerSpec, pid: int) -> None:
    """prestart (deprecated, runc runs it first), then createRuntime: the state says pid 1's host pid."""
    state = dict(spec.hook_state, status="creating", pid=pid)
    for kind in ("prestart", "createRuntime"):
        hooks.run_hooks(kind, spec.hooks.get(kind, []), state)


PARENT_STEPS: dict[str, Callable[[ContainerSpec, int], object]] = {
    "cgroup": _place_in_cgroup, "network": _attach_network, "runtime_hooks": _run_runtime_hooks,
}


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


def _enter(spec: ContainerSpec, kind: str) -> None:
    """unshare(2) a new namespace of `kind`, or setns(2) into the one the spec names by path."""
    if kind in spec.namespace_paths:
        namespaces.join_path(spec.namespace_paths[kind], kind)
    else:
        namespaces.unshare([kind])


def _unshare(kind: str) -> Callable[[ContainerSpec, socket.socket], dict]:
    def step(spec: ContainerSpec, sock: socket.socket) -> dict:
        _enter(spec, kind)
        return {}
    return step


def _hostname(spec: ContainerSpec, sock: socket.socket) -> dict:
    sc.sethostname(spec.hostname)
    return {}


def _net(spec: ContainerSpec, sock: socket.socket) -> dict:
    """A network namespace of its own, and its lo brought up from inside, as runc's init does.

    For --network none that is the whole network: its /etc files are written here, and no parent step
    follows. A bridge's veth is plugged in later, from outside (the parent's network step).
    """
    if "net" in spec.namespace_paths:  # joined (config.json gave its path): whoever made it set it up
        _enter(spec, "net")
        return {}
    namespaces.unshare(["net"])
    network.bring_loopback_up()
    if spec.network == "none":
        network.files.write(spec.directory / "network", network.loopback_files(spec.hostname or spec.id[:12]))
    return {}


def _netjoin(spec: ContainerSpec, sock: socket.socket) -> dict:
    network.join(spec.network_join_pid)
    return {}


def _mnt(spec: ContainerSpec, sock: socket.socket) -> dict:
    _enter(spec, "mnt")
    if "mnt" not in spec.namespace_paths:  # a joined one is another's: its propagation stays as it is
        namespaces.make_mounts_private()
    return {}


def _pid(spec: ContainerSpec, sock: socket.socket) -> dict | None:
    """Fork into the new pid namespace, answer with the new process's host pid, and exit.

    The controller is a child subreaper (see stepper.Stepper.start), so the new process, orphaned
    by this exit, becomes the controller's own child: the controller waits for pid 1 directly, as
    containerd's shim waits for runc's init. runc gets the same shape with clone(CLONE_PARENT).
    """
    _enter(spec, "pid")
    child = os.fork()
    if child == 0:
        return None  # pid 1 now; the parent answers for this step, as only it knows our host pid
    channel.send(sock, {"ok": True, "pid": child})
    os._exit(0)


# The mounts that the proc, sys, cgroupfs, dev and mqueue steps make: a config.json lists them too (runc
# spec does), and an entry that asks for the same type at the same place is left to those steps.
STANDARD_MOUNTS = {"/proc": {"proc"}, "/sys": {"sysfs"}, "/sys/fs/cgroup": {"cgroup", "cgroup2"},
                   "/dev": {"tmpfs"}, "/dev/pts": {"devpts"}, "/dev/shm": {"tmpfs"},
                   "/dev/mqueue": {"mqueue"}}


def extra_mounts(spec: ContainerSpec) -> list[Mount]:
    """The spec's mounts, but for the standard ones that the engine's own steps make."""
    return [m for m in spec.mounts
            if m.type not in STANDARD_MOUNTS.get(os.path.normpath(m.destination), set())]


def root_of(spec: ContainerSpec) -> Path:
    """Where the container's root is mounted on the host: the overlay's mount point, or a bundle's root."""
    return Path(os.path.realpath(spec.root_path)) if spec.root_path else spec.rootfs


def _rootfs(spec: ContainerSpec, sock: socket.socket) -> dict:
    for path in (spec.upper, spec.work, spec.rootfs):
        path.mkdir(parents=True, exist_ok=True)
    rootfs.mount_overlay(spec.lowers, spec.upper, spec.work, spec.rootfs)
    return {}


def _bundle_root(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.bind_root(root_of(spec))
    return {}


def _proc(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_proc(root_of(spec))
    return {}


def _sys(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_sys(root_of(spec))
    return {}


def _cgroupfs(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_cgroups(root_of(spec), cgroup_mounts(cgroups.detect()))
    return {}


def _dev(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_dev(root_of(spec))
    return {}


def _mqueue(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.mount_mqueue(root_of(spec))
    return {}


def _mounts(spec: ContainerSpec, sock: socket.socket) -> dict:
    for m in extra_mounts(spec):
        rootfs.mount_entry(root_of(spec), m.destination, m.type, m.source, m.options)
    return {}


def _container_hooks(spec: ContainerSpec, sock: socket.socket) -> dict:
    hooks.run_in_container("createContainer", spec.hooks["createContainer"],
                           dict(spec.hook_state, status="creating"))
    return {}


def _pivot_root(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.pivot_root(root_of(spec))
    return {}


def _move_root(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.move_root(root_of(spec))
    return {}


def _sysctl(spec: ContainerSpec, sock: socket.socket) -> dict:
    for key, value in spec.sysctls.items():
        rootfs.write_sysctl(key, value, spec.namespaces)
    return {}


def _readonly_paths(spec: ContainerSpec, sock: socket.socket) -> dict:
    for path in spec.readonly_paths:
        rootfs.bind_readonly(path)
    return {}


def _masked_paths(spec: ContainerSpec, sock: socket.socket) -> dict:
    for path in spec.masked_paths:
        rootfs.mask(path)
    return {}


def _readonly_root(spec: ContainerSpec, sock: socket.socket) -> dict:
    rootfs.remount_readonly("/")
    return {}


CHILD_STEPS: dict[str, Callable[[ContainerSpec, socket.socket], dict | None]] = {
    "uts": _unshare("uts"), "ipc": _unshare("ipc"), "net": _net, "cgroupns": _unshare("cgroup"),
    "hostname": _hostname, "netjoin": _netjoin, "mnt": _mnt, "pid": _pid, "rootfs": _rootfs,
    "bundle_root": _bundle_root,
    "proc": _proc, "sys": _sys, "cgroupfs": _cgroupfs, "dev": _dev, "mqueue": _mqueue, "mounts": _mounts,
    "container_hooks": _container_hooks, "pivot_root": _pivot_root, "move_root": _move_root,
    "sysctl": _sysctl, "readonly_paths": _readonly_paths,
    "masked_paths": _masked_paths, "readonly_root": _readonly_root, "terminal": execution.terminal,
    "exec": execution.exec_now, "await_start": execution.await_start,
}
