"""Stage 3: the container's root filesystem.

A container sees its image as `/`. The kernel features that make that happen, in the order of the build:

1. **Mount propagation.** After `unshare(CLONE_NEWNS)` the new mount namespace holds copies of the
   host's mounts, and copies of *shared* mounts still forward new mounts to their peers: a mount made
   in the container could appear on the host. `namespaces.make_mounts_private()` remounts `/`
   recursively with MS_PRIVATE (`mount --make-rprivate /`), which cuts every peer link, before this
   stage mounts anything. Look for `shared:N` in the optional fields of /proc/PID/mountinfo before,
   and their absence after. (runc uses MS_SLAVE: host mounts still arrive, nothing goes back.)
2. **The root.** `mount_overlay()` stacks the image's layers (read-only "lower" directories, top first
   in `lowerdir=`) under a per-container "upper" directory that takes every write; overlayfs also
   needs an empty "work" directory on the same filesystem as the upper. A file deleted in the
   container becomes a *whiteout* (a 0/0 character device) in the upper directory. An OCI bundle
   brings a plain directory instead; `bind_root()` bind-mounts it onto itself (MS_BIND|MS_REC), runc's
   way, because pivot_root wants its new root to be a mount point (EINVAL otherwise).
3. **Every mount target is resolved inside the root.** Before pivot_root the engine still sees the
   host, and the image is hostile input: if its /etc is a symlink to `/`, a naive
   `mount(src, ROOT + "/etc/x")` follows the link and mounts (and mkdirs) on the *host's* /x. That is
   the CVE-2021-30465 class (runc's fix: securejoin, then openat2). `open_in_root()` asks the kernel
   itself: openat2(2) with RESOLVE_IN_ROOT resolves the path as if ROOT were "/" (absolute symlinks
   and ".." stay inside) and returns an O_PATH descriptor; missing directories are made on the way,
   each relative to its resolved parent. The mount is then made on `/proc/self/fd/N`, the magic link to
   exactly that descriptor, so nothing can be swapped between the check and the mount. A mount does
   not move a descriptor onto the new mount's root: every follow-up (remount, propagation, filling
   /dev) resolves the path afresh, which crosses into the new mount.
4. **The pseudo filesystems.** `/proc` is mounted fresh, so that it shows the processes of the
   container's pid namespace (a proc mount is tied to the pid namespace of its mounter); `/sys`
   read-only, so that it shows the container's network namespace; `/dev` is a small tmpfs with the
   device nodes a program expects, a devpts instance of its own (`newinstance`: its own pty numbers,
   /dev/ptmx a link to its pts/ptmx), /dev/shm, and /dev/mqueue (an mqueue filesystem shows the
   POSIX message queues of its mounter's IPC namespace).
5. **Bind mounts and their traps.** `mount_entry()` makes one OCI `mounts` entry (`-v HOST:CTR[:ro]`,
   `--tmpfs`, ...). A bind ignores MS_RDONLY (and nosuid, nodev, noexec): the kernel only copies the
   source mount. Making it read-only takes a *second* call, MS_BIND|MS_REMOUNT|MS_RDONLY, and that
   remount sets the mount's flags to exactly what it is given: a nosuid not repeated is dropped (and in
   a user namespace, where such flags are locked, the remount fails with EPERM), so `remount()` reads
   the current flags with statvfs() and keeps them. The remount applies to one mount: a recursive bind
   made read-only leaves its submounts writable (mount_setattr(AT_RECURSIVE) is the fix, since 5.12).
   Propagation (MS_PRIVATE, MS_SLAVE, ...) cannot be combined with any other flag: a third call.
6. **pivot_root.** `chroot` only changes how one process resolves `/` — the old root is still mounted
   and reachable (a process with CAP_SYS_CHROOT can walk out of a chroot). `pivot_root(new, old)`
   instead makes `new` the root *mount* of the namespace and moves the old root under it, where it is
   then unmounted: the host's filesystem is no longer reachable at all. The traps: `new_root` must be a
   mount point, must not be on a shared mount, and the old root must be detached (MNT_DETACH) because
   it is still busy. `pivot_root(".", ".")` — runc's trick — stacks the old root on top of the new one
   at `/`, so no `put_old` directory is needed; one lazy unmount removes it.
7. **Where pivot_root cannot work: MS_MOVE + chroot.** The initial ramfs (initramfs, when a system
   runs from RAM: minikube's old ISO, boot2docker, PXE-booted hosts) is the absolute root mount, with
   no parent to move it under; pivot_root fails with EINVAL (see pivot_root(2), NOTES). `move_root()`
   is the fallback (`runc --no-pivot`, Docker's DOCKER_RAMDISK, switch_root's way): move the new
   root's mount over `/` with MS_MOVE, then chroot(".") into it. Its weakness: the host's root and all
   its mounts stay in the container's mount namespace, merely covered. Two consequences.
   (a) The kernel lets a user namespace mount a fresh procfs or sysfs only if a full, unmasked one is
   already visible in its mount namespace; the host's still is, so a container could mount an
   unmasked /proc. runc fixed that in 2019 (PR #1962) by unmounting the host's proc and sysfs mounts
   first, and `move_root()` does the same. (b) A process with CAP_SYS_ADMIN lifts the cover:
   umount2("/", MNT_DETACH) detaches the moved root (an ordinary mount here, not the namespace's
   root), and whatever next setns()es into the namespace — the process itself, or an exec joining the
   container — lands on the host's `/`. Docker drops CAP_SYS_ADMIN by default; a privileged container
   has lost anyway. What does *not* work is the textbook chroot escape (chroot into a subdirectory,
   `cd ..` many times, chroot "."): ".." from the top of the moved root reaches the old root's `/`
   and falls straight back down into the mount that covers it, so CAP_SYS_CHROOT alone opens nothing
   here (tests/test_rootfs.py tries both ways out). runc's maintainers still call --no-pivot insecure;
   newer runc avoids it on initramfs by pivoting into a bind mount of the root instead.
8. **After the pivot**, where no path can lead outside any more: sysctls are written to /proc/sys —
   only namespaced ones, and only for a namespace the container owns, or the write would change the
   host (`check_sysctl()`); then runc's read-only paths are bound onto themselves and remounted
   read-only (/proc/sys after the sysctls, or they could not be written); masked paths get /dev/null
   bound over a file and an empty read-only tmpfs over a directory, so /proc/kcore reads as empty and
   /proc/acpi lists nothing (a masked path the kernel does not have is skipped); last, a read-only
   root remounts `/` read-only. Only `/` itself: /dev, /proc and each tmpfs or bind keep their own
   flags, which is why `--read-only --tmpfs /tmp` leaves /tmp writable.

Every mount here is undone by `unmount()`, or all at once when the container's mount namespace dies
with its last process. The directories and files made as mount points stay in the upper directory
(or the bundle's root), as runc and Docker leave them. `observe(pid)` reads this stage's kernel state:
the process's mounts and its root.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import syscalls as sc
from .errors import ContainerError, InvalidArgumentError

# The device nodes a program expects in /dev: name -> (major, minor). runc creates the same set.
DEVICES = {"null": (1, 3), "zero": (1, 5), "full": (1, 7), "random": (1, 8), "urandom": (1, 9),
           "tty": (5, 0)}
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2", "ptmx": "pts/ptmx"}
PSEUDO_FLAGS = sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC

# mount(8) option words -> (flag, set or clear). Anything else is filesystem data ("size=64m").
FLAG_WORDS = {
    "ro": (sc.MS_RDONLY, True), "rw": (sc.MS_RDONLY, False), "nosuid": (sc.MS_NOSUID, True),
    "suid": (sc.MS_NOSUID, False), "nodev": (sc.MS_NODEV, True), "dev": (sc.MS_NODEV, False),
    "noexec": (sc.MS_NOEXEC, True), "exec": (sc.MS_NOEXEC, False), "sync": (sc.MS_SYNCHRONOUS, True),
    "async": (sc.MS_SYNCHRONOUS, False), "dirsync": (sc.MS_DIRSYNC, True), "noatime": (sc.MS_NOATIME, True),
    "atime": (sc.MS_NOATIME, False), "nodiratime": (sc.MS_NODIRATIME, True),
    "diratime": (sc.MS_NODIRATIME, False), "relatime": (sc.MS_RELATIME, True),
    "norelatime": (sc.MS_RELATIME, False), "strictatime": (sc.MS_STRICTATIME, True),
    "bind": (sc.MS_BIND, True), "rbind": (sc.MS_BIND | sc.MS_REC, True),
}
PROPAGATION_WORDS = {
    "private": sc.MS_PRIVATE, "rprivate": sc.MS_PRIVATE | sc.MS_REC, "slave": sc.MS_SLAVE,
    "rslave": sc.MS_SLAVE | sc.MS_REC, "shared": sc.MS_SHARED, "rshared": sc.MS_SHARED | sc.MS_REC,
    "unbindable": sc.MS_UNBINDABLE, "runbindable": sc.MS_UNBINDABLE | sc.MS_REC,
}
# statvfs's ST_* bits -> the MS_* flags a bind remount must repeat to keep them.
_KEPT_FLAGS = {os.ST_NOSUID: sc.MS_NOSUID, os.ST_NODEV: sc.MS_NODEV, os.ST_NOEXEC: sc.MS_NOEXEC,
               os.ST_NOATIME: sc.MS_NOATIME, os.ST_NODIRATIME: sc.MS_NODIRATIME,
               os.ST_RELATIME: sc.MS_RELATIME}


@dataclass
class MountOptions:
    """mount(8) words sorted into what mount(2) takes: flags, propagation calls, and the data string."""

    flags: int = 0
    propagation: list[int] = field(default_factory=list)
    data: str | None = None


def parse_options(words: list[str]) -> MountOptions:
    """`["rbind", "ro", "rslave", "size=64m"]` -> flags, propagation changes and data, in order."""
    options, data = MountOptions(), []
    for word in words:
        if word in FLAG_WORDS:
            flag, on = FLAG_WORDS[word]
            options.flags = options.flags | flag if on else options.flags & ~flag
        elif word in PROPAGATION_WORDS:
            options.propagation.append(PROPAGATION_WORDS[word])
        else:
            data.append(word)
    options.data = ",".join(data) or None
    return options


# --- resolving paths inside the root ----------------------------------------------------------------

def open_in_root(root: str | Path, path: str, create: str | None = None) -> int:
    """An O_PATH descriptor of `path` resolved inside `root` as if `root` were "/" (openat2 with
    RESOLVE_IN_ROOT). With `create` ("dir" or "file"), what is missing is made on the way: directories,
    and the last component a `create`, each relative to its parent's descriptor. The caller closes it."""
    parts = [part for part in path.split("/") if part not in ("", ".")]
    root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            return _resolve(root_fd, parts)
        except FileNotFoundError:
            if create is None:
                raise
        fd = os.dup(root_fd)
        try:
            for depth, name in enumerate(parts, 1):
                try:
                    found = _resolve(root_fd, parts[:depth])
                except FileNotFoundError:
                    _make(fd, name, create if depth == len(parts) else "dir", path)
                    found = _resolve(root_fd, parts[:depth])
                os.close(fd)
                fd = found
        except BaseException:
            os.close(fd)
            raise
        return fd
    finally:
        os.close(root_fd)


