"""Pulling an image: a registry's manifest, config and layers into the content-addressed store.

The order is what makes a pull safe to interrupt at any point:

  1. resolve the reference to one platform's manifest (`registry`: tag -> index -> manifest, verified);
  2. write the manifest, the config and each layer the store lacks as blobs: each is streamed from the
     registry into a temporary file, verified (size and digest) as its last chunk arrives, and renamed
     to its content address only then;
  3. import the image: the store unpacks the layers and records the reference, last.

Until step 3 nothing names the image, so a pull that fails (a 401, a 404, a 500, a corrupted blob, a
wrong digest, ^C) leaves no image behind. The blobs verified so far stay: they are content-addressed,
so they cannot be wrong, and the next pull skips them, as docker's "Already exists". The store's flock
is held from the first blob written to the image recorded (`cat /proc/locks` shows it during a pull),
so a concurrent `image prune` cannot collect the blobs in between; two pulls into one store take turns.

Traps:
- The `Digest:` line names what the reference resolved to, the index for a multi-platform image: the
  digest to pin in `NAME@sha256:...`. The store records the image under its platform manifest's digest.
- The same blob may appear twice (two identical layers, or one image's layer in another): it is fetched
  once, the second time the store already has it.

Progress goes to stderr, one line per layer, like docker's. On a terminal the line is redrawn in place
(`\\r`, then ESC [ K to erase the rest of the line) as a bar:

    0123456789ab: Downloading [=============>                     ]  12.3MB/40.1MB

On a pipe or a file only each layer's start and end are written, so a log stays readable. Then the
store unpacks the layers it has not unpacked before, and reports each one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import closing
from typing import TextIO

from . import oci
from .reference import Reference
from .registry import RegistryClient, normalize_platform, platform_matches
from .registry_auth import Credentials, RegistryError
from .store import Image, ImageStore

BAR_WIDTH = 40
REDRAW_SECONDS = 0.1


def human_size(size: int) -> str:
    """Bytes in decimal units with 4 significant digits, as docker prints them: 950B, 12.35kB, 40.1MB."""
    units = ("B", "kB", "MB", "GB", "TB")
    power = 0
    while power < len(units) - 1 and size >= 1000 ** (power + 1):
        power += 1
    return f"{size}B" if power == 0 else f"{size / 1000 ** power:.4g}{units[power]}"


def short_id(descriptor: oci.Descriptor) -> str:
    """The first 12 hex digits of a digest, docker's layer id on screen."""
    return descriptor.digest.partition(":")[2][:12]


class PullProgress:
    """Docker-style pull progress on a text stream: a bar per layer on a terminal, plain lines otherwise."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()

    def say(self, text: str) -> None:
        self.stream.write(f"\r{text}\x1b[K\n" if self.tty else f"{text}\n")
        self.stream.flush()

    def _redraw(self, text: str) -> None:
        self.stream.write(f"\r{text}\x1b[K")
        self.stream.flush()

    def exists(self, layer: oci.Descriptor) -> None:
        self.say(f"{short_id(layer)}: Already exists")

    def download(self, layer: oci.Descriptor, chunks: Iterator[bytes]) -> Iterator[bytes]:
        """Pass `chunks` through, drawing the layer's progress; the line ends with the outcome."""
        name, total, done, drawn = short_id(layer), human_size(layer.size), 0, 0.0
        if not self.tty:
            self.say(f"{name}: Downloading {total}")
        outcome = "Download failed"
        try:
            for chunk in chunks:
                done += len(chunk)
                if self.tty and time.monotonic() - drawn >= REDRAW_SECONDS:
                    drawn = time.monotonic()
                    bar = ("=" * (BAR_WIDTH * done // max(layer.size, 1)) + ">").ljust(BAR_WIDTH + 1)
                    self._redraw(f"{name}: Downloading [{bar[:BAR_WIDTH + 1]}] {human_size(done):>8}/{total}")
                yield chunk
            outcome = "Download complete"
        finally:
            self.say(f"{name}: {outcome}")

    def step(self, what: str, done: int, total: int) -> None:
        """The store's progress callback (unpacking): redrawn on a terminal; otherwise each step's end."""
        if done >= total:
            self.say(what)
        elif self.tty:
            self._redraw(f"{what}: {human_size(done)}/{human_size(total)}")


def _fetch(client: RegistryClient, store: ImageStore, blob: oci.Descriptor,
           progress: PullProgress | None) -> None:
    """Stream one blob from the registry into the store, verified twice: by the client and by the store."""
    chunks = client.fetch_blob(blob)
    shown = progress.download(blob, chunks) if progress else chunks
    with closing(chunks), closing(shown):
        store.write_blob(shown, expected_digest=blob.digest, expected_size=blob.size)


def _check_platform(store: ImageStore, config: oci.Descriptor, wanted: oci.Platform,
                    reference: Reference) -> None:
    """A single-platform image asked for by --platform must be built for it (its config says)."""
    built = oci.parse_config(store.read_blob(config.digest, "config"), f"config of {reference}").platform
    if not platform_matches(wanted, built):
        raise RegistryError(f"{reference} is built for {normalize_platform(built)}, not {wanted}: "
                            "choose another --platform or image")


def pull(reference: Reference, store: ImageStore, platform: oci.Platform | None = None, *,
         credentials: Credentials | None = None, insecure: bool = False,
         progress: PullProgress | None = None) -> Image:
    """Pull `reference` for `platform` (default: the host's) into `store` and return the store's Image.

    Blobs the store has are not fetched again. The image is recorded last, so a failure records none.
    `progress` None is silent; PullProgress() writes docker's kind of output to stderr."""
    client = RegistryClient(reference, credentials, insecure)
    say = progress.say if progress else (lambda text: None)
    say(f"{reference.tag or reference.digest}: Pulling from {reference.familiar_name}")
    resolved = client.resolve(platform)
    manifest, fetched = resolved.manifest, 0
    with store.lock():  # held until the image is recorded: no prune can take the blobs in between
        if not store.has_blob(resolved.digest):
            store.write_blob([resolved.data], expected_digest=resolved.digest,
                             expected_size=len(resolved.data))
        if not store.has_blob(manifest.config.digest):
            _fetch(client, store, manifest.config, None)
        if platform:
            _check_platform(store, manifest.config, platform, reference)
        for layer in manifest.layers:
            if store.has_blob(layer.digest):
                if progress:
                    progress.exists(layer)
                continue
            _fetch(client, store, layer, progress)
            fetched += 1
        image = store.import_image(reference, resolved.digest, progress.step if progress else None)
    say(f"Digest: {resolved.index_digest or resolved.digest}")
    say(f"Status: {'Downloaded newer image' if fetched else 'Image is up to date'} for {reference.familiar}")
    return image
