"""Resolving a tar entry's path inside a layer root, one component at a time, as openat(2) does.

A layer is untrusted input: its entry names and symlink targets are strings chosen by whoever built the
image, and the classic escapes all rely on a path that the *kernel* resolves:

    ../../etc/cron.d/x            a name that climbs out
    /etc/passwd                   an absolute name
    evil -> /etc, then evil/x     a symlink planted first, then written through (in one layer, or two)
    evil -> ../../.., then ...    the same with a relative target

`open(os.path.join(root, name))` lets the kernel follow every one of these. So no path built from a layer
is ever handed to the kernel whole:

- an entry name is split into components; an absolute name or a `..` component is refused (docker,
  buildkit and umoci never write them);
- the parent directory is walked one component at a time with
      openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW)
  so the kernel never follows a symlink (it fails with ELOOP instead). A component that is a symlink is
  read (readlinkat) and resolved *here*: a relative target that stays inside the root is followed, as the
  container would follow it (lib -> usr/lib); an absolute target, or a relative one whose `..` climb above
  the root, is refused. (Docker and umoci would read an absolute target relative to the root and write
  there. Neither docker nor buildkit ever emits an entry *under* a symlink, since their diffs walk real
  paths, so a layer that has one is hand-made, and refusing costs nothing.)
- the last component is created by the *at() calls relative to the parent's descriptor (mkdirat,
  mknodat, symlinkat, linkat, openat with O_CREAT|O_EXCL|O_NOFOLLOW) and is never followed.

openat2(2) with RESOLVE_BENEATH (Linux 5.6) has the kernel enforce nearly the same rule, but within one
directory tree only, and a layer committed for overlayfs must also see the layers below it.

The overlay view. The store unpacks each layer into a directory of its own and overlayfs stacks them:
    mount -t overlay overlay -o lowerdir=L3:L2:L1 /merged          (the leftmost is on top)
A name resolves to the topmost layer that holds it, and (fs/overlayfs/namei.c):
- a character device 0/0 is a *whiteout*: the name is deleted for the layers below;
- a directory with the xattr `trusted.overlay.opaque=y` hides what the layers below hold under it;
- a directory merges with the directories of the same name below it; a non-directory hides all below.
`LayerRoot` applies these rules across the target directory and the lower layers' directories, so that a
symlink planted by a lower layer is seen while a new layer is unpacked, and a directory that only a lower
layer holds is *copied up* (made in the target with the lower one's owner, mode and mtime) before an
entry goes into it, as overlayfs does on a write. `ls -l` shows a whiteout as `c 0, 0`;
`getfattr -n trusted.overlay.opaque DIR` shows an opaque directory.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence

Parts = tuple[str, ...]  # a path inside a layer root, as components: ("usr", "lib")

O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
MAX_SYMLINKS = 40  # the kernel's own limit on symlinks in one lookup (MAXSYMLINKS, fs/namei.c)
OPAQUE_XATTR = "trusted.overlay.opaque"
OVERLAY_PREFIX = "trusted.overlay."
WHITEOUT_DEVICE = os.makedev(0, 0)
OUTSIDE = "leads outside the layer root"


class EntryRefused(Exception):
    """Why a tar entry is refused (a path that would leave the root, mostly); the caller says where."""


def split_name(name: str) -> Parts:
    """The components of a tar name ('./usr//bin/' -> ('usr', 'bin')); () for the root itself."""
    if name.startswith("/"):
        raise EntryRefused("is an absolute path, outside the layer root")
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    if ".." in parts:
        raise EntryRefused("has a '..' component, which may lead outside the layer root")
    return parts


def show(path: Parts) -> str:
    return "/".join(path) or "."


def lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    """fstatat(dir_fd, name, AT_SYMLINK_NOFOLLOW), or None when nothing is there."""
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def open_path(base_fd: int, path: Parts) -> int | None:
    """Open directory `path` below `base_fd`, following no symlink; None unless all its parts are dirs."""
    fd = os.open(".", O_DIR, dir_fd=base_fd)
    for name in path:
        try:
            below = os.open(name, O_DIR, dir_fd=fd)
        except OSError as error:
            os.close(fd)
            if error.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                return None
            raise
        os.close(fd)
        fd = below
    return fd


def is_whiteout(st: os.stat_result) -> bool:
    """Is this overlayfs's mark of a deleted name: a character device with device number 0/0?"""
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == WHITEOUT_DEVICE