def _resolve(root_fd: int, parts: list[str]) -> int:
    return sc.openat2(root_fd, "/".join(parts) or ".", os.O_PATH | os.O_CLOEXEC, 0,
                      sc.RESOLVE_IN_ROOT | sc.RESOLVE_NO_MAGICLINKS)


def _make(parent: int, name: str, kind: str, path: str) -> None:
    try:
        if kind == "dir":
            os.mkdir(name, 0o755, dir_fd=parent)
        else:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=parent))
    except FileExistsError:  # resolving it failed, yet it exists: a symlink to a missing path
        raise ContainerError(f"cannot make the mount point {path} in the container: {name!r} is a symlink to "
                             "a path that does not exist in the image; fix the image or choose another "
                             "destination") from None


@contextlib.contextmanager
def target_in_root(root: str | Path, destination: str, create: str | None = None) -> Iterator[str]:
    """`/proc/self/fd/N` for `destination` resolved inside `root`: a mount(2) target no symlink can move."""
    fd = open_in_root(root, destination, create)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def mount_in_root(root: str | Path, destination: str, source: str | None, fstype: str | None,
                  flags: int = 0, data: str | None = None, create: str | None = "dir") -> None:
    """mount(2) on `destination` resolved inside `root`; an error names the destination, not the fd."""
    with target_in_root(root, destination, create) as target:
        try:
            sc.mount(source, target, fstype, flags, data)
        except OSError as e:
            raise ContainerError(f"mounting on {destination} in the container failed: {e}") from None


