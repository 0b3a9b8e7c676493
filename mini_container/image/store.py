"""The image store: blobs by digest, layers by ChainID, and the names that point at images.

Layout under the engine's root (by default /var/lib/mini-container), after containerd's content store
and overlay snapshotter:

    blobs/sha256/<hex>          every manifest, config and layer blob, named by the sha256 of its bytes
    layers/<id>/                one unpacked layer, in overlay form (whiteouts are 0/0 devices)
    layerdb/<chain hex>.json    a layer's ChainID, DiffID, parent ChainID, directory id and size
    images/<manifest hex>.json  an image: its manifest and config digests, its ChainIDs, its blobs
    repositories.json           names -> manifest digests: "docker.io/library/busybox:latest": "sha256:..."
    lock                        flock(2)ed by every writer

Content addressing. A blob's name is the sha256 of its bytes, so a blob is verified by hashing it as it
arrives, and two images that hold the same layer blob store it once. It is written to a temporary file
beside the blobs, fsync(2)ed, checked, and only then rename(2)d to its name: rename within one
directory is atomic, so a reader (or a crash) sees either no blob or the whole blob, never half of one.

One layer, one directory. A layer is unpacked once (`unpack.commit_layer`, with the layers below it, so
its whiteouts and symlinks are seen through them) and committed under its ChainID, the digest of the
whole stack below and including it (`oci.chain_ids`). Every image whose stack starts the same way uses
the same directories: `minictl run` stacks them with overlayfs and never copies them.

Why the directories have short names. overlayfs takes its lower directories in one option string,
    mount("overlay", target, "overlay", 0, "lowerdir=/R/layers/c3:/R/layers/b2:/R/layers/a1,upperdir=...")
and mount(2) copies that string into one page: 4096 bytes, upperdir and workdir included. A layer is
named by the shortest prefix of its ChainID, 4 hex digits or more, that no other layer has (docker's
overlay2 uses 26-character links, containerd numbers its snapshots): with the default root each layer
costs about 35 bytes of the page, so some 100 layers fit; a 64-digit name would allow about 40.

Concurrency. Every command that changes the store holds an exclusive flock(2) on `lock` for as long as
it changes it (`with store.lock():`); readers take no lock, because every record is written to a
temporary file and renamed into place. A program that writes blobs and then imports them (a pull, a
load) holds the lock across both, so that a concurrent `image prune` cannot collect the blobs between.
`cat /proc/locks` shows the lock (FLOCK ADVISORY WRITE) and the pid holding it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import ContainerError, ImageNotFoundError, InvalidArgumentError
from . import oci, reference
from .oci import short_digest
from .reference import Reference

Progress = Callable[[str, int, int], None]
"""progress(what, done, total): `done` of `total` bytes of a long step; total 0 when unknown."""

BOOTSTRAPPED = ("busybox", "debian")  # the images that `minictl bootstrap NAME` builds offline
_LAYER_ID_DIGITS = 4
_PARTIAL_BLOB = ".partial-"  # a blob being written: .partial-<pid>-<random>, beside the blobs
_CHUNK = 1 << 20

_held: dict[str, list[int]] = {}  # realpath of a store root -> [lock file descriptor, depth]
_held_guard = threading.Lock()


@dataclass(frozen=True)
class Layer:
    """A committed layer: its identity in the stack, and the directory that holds it unpacked."""

    chain_id: str
    diff_id: str
    parent: str | None  # the ChainID of the layer below; None for the bottom layer
    directory: Path
    size: int  # bytes of the uncompressed tar


@dataclass(frozen=True)
class Image:
    """An image the store holds, as found under one of its names (or by its id)."""

    reference: str  # familiar: 'busybox:latest', 'alpine@sha256:...', or the short id when untagged
    name: str | None  # 'busybox', '127.0.0.1:5000/team/app'; None when untagged
    tag: str | None
    digest: str  # the manifest's digest
    id: str  # the config's digest, as docker's image id
    image_config: dict  # the whole config document: config, history, rootfs, created, architecture, os
    manifest: oci.Manifest
    chain: list[Layer]  # bottom first
    repo_tags: list[str]  # every 'name:tag' that points at this image
    repo_digests: list[str]  # 'name@manifest digest' for each name that points at it

    @property
    def config(self) -> dict:
        """The runtime defaults: Env, Cmd, Entrypoint, WorkingDir, User, ..."""
        return self.image_config.get("config") or {}

    @property
    def layers(self) -> list[Path]:
        """The layer directories, bottom first: what the rootfs stage stacks with overlayfs."""
        return [layer.directory for layer in self.chain]

    @property
    def size(self) -> int:
        """Bytes of the image's uncompressed layers."""
        return sum(layer.size for layer in self.chain)

    @property
    def created(self) -> str:
        return self.image_config.get("created") or ""


