"""Layer unpacking on the real filesystem: every entry type, whiteouts in both forms (with a real overlay
mount), compression sniffing, DiffID and truncation checks, and a corpus of hostile layers that must be
refused without a byte written outside the layer root, in both forms."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
import traceback

import pytest
import zstandard
from malicious_layers import (
    MTIME,
    device,
    directory,
    fifo,
    file,
    hardlink,
    neutralized,
    refused,
    symlink,
    tar,
    whiteout,
)

from mini_container import syscalls
from mini_container.image import layer_stream
from mini_container.image.oci import short_digest
from mini_container.image.tar_headers import LayerTarInfo
from mini_container.image.unpack import (
    LayerError,
    UnpackedLayer,
    apply_layer,
    commit_layer,
    remove_layer,
    remove_partial_layers,
    unpack_layer,
)

MODES = ["overlay", "flattened"]
NS = 10**9


def digest(blob: bytes) -> str:
    return "sha256:" + hashlib.sha256(blob).hexdigest()


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="mc-unpack-")
    yield path
    shutil.rmtree(path)


def unpack_stack(mode: str, workdir: str, layers: list[bytes], image: str = "test:1") -> str:
    """Unpack `layers` (bottom first) the way `mode` says; returns the top layer's directory (overlay:
    each layer committed to workdir/L<i>) or the flattened rootfs (workdir/rootfs)."""
    if mode == "overlay":
        lowers: list[str] = []
        for index, blob in enumerate(layers):
            final = os.path.join(workdir, f"L{index}")
            commit_layer(io.BytesIO(blob), final, image=image, layer=digest(blob), diff_id=digest(blob),
                         lowers=lowers)
            lowers.insert(0, final)
        return lowers[0]
    rootfs = os.path.join(workdir, "rootfs")
    os.makedirs(rootfs, exist_ok=True)
    for blob in layers:
        apply_layer(io.BytesIO(blob), rootfs, image=image, layer=digest(blob), diff_id=digest(blob))
    return rootfs


def tree(root: str) -> dict[str, list]:
    """Every path under `root`: type, mode, owner, and content digest, link target or device number."""
    listing = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            if stat.S_ISREG(st.st_mode):
                with open(full, "rb") as handle:
                    detail: object = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(full)
            else:
                detail = st.st_rdev
            listing[os.path.relpath(full, root)] = [stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                                    st.st_uid, st.st_gid, detail]
    return listing


def snapshot(path: str) -> dict[str, tuple]:
    """What must not change outside the root: every entry's metadata (mtime and link count included)
    and content, plus the directory itself."""
    state = {}
    for full in [path, *(os.path.join(d, n) for d, ds, fs in os.walk(path) for n in ds + fs)]:
        st = os.lstat(full)
        content = open(full, "rb").read() if stat.S_ISREG(st.st_mode) else None
        state[full] = (st.st_mode, st.st_uid, st.st_nlink, st.st_mtime_ns, st.st_size, content)
    return state


@pytest.fixture
def canary(workdir):
    path = os.path.join(workdir, "canary")
    os.makedirs(os.path.join(path, "sub"))
    for name, data in (("file", b"canary"), ("sub/deep", b"deep")):
        with open(os.path.join(path, name), "wb") as handle:
            handle.write(data)
    return path


# --- hostile layers --------------------------------------------------------------------------------

REFUSED = [case.name for case in refused("/canary")]
NEUTRALIZED = [case.name for case in neutralized("/canary")]


def test_the_corpus_is_large_enough():
    assert len(REFUSED) >= 20 and len(set(REFUSED)) == len(REFUSED)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", REFUSED)
def test_hostile_layer_is_refused_and_nothing_outside_changes(mode, name, workdir, canary):
    case = next(case for case in refused(canary) if case.name == name)
    before = snapshot(canary), snapshot("/etc/passwd")
    with pytest.raises(LayerError) as caught:
        unpack_stack(mode, workdir, list(case.layers), image="evil:1")
    message = str(caught.value)
    assert "\n" not in message and message.startswith("image evil:1 layer ")
    assert short_digest(digest(case.layers[-1])) in message  # the top layer is the one refused
    assert "refused" in message
    if case.entry is not None:
        assert f"entry {case.entry!r}" in message
    assert (snapshot(canary), snapshot("/etc/passwd")) == before
    if mode == "overlay":  # commit_layer left neither the hostile layer nor its work directory
        expected = {"canary", *(f"L{index}" for index in range(len(case.layers) - 1))}
        assert set(os.listdir(workdir)) == expected


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", NEUTRALIZED)
def test_neutralized_trick_is_accepted_harmlessly(mode, name, workdir, canary):
    case = next(case for case in neutralized(canary) if case.name == name)
    before = snapshot(canary)
    top = unpack_stack(mode, workdir, list(case.layers))
    case.check(top)
    assert snapshot(canary) == before


# --- every entry type --------------------------------------------------------------------------------

ROUND_TRIP = tar(
    directory(".", mode=0o711, mtime=MTIME + 9),
    directory("d", mode=0o2755, uid=1000, gid=1001, mtime=MTIME + 1, xattrs={"user.dir": "1"}),
    file("d/suid", b"#!/bin/true\n", mode=0o4755, mtime=MTIME + 2),
    file("d/sgid", b"sgid", mode=0o2711, gid=50),
    file("d/owned", b"owned", mode=0o640, uid=1234, gid=5678,
         xattrs={"user.note": "hello", "trusted.bin": "\x00\udcff\x01"}),
    file("d/nanos", b"", pax_headers={"mtime": "1600000003.123456789"}),
    symlink("d/abs", "/etc/passwd", uid=1000, gid=1000, mtime=MTIME + 3),
    symlink("d/rel", "../../../outside", xattrs={"trusted.link": "l"}),
    hardlink("d/hard", "d/owned"),
    device("d/null", 1, 3, mode=0o666),
    device("d/loop", 7, 0, mode=0o660, block=True, gid=6),
    fifo("d/pipe", mode=0o620, uid=5),
    directory("d/tmp", mode=0o1777),
)


@pytest.fixture(params=[0o022, 0o077, 0], ids=["umask022", "umask077", "umask000"])
def umask(request):
    """Files are made with their mode less the umask, then fixed where that differs: any umask will do."""
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


@pytest.mark.parametrize("mode", MODES)
def test_every_entry_type_round_trips(mode, workdir, umask):
    root = unpack_stack(mode, workdir, [ROUND_TRIP])

    def lstat(path):
        return os.lstat(os.path.join(root, path))

    def check(path, kind, mode_bits, uid=0, gid=0):
        st = lstat(path)
        assert (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == \
            (kind, mode_bits, uid, gid), path

    check("d", stat.S_IFDIR, 0o2755, 1000, 1001)
    check("d/suid", stat.S_IFREG, 0o4755)
    check("d/sgid", stat.S_IFREG, 0o2711, 0, 50)
    check("d/owned", stat.S_IFREG, 0o640, 1234, 5678)
    check("d/null", stat.S_IFCHR, 0o666)
    check("d/loop", stat.S_IFBLK, 0o660, 0, 6)
    check("d/pipe", stat.S_IFIFO, 0o620, 5, 0)
    check("d/tmp", stat.S_IFDIR, 0o1777)
    assert stat.S_IMODE(os.stat(root).st_mode) == 0o711
    assert lstat("d/null").st_rdev == os.makedev(1, 3) and lstat("d/loop").st_rdev == os.makedev(7, 0)
    check("d/abs", stat.S_IFLNK, 0o777, 1000, 1000)
    assert os.readlink(os.path.join(root, "d/abs")) == "/etc/passwd"
    assert os.readlink(os.path.join(root, "d/rel")) == "../../../outside"
    assert open(os.path.join(root, "d/suid"), "rb").read() == b"#!/bin/true\n"
    assert lstat("d/hard").st_ino == lstat("d/owned").st_ino and lstat("d/owned").st_nlink == 2
    assert os.getxattr(os.path.join(root, "d"), "user.dir") == b"1"
    assert os.getxattr(os.path.join(root, "d/owned"), "user.note") == b"hello"
    assert os.getxattr(os.path.join(root, "d/owned"), "trusted.bin") == b"\x00\xff\x01"
    assert os.getxattr(os.path.join(root, "d/rel"), "trusted.link", follow_symlinks=False) == b"l"
    assert lstat("d/suid").st_mtime_ns == (MTIME + 2) * NS
    assert lstat("d/nanos").st_mtime_ns == 1600000003_123456789
    assert lstat("d/abs").st_mtime_ns == (MTIME + 3) * NS  # the symlink's own time, not its target's
    assert lstat("d").st_mtime_ns == (MTIME + 1) * NS  # set after its entries were written
    assert os.stat(root).st_mtime_ns == (MTIME + 9) * NS


@pytest.mark.parametrize("mode", MODES)
def test_a_directory_replaced_by_a_symlink_is_looked_up_again(mode, workdir):
    """The unpacker keeps the last parent's directories open; once one is deleted, it walks again."""
    layer = tar(directory("a"), directory("a/b"), file("a/b/one", b"1"), directory("c"),
                symlink("a/b", "../c"), file("a/b/two", b"2"), file("a/three", b"3"))
    root = unpack_stack(mode, workdir, [layer])
    assert os.readlink(os.path.join(root, "a/b")) == "../c"
    assert os.listdir(os.path.join(root, "c")) == ["two"]  # through the symlink, which stays inside
    assert open(os.path.join(root, "a/three"), "rb").read() == b"3"


