"""Image archives: `docker save` tarballs and OCI image layouts, into the store and out of it.

An image travels without a registry as one tar file (or a directory) holding its blobs and a document
that says which blobs make which image. Three forms are in use:

    docker save, Docker <= 24           docker save, Docker 25+            OCI image layout
    (one directory per layer)           (both at once)                     (skopeo, buildah, umoci)
    manifest.json                       manifest.json                      oci-layout
    <config hex>.json                   index.json, oci-layout             index.json
    <layer id>/layer.tar (uncompressed) blobs/sha256/<hex> (all blobs)     blobs/sha256/<hex> (all blobs)
    <layer id>/json, VERSION            repositories
    repositories

`manifest.json` is Docker's: a list of {"Config": PATH, "RepoTags": [...], "Layers": [PATH, ...]}, bottom
layer first, paths inside the archive. It has no manifest in the registry's sense: loading the legacy
form *synthesizes* one (an OCI manifest naming the config blob and each layer blob by its sha256), and its
digest becomes the image's. `index.json` is the OCI layout's entry point: an image index whose entries
point at manifests (or at nested indexes, one manifest per platform), named by the annotations
`io.containerd.image.name` (a full reference) or `org.opencontainers.image.ref.name`. Docker 25+ writes
both, so that a tool that reads either understands it; loading it keeps Docker's own OCI manifest.

Streaming. A tar has no table of contents, and a docker-save tar names its layers before it says (in
manifest.json, written last) what they are. So `load` reads the archive once, front to back, and files
every member as it passes, never unpacking the archive anywhere:
- a blob (`blobs/sha256/<hex>`, a `*.tar` layer, anything large) goes straight into the store through
  `ImageStore.write_blob`, hashed on the way and renamed into place only when whole (a `blobs/` entry
  must hash to its own name);
- a small document (`manifest.json`, `index.json`, `<hex>.json`, ...) is kept in memory;
- a symlink or hard link is kept as a name for another member (docker save links a layer that two
  images share instead of storing it twice).
Then the documents are read, each image is checked (every blob named is in the archive, every media type
is known, the config parses), and the images are imported: the store unpacks each layer and checks its
DiffID. The input can be a pipe (`ssh host docker save app | minictl load`); the whole archive may be
gzip- or zstd-compressed (`minictl load -i app.tar.gz`), and each layer is sniffed for gzip, zstd or
none by its first bytes (`layer_stream`).

All or nothing. The store's lock is held from the first blob to the last name. The images are imported
untagged first and named only when every one of them is in; if anything fails (a truncated tar, a
missing blob, a DiffID that does not match, ^C), the images this load added are removed, and so is every
blob it wrote: the store is as it was, and the error is one line. During a load, `cat /proc/locks`
shows the store's flock (FLOCK ADVISORY WRITE, the pid of minictl), and the blob being written is a
`.partial-PID-...` file beside the blobs until its rename(2).

`save` writes the Docker 25+ form: every blob as it is stored (layers stay compressed), `index.json`
with one entry per name, `oci-layout`, and `manifest.json`. `docker load` (any version; it decompresses
layers itself), `skopeo copy docker-archive:FILE ...` and `skopeo copy oci-archive:FILE ...` all read it.
Every member has owner 0 and mtime 0, so saving the same image twice gives the same bytes. The blobs are
opened while the lock is held and read after it is released: an open file outlives an unlink(2), so an
`rmi` running meanwhile cannot cut a save short (`ls -l /proc/PID/fd` of the saving minictl then shows
such a blob as `... (deleted)`). The tar goes to a temporary file beside the output, renamed over it
when complete: a failed save leaves no half tar under the name.

Traps:
- A tar that ends at a member boundary looks complete to a stream reader (the two zero blocks that end
  an archive are optional in practice); what it lacks is then named as missing.
- `docker save` of an untagged image writes `"RepoTags": null`; the image is loaded by id only.
- A bare `org.opencontainers.image.ref.name` is read as a reference: `busybox` means busybox:latest,
  and `v1` means v1:latest (the OCI spec leaves its meaning to the tool; skopeo's `oci:DIR:NAME` writes NAME).
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import posixpath
import tarfile
import tempfile
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import zstandard

from ..errors import ContainerError, ImageNotFoundError, InvalidArgumentError
from . import oci, reference
from .layer_stream import GZIP_MAGIC, ZSTD_MAGIC, sniff_compression
from .oci import short_digest
from .reference import Reference
from .registry import host_platform, normalize_platform, platform_matches
from .store import Image, ImageStore, Progress

# What a decompressor raises on a damaged stream (a stream cut short raises EOFError)
_DAMAGED: tuple[type[Exception], ...] = (EOFError, zlib.error, zstandard.ZstdError)
try:
    from isal import igzip as _gzip  # ISA-L: several times faster than zlib
    from isal.isal_zlib import error as _IsalError

    _DAMAGED += (_IsalError,)
except ImportError:
    _gzip = gzip

DOCUMENT_LIMIT = 16 << 20  # bytes of one JSON document kept in memory (manifest.json, a config)
SMALL = 1 << 20  # a member of unknown kind up to this size is kept in memory; larger ones become blobs
IMAGE_NAME = "io.containerd.image.name"  # a full reference ('docker.io/library/busybox:latest')
REF_NAME = "org.opencontainers.image.ref.name"  # a tag ('latest') or a name, as the tool that wrote it saw it
_LAYER_TYPES = {"gzip": oci.OCI_LAYER_GZIP, "zstd": oci.OCI_LAYER_ZSTD, "tar": oci.OCI_LAYER}
_CHUNK = 1 << 20
_MAX_LINKS = 16


class ArchiveError(oci.InvalidImageError):
    """An archive that is not a readable docker-save tar or OCI layout, or that names what it lacks."""


@dataclass(frozen=True)
class Loaded:
    """One image that `load` put into the store."""

    digest: str  # the manifest's digest
    id: str  # the config's digest: docker's image id
    names: list[str]  # familiar references, e.g. ['busybox:latest']; empty for an untagged image


@dataclass
class _Contents:
    """What one pass over an archive found: blobs written to the store, documents, links."""

    label: str  # the archive, as error messages name it
    blobs: dict[str, str] = field(default_factory=dict)  # member name -> digest of the stored blob
    documents: dict[str, bytes] = field(default_factory=dict)  # member name -> its bytes
    links: dict[str, str] = field(default_factory=dict)  # member name -> the member it names

    def resolve(self, name: str, what: str) -> str:
        """The member `name` names, links followed; ArchiveError if the archive does not hold it."""
        path = _normal(name)
        for _ in range(_MAX_LINKS):
            if path in self.blobs or path in self.documents:
                return path
            if path not in self.links:
                raise ArchiveError(f"{self.label}: {what} {name!r} is not in the archive")
            path = self.links[path]
        raise ArchiveError(f"{self.label}: {what} {name!r} is a chain of more than {_MAX_LINKS} links")

    def has(self, name: str) -> bool:
        try:
            self.resolve(name, "member")
        except ArchiveError:
            return False
        return True

    def forget(self, name: str) -> None:
        """A member of this name came before: a tar's later member of the same name replaces it."""
        for kind in (self.blobs, self.documents, self.links):
            kind.pop(name, None)

    def read(self, store: ImageStore, name: str, what: str) -> bytes:
        """A document's bytes (a small member, or a blob read back from the store and hashed again)."""
        path = self.resolve(name, what)
        if path in self.documents:
            return self.documents[path]
        if store.blob_path(self.blobs[path]).stat().st_size > DOCUMENT_LIMIT:
            raise ArchiveError(f"{self.label}: {what} {name!r} is larger than {DOCUMENT_LIMIT} bytes: "
                               "not a JSON document")
        return store.read_blob(self.blobs[path], f"{self.label}: {what}")

    def digest(self, store: ImageStore, name: str, what: str) -> str:
        """The digest of the member `name` names, as a stored blob (a small member is stored now)."""
        path = self.resolve(name, what)
        if path not in self.blobs:
            self.blobs[path] = store.write_blob([self.documents[path]])
        return self.blobs[path]


