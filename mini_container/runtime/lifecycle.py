"""The OCI lifecycle: create, start, state, kill, delete — runc's state machine over the same steps.

    creating ──create──> created ──start──> running ──(pid 1 exits)──> stopped ──delete──> (gone)

`create` runs every step of the build and leaves the container's pid 1 blocked in `await_start`: the
namespaces, cgroup and root filesystem exist, the process is set up, but it is still the engine's
code, waiting on the exec FIFO. The command that created it exits; pid 1 lives on. `start` opens
the FIFO, and pid 1 execs the user's program. Nothing but the kernel remembers a running container,
so its state is *derived* each time it is asked for, as runc does: pid 1 alive and the FIFO still
there is "created", alive without it "running", alive in a frozen cgroup "paused", gone "stopped".
A pid can be reused after its process dies, so the state also keeps pid 1's start time (field 22 of
/proc/PID/stat) and a pid whose start time differs counts as gone.

On disk, under the runtime's root (by default /run/mini-container, a tmpfs that a reboot empties):

    <id>/state.json   the OCI state (ociVersion, id, status, pid, bundle, annotations) plus the engine's
                      own fields (created, pid start time, cgroup directories, hooks)
    <id>/exec.fifo    the start gate, removed by start
    <id>/rootfs/      the mount point of the root (mounted only inside the container's namespace)

Every command takes an exclusive flock(2) on the container's directory, so two commands on the same
container wait for each other; state.json and the pid file are written to a temporary name and
renamed into place, so a reader never sees half of one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import time
from dataclasses import asdict
from pathlib import Path

from .. import cgroups
from ..errors import ContainerError, ContainerNotFoundError, InvalidArgumentError
from ..stepper import Stepper
from . import hooks
from .containers import kill_pid, wait_for_exit
from .spec import ContainerSpec

DEFAULT_ROOT = Path("/run/mini-container")
LATER_HOOKS = ("poststart", "poststop")  # run by start and delete, from the hooks kept in state.json
OCI_STATE_KEYS = ("ociVersion", "id", "status", "pid", "bundle", "annotations")  # what hooks are given
OCI_VERSION = "1.2.0"
_ID = re.compile(r"^[\w+\-.]+$")


class Lifecycle:
    """The containers of one runtime root, driven through the OCI operations."""

    def __init__(self, root: str | Path = DEFAULT_ROOT):
        self.root = Path(root)
        self.terminals: dict[str, int] = {}  # terminal masters of containers created without a console socket

    # --- create and start -----------------------------------------------------------------------
    def create(self, spec: ContainerSpec, bundle: str | Path, annotations: dict | None = None,
               pid_file: str | Path | None = None, console_socket: str | Path | None = None) -> dict:
        """Build the container and leave its pid 1 waiting for `start`; return its state."""
        if not _ID.match(spec.id):
            raise InvalidArgumentError(f"invalid container id {spec.id!r}: use letters, digits, _ + - .")
        directory = self.root / spec.id
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            directory.mkdir(mode=0o711)
        except FileExistsError:
            raise ContainerError(f"container with id {spec.id!r} already exists") from None
        with self._locked(spec.id):
            spec.directory, spec.exec_fifo = directory, directory / "exec.fifo"
            os.mkfifo(spec.exec_fifo, 0o622)
            state = {"ociVersion": OCI_VERSION, "id": spec.id, "status": "creating", "pid": 0,
                     "bundle": str(Path(bundle).resolve()), "annotations": annotations or {},
                     "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            _write_json(directory / "state.json", state)
            spec.hook_state = {key: state[key] for key in ("ociVersion", "id", "bundle", "annotations")}
            build = Stepper(spec, observe=False)
            try:
                build.start()
                build.run_all()
                if build.terminal is not None and console_socket is not None:
                    _send_console(build.terminal, console_socket)
                elif build.terminal is not None:  # kept for this process (`run` in the foreground)
                    self.terminals[spec.id] = os.dup(build.terminal)
                later = {kind: [asdict(hook) for hook in spec.hooks.get(kind, [])] for kind in LATER_HOOKS}
                state.update(status="created", pid=build.pid, start_time=_start_time(build.pid),
                             cgroup=build.cgroup.paths(), hooks=later)
                _write_json(directory / "state.json", state)
                if pid_file:
                    _write_text(Path(pid_file), str(build.pid))
            except BaseException:
                build.close()
                shutil.rmtree(directory, ignore_errors=True)
                raise
            build.release()
        return self.state(spec.id)

    def start(self, container_id: str) -> dict:
        """Let a created container's pid 1 exec its program."""
        with self._locked(container_id):
            state = self.state(container_id)
            if state["status"] != "created":
                raise ContainerError(f"cannot start a container that is {state['status']}: {container_id}")
            fifo = self.root / container_id / "exec.fifo"
            gate = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
            try:
                ready = select.select([gate], [], [], 10)[0] and os.read(gate, 1)
            finally:
                os.close(gate)
            fifo.unlink()
            if not ready:
                raise ContainerError(f"container {container_id}: pid 1 did not pass the start gate")
            state = self.state(container_id)
            _run_later_hooks("poststart", state)
        return state

    # --- looking ------------------------------------------------------------------------------------
    def state(self, container_id: str) -> dict:
        """The OCI state, with the status derived from the kernel's view of pid 1."""
        path = self.root / container_id / "state.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            raise ContainerNotFoundError(f"container does not exist: {container_id}") from None
        if state["status"] == "creating":
            return state
        alive = state["pid"] and _start_time(state["pid"]) == state.get("start_time")
        if not alive:
            state["status"] = "stopped"
        elif (self.root / container_id / "exec.fifo").exists():
            state["status"] = "created"
        elif self.cgroup(state).frozen():
            state["status"] = "paused"
        else:
            state["status"] = "running"
        return state

    def list(self) -> list[dict]:
        """Every container's state, by id."""
        found = []
        for path in sorted(self.root.glob("*/state.json")) if self.root.is_dir() else []:
            with contextlib.suppress(ContainerNotFoundError):
                found.append(self.state(path.parent.name))
        return found

    def cgroup(self, state: dict) -> cgroups.Cgroup:
        backend = cgroups.backend_for(cgroups.detect())
        return backend(state["id"], {key: Path(path) for key, path in state["cgroup"].items()})

    def pids(self, container_id: str) -> list[int]:
        """Every process in the container's cgroup (what `ps` lists)."""
        return self.cgroup(self.state(container_id)).procs()

    # --- signals, freezing, limits ------------------------------------------------------------------
    def kill(self, container_id: str, signum: int = signal.SIGTERM, all_processes: bool = False) -> None:
        """Send `signum` to pid 1 (or, with all_processes, to every process of the container)."""
        state = self.state(container_id)
        if state["status"] not in ("created", "running", "paused"):
            raise ContainerError(f"container {container_id} is {state['status']}: nothing to signal")
        if all_processes:
            for pid in self.cgroup(state).procs():
                kill_pid(pid, signum)
        else:
            kill_pid(state["pid"], signum)

    def pause(self, container_id: str) -> None:
        """Freeze every process of a running container (cgroup freezer)."""
        state = self._expect(container_id, "running")
        self.cgroup(state).freeze()

    def resume(self, container_id: str) -> None:
        state = self._expect(container_id, "paused")
        self.cgroup(state).thaw()

    def update(self, container_id: str, limits: cgroups.Limits) -> None:
        """Change a live container's cgroup limits."""
        state = self.state(container_id)
        if state["status"] == "stopped":
            raise ContainerError(f"container {container_id} is stopped: nothing to update")
        self.cgroup(state).set_limits(limits)

    # --- the end --------------------------------------------------------------------------------------
    def delete(self, container_id: str, force: bool = False) -> dict:
        """Remove a stopped (or created) container; with force, kill a running one first."""
        with self._locked(container_id):
            state = self.state(container_id)
            if state["status"] in ("running", "paused") and not force:
                raise ContainerError(f"cannot delete container {container_id} that is not stopped: "
                                     f"{state['status']} (use --force)")
            if state["status"] != "stopped":
                kill_pid(state["pid"], signal.SIGKILL)
                wait_for_exit(state["pid"], timeout=10)
            with contextlib.suppress(ChildProcessError):  # reap it, if it is ours (we are its subreaper)
                os.waitpid(state["pid"], os.WNOHANG)
            if state.get("cgroup"):
                cgroup = self.cgroup(state)
                if cgroup.exists():
                    cgroup.thaw()
                    cgroup.kill()
                    cgroup.destroy()
            shutil.rmtree(self.root / container_id, ignore_errors=True)
            _run_later_hooks("poststop", dict(state, status="stopped"))
        return state

    # --- helpers --------------------------------------------------------------------------------------
    def _expect(self, container_id: str, status: str) -> dict:
        state = self.state(container_id)
        if state["status"] != status:
            raise ContainerError(f"container {container_id} is {state['status']}, not {status}")
        return state

    def busy(self, container_id: str) -> bool:
        """True while another command holds the container's lock (a create in progress, say)."""
        fd = os.open(self.root / container_id, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _locked(self, container_id: str):
        try:
            fd = os.open(self.root / container_id, os.O_RDONLY | os.O_DIRECTORY)
        except FileNotFoundError:
            raise ContainerNotFoundError(f"container does not exist: {container_id}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _run_later_hooks(kind: str, state: dict) -> None:
    """Run poststart or poststop hooks kept in the state at create; a failure is only logged."""
    found = [hooks.Hook(**dict(entry, args=tuple(entry["args"]),
                              env=None if entry["env"] is None else tuple(entry["env"])))
             for entry in state.get("hooks", {}).get(kind, [])]
    public = {key: value for key, value in state.items() if key in OCI_STATE_KEYS}
    hooks.run_hooks(kind, found, public)


def _send_console(master: int, console_socket: str | Path) -> None:
    """Hand the terminal's master to whoever listens on the console socket (runc's protocol)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(str(console_socket))
        socket.send_fds(sock, [b"/dev/ptmx"], [master])


def _write_json(path: Path, data: dict) -> None:
    _write_text(path, json.dumps(data, indent=2))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
