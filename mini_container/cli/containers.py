"""Container commands: run, ps, stop, kill, rm, logs, stats, ns."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from .. import namespaces, rootfs
from ..errors import ContainerError, InvalidArgumentError
from ..image.store import ImageStore
from ..runtime.containers import ContainerStore
from ..runtime.run import run
from ..runtime.spec import Mount, set_network
from . import flags, stats
from .table import print_table


def register(commands) -> None:
    """Add the container commands to minictl's subcommands."""
    runner = commands.add_parser("run", help="run a command in a new container")
    runner.add_argument("-d", "--detach", action="store_true", help="run in the background, print the id")
    runner.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    runner.add_argument("-t", "--tty", action="store_true", help="give the container a terminal")
    runner.add_argument("--rm", action="store_true", help="remove the container when it exits")
    runner.add_argument("--name", default="", help="a name for the container")
    runner.add_argument("--hostname", default="", help="the container's host name (default: its short id)")
    runner.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                        help="set an environment variable")
    runner.add_argument("-v", "--volume", action="append", default=[], metavar="HOST:CTR[:ro]",
                        help="bind-mount an absolute host path into the container (read-only with :ro)")
    runner.add_argument("--tmpfs", action="append", default=[], metavar="CTR[:OPTIONS]",
                        help="mount a tmpfs in the container, e.g. /tmp:size=64m,mode=1777")
    runner.add_argument("--read-only", action="store_true", help="mount the container's root read-only")
    runner.add_argument("--network", default="bridge", metavar="MODE",
                        help="bridge (default), none, host, or container:NAME")
    runner.add_argument("-p", "--publish", action="append", default=[], metavar="[IP:]HOST:CTR[/PROTO]",
                        help="publish a container's port on the host (bridge network)")
    flags.add_limit_flags(runner)
    runner.add_argument("image")
    runner.add_argument("command", nargs=argparse.REMAINDER, help="the command (default: the image's)")
    runner.set_defaults(handler=_run)

    ps = commands.add_parser("ps", help="list containers")
    ps.add_argument("-a", "--all", action="store_true", help="also the ones that exited")
    ps.add_argument("-q", "--quiet", action="store_true", help="only the ids")
    ps.set_defaults(handler=_ps)

    stop = commands.add_parser("stop", help="stop containers: SIGTERM, then SIGKILL after a timeout")
    stop.add_argument("-t", "--time", type=float, default=10, help="seconds to wait before SIGKILL")
    stop.add_argument("containers", nargs="+", metavar="NAME")
    stop.set_defaults(handler=_stop)

    kill = commands.add_parser("kill", help="send a signal to containers' pid 1")
    kill.add_argument("-s", "--signal", default="KILL", help="a signal name or number (default KILL)")
    kill.add_argument("containers", nargs="+", metavar="NAME")
    kill.set_defaults(handler=_kill)

    logs = commands.add_parser("logs", help="what a detached container wrote")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing until the container exits")
    logs.add_argument("container", metavar="NAME")
    logs.set_defaults(handler=_logs)

    stats = commands.add_parser("stats", help="live CPU, memory, network, block I/O and pids use")
    stats.add_argument("--no-stream", action="store_true", help="print one reading and exit")
    stats.add_argument("--format", choices=["table", "json"], default="table")
    stats.add_argument("containers", nargs="*", metavar="NAME", help="(default: every running one)")
    stats.set_defaults(handler=_stats)

    rm = commands.add_parser("rm", help="remove containers")
    rm.add_argument("-f", "--force", action="store_true", help="kill a running container first")
    rm.add_argument("containers", nargs="+", metavar="NAME")
    rm.set_defaults(handler=_rm)

    ns = commands.add_parser("ns", help="show a process's namespaces next to the host's")
    ns.add_argument("target", metavar="PID|NAME", help="a process id, or a running container's name or id")
    ns.add_argument("kinds", nargs="*", metavar="KIND", help="pid, net, mnt, uts, ipc, user, cgroup, time")
    ns.set_defaults(handler=_ns)

    execute = commands.add_parser("exec", help="run a command in a running container")
    execute.add_argument("-i", "--interactive", action="store_true", help="keep stdin attached")
    execute.add_argument("-t", "--tty", action="store_true", help="give the command a terminal")
    execute.add_argument("-e", "--env", action="append", default=[], metavar="KEY[=VALUE]",
                         help="set an environment variable (on top of the container's)")
    execute.add_argument("-u", "--user", metavar="USER[:GROUP]",
                         help="names or ids, looked up in the container's /etc/passwd and /etc/group")
    execute.add_argument("-w", "--workdir", help="the working directory inside the container (absolute)")
    execute.add_argument("container", metavar="NAME")
    execute.add_argument("command", nargs=argparse.REMAINDER, help="the command and its arguments")
    execute.set_defaults(handler=_exec)


