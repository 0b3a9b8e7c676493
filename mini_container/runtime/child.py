"""The child's side: a process that becomes a container one step at a time.

After fork, the child waits on its end of the channel for the name of a step, does it, answers
`{"ok": true}` and waits again. Between two steps it is blocked in recv(2), so /proc/PID shows exactly
the state that the last step left. A step that fails is answered with `{"error": ..., "type": ...,
"exit_code": ...}`, and the child exits: a step asked for after it (the controller may have sent several
at once) never runs on a half-built container.

The child never returns into the caller's code: it either execs the container's command or exits.
PR_SET_PDEATHSIG makes the kernel kill it if the controller dies first, so a crashed notebook or
command leaves no half-built container running.
"""

from __future__ import annotations

import os
import signal
import socket
import traceback

from .. import syscalls as sc
from ..errors import ContainerError
from . import channel, execution
from .execution import close_descriptors_except
from .spec import ContainerSpec
from .steps import CHILD_STEPS


def main(sock: socket.socket, spec: ContainerSpec, controller: int) -> None:
    """Serve steps until exec succeeds or the controller goes away. Never returns."""
    code = 1
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != controller:
            os._exit(1)
        close_descriptors_except({0, 1, 2, sock.fileno(), spec.stdout, execution.hold_gate(spec)})
        rearm = False
        while True:
            message, _ = channel.receive(sock)
            if message is None:
                break
            if rearm:  # we were reparented to the controller (after the pid step): die with it
                sc.prctl(sc.PR_SET_PDEATHSIG, signal.SIGKILL)
                rearm = False
            code, rearm, failed = _serve(sock, spec, message["step"])
            if failed:
                break
    finally:
        os._exit(code)


def _serve(sock: socket.socket, spec: ContainerSpec, step: str) -> tuple[int, bool, bool]:
    """Do one step and answer; return the exit code to use if we stop now, whether we were reborn, and
    whether the step failed.

    A step that returns None has answered already: by itself (the terminal step, which sends a
    descriptor with its answer), or through its parent (the pid step's parent answers for the child
    it forked, and that child, now pid 1, goes on serving). The death signal is then re-armed, in
    case this is that new process.
    """
    try:
        extra = CHILD_STEPS[step](spec, sock)
    except ContainerError as e:
        channel.send(sock, {"error": str(e), "type": type(e).__name__, "exit_code": e.exit_code})
        return e.exit_code, False, True
    except OSError as e:
        channel.send(sock, {"error": str(e), "type": "OSError", "exit_code": 125})
        return 125, False, True
    except Exception:
        channel.send(sock, {"error": traceback.format_exc(), "type": "bug", "exit_code": 125})
        return 125, False, True
    if extra is None:
        return 1, True, False
    channel.send(sock, {"ok": True, **extra})
    return 1, False, False
