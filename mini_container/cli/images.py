"""Image commands: bootstrap, images."""

from __future__ import annotations

from ..image.bootstrap import bootstrap_busybox
from ..image.store import ImageStore

BOOTSTRAPS = {"busybox": bootstrap_busybox}


def register(commands) -> None:
    """Add the image commands to minictl's subcommands."""
    bootstrap = commands.add_parser("bootstrap", help="build a default image offline from host packages")
    bootstrap.add_argument("image", choices=sorted(BOOTSTRAPS))
    bootstrap.set_defaults(handler=_bootstrap)

    images = commands.add_parser("images", help="list images")
    images.set_defaults(handler=_images)


def _bootstrap(args) -> None:
    image = BOOTSTRAPS[args.image](ImageStore(args.root))
    print(f"built {image.reference}: {len(image.layers)} layer(s) in {args.root}")


def _images(args) -> None:
    print(f"{'IMAGE':<30} {'LAYERS':>6}  COMMAND")
    for image in ImageStore(args.root).list():
        print(f"{image.reference:<30} {len(image.layers):>6}  {' '.join(image.config.get('Cmd') or [])}")