def _run(args) -> int:
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    limits = flags.limits_from_flags(args)  # bad flags are refused before anything is created
    mounts = mounts_from_flags(args.volume, args.tmpfs)
    mode, joined = _network_flags(args)
    image = ImageStore(args.root).get(args.image)
    containers = ContainerStore(args.root)
    spec = containers.create(image, command, name=args.name, env=args.env, hostname=args.hostname,
                             tty=args.tty, interactive=args.interactive, limits=limits, mounts=mounts,
                             readonly_rootfs=args.read_only)
    set_network(spec, mode, args.publish, Path(args.root) / "network",
                joined_directory=containers.dir / joined["id"] if joined else None,
                joined_pid=joined["pid"] if joined else None)
    try:
        code = run(containers, spec, remove=args.rm, detach=args.detach)
    except ContainerError:
        with contextlib.suppress(ContainerError):  # it never ran: leave nothing behind
            containers.remove(spec.id, force=True)
        raise
    if args.detach:
        print(spec.id)
    return code


def _network_flags(args) -> tuple[str, dict | None]:
    """--network and -p, checked before anything is made: the mode, and the record of a joined container."""
    kind, _, target = args.network.partition(":")
    if kind not in ("bridge", "none", "host", "container") or bool(target) != (kind == "container"):
        raise InvalidArgumentError(f"unknown network mode {args.network!r}: use bridge, none, host or "
                                   "container:NAME")
    if args.publish:
        if kind != "bridge":
            raise InvalidArgumentError(f"cannot publish ports with --network {args.network}: published ports "
                                       "go through the bridge")
        from ..network import parse_publish  # the network stage: only when ports are published

        for text in args.publish:
            parse_publish(text)
    joined = None
    if kind == "container":
        joined = ContainerStore(args.root).get(target)
        if joined["status"] != "running":
            raise ContainerError(f"cannot join the network of container {target}: it is not running")
    return kind, joined


def mounts_from_flags(volumes: list[str], tmpfs: list[str]) -> list[Mount]:
    """`-v` and `--tmpfs` as OCI mounts, parents before what is mounted inside them (as docker sorts)."""
    mounts = [parse_volume(text) for text in volumes] + [parse_tmpfs(text) for text in tmpfs]
    seen = set()
    for mount in mounts:
        if mount.destination in seen:
            raise InvalidArgumentError(f"duplicate mount point {mount.destination}: mount one thing there")
        seen.add(mount.destination)
    return sorted(mounts, key=lambda mount: mount.destination.count("/"))


def parse_volume(text: str) -> Mount:
    """`-v HOST:CTR[:OPTIONS]` -> a recursive bind (rbind, rprivate by default, like docker's).

    OPTIONS: `ro` or `rw`, and a propagation (`rslave`, `rshared`, ...), comma-separated.
    """
    host, _, rest = text.partition(":")
    destination, _, options = rest.partition(":")
    words = [word for word in options.split(",") if word]
    if not os.path.isabs(host):
        raise InvalidArgumentError(f"invalid volume {text!r}: the host path must be absolute "
                                   "(named volumes are not supported)")
    _check_destination(destination, text)
    unknown = [word for word in words if word not in ("ro", "rw", *rootfs.PROPAGATION_WORDS)]
    if unknown:
        raise InvalidArgumentError(f"invalid volume {text!r}: unknown option {unknown[0]!r} "
                                   "(use ro, rw, or a propagation such as rslave)")
    if not os.path.exists(host):
        raise InvalidArgumentError(f"invalid volume {text!r}: {host} does not exist on the host: "
                                   "create it first")
    propagation = [word for word in words if word in rootfs.PROPAGATION_WORDS] or ["rprivate"]
    return Mount(os.path.normpath(destination), "bind", host,
                 ["rbind", *(word for word in words if word in ("ro", "rw")), *propagation])