# --- reading an archive, one pass -------------------------------------------------------------------

def _normal(name: str) -> str:
    """A member name as a key: './blobs/sha256/ab' and 'blobs//sha256/ab' are 'blobs/sha256/ab'."""
    return posixpath.normpath("/" + name).lstrip("/")


def _blob_digest(name: str, label: str) -> str | None:
    """The digest that a member named `blobs/ALGORITHM/HEX` must have; None for other names."""
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return oci.check_digest(f"{parts[1]}:{parts[2]}", f"{label}: member {name!r}")
    return None


def _chunks(source: BinaryIO, what: str, total: int, progress: Progress | None) -> Iterator[bytes]:
    done, reported = 0, 0.0
    while chunk := source.read(_CHUNK):
        done += len(chunk)
        if progress is not None and time.monotonic() - reported > 0.1:
            reported = time.monotonic()
            progress(f"reading {what}", done, total)
        yield chunk
    if progress is not None:
        progress(f"read {what}", total, total)


def _file_member(store: ImageStore, contents: _Contents, name: str, size: int, source: BinaryIO,
                 progress: Progress | None) -> None:
    """File one regular member: a blob into the store, or a small document into memory."""
    expected = _blob_digest(name, contents.label)
    contents.forget(name)
    if expected is None and (size <= SMALL and not name.endswith(".tar")):
        contents.documents[name] = source.read()
        return
    if expected is not None and store.has_blob(expected):
        contents.blobs[name] = expected  # verified when it was stored; the tar reader skips these bytes
        return
    what = short_digest(expected) if expected else name
    try:
        digest = store.write_blob(_chunks(source, what, size, progress), expected, size)
    except oci.DigestMismatchError as error:
        raise ArchiveError(f"{contents.label}: member {name!r}: {error}") from None
    contents.blobs[name] = digest