@pytest.mark.parametrize("mode", MODES)
def test_a_directory_replaced_by_a_symlink_out_is_not_written_through(mode, workdir, canary):
    before = snapshot(canary)
    layer = tar(directory("d"), file("d/one"), symlink("d", canary), file("d/two"))
    with pytest.raises(LayerError, match="entry 'd/two' leads outside the layer root through symlink"):
        unpack_stack(mode, workdir, [layer])
    assert snapshot(canary) == before


# --- whiteouts -------------------------------------------------------------------------------------

LOWER = tar(
    directory("a"), file("a/x", b"x"), file("a/y", b"y"), file("f", b"f"),
    directory("o"), file("o/p", b"p"), directory("o2"), file("o2/p2", b"p2"),
    directory("w"), file("w/old", b"old"), directory("forged"), file("forged/old", b"old"),
    file("n", b"lower n"),
)
UPPER = tar(
    directory("a"), whiteout("a/x"),
    whiteout("f"),
    directory("o"), file("o/.wh..wh..opq", b""), file("o/q", b"q"),
    directory("o2"), file("o2/q2", b"q2"), file("o2/.wh..wh..opq", b""),  # opaque after this layer's entry
    file("n", b"upper n"), whiteout("n"),  # a whiteout after this layer's own file keeps the file
    whiteout("w"), directory("w"), file("w/new", b"new"),  # deleted and made again in one layer
    directory("forged", xattrs={"trusted.overlay.opaque": "y"}),  # the image's own, not overlayfs's
    whiteout("ghost"),  # no layer has it
)
MERGED = {"a", "a/y", "o", "o/q", "o2", "o2/q2", "n", "w", "w/new", "forged", "forged/old"}


