"""mini-runc: a runc-compatible command line over the same engine, for containerd and Docker to call.

    mini-runc spec                              write the default config.json (as `runc spec` does)
    mini-runc create --bundle DIR ID            build the container; its pid 1 waits for start
    mini-runc start ID                          let pid 1 exec the process of config.json
    mini-runc run [-d] --bundle DIR ID          create and start; without -d, wait and delete
    mini-runc state ID | list | ps ID           the OCI state, every container, its processes
    mini-runc kill [--all] ID [SIGNAL]          signal pid 1 (or every process)
    mini-runc pause ID | resume ID              freeze and thaw the cgroup
    mini-runc update [-r FILE | --memory ...] ID   change live limits
    mini-runc events [--stats] ID               cgroup statistics as JSON, in runc's shape
    mini-runc delete [--force] ID               remove it (and its cgroup)
    mini-runc features                          what this runtime supports, as JSON

Errors go where runc puts them, because callers read them there: to stderr as a logrus text line
(`time="..." level=error msg="..."`), or with `--log FILE --log-format json` to FILE as a JSON line
({"level": "error", "msg": ..., "time": ...}), which is where containerd looks for the reason a
command failed. The exit code of a failed command is 1.

As Docker's runtime (`dockerd --add-runtime mini=/path/to/mini-runc`, then `docker run --runtime mini`),
it is called by containerd's shim, containerd-shim-runc-v2, with runc's global flags (--root, --log,
--log-format json) and subcommands: create --bundle --pid-file [--console-socket], start, state, kill,
delete, exec --process FILE --detach --pid-file [--console-socket], pause, resume, update --resources -
(linux.resources JSON on stdin), ps --format json (`docker top`). A few things matter to it beyond the
OCI spec: the container's pid 1 and exec'd processes are left to the shim (a child subreaper), which
reaps them and reports their exit codes; a terminal's master goes to the shim's console socket; and
Docker reads runc's own words in an error ("executable file not found" for exit code 127). `docker
stats` reads the cgroup itself, found through /proc/PID/cgroup of pid 1; `events --stats` prints the
same numbers as runc's types.Stats, for callers that ask the runtime.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

from ..cgroups import Stats
from ..errors import ContainerError, ExecutableNotFoundError
from ..rootfs import FLAG_WORDS, PROPAGATION_WORDS
from ..runtime import exec_into, oci
from ..runtime.capabilities import CAPABILITIES
from ..runtime.lifecycle import DEFAULT_ROOT, Lifecycle
from ..runtime.run import relay_terminal
from ..runtime.seccomp import ACTIONS, OPERATORS
from . import flags
from .table import print_table


class Log:
    """Where messages go: stderr as logrus text, or --log FILE as text or JSON lines."""

    def __init__(self, path: str | None, fmt: str, debug: bool):
        self.path, self.fmt, self.debug = path, fmt, debug

    def write(self, level: str, message: str) -> None:
        if level == "debug" and not self.debug:
            return
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        if self.fmt == "json":
            line = json.dumps({"level": level, "msg": message, "time": now})
        else:
            line = f'time="{now}" level={level} msg={json.dumps(message)}'
        if self.path:
            with open(self.path, "a") as f:
                print(line, file=f)
        else:
            print(line, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    log = Log(args.log, args.log_format, args.debug)
    try:
        if os.geteuid() != 0:
            raise ContainerError("mini-runc needs root; rootless containers are not supported yet")
        log.write("debug", f"mini-runc {' '.join(sys.argv[1:] if argv is None else argv)}")
        return args.handler(args, Lifecycle(args.root)) or 0
    except ContainerError as e:
        log.write("error", str(e))
        return 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="mini-runc", description="A runc-compatible OCI runtime.")
    top.add_argument("--root", default=str(DEFAULT_ROOT), help="where container state is kept")
    top.add_argument("--log", help="write messages to this file instead of stderr")
    top.add_argument("--log-format", choices=["text", "json"], default="text")
    top.add_argument("--debug", action="store_true")
    top.add_argument("--systemd-cgroup", action="store_true", help="accepted for compatibility; ignored")
    commands = top.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, handler, help: str, with_id: bool = True) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        if with_id:
            sub.add_argument("id", metavar="CONTAINER_ID")
        sub.set_defaults(handler=handler)
        return sub

    for name, handler, help in (("create", _create, "create a container"),
                                ("run", _run, "create and start a container")):
        sub = command(name, handler, help)
        sub.add_argument("-b", "--bundle", default=".", help="the bundle directory (default: .)")
        sub.add_argument("--pid-file", help="write pid 1's host pid to this file")
        sub.add_argument("--console-socket", help="send the terminal's master to this unix socket")
        sub.add_argument("--no-pivot", action="store_true", help="MS_MOVE + chroot instead of pivot_root")
        sub.add_argument("--no-new-keyring", action="store_true", help="accepted for compatibility")
        if name == "run":
            sub.add_argument("-d", "--detach", action="store_true", help="do not wait for the container")
            sub.add_argument("--keep", action="store_true", help="do not delete the container after it exits")
    command("start", _start, "start a created container")
    execute = command("exec", _exec, "run a new process inside a created or running container")
    execute.add_argument("-p", "--process", help="an OCI process.json: the whole process to run")
    execute.add_argument("-d", "--detach", action="store_true", help="do not wait for the process")
    execute.add_argument("--pid-file", help="write the process's host pid to this file")
    execute.add_argument("--console-socket", help="send the terminal's master to this unix socket")
    execute.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")
    execute.add_argument("-e", "--env", action="append", default=[], help="add KEY=VALUE to the environment")
    execute.add_argument("--cwd", help="the working directory inside the container")
    execute.add_argument("-u", "--user", help="UID[:GID] (numbers: names would be the host's)")
    execute.add_argument("command", nargs=argparse.REMAINDER, help="the command (unless --process)")
    command("state", _state, "print the state of a container as JSON")
    kill = command("kill", _kill, "send a signal to a container's pid 1")
    kill.add_argument("signal", nargs="?", default="SIGTERM")
    kill.add_argument("-a", "--all", action="store_true", help="signal every process of the container")
    delete = command("delete", _delete, "delete a container")
    delete.add_argument("-f", "--force", action="store_true", help="kill it first if it is running")
    listing = command("list", _list, "list containers", with_id=False)
    listing.add_argument("-f", "--format", choices=["table", "json"], default="table")
    listing.add_argument("-q", "--quiet", action="store_true", help="only the ids")
    ps = command("ps", _ps, "list a container's processes")
    ps.add_argument("-f", "--format", choices=["table", "json"], default="table")
    command("pause", lambda args, runtime: runtime.pause(args.id), "freeze a container")
    command("resume", lambda args, runtime: runtime.resume(args.id), "thaw a container")
    events = command("events", _events, "print cgroup statistics as JSON")
    events.add_argument("--stats", action="store_true", help="print one statistics event and exit")
    events.add_argument("--interval", default="5s", help="time between events (default 5s)")
    update = command("update", _update, "change a container's resource limits")
    update.add_argument("-r", "--resources", help="a JSON file of OCI linux.resources ('-' for stdin)")
    flags.add_limit_flags(update)
    spec = command("spec", _spec, "write a default config.json", with_id=False)
    spec.add_argument("-b", "--bundle", default=".")
    spec.add_argument("--rootless", action="store_true")
    command("features", _features, "print what this runtime supports", with_id=False)
    return top


def _create(args, runtime: Lifecycle) -> None:
    _build(args, runtime, detached=True)


def _build(args, runtime: Lifecycle, detached: bool) -> dict:
    bundle = Path(args.bundle)
    config = oci.load_config(bundle)
    spec = oci.spec_from_config(config, bundle, args.id, runtime.root / args.id)
    spec.no_pivot = args.no_pivot
    oci.set_home(spec)
    if spec.tty and detached and args.console_socket is None:
        raise ContainerError("cannot allocate tty if mini-runc will detach without setting console socket")
    try:
        return runtime.create(spec, bundle, annotations=config.get("annotations"), pid_file=args.pid_file,
                              console_socket=args.console_socket)
    except ExecutableNotFoundError as e:
        raise ContainerError(_unable_to_start(spec.command[0], e)) from None


def _unable_to_start(command: str, error: ExecutableNotFoundError) -> str:
    """The engine's message, then runc's words for a program that cannot be started, which Docker reads:
    its daemon and client look for "executable file not found" (`docker run` and `docker exec` exit
    127) and for "permission denied", Go's text of EACCES (exit 126); any other failure exits 125."""
    if error.exit_code == 127:
        reason = "executable file not found in $PATH"
    else:  # the engine's message ends with strerror(3): "Permission denied" -> Go's "permission denied"
        reason = str(error).rpartition(": ")[2].lower()
    return f'{error}; exec: "{command}": {reason}'


