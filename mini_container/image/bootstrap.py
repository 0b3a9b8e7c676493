"""Build the embedded default images offline, as real multi-layer OCI images, from the host's packages.

Nothing here writes into the store's layer directories directly. A bootstrap builds each layer as a tar
archive (gzip-compressed, as registries serve them), writes it as a blob, writes an OCI image config
(rootfs.diff_ids: the sha256 of each uncompressed tar; history: what each layer does) and an OCI
manifest, and hands the manifest's digest to `ImageStore.import_image`: the same path a pulled or
loaded image takes, DiffID checks and whiteouts included.

`busybox`: Debian's busybox-static, one statically linked binary that is every Unix tool at once.
    layer 1  /bin/busybox, a symlink per applet (/bin/sh -> /bin/busybox, ...), a minimal /etc, the
             empty directories the rootfs stage mounts over (/proc, /sys, /dev, /tmp), and two files
             in /usr/share/doc/busybox
    layer 2  deletes /etc/motd (a whiteout: the entry `etc/.wh.motd`), replaces /etc/os-release, and
             empties /usr/share/doc/busybox but for a new README (an opaque directory: the entry
             `usr/share/doc/busybox/.wh..wh..opq`)
`debian`: `debootstrap --variant=minbase bookworm` (Debian's essential packages and apt) from the mirror
the host's apt uses, its .debs cached in /var/cache/mini-container/debootstrap.
    layer 1  the debootstrap tree, without its apt lists, .deb cache and /dev nodes, and without the
             /etc/hostname and /etc/resolv.conf that debootstrap copies from the host
    layer 2  deletes /etc/motd, replaces the /etc/os-release symlink by a file, and empties
             /usr/share/doc but for each package's copyright (an opaque directory)
In the merged view the deleted files are gone, but layer 1 still holds them: a later layer can hide a
file, never make an image smaller.

Static linking matters: a container sees only its own root filesystem, so a dynamically linked binary
would look for its loader (/lib64/ld-linux-x86-64.so.2) and libc inside the image, and fail.

The busybox build is reproducible: every time stamp is the busybox binary's mtime, and gzip's header
time is 0, so a second bootstrap on the same host makes the same blobs, the same manifest digest, and
imports nothing new. debootstrap runs in a mount namespace of its own (unshare(CLONE_NEWNS), then
every mount made private): the /proc it mounts in the new tree vanishes with it, even if it fails.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import syscalls
from ..errors import ContainerError
from . import oci
from .store import Image, ImageStore, Progress, copy_chunks

try:
    from isal.igzip import IGzipFile as _GzipWriter  # ISA-L: several times faster than zlib
except ImportError:  # the standard library's gzip writes the same format
    from gzip import GzipFile as _GzipWriter

BUSYBOX = Path("/bin/busybox")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DEBIAN_SUITE = "bookworm"
DEBIAN_TAGS = ("debian:bookworm", "debian:latest")
DEBOOTSTRAP_CACHE = Path("/var/cache/mini-container/debootstrap")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# Left out of the debian image's layer 1: the apt lists and .deb cache (apt-get update brings them back),
# the device nodes (every container gets a /dev of its own), the host's hostname and resolver.
_DEBIAN_LEFT_OUT = re.compile(r"^(dev/.+|etc/hostname|etc/resolv\.conf|var/cache/apt/archives/[^/]+\.deb"
                              r"|var/cache/apt/[^/]+\.bin|var/lib/apt/lists/(?!partial$).+)$")

Fill = Callable[[tarfile.TarFile], None]


@dataclass
class LayerBuild:
    """A layer to build: what it does (the history's created_by line) and what writes its entries."""

    created_by: str
    fill: Fill


def is_static_elf(path: Path) -> bool:
    """True if the ELF file at `path` has no PT_INTERP program header, i.e. needs no dynamic loader."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 2: a 64-bit ELF
            return False
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3: PT_INTERP


# --- building an image from layers ---------------------------------------------------------------

def build_image(store: ImageStore, reference: str, layers: list[LayerBuild], config: dict, created: str,
                progress: Progress | None = None) -> Image:
    """Write `layers` as gzip blobs, then an OCI config and manifest, and import the image as `reference`."""
    with store.lock():  # held from the first blob to the import: a concurrent prune cannot collect them
        descriptors, diff_ids = [], []
        for number, layer in enumerate(layers, 1):
            what = f"layer {number}/{len(layers)}"
            descriptor, diff_id = write_layer_blob(store, layer.fill, what, progress)
            descriptors.append(descriptor)
            diff_ids.append(diff_id)
        history = [{"created": created, "created_by": layer.created_by} for layer in layers]
        command = json.dumps(config.get("Cmd") or [])
        history.append({"created": created, "created_by": f"minictl bootstrap: CMD {command}",
                        "empty_layer": True})  # a history entry that made no layer (docker's CMD, ENV, ...)
        document = {"created": created, "architecture": oci.host_architecture(), "os": "linux",
                    "config": config, "rootfs": {"type": "layers", "diff_ids": diff_ids}, "history": history}
        config_descriptor = _write_json_blob(store, oci.OCI_CONFIG, document)
        manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST, "config": config_descriptor.to_json(),
                    "layers": [d.to_json() for d in descriptors]}
        manifest_digest = _write_json_blob(store, oci.OCI_MANIFEST, manifest).digest
        return store.import_image(reference, manifest_digest, progress)


def write_layer_blob(store: ImageStore, fill: Fill, what: str = "layer",
                     progress: Progress | None = None) -> tuple[oci.Descriptor, str]:
    """Build one layer: `fill` writes tar entries, which are hashed (the DiffID) and gzip-compressed on
    their way into an unnamed temporary file (O_TMPFILE), then stored as a blob. Returns the blob's
    descriptor and the DiffID."""
    store.root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=store.root) as compressed:
        gzip = _GzipWriter(fileobj=compressed, mode="wb", mtime=0)
        tar_stream = _Hashing(gzip, what, progress)
        with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            fill(tar)
        gzip.close()  # writes the gzip trailer; the temporary file stays open
        size = compressed.tell()
        compressed.seek(0)
        digest = store.write_blob(copy_chunks(compressed), expected_size=size)
    return oci.Descriptor(oci.OCI_LAYER_GZIP, digest, size), "sha256:" + tar_stream.sha256.hexdigest()


class _Hashing:
    """A write-only stream that hashes what passes through it (the uncompressed tar: its DiffID)."""

    def __init__(self, out, what: str, progress: Progress | None):
        self.out, self.what, self.progress = out, what, progress
        self.sha256 = hashlib.sha256()
        self.written, self._reported = 0, 0.0

    def write(self, data: bytes) -> int:
        self.sha256.update(data)
        self.written += len(data)
        if self.progress is not None and time.monotonic() - self._reported > 0.1:
            self._reported = time.monotonic()
            self.progress(f"writing {self.what}", self.written, 0)
        return self.out.write(data)


def _write_json_blob(store: ImageStore, media_type: str, document: dict) -> oci.Descriptor:
    data = json.dumps(document, indent=2).encode()
    return oci.Descriptor(media_type, store.write_blob([data], oci.sha256_digest(data), len(data)), len(data))


# --- tar entries -----------------------------------------------------------------------------------

def _entry(name: str, kind: bytes, mode: int, mtime: float, **attrs) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.uid, info.gid = kind, mode, int(mtime), 0, 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def add_directory(tar: tarfile.TarFile, name: str, mtime: float, mode: int = 0o755) -> None:
    tar.addfile(_entry(name, tarfile.DIRTYPE, mode, mtime))


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mtime: float, mode: int = 0o644) -> None:
    tar.addfile(_entry(name, tarfile.REGTYPE, mode, mtime, size=len(data)), io.BytesIO(data))


def add_symlink(tar: tarfile.TarFile, name: str, target: str, mtime: float) -> None:
    tar.addfile(_entry(name, tarfile.SYMTYPE, 0o777, mtime, linkname=target))


def add_whiteout(tar: tarfile.TarFile, path: str, mtime: float) -> None:
    """Delete `path` of the layers below: an empty file named `.wh.` + its name, in its directory."""
    directory, _, name = path.rpartition("/")
    add_file(tar, f"{directory}/.wh.{name}" if directory else f".wh.{name}", b"", mtime)


def add_opaque(tar: tarfile.TarFile, directory: str, mtime: float) -> None:
    """Hide everything the layers below hold in `directory`: the entry `DIRECTORY/.wh..wh..opq`."""
    add_file(tar, f"{directory}/.wh..wh..opq", b"", mtime)


def add_host_path(tar: tarfile.TarFile, path: Path, name: str) -> None:
    """A file, directory, symlink, hard link or device of the host, as it is (not followed), with its
    numeric owner only: user names would be looked up in the host's /etc/passwd, not the image's."""
    def numeric(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uname = info.gname = ""
        return info

    tar.add(path, name, recursive=False, filter=numeric)


# --- busybox ---------------------------------------------------------------------------------------

def busybox_version(binary: Path = BUSYBOX) -> str:
    """'1.35.0' from the first line of `busybox --help`: 'BusyBox v1.35.0 (Debian 1:1.35.0-4) ...'."""
    result = subprocess.run([str(binary), "--help"], capture_output=True, text=True)
    match = re.match(r"BusyBox v(\S+)", result.stdout + result.stderr)
    return match.group(1) if match else "unknown"


def bootstrap_busybox(store: ImageStore, reference: str = "busybox:latest",
                      progress: Progress | None = None) -> Image:
    """Build the two-layer busybox image from the host's static busybox and import it as `reference`."""
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        raise ContainerError(f"{BUSYBOX} is missing or not statically linked: "
                             "install Debian's busybox-static (apt-get install busybox-static)")
    mtime = BUSYBOX.stat().st_mtime
    created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
    version = busybox_version()
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True)
    paths = sorted(set(applets.stdout.split()) - {"bin/busybox"})

    def base(tar: tarfile.TarFile) -> None:
        modes = {"root": 0o700, "tmp": 0o1777, "var/tmp": 0o1777}
        directories = {"bin", "etc", "proc", "sys", "dev", "root", "tmp", "var", "var/tmp", "home", "usr",
                       "usr/share", "usr/share/doc", "usr/share/doc/busybox"}
        directories |= {str(Path(p).parent) for p in paths}
        files = {
            "etc/passwd": "root:x:0:0:root:/root:/bin/sh\n"
                          "nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            "etc/group": "root:x:0:\nnogroup:x:65534:\n",
            "etc/os-release": f'NAME="BusyBox"\nID=busybox\nVERSION_ID={version}\n'
                              f'PRETTY_NAME="BusyBox {version}"\n',
            "etc/motd": "Welcome to busybox in mini-container. Layer 2 of this image deletes this file.\n",
            "usr/share/doc/busybox/README": "BusyBox: many Unix tools in one static binary.\n",
            "usr/share/doc/busybox/applets": "".join(f"/{p}\n" for p in paths),
        }
        entries = [(_entry(d, tarfile.DIRTYPE, modes.get(d, 0o755), mtime), b"") for d in directories]
        entries += [(_entry(p, tarfile.SYMTYPE, 0o777, mtime, linkname="/bin/busybox"), b"") for p in paths]
        for name, text in files.items():
            data = text.encode()
            entries.append((_entry(name, tarfile.REGTYPE, 0o644, mtime, size=len(data)), data))
        binary = BUSYBOX.read_bytes()
        entries.append((_entry("bin/busybox", tarfile.REGTYPE, 0o755, mtime, size=len(binary)), binary))
        for info, data in sorted(entries, key=lambda entry: entry[0].name):  # a directory before its files
            tar.addfile(info, io.BytesIO(data))

    def changes(tar: tarfile.TarFile) -> None:
        for directory in ("etc", "usr", "usr/share", "usr/share/doc", "usr/share/doc/busybox"):
            add_directory(tar, directory, mtime)
        add_whiteout(tar, "etc/motd", mtime)
        add_file(tar, "etc/os-release", f'NAME="mini-container busybox"\nID=busybox\nVERSION_ID={version}\n'
                                        f'PRETTY_NAME="BusyBox {version} (mini-container)"\n'
                                        "# replaced by layer 2 of this image; layer 1 keeps its own copy\n"
                                        .encode(), mtime)
        add_opaque(tar, "usr/share/doc/busybox", mtime)
        add_file(tar, "usr/share/doc/busybox/README", b"BusyBox: many Unix tools in one static binary. "
                                                      b"Run 'busybox --list' for the applets.\n", mtime)

    layers = [
        LayerBuild(f"minictl bootstrap busybox: add /bin/busybox (BusyBox {version}, busybox-static), "
                   f"{len(paths)} applet symlinks, /etc/passwd, /etc/group, /etc/os-release, /etc/motd, "
                   "/usr/share/doc/busybox/{README,applets}", base),
        LayerBuild("minictl bootstrap busybox: rm /etc/motd (a whiteout); replace /etc/os-release; "
                   "rm -rf /usr/share/doc/busybox, then a new README there (an opaque directory)", changes),
    ]
    config = {"Env": [f"PATH={PATH}"], "Cmd": ["sh"], "WorkingDir": "/"}
    return build_image(store, reference, layers, config, created, progress)


