"""The last steps: the container's terminal, its stdio, and execve — now, or when `start` says so.

`terminal`: the process opens a pseudo-terminal on the container's own devpts (/dev/ptmx of the
instance mounted by the dev step), makes it its controlling terminal (setsid, then TIOCSCTTY) and
sends the master side to the controller over the channel (SCM_RIGHTS), which is what runc's
`--console-socket` does. The terminal then belongs to the container: `tty` inside says /dev/pts/0.

`exec`: stdin from /dev/null unless the container is interactive, stdout and stderr to a log if one
was given, the working directory checked inside the new root, the executable looked up in the
container's PATH, every descriptor of the engine closed, signal dispositions reset (Python ignores
SIGPIPE, and an ignored signal stays ignored across execve), the process settings applied (user,
capabilities, no_new_privs, rlimits, the seccomp filter: see `process`), then execve. The lookup
happens before anything irreversible so that a missing program is a clear error, not a dead container.

`await_start`: the OCI create/start split. `create` builds everything, then this step answers,
stops dying with its creator (PR_SET_PDEATHSIG 0: the creator is about to exit) and blocks opening
the exec FIFO for writing; open(2) on a FIFO waits for the other end. `start` opens it for reading,
the process writes one byte, and execs. Between the two, /proc/PID shows a process that is fully
set up but still running the engine's code — runc's "created" state. The trap: after pivot_root the
FIFO's host path no longer exists for the process, so it holds the FIFO from the start as an O_PATH
descriptor (`hold_gate`) and opens it later through /proc/self/fd/N, as runc does.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import signal
import socket
import struct
import sys
import termios

from .. import syscalls as sc
from ..errors import ContainerError, ExecutableNotFoundError
from . import channel, hooks, process
from .spec import ContainerSpec

# ioctls for the pseudo-terminal master (<asm-generic/ioctls.h>)
TIOCGPTN = 0x80045430  # read the pty number: /dev/pts/N
TIOCSPTLCK = 0x40045431  # lock or unlock the slave side

# Signals that Python itself ignores at start-up; an exec'd program must get them back at default.
_PYTHON_IGNORED = ("SIGPIPE", "SIGXFSZ")


def open_terminal() -> tuple[int, int]:
    """Open a pseudo-terminal pair on the container's own devpts (what posix_openpt+unlockpt do)."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, b"\0" * 4))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY)
    return master, slave


def terminal(spec: ContainerSpec, sock: socket.socket) -> None:
    """Make a terminal of the container's own the process's controlling terminal and stdio."""
    master, slave = open_terminal()
    os.setsid()  # a new session, so that the terminal can become its controlling terminal
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    channel.send(sock, {"ok": True, "terminal": True}, [master])
    os.close(master)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    os.close(slave)


def prepare(spec: ContainerSpec) -> str:
    """Stdio, working directory and the executable's path: everything that can still fail clearly."""
    if not spec.tty:
        if not spec.interactive:
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        if spec.stdout is not None:
            os.dup2(spec.stdout, 1)
            os.dup2(spec.stdout, 2)
    try:
        os.chdir(spec.cwd)
    except OSError as e:
        raise ContainerError(f"working directory {spec.cwd!r} in image {spec.image}: {e.strerror}") from None
    return find_executable(spec)


def find_executable(spec: ContainerSpec) -> str:
    """The path execve will run: the command itself if it has a slash, else the first match in PATH."""
    command = spec.command[0]
    path = command if "/" in command else shutil.which(command, path=spec.env.get("PATH", ""))
    if path is None or not os.path.exists(path):
        raise ExecutableNotFoundError(f"executable {command!r} not found in image {spec.image} "
                                      f"(PATH={spec.env.get('PATH', '')})")
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        error = ExecutableNotFoundError(f"cannot execute {command!r} in image {spec.image}: "
                                        f"{os.strerror(errno.EACCES)}")
        error.exit_code = 126
        raise error
    return path


def execute(spec: ContainerSpec, path: str, keep: int | None) -> None:
    """Reset what Python changed, close every other descriptor, and execve. Returns only on failure."""
    for name in _PYTHON_IGNORED:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    close_descriptors_except({0, 1, 2, keep})  # no descriptor of the engine may leak in
    process.apply(spec.process)  # user, capabilities, no_new_privs, rlimits, seccomp: runc's order
    if spec.hooks.get("startContainer"):  # as runc: as the container's user, under its filter
        hooks.run_in_container("startContainer", spec.hooks["startContainer"],
                               dict(spec.hook_state, status="created"))
    try:
        os.execve(path, spec.command, spec.env)
    except OSError as e:
        error = ExecutableNotFoundError(f"cannot execute {spec.command[0]!r} in image {spec.image}: "
                                        f"{e.strerror}")
        error.exit_code = 126
        raise error from None


def exec_now(spec: ContainerSpec, sock: socket.socket) -> None:
    """The exec step. On success nothing returns: the controller reads end-of-file on the channel."""
    execute(spec, prepare(spec), keep=sock.fileno())


_gate: int | None = None  # the exec FIFO, held by an O_PATH descriptor from before pivot_root


def hold_gate(spec: ContainerSpec) -> int | None:
    """Before the root changes: keep a handle on the exec FIFO, if the container has one."""
    global _gate
    if spec.exec_fifo is not None:
        _gate = os.open(spec.exec_fifo, os.O_PATH | os.O_CLOEXEC)
    return _gate


def await_start(spec: ContainerSpec, sock: socket.socket) -> None:
    """create's last step: answer, outlive the creator, block on the exec FIFO until start, then exec."""
    path = prepare(spec)
    sc.prctl(sc.PR_SET_PDEATHSIG, 0)
    channel.send(sock, {"ok": True, "created": True})
    sock.close()
    try:
        gate = os.open(f"/proc/self/fd/{_gate}", os.O_WRONLY)  # blocks until `start` opens the other end
        os.close(_gate)
        os.write(gate, b"0")
        os.close(gate)
        execute(spec, path, keep=None)
    except (OSError, ContainerError) as e:  # nobody is listening any more: say it on stderr
        print(f"mini-container init: {e}", file=sys.stderr)
        os._exit(getattr(e, "exit_code", 127))


def close_descriptors_except(keep: set[int | None]) -> None:
    """Close every inherited descriptor the build does not need (close_range(2) over the gaps).

    The caller may hold pipes and sockets (a notebook kernel's, a parent's "ready" pipe): a process
    of the container that keeps one open would keep its other end from ever seeing end-of-file.
    """
    start = 0
    for fd in sorted(fd for fd in keep if fd is not None):
        if start < fd:  # careful: closerange(n, n) would become close_range(n, n - 1), i.e. everything
            os.closerange(start, fd)
        start = fd + 1
    os.closerange(start, os.sysconf("SC_OPEN_MAX"))