def parse_tmpfs(text: str) -> Mount:
    """`--tmpfs CTR[:OPTIONS]` -> a tmpfs, nosuid,nodev,noexec unless OPTIONS say otherwise (docker's)."""
    destination, _, options = text.partition(":")
    _check_destination(destination, text)
    words = [word for word in options.split(",") if word]
    return Mount(os.path.normpath(destination), "tmpfs", "tmpfs", ["nosuid", "nodev", "noexec", *words])


def _check_destination(destination: str, text: str) -> None:
    if not os.path.isabs(destination) or os.path.normpath(destination) == "/":
        raise InvalidArgumentError(f"invalid mount {text!r}: the container path must be absolute, and not /")


def _ps(args) -> None:
    records = [r for r in ContainerStore(args.root).list() if args.all or r["status"] == "running"]
    if args.quiet:
        for record in records:
            print(record["id"][:12])
        return
    now, rows = time.time(), []
    for record in records:
        if record["status"] == "running":
            status = f"Up {_duration(now - (record['started'] or now))}"
        elif record["status"] == "exited":
            code = "?" if record["exit_code"] is None else record["exit_code"]
            status = f"Exited ({code}) {_duration(now - (record['finished'] or now))} ago"
        else:
            status = "Created"
        command = " ".join(record["command"])
        command = '"' + (command if len(command) <= 20 else command[:19] + "…") + '"'
        rows.append([record["id"][:12], record["image"], command, f"{_duration(now - record['created'])} ago",
                     status, record["name"]])
    print_table(["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"], rows)


def _duration(seconds: float) -> str:
    """docker's rounding: 'Less than a second', '5 seconds', '3 minutes', '2 hours', '4 days'."""
    if seconds < 1:
        return "Less than a second"
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if count > 1 else ''}"
    return f"{int(seconds)} second{'s' if int(seconds) > 1 else ''}"


def _each(args, action) -> int:
    """Apply `action` to each named container; report failures one line each, docker-style."""
    failed = 0
    for name in args.containers:
        try:
            action(ContainerStore(args.root), name)
            print(name)
        except ContainerError as e:
            print(f"minictl: {e}", file=sys.stderr)
            failed = 1
    return failed


def _stop(args) -> int:
    return _each(args, lambda store, name: store.stop(name, timeout=args.time))


def _kill(args) -> int:
    text = args.signal.upper().removeprefix("SIG")
    try:
        signum = int(text) if text.isdigit() else signal.Signals[f"SIG{text}"]
    except KeyError:
        raise InvalidArgumentError(f"invalid signal {args.signal!r}: use a name (TERM) or a number") from None
    return _each(args, lambda store, name: store.kill(name, signum))


def _logs(args) -> None:
    store = ContainerStore(args.root)
    record = store.get(args.container)
    with open(store.log_path(record["id"]), "rb") as log:
        while True:
            chunk = log.read(65536)
            if chunk:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
            elif not args.follow:
                return
            elif store.get(record["id"])["status"] != "running":
                sys.stdout.buffer.write(log.read())  # what it wrote while it exited
                return
            else:
                time.sleep(0.1)


def _stats(args) -> None:
    stats.show(ContainerStore(args.root), args.containers, stream=not args.no_stream, fmt=args.format)


def _rm(args) -> int:
    return _each(args, lambda store, name: store.remove(name, force=args.force))


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


def _exec(args) -> int:
    """docker exec: the command's exit code; a refusal (no such container, not running) exits 1, as
    docker's does, and a command that cannot start 126 (127 if it does not exist)."""
    from ..runtime import exec_into  # it brings the OCI modules: imported only when needed, as `run` is timed

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    store = ContainerStore(args.root)
    try:
        record, target = exec_into.running_record(store, args.container)
        process = exec_into.process_from_record(record, store.dir / record["id"], command, env=args.env,
                                                cwd=args.workdir, tty=args.tty, interactive=args.interactive)
    except ContainerError as e:
        e.exit_code = 1
        raise
    return exec_into.exec_into(target, process, user=args.user)
