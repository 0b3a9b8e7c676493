"""The OCI image format: what the JSON documents of an image say, checked before anything is unpacked.

An image is a small graph of content-addressed JSON documents and blobs, each named by the sha256 of
its bytes (its *digest*) and pointed at by a *descriptor* `{mediaType, digest, size}`:

    index (optional)   one manifest per platform: linux/amd64, linux/arm64/v8, ...
      manifest         the config's descriptor, and one descriptor per layer blob, bottom layer first
        config         the runtime defaults (Env, Cmd, Entrypoint, WorkingDir, User), the history, and
                       rootfs.diff_ids: the sha256 of each layer's *uncompressed* tar
        layers         tar archives, gzip- or zstd-compressed or not, each holding what it changes

Two dialects name the same structure: the OCI image spec (`application/vnd.oci.image.*`) and Docker's
"schema 2" (`application/vnd.docker.distribution.manifest.v2+json` and friends), which OCI grew out of.
Both are accepted; Docker's older "schema 1" (signed JWS manifests, no config blob) is not.

Where the media type is *required* (a manifest's own type, its config's, each layer's), an unknown one
means the document is not a runnable image (a Helm chart, a signature, an SBOM artifact, a Windows
layer): it is refused here, by name, before a byte is unpacked.

The ChainID. A layer's DiffID names its content alone; the directory it is unpacked into also depends on
every layer below it (its whiteouts delete *their* files). The ChainID names the stack:

    ChainID(L0) = DiffID(L0)
    ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln))

Two images whose bottom layers are the same share those layers' ChainIDs, and so their unpacked
directories. Docker's /var/lib/docker/image/overlay2/layerdb/sha256/ is keyed by it; so is this store.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field

from ..errors import ContainerError

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1 = ("application/vnd.docker.distribution.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v1+prettyjws")

INDEX_TYPES = (OCI_INDEX, DOCKER_MANIFEST_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
LAYER_TYPES = (OCI_LAYER, OCI_LAYER_GZIP, OCI_LAYER_ZSTD, DOCKER_LAYER, DOCKER_FOREIGN_LAYER,
               "application/vnd.oci.image.layer.nondistributable.v1.tar",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
               "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")

_SHA256 = re.compile(r"^sha256:[0-9a-f]{64}$")
# `uname -m` -> the GOARCH names that image configs and indexes use (and Debian, mostly, too)
_ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386",
                  "i386": "386", "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64"}


def short_digest(digest: str) -> str:
    """`sha256:` and the first 12 hex digits, as docker shortens ids."""
    algorithm, _, hexa = digest.partition(":")
    return f"{algorithm}:{hexa[:12]}…" if len(hexa) > 12 else digest


class InvalidImageError(ContainerError):
    """An image document that is malformed, of an unknown type, or inconsistent with another one."""


class DigestMismatchError(InvalidImageError):
    """Bytes whose sha256 (or length) is not the one they were announced with."""


def sha256_digest(data: bytes) -> str:
    """'sha256:' and the hex sha256 of `data`: the name of `data` in a content-addressed store."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: object, where: str) -> str:
    """`digest` if it is 'sha256:' and 64 lower-case hex digits; InvalidImageError otherwise."""
    if not isinstance(digest, str) or not _SHA256.match(digest):
        algorithm = digest.partition(":")[0] if isinstance(digest, str) else ""
        why = (f"algorithm {algorithm!r} is not supported (only sha256)" if algorithm not in ("", "sha256")
               else "expected 'sha256:' and 64 lower-case hex digits")
        raise InvalidImageError(f"{where}: invalid digest {digest!r}: {why}")
    return digest


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The ChainID of each layer of a stack (bottom first), from the layers' DiffIDs."""
    chains: list[str] = []
    for diff_id in diff_ids:
        chains.append(sha256_digest(f"{chains[-1]} {diff_id}".encode()) if chains else diff_id)
    return chains


def host_architecture() -> str:
    """This machine's architecture in an image config's terms: 'amd64', 'arm64', ..."""
    machine = os.uname().machine
    return _ARCHITECTURES.get(machine, machine)


@dataclass(frozen=True)
class Platform:
    """What an index entry (or a config) says a manifest runs on."""

    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(filter(None, (self.os, self.architecture, self.variant)))


@dataclass(frozen=True)
class Descriptor:
    """A pointer to a blob: what it is (media type), its sha256 digest, and its length in bytes."""

    media_type: str
    digest: str
    size: int
    platform: Platform | None = None
    annotations: dict = field(default_factory=dict, compare=False)

    def to_json(self) -> dict:
        """The descriptor as an OCI document holds it."""
        out: dict = {"mediaType": self.media_type, "digest": self.digest, "size": self.size}
        if self.platform is not None:
            out["platform"] = {"os": self.platform.os, "architecture": self.platform.architecture}
            if self.platform.variant:
                out["platform"]["variant"] = self.platform.variant
        if self.annotations:
            out["annotations"] = self.annotations
        return out


@dataclass(frozen=True)
class Manifest:
    """An image manifest (OCI or Docker schema 2): the config's descriptor and the layers', bottom first."""

    media_type: str
    config: Descriptor
    layers: list[Descriptor]


@dataclass(frozen=True)
class Index:
    """An image index (OCI) or manifest list (Docker): one manifest descriptor per platform."""

    media_type: str
    manifests: list[Descriptor]