def _open_stream(path: str, files: contextlib.ExitStack) -> BinaryIO:
    """The archive file (or stdin, for '-'), decompressed if the whole of it is gzip or zstd."""
    try:
        raw = files.enter_context(os.fdopen(os.dup(0), "rb") if path == "-" else open(path, "rb"))
    except OSError as error:
        raise ArchiveError(f"cannot read {path}: {error.strerror}") from None
    head = raw.peek(4)[:4]
    if head.startswith(GZIP_MAGIC):
        return files.enter_context(_gzip.GzipFile(fileobj=raw, mode="rb"))
    if head.startswith(ZSTD_MAGIC):
        return files.enter_context(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True))
    return raw


def _read_tar(store: ImageStore, contents: _Contents, path: str, progress: Progress | None) -> None:
    """One pass over a tar stream: each member filed as it passes (tarfile's "r|" mode never seeks)."""
    where = "at its start"
    try:
        with contextlib.ExitStack() as files, \
                tarfile.open(fileobj=_open_stream(path, files), mode="r|*") as tar:
            while (member := tar.next()) is not None:
                name, where = _normal(member.name), f"in member {member.name!r}"
                if member.isreg():
                    _file_member(store, contents, name, member.size, tar.extractfile(member), progress)
                elif member.issym() or member.islnk():  # a symlink is relative to its directory
                    contents.forget(name)
                    base = posixpath.dirname(name) if member.issym() else ""
                    contents.links[name] = _normal(posixpath.join(base, member.linkname))
                tar.members.clear()  # a stream needs no header it has passed
                where = f"after member {member.name!r}"
    except OSError as error:
        if error.errno is None:  # gzip.BadGzipFile: the bytes, not the file, are wrong
            raise ArchiveError(f"{contents.label}: not a readable tar archive: it is corrupt {where} "
                               f"({error})") from None
        raise ArchiveError(f"{contents.label}: cannot read it ({error.strerror})") from None
    except (tarfile.TarError, *_DAMAGED) as error:
        raise ArchiveError(f"{contents.label}: not a readable tar archive: it is truncated or corrupt "
                           f"{where} ({error or type(error).__name__})") from None


def _read_directory(store: ImageStore, contents: _Contents, root: Path, progress: Progress | None) -> None:
    """The same for an unpacked layout: every file under `root`, symlinks kept as links, not followed."""
    def failed(error: OSError) -> None:
        raise ArchiveError(f"{contents.label}: cannot read {error.filename}: {error.strerror}")

    try:
        for directory, subdirectories, files in os.walk(root, onerror=failed):
            subdirectories.sort()
            for entry in sorted(files + [d for d in subdirectories if (Path(directory) / d).is_symlink()]):
                path = Path(directory) / entry
                name = _normal(os.path.relpath(path, root))
                if path.is_symlink():
                    contents.links[name] = _normal(posixpath.join(posixpath.dirname(name), os.readlink(path)))
                elif path.is_file():
                    with open(path, "rb") as source:
                        size = os.fstat(source.fileno()).st_size
                        _file_member(store, contents, name, size, source, progress)
    except OSError as error:
        failed(error)