def is_whiteout(path: str) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def test_whiteouts_in_overlay_form(workdir):
    upper = unpack_stack("overlay", workdir, [LOWER, UPPER])
    for name in ("a/x", "f", "ghost"):
        assert is_whiteout(os.path.join(upper, name)), name
    for name in ("o", "o2", "w"):
        assert os.getxattr(os.path.join(upper, name), "trusted.overlay.opaque") == b"y", name
    assert open(os.path.join(upper, "n"), "rb").read() == b"upper n"
    assert open(os.path.join(upper, "o2/q2"), "rb").read() == b"q2"
    forged = os.path.join(upper, "forged")
    assert "trusted.overlay.opaque" not in os.listxattr(forged)
    assert os.getxattr(forged, "trusted.overlay.overlay.opaque") == b"y"


def test_whiteouts_in_flattened_form(workdir):
    rootfs = unpack_stack("flattened", workdir, [LOWER, UPPER])
    assert set(tree(rootfs)) == MERGED
    assert open(os.path.join(rootfs, "n"), "rb").read() == b"upper n"


def overlay_view(lowers: list[str], mountpoint: str) -> dict:
    """Mount the layers read-only in a private mount namespace of a forked child; list the merged tree."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read_end)
            syscalls.unshare(syscalls.CLONE_NEWNS)
            syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
            options = "lowerdir=" + ":".join(lowers)
            syscalls.mount("overlay", mountpoint, "overlay", syscalls.MS_RDONLY, options)
            try:
                forged = os.getxattr(os.path.join(mountpoint, "forged"), "trusted.overlay.opaque")
                view = {"tree": tree(mountpoint), "forged": forged.decode()}
            finally:
                syscalls.umount2(mountpoint)
            with os.fdopen(write_end, "w") as out:
                json.dump(view, out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        text = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the overlay mount failed (see the child's traceback)"
    return json.loads(text)


def test_overlay_mount_of_unpacked_layers_matches_the_flattened_rootfs(workdir):
    upper = unpack_stack("overlay", workdir, [LOWER, UPPER])
    mountpoint = os.path.join(workdir, "merged")
    os.mkdir(mountpoint)
    view = overlay_view([upper, os.path.join(workdir, "L0")], mountpoint)
    assert set(view["tree"]) == MERGED  # a/x, f, o/p, o2/p2, w/old are gone
    assert view["forged"] == "y"  # overlayfs unescapes the image's own xattr in the merged view
    assert os.listdir(mountpoint) == []  # unmounted again
    rootfs = unpack_stack("flattened", workdir, [LOWER, UPPER])
    assert view["tree"] == json.loads(json.dumps(tree(rootfs)))


@pytest.mark.parametrize("mode", MODES)
def test_a_lower_symlink_that_stays_inside_is_followed(mode, workdir):
    lower = tar(directory("usr"), directory("usr/lib", mode=0o750, uid=7, gid=8), symlink("lib", "usr/lib"))
    top = unpack_stack(mode, workdir, [lower, tar(file("lib/libfoo.so", b"elf"))])
    assert open(os.path.join(top, "usr/lib/libfoo.so"), "rb").read() == b"elf"
    assert os.path.islink(os.path.join(top, "lib")) == (mode == "flattened")
    st = os.lstat(os.path.join(top, "usr/lib"))  # in overlay form: copied up from the lower layer
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid) == (0o750, 7, 8)
    if mode == "overlay":  # the copy keeps the lower one's mtime (flattened, the new file changed it)
        assert st.st_mtime_ns == MTIME * NS


def test_a_hard_link_to_a_lower_layer_is_kept_in_flattened_form_only(workdir):
    layers = [tar(file("target", b"t")), tar(hardlink("link", "target"))]
    rootfs = unpack_stack("flattened", workdir, layers)
    assert os.lstat(os.path.join(rootfs, "link")).st_ino == os.lstat(os.path.join(rootfs, "target")).st_ino
    with pytest.raises(LayerError, match="names no file of this layer"):
        unpack_stack("overlay", workdir, layers)


# --- compression, DiffID, truncation ---------------------------------------------------------------

PLAIN = tar(directory("bin"), file("bin/sh", os.urandom(300_000), mode=0o755), symlink("sh", "bin/sh"))


def zstd_frames(blob: bytes) -> bytes:
    """Two zstd frames, as zstd:chunked layers have many."""
    half = len(blob) // 2
    compressor = zstandard.ZstdCompressor()
    return compressor.compress(blob[:half]) + compressor.compress(blob[half:])


@pytest.mark.parametrize("compression, compress", [
    ("tar", lambda blob: blob), ("gzip", gzip.compress), ("zstd", zstandard.compress), ("zstd", zstd_frames),
], ids=["tar", "gzip", "zstd", "zstd-two-frames"])
def test_compression_is_sniffed(compression, compress, workdir):
    target = os.path.join(workdir, "layer")
    os.mkdir(target)
    unpacked = unpack_layer(io.BytesIO(compress(PLAIN)), target, image="t:1", layer="sha256:00",
                            diff_id=digest(PLAIN))
    assert unpacked == UnpackedLayer(digest(PLAIN), len(PLAIN), 3, compression)
    expected = os.path.join(workdir, "expected")
    os.mkdir(expected)
    unpack_layer(io.BytesIO(PLAIN), expected, image="t:1", layer="sha256:00", diff_id=digest(PLAIN))
    assert tree(target) == tree(expected)


def test_gzip_uses_isal_and_falls_back_to_zlib(workdir, monkeypatch):
    assert layer_stream._igzip is not None, "python-isal is missing: pip install isal"
    monkeypatch.setattr(layer_stream, "_igzip", None)
    unpacked = unpack_layer(io.BytesIO(gzip.compress(PLAIN)), workdir, image="t:1", layer="sha256:00",
                            diff_id=digest(PLAIN))
    assert unpacked.compression == "gzip" and os.path.islink(os.path.join(workdir, "sh"))


@pytest.mark.parametrize("blob, problem", [
    (bz2.compress(PLAIN), "compressed with bzip2"),
    (b"PK\x03\x04" + bytes(600), "neither a tar archive nor gzip nor zstd"),
    (b"", "empty"),
], ids=["bzip2", "zip", "empty"])
def test_unknown_formats_are_refused(blob, problem, workdir):
    with pytest.raises(LayerError, match=problem):
        commit_layer(io.BytesIO(blob), os.path.join(workdir, "layer"), image="t:1", layer="sha256:00",
                     diff_id=digest(PLAIN))
    assert os.listdir(workdir) == []


def test_a_diff_id_mismatch_is_refused_and_nothing_is_committed(workdir):
    other = digest(b"another layer")
    with pytest.raises(LayerError) as caught:
        commit_layer(io.BytesIO(gzip.compress(PLAIN)), os.path.join(workdir, "layer"), image="t:1",
                     layer="sha256:00", diff_id=other)
    assert digest(PLAIN) in str(caught.value) and other in str(caught.value)
    assert os.listdir(workdir) == []


def cut(blob: bytes) -> bytes:
    return blob[: len(blob) // 2]


ONE_BLOCK = tar(file("a", b"x" * 512))  # header, one data block, end-of-archive blocks


@pytest.mark.parametrize("whole, blob, problem", [
    (PLAIN, cut(gzip.compress(PLAIN)), "gzip stream is truncated"),
    (PLAIN, cut(PLAIN), "tar stream is truncated or corrupt"),
    (ONE_BLOCK, ONE_BLOCK[:1024], "DiffID"),  # cut on a header boundary: tarfile sees a shorter archive
    (PLAIN, cut(zstandard.compress(PLAIN)), "truncated"),  # zstandard stops quietly; the tar ends early
], ids=["gzip", "tar-mid-entry", "tar-at-boundary", "zstd"])
def test_a_truncated_layer_is_refused(whole, blob, problem, workdir):
    with pytest.raises(LayerError, match=problem):
        commit_layer(io.BytesIO(blob), os.path.join(workdir, "layer"), image="t:1", layer="sha256:00",
                     diff_id=digest(whole))
    assert os.listdir(workdir) == []


# --- tar headers: tarfile's answers, decoded faster -------------------------------------------------

def gnu_tar() -> str:
    path = shutil.which("tar")
    if path is None:
        pytest.fail("GNU tar not found: the sparse-file tests need it (apt-get install tar)")
    return path


def sparse_tars(workdir: str) -> dict[str, tuple[bytes, bytes]]:
    """GNU tar's sparse files in its four forms (old GNU 'S', PAX 0.0, 0.1, 1.0): (archive, content)."""
    source = os.path.join(workdir, "sparse")
    with open(source, "wb") as handle:
        handle.seek(1 << 20)
        handle.write(b"middle")
        handle.seek(3 << 20)
        handle.write(b"end")
    content = open(source, "rb").read()
    forms = {"gnu": ["--format=gnu"], **{f"pax-{v}": ["--format=pax", f"--sparse-version={v}"]
                                         for v in ("0.0", "0.1", "1.0")}}
    archives = {}
    for form, options in forms.items():
        archive = os.path.join(workdir, f"{form}.tar")
        subprocess.run([gnu_tar(), "--sparse", *options, "-cf", archive, "-C", workdir, "sparse"], check=True)
        archives[form] = (open(archive, "rb").read(), content)
    os.unlink(source)
    return archives