# --- the root -------------------------------------------------------------------------------------

def mount_overlay(lowers: list[str | Path], upper: str | Path, work: str | Path, target: str | Path) -> None:
    """Mount an overlay at `target`: `lowers` (bottom layer first) under the writable `upper`."""
    top_first = ":".join(str(p) for p in reversed(lowers))
    options = f"lowerdir={top_first},upperdir={upper},workdir={work}"
    sc.mount("overlay", str(target), "overlay", 0, options)


def bind_root(root: str | Path) -> None:
    """Bind-mount a bundle's root directory onto itself, with its submounts, so that it is a mount point."""
    sc.mount(str(root), str(root), None, sc.MS_BIND | sc.MS_REC)


def unmount(target: str | Path) -> None:
    """Undo a mount (lazily, if it is still busy)."""
    sc.umount2(str(target), sc.MNT_DETACH)


# --- the pseudo filesystems -----------------------------------------------------------------------

def mount_proc(root: str | Path) -> None:
    """A fresh procfs at ROOT/proc, showing the pid namespace of the calling process."""
    mount_in_root(root, "/proc", "proc", "proc", PSEUDO_FLAGS)


def mount_sys(root: str | Path) -> None:
    """sysfs at ROOT/sys, read-only; its /sys/class/net shows the mounter's network namespace."""
    mount_in_root(root, "/sys", "sysfs", "sysfs", sc.MS_RDONLY | PSEUDO_FLAGS)