# --- what the documents say ----------------------------------------------------------------------------

@dataclass
class _Found:
    """One image of the archive: its manifest (a stored blob) and the names it is to get."""

    digest: str
    manifest: oci.Manifest
    names: list[Reference]


def _json(data: bytes, where: str) -> object:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArchiveError(f"{where} is not valid JSON ({error})") from None


def _parse_ref(text: object, where: str) -> Reference:
    if not isinstance(text, str):
        raise ArchiveError(f"{where}: {text!r} is not an image name")
    try:
        return reference.parse(text)
    except InvalidArgumentError as error:
        raise ArchiveError(f"{where}: {error}") from None


def _layer_media_type(store: ImageStore, digest: str, where: str) -> str:
    """The OCI media type of a layer blob, from its first bytes: gzip, zstd or a plain tar."""
    with open(store.blob_path(digest), "rb") as blob:
        head = blob.read(512)
    kind = sniff_compression(head)
    if kind is None:
        raise ArchiveError(f"{where} is neither a tar nor gzip- nor zstd-compressed "
                           f"(it starts with {head[:8].hex(' ') or 'nothing'})")
    return _LAYER_TYPES[kind]


def _docker_images(store: ImageStore, contents: _Contents) -> list[_Found]:
    """The images manifest.json lists; the manifests are synthesized, or Docker 25's own are kept."""
    where = f"{contents.label}: manifest.json"
    entries = _json(contents.read(store, "manifest.json", "manifest.json"), where)
    if not isinstance(entries, list) or not entries:
        raise ArchiveError(f"{where} is not a list of images")
    oci_manifests = _index_manifests(store, contents) if contents.has("index.json") else []
    found = []
    for number, entry in enumerate(entries, 1):
        here = f"{where} entry {number}"
        if not (isinstance(entry, dict) and isinstance(entry.get("Config"), str)
                and isinstance(entry.get("Layers"), list) and isinstance(entry.get("RepoTags") or [], list)):
            raise ArchiveError(f"{here} has no Config path, Layers list and RepoTags list")
        config_data = contents.read(store, entry["Config"], f"{here}: config")
        oci.parse_config(config_data, f"{here}: config {entry['Config']}")
        config = contents.digest(store, entry["Config"], f"{here}: config")
        stem = posixpath.basename(entry["Config"]).removesuffix(".json")
        if len(stem) == 64 and f"sha256:{stem}" != config:
            raise ArchiveError(f"{here}: config {entry['Config']} hashes to {config}, not to the id in its "
                               "name (the archive is corrupted)")
        layers = [contents.digest(store, path, f"{here}: layer") for path in entry["Layers"]]
        names = [_parse_ref(tag, f"{here} RepoTags") for tag in entry.get("RepoTags") or []]
        same = [(d, m) for d, m in oci_manifests
                if m.config.digest == config and [layer.digest for layer in m.layers] == layers]
        if same:  # Docker 25+: the OCI manifest docker itself made, with its digest
            found.append(_Found(same[0][0], same[0][1], names))
            continue
        descriptors = [oci.Descriptor(_layer_media_type(store, d, f"{here}: layer {n}"), d,
                                      store.blob_path(d).stat().st_size) for n, d in enumerate(layers, 1)]
        document = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                    "config": {"mediaType": oci.OCI_CONFIG, "digest": config, "size": len(config_data)},
                    "layers": [d.to_json() for d in descriptors]}
        data = json.dumps(document, separators=(",", ":")).encode()
        digest = store.write_blob([data], oci.sha256_digest(data), len(data))
        found.append(_Found(digest, oci.parse_manifest(data, f"{here}: synthesized manifest"), names))
    return found