def _run(args, runtime: Lifecycle) -> int:
    state = _build(args, runtime, detached=args.detach)
    terminal = runtime.terminals.pop(args.id, None)  # kept here when there is no console socket
    runtime.start(args.id)
    if args.detach:
        return 0
    if terminal is not None:
        relay_terminal(terminal)
    _, status = os.waitpid(state["pid"], 0)
    code = os.waitstatus_to_exitcode(status)
    if not args.keep:
        runtime.delete(args.id, force=True)
    return code if code >= 0 else 128 - code


def _exec(args, runtime: Lifecycle) -> int:
    """runc exec: without --detach, the process's exit code. Every error is logged as "exec failed: ..."
    and exits 255, as runc's do; the tty and console-socket rules are runc's."""
    try:
        state, target = exec_into.running_state(runtime, args.id)
        process = exec_into.process_from_config(state, runtime.root / args.id, args.process, args.command,
                                                args.env, args.cwd, args.user, args.tty)
        if args.detach and process.tty and args.console_socket is None:
            raise ContainerError("cannot allocate tty if mini-runc will detach without setting console "
                                 "socket")
        if args.console_socket is not None and not (args.detach and process.tty):
            raise ContainerError("cannot use console socket if mini-runc will not detach or allocate tty")
        try:
            return exec_into.exec_into(target, process, detach=args.detach,
                                       console_socket=args.console_socket, pid_file=args.pid_file)
        except ExecutableNotFoundError as e:
            raise ContainerError(_unable_to_start(process.command[0], e)) from None
    except ContainerError as e:
        Log(args.log, args.log_format, args.debug).write("error", f"exec failed: {e}")
        return 255


