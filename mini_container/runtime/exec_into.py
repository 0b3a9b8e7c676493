"""exec: a new process inside a running container (`docker exec`, `runc exec`, `kubectl exec`).

A running container is nothing but processes in some namespaces and a cgroup, under a root. To run
one more process "inside" it, a process of the host moves itself in, as nsenter(1) and cgexec do,
and then execs the command:

1. prctl(PR_SET_DUMPABLE, 0): it becomes non-dumpable before the container can see it (see the traps).
2. It writes its own pid to cgroup.procs in each of the container's cgroup directories (recorded in the
   state when the container started): from then on it is counted, limited and frozen with the
   container (/proc/PID/cgroup shows it). This comes before the namespaces: inside, the host's cgroup
   files are out of sight (mount namespace), and a move from a cgroup outside the cgroup namespace's
   root is refused (cgroup namespace).
3. setns(2) into each namespace of the container's pid 1 that differs from its own (their
   /proc/PID/ns/KIND inodes differ), in nsenter's order (`namespaces.join`): the mount namespace near
   the end, a user namespace only if the container has one (and last, as the caller is privileged).
   setns into a mount namespace also moves the caller's root and working directory to that
   namespace's root, which after the container's pivot_root is the container's root: no chroot.
4. fork(): setns(CLONE_NEWPID) moved only the children (/proc/self/ns/pid_for_children), so the
   process forks once more. Its child is in the container's pid namespace, with a pid > 1 there
   (NSpid in /proc/PID/status lists its pid at each level). The joining process reports the child's
   host pid and exits; the caller made itself a child subreaper (PR_SET_CHILD_SUBREAPER), so the
   orphan is reparented to the caller, which waits for it as for its own child.
5. The new process takes a terminal if asked (/dev/ptmx, now the container's own devpts; the master
   goes to the caller), its working directory (chdir inside the new root, then checked), its user
   (names looked up in the container's /etc/passwd and /etc/group), and the container's process
   settings (capabilities, no_new_privs, seccomp, rlimits: `process.apply`), so that it may do no more
   than the container's pid 1. Every descriptor of the engine is closed, then execve.

The caller reads a channel (`channel.py`): the new process's pid, its terminal, an error, or end of
file once execve succeeded (the channel is close-on-exec). Without `detach` it waits for the process
and returns its exit code (128+N after signal N), forwarding SIGINT, SIGTERM, SIGHUP and SIGQUIT to it.

Traps:
- CVE-2019-5736: until execve the joining process is the host's program (runc then; Python here), and
  a dumpable process may be opened through /proc/PID/exe, /proc/PID/fd, /proc/PID/mem or ptrace by
  any process of the same uid: root of the container could reach the host's binary through it and
  overwrite it. A non-dumpable process's /proc/PID files belong to root, and access to them needs
  CAP_SYS_PTRACE, which a container does not have. execve of the container's program makes it
  dumpable again, once nothing of the host is left in it. (runc also re-execs a sealed copy of itself.)
- CVE-2024-21626: a working directory reached through a descriptor leaked from the host
  (cwd /proc/self/fd/N) lands outside the container's root. The joining process closes every
  descriptor but stdio and the channel first, and after chdir getcwd(3) must succeed: the kernel
  reports a directory outside the root as "(unreachable)/...", which glibc turns into ENOENT.
- A paused container's cgroup is frozen: a process that joins it freezes too. Exec is refused.
- After the container's pid 1 exits, its pid namespace accepts no new process: fork() there fails
  with ENOMEM.
- setns into a mount or user namespace refuses a multi-threaded caller: the joining is done in a
  freshly forked process, which has one thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import threading
import traceback
from dataclasses import dataclass, replace
from pathlib import Path

from .. import namespaces
from .. import syscalls as sc
from ..cgroups import Cgroup
from ..errors import ContainerError, ExecutableNotFoundError, InvalidArgumentError
from . import channel, execution, oci, process
from .containers import ContainerStore
from .lifecycle import Lifecycle, _send_console, _write_text
from .oci_validate import InvalidConfigError
from .run import FORWARDED, relay_terminal
from .spec import ContainerSpec, ProcessSettings, parse_env


@dataclass(frozen=True)
class Target:
    """A running container, as a joining process needs it: its name, pid 1 (a host pid), its cgroup."""

    name: str
    pid: int
    cgroup: Cgroup


# --- which container, and which process -------------------------------------------------------------

def running_state(runtime: Lifecycle, container_id: str) -> tuple[dict, Target]:
    """The OCI state of a container that a process may join (created or running), with runc's refusals."""
    state = runtime.state(container_id)
    status = state["status"]
    if status == "stopped":
        raise ContainerError("cannot exec in a stopped container")
    if status == "paused":
        raise ContainerError("cannot exec in a paused container: resume it first")
    if status not in ("created", "running"):
        raise ContainerError(f"cannot exec in a container that is {status}")
    return state, Target(container_id, state["pid"], runtime.cgroup(state))