def mount_cgroups(root: str | Path, hierarchies: list[tuple[str, str, str | None]]) -> None:
    """The cgroup filesystems at ROOT/sys/fs/cgroup, read-only.

    `hierarchies` lists (subdirectory, fstype, options): [("", "cgroup2", None)] on a pure v2 host
    (one tree, mounted right there), or one entry per v1 tree ("memory", "cgroup", "memory") plus
    ("unified", "cgroup2", None) on a hybrid host, under a small tmpfs. Mounted by a process inside a
    cgroup namespace, each shows only that namespace's root, i.e. the container's own cgroup.
    """
    flags = sc.MS_RDONLY | PSEUDO_FLAGS
    if [h[0] for h in hierarchies] == [""]:
        _, fstype, options = hierarchies[0]
        mount_in_root(root, "/sys/fs/cgroup", fstype, fstype, flags, options)
        return
    mount_in_root(root, "/sys/fs/cgroup", "tmpfs", "tmpfs", PSEUDO_FLAGS, "mode=755")
    for name, fstype, options in hierarchies:
        mount_in_root(root, f"/sys/fs/cgroup/{name}", fstype, fstype, flags, options)
    mount_in_root(root, "/sys/fs/cgroup", "tmpfs", "tmpfs", sc.MS_REMOUNT | flags, "mode=755")