def tar_with(format: int, *entries, **options) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=format, **options) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def headers_corpus(workdir: str) -> dict[str, bytes]:
    """Archives in the header forms tarfile reads, the rare ones included."""
    long_name = "/".join(["directory"] * 30) + "/file"  # over 255 bytes: no ustar prefix can hold it
    v7_dir = tarfile.TarInfo("v7dir/")  # a directory as old tars wrote it: a file whose name ends in /
    v7_dir.type = tarfile.AREGTYPE
    signed = bytearray(tarfile.TarInfo("caf\u00e9").tobuf(tarfile.USTAR_FORMAT))  # Sun's signed checksum
    signed[148:156] = b"%06o\0 " % (256 + sum((b - 256 if b > 127 else b) for i, b in enumerate(signed)
                                               if not 148 <= i < 156))
    corpus = {
        "ustar": tar_with(tarfile.USTAR_FORMAT, file("p" * 90 + "/" + "n" * 90, b"prefix"),
                          directory("d/"), device("d/null", 1, 3), fifo("d/fifo"),
                          symlink("d/link", "t" * 100), hardlink("d/hard", "d/null")),
        "gnu": tar_with(tarfile.GNU_FORMAT, file(long_name, b"long"), symlink("s", "x" * 300),
                        file("big-ids", b"", uid=2**40, gid=2**33), file("before-1970", b"", mtime=-86400)),
        "pax": tar_with(tarfile.PAX_FORMAT, file(long_name, b"long"), symlink("s", "x" * 300),
                        file("big-ids", b"", uid=2**40, gid=2**33, uname="u" * 40),
                        file("nanos", b"", pax_headers={"mtime": "1600000000.123456789"}),
                        file("xattrs", b"", xattrs={"user.a": "1", "trusted.b": "\x00\udcff"}),
                        file("caf\udce9", b"latin-1 name")),  # not UTF-8: PAX writes hdrcharset=BINARY
        "pax-global": tar_with(tarfile.PAX_FORMAT, file("f", b"g"), pax_headers={"comment": "for all"}),
        "v7-and-signed": v7_dir.tobuf(tarfile.USTAR_FORMAT) + bytes(signed) + bytes(1024),
    }
    return corpus | {f"sparse-{form}": archive for form, (archive, _) in sparse_tars(workdir).items()}


