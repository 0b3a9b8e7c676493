"""A corpus of hostile image layers, and the small tar builders the unpack tests share.

Modeled on containerd's TestBreakouts (pkg/archive/tar_test.go) and moby's pkg/archive tests: names
that climb out, absolute names, symlinks (absolute, relative, chained, planted by a lower layer) that an
entry is then written through, hard links to files outside, whiteouts that name a parent, loops, magic
links, an oversized header. Each case is a stack of layers, bottom first; the lower ones are harmless on
their own and the top one must be refused. `NEUTRALIZED` holds tricks that a correct unpacker accepts
because it never follows what they plant (it replaces a symlink or a device rather than writing through).

Every path that would escape aims at a *canary* directory beside the layer root (`../canary`, or its
absolute path), so a test can prove that nothing outside the root changed.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field

Entry = tuple[tarfile.TarInfo, bytes | None]
MTIME = 1_600_000_000


def _info(name: str, kind: bytes, mode: int, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, mode, MTIME
    xattrs = attrs.pop("xattrs", {})
    info.pax_headers = {f"SCHILY.xattr.{key}": value for key, value in xattrs.items()}
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def file(name: str, data: bytes = b"pwned", mode: int = 0o644, **attrs) -> Entry:
    info = _info(name, tarfile.REGTYPE, mode, **attrs)
    info.size = len(data)
    return info, data


def directory(name: str, mode: int = 0o755, **attrs) -> Entry:
    return _info(name, tarfile.DIRTYPE, mode, **attrs), None


def symlink(name: str, target: str, **attrs) -> Entry:
    return _info(name, tarfile.SYMTYPE, 0o777, linkname=target, **attrs), None


def hardlink(name: str, target: str) -> Entry:
    return _info(name, tarfile.LNKTYPE, 0o644, linkname=target), None


def device(name: str, major: int, minor: int, mode: int = 0o666, block: bool = False, **attrs) -> Entry:
    kind = tarfile.BLKTYPE if block else tarfile.CHRTYPE
    return _info(name, kind, mode, devmajor=major, devminor=minor, **attrs), None


def fifo(name: str, mode: int = 0o644, **attrs) -> Entry:
    return _info(name, tarfile.FIFOTYPE, mode, **attrs), None


def whiteout(path: str) -> Entry:
    """The `.wh.` marker for `path` ('a/b' -> 'a/.wh.b'); a whiteout's own mode and content do not matter."""
    parent, _, name = path.rpartition("/")
    return file(f"{parent}/.wh.{name}" if parent else f".wh.{name}", b"")