def mount_dev(root: str | Path) -> None:
    """A tmpfs at ROOT/dev with the standard device nodes, a private devpts, /dev/shm and stdio links."""
    mount_in_root(root, "/dev", "tmpfs", "tmpfs", sc.MS_NOSUID | sc.MS_STRICTATIME, "mode=755,size=65536k")
    dev = open_in_root(root, "/dev")  # resolved afresh: the new tmpfs, not the directory under it
    try:
        for name, (major, minor) in DEVICES.items():
            os.mknod(name, 0o666 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=dev)
            os.chmod(name, 0o666, dir_fd=dev)  # mknod's mode is filtered by the umask
        for name, target in DEV_LINKS.items():
            os.symlink(target, name, dir_fd=dev)
    finally:
        os.close(dev)
    mount_in_root(root, "/dev/pts", "devpts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
                  "newinstance,ptmxmode=0666,mode=0620")
    mount_in_root(root, "/dev/shm", "shm", "tmpfs", PSEUDO_FLAGS, "mode=1777,size=65536k")


def mount_mqueue(root: str | Path) -> None:
    """An mqueue filesystem at ROOT/dev/mqueue: the POSIX message queues of the mounter's IPC namespace."""
    mount_in_root(root, "/dev/mqueue", "mqueue", "mqueue", PSEUDO_FLAGS)


# --- the spec's mounts ----------------------------------------------------------------------------

def mount_entry(root: str | Path, destination: str, fstype: str, source: str, options: list[str]) -> None:
    """One OCI `mounts` entry, at `destination` inside `root`: a bind (type "bind", or a "bind"/"rbind"
    option) of the host path `source`, or a filesystem of type `fstype` (tmpfs, mqueue, proc, ...)."""
    parsed = parse_options(options)
    if fstype == "bind" or parsed.flags & sc.MS_BIND:
        if not os.path.exists(source):
            raise InvalidArgumentError(f"bind mount source {source} does not exist on the host: create it "
                                       f"first (for {destination} in the container)")
        create = "dir" if os.path.isdir(source) else "file"
        mount_in_root(root, destination, source, None, sc.MS_BIND | parsed.flags & sc.MS_REC, create=create)
        extra = parsed.flags & ~(sc.MS_BIND | sc.MS_REC)
        if extra:  # the bind ignored them: a second call applies them
            with target_in_root(root, destination) as target:
                remount(target, extra)
    else:
        mount_in_root(root, destination, source or fstype, fstype, parsed.flags, parsed.data)
    for change in parsed.propagation:  # never combined with other flags: one call each
        mount_in_root(root, destination, None, None, change, create=None)


def remount(path: str, flags: int) -> None:
    """Set the flags of the mount at `path` (MS_BIND|MS_REMOUNT), keeping its nosuid, nodev, noexec and
    atime flags: the remount sets exactly what it is given."""
    current = os.statvfs(path).f_flag
    kept = 0
    for st_bit, ms_flag in _KEPT_FLAGS.items():
        if current & st_bit:
            kept |= ms_flag
    sc.mount(None, path, None, sc.MS_BIND | sc.MS_REMOUNT | kept | flags)


def remount_readonly(path: str) -> None:
    """Make the mount at `path` read-only (only that mount: its submounts keep their own flags)."""
    remount(path, sc.MS_RDONLY)


# --- changing the root ----------------------------------------------------------------------------

def pivot_root(new_root: str | Path) -> None:
    """Make `new_root` (a mount point) the root of this mount namespace and drop the old root."""
    os.chdir(new_root)
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)  # the old root, now stacked on top of the new one at "/"
    os.chdir("/")


def move_root(new_root: str | Path) -> None:
    """The fallback where pivot_root cannot work: move `new_root`'s mount over "/" and chroot into it.

    First the host's procfs and sysfs mounts are detached (runc's PR #1962), so that no full one is left
    for a user namespace inside to justify a fresh, unmasked mount. The old root stays underneath,
    covered: CAP_SYS_ADMIN inside can uncover it (see the module's docs).
    """
    inside = f"{os.path.realpath(new_root)}/"
    for point in _host_pseudo_filesystems():
        if f"{point}/".startswith(inside):
            continue
        try:
            sc.umount2(point, sc.MNT_DETACH)
        except OSError:  # already gone with a detached parent (EINVAL), or vanished (ENOENT)
            continue
    os.chdir(new_root)
    sc.mount(".", "/", None, sc.MS_MOVE)
    os.chroot(".")
    os.chdir("/")