def _read_blob_document(store: ImageStore, contents: _Contents, descriptor: oci.Descriptor,
                        where: str) -> bytes:
    """A manifest or index the archive holds under blobs/, checked against its descriptor."""
    name = f"blobs/{descriptor.digest.replace(':', '/')}"
    if not contents.has(name):
        raise ArchiveError(f"{where} names blob {descriptor.digest}, which the archive does not hold")
    data = contents.read(store, name, "blob")
    if len(data) != descriptor.size:
        raise ArchiveError(f"{where}: blob {short_digest(descriptor.digest)} holds {len(data)} bytes, its "
                           f"descriptor says {descriptor.size}")
    return data


def _index_manifests(store: ImageStore, contents: _Contents) -> list[tuple[str, oci.Manifest]]:
    """The manifests that index.json points at directly (for Docker 25+'s manifest.json to match)."""
    index = oci.parse_index(contents.read(store, "index.json", "index.json"), f"{contents.label}: index.json")
    manifests = []
    for entry in index.manifests:
        if entry.media_type in oci.MANIFEST_TYPES:
            where = f"{contents.label}: index.json manifest {short_digest(entry.digest)}"
            data = _read_blob_document(store, contents, entry, where)
            manifests.append((entry.digest, oci.parse_manifest(data, where)))
    return manifests


def _entry_names(entry: oci.Descriptor, where: str) -> list[Reference]:
    name = entry.annotations.get(IMAGE_NAME) or entry.annotations.get(REF_NAME)
    return [_parse_ref(name, f"{where} annotation")] if name else []


def _oci_images(store: ImageStore, contents: _Contents) -> list[_Found]:
    """The images an OCI layout's index.json names; a nested index gives this host's platform."""
    if not contents.has("oci-layout"):
        raise ArchiveError(f"{contents.label} has an index.json but no oci-layout file: "
                           "not an OCI image layout")
    layout = _json(contents.read(store, "oci-layout", "oci-layout"), f"{contents.label}: oci-layout")
    if not isinstance(layout, dict) or layout.get("imageLayoutVersion") != "1.0.0":
        raise ArchiveError(f"{contents.label}: oci-layout says {layout!r}, expected imageLayoutVersion 1.0.0")
    index = oci.parse_index(contents.read(store, "index.json", "index.json"), f"{contents.label}: index.json")
    found = []
    for number, entry in enumerate(index.manifests, 1):
        where = f"{contents.label}: index.json entry {number}"
        names = _entry_names(entry, where)
        if entry.media_type in oci.INDEX_TYPES:
            nested = oci.parse_index(_read_blob_document(store, contents, entry, where), where)
            entry = _host_manifest(nested, where)
            where = f"{where} ({entry.platform})"
        elif entry.media_type not in oci.MANIFEST_TYPES:
            raise ArchiveError(f"{where} has media type {entry.media_type!r}: not an image manifest or "
                               f"index (expected {oci.OCI_MANIFEST} or {oci.OCI_INDEX})")
        manifest = oci.parse_manifest(_read_blob_document(store, contents, entry, where), where)
        found.append(_Found(entry.digest, manifest, names))
    if not found:
        raise ArchiveError(f"{contents.label}: index.json lists no image")
    return found


def _host_manifest(index: oci.Index, where: str) -> oci.Descriptor:
    wanted = host_platform()
    for entry in index.manifests:
        if entry.media_type in oci.MANIFEST_TYPES and entry.platform and platform_matches(wanted,
                                                                                          entry.platform):
            return entry
    offered = ", ".join(str(normalize_platform(e.platform)) for e in index.manifests if e.platform) or "none"
    raise ArchiveError(f"{where} has no image for this host's platform {wanted} (it has: {offered})")


def _check_blobs(contents: _Contents, image: _Found) -> None:
    """Every blob the manifest names came with the archive (the store checks their sizes on import)."""
    named = [("config", image.manifest.config)]
    named += [(f"layer {n}", layer) for n, layer in enumerate(image.manifest.layers, 1)]
    present = set(contents.blobs.values())
    for what, descriptor in named:
        if descriptor.digest not in present:
            raise ArchiveError(f"{contents.label}: manifest {short_digest(image.digest)} names {what} blob "
                               f"{descriptor.digest}, which the archive does not hold")


# --- load ----------------------------------------------------------------------------------------------

