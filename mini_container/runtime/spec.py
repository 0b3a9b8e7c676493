"""What a container is made of, as plain values: the input of every step.

A `ContainerSpec` is built from the command line (or a notebook) and an image; the steps read it and
nothing else. The OCI runtime spec (config.json) is the standard form of the same information; the
lifecycle stage translates between the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..cgroups import Limits
from ..errors import InvalidArgumentError
from ..image.store import Image

# Docker's default set for `docker run` on a cgroup v2 host; the user namespace comes with rootless.
DEFAULT_NAMESPACES = ["uts", "ipc", "net", "cgroup", "mnt", "pid"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass
class ContainerSpec:
    """One container: its identity, its image layers, its process, and its isolation."""

    id: str
    name: str
    image: str
    lowers: list[Path]  # the image's layer directories, bottom first
    directory: Path  # per-container: upper/ and work/ of the overlay, rootfs/ as the mount point
    command: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    hostname: str = ""
    namespaces: list[str] = field(default_factory=lambda: list(DEFAULT_NAMESPACES))
    tty: bool = False  # a pseudo-terminal from the container's own devpts, its master sent to the caller
    interactive: bool = False  # keep stdin attached (else the process reads /dev/null)
    stdout: int | None = None  # a file descriptor for the process's stdout and stderr; None: inherit
    limits: Limits = field(default_factory=Limits)  # the cgroup's limits (none: accounted, not limited)
    exit_code: int | None = field(default=None, init=False)

    @property
    def upper(self) -> Path:
        return self.directory / "upper"

    @property
    def work(self) -> Path:
        return self.directory / "work"

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs"


def parse_env(pairs: list[str], base: dict[str, str] | None = None) -> dict[str, str]:
    """Docker's `-e` semantics: `KEY=VALUE` sets, a bare `KEY` copies the caller's value if it has one."""
    env = dict(base or {})
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not key or "\0" in pair:
            raise InvalidArgumentError(f"invalid environment variable {pair!r}: expected KEY=VALUE")
        if sep:
            env[key] = value
        elif key in os.environ:
            env[key] = os.environ[key]
    return env


def spec_from_image(image: Image, *, id: str, name: str, directory: Path, command: list[str],
                    env: list[str] = (), hostname: str = "", tty: bool = False,
                    interactive: bool = False, limits: Limits | None = None) -> ContainerSpec:
    """Fill a spec from an image's configuration, the way `docker run` does.

    The command defaults to the image's Cmd; the environment is the image's Env, then PATH and
    HOSTNAME and HOME, then `-e` flags on top. The host name defaults to the short container id.
    """
    config = image.config
    base = dict(item.partition("=")[::2] for item in config.get("Env") or [])
    base.setdefault("PATH", DEFAULT_PATH)
    hostname = hostname or id[:12]
    base.update({"HOSTNAME": hostname, "HOME": base.get("HOME", "/root")})
    if tty:
        base.setdefault("TERM", "xterm")
    command = list(command) or list(config.get("Entrypoint") or []) + list(config.get("Cmd") or [])
    if not command:
        raise InvalidArgumentError(f"no command given and image {image.reference} has no default command")
    return ContainerSpec(id=id, name=name, image=image.reference, lowers=image.layers, directory=directory,
                         command=command, env=parse_env(list(env), base), cwd=config.get("WorkingDir") or "/",
                         hostname=hostname, tty=tty, interactive=interactive, limits=limits or Limits())
