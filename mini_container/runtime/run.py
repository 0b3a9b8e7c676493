"""`minictl run`: build a container with every step and no pauses, attach to it, return its exit code.

Without a terminal, the container's process simply inherits the caller's stdout and stderr (and,
with -i, its stdin): the kernel passes the same open files through fork and exec.

With -t the container opens a pseudo-terminal on its own devpts and sends the master side back over
the channel (SCM_RIGHTS). The caller puts its own terminal in raw mode and relays bytes both ways, so
that line editing, Ctrl-C and job control happen in the container's terminal, not in ours; it also
copies its window size over, now and on every SIGWINCH.

Signals sent to `minictl` (SIGTERM, SIGHUP, SIGQUIT, SIGINT) are forwarded to the container's pid 1.
The trap: the kernel does not deliver a signal to a pid namespace's init unless that process installed
a handler for it, so `sleep` as pid 1 ignores Ctrl-C. A second SIGINT therefore sends SIGKILL, which
init cannot ignore.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import select
import signal
import sys
import termios
import threading
import time
import tty
from pathlib import Path

from ..errors import ContainerError, ContainerNotFoundError, InvalidArgumentError
from ..stepper import Stepper
from .containers import ContainerStore
from .spec import ContainerSpec

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def run(store: ContainerStore, spec: ContainerSpec, remove: bool = False, detach: bool = False) -> int:
    """Create and start a container; in the foreground, wait for it and return its exit code."""
    if detach:
        return _run_detached(store, spec, remove)
    return _supervise(store, spec, remove, foreground=True)


def _supervise(store: ContainerStore, spec: ContainerSpec, remove: bool, foreground: bool,
               on_running=lambda: None) -> int:
    """Build the container, record it as running, wait for it, record how it ended, clean up."""
    build = Stepper(spec, observe=False)
    code = None
    try:
        with _forwarding_signals(build) if foreground else contextlib.nullcontext():
            build.start()
            build.run_all()
            store.update(spec.id, status="running", pid=build.pid, monitor=os.getpid(), started=time.time(),
                         cgroup=build.cgroup.paths(),
                         process={"env": spec.env, "cwd": spec.cwd, "settings": vars(spec.process)})
            on_running()
            if build.terminal is not None:
                relay_terminal(build.terminal)
            code = build.wait()
    except ContainerError as e:
        code = e.exit_code
        raise
    finally:
        build.close()
        with contextlib.suppress(ContainerNotFoundError):  # `minictl rm -f` may have come first
            if remove:
                store.remove(spec.id, force=True)
            else:
                store.update(spec.id, status="exited", pid=None, exit_code=code, finished=time.time())
    return code


def _run_detached(store: ContainerStore, spec: ContainerSpec, remove: bool) -> int:
    """Fork a monitor that owns the container (like containerd's shim); return once it runs.

    The monitor starts a new session (setsid), so it has no terminal and outlives this command; its
    stdio goes to /dev/null and the container's output to its log file. It waits for the container,
    records its exit code and removes its cgroup. A pipe tells this command when the container runs,
    or why it could not start.
    """
    if spec.tty or spec.interactive:
        raise InvalidArgumentError("-d cannot be combined with -i or -t yet (attach comes later)")
    ready_read, ready_write = os.pipe()
    if os.fork() == 0:
        try:
            os.close(ready_read)
            _become_monitor(spec, store.log_path(spec.id))
            report = os.fdopen(ready_write, "w")
            try:
                _supervise(store, spec, remove, foreground=False, on_running=report.close)
            except ContainerError as e:
                if not report.closed:
                    report.write(json.dumps({"error": str(e), "exit_code": e.exit_code}))
        finally:
            os._exit(0)
    os.close(ready_write)
    with os.fdopen(ready_read) as report:
        failure = report.read()
    if failure:
        error = ContainerError(json.loads(failure)["error"])
        error.exit_code = json.loads(failure)["exit_code"]
        raise error
    return 0


def _become_monitor(spec: ContainerSpec, log: Path) -> None:
    os.setsid()
    null = os.open("/dev/null", os.O_RDWR)
    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.dup2(output, 2)  # the engine's own complaints, if any, land in the log too
    os.close(null)
    spec.stdout = output


@contextlib.contextmanager
def _forwarding_signals(build: Stepper):
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may install signal handlers
        return
    interrupts = 0

    def forward(signum, _frame):
        nonlocal interrupts
        if signum == signal.SIGINT:
            interrupts += 1
            if interrupts > 1:
                print("minictl: killing the container (its pid 1 has no SIGINT handler)", file=sys.stderr)
                signum = signal.SIGKILL
        build.kill(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def relay_terminal(master: int) -> None:
    """Copy bytes between our stdin/stdout and the container's terminal until the container closes it."""
    interactive = os.isatty(0)
    saved = termios.tcgetattr(0) if interactive else None
    previous_winch = None
    if interactive:
        def resize(*_):
            fcntl.ioctl(master, termios.TIOCSWINSZ, fcntl.ioctl(0, termios.TIOCGWINSZ, b"\0" * 8))
        resize()
        if threading.current_thread() is threading.main_thread():
            previous_winch = signal.signal(signal.SIGWINCH, resize)
        tty.setraw(0)
    try:
        sources = [master, 0]
        while True:
            ready, _, _ = select.select(sources, [], [])
            if master in ready:
                try:
                    data = os.read(master, 65536)
                except OSError as e:
                    if e.errno != errno.EIO:  # EIO: every process holding the terminal is gone
                        raise
                    data = b""
                if not data:
                    break
                _write_all(1, data)
            if 0 in ready:
                data = os.read(0, 65536)
                if data:
                    _write_all(master, data)
                else:  # our stdin ended: type the terminal's end-of-file character once
                    sources.remove(0)
                    _write_all(master, termios.tcgetattr(master)[6][termios.VEOF])
    finally:
        if saved is not None:
            termios.tcsetattr(0, termios.TCSAFLUSH, saved)
        if previous_winch is not None:
            signal.signal(signal.SIGWINCH, previous_winch)


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]