# --- debian ----------------------------------------------------------------------------------------

def apt_mirror(suite: str = DEBIAN_SUITE, sources: Path = Path("/etc/apt")) -> str:
    """The URI of the first apt source of the host that serves `suite` (one-line .list files and deb822
    .sources files), or deb.debian.org when the host has none (an Ubuntu host, say)."""
    candidates: list[tuple[list[str], list[str], list[str]]] = []  # (types, uris, suites)
    for path in [sources / "sources.list", *sorted((sources / "sources.list.d").glob("*.list"))]:
        for line in path.read_text().splitlines() if path.is_file() else []:
            words = re.sub(r"\[[^]]*\]", "", line.split("#")[0]).split()  # drop '[signed-by=...]' options
            if len(words) >= 3:
                candidates.append(([words[0]], [words[1]], [words[2]]))
    for path in sorted((sources / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.MULTILINE))
            candidates.append((fields.get("Types", "").split(), fields.get("URIs", "").split(),
                               fields.get("Suites", "").split()))
    for types, uris, suites in candidates:
        if "deb" in types and suite in suites and uris:
            return uris[0].rstrip("/")
    return DEFAULT_MIRROR


def _in_private_mount_namespace() -> None:
    """Run in the child before exec: its own mount namespace, no propagation back to the host."""
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def debootstrap(target: Path, mirror: str, cache: Path, progress: Progress | None = None,
                suite: str = DEBIAN_SUITE) -> None:
    """`debootstrap --variant=minbase SUITE TARGET MIRROR`, .debs cached in `cache`, in a private mount
    namespace; ContainerError with debootstrap's last error line if it fails."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    program = shutil.which("debootstrap", path=search)
    if program is None:
        raise ContainerError("debootstrap is not installed: apt-get install debootstrap")
    cache.mkdir(parents=True, exist_ok=True)
    command = [program, "--variant=minbase", f"--cache-dir={cache.resolve()}", suite, str(target), mirror]
    env = {**os.environ, "PATH": search, "LC_ALL": "C"}
    tail: deque[str] = deque(maxlen=40)
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                          text=True, env=env, preexec_fn=_in_private_mount_namespace) as child:
        for line in child.stdout:
            tail.append(line.strip())
            if progress is not None and line.strip():
                progress(f"debootstrap: {line.strip()}", 0, 0)
    if child.returncode != 0:
        errors = [line for line in tail if line.startswith("E:")] or [line for line in tail if line] or ["?"]
        raise ContainerError(f"debootstrap {suite} from {mirror} failed (exit {child.returncode}): "
                             f"{errors[-1]} (is the mirror reachable? another one: --mirror URL)")


def bootstrap_debian(store: ImageStore, tags: tuple[str, ...] = DEBIAN_TAGS, *, mirror: str | None = None,
                     cache: Path = DEBOOTSTRAP_CACHE, progress: Progress | None = None) -> Image:
    """Build the two-layer Debian image with debootstrap and import it under each of `tags`."""
    mirror = mirror or apt_mirror()
    store.root.mkdir(parents=True, exist_ok=True)
    target = Path(tempfile.mkdtemp(prefix=".debootstrap-", dir=store.root))
    try:
        debootstrap(target, mirror, cache, progress)
        mtime = time.time()
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(mtime))
        layers = [
            LayerBuild(f"debootstrap --variant=minbase {DEBIAN_SUITE} / {mirror} (without the apt lists, "
                       "the .deb cache, /dev, /etc/hostname and /etc/resolv.conf)",
                       lambda tar: _add_tree(tar, target)),
            LayerBuild("minictl bootstrap debian: rm /etc/motd (a whiteout); replace the /etc/os-release "
                       "symlink by a file; rm -rf /usr/share/doc/* but each package's copyright (an opaque "
                       "directory)", lambda tar: _debian_changes(tar, target, mtime)),
        ]
        config = {"Env": [f"PATH={PATH}"], "Cmd": ["bash"], "WorkingDir": "/"}
        with store.lock():
            image = build_image(store, tags[0], layers, config, created, progress)
            for tag in tags[1:]:
                store.tag(image.reference, tag)
            return store.get(image.reference)
    finally:
        shutil.rmtree(target)


def _add_tree(tar: tarfile.TarFile, root: Path) -> None:
    """Every path under `root` but the ones left out, each directory before what it holds."""
    for directory, subdirectories, files in os.walk(root):
        relative = os.path.relpath(directory, root)
        subdirectories.sort()
        for name in sorted(subdirectories + files):
            path = name if relative == "." else f"{relative}/{name}"
            if _DEBIAN_LEFT_OUT.match(path):
                if name in subdirectories:
                    subdirectories.remove(name)  # not descended into
                continue
            add_host_path(tar, Path(directory) / name, path)


def _debian_changes(tar: tarfile.TarFile, root: Path, mtime: float) -> None:
    """Layer 2 of debian: a whiteout, a replaced file, and an opaque /usr/share/doc."""
    add_host_path(tar, root / "etc", "etc")
    add_whiteout(tar, "etc/motd", mtime)
    release = (root / "usr/lib/os-release").read_text()
    pretty = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm), mini-container build"'
    release = re.sub(r"^PRETTY_NAME=.*$", pretty, release, flags=re.MULTILINE)
    add_file(tar, "etc/os-release", ("# replaced by layer 2 of this image: it was a symlink to "
                                     "../usr/lib/os-release in layer 1\n" + release).encode(), mtime)
    for path in ("usr", "usr/share", "usr/share/doc"):
        add_host_path(tar, root / path, path)
    add_opaque(tar, "usr/share/doc", mtime)
    for package in sorted((root / "usr/share/doc").iterdir()):
        name = f"usr/share/doc/{package.name}"
        add_host_path(tar, package, name)  # a directory, or a symlink to another package's
        if not package.is_symlink() and (package / "copyright").is_file():
            add_host_path(tar, package / "copyright", f"{name}/copyright")