def _host_pseudo_filesystems() -> list[str]:
    """Mount points of full (root "/") proc and sysfs mounts in this mount namespace."""
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("proc", "sysfs") and fields[3] == "/":
                points.append(fields[4].replace("\\040", " "))
    return points


# --- after the pivot ------------------------------------------------------------------------------

def bind_readonly(path: str) -> None:
    """Make `path` read-only: bind it onto itself, then remount the bind read-only. Absent: nothing."""
    try:
        sc.mount(path, path, None, sc.MS_BIND | sc.MS_REC)
    except FileNotFoundError:
        return
    remount_readonly(path)


def mask(path: str) -> None:
    """Hide `path`: /dev/null bound over a file, an empty read-only tmpfs over a directory; absent: skip."""
    try:
        is_directory = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    if is_directory:
        sc.mount("tmpfs", path, "tmpfs", sc.MS_RDONLY)
    else:
        sc.mount("/dev/null", path, None, sc.MS_BIND)


# Namespaced sysctls (runc's list), by the namespace kind that owns them: names that start with a prefix,
# and exact names.
SYSCTL_PREFIXES = {"net.": "net", "kernel.shm": "ipc", "kernel.msg": "ipc", "fs.mqueue.": "ipc"}
SYSCTL_NAMES = {"kernel.sem": "ipc", "kernel.hostname": "uts", "kernel.domainname": "uts"}
_SYSCTL_NAME = re.compile(r"[A-Za-z0-9_-]+(?:[./][A-Za-z0-9_-]+)*")


def check_sysctl(key: str, namespaces: list[str]) -> str:
    """The /proc/sys path of `key`, if the container may set it: a namespaced sysctl of a namespace of its
    own. Anything else would change the host for everyone, and is refused."""
    if not _SYSCTL_NAME.fullmatch(key):
        raise InvalidArgumentError(f"invalid sysctl name {key!r}: expected words joined by dots, like "
                                   "net.ipv4.ip_forward")
    dotted = key.replace("/", ".")
    kind = SYSCTL_NAMES.get(dotted) or next(
        (kind for prefix, kind in SYSCTL_PREFIXES.items() if dotted.startswith(prefix)), None)
    if kind is None:
        raise InvalidArgumentError(f"sysctl {key} is not namespaced: setting it in a container would change "
                                   "it for the whole host. Only net.*, kernel.shm*, kernel.msg*, kernel.sem, "
                                   "fs.mqueue.*, kernel.hostname and kernel.domainname can be set")
    if kind not in namespaces:
        raise InvalidArgumentError(f"sysctl {key} belongs to the {kind} namespace, which this container "
                                   f"shares with the host: give it a {kind} namespace of its own to set it")
    return "/proc/sys/" + dotted.replace(".", "/")


def write_sysctl(key: str, value: str, namespaces: list[str]) -> None:
    """Write `value` to /proc/sys/KEY (net.ipv4.ip_forward -> /proc/sys/net/ipv4/ip_forward)."""
    path = check_sysctl(key, namespaces)
    try:
        with open(path, "w") as f:
            f.write(str(value))
    except FileNotFoundError:
        raise InvalidArgumentError(f"sysctl {key} does not exist in the container's namespace "
                                   f"({path} is missing)") from None
    except OSError as e:
        raise ContainerError(f"sysctl {key}={value}: writing {path}: {e.strerror}") from None


def observe(pid: int) -> dict:
    """The stage's kernel state for `pid`: its root directory and its mount points."""
    mounts = []
    with open(f"/proc/{pid}/mountinfo") as f:
        for line in f:
            fields = line.split()
            separator = fields.index("-")
            mounts.append({"mount_point": fields[4], "fstype": fields[separator + 1],
                           "source": fields[separator + 2], "options": fields[5],
                           "propagation": fields[6:separator]})
    return {"root": os.readlink(f"/proc/{pid}/root"), "mounts": mounts}
