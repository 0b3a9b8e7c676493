"""Stage 3: the container's root filesystem.

A container sees its image as `/`. Four kernel features make that happen, in this order:

1. **Mount propagation.** After `unshare(CLONE_NEWNS)` the new mount namespace holds copies of the
   host's mounts, and copies of *shared* mounts still forward new mounts to their peers: a mount made
   in the container could appear on the host. `namespaces.make_mounts_private()` remounts `/`
   recursively with MS_PRIVATE (`mount --make-rprivate /`), which cuts every peer link, before this
   stage mounts anything. Look for `shared:N` in the optional fields of /proc/PID/mountinfo before,
   and their absence after.
2. **overlayfs.** `mount_overlay()` stacks the image's layers (read-only "lower" directories, top
   first in the `lowerdir=` option) under a per-container "upper" directory that takes every write;
   overlayfs also needs an empty "work" directory on the same filesystem as the upper. A file deleted
   in the container becomes a *whiteout* (a 0/0 character device) in the upper directory.
3. **The pseudo filesystems.** `/proc` is mounted fresh, so that it shows the processes of the
   container's pid namespace (a mount of proc is tied to the pid namespace of whoever mounts it);
   `/sys` read-only, so that it shows the container's network namespace; `/dev` is a small tmpfs with
   the device nodes a program expects, plus a devpts instance of its own for terminals.
4. **pivot_root.** `chroot` only changes how one process resolves `/` — the old root is still mounted
   and reachable (a process with CAP_SYS_CHROOT can walk out of a chroot). `pivot_root(new, old)`
   instead makes `new` the root *mount* of the namespace and moves the old root under it, where it is
   then unmounted: the host's filesystem is no longer reachable at all. The traps: `new_root` must be a
   mount point (EINVAL otherwise), must not be on a shared mount, and the old root must be detached
   (MNT_DETACH) because it is still busy. `pivot_root(".", ".")` — runc's trick — stacks the old root
   on top of the new one at `/`, so no `put_old` directory is needed; one lazy unmount removes it.

`observe(pid)` reads this stage's kernel state: the process's mounts and its root.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from . import syscalls as sc

# The device nodes a program expects in /dev: name -> (major, minor). runc creates the same set.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
           "tty": (5, 0)}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}


def mount_overlay(lowers: list[str | Path], upper: str | Path, work: str | Path, target: str | Path) -> None:
    """Mount an overlay at `target`: `lowers` (bottom layer first) under the writable `upper`."""
    top_first = ":".join(str(p) for p in reversed(lowers))
    options = f"lowerdir={top_first},upperdir={upper},workdir={work}"
    sc.mount("overlay", str(target), "overlay", 0, options)


def unmount(target: str | Path) -> None:
    """Undo a mount (lazily, if it is still busy)."""
    sc.umount2(str(target), sc.MNT_DETACH)


def mount_proc(root: str | Path) -> None:
    """A fresh procfs at ROOT/proc, showing the pid namespace of the calling process."""
    sc.mount("proc", f"{root}/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def mount_sys(root: str | Path) -> None:
    """sysfs at ROOT/sys, read-only; its /sys/class/net shows the mounter's network namespace."""
    sc.mount("sysfs", f"{root}/sys", "sysfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)


def mount_cgroups(root: str | Path, hierarchies: list[tuple[str, str, str | None]]) -> None:
    """The cgroup filesystems at ROOT/sys/fs/cgroup, read-only.

    `hierarchies` lists (subdirectory, fstype, options): [("", "cgroup2", None)] on a pure v2 host
    (one tree, mounted right there), or one entry per v1 tree ("memory", "cgroup", "memory") plus
    ("unified", "cgroup2", None) on a hybrid host, under a small tmpfs. Mounted by a process inside a
    cgroup namespace, each shows only that namespace's root, i.e. the container's own cgroup.
    """
    target = Path(root) / "sys/fs/cgroup"
    flags = sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC
    if [h[0] for h in hierarchies] == [""]:
        _, fstype, options = hierarchies[0]
        sc.mount(fstype, str(target), fstype, flags, options)
        return
    sc.mount("tmpfs", str(target), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC, "mode=755")
    for name, fstype, options in hierarchies:
        (target / name).mkdir()
        sc.mount(fstype, str(target / name), fstype, flags, options)
    sc.mount("tmpfs", str(target), "tmpfs", sc.MS_REMOUNT | flags, "mode=755")


def mount_dev(root: str | Path) -> None:
    """A tmpfs at ROOT/dev with the standard device nodes, a private devpts, /dev/shm and stdio links."""
    dev = Path(root) / "dev"
    sc.mount("tmpfs", str(dev), "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    for name, (major, minor) in DEVICES.items():
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(dev / name, 0o666)  # mknod's mode is filtered by the umask
    (dev / "pts").mkdir()
    sc.mount("devpts", str(dev / "pts"), "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620")
    (dev / "shm").mkdir()
    sc.mount("shm", str(dev / "shm"), "tmpfs", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
             "mode=1777,size=65536k")
    for name, target in DEV_LINKS.items():
        os.symlink(target, dev / name)


def pivot_root(new_root: str | Path) -> None:
    """Make `new_root` (a mount point) the root of this mount namespace and drop the old root."""
    os.chdir(new_root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)  # the old root, now stacked on top of the new one at "/"
    os.chdir("/")


def observe(pid: int) -> dict:
    """The stage's kernel state for `pid`: its root directory and its mount points."""
    mounts = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            mounts.append({"mount_point": fields[4], "fstype": fields[separator + 1],
                           "source": fields[separator + 2], "propagation": fields[6:separator]})
    return {"root": os.readlink(f"/proc/{pid}/root"), "mounts": mounts}
