"""A private dockerd for the round-trip tests: Debian's docker.io, started by the tests, stopped by pid.

Everything the daemon keeps is under one temporary directory, and nothing of the host's network changes:

    dockerd --data-root DIR/data --exec-root DIR/exec --pidfile DIR/docker.pid -H unix://DIR/docker.sock
            --config-file DIR/daemon.json          (not /etc/docker/daemon.json; 20.10's trust key in DIR)
            --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
            --cgroup-parent=mini-container-dockerd-PID   (containers run with --network none)

Its containerd is the one dockerd starts itself, with its socket and state under --exec-root. dockerd
runs in a mount namespace of its own (`unshare --mount --propagation private`) with a tmpfs on /run: the
20.10 daemon makes /run/docker/plugins whatever --exec-root says, and its overlay mounts then stay out of
the host's mount table and vanish with the namespace. `stop` sends SIGTERM to the daemon's pid (SIGKILL
after 30 s), kills by pid any containerd shim it left (found by the socket path in its command line),
unmounts whatever is still mounted under DIR, removes DIR, and removes the cgroups made under the parent.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from helpers import mounts_under
from registry_fixture import require

DOCKER = Path("/usr/bin/docker")  # docker.io's client (another docker on PATH may be of another version)
CGROUP_ROOT = Path("/sys/fs/cgroup")


class Dockerd:
    """One dockerd under `workdir`; `docker(...)` runs its client against it."""

    def __init__(self):
        self.binary = require("dockerd", "docker.io")
        if not DOCKER.is_file():
            pytest.fail(f"{DOCKER} not found: the round-trip tests need docker.io's client "
                        "(apt-get install docker.io)")
        require("unshare", "util-linux")
        self.workdir = Path(tempfile.mkdtemp(prefix="mc-dockerd-", dir="/tmp"))
        self.socket = self.workdir / "docker.sock"
        self.cgroup_parent = f"mini-container-dockerd-{os.getpid()}"
        self.process: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}",
                "DOCKER_CONFIG": str(self.workdir / "client"), "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, check: bool = True, timeout: float = 60,
               **kwargs) -> subprocess.CompletedProcess:
        """Run `docker ARGS...` against this daemon (text mode, output captured)."""
        result = subprocess.run([str(DOCKER), *args], env=self.env, capture_output=True, text=True,
                                timeout=timeout, **kwargs)
        if check and result.returncode != 0:
            pytest.fail(f"docker {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def start(self) -> None:
        version = subprocess.run([self.binary, "--version"], capture_output=True, text=True).stdout
        major = int(version.removeprefix("Docker version ").partition(".")[0] or 0)
        # Before 23.0 the daemon makes a trust key, in /etc/docker unless told otherwise (newer daemons
        # refuse the option they no longer have)
        config = {"deprecated-key-path": str(self.workdir / "key.json")} if major < 23 else {}
        (self.workdir / "daemon.json").write_text(json.dumps(config))
        flags = [f"--config-file={self.workdir / 'daemon.json'}", f"--data-root={self.workdir / 'data'}",
                 f"--exec-root={self.workdir / 'exec'}", f"--pidfile={self.workdir / 'docker.pid'}",
                 f"--host=unix://{self.socket}", "--bridge=none", "--iptables=false", "--ip6tables=false",
                 "--ip-forward=false", "--ip-masq=false", f"--cgroup-parent={self.cgroup_parent}"]
        private = 'mount -t tmpfs -o mode=0755,size=16m tmpfs /run && exec "$@"'
        with open(self.workdir / "dockerd.log", "wb") as log:  # the daemon keeps its own descriptor
            self.process = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "--",
                                             "sh", "-c", private, "sh", self.binary, *flags],
                                            stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False, timeout=10).returncode != 0:
            if self.process.poll() is not None:
                pytest.fail(f"dockerd exited ({self.process.returncode}): {self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"dockerd did not answer on {self.socket} within 60 s: {self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return (self.workdir / "dockerd.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        """Stop the daemon by its pid, then remove everything it left: shims, mounts, files, cgroups."""
        if self.process is not None and self.process.poll() is None:
            try:  # containers first: dockerd leaves running ones to their shims
                containers = self.docker("ps", "--all", "--quiet", check=False, timeout=20).stdout.split()
                if containers:
                    self.docker("rm", "--force", *containers, check=False, timeout=30)
            except subprocess.TimeoutExpired:
                pass  # a daemon that does not answer: its shims are killed below
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pid in self._shims():  # and its containerd, if it had to be killed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for mount in sorted(mounts_under(self.workdir), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", mount], check=False)
        shutil.rmtree(self.workdir, ignore_errors=True)
        self._remove_cgroups()

    def _shims(self) -> list[int]:
        """The pids of processes whose command line names this daemon's directory (containerd shims)."""
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    if str(self.workdir).encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    continue  # exited meanwhile
        return found

    def _remove_cgroups(self) -> None:
        """rmdir the cgroup parent (and what docker left in it) in every hierarchy, deepest first."""
        for hierarchy in CGROUP_ROOT.iterdir():
            parent = hierarchy / self.cgroup_parent
            if hierarchy.is_symlink() or not parent.is_dir():
                continue
            for directory, _, _ in sorted(os.walk(parent), key=lambda walked: len(walked[0]), reverse=True):
                os.rmdir(directory)

    def leftovers(self) -> list[str]:
        """What `stop` should have removed and did not (for the fixture's final check)."""
        left = [str(self.workdir)] if self.workdir.exists() else []
        left += [str(hierarchy / self.cgroup_parent) for hierarchy in CGROUP_ROOT.iterdir()
                 if (hierarchy / self.cgroup_parent).exists()]
        return left + [f"pid {pid}" for pid in self._shims()]