def _start(args, runtime: Lifecycle) -> None:
    runtime.start(args.id)


def _state(args, runtime: Lifecycle) -> None:
    print(json.dumps(_public(runtime.state(args.id)), indent=2))


def _public(state: dict) -> dict:
    """The fields runc prints for a state, in runc's order."""
    return {"ociVersion": state["ociVersion"], "id": state["id"], "pid": state["pid"] if
            state["status"] != "stopped" else 0, "status": state["status"], "bundle": state["bundle"],
            "rootfs": state.get("rootfs", ""), "created": state["created"], "owner": "",
            **({"annotations": state["annotations"]} if state.get("annotations") else {})}


def _kill(args, runtime: Lifecycle) -> None:
    text = args.signal.upper()
    try:
        name = text if text.startswith("SIG") else f"SIG{text}"
        signum = int(text) if text.isdigit() else signal.Signals[name]
    except KeyError:
        raise ContainerError(f"invalid signal: {args.signal}") from None
    runtime.kill(args.id, signum, all_processes=args.all)


def _delete(args, runtime: Lifecycle) -> None:
    runtime.delete(args.id, force=args.force)


def _list(args, runtime: Lifecycle) -> None:
    states = [_public(state) for state in runtime.list()]
    if args.quiet:
        for state in states:
            print(state["id"])
    elif args.format == "json":
        print(json.dumps(states or None))
    else:
        rows = [[s["id"], str(s["pid"]), s["status"], s["bundle"], s["created"], "root"] for s in states]
        print_table(["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"], rows)


def _ps(args, runtime: Lifecycle) -> None:
    pids = runtime.pids(args.id)
    if args.format == "json":
        print(json.dumps(pids))
        return
    rows = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except (FileNotFoundError, ProcessLookupError):
            continue
        rows.append([str(pid), command])
    print_table(["PID", "CMD"], rows)


