"""Image commands, in docker's words and output formats where docker has them.

    minictl bootstrap busybox|debian [--mirror URL]   build a default image offline (debian: from a mirror)
    minictl images [-q]                  REPOSITORY TAG IMAGE ID CREATED SIZE   (also: image ls)
    minictl image inspect IMAGE...       JSON: Id, RepoTags, RepoDigests, Config, RootFS, History, Size,
                                         and each layer's ChainID, blob, size and directory
    minictl rmi [-f] IMAGE...            remove names; an image with no name left is deleted (also: image rm)
    minictl image prune                  delete untagged images, and layers and blobs no image uses
    minictl load [-i FILE]               images from a docker-save tar or an OCI layout (a directory or a
                                         tar; gzip or zstd); stdin by default (also: image load)
    minictl save [-o FILE] IMAGE...      a tar that docker load and skopeo read; stdout by default
                                         (also: image save)

Long steps (a debootstrap, an unpack) show their progress on stderr, only when stderr is a terminal.
The handlers of bootstrap, load and save import their modules themselves: every minictl command
builds this parser, and `minictl run` should not pay for tarfile, compression and debootstrap's code.
"""

from __future__ import annotations

import calendar
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from ..errors import ContainerError, InvalidArgumentError
from ..image.store import Image, ImageStore, Progress
from ..runtime.containers import ContainerStore
from .table import print_table

_UNITS = ("B", "kB", "MB", "GB", "TB")


def register(commands) -> None:
    """Add the image commands to minictl's subcommands."""
    bootstrap = commands.add_parser("bootstrap", help="build a default image offline from host packages")
    bootstrap.add_argument("image", choices=("busybox", "debian"))
    bootstrap.add_argument("--mirror", help="debian: the mirror (default: the one the host's apt uses)")
    bootstrap.set_defaults(handler=_bootstrap)

    image = commands.add_parser("image", help="manage images (ls, inspect, rm, prune)")
    image_commands = image.add_subparsers(required=True, metavar="COMMAND")
    for parser in (commands.add_parser("images", help="list images"),
                   image_commands.add_parser("ls", help="list images")):
        parser.add_argument("-q", "--quiet", action="store_true", help="only the image ids")
        parser.set_defaults(handler=_images)
    inspect = image_commands.add_parser("inspect", help="an image's config, history, layers and sizes (JSON)")
    inspect.add_argument("images", nargs="+", metavar="IMAGE")
    inspect.set_defaults(handler=_inspect)
    for parser in (commands.add_parser("rmi", help="remove images"),
                   image_commands.add_parser("rm", help="remove images")):
        parser.add_argument("-f", "--force", action="store_true",
                            help="remove every name of an image given by id, and images of exited containers")
        parser.add_argument("images", nargs="+", metavar="IMAGE")
        parser.set_defaults(handler=_rmi)
    prune = image_commands.add_parser("prune", help="delete untagged images, unused layers and blobs")
    prune.set_defaults(handler=_prune)
    load_help, save_help = "load images from a docker-save tar or an OCI layout", "save images to a tar"
    for parser in (commands.add_parser("load", help=load_help),
                   image_commands.add_parser("load", help=load_help)):
        parser.add_argument("-i", "--input", default="-",
                            help="a docker-save tar, an OCI layout directory or a tar of one, possibly "
                                 "gzip- or zstd-compressed (default: stdin)")
        parser.set_defaults(handler=_load)
    for parser in (commands.add_parser("save", help=save_help),
                   image_commands.add_parser("save", help=save_help)):
        parser.add_argument("-o", "--output", help="the tar file to write (default: stdout)")
        parser.add_argument("images", nargs="+", metavar="IMAGE")
        parser.set_defaults(handler=_save)


@contextmanager
def terminal_progress() -> Iterator[Progress | None]:
    """A Progress that redraws one status line on stderr, or None when stderr is not a terminal."""
    if not sys.stderr.isatty():
        yield None
        return
    last = [0.0, ""]

    def show(what: str, done: int, total: int) -> None:
        finished = total > 0 and done >= total
        if not finished and what == last[1] and time.monotonic() - last[0] < 0.1:
            return
        if total:
            text = f"{what}: {human_size(done)} of {human_size(total)} ({100 * done // total}%)"
        else:
            text = f"{what}: {human_size(done)}" if done else what
        sys.stderr.write(f"\r\x1b[2K{text[:150]}" + ("\n" if finished else ""))
        sys.stderr.flush()
        last[:] = [time.monotonic(), "" if finished else what]

    try:
        yield show
    finally:
        if last[1]:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def human_size(size: int) -> str:
    """Docker's sizes: decimal units, about 3 significant digits ('2.1MB', '124MB', '0B')."""
    value, unit = float(size), 0
    while value >= 1000 and unit < len(_UNITS) - 1:
        value, unit = value / 1000, unit + 1
    return f"{value:.3g}{_UNITS[unit]}"


