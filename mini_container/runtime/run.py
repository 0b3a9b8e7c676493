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
import os
import select
import signal
import sys
import termios
import threading
import tty

from ..errors import ContainerError, ContainerNotFoundError
from ..stepper import Stepper
from .containers import ContainerStore
from .spec import ContainerSpec

FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def run(store: ContainerStore, spec: ContainerSpec, remove: bool = False) -> int:
    """Create, start and wait for a container in the foreground; return its exit code."""
    build = Stepper(spec, observe=False)
    code = None
    try:
        with _forwarding_signals(build):
            build.start()
            build.run_all()
            store.update(spec.id, status="running", pid=build.pid)
            if build.terminal is not None:
                _relay_terminal(build.terminal)
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
                store.update(spec.id, status="exited", pid=None, exit_code=code)
    return code


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


def _relay_terminal(master: int) -> None:
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
