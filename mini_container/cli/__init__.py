"""minictl: a docker-like command line over the engine.

    minictl bootstrap busybox                 build the default image offline
    minictl images                            list images
    minictl run [-it|-d] [--rm] [limits] IMAGE [CMD...]   run a container
    minictl ps [-a]                           list containers
    minictl stop|kill|rm NAME...              stop, signal or remove containers
    minictl logs [-f] NAME                    what a detached container wrote
    minictl stats [--no-stream]               live usage, like docker stats
    minictl ns PID|NAME [KIND...]             namespaces of a process or container next to the host's
    minictl gc                                remove what crashed runs left (cgroups, records, networks)

Each module of this package adds its own subcommands (`images`: image commands, `containers`:
container commands). A mistake a user can make ends with one line on stderr and a non-zero exit code,
never a traceback. The engine's data lives under --root (or $MINI_CONTAINER_ROOT), by default
/var/lib/mini-container.
"""

from __future__ import annotations

import argparse
import os
import sys

from ..errors import ContainerError, NotRootError
from ..locations import engine_root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if os.geteuid() != 0:
            raise NotRootError("minictl needs root (try: sudo minictl ...); "
                               "rootless containers are not supported yet")
        return args.handler(args) or 0
    except ContainerError as e:
        print(f"minictl: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    """The whole command line: global options, then each module's subcommands.

    The modules are imported here, not with the package: `mini-runc` (cli/runc.py) is a module of this
    package too, and needs none of them.
    """
    from . import containers, images, maintenance, registry

    top = argparse.ArgumentParser(prog="minictl", description="A container engine built to be watched.")
    top.add_argument("--root", default=str(engine_root()),
                     help="where images and containers are kept (default: %(default)s)")
    commands = top.add_subparsers(required=True, metavar="COMMAND")
    images.register(commands)
    containers.register(commands)
    registry.register(commands)
    maintenance.register(commands)
    return top