FIELDS = ("name", "mode", "uid", "gid", "size", "mtime", "chksum", "type", "linkname", "uname", "gname",
          "devmajor", "devminor", "offset", "offset_data", "pax_headers", "sparse")


def read_all(blob: bytes, tarinfo: type[tarfile.TarInfo]) -> list[tuple[dict, bytes | None]]:
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:", tarinfo=tarinfo) as archive:
        return [({name: getattr(member, name) for name in FIELDS},
                 archive.extractfile(member).read() if member.isreg() else None) for member in archive]


def test_headers_are_read_as_tarfile_reads_them(workdir, monkeypatch):
    corpus = headers_corpus(workdir)
    for name, blob in corpus.items():
        expected = read_all(blob, tarfile.TarInfo)
        assert expected and read_all(blob, LayerTarInfo) == expected, name
    slow = []  # the blocks LayerTarInfo leaves to tarfile's own frombuf
    tarfile_frombuf = tarfile.TarInfo.frombuf.__func__

    def counted(cls, buf, *args):
        slow.append(buf)
        return tarfile_frombuf(cls, buf, *args)

    monkeypatch.setattr(tarfile.TarInfo, "frombuf", classmethod(counted))
    read_all(corpus["pax"], LayerTarInfo)
    assert slow == [bytes(512)]  # the end of the archive only: every PAX and ustar block took the fast path
    slow.clear()
    read_all(corpus["v7-and-signed"], LayerTarInfo)
    assert len(slow) == 2  # the signed checksum, and the end