@dataclass(frozen=True)
class ImageConfig:
    """An image's config document; `raw` is the whole JSON object, as `docker image inspect` shows it."""

    raw: dict

    @property
    def diff_ids(self) -> list[str]:
        return list(self.raw["rootfs"]["diff_ids"])

    @property
    def platform(self) -> Platform:
        return Platform(self.raw.get("os", ""), self.raw.get("architecture", ""), self.raw.get("variant", ""))


def _load_object(data: bytes, where: str) -> dict:
    try:
        document = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidImageError(f"{where} is not valid JSON ({error})") from None
    if not isinstance(document, dict):
        raise InvalidImageError(f"{where} is not a JSON object")
    return document


def parse_descriptor(value: object, where: str) -> Descriptor:
    """Check one descriptor object: a string media type, a sha256 digest, a non-negative integer size."""
    if not isinstance(value, dict):
        raise InvalidImageError(f"{where} is not a descriptor object")
    media_type, size = value.get("mediaType"), value.get("size")
    if not isinstance(media_type, str) or not media_type:
        raise InvalidImageError(f"{where} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidImageError(f"{where} has no valid size ({size!r})")
    platform = value.get("platform")
    if platform is not None:
        if not isinstance(platform, dict):
            raise InvalidImageError(f"{where} has a platform that is not an object")
        platform = Platform(str(platform.get("os", "")), str(platform.get("architecture", "")),
                            str(platform.get("variant", "")))
    annotations = value.get("annotations")
    return Descriptor(media_type, check_digest(value.get("digest"), where), size, platform,
                      annotations if isinstance(annotations, dict) else {})


def document_type(document: dict) -> str:
    """The media type of a manifest or index, read from mediaType or, where OCI leaves that field
    out, guessed from the shape: `manifests` makes an index, `config` and `layers` a manifest."""
    media_type = document.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return media_type
    if "manifests" in document:
        return OCI_INDEX
    if "config" in document and "layers" in document:
        return OCI_MANIFEST
    return ""


def parse_manifest(data: bytes, where: str = "manifest") -> Manifest:
    """Check an image manifest and return its descriptors; InvalidImageError names what is wrong."""
    document = _load_object(data, where)
    media_type = document_type(document)
    if media_type in DOCKER_SCHEMA1:
        raise InvalidImageError(f"{where} is a Docker schema 1 manifest ({media_type}), which is deprecated "
                                "and not supported: push or save the image again with a current docker")
    if media_type in INDEX_TYPES:
        platforms = ", ".join(str(d.platform) for d in parse_index(data, where).manifests if d.platform)
        raise InvalidImageError(f"{where} is an image index ({platforms or 'no platforms named'}), not an "
                                "image manifest: pick the manifest of one platform")
    if media_type not in MANIFEST_TYPES:
        raise InvalidImageError(f"{where} has unknown media type {media_type or '(none)'!r}: expected "
                                f"{OCI_MANIFEST} or {DOCKER_MANIFEST}")
    if document.get("schemaVersion") != 2:
        raise InvalidImageError(f"{where} has schemaVersion {document.get('schemaVersion')!r}, expected 2")
    config = parse_descriptor(document.get("config"), f"{where} config")
    if config.media_type not in CONFIG_TYPES:
        raise InvalidImageError(f"{where} has a config of unknown media type {config.media_type!r} "
                                f"(not a container image; expected {OCI_CONFIG} or {DOCKER_CONFIG})")
    raw_layers = document.get("layers")
    if not isinstance(raw_layers, list):
        raise InvalidImageError(f"{where} has no list of layers")
    layers = [parse_descriptor(layer, f"{where} layer {n}") for n, layer in enumerate(raw_layers, 1)]
    for number, layer in enumerate(layers, 1):
        if layer.media_type not in LAYER_TYPES:
            raise InvalidImageError(f"{where} layer {number} has unknown media type {layer.media_type!r} "
                                    f"(expected a tar layer, e.g. {OCI_LAYER_GZIP})")
    return Manifest(media_type, config, layers)


def parse_index(data: bytes, where: str = "index") -> Index:
    """Check an image index or Docker manifest list and return its manifests' descriptors."""
    document = _load_object(data, where)
    media_type = document_type(document)
    if media_type not in INDEX_TYPES:
        raise InvalidImageError(f"{where} has media type {media_type or '(none)'!r}, not an image index")
    manifests = document.get("manifests")
    if not isinstance(manifests, list):
        raise InvalidImageError(f"{where} has no list of manifests")
    return Index(media_type, [parse_descriptor(m, f"{where} entry {n}") for n, m in enumerate(manifests, 1)])


def parse_config(data: bytes, where: str = "config") -> ImageConfig:
    """Check an image config: a Linux image with rootfs.type 'layers' and a list of sha256 diff_ids."""
    raw = _load_object(data, where)
    rootfs = raw.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers" or not isinstance(
            rootfs.get("diff_ids"), list):
        raise InvalidImageError(f"{where} has no rootfs of type 'layers' with a list of diff_ids")
    for number, diff_id in enumerate(rootfs["diff_ids"], 1):
        check_digest(diff_id, f"{where} diff_id {number}")
    if raw.get("os", "linux") != "linux":
        raise InvalidImageError(f"{where} is for os {raw['os']!r}: this engine runs Linux images only")
    if not isinstance(raw.get("config") or {}, dict) or not isinstance(raw.get("history") or [], list):
        raise InvalidImageError(f"{where} has a 'config' that is not an object or a 'history' not a list")
    return ImageConfig(raw)
