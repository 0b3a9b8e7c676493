"""OCI hooks: programs the runtime runs at fixed points of a container's life, its state on their stdin.

config.json's `hooks` names six kinds. Each entry is {path, args, env, timeout}: `path` is execve(2)'d
with `args` as its whole argv (argv[0] included; none: just the path), `env` as its whole
environment (absent: the runtime's own, as runc's Go exec.Cmd does), and the container's state on
stdin, one JSON object:

    {"ociVersion": "1.0.2-dev", "id": "web", "status": "creating", "pid": 4242,
     "bundle": "/srv/bundles/web", "annotations": {...}}

When each kind runs, where, and what its failure does (runtime-spec config.md and runtime.md):

    kind             when                                         namespaces     path found in  failure
    prestart         create: namespaces made, before pivot_root   the runtime's  the runtime's  error
                     (DEPRECATED; runc runs it just before createRuntime)
    createRuntime    create: namespaces made, before pivot_root   the runtime's  the runtime's  error
    createContainer  create: mounts done, before pivot_root       the container  the runtime's  error
    startContainer   start: in the init, just before execve       the container  the container  error
    poststart        start: after the user process is started     the runtime's  the runtime's  warning
    poststop         delete: after the container is gone          the runtime's  the runtime's  warning

An "error" stops the hooks of that kind at the failing one; the lifecycle then destroys the container
and `create`/`start` fails. A "warning" is logged (logger `mini_container.runtime.hooks`) and the
next hook runs: the spec says so for poststart and poststop (runc is stricter about poststart).

Namespaces are inherited across fork, so "in the container's namespaces" needs no setns at all: the
hook is spawned by the container's own init, which is already inside them (`run_in_container`). That
is also why createContainer still finds its program on the host's filesystem (pivot_root has not
happened yet) and startContainer finds it in the container's root (it has). The runtime-namespace
kinds are spawned by the runtime itself (`run_hooks`); they reach into the container through the
pid in the state: `nsenter --target PID --net ip link ...` is the classic prestart network hook.

Traps:
- the pid in the state is the one the spawning process sees: the init's host pid for runtime-side
  hooks, but 1 for createContainer and startContainer run inside a new pid namespace (runc does the
  same: it passes getpid() from inside);
- a hook spawned by the init inherits everything the init has at that moment: its uid, its capability
  sets, its seccomp filter and no_new_privs if they are already applied, its cgroup (and counts
  against pids.max);
- stdout and stderr are read until end of file: a hook that leaves a daemon holding them keeps the
  runtime waiting (unless a timeout is set; the timeout kills the hook's whole process group).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from dataclasses import dataclass

from ..errors import ContainerError, InvalidArgumentError
from .oci_validate import HOOK_KINDS

log = logging.getLogger(__name__)

WARN_ONLY = ("poststart", "poststop")  # the spec: log a warning, continue as if the hook had succeeded
IN_CONTAINER = ("createContainer", "startContainer")  # run by the init, inside the container's namespaces
STATE_KEYS = ("ociVersion", "id", "status", "bundle")  # required in the state (pid too, unless stopped)
_OUTPUT_SHOWN = 500  # characters of a failed hook's output quoted in the error


class HookError(ContainerError):
    """A hook of a kind whose failure stops the lifecycle (all but poststart and poststop) failed."""


@dataclass(frozen=True)
class Hook:
    """One config.json hook entry."""

    path: str  # absolute, resolved in the namespace given in the module docstring
    args: tuple[str, ...] = ()  # the whole argv, argv[0] included; empty: (path,)
    env: tuple[str, ...] | None = None  # KEY=VALUE entries; None: the caller's environment
    timeout: int | None = None  # seconds before the hook's process group is killed; None: no limit


def hooks_from_config(config: dict) -> dict[str, list[Hook]]:
    """Every kind's hooks, in order, from a validated config.json (kinds without hooks map to [])."""
    entries = config.get("hooks", {})
    return {kind: [Hook(entry["path"], tuple(entry.get("args", ())),
                        tuple(entry["env"]) if "env" in entry else None, entry.get("timeout"))
                   for entry in entries.get(kind, [])]
            for kind in HOOK_KINDS}


def run_hooks(kind: str, hooks: list[Hook], state: dict) -> None:
    """Run `hooks` of `kind` in order, in the caller's namespaces, each with `state` as JSON on stdin.

    A failure raises HookError naming the hook ("error running createRuntime hook #1: /bin/false:
    exited with status 1 ..."), except for poststart and poststop, where it is logged as a warning.
    """
    if kind not in HOOK_KINDS:
        raise InvalidArgumentError(f"unknown hook kind {kind!r}: expected one of {', '.join(HOOK_KINDS)}")
    missing = [key for key in STATE_KEYS if key not in state]
    if missing:
        raise InvalidArgumentError(f"the state passed to {kind} hooks lacks {', '.join(missing)}")
    payload = json.dumps(state).encode()
    for index, hook in enumerate(hooks):
        failure = _run(hook, payload)
        if failure is None:
            continue
        message = f"error running {kind} hook #{index}: {hook.path}: {failure}"
        if kind in WARN_ONLY:
            log.warning("%s (a %s hook failure is only a warning: carrying on)", message, kind)
        else:
            raise HookError(f"{message}; fix or remove hooks.{kind}[{index}] in config.json")


def run_in_container(kind: str, hooks: list[Hook], state: dict) -> None:
    """Run createContainer or startContainer hooks from inside the container's init process.

    Call it in the init: createContainer after the mounts and before pivot_root, startContainer just
    before execve. The hooks inherit the init's namespaces; the state's pid becomes the init's own
    pid as it sees it (1 in a new pid namespace), as runc reports it.
    """
    if kind not in IN_CONTAINER:
        raise InvalidArgumentError(f"{kind} hooks run in the runtime's namespaces: use run_hooks, not "
                                   f"run_in_container")
    run_hooks(kind, hooks, dict(state, pid=os.getpid()))


def _run(hook: Hook, payload: bytes) -> str | None:
    """Run one hook to its end; None if it succeeded, else what went wrong."""
    env = None if hook.env is None else dict(pair.partition("=")[::2] for pair in hook.env)
    try:
        process = subprocess.Popen(list(hook.args) or [hook.path], executable=hook.path, env=env,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   process_group=0)
    except OSError as e:
        return f"cannot execute it: {e.strerror}"
    try:
        out, err = process.communicate(payload, timeout=hook.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the hook and whatever it started
        process.communicate()
        return f"still running after its timeout of {hook.timeout} s: killed"
    code = process.returncode
    if code == 0:
        return None
    status = f"exited with status {code}" if code > 0 else f"killed by {signal.Signals(-code).name}"
    output = "; ".join(f"{name}: {text.decode(errors='replace').strip()[-_OUTPUT_SHOWN:]}"
                       for name, text in (("stdout", out), ("stderr", err)) if text.strip())
    return f"{status}; {output}" if output else status