def running_record(store: ContainerStore, name: str) -> tuple[dict, Target]:
    """The record of a running container, with docker's refusals (not running, paused)."""
    record = store.get(name)
    cgroup = store.cgroup(record["id"])  # refuses a container that is not running
    if record["pid"] not in cgroup.procs():  # its pid 1 has exited, and the pid may be someone else's now
        raise ContainerError(f"container {record['name']} is not running")
    if cgroup.frozen():
        raise ContainerError(f"container {record['name']} is paused, unpause the container before exec")
    return record, Target(record["name"], record["pid"], cgroup)


def process_from_config(state: dict, directory: Path, process_file: str | None = None,
                        command: list[str] = (), env: list[str] = (), cwd: str | None = None,
                        user: str | None = None, tty: bool = False) -> ContainerSpec:
    """runc exec's process: a process.json (an OCI `process` object), else the bundle's config.json
    `process` with the command line's args, env appended, cwd, user UID[:GID] and terminal. Without
    HOME in its environment, the process gets its user's home, as runc's (`oci.set_home`).

    A process.json without capabilities or rlimits gets the container's, as runc's does; the seccomp
    filter is always the container's (linux.seccomp). An invalid process names its JSON path.
    """
    bundle = Path(state["bundle"])
    config = oci.load_config(bundle)
    if process_file is not None:
        where = f"process {process_file}"
        new = _read_process_file(process_file)
        if isinstance(new, dict) and "capabilities" not in new and "capabilities" in config["process"]:
            new["capabilities"] = config["process"]["capabilities"]
        if isinstance(new, dict) and not new.get("rlimits") and config["process"].get("rlimits"):
            new["rlimits"] = config["process"]["rlimits"]
    else:
        if not command:
            raise InvalidArgumentError("process args cannot be empty")
        where = "exec arguments"
        new = {**config["process"], "args": list(command), "terminal": tty,
               "env": config["process"].get("env", []) + list(env)}
        if cwd:
            new["cwd"] = cwd
        if user:
            new["user"] = {**new.get("user", {}), **_numeric_user(user)}
    try:
        spec = oci.spec_from_config({**config, "process": new}, bundle, state["id"], directory)
    except InvalidConfigError as e:
        detail = str(e).removeprefix("config.json: ").removeprefix("process.")  # a path in the process
        raise InvalidArgumentError(f"{where}: {detail}") from None
    oci.set_home(spec)
    return spec


def _read_process_file(path: str) -> object:
    try:
        return json.loads(Path(path).read_text())
    except OSError as e:
        raise InvalidArgumentError(f"process {path}: cannot read it: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"process {path}: not valid JSON at line {e.lineno} column {e.colno}: "
                                   f"{e.msg}") from None


def _numeric_user(text: str) -> dict[str, int]:
    """runc's --user UID[:GID]: numbers only (names would be the host's, not the container's)."""
    ids = {}
    for kind, value in zip(("uid", "gid"), text.split(":", 1), strict=False):
        if not value.isdigit():
            raise InvalidArgumentError(f"parsing {value} as int for {kind} failed: not a number")
        ids[kind] = int(value)
    return ids


def process_from_record(record: dict, directory: Path, command: list[str], env: list[str] = (),
                        cwd: str | None = None, tty: bool = False,
                        interactive: bool = False) -> ContainerSpec:
    """docker exec's process: the container's environment with -e on top (and TERM=xterm with -t), its
    working directory unless -w says otherwise, and its pid 1's user and process settings."""
    if not command:
        raise InvalidArgumentError("exec needs a command: minictl exec [OPTIONS] NAME COMMAND [ARG...]")
    if cwd is not None and not os.path.isabs(cwd):
        raise InvalidArgumentError(f"the working directory {cwd!r} is invalid: it needs to be an absolute "
                                   "path")
    recorded = record["process"]  # written by `run` when the container started
    base = dict(recorded["env"])
    if tty:
        base.setdefault("TERM", "xterm")
    return ContainerSpec(id=record["id"], name=record["name"], image=record["image"], lowers=[],
                         directory=directory, command=list(command), env=parse_env(list(env), base),
                         cwd=cwd or recorded["cwd"], tty=tty, interactive=interactive,
                         process=ProcessSettings(**recorded["settings"]))