def load(store: ImageStore, source: str | os.PathLike, progress: Progress | None = None) -> list[Loaded]:
    """Load every image of a docker-save tar or an OCI layout (a directory or a tar of one; '-': stdin).

    All or nothing: on any error the images and blobs this call added are removed, and ArchiveError (or
    the store's error, for a layer that does not unpack) says what is wrong, in one line."""
    source = os.fspath(source)
    label = "stdin" if source == "-" else source
    with store.lock():
        store.blobs_dir.mkdir(parents=True, exist_ok=True)
        before = set(os.listdir(store.blobs_dir))
        added: list[str] = []
        try:
            contents = _Contents(label)
            if source != "-" and os.path.isdir(source):
                _read_directory(store, contents, Path(source), progress)
            else:
                _read_tar(store, contents, source, progress)
            if contents.has("manifest.json"):
                found = _docker_images(store, contents)
            elif contents.has("index.json"):
                found = _oci_images(store, contents)
            else:
                raise ArchiveError(f"{label} holds neither a manifest.json (docker save) nor an index.json "
                                   "(an OCI image layout): not an image archive")
            images = _merge(found)
            for image in images:
                _check_blobs(contents, image)
            loaded = _import(store, images, added, label, progress)
        except BaseException:
            for digest in reversed(added):
                store.remove(digest, force=True)
            _remove_new_blobs(store, before, keep=set())
            raise
        _remove_new_blobs(store, before, keep=_used_blobs(images))
        return loaded


def _merge(found: list[_Found]) -> list[_Found]:
    """One entry per manifest, with every name any entry gave it (in order, once each)."""
    merged: dict[str, _Found] = {}
    for image in found:
        if image.digest in merged:
            merged[image.digest].names += [n for n in image.names if n not in merged[image.digest].names]
        else:
            merged[image.digest] = _Found(image.digest, image.manifest, list(dict.fromkeys(image.names)))
    return list(merged.values())


def _import(store: ImageStore, images: list[_Found], added: list[str], label: str,
            progress: Progress | None) -> list[Loaded]:
    """Import every image untagged (appending the new ones to `added`), then give them their names."""
    loaded = []
    for image in images:
        try:
            new = not store.resolve(image.digest)
        except ImageNotFoundError:
            new = True
        what = image.names[0].familiar if image.names else f"image {short_digest(image.digest)}"
        try:
            imported = store.import_image(None, image.digest, progress)  # undoes itself on a failure
        except ContainerError as error:
            raise ArchiveError(f"{label}: {what}: {error}") from error
        if new:
            added.append(image.digest)
        loaded.append(Loaded(image.digest, imported.id, [name.familiar for name in image.names]))
    for image in images:
        for name in image.names:
            store.tag(image.digest, name)
    return loaded


def _used_blobs(images: list[_Found]) -> set[str]:
    """The file names (hex digests) of every blob the images use."""
    return {digest.removeprefix("sha256:") for image in images
            for digest in (image.digest, image.manifest.config.digest,
                           *(layer.digest for layer in image.manifest.layers))}


def _remove_new_blobs(store: ImageStore, before: set[str], keep: set[str]) -> None:
    """Delete the blobs written since `before` was listed that no loaded image uses."""
    for name in set(os.listdir(store.blobs_dir)) - before - keep:
        if not name.startswith("."):  # another writer's temporary file
            (store.blobs_dir / name).unlink(missing_ok=True)


# --- save ----------------------------------------------------------------------------------------------

@dataclass
class _Saved:
    image: Image
    tags: list[Reference]


def save(store: ImageStore, names: list[str], output: str | os.PathLike | BinaryIO,
         progress: Progress | None = None) -> list[Image]:
    """Write the images `names` names to a tar in the Docker 25+ form (manifest.json and an OCI layout).

    `output`: a path (written to a temporary file beside it, renamed into place when complete) or a
    binary stream. An image named by a tag keeps that tag; one named by id is saved untagged."""
    if not names:
        raise InvalidArgumentError("save needs at least one image")
    with contextlib.ExitStack() as files:
        with store.lock():  # the images, and their blobs opened: an rmi from now on cannot take them
            saved = _saved_images(store, names)
            blobs: dict[str, BinaryIO] = {}
            for item in saved:
                image = item.image
                for digest in (image.digest, image.id, *(layer.digest for layer in image.manifest.layers)):
                    if digest not in blobs:
                        blobs[digest] = files.enter_context(open(store.blob_path(digest), "rb"))
        sizes = {digest: os.fstat(blob.fileno()).st_size for digest, blob in blobs.items()}
        documents = _save_documents(saved, sizes)
        if isinstance(output, (str, os.PathLike)):
            _write_file(Path(output), documents, blobs, sizes, progress)
        else:
            _write_tar(output, documents, blobs, sizes, progress)
    return [item.image for item in saved]


