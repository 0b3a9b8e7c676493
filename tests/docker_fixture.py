"""A private dockerd for the round-trip tests: Debian's docker.io, started by the tests, stopped by pid.

Everything the daemon keeps is under one temporary directory, and nothing of the host's network changes:

    dockerd --data-root DIR/data --exec-root DIR/exec --pidfile DIR/docker.pid -H unix://DIR/docker.sock
            --config-file DIR/daemon.json          (not /etc/docker/daemon.json; 20.10's trust key in DIR)
            --bridge=none --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false
            --cgroup-parent=mini-container-dockerd-PID   (containers run with --network none)
            daemon.json "runtimes": {NAME: {"path": PATH}}  (with `runtimes`: docker run --runtime NAME)

Its containerd is the one dockerd starts itself, with its socket and state under --exec-root. dockerd
runs in a mount namespace of its own (`unshare --mount --propagation private`) with a tmpfs on /run: the
20.10 daemon makes /run/docker/plugins whatever --exec-root says, and its overlay mounts then stay out of
the host's mount table and vanish with the namespace. `stop` sends SIGTERM to the daemon's pid (SIGKILL
after 30 s), kills by pid any containerd shim it left (found by the socket path in its command line),
unmounts whatever is still mounted under DIR, removes DIR, and removes the cgroups made under the parent.

The cgroup parent is relative, and docker hands it on as such in each container's linux.cgroupsPath
("mini-container-dockerd-PID/ID"): a runtime puts it below its own cgroup in each hierarchy, which is
this process's (the daemon, its containerd and their shims are our descendants). An absolute one would
go from the root of each hierarchy, outside the cgroups this process is limited by; both places are
cleaned.
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

    def __init__(self, runtimes: dict[str, str] | None = None):
        self.runtimes = dict(runtimes or {})  # name -> absolute path of a runtime (daemon.json "runtimes")
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
        if self.runtimes:
            config["runtimes"] = {name: {"path": path} for name, path in self.runtimes.items()}
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

    def _cgroup_parents(self) -> list[Path]:
        """The cgroup parent's directories that exist: in each hierarchy below our own cgroup (where a
        runtime puts a relative cgroupsPath) or below the root (an absolute one)."""
        found = []
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, own = line.split(":", 2)
            mount = CGROUP_ROOT / (controllers.removeprefix("name=") or "unified")
            if not controllers and not mount.is_dir():
                mount = CGROUP_ROOT  # a pure v2 host: the one tree is mounted at the root
            found += [base / self.cgroup_parent for base in (mount, mount / own.lstrip("/"))]
        return [path for path in dict.fromkeys(found) if path.is_dir()]

    def _remove_cgroups(self) -> None:
        """rmdir the cgroup parent (and what docker left in it) in every hierarchy, deepest first."""
        for parent in self._cgroup_parents():
            for directory, _, _ in sorted(os.walk(parent), key=lambda walked: len(walked[0]), reverse=True):
                os.rmdir(directory)

    def leftovers(self) -> list[str]:
        """What `stop` should have removed and did not (for the fixture's final check)."""
        left = [str(self.workdir)] if self.workdir.exists() else []
        left += [str(parent) for parent in self._cgroup_parents()]
        return left + [f"pid {pid}" for pid in self._shims()]