def resolve_user(text: str, passwd: str = "/etc/passwd", group: str = "/etc/group") -> dict:
    """docker's -u USER[:GROUP] -> {"uid", "gid", "additional_gids"}, looked up in the files of the
    root the caller is in (the container's, once its mount namespace is joined).

    Numbers are taken as they are, names must exist. Without GROUP, the gid is the user's primary group
    (0 for a uid with no entry) and the additional gids are the groups that list the user as a member.
    """
    name, _, group_name = text.partition(":")
    if not name:
        raise InvalidArgumentError(f"invalid user {text!r}: expected USER[:GROUP]")
    users = [row for row in _table(passwd) if row[2].isdigit() and row[3].isdigit()]
    groups = [row for row in _table(group) if row[2].isdigit()]
    field = 2 if name.isdigit() else 0  # a uid, or a user name
    entry = next((row for row in users if row[field] == name), None)
    if entry is None and not name.isdigit():
        raise ContainerError(f"unable to find user {name}: no matching entries in passwd file")
    uid, gid = (int(name), 0) if entry is None else (int(entry[2]), int(entry[3]))
    additional = []
    if group_name.isdigit():
        gid = int(group_name)
    elif group_name:
        match = next((row for row in groups if row[0] == group_name), None)
        if match is None:
            raise ContainerError(f"unable to find group {group_name}: no matching entries in group file")
        gid = int(match[2])
    elif entry is not None:
        additional = [int(row[2]) for row in groups if entry[0] in row[3].split(",")]
    return {"uid": uid, "gid": gid, "additional_gids": additional}


def _table(path: str) -> list[list[str]]:
    """The rows of a colon-separated file like /etc/passwd that have at least four fields."""
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return []
    return [row for row in (line.split(":") for line in lines if not line.startswith("#")) if len(row) >= 4]


# --- joining ------------------------------------------------------------------------------------------

def namespaces_to_join(pid: int) -> list[str]:
    """The kinds in which process `pid` has a namespace other than the caller's (by /proc/PID/ns inode)."""
    theirs, ours = namespaces.observe(pid), namespaces.observe(os.getpid())
    return [kind for kind in namespaces.KINDS if theirs[kind] != ours[kind]]


def join(target: Target) -> None:
    """Move the calling, single-threaded process into a running container: non-dumpable first, then
    its cgroup, then its namespaces. The pid namespace applies to the children forked afterwards."""
    process.make_non_dumpable()
    target.cgroup.add(os.getpid())
    namespaces.join(target.pid, namespaces_to_join(target.pid))


def check_inside_root(cwd: str) -> None:
    """Refuse a working directory outside the process's root (the CVE-2024-21626 class): getcwd(3)
    fails with ENOENT when the kernel can only name it "(unreachable)/..."."""
    try:
        os.getcwd()
    except FileNotFoundError:
        raise ContainerError(f"working directory {cwd!r} is outside the container's root") from None


# --- the caller's side --------------------------------------------------------------------------------