@pytest.mark.parametrize("form", ["gnu", "pax-0.0", "pax-0.1", "pax-1.0"])
def test_sparse_files_are_unpacked_whole(form, workdir):
    blob, content = sparse_tars(workdir)[form]
    root = unpack_stack("overlay", workdir, [blob])
    assert open(os.path.join(root, "sparse"), "rb").read() == content


@pytest.mark.parametrize("records", [
    b"99 mtime=1600000000\n",  # a length past the header's data
    b"19 mtime=1600000000\n",  # one byte short: the record does not end with a newline
    b"19 mtime1600000000\n",  # no '='
    b"x mtime=1600000000\n",  # no length
], ids=["too-long", "unframed", "no-equals", "no-length"])
def test_a_malformed_pax_record_is_refused(records, workdir):
    header = tarfile.TarInfo("././@PaxHeader")
    header.type, header.size = tarfile.XHDTYPE, len(records)
    blob = (header.tobuf(tarfile.USTAR_FORMAT) + records + bytes(-len(records) % 512)
            + tar_with(tarfile.USTAR_FORMAT, file("f", b"data")))
    with pytest.raises(LayerError, match="tar stream is truncated or corrupt .a malformed PAX record"):
        commit_layer(io.BytesIO(blob), os.path.join(workdir, "layer"), image="t:1", layer="sha256:00",
                     diff_id=digest(blob))


