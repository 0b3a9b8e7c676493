"""Container commands: run, ps, rm, ns."""

from __future__ import annotations

import argparse
import os
import sys
import time

from .. import namespaces
from ..errors import ContainerError
from ..image.store import ImageStore
from ..runtime.containers import ContainerStore
from ..runtime.run import run


def register(commands) -> None:
    """Add the container commands to minictl's subcommands."""
    runner = commands.add_parser("run", help="run a command in a new container")
    runner.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    runner.add_argument("-t", "--tty", action="store_true", help="give the container a terminal")
    runner.add_argument("--rm", action="store_true", help="remove the container when it exits")
    runner.add_argument("--name", default="", help="a name for the container")
    runner.add_argument("--hostname", default="", help="the container's host name (default: its short id)")
    runner.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                        help="set an environment variable")
    runner.add_argument("image")
    runner.add_argument("command", nargs=argparse.REMAINDER, help="the command (default: the image's)")
    runner.set_defaults(handler=_run)

    ps = commands.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also the ones that exited")
    ps.set_defaults(handler=_ps)

    rm = commands.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.add_argument("containers", nargs="+", metavar="NAME")
    rm.set_defaults(handler=_rm)

    ns = commands.add_parser("ns", help="show a process's namespaces next to the host's")
    ns.add_argument("target", metavar="PID|NAME", help="a process id, or a running container's name or id")
    ns.add_argument("kinds", nargs="*", metavar="KIND", help="pid, net, mnt, uts, ipc, user, cgroup, time")
    ns.set_defaults(handler=_ns)


def _run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    image = ImageStore(args.root).get(args.image)
    containers = ContainerStore(args.root)
    spec = containers.create(image, command, name=args.name, env=args.env, hostname=args.hostname,
                             tty=args.tty, interactive=args.interactive)
    return run(containers, spec, remove=args.rm)


def _ps(args) -> None:
    print(f"{'CONTAINER ID':<13} {'IMAGE':<20} {'COMMAND':<24} {'CREATED':<16} {'STATUS':<16} NAME")
    for record in ContainerStore(args.root).list():
        if record["status"] != "running" and not args.all:
            continue
        status = record["status"]
        if status == "exited" and record["exit_code"] is not None:
            status = f"exited ({record['exit_code']})"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(record["created"]))
        command = " ".join(record["command"])[:24]
        print(f"{record['id'][:12]:<13} {record['image']:<20} {command:<24} {created:<16} {status:<16} "
              f"{record['name']}")


def _rm(args) -> int:
    failed = 0
    for name in args.containers:
        try:
            ContainerStore(args.root).remove(name, force=args.force)
            print(name)
        except ContainerError as e:
            print(f"minictl: {e}", file=sys.stderr)
            failed = 1
    return failed


def _ns(args) -> None:
    kinds = namespaces.parse_kinds(args.kinds or namespaces.KINDS)
    pid = int(args.target) if args.target.isdigit() else ContainerStore(args.root).get(args.target)["pid"]
    if not pid or not os.path.exists(f"/proc/{pid}"):
        raise ContainerError(f"no running process for {args.target}")
    compared = namespaces.compare_with_host(pid)
    print(f"{'KIND':<8} {'INODE':>12} {'HOST':>12}  ISOLATED")
    for kind in kinds:
        c = compared[kind]
        print(f"{kind:<8} {c.inode:>12} {c.host_inode:>12}  {'no' if c.shared else 'yes'}")
