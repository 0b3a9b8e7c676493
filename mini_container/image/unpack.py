"""Unpacking an image layer: a tar stream turned into files, inside the layer root, whiteouts applied.

`tarfile` only *parses* here (with `tar_headers.LayerTarInfo`, which decodes the common headers
faster); its `extractall` is never called (it joins names onto a path and lets the kernel resolve
them). Each entry becomes the system call that makes its kind of file, relative to the descriptor of
its parent directory, which was opened without following any symlink (`layer_paths`):

    tar type        system call                          then (? only if it changes something)
    directory  5    mkdirat(parent, name, mode)          fstat, fchown?, fchmod?, xattrs; mtime at the end
    regular    0    openat(O_CREAT|O_EXCL|O_NOFOLLOW)    write, fstat, fchown?, fchmod?, fsetxattr, futimens
    symlink    2    symlinkat(target, parent, name)      fchownat(AT_SYMLINK_NOFOLLOW), utimensat(NOFOLLOW)
    hard link  1    linkat(target_dir, t, parent, name)  (shares the target's inode and metadata)
    char/block 3/4  mknodat(S_IFCHR|S_IFBLK, dev)        fchownat, fchmodat, xattrs, utimensat
    fifo       6    mknodat(S_IFIFO)                     the same

A file or directory is made with its permission bits (less the umask), so the fstat that follows
usually finds its owner (root, who unpacks) and mode right, and fchown and fchmod are left out: on ext4
each is a journal transaction. `strace -c -f minictl pull ...` counts the calls.

Traps, each one handled below:
- chown(2) clears the setuid and setgid bits (and the `security.capability` xattr), so the owner is set
  first, then the mode, then the xattrs; a write(2) drops `security.capability` too, so all of them
  come after the data.
- A symlink has no mode of its own; its owner and times are set with AT_SYMLINK_NOFOLLOW (lchown,
  lutimes), or they would land on whatever it points to. Its target is stored verbatim, never followed.
- Writing a file into a directory changes the directory's mtime, so directories get theirs last.
- xattrs travel in PAX headers as `SCHILY.xattr.NAME` (the name GNU tar and Go's archive/tar use).
- An existing name is replaced, never opened: a device or fifo planted by a lower layer at that name is
  unlinked, not written into (O_EXCL after unlink).
- A huge PAX or GNU long-name header would be read whole into memory by tarfile; it is refused first
  (`tar_headers.MAX_HEADER`).

Whiteouts (OCI image spec, "layer.md"): an entry `DIR/.wh.NAME` deletes NAME of the layers below;
`DIR/.wh..wh..opq` (opaque) deletes everything the layers below hold in DIR. Both apply to lower layers
only: an entry of the same layer survives them, whatever their order in the tar. Two forms:

- `unpack_layer`: one layer into an empty directory, in the form overlayfs reads (what containerd's
  overlay snapshotter stores): a whiteout becomes a 0/0 character device, an opaque directory gets
  `trusted.overlay.opaque=y`, and the layer's own `trusted.overlay.*` xattrs are escaped to
  `trusted.overlay.overlay.*` (overlayfs, Linux 6.7+, shows those as `trusted.overlay.*` in the merged
  view, so an image cannot forge whiteouts or redirects). Pass `lowers` so the symlinks of the layers
  below are seen.
- `apply_layer`: a layer onto a directory that already holds the flattened layers below (what
  `umoci raw unpack` builds): a whiteout deletes the file, an opaque directory is emptied of what the
  lower layers put there.

The DiffID (sha256 of the uncompressed tar, `layer_stream`) is checked after the last byte, so a layer
that fails has already written files: the caller deletes the target directory. `commit_layer` does that:
it unpacks into a directory beside the final one and renames it into place only when every check passed.
"""

from __future__ import annotations

import errno
import io
import os
import secrets
import shutil
import stat
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import BinaryIO

from mini_container.image.layer_paths import (
    O_DIR,
    EntryRefused,
    LayerRoot,
    Parts,
    is_whiteout,
    lstat_at,
    make_opaque,
    make_whiteout,
    split_name,
)
from mini_container.image.layer_stream import REFUSED, LayerError, LayerTarStream
from mini_container.image.tar_headers import LayerTarInfo