def _events(args, runtime: Lifecycle) -> None:
    """runc events: a {"type": "stats", "id", "data"} line now (--stats), or every --interval."""
    interval = float(args.interval.rstrip("s"))
    while True:
        state = runtime.state(args.id)
        data = runc_stats(runtime.cgroup(state).stats())
        print(json.dumps({"type": "stats", "id": args.id, "data": data}), flush=True)
        if args.stats:
            return
        time.sleep(interval)


def runc_stats(stats: Stats) -> dict:
    """The engine's Stats in the shape of runc's types.Stats, which containerd's go-runc decodes.

    CPU times in ns, memory and I/O in bytes. Go's `omitempty` drops a zero number but never an object,
    so every object is there and a number the cgroup does not give is left out (a decoder reads 0).
    I/O is the cgroup's total per direction, without a device number.
    """
    def kept(**numbers: int | None) -> dict[str, int]:
        return {name: value for name, value in numbers.items() if value}

    def psi(kind: str) -> dict:
        """{"psi": {"some": {avg10, avg60, avg300, total}, "full": ...}} from a *.pressure file, if any."""
        pressure = stats.pressure.get(kind)
        if pressure is None:
            return {}
        return {"psi": {part: {"avg10": getattr(pressure, f"{part}_avg10"),
                               "avg60": getattr(pressure, f"{part}_avg60"),
                               "avg300": getattr(pressure, f"{part}_avg300"),
                               "total": getattr(pressure, f"{part}_total_us")}
                        for part in ("some", "full") if getattr(pressure, f"{part}_total_us") is not None}}

    io = [{"op": op, "value": value} for op, value in (("Read", stats.io_read_bytes),
                                                        ("Write", stats.io_write_bytes)) if value is not None]
    return {
        "cpu": {"usage": {**kept(total=stats.cpu_usage_ns), "kernel": stats.cpu_system_ns or 0,
                          "user": stats.cpu_user_ns or 0},
                "throttling": kept(periods=stats.cpu_periods, throttledPeriods=stats.cpu_throttled_periods,
                                   throttledTime=stats.cpu_throttled_ns),
                **psi("cpu")},
        "memory": {"usage": {"limit": stats.memory_limit_bytes or 0, **kept(usage=stats.memory_usage_bytes),
                             "failcnt": stats.memory_limit_hits or 0},
                   **psi("memory")},
        "pids": kept(current=stats.pids_current, limit=stats.pids_max),
        "blkio": {**({"ioServiceBytesRecursive": io} if io else {}), **psi("io")},
        "hugetlb": {}, "intel_rdt": {}, "network_interfaces": None,
    }


def _update(args, runtime: Lifecycle) -> None:
    if args.resources:
        text = sys.stdin.read() if args.resources == "-" else Path(args.resources).read_text()
        limits = oci.limits_from_resources(json.loads(text))
    else:
        limits = flags.limits_from_flags(args)
    runtime.update(args.id, limits)


def _spec(args, runtime: Lifecycle) -> None:
    path = Path(args.bundle) / "config.json"
    if path.exists():
        raise ContainerError("File config.json exists. Remove it first")
    path.write_text(json.dumps(oci.default_config(terminal=True, rootless=args.rootless), indent="\t"))


def _features(args, runtime: Lifecycle) -> None:
    """What this runtime implements, in the shape of runc's `features` (runtime-spec features.md)."""
    features = {
        "ociVersionMin": "1.0.0", "ociVersionMax": oci.OCI_VERSION,
        "hooks": ["prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop"],
        "mountOptions": sorted({*FLAG_WORDS, *PROPAGATION_WORDS, "bind", "rbind"}),
        "linux": {
            "namespaces": sorted(oci.NAMESPACE_KINDS),
            "capabilities": sorted(CAPABILITIES),
            "cgroup": {"v1": True, "v2": True, "systemd": False, "systemdUser": False},
            "seccomp": {"enabled": True, "actions": sorted(ACTIONS), "operators": sorted(OPERATORS)},
        },
    }
    print(json.dumps(features, indent=4))


if __name__ == "__main__":
    sys.exit(main())