def make_whiteout(dir_fd: int, name: str) -> None:
    """mknodat(dir_fd, name, S_IFCHR, makedev(0, 0)): hide `name` of the layers below."""
    os.mknod(name, stat.S_IFCHR | 0o600, WHITEOUT_DEVICE, dir_fd=dir_fd)


def is_opaque(fd: int) -> bool:
    try:
        return os.getxattr(fd, OPAQUE_XATTR) == b"y"
    except OSError as error:
        if error.errno in (errno.ENODATA, errno.EOPNOTSUPP):
            return False
        raise


def make_opaque(fd: int) -> None:
    """fsetxattr(fd, 'trusted.overlay.opaque', 'y'): hide what the layers below hold in this directory."""
    os.setxattr(fd, OPAQUE_XATTR, b"y")


def make_dir(dir_fd: int, name: str, mode: int = 0o755, uid: int = 0, gid: int = 0) -> None:
    """mkdirat, then fchownat and fchmodat: the mode is set after the owner, and not through the umask."""
    os.mkdir(name, 0o700, dir_fd=dir_fd)
    os.chown(name, uid, gid, dir_fd=dir_fd, follow_symlinks=False)
    os.chmod(name, mode, dir_fd=dir_fd)


class LayerRoot:
    """The directory a layer is unpacked into, seen through the layers below it.

    `overlay` says whether 0/0 devices and opaque xattrs mean what overlayfs makes them mean (a layer
    committed for an overlay mount) or are plain files (a flattened rootfs, with `lowers` empty).
    `lowers` are the directories of the layers below, the nearest first: the order of lowerdir=.
    """

    def __init__(self, target: str | os.PathLike, lowers: Sequence[str | os.PathLike] = (), *, overlay: bool):
        self.overlay = overlay
        self.fd = os.open(target, O_DIR)
        self.lower_fds = [os.open(lower, O_DIR) for lower in lowers]
        self.copied_up: dict[Parts, int] = {}  # directories copied up from a lower layer -> their mtime (ns)

    def close(self) -> None:
        for fd in (self.fd, *self.lower_fds):
            os.close(fd)

    def __enter__(self) -> LayerRoot:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def open_dir(self, path: Parts, *, make: bool) -> tuple[int, Parts] | None:
        """Open the directory `path` names in the merged view, as a descriptor in the target directory.

        Returns the descriptor (the caller closes it) and the real path, symlinks resolved. A directory
        that only a lower layer holds is copied up; one that no layer holds is made (0755, root) when
        `make` is true, and None is returned when it is false. Raises EntryRefused for a symlink that leads
        outside the root, a component that is not a directory, or a symlink loop.
        """
        fds = [os.open(".", O_DIR, dir_fd=self.fd)]
        real: list[str] = []
        todo = list(reversed(path))
        hops, last_link = 0, ""
        try:
            while todo:
                name = todo.pop()
                if name == "..":  # only a symlink's target puts '..' here; `real` holds no symlink
                    if not real:
                        raise EntryRefused(f"{OUTSIDE} through symlink {last_link}")
                    real.pop()
                    os.close(fds.pop())
                    continue
                here = (*real, name)
                target = self._step(fds[-1], here, make)
                if target is None:
                    return None
                if target is True:
                    fds.append(os.open(name, O_DIR, dir_fd=fds[-1]))
                    real.append(name)
                    continue
                hops += 1
                last_link = f"{show(here)!r} -> {target!r}"
                if hops > MAX_SYMLINKS:
                    raise EntryRefused(f"goes through over {MAX_SYMLINKS} symlinks (a loop at {last_link}?)")
                if target.startswith("/"):
                    raise EntryRefused(f"{OUTSIDE} through symlink {last_link}")
                todo.extend(reversed([part for part in target.split("/") if part not in ("", ".")]))
            return fds.pop(), tuple(real)
        finally:
            for fd in fds:
                os.close(fd)

    def _step(self, dir_fd: int, here: Parts, make: bool) -> bool | str | None:
        """What the last component of `here` is in the merged view: True for a directory (made or copied
        up if need be), a symlink's target, or None for nothing there (and `make` false)."""
        name = here[-1]
        st = lstat_at(dir_fd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            return True
        if st is not None and stat.S_ISLNK(st.st_mode):
            return os.readlink(name, dir_fd=dir_fd)
        if st is not None and not (self.overlay and is_whiteout(st)):
            raise EntryRefused(f"needs {show(here)!r} to be a directory, and it is not")
        below = self._lookup_below(here) if st is None else None
        if below is not None:
            layer_fd, lower = below
            if stat.S_ISLNK(lower.st_mode):
                return _readlink_path(layer_fd, here)
            if not stat.S_ISDIR(lower.st_mode):
                raise EntryRefused(f"needs {show(here)!r} to be a directory, and a lower layer has a file")
            make_dir(dir_fd, name, stat.S_IMODE(lower.st_mode), lower.st_uid, lower.st_gid)
            _copy_xattrs(layer_fd, here, dir_fd, name)  # as overlayfs's own copy-up does
            self.copied_up[here] = lower.st_mtime_ns
            return True
        if not make:
            return None
        if st is not None:  # a whiteout of this same layer: the new directory must hide the lower one
            os.unlink(name, dir_fd=dir_fd)
        make_dir(dir_fd, name)
        if st is not None:
            fd = os.open(name, O_DIR, dir_fd=dir_fd)
            try:
                make_opaque(fd)
            finally:
                os.close(fd)
        return True

    def _lookup_below(self, path: Parts) -> tuple[int, os.stat_result] | None:
        """The topmost lower layer (its root descriptor) that holds `path` in the merged view, and what it
        holds; None when the target hides it or no layer holds it. The target itself is known to lack it."""
        if not self.lower_fds:
            return None
        layers = [self.fd, *self.lower_fds]
        found = None
        for depth in range(1, len(path) + 1):
            prefix, found, merged = path[:depth], None, []
            for layer in layers:
                st = _lstat_path(layer, prefix)
                if st is None:
                    continue
                if is_whiteout(st):
                    break
                if found is None:
                    found = (layer, st)
                if not stat.S_ISDIR(st.st_mode):
                    break
                merged.append(layer)
                if _is_opaque_path(layer, prefix):
                    break
            if found is None:
                return None
            layers = merged
        return found


def _lstat_path(base_fd: int, path: Parts) -> os.stat_result | None:
    parent = open_path(base_fd, path[:-1])
    if parent is None:
        return None
    try:
        return lstat_at(parent, path[-1])
    finally:
        os.close(parent)


def _readlink_path(base_fd: int, path: Parts) -> str:
    parent = open_path(base_fd, path[:-1])
    if parent is None:
        raise FileNotFoundError(errno.ENOENT, f"a lower layer changed under {show(path)!r}")
    try:
        return os.readlink(path[-1], dir_fd=parent)
    finally:
        os.close(parent)


def _is_opaque_path(base_fd: int, path: Parts) -> bool:
    fd = open_path(base_fd, path)
    try:
        return fd is not None and is_opaque(fd)
    finally:
        if fd is not None:
            os.close(fd)


def _copy_xattrs(base_fd: int, path: Parts, dir_fd: int, name: str) -> None:
    """The xattrs of the lower directory `path` onto its copy `name`, but overlayfs's own markers (the
    image's own trusted.overlay.* xattrs, escaped as trusted.overlay.overlay.*, are copied)."""
    source, copy = open_path(base_fd, path), os.open(name, O_DIR, dir_fd=dir_fd)
    try:
        for xattr in os.listxattr(source):
            if not xattr.startswith(OVERLAY_PREFIX) or xattr.startswith(OVERLAY_PREFIX + "overlay."):
                os.setxattr(copy, xattr, os.getxattr(source, xattr))
    finally:
        os.close(source)
        os.close(copy)
