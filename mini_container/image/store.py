"""The image store: images and their layers on disk.

Layout under the store's root (by default /var/lib/mini-container):

    layers/<id>/            one directory per layer, in overlay form (the rootfs stage stacks them)
    images/<name>/<tag>.json   an image: its layers, bottom first, and its configuration

A layer directory is short-named (`<id>` is 12 hex digits) on purpose: overlayfs takes its lower
directories in one mount option string, which the kernel caps at one page (4096 bytes), so long paths
would limit how many layers an image can have.

Writes are atomic: an image record is written to a temporary file and renamed into place, so a reader
never sees half a record.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ImageNotFoundError, InvalidArgumentError

_NAME = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass
class Image:
    """An image as the store holds it: a name, a tag, its layer directories (bottom first), a config."""

    name: str
    tag: str
    layers: list[Path]
    config: dict = field(default_factory=dict)

    @property
    def reference(self) -> str:
        return f"{self.name}:{self.tag}"


def parse_reference(reference: str) -> tuple[str, str]:
    """Split `name[:tag]` into (name, tag), with `latest` as the default tag."""
    name, _, tag = reference.partition(":")
    tag = tag or "latest"
    if not _NAME.match(name) or not _TAG.match(tag):
        raise InvalidArgumentError(f"invalid image reference {reference!r}: "
                                   "expected NAME[:TAG], e.g. busybox:latest")
    return name, tag


class ImageStore:
    """Images and layers under one root directory."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.layers_dir = self.root / "layers"
        self.images_dir = self.root / "images"

    def new_layer_dir(self) -> Path:
        """Create and return an empty directory for a new layer."""
        self.layers_dir.mkdir(parents=True, exist_ok=True)
        while True:
            path = self.layers_dir / os.urandom(6).hex()
            try:
                path.mkdir()
                return path
            except FileExistsError:
                continue

    def add(self, reference: str, layers: list[Path], config: dict) -> Image:
        """Record an image made of `layers` (bottom first) under `reference`, replacing an older one."""
        name, tag = parse_reference(reference)
        record = {"name": name, "tag": tag, "layers": [p.name for p in layers], "config": config}
        path = self.images_dir / name / f"{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, path)
        return self.get(reference)

    def get(self, reference: str) -> Image:
        """The image for `reference`; ImageNotFoundError says how to get it if the store lacks it."""
        name, tag = parse_reference(reference)
        path = self.images_dir / name / f"{tag}.json"
        try:
            record = json.loads(path.read_text())
        except FileNotFoundError:
            hint = f"run 'minictl bootstrap {name}'" if name in ("busybox",) else "load or pull it first"
            raise ImageNotFoundError(f"image {name}:{tag} not found in {self.root}: {hint}") from None
        layers = [self.layers_dir / layer for layer in record["layers"]]
        return Image(record["name"], record["tag"], layers, record.get("config", {}))

    def list(self) -> list[Image]:
        """Every image in the store, sorted by reference."""
        if not self.images_dir.is_dir():
            return []
        found = []
        for path in sorted(self.images_dir.rglob("*.json")):
            name = str(path.parent.relative_to(self.images_dir))
            found.append(self.get(f"{name}:{path.stem}"))
        return found

    def remove(self, reference: str) -> None:
        """Forget an image and delete its layers that no other image uses."""
        image = self.get(reference)
        (self.images_dir / image.name / f"{image.tag}.json").unlink()
        in_use = {layer for other in self.list() for layer in other.layers}
        for layer in image.layers:
            if layer not in in_use:
                shutil.rmtree(layer, ignore_errors=True)