@dataclass
class Pruned:
    """What `prune` removed."""

    images: list[str]  # manifest digests of untagged images
    layers: list[str]  # ChainIDs (and orphan directory names)
    blobs: list[str]  # digests (and dead partial files)
    reclaimed: int  # bytes of blobs and uncompressed layers


class ImageStore:
    """Images, layers and blobs under one root directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.blobs_dir = self.root / "blobs" / "sha256"
        self.layers_dir = self.root / "layers"
        self.layerdb_dir = self.root / "layerdb"
        self.images_dir = self.root / "images"
        self.repositories_file = self.root / "repositories.json"

    # --- the lock -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the store's exclusive flock(2) (blocking until other processes release it).

        Re-entrant within one process, and shared by its threads: it keeps other processes out.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.root)
        with _held_guard:
            held = _held.get(key)
            if held is None:
                fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
                fcntl.flock(fd, fcntl.LOCK_EX)
                held = _held[key] = [fd, 0]
            held[1] += 1
        try:
            yield
        finally:
            with _held_guard:
                held[1] -= 1
                if held[1] == 0:
                    os.close(held[0])  # closing the last descriptor of the open file releases the flock
                    del _held[key]

    # --- blobs ----------------------------------------------------------------------------------

    def blob_path(self, digest: str) -> Path:
        """Where the blob named `digest` is (or would be) stored."""
        return self.blobs_dir / oci.check_digest(digest, "blob").removeprefix("sha256:")

    def has_blob(self, digest: str) -> bool:
        return self.blob_path(digest).is_file()

    def write_blob(self, chunks: Iterable[bytes], expected_digest: str | None = None,
                   expected_size: int | None = None) -> str:
        """Store the bytes of `chunks` as a blob and return its digest; verify the digest and size given.

        The bytes go to a temporary file beside the blobs, are fsync'ed, checked, and renamed into place.
        On a mismatch (DigestMismatchError, naming expected and actual) or any failure, nothing is left.
        Callers skip the blobs that has_blob() already holds.
        """
        if expected_digest is not None:
            oci.check_digest(expected_digest, "expected blob digest")
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=self.blobs_dir, prefix=f"{_PARTIAL_BLOB}{os.getpid()}-")
        named = expected_digest or "blob"
        try:
            sha256, size = hashlib.sha256(), 0
            with open(fd, "wb") as out:
                for chunk in chunks:
                    sha256.update(chunk)
                    size += len(chunk)
                    if expected_size is not None and size > expected_size:
                        raise oci.DigestMismatchError(f"{named}: more than the {expected_size} bytes its "
                                                      "descriptor announces: nothing was stored")
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = "sha256:" + sha256.hexdigest()
            if expected_size is not None and size != expected_size:
                raise oci.DigestMismatchError(f"{named}: {size} bytes received, its descriptor announces "
                                              f"{expected_size} (a truncated transfer): nothing was stored")
            if expected_digest is not None and digest != expected_digest:
                raise oci.DigestMismatchError(f"blob content has digest {digest}, expected {expected_digest} "
                                              "(corrupted or altered): nothing was stored")
            os.chmod(temporary, 0o444)  # a blob never changes
            with self.lock():
                os.rename(temporary, self.blob_path(digest))
                _fsync_directory(self.blobs_dir)
            return digest
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def read_blob(self, digest: str, what: str) -> bytes:
        """A small blob's bytes (a manifest, a config), hashed again: a damaged store is named, not used."""
        try:
            data = self.blob_path(digest).read_bytes()
        except FileNotFoundError:
            raise oci.InvalidImageError(f"{what} {digest} is not in the store ({self.blobs_dir}): "
                                        "pull or load the image again") from None
        if oci.sha256_digest(data) != digest:
            raise oci.DigestMismatchError(f"{what} {digest} is damaged on disk (its bytes hash to "
                                          f"{oci.sha256_digest(data)}): remove the image and pull or load it "
                                          "again")
        return data

    # --- importing ------------------------------------------------------------------------------

    def import_image(self, ref: Reference | str | None, manifest_digest: str,
                     progress: Progress | None = None) -> Image:
        """Make an image of the manifest `manifest_digest`, whose config and layer blobs the store holds.

        Unpacks each layer the store does not have yet (once, checking its DiffID), commits it under its
        ChainID, then records the image under `ref` (a Reference or a string; None: untagged, found by
        its id). On any error, the layers this call committed are removed and no image is recorded.
        """
        ref = reference.parse(ref) if isinstance(ref, str) else ref
        label = ref.familiar if ref is not None else short_digest(manifest_digest)
        with self.lock():
            where = f"image {label}: manifest {short_digest(manifest_digest)}"
            manifest = oci.parse_manifest(self.read_blob(manifest_digest, f"image {label}: manifest"), where)
            self._check_blobs(manifest, where)
            config = oci.parse_config(self.read_blob(manifest.config.digest, f"{where}: config"),
                                      f"{where}: config")
            if not manifest.layers or len(config.diff_ids) != len(manifest.layers):
                raise oci.InvalidImageError(f"{where}: {len(manifest.layers)} layer(s), and its config lists "
                                            f"{len(config.diff_ids)} diff_ids: not a runnable image")
            record_path = self.images_dir / f"{manifest_digest.removeprefix('sha256:')}.json"
            created: list[Layer] = []
            new_record = not record_path.exists()
            try:
                self._commit_layers(manifest, config, label, created, progress)
                _write_json(record_path, {
                    "digest": manifest_digest, "id": manifest.config.digest,
                    "chain_ids": oci.chain_ids(config.diff_ids),
                    "blobs": [manifest_digest, manifest.config.digest, *(d.digest for d in manifest.layers)],
                    "imported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
                if ref is not None:
                    self._set_names({_key(ref): manifest_digest})
            except BaseException:
                if new_record:
                    record_path.unlink(missing_ok=True)
                for layer in created:
                    self._delete_layer(layer.chain_id)
                raise
            return self._image(manifest_digest, _key(ref) if ref is not None else None)

    def _check_blobs(self, manifest: oci.Manifest, where: str) -> None:
        """Every blob the manifest names is in the store, with the size its descriptor says."""
        named = [("config", manifest.config)]
        named += [(f"layer {number}", layer) for number, layer in enumerate(manifest.layers, 1)]
        for what, descriptor in named:
            path = self.blob_path(descriptor.digest)
            if not path.is_file():
                raise oci.InvalidImageError(f"{where} names {what} blob {descriptor.digest}, which the store "
                                            "does not hold: pull or load the image again")
            if path.stat().st_size != descriptor.size:
                raise oci.DigestMismatchError(f"{where}: {what} blob {short_digest(descriptor.digest)} holds "
                                              f"{path.stat().st_size} bytes, the manifest says "
                                              f"{descriptor.size}")

    def _commit_layers(self, manifest: oci.Manifest, config: oci.ImageConfig, label: str,
                       created: list[Layer], progress: Progress | None) -> None:
        """Unpack the layers the store lacks, bottom first; append each one committed to `created`."""
        lowers: list[Path] = []  # nearest first, as lowerdir= and unpack want them
        parent = None
        total = len(manifest.layers)
        for number, (descriptor, diff_id, chain_id) in enumerate(
                zip(manifest.layers, config.diff_ids, oci.chain_ids(config.diff_ids), strict=True), 1):
            what = f"layer {number}/{total} {short_digest(descriptor.digest)}"
            layer = self._layer(chain_id)
            if layer is None:
                layer = self._commit_layer(descriptor, diff_id, chain_id, parent, lowers, label,
                                           _Progressed(what, descriptor.size, progress))
                created.append(layer)
            elif progress is not None:
                progress(f"{what} already unpacked in {layer.directory.name}", 1, 1)
            lowers.insert(0, layer.directory)
            parent = chain_id

    def _commit_layer(self, descriptor: oci.Descriptor, diff_id: str, chain_id: str, parent: str | None,
                      lowers: list[Path], label: str, reader: _Progressed) -> Layer:
        from . import unpack  # tarfile and the decompressors: only when a layer is made or removed

        self.layers_dir.mkdir(parents=True, exist_ok=True)
        directory = self.layers_dir / self._new_layer_id(chain_id)
        with open(self.blob_path(descriptor.digest), "rb") as blob:
            reader.source = blob
            unpacked = unpack.commit_layer(reader, directory, image=label, layer=descriptor.digest,
                                           diff_id=diff_id, lowers=lowers)
        reader.finish()
        layer = Layer(chain_id, diff_id, parent, directory, unpacked.size)
        _write_json(self._layerdb_path(chain_id), {"chain_id": chain_id, "diff_id": diff_id, "parent": parent,
                                                   "id": directory.name, "size": unpacked.size})
        return layer

    def _new_layer_id(self, chain_id: str) -> str:
        """The shortest prefix of the ChainID's hex, of 4 digits or more, that no layer has yet."""
        taken = {entry.name for entry in self.layers_dir.iterdir()}
        taken |= {record["id"] for record in self._layer_records().values()}
        hexa = chain_id.removeprefix("sha256:")
        return next(hexa[:length] for length in range(_LAYER_ID_DIGITS, len(hexa) + 1)
                    if hexa[:length] not in taken)

    def tag(self, source: str, target: Reference | str) -> Image:
        """Give the image `source` names one more name, `target` (replacing what that name pointed at)."""
        target = reference.parse(target) if isinstance(target, str) else target
        with self.lock():
            image = self.get(source)
            self._set_names({_key(target): image.digest})
            return self._image(image.digest, _key(target))

    # --- reading --------------------------------------------------------------------------------

    def get(self, name: str) -> Image:
        """The image that `name` names: a reference ('busybox', 'busybox:latest',
        'docker.io/library/busybox@sha256:...') or its id or a prefix of it ('sha256:3f2a...', '3f2a')."""
        digest, key = self._find(name)
        return self._image(digest, key)

    def resolve(self, name: str) -> str:
        """The manifest digest of the image `name` names (as get() finds it), without reading the image."""
        return self._find(name)[0]

    def list(self) -> list[Image]:
        """Every image: once per name (sorted), then each untagged one (by id)."""
        names, records = self._names(), self._image_records()
        found = [self._image(digest, key) for key, digest in sorted(names.items()) if digest in records]
        found += [self._image(digest, None) for digest in sorted(records) if digest not in names.values()]
        return found

    def _find(self, name: str) -> tuple[str, str | None]:
        """(manifest digest, the repositories key it was found by, or None when found by id or digest)."""
        names, records = self._names(), self._image_records()
        try:
            ref = reference.parse(name)
        except InvalidArgumentError as error:
            ref, parse_error = None, error
        if ref is not None:
            key = _key(ref)
            if key in names and names[key] in records:
                return names[key], key
            if ref.digest in records and any(k.startswith(f"{ref.name}:") or k.startswith(f"{ref.name}@")
                                             for k, d in names.items() if d == ref.digest):
                return ref.digest, None
        by_id = self._find_by_id(name, records)
        if by_id is not None:
            return by_id, None
        if ref is None:
            raise parse_error
        raise ImageNotFoundError(_not_found(ref, self.root))

    @staticmethod
    def _find_by_id(name: str, records: dict[str, dict]) -> str | None:
        """The manifest digest of the image whose id (config digest) or manifest digest starts with
        `name` ('sha256:' optional, 4 hex digits or more); None if none does."""
        hexa = name.removeprefix("sha256:")
        if len(hexa) < _LAYER_ID_DIGITS or any(c not in "0123456789abcdef" for c in hexa):
            return None
        matches = {digest for digest, record in records.items()
                   if record["id"][7:].startswith(hexa) or digest[7:].startswith(hexa)}
        ids = {records[digest]["id"] for digest in matches}
        if len(ids) > 1:
            raise InvalidArgumentError(f"image id prefix {name!r} is ambiguous: it matches "
                                       f"{', '.join(sorted(i[7:19] for i in ids))}; give more digits")
        return max(matches, key=lambda d: records[d]["imported"]) if matches else None

    def _image(self, digest: str, key: str | None) -> Image:
        record = self._image_records().get(digest)
        if record is None:
            raise ImageNotFoundError(f"image {short_digest(digest)} was removed just now")
        manifest = oci.parse_manifest(self.read_blob(digest, "manifest"), f"manifest {short_digest(digest)}")
        config = oci.parse_config(self.read_blob(record["id"], "config"), "config")
        chain = []
        for chain_id in record["chain_ids"]:
            layer = self._layer(chain_id)
            if layer is None:
                raise ContainerError(f"image {short_digest(record['id'])}: layer {short_digest(chain_id)} is "
                                     "missing from the store: remove the image (minictl rmi) and pull or "
                                     "load it again")
            chain.append(layer)
        keys = sorted(k for k, d in self._names().items() if d == digest)
        refs = [reference.parse(k) for k in keys]
        tags = [r.familiar for r in refs if r.tag]
        repo_digests = sorted({f"{r.familiar_name}@{digest}" for r in refs})
        if key is None and keys:
            key = next((k for k in keys if reference.parse(k).tag), keys[0])
        ref = reference.parse(key) if key is not None else None
        return Image(reference=ref.familiar if ref else record["id"][7:19],
                     name=ref.familiar_name if ref else None, tag=ref.tag if ref else None,
                     digest=digest, id=record["id"], image_config=config.raw, manifest=manifest,
                     chain=chain, repo_tags=tags, repo_digests=repo_digests)

    def _layer(self, chain_id: str) -> Layer | None:
        """The committed layer with this ChainID, if its record and its directory both exist."""
        try:
            record = json.loads(self._layerdb_path(chain_id).read_text())
        except FileNotFoundError:
            return None
        directory = self.layers_dir / record["id"]
        if not directory.is_dir():
            return None
        return Layer(record["chain_id"], record["diff_id"], record["parent"], directory, record["size"])

    def _layerdb_path(self, chain_id: str) -> Path:
        return self.layerdb_dir / f"{chain_id.removeprefix('sha256:')}.json"

    def _layer_records(self) -> dict[str, dict]:
        return _read_records(self.layerdb_dir, "chain_id")

    def _image_records(self) -> dict[str, dict]:
        return _read_records(self.images_dir, "digest")

    def _names(self) -> dict[str, str]:
        try:
            return json.loads(self.repositories_file.read_text())
        except FileNotFoundError:
            return {}

    def _set_names(self, changes: dict[str, str | None]) -> None:
        """Point names at manifest digests (None: remove the name). The caller holds the lock."""
        names = self._names()
        for key, digest in changes.items():
            if digest is None:
                names.pop(key, None)
            else:
                names[key] = digest
        _write_json(self.repositories_file, dict(sorted(names.items())))

    # --- removing -------------------------------------------------------------------------------

    def remove(self, name: str, force: bool = False) -> list[str]:
        """`docker rmi`: remove the name; when no name is left, delete the image and the layers and blobs
        that no other image uses. By id, an image with several names needs `force`. Returns what was
        done, one line each ('Untagged: busybox:latest', 'Deleted: sha256:...')."""
        with self.lock():
            digest, key = self._find(name)
            keys = sorted(k for k, d in self._names().items() if d == digest)
            if key is None and len(keys) > 1 and not force:
                familiar = ", ".join(reference.parse(k).familiar for k in keys)
                raise ContainerError(f"image {name} has several names ({familiar}): remove them by name, "
                                     "or use rmi -f to remove them all")
            untag = [key] if key is not None else keys
            self._set_names(dict.fromkeys(untag))
            done = [f"Untagged: {reference.parse(k).familiar}" for k in untag]
            if set(keys) - set(untag):
                return done
            record = self._image_records()[digest]
            (self.images_dir / f"{digest[7:]}.json").unlink()
            done.append(f"Deleted: {record['id']}")
            layers, blobs, _ = self._delete_unused(record["chain_ids"], record["blobs"])
            return done + [f"Deleted: {chain_id}" for chain_id in layers]

    def prune(self, keep: Iterable[str] = ()) -> Pruned:
        """Delete the untagged images (but those whose id or manifest digest is in `keep`: the ones
        containers use), then every layer and blob that no image uses, and what crashed writers left."""
        from . import unpack  # tarfile and the decompressors: only when a layer is made or removed

        keep = set(keep)
        with self.lock():
            names, records = self._names(), self._image_records()
            images = [digest for digest, record in records.items()
                      if digest not in names.values() and digest not in keep and record["id"] not in keep]
            for digest in images:
                (self.images_dir / f"{digest[7:]}.json").unlink()
            layers, blobs, reclaimed = self._delete_unused(list(self._layer_records()), self._blob_digests())
            if self.layers_dir.is_dir():
                known = {record["id"] for record in self._layer_records().values()}
                layers += [str(p.name) for p in unpack.remove_partial_layers(self.layers_dir)]
                for orphan in [p for p in self.layers_dir.iterdir() if p.name not in known]:
                    unpack.remove_layer(orphan)  # unpacked by a process that died before recording it
                    layers.append(orphan.name)
            blobs += self._remove_dead_partial_blobs()
            return Pruned(images, layers, blobs, reclaimed)

    def _delete_unused(self, chain_ids: Iterable[str],
                       blobs: Iterable[str]) -> tuple[list[str], list[str], int]:
        """Delete those of `chain_ids` and `blobs` that no image record uses; return them and the bytes."""
        records = self._image_records().values()
        used_chains = {chain_id for record in records for chain_id in record["chain_ids"]}
        used_blobs = {digest for record in records for digest in record["blobs"]}
        removed_layers, removed_blobs, reclaimed = [], [], 0
        for chain_id in [c for c in dict.fromkeys(chain_ids) if c not in used_chains]:
            reclaimed += self._delete_layer(chain_id)
            removed_layers.append(chain_id)
        for digest in [d for d in dict.fromkeys(blobs) if d not in used_blobs]:
            path = self.blob_path(digest)
            with contextlib.suppress(FileNotFoundError):
                reclaimed += path.stat().st_size
                path.unlink()
                removed_blobs.append(digest)
        return removed_layers, removed_blobs, reclaimed

    def _delete_layer(self, chain_id: str) -> int:
        """Delete a layer's directory, then its record; return its size. The caller holds the lock."""
        from . import unpack  # tarfile and the decompressors: only when a layer is made or removed

        path = self._layerdb_path(chain_id)
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            return 0
        directory = self.layers_dir / record["id"]
        if directory.is_dir():
            unpack.remove_layer(directory)
        path.unlink()
        return record["size"]

    def _blob_digests(self) -> list[str]:
        if not self.blobs_dir.is_dir():
            return []
        return [f"sha256:{p.name}" for p in self.blobs_dir.iterdir() if not p.name.startswith(".")]

    def _remove_dead_partial_blobs(self) -> list[str]:
        """Delete the temporary files of blob writers whose process is gone (killed mid-download)."""
        removed = []
        for path in self.blobs_dir.glob(f"{_PARTIAL_BLOB}*") if self.blobs_dir.is_dir() else []:
            pid = path.name[len(_PARTIAL_BLOB):].partition("-")[0]
            if not (pid.isdigit() and os.path.exists(f"/proc/{pid}")):
                path.unlink(missing_ok=True)
                removed.append(path.name)
        return removed


class _Progressed:
    """A blob being read, reporting how far through it the reader is (to a Progress, if any)."""

    def __init__(self, what: str, total: int, progress: Progress | None):
        self.what, self.total, self.progress = what, total, progress
        self.source = None
        self.done = 0
        self._reported = 0.0

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.done += len(data)
        if self.progress is not None and time.monotonic() - self._reported > 0.1:
            self._reported = time.monotonic()
            self.progress(f"unpacking {self.what}", self.done, self.total)
        return data

    def finish(self) -> None:
        if self.progress is not None:
            self.progress(f"unpacked {self.what}", self.total, self.total)


def _key(ref: Reference) -> str:
    """A name's key in repositories.json: 'docker.io/library/busybox:latest', or 'NAME@DIGEST' untagged."""
    return f"{ref.name}:{ref.tag}" if ref.tag else f"{ref.name}@{ref.digest}"


def _not_found(ref: Reference, root: Path) -> str:
    if ref.registry == reference.DEFAULT_REGISTRY and ref.familiar_name in BOOTSTRAPPED:
        how = f"'minictl bootstrap {ref.familiar_name}' builds {ref.familiar_name}:latest offline"
    else:
        how = f"load it (minictl load -i FILE) or pull it (minictl pull {ref.familiar})"
    return f"image {ref.familiar} not found in {root}: {how}"


def _read_records(directory: Path, field: str) -> dict[str, dict]:
    """The JSON records in `directory`, keyed by one of their fields."""
    records = {}
    for path in directory.glob("*.json") if directory.is_dir() else []:
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            continue  # removed since listed
        records[record[field]] = record
    return records


def _write_json(path: Path, document: dict) -> None:
    """Write a record atomically: a temporary file in the same directory, fsync, rename over the old."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w") as out:
        json.dump(document, out, indent=2)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)


def _fsync_directory(directory: Path) -> None:
    """fsync(2) a directory, so that a rename into it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_chunks(source, size: int = _CHUNK) -> Iterator[bytes]:
    """The bytes of a binary file object, in chunks: what write_blob takes."""
    while chunk := source.read(size):
        yield chunk