def _saved_images(store: ImageStore, names: list[str]) -> list[_Saved]:
    """The images to save, once each, with the tags they were named by."""
    saved: dict[str, _Saved] = {}
    for name in names:
        image = store.get(name)
        item = saved.setdefault(image.digest, _Saved(image, []))
        with contextlib.suppress(InvalidArgumentError):
            ref = reference.parse(name)
            if ref.tag and ref.familiar in image.repo_tags and ref not in item.tags:
                item.tags.append(ref)
    return list(saved.values())


def _save_documents(saved: list[_Saved], sizes: dict[str, int]) -> dict[str, bytes]:
    """oci-layout, index.json (one entry per name, or one for an untagged image) and manifest.json."""
    index, manifests = [], []
    for item in saved:
        image = item.image
        descriptor = oci.Descriptor(image.manifest.media_type, image.digest, sizes[image.digest]).to_json()
        for tag in item.tags or [None]:
            annotations = {IMAGE_NAME: str(tag), REF_NAME: tag.tag} if tag is not None else {}
            index.append({**descriptor, **({"annotations": annotations} if annotations else {})})
        manifests.append({"Config": _blob_name(image.id), "RepoTags": [t.familiar for t in item.tags] or None,
                          "Layers": [_blob_name(layer.digest) for layer in image.manifest.layers]})
    return {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
            "index.json": json.dumps({"schemaVersion": 2, "mediaType": oci.OCI_INDEX,
                                      "manifests": index}).encode(),
            "manifest.json": json.dumps(manifests).encode()}


def _blob_name(digest: str) -> str:
    return f"blobs/{digest.replace(':', '/')}"


def _write_file(path: Path, documents: dict[str, bytes], blobs: dict[str, BinaryIO], sizes: dict[str, int],
                progress: Progress | None) -> None:
    """Write the tar to a temporary file beside `path`, fsync it, and rename it over `path`."""
    if path.is_dir():
        raise InvalidArgumentError(f"cannot write {path}: it is a directory; name a file")
    try:
        out = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False)  # noqa: SIM115
    except OSError as error:
        raise ContainerError(f"cannot write {path}: {error.strerror}") from None
    try:
        with out:
            _write_tar(out, documents, blobs, sizes, progress)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(out.name, 0o644)
        os.replace(out.name, path)
    except OSError as error:
        os.unlink(out.name)
        raise ContainerError(f"cannot write {path}: {error}") from None
    except BaseException:
        os.unlink(out.name)
        raise


def _write_tar(out: BinaryIO, documents: dict[str, bytes], blobs: dict[str, BinaryIO], sizes: dict[str, int],
               progress: Progress | None) -> None:
    """The documents first (a streaming reader learns what follows), then each blob, all owned by 0:0
    with mtime 0."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for name, data in documents.items():
            tar.addfile(_member(name, tarfile.REGTYPE, 0o644, len(data)), io.BytesIO(data))
        for directory in ("blobs", "blobs/sha256"):
            tar.addfile(_member(directory, tarfile.DIRTYPE, 0o755, 0))
        for digest, blob in blobs.items():
            tar.addfile(_member(_blob_name(digest), tarfile.REGTYPE, 0o444, sizes[digest]),
                        _Reporting(blob, short_digest(digest), sizes[digest], progress))


def _member(name: str, kind: bytes, mode: int, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.mtime = kind, mode, size, 0
    return info


class _Reporting:
    """A blob being copied into the tar, reporting how far it is (to a Progress, if any)."""

    def __init__(self, source: BinaryIO, what: str, total: int, progress: Progress | None):
        self.source, self.what, self.total, self.progress = source, what, total, progress
        self.done, self.reported = 0, 0.0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.done += len(data)
        if self.progress is not None and (self.done >= self.total or time.monotonic() - self.reported > 0.1):
            self.reported = time.monotonic()
            done = self.done >= self.total
            self.progress(f"{'saved' if done else 'saving'} {self.what}", self.done, self.total)
        return data
