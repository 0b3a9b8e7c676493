"""Maintenance commands: gc (what crashed runs left) and network prune."""

from __future__ import annotations

from pathlib import Path

from ..runtime import gc
from ..runtime.lifecycle import DEFAULT_ROOT as RUNTIME_ROOT


def register(commands) -> None:
    """Add the maintenance commands to minictl's subcommands."""
    collect = commands.add_parser("gc", help="remove what crashed runs left: cgroups, records, networks")
    collect.add_argument("--runtime-root", default=str(RUNTIME_ROOT),
                         help="mini-runc's state directory (default: %(default)s)")
    collect.set_defaults(handler=_gc)

    network = commands.add_parser("network", help="the bridge network")
    actions = network.add_subparsers(required=True, metavar="ACTION")
    prune = actions.add_parser("prune", help="remove the bridge, rules and leases that no container uses")
    prune.set_defaults(handler=_network_prune)


def _gc(args) -> None:
    removed = gc.collect(args.root, args.runtime_root) + _prune_network(args.root)
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print("nothing to remove")


def _network_prune(args) -> None:
    for line in _prune_network(args.root):
        print(f"removed {line}")


def _prune_network(root: str) -> list[str]:
    state = Path(root) / "network"
    if not state.is_dir():
        return []
    from .. import network  # only where there is network state

    return network.prune(state)
