"""Container records: what exists, under which name, in which state, with which exit code.

Layout under the engine's root (by default /var/lib/mini-container):

    containers/<id>/container.json   the record: id, name, image, command, status, pid, exit code, cgroup
    containers/<id>/container.log    what a detached container wrote to stdout and stderr
    containers/<id>/upper/           the overlay's writable layer: everything the container changed
    containers/<id>/work/            overlayfs's scratch directory
    containers/<id>/rootfs/          the mount point of the overlay (mounted only inside the container)

The root filesystem is mounted inside the container's own mount namespace, so when the container's
last process exits, the kernel unmounts it: no host mount is left to clean up. A record is written
atomically (a temporary file renamed into place), and names are checked under a lock (flock(2)), so
two commands cannot take the same name.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import shutil
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import cgroups, syscalls
from ..errors import ContainerError, ContainerNotFoundError, InvalidArgumentError
from .spec import ContainerSpec, spec_from_image

if TYPE_CHECKING:  # only a type here (see spec.py)
    from ..image.store import Image

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


class ContainerStore:
    """The container records under one root directory."""

    def __init__(self, root: str | Path):
        self.dir = Path(root) / "containers"

    @contextlib.contextmanager
    def locked(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def create(self, image: Image, command: list[str], *, name: str = "", **options) -> ContainerSpec:
        """Reserve a name and a directory for a new container; return its spec (status: created)."""
        container_id = os.urandom(32).hex()
        name = name or container_id[:12]
        if not set(name) <= _NAME_CHARS or name[0] in ".-":
            raise InvalidArgumentError(f"invalid container name {name!r}: use letters, digits, '_', '.', '-'")
        with self.locked():
            if any(record["name"] == name for record in self.list()):
                raise ContainerError(f"the container name {name!r} is already in use: "
                                     f"remove it with 'minictl rm {name}' or choose another --name")
            directory = self.dir / container_id
            spec = spec_from_image(image, id=container_id, name=name, directory=directory,
                                   command=command, **options)
            directory.mkdir()
            self._write(directory, {"id": container_id, "name": name, "image": image.reference,
                                    "command": spec.command, "created": time.time(), "status": "created",
                                    "pid": None, "exit_code": None, "started": None, "finished": None,
                                    "cgroup": None, "monitor": os.getpid()})
        return spec

    def update(self, container_id: str, **fields) -> None:
        """Change fields of a record (status, pid, exit_code)."""
        directory = self.dir / container_id
        try:
            record = json.loads((directory / "container.json").read_text())
        except FileNotFoundError:
            raise ContainerNotFoundError(f"no such container: {container_id}") from None
        record.update(fields)
        self._write(directory, record)

    def get(self, name_or_id: str) -> dict:
        """The record whose name, id or id prefix (of at least 4 characters) is `name_or_id`."""
        records = self.list()
        for record in records:
            if record["name"] == name_or_id or record["id"] == name_or_id:
                return record
        matches = [r for r in records if len(name_or_id) >= 4 and r["id"].startswith(name_or_id)]
        if len(matches) == 1:
            return matches[0]
        raise ContainerNotFoundError(f"no such container: {name_or_id}")

    def list(self) -> list[dict]:
        """Every record, oldest first, with `status` corrected for containers whose process is gone."""
        records = []
        for path in self.dir.glob("*/container.json") if self.dir.is_dir() else []:
            try:
                record = json.loads(path.read_text())
            except (FileNotFoundError, json.JSONDecodeError):
                continue  # being created or removed right now
            if record["status"] == "running" and not process_alive(record["pid"]):
                record["status"] = "exited"
            records.append(record)
        return sorted(records, key=lambda r: r["created"])

    def remove(self, name_or_id: str, force: bool = False) -> dict:
        """Delete a stopped container's record and directory (with `force`, kill it first)."""
        record = self.get(name_or_id)
        if record["status"] == "running":
            if not force:
                raise ContainerError(f"container {record['name']} is running: stop it first, or use rm -f")
            kill_pid(record["pid"], signal.SIGKILL)
            # the process that started it records the exit and removes the cgroup: let it finish
            wait_for_exit(record.get("monitor"), timeout=10)
        shutil.rmtree(self.dir / record["id"], ignore_errors=True)
        return record

    def stop(self, name_or_id: str, timeout: float = 10) -> dict:
        """SIGTERM to the container's pid 1, SIGKILL after `timeout` seconds; wait for the exit record.

        pid 1 of a namespace gets SIGTERM only if it installed a handler (a shell or `sleep` has none),
        which is why the SIGKILL fallback is not a formality.
        """
        record = self.get(name_or_id)
        if record["status"] == "running":
            self.kill(record["id"], signal.SIGTERM)
            if not wait_for_exit(record["pid"], timeout):
                self.kill(record["id"], signal.SIGKILL)
                wait_for_exit(record["pid"], 10)
            wait_for_exit(record.get("monitor"), 10)
        return self.get(record["id"])

    def kill(self, name_or_id: str, signum: int = signal.SIGKILL) -> dict:
        """Send `signum` to a running container's pid 1."""
        record = self.get(name_or_id)
        if record["status"] != "running":
            raise ContainerError(f"container {record['name']} is not running")
        kill_pid(record["pid"], signum)
        return record

    def cgroup(self, name_or_id: str) -> cgroups.Cgroup:
        """The cgroup of a running container, as recorded when it started."""
        record = self.get(name_or_id)
        if record["status"] != "running" or not record.get("cgroup"):
            raise ContainerError(f"container {record['name']} is not running")
        backend = cgroups.backend_for(cgroups.detect())
        return backend(record["id"], {key: Path(path) for key, path in record["cgroup"].items()})

    def log_path(self, container_id: str) -> Path:
        return self.dir / container_id / "container.log"

    @staticmethod
    def _write(directory: Path, record: dict) -> None:
        tmp = directory / "container.json.tmp"
        try:
            tmp.write_text(json.dumps(record, indent=2))
        except FileNotFoundError:
            raise ContainerNotFoundError(f"no such container: {record['id']} (removed)") from None
        os.replace(tmp, directory / "container.json")


def kill_pid(pid: int | None, signum: int) -> None:
    """Send `signum` to process `pid`, if it still exists.

    Never to a pid of 0 or less: kill(2) reads 0 as "my whole process group" and -1 as "every
    process I may signal", so a record that lost its pid must not become a massacre.
    """
    if pid is None or pid <= 0:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def wait_for_exit(pid: int | None, timeout: float) -> bool:
    """Wait until process `pid` (not necessarily our child) has exited; False on timeout.

    A pidfd (pidfd_open(2)) becomes readable when its process exits: poll(2) on it waits without
    racing against pid reuse, which polling /proc/PID could not promise.
    """
    if not process_alive(pid):
        return True
    try:
        pidfd = syscalls.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout
        while process_alive(pid):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            poller.poll(min(left, 0.1) * 1000)  # a zombie counts as exited; poll does not see that
        return True
    finally:
        os.close(pidfd)


def process_alive(pid: int | None) -> bool:
    """True if process `pid` exists and is not a zombie."""
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # gone before, or while, it was read
        return False