def human_age(created: str, now: float | None = None) -> str:
    """Docker's CREATED column: '3 minutes ago', 'About an hour ago', '2 years ago'."""
    try:
        then = calendar.timegm(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return "N/A"
    seconds = max(0, int((now or time.time()) - then))
    if seconds < 1:
        return "Less than a second ago"
    steps = ((120, 1, "second"), (7200, 60, "minute"), (172800, 3600, "hour"), (1209600, 86400, "day"),
             (5184000, 604800, "week"), (63072000, 2592000, "month"), (None, 31536000, "year"))
    _, size, unit = next(step for step in steps if step[0] is None or seconds < step[0])
    count = seconds // size
    return f"{count} {unit}{'s' if count != 1 else ''} ago"


def _bootstrap(args) -> None:
    from ..image.bootstrap import bootstrap_busybox, bootstrap_debian

    store = ImageStore(args.root)
    with terminal_progress() as progress:
        if args.image == "busybox":
            image = bootstrap_busybox(store, progress=progress)
        else:
            image = bootstrap_debian(store, mirror=args.mirror, progress=progress)
    print(f"{image.reference}: {len(image.layers)} layers, {human_size(image.size)}, id {image.id[7:19]}")


def _images(args) -> None:
    images = ImageStore(args.root).list()
    if args.quiet:
        for image_id in dict.fromkeys(image.id[7:19] for image in images):
            print(image_id)
        return
    print_table(["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
                [[image.name or "<none>", image.tag or "<none>", image.id[7:19], human_age(image.created),
                  human_size(image.size)] for image in images])


def inspect_image(image: Image) -> dict:
    """What `docker image inspect` shows, plus the manifest and each layer's ChainID, blob and directory."""
    raw = image.image_config
    layers = [{"ChainID": layer.chain_id, "DiffID": layer.diff_id, "Digest": blob.digest,
               "MediaType": blob.media_type, "BlobSize": blob.size, "Size": layer.size,
               "Directory": str(layer.directory)}
              for layer, blob in zip(image.chain, image.manifest.layers, strict=True)]
    return {"Id": image.id, "RepoTags": image.repo_tags, "RepoDigests": image.repo_digests,
            "Created": image.created, "Author": raw.get("author", ""),
            "Architecture": raw.get("architecture", ""),
            "Os": raw.get("os", ""), "Config": image.config, "RootFS": raw.get("rootfs", {}),
            "History": raw.get("history", []), "Size": image.size,
            "Manifest": {"Digest": image.digest, "MediaType": image.manifest.media_type},
            "Layers": layers,
            "GraphDriver": {"Name": "overlay",
                            "Data": {"LowerDir": ":".join(str(path) for path in reversed(image.layers))}}}


def _inspect(args) -> int:
    store, found, failed = ImageStore(args.root), [], 0
    for name in args.images:
        try:
            found.append(inspect_image(store.get(name)))
        except ContainerError as e:
            print(f"minictl: {e}", file=sys.stderr)
            failed = 1
    print(json.dumps(found, indent=4))
    return failed


def _users(store: ImageStore, containers: ContainerStore, digest: str) -> list[dict]:
    """The container records whose image is the image `digest`."""
    users = []
    for record in containers.list():
        try:
            if store.resolve(record.get("image_id") or record["image"]) == digest:
                users.append(record)
        except ContainerError:
            continue  # its image is gone already
    return users


def _rmi(args) -> int:
    store, containers, failed = ImageStore(args.root), ContainerStore(args.root), 0
    for name in args.images:
        try:
            users = _users(store, containers, store.resolve(name))
            running = [u for u in users if u["status"] == "running"]
            if running or (users and not args.force):
                user = (running or users)[0]
                state = "running " if running else ""
                raise ContainerError(f"image {name} is used by {state}container {user['name']} "
                                     f"({user['id'][:12]}): remove the container first (minictl rm -f "
                                     f"{user['name']})" + ("" if running else ", or use rmi -f"))
            for line in store.remove(name, force=args.force):
                print(line)
        except ContainerError as e:
            print(f"minictl: {e}", file=sys.stderr)
            failed = 1
    return failed


def _prune(args) -> None:
    store = ImageStore(args.root)
    keep = set()
    for record in ContainerStore(args.root).list():
        try:
            keep.add(store.resolve(record.get("image_id") or record["image"]))
        except ContainerError:
            continue  # its image is gone already
    pruned = store.prune(keep)
    if pruned.images:
        print("Deleted Images:")
        print("".join(f"deleted: {digest}\n" for digest in pruned.images))
    if pruned.layers:
        print("Deleted Layers:")
        print("".join(f"deleted: {layer}\n" for layer in pruned.layers))
    print(f"Total reclaimed space: {human_size(pruned.reclaimed)}")


def _load(args) -> None:
    if args.input == "-" and sys.stdin.isatty():
        raise InvalidArgumentError("minictl load reads an archive from stdin, and stdin is a terminal: "
                                   "give -i FILE, or pipe one in (minictl load < busybox.tar)")
    from ..image import archive

    with terminal_progress() as progress:
        loaded = archive.load(ImageStore(args.root), args.input, progress)
    for image in loaded:
        for name in image.names or [image.id]:
            print(f"Loaded image: {name}" if image.names else f"Loaded image ID: {name}")


def _save(args) -> None:
    if args.output is None and sys.stdout.isatty():
        raise InvalidArgumentError("minictl save writes a tar, and stdout is a terminal: "
                                   "give -o FILE, or redirect it (minictl save busybox > busybox.tar)")
    from ..image import archive

    with terminal_progress() as progress:
        archive.save(ImageStore(args.root), args.images, args.output or sys.stdout.buffer, progress)