def exec_into(target: Target, spec: ContainerSpec, *, user: str | None = None, detach: bool = False,
              console_socket: str | Path | None = None, pid_file: str | Path | None = None) -> int:
    """Run `spec`'s command in the running container `target`; return its exit code (0 with `detach`,
    as soon as it runs).

    `spec` is the new process: command, env, cwd, tty, interactive and process settings. `user`
    (docker's USER[:GROUP]) is resolved inside the container. With a terminal, its master goes to
    `console_socket` (runc's protocol), or is relayed to our stdin and stdout until it closes.
    `pid_file` receives the new process's host pid. The caller becomes a child subreaper, for good.
    """
    ours, theirs = channel.pair()
    sc.prctl(sc.PR_SET_CHILD_SUBREAPER, 1)
    caller = os.getpid()
    joiner = os.fork()
    if joiner == 0:
        ours.close()
        _join_and_fork(theirs, target, spec, user, caller)
    theirs.close()
    with ours:
        pid, terminal = _await_exec(ours, joiner)
    terminal = _hand_over(pid, terminal, console_socket, pid_file)
    if detach:
        if terminal is not None:
            os.close(terminal)
        return 0
    with _forwarding_signals(pid):
        if terminal is not None:
            try:
                relay_terminal(terminal)
            finally:
                os.close(terminal)
        _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def _await_exec(sock: socket.socket, joiner: int) -> tuple[int, int | None]:
    """Read the channel until end of file: the new process's host pid, its terminal master, or an error."""
    pid = terminal = failure = None
    try:
        while True:
            message, fds = channel.receive(sock)
            if message is None:
                break
            if "pid" in message:
                pid = message["pid"]
            elif "error" in message:
                failure = message
            elif fds:
                terminal = fds[0]
    finally:
        _, status = os.waitpid(joiner, 0)  # once it is reaped, its orphan has been reparented to us
    if failure is None and pid is None:
        failure = {"error": f"the joining process died ({os.waitstatus_to_exitcode(status)})",
                   "type": "ContainerError", "exit_code": 126}
    if failure is None:
        return pid, terminal
    if pid is not None:
        os.waitpid(pid, 0)
    if terminal is not None:
        os.close(terminal)
    cls = ExecutableNotFoundError if failure["type"] == "ExecutableNotFoundError" else ContainerError
    error = cls(failure["error"])
    error.exit_code = failure["exit_code"]
    raise error


def _hand_over(pid: int, terminal: int | None, console_socket: str | Path | None,
               pid_file: str | Path | None) -> int | None:
    """Send the terminal to the console socket and write the pid file; kill the process if either fails.
    Return the terminal if it is still ours to relay."""
    try:
        if terminal is not None and console_socket is not None:
            try:
                _send_console(terminal, console_socket)
            finally:
                os.close(terminal)
            terminal = None
        if pid_file is not None:
            _write_text(Path(pid_file), str(pid))
        return terminal
    except OSError as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise ContainerError(f"exec: {e}") from None


@contextlib.contextmanager
def _forwarding_signals(pid: int):
    """Pass SIGINT, SIGTERM, SIGHUP and SIGQUIT on to `pid` (our child, so its pid cannot be reused)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install signal handlers
        return

    def forward(signum, _frame):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# --- the joining process and the new process ---------------------------------------------------------

def _join_and_fork(sock: socket.socket, target: Target, spec: ContainerSpec, user: str | None,
                   caller: int) -> None:
    """The forked joiner: join the container, fork the process that will exec, report its pid, exit."""
    code = 126  # docker's code for a command that could not be started
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != caller:
            os._exit(1)
        execution.close_descriptors_except({0, 1, 2, sock.fileno(), spec.stdout})
        join(target)
        try:
            child = os.fork()
        except OSError as e:
            if e.errno != errno.ENOMEM:
                raise
            raise ContainerError(f"container {target.name} is not running: its pid 1 has exited, and its "
                                 "pid namespace takes no new process") from None
        if child == 0:
            _prepare_and_exec(sock, spec, user)
        channel.send(sock, {"pid": child})
        code = 0
    except Exception as e:
        _report(sock, e, code)
    finally:
        os._exit(code)


def _prepare_and_exec(sock: socket.socket, spec: ContainerSpec, user: str | None) -> None:
    """Inside the container: the user, a terminal, stdio, the working directory, the settings, execve."""
    code = 126
    try:
        if user is not None:
            spec = replace(spec, process=replace(spec.process, **resolve_user(user)))
        if spec.tty:
            execution.terminal(spec, sock)
        path = execution.prepare(spec)
        check_inside_root(spec.cwd)
        execution.execute(spec, path, keep=sock.fileno())
    except ExecutableNotFoundError as e:
        code = e.exit_code
        _report(sock, e, code)
    except Exception as e:
        _report(sock, e, code)
    finally:
        os._exit(code)


def _report(sock: socket.socket, error: Exception, exit_code: int) -> None:
    """Tell the caller why: a ContainerError or OSError in one line (with notes), anything else in full."""
    if isinstance(error, ContainerError | OSError):
        text = " ".join([str(error), *getattr(error, "__notes__", [])])
    else:
        text = traceback.format_exc()
    channel.send(sock, {"error": text, "type": type(error).__name__, "exit_code": exit_code})