def tar(*entries: Entry) -> bytes:
    """An uncompressed PAX tar holding `entries` in order."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def oversized_pax_header() -> bytes:
    """A PAX header that claims 1 GiB: tarfile alone would try to read it all into memory."""
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, 1 << 30
    return header.tobuf(format=tarfile.USTAR_FORMAT) + b"0" * 4096


@dataclass(frozen=True)
class Case:
    name: str
    layers: tuple[bytes, ...]  # bottom first; the last one is the hostile one
    entry: str | None  # the entry the refusal must name (None: a stream-level refusal)
    check: Callable[[str], None] | None = field(default=None, compare=False)  # NEUTRALIZED: checks the root


def refused(canary: str) -> list[Case]:
    """Layers that must be refused. `canary` is the absolute path of the canary directory."""
    up = "../canary"  # from a layer root beside the canary
    deep = "/".join([".."] * 12) + canary  # climbs past / and comes back down
    cases = [
        ("dotdot-name", [tar(file("../canary/pwned"))], "../canary/pwned"),
        ("dotdot-inner", [tar(directory("a"), file("a/../../canary/pwned"))], "a/../../canary/pwned"),
        ("dotdot-after-dot", [tar(file("./../canary/pwned"))], "./../canary/pwned"),
        ("dotdot-directory", [tar(directory("../canary/newdir"))], "../canary/newdir"),
        ("absolute-name", [tar(file(f"{canary}/pwned"))], f"{canary}/pwned"),
        ("absolute-directory", [tar(directory(f"{canary}/newdir"))], f"{canary}/newdir"),
        ("symlink-absolute-then-write", [tar(symlink("link", canary), file("link/pwned"))], "link/pwned"),
        ("symlink-relative-then-write", [tar(symlink("link", up), file("link/pwned"))], "link/pwned"),
        ("symlink-deep-relative", [tar(symlink("link", deep), file("link/pwned"))], "link/pwned"),
        ("symlink-nested-relative",
         [tar(directory("a"), directory("a/b"), symlink("a/b/up", "../../" + up), file("a/b/up/pwned"))],
         "a/b/up/pwned"),
        ("symlink-chain", [tar(symlink("one", "two"), symlink("two", up), file("one/pwned"))], "one/pwned"),
        ("symlink-down-and-out",
         [tar(directory("dummy"), symlink("link", "dummy/../" + up), file("link/pwned"))], "link/pwned"),
        ("symlink-to-root-then-file", [tar(symlink("root", "/"), file(f"root{canary}/pwned"))],
         f"root{canary}/pwned"),
        ("symlink-magic-link", [tar(symlink("p", "/proc/self/root"), file(f"p{canary}/pwned"))],
         f"p{canary}/pwned"),
        ("symlink-loop", [tar(symlink("a", "b"), symlink("b", "a"), file("a/pwned"))], "a/pwned"),
        ("symlink-named-dotdot", [tar(symlink("..", canary))], ".."),
        ("symlink-named-root", [tar(symlink("./", canary))], "./"),
        ("symlink-name-with-dotdot", [tar(symlink("localetc/sub/..", canary))], "localetc/sub/.."),
        ("device-through-symlink", [tar(symlink("dev", canary), device("dev/null", 1, 3))], "dev/null"),
        ("fifo-through-symlink", [tar(symlink("run", up), fifo("run/pipe"))], "run/pipe"),
        ("lower-symlink-absolute", [tar(symlink("link", canary)), tar(file("link/pwned"))], "link/pwned"),
        ("lower-symlink-relative", [tar(symlink("link", up)), tar(file("link/pwned"))], "link/pwned"),
        ("lower-symlink-directory", [tar(symlink("etc", canary)), tar(directory("etc/newdir"))],
         "etc/newdir"),
        ("lower-symlink-chain",
         [tar(symlink("a", "b")), tar(symlink("b", up)), tar(file("a/pwned"))], "a/pwned"),
        ("hardlink-relative-outside", [tar(hardlink("hl", "../canary/file"))], "hl"),
        ("hardlink-etc-passwd", [tar(hardlink("passwd", "/etc/passwd"))], "passwd"),
        ("hardlink-through-symlink", [tar(symlink("s", canary), hardlink("hl", "s/file"))], "hl"),
        ("hardlink-through-lower-symlink", [tar(symlink("s", up)), tar(hardlink("hl", "s/file"))], "hl"),
        ("whiteout-dotdot", [tar(file(".wh...", b""))], ".wh..."),
        ("whiteout-dot", [tar(file(".wh..", b""))], ".wh.."),
        ("whiteout-parent-in-dir", [tar(directory("etc"), file("etc/.wh...", b""))], "etc/.wh..."),
        ("whiteout-through-symlink", [tar(symlink("s", canary), whiteout("s/file"))], "s/.wh.file"),
        ("whiteout-through-lower-symlink", [tar(symlink("s", canary)), tar(whiteout("s/file"))],
         "s/.wh.file"),
        ("opaque-through-symlink", [tar(symlink("s", up), file("s/.wh..wh..opq", b""))], "s/.wh..wh..opq"),
        ("opaque-through-lower-symlink", [tar(symlink("s", up)), tar(file("s/.wh..wh..opq", b""))],
         "s/.wh..wh..opq"),
        ("mtime-not-a-number", [tar(file("f", pax_headers={"mtime": "nan"}))], "f"),
        ("oversized-pax-header", [oversized_pax_header()], None),
    ]
    return [Case(name, tuple(layers), entry) for name, layers, entry in cases]


def neutralized(canary: str) -> list[Case]:
    """Tricks that are accepted, harmlessly: check(root) proves what was made instead of an escape.

    `root` is the flattened rootfs, or the overlay-form directory of the top layer.
    """
    cases = [
        ("file-replaces-symlink", [tar(symlink("x", f"{canary}/file"), file("x", b"new"))],
         _regular("x", b"new")),
        ("directory-replaces-symlink", [tar(symlink("d", canary), directory("d"), file("d/f", b"in"))],
         _regular("d/f", b"in")),
        ("file-replaces-lower-symlink", [tar(symlink("x", f"{canary}/file")), tar(file("x", b"new"))],
         _regular("x", b"new")),
        ("file-replaces-device", [tar(device("n", 1, 3)), tar(file("n", b"data"))], _regular("n", b"data")),
        ("file-replaces-fifo", [tar(fifo("f"), file("f", b"data"))], _regular("f", b"data")),
        ("whiteout-removes-the-symlink-only", [tar(symlink("s", canary)), tar(whiteout("s"))], _gone("s")),
        ("hardlink-to-symlink-links-the-symlink",
         [tar(symlink("s", f"{canary}/file"), hardlink("h", "s"))], _symlink("h", f"{canary}/file")),
        ("symlink-target-stays-verbatim", [tar(symlink("rel", "../../../../../etc/shadow"))],
         _symlink("rel", "../../../../../etc/shadow")),
    ]
    return [Case(name, tuple(layers), None, check) for name, layers, check in cases]


def _regular(path: str, data: bytes) -> Callable[[str], None]:
    def check(root: str) -> None:
        full = os.path.join(root, path)
        assert stat.S_ISREG(os.lstat(full).st_mode), f"{path} is not a regular file"
        with open(full, "rb") as handle:
            assert handle.read() == data

    return check


def _symlink(path: str, target: str) -> Callable[[str], None]:
    def check(root: str) -> None:
        assert os.readlink(os.path.join(root, path)) == target

    return check


def _gone(path: str) -> Callable[[str], None]:
    def check(root: str) -> None:
        st = os.lstat(os.path.join(root, path)) if os.path.lexists(os.path.join(root, path)) else None
        assert st is None or (stat.S_ISCHR(st.st_mode) and st.st_rdev == 0), f"{path} is still there"

    return check