__all__ = ["LayerError", "UnpackedLayer", "unpack_layer", "apply_layer", "commit_layer", "remove_layer",
           "remove_partial_layers"]

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
PARTIAL_MARK = ".unpacking-"  # commit_layer's work directory: .NAME.unpacking-RANDOM, beside NAME
_XATTR_PAX = "SCHILY.xattr."
_OVERLAY_XATTR = "trusted.overlay."
_COPY_CHUNK = 1 << 20
_READ_AHEAD = 1 << 20  # bytes of uncompressed tar buffered ahead of tarfile
_CREATE_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class UnpackedLayer:
    """What an unpack verified and wrote."""

    diff_id: str  # sha256 of the uncompressed tar, checked against the image config's rootfs.diff_ids
    size: int  # bytes of the uncompressed tar
    entries: int  # tar entries read
    compression: str  # 'gzip', 'zstd' or 'tar'


def unpack_layer(blob: BinaryIO, target: str | os.PathLike, *, image: str, layer: str, diff_id: str,
                 lowers: Sequence[str | os.PathLike] = ()) -> UnpackedLayer:
    """Unpack one layer blob into the empty directory `target`, in overlay form (0/0 whiteouts, opaque
    xattrs). `lowers` are the unpacked layers below, nearest first. On LayerError, delete `target`."""
    with os.scandir(target) as entries:
        if any(entries):
            raise OSError(errno.ENOTEMPTY, f"unpack_layer: {target} is not empty")
    with LayerRoot(target, lowers, overlay=True) as root:
        return _unpack(blob, root, image, layer, diff_id)


def apply_layer(blob: BinaryIO, rootfs: str | os.PathLike, *, image: str, layer: str,
                diff_id: str) -> UnpackedLayer:
    """Apply one layer blob onto `rootfs`, which holds the layers below it flattened: whiteouts delete.
    On LayerError the rootfs is half-changed: delete it."""
    with LayerRoot(rootfs, overlay=False) as root:
        return _unpack(blob, root, image, layer, diff_id)


def commit_layer(blob: BinaryIO, final: str | os.PathLike, *, image: str, layer: str, diff_id: str,
                 lowers: Sequence[str | os.PathLike] = ()) -> UnpackedLayer:
    """Unpack a layer (overlay form) into a work directory beside `final`, then rename(2) it to `final`
    (which must not exist): no half-unpacked layer is ever visible under its name. Undo: remove_layer."""
    final = Path(final)
    work = final.with_name(f".{final.name}{PARTIAL_MARK}{secrets.token_hex(4)}")
    work.mkdir(mode=0o700)
    try:
        work.chmod(0o755)  # the root of the layer, and so of the container, unless the tar says otherwise
        unpacked = unpack_layer(blob, work, image=image, layer=layer, diff_id=diff_id, lowers=lowers)
        os.rename(work, final)
    except BaseException:
        shutil.rmtree(work)
        raise
    return unpacked


def remove_layer(directory: str | os.PathLike) -> None:
    """Delete an unpacked layer or rootfs (rmtree never follows the symlinks inside it)."""
    shutil.rmtree(directory)


def remove_partial_layers(parent: str | os.PathLike) -> list[Path]:
    """Delete the work directories that commit_layer left in `parent` when its process died mid-unpack."""
    leftovers = [entry for entry in Path(parent).iterdir() if PARTIAL_MARK in entry.name and entry.is_dir()]
    for leftover in leftovers:
        shutil.rmtree(leftover)
    return leftovers