def test_a_corrupt_header_after_the_first_is_refused(workdir):
    """tarfile alone would stop there quietly, as if the archive had ended, and drop the rest."""
    blob = bytearray(tar(file("a", b"1"), file("b", b"2"), file("c", b"3")))
    with tarfile.open(fileobj=io.BytesIO(bytes(blob))) as archive:
        second = archive.getmembers()[1].offset
    blob[second + 148] ^= 1  # its checksum, one bit off
    with pytest.raises(LayerError, match="truncated or corrupt .a corrupt header: bad checksum"):
        commit_layer(io.BytesIO(bytes(blob)), os.path.join(workdir, "layer"), image="t:1", layer="sha256:00",
                     diff_id=digest(bytes(blob)))
    assert os.listdir(workdir) == []


# --- the store's helpers ---------------------------------------------------------------------------

def test_commit_then_remove_and_partial_leftovers(workdir):
    final = os.path.join(workdir, "layer")
    commit_layer(io.BytesIO(PLAIN), final, image="t:1", layer="sha256:00", diff_id=digest(PLAIN))
    assert sorted(os.listdir(final)) == ["bin", "sh"] and stat.S_IMODE(os.stat(final).st_mode) == 0o755
    remove_layer(final)
    leftover = os.path.join(workdir, ".layer.unpacking-dead")
    os.makedirs(os.path.join(leftover, "bin"))
    assert [path.name for path in remove_partial_layers(workdir)] == [".layer.unpacking-dead"]
    assert os.listdir(workdir) == []


def test_unpack_layer_wants_an_empty_directory(workdir):
    open(os.path.join(workdir, "something"), "w").close()
    with pytest.raises(OSError, match="not empty"):
        unpack_layer(io.BytesIO(PLAIN), workdir, image="t:1", layer="sha256:00", diff_id=digest(PLAIN))