def _unpack(blob: BinaryIO, root: LayerRoot, image: str, layer: str, diff_id: str) -> UnpackedLayer:
    with LayerTarStream(blob, image=image, layer=layer) as stream, _Unpacker(root, image, layer) as unpacker:
        try:
            # "r:" reads headers and data straight from the buffer (the stream mode "r|" copies both
            # through 10 KiB records); the stream seeks forward only, and members are read in order
            with tarfile.open(fileobj=io.BufferedReader(stream, _READ_AHEAD), mode="r:",
                              tarinfo=LayerTarInfo) as tar:
                while (member := tar.next()) is not None:
                    unpacker.apply(member, tar)
                    tar.members.clear()  # tarfile keeps every header it has read; a stream needs none
        except tarfile.TarError as error:
            raise LayerError(image, layer, f"tar stream is truncated or corrupt ({error}){REFUSED}") from None
        unpacker.set_directory_times()
        digest = stream.finish()
    if digest != diff_id:
        raise LayerError(image, layer, f"uncompressed tar has DiffID {digest}, the image config expects "
                                       f"{diff_id} (a truncated or altered layer)" + REFUSED)
    return UnpackedLayer(digest, stream.size, unpacker.entries, stream.compression)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    """The entry's mtime in nanoseconds; a PAX mtime ('1700000000.123456789') keeps what a float rounds."""
    value = member.pax_headers.get("mtime", member.mtime)
    try:
        mtime = int(Decimal(value) * 10**9)
    except (ArithmeticError, ValueError):  # 'nan', 'inf', or no number at all
        raise EntryRefused(f"has an mtime that is no time ({value})") from None
    if not -(2**63) <= mtime < 2**63:  # what a struct timespec holds
        raise EntryRefused(f"has an mtime out of range ({value})")
    return mtime


def _copy_data(tar: tarfile.TarFile, member: tarfile.TarInfo, fd: int) -> None:
    """Write a member's data into the open file `fd`, read straight from the archive's buffer, where
    next() left it (extractfile would wrap each member in two more file objects, for nothing here). A
    sparse member does go through extractfile, which fills its holes with zeros."""
    if member.sparse is not None:
        source = tar.extractfile(member)
        while chunk := source.read(_COPY_CHUNK):
            _write_all(fd, chunk)
        return
    tar.fileobj.seek(member.offset_data)  # where it is already: members are read in order
    left = member.size
    while left:
        chunk = tar.fileobj.read(min(left, _COPY_CHUNK))
        if not chunk:
            raise tarfile.ReadError("unexpected end of data")
        _write_all(fd, chunk)
        left -= len(chunk)


def _write_all(fd: int, data: bytes) -> None:
    """write(2) may write less than it is given."""
    written = os.write(fd, data)
    while written < len(data):
        written += os.write(fd, data[written:])


class _Unpacker:
    """Applies the entries of one tar, in order, to a LayerRoot."""

    def __init__(self, root: LayerRoot, image: str, layer: str):
        self.root, self.image, self.layer = root, image, layer
        self.created: set[Parts] = set()  # real paths this layer put in place
        self.holders: set[Parts] = set()  # and their ancestors
        self.dir_times: dict[Parts, int] = {}
        self.entries = 0
        self._dirs: list[tuple[str, int]] = []  # the last parent opened, from the root: (name, fd) each
        self._detour: int | None = None  # or its fd, when a symlink led there
        self._deleted = False  # something was deleted since they were opened

    def __enter__(self) -> _Unpacker:
        return self

    def __exit__(self, *exc) -> None:
        self._close_dirs(0)

    def apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        try:
            self._apply(member, tar)
        except EntryRefused as reason:
            raise LayerError(self.image, self.layer, f"{reason}{REFUSED}", entry=member.name) from None
        except (OSError, OverflowError, ValueError) as error:  # ENOSPC, a uid past 2**32, a NUL in a name
            raise LayerError(self.image, self.layer, f"could not be written ({error})",
                             entry=member.name) from None
        self.entries += 1

    def _apply(self, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        path = split_name(member.name)
        if not path:
            if not member.isdir():
                raise EntryRefused("names the layer root, which only a directory entry can")
            fd = os.open(".", O_DIR, dir_fd=self.root.fd)
            try:
                self._set_metadata(fd, None, member)
            finally:
                os.close(fd)
            self.dir_times[()] = _mtime_ns(member)
            return
        parent, name = path[:-1], path[-1]
        if name == OPAQUE_MARKER:
            self._opaque(parent)
        elif name.startswith(WHITEOUT_PREFIX * 2):
            return  # aufs's own bookkeeping (.wh..wh.plnk, .wh..wh.aufs): no file of the image
        elif name.startswith(WHITEOUT_PREFIX):
            self._whiteout(parent, name[len(WHITEOUT_PREFIX):])
        else:
            self._create(parent, name, member, tar)

    # --- entries that make a file -------------------------------------------------------------------

    def _open_parent(self, parent: Parts) -> tuple[int, Parts]:
        """The directory `parent` names (made if missing) as a descriptor and its real path; kept open.

        Walking from the root for every entry was most of an unpack's system calls. So the directories
        of the last parent stay open, one descriptor per component, and the next parent (a tar lists a
        directory's entries together, and its subdirectories next) starts from the deepest one they
        share: `usr/share/doc/a` after `usr/share/doc/b` is one openat(2). Each was opened with
        O_DIRECTORY|O_NOFOLLOW, so each is a real directory of the target, reached through no symlink;
        they are dropped when anything is deleted, the only way one of those names could stop being that
        directory. Whatever else (a component missing, a symlink, a lower layer's directory to copy up,
        a whiteout) is LayerRoot.open_dir's to resolve, from the root.
        """
        if self._deleted:
            self._close_dirs(0)
            self._deleted = False
        fd = self._walk_dirs(parent)
        if fd is not None:
            return fd, parent
        fd, real = self.root.open_dir(parent, make=True)  # make=True: never None
        if real == parent and (walked := self._walk_dirs(parent)) is not None:  # made or copied up
            os.close(fd)
            return walked, parent
        self._detour = fd
        return fd, real

    def _walk_dirs(self, parent: Parts) -> int | None:
        """Open `parent` from the deepest directory it shares with the last one, with openat(O_NOFOLLOW);
        None if a component is not a directory of the target itself (closing what was opened past it)."""
        shared = 0
        for (name, _), wanted in zip(self._dirs, parent, strict=False):
            if name != wanted:
                break
            shared += 1
        self._close_dirs(shared)
        for name in parent[shared:]:
            try:
                fd = os.open(name, O_DIR, dir_fd=self._dirs[-1][1] if self._dirs else self.root.fd)
            except OSError:  # ENOENT, ELOOP (a symlink), ENOTDIR: open_dir decides
                return None
            self._dirs.append((name, fd))
        return self._dirs[-1][1] if self._dirs else self.root.fd

    def _close_dirs(self, keep: int) -> None:
        """Close the open directories past the first `keep`, and the detour's."""
        while len(self._dirs) > keep:
            os.close(self._dirs.pop()[1])
        if self._detour is not None:
            os.close(self._detour)
            self._detour = None

    def _create(self, parent: Parts, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        link = self._open_link_target(member) if member.islnk() else None
        try:
            dir_fd, real = self._open_parent(parent)
            path = (*real, name)
            if link is not None and (*link[2], link[1]) == path:
                raise EntryRefused("is a hard link to itself")
            was_whiteout = False
            try:
                self._make(dir_fd, name, member, tar, link, fresh=True)
            except FileExistsError:  # taken, by a lower layer or an earlier entry: look only now (EAFP)
                existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                was_whiteout = self.root.overlay and is_whiteout(existing)
                kept = stat.S_ISDIR(existing.st_mode) and member.isdir()  # a directory stays, and merges
                if not kept:
                    self._deleted = True
                    if stat.S_ISDIR(existing.st_mode):
                        shutil.rmtree(name, dir_fd=dir_fd)
                    else:
                        os.unlink(name, dir_fd=dir_fd)
                self._make(dir_fd, name, member, tar, link, fresh=not kept)
            if member.isdir():
                if was_whiteout:  # a directory deleted and made again in this layer: hide the old one
                    self._with_dir(dir_fd, name, make_opaque)
                self.dir_times[path] = _mtime_ns(member)
            self.created.add(path)
            self.holders.update(path[:depth] for depth in range(len(path)))
        finally:
            if link is not None:
                os.close(link[0])

    def _make(self, dir_fd: int, name: str, member: tarfile.TarInfo, tar: tarfile.TarFile,
              link: tuple[int, str, Parts] | None, fresh: bool) -> None:
        """Make the entry's file at `name` (unless it is a directory there already: `fresh` false).

        Each branch starts with the call that creates the name, and none of them replaces what is
        there: a taken name fails with FileExistsError before anything is written."""
        if member.isdir():
            if fresh:
                os.mkdir(name, member.mode & 0o777, dir_fd=dir_fd)
            self._with_dir(dir_fd, name, lambda fd: self._set_metadata(fd, None, member))
        elif member.isreg():
            fd = os.open(name, _CREATE_FILE, member.mode & 0o777, dir_fd=dir_fd)
            try:
                _copy_data(tar, member, fd)
                self._set_metadata(fd, None, member)  # after the data: a write drops security.capability
                mtime = _mtime_ns(member)
                os.utime(fd, ns=(mtime, mtime))  # futimens(2), after the last write
            finally:
                os.close(fd)
        elif member.issym():
            os.symlink(member.linkname, name, dir_fd=dir_fd)
            self._set_metadata(dir_fd, name, member)
            self._set_times(dir_fd, name, member)
        elif member.islnk():
            os.link(link[1], name, src_dir_fd=link[0], dst_dir_fd=dir_fd, follow_symlinks=False)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            os.mknod(name, kind | 0o600, os.makedev(member.devmajor, member.devminor), dir_fd=dir_fd)
            self._set_metadata(dir_fd, name, member)
            self._set_times(dir_fd, name, member)
        else:
            raise EntryRefused(f"has tar type {member.type!r}, which a layer cannot hold")

    def _open_link_target(self, member: tarfile.TarInfo) -> tuple[int, str, Parts]:
        """The hard link's target as (its directory's descriptor, its name, its directory's real path)."""
        prefix = f"is a hard link to {member.linkname!r}, and that path"
        missing = f"{prefix} names no file" + (" of this layer" if self.root.overlay else "")
        try:
            path = split_name(member.linkname)
            opened = self.root.open_dir(path[:-1], make=False) if path else None
        except EntryRefused as reason:
            raise EntryRefused(f"{prefix} {reason}") from None
        if not path:
            raise EntryRefused(f"{prefix} is the layer root")
        if opened is None:
            raise EntryRefused(missing)
        st = lstat_at(opened[0], path[-1])
        if st is None or stat.S_ISDIR(st.st_mode) or (self.root.overlay and is_whiteout(st)):
            os.close(opened[0])
            raise EntryRefused(f"{prefix} is a directory" if st and stat.S_ISDIR(st.st_mode) else missing)
        return opened[0], path[-1], opened[1]

    # --- metadata ---------------------------------------------------------------------------------

    def _set_metadata(self, fd: int, name: str | None, member: tarfile.TarInfo) -> None:
        """Owner, then mode (chown clears setuid), then xattrs: on the open file `fd` when `name` is None,
        else on `name` inside the directory `fd`, never following a symlink."""
        if name is None:  # fstat first: a file or directory just made often has its owner and mode already
            st = os.fstat(fd)
            chowned = (st.st_uid, st.st_gid) != (member.uid, member.gid)
            if chowned:
                os.fchown(fd, member.uid, member.gid)
            if chowned or stat.S_IMODE(st.st_mode) != member.mode & 0o7777:
                os.fchmod(fd, member.mode & 0o7777)
            target: int | str = fd
        else:
            os.chown(name, member.uid, member.gid, dir_fd=fd, follow_symlinks=False)
            if not member.issym():  # a symlink has no mode; fchmodat would follow it
                os.chmod(name, member.mode & 0o7777, dir_fd=fd)
            target = f"/proc/self/fd/{fd}/{name}"  # lsetxattr takes no dirfd: name it through /proc
        if not self.root.overlay:  # the entry is the whole file: a lower layer's xattrs go (as umoci does)
            wanted = {key[len(_XATTR_PAX):] for key in member.pax_headers if key.startswith(_XATTR_PAX)}
            for xattr in set(os.listxattr(target, follow_symlinks=name is None)) - wanted:
                os.removexattr(target, xattr, follow_symlinks=name is None)
        for key, value in member.pax_headers.items():
            if key.startswith(_XATTR_PAX):
                xattr = key[len(_XATTR_PAX):]
                if self.root.overlay and xattr.startswith(_OVERLAY_XATTR):
                    xattr = _OVERLAY_XATTR + "overlay." + xattr[len(_OVERLAY_XATTR):]
                raw = value.encode("utf-8", "surrogateescape")  # tarfile decoded binary values this way
                if name is None:
                    os.setxattr(target, xattr, raw)
                else:
                    os.setxattr(target, xattr, raw, follow_symlinks=False)

    @staticmethod
    def _set_times(dir_fd: int, name: str, member: tarfile.TarInfo) -> None:
        """utimensat(dir_fd, name, [mtime, mtime], AT_SYMLINK_NOFOLLOW)."""
        mtime = _mtime_ns(member)
        os.utime(name, ns=(mtime, mtime), dir_fd=dir_fd, follow_symlinks=False)

    def set_directory_times(self) -> None:
        """Give each directory its mtime, now that nothing more is written into it. utimensat(2) on a
        directory changes no other's times, so they go in the order of their paths, in which the next
        shares the most open directories with the last (_walk_dirs)."""
        self._close_dirs(0)
        times = {**self.root.copied_up, **self.dir_times}
        for path in sorted(times):
            fd = self._walk_dirs(path)
            if fd is not None:  # None: a later entry of the layer replaced it (by a symlink, say)
                os.utime(fd, ns=(times[path], times[path]))

    @staticmethod
    def _with_dir(dir_fd: int, name: str, action: Callable[[int], None]) -> None:
        fd = os.open(name, O_DIR, dir_fd=dir_fd)
        try:
            action(fd)
        finally:
            os.close(fd)

    # --- whiteouts --------------------------------------------------------------------------------

    def _whiteout(self, parent: Parts, name: str) -> None:
        """`.wh.NAME`: delete NAME of the lower layers (overlay form: a 0/0 device, or an opaque directory
        where this layer has a directory of that name)."""
        if name in ("", ".", ".."):
            raise EntryRefused("is a whiteout that names no file of its directory (but itself or its parent)")
        self._deleted = True
        opened = self.root.open_dir(parent, make=False)
        if opened is None:
            return  # no layer holds the directory: nothing to delete
        dir_fd, real = opened
        try:
            if not self.root.overlay:
                self._delete_lower(dir_fd, name, (*real, name))
                return
            st = lstat_at(dir_fd, name)
            if st is None:
                make_whiteout(dir_fd, name)
            elif stat.S_ISDIR(st.st_mode):  # this layer's directory stays; what lower layers hold in it goes
                self._with_dir(dir_fd, name, make_opaque)
        finally:
            os.close(dir_fd)

    def _opaque(self, parent: Parts) -> None:
        """`.wh..wh..opq` in DIR: hide what the lower layers hold in DIR."""
        self._deleted = True
        opened = self.root.open_dir(parent, make=False)
        if opened is None:
            return
        dir_fd, real = opened
        try:
            if self.root.overlay:
                make_opaque(dir_fd)
            else:
                for child in os.listdir(dir_fd):
                    self._delete_lower(dir_fd, child, (*real, child))
        finally:
            os.close(dir_fd)

    def _delete_lower(self, dir_fd: int, name: str, path: Parts) -> None:
        """Flattened form: delete `path` unless this layer put it there; keep what this layer put below it."""
        st = lstat_at(dir_fd, name)
        if st is None or (path in self.created and not stat.S_ISDIR(st.st_mode)):
            return
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=dir_fd)
        elif path not in self.created and path not in self.holders:
            shutil.rmtree(name, dir_fd=dir_fd)
        else:
            fd = os.open(name, O_DIR, dir_fd=dir_fd)
            try:
                for child in os.listdir(fd):
                    self._delete_lower(fd, child, (*path, child))
            finally:
                os.close(fd)

