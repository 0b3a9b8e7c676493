"""What a container is made of, as plain values: the input of every step.

A `ContainerSpec` is built from the command line (or a notebook) and an image; the steps read it and
nothing else. The OCI runtime spec (config.json) is the standard form of the same information; the
lifecycle stage translates between the two.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..cgroups import Limits
from ..errors import InvalidArgumentError
from .docker_seccomp import docker_default_seccomp

if TYPE_CHECKING:  # only a type here: mini-runc, which runs bundles, never loads the image store
    from ..image.store import Image

# Docker's default set for `docker run` on a cgroup v2 host; the user namespace comes with rootless.
DEFAULT_NAMESPACES = ["uts", "ipc", "net", "cgroup", "mnt", "pid"]
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# runc's defaults (`runc spec`): paths hidden from the container (/dev/null bound over files, an empty
# read-only tmpfs over directories), and paths it may read but not write.
DEFAULT_MASKED_PATHS = [
    "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
    "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware", "/proc/scsi",
]
DEFAULT_READONLY_PATHS = ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]


@dataclass
class Mount:
    """One mount inside the container, as an OCI config.json `mounts` entry describes it."""

    destination: str  # an absolute path inside the container
    type: str = "bind"  # "bind", "tmpfs", "proc", "sysfs", "devpts", "mqueue", ...
    source: str = ""  # a host path for a bind mount, else the filesystem's source name
    options: list[str] = field(default_factory=list)  # mount(8) words: "rbind", "ro", "nosuid", "size=64m"


@dataclass
class ProcessSettings:
    """Who the container's process is and what it may do: OCI's `process` (and linux.seccomp)."""

    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)
    # OCI capability sets by name: "bounding", "effective", "inheritable", "permitted", "ambient", each
    # a list like ["CAP_CHOWN", ...]; None means Docker's default set.
    capabilities: dict[str, list[str]] | None = None
    no_new_privileges: bool = False
    rlimits: list[tuple[str, int, int]] = field(default_factory=list)  # ("RLIMIT_NOFILE", soft, hard)
    oom_score_adj: int | None = None
    seccomp: dict | None = None  # an OCI linux.seccomp object; None: no filter
    umask: int | None = None


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
    # kinds of `namespaces` to join, setns(2) on the file given (config.json's linux.namespaces[].path,
    # e.g. /proc/PID/ns/net of another container), rather than to make with unshare(2)
    namespace_paths: dict[str, str] = field(default_factory=dict)
    tty: bool = False  # a pseudo-terminal from the container's own devpts, its master sent to the caller
    interactive: bool = False  # keep stdin attached (else the process reads /dev/null)
    stdout: int | None = None  # a file descriptor for the process's stdout and stderr; None: inherit
    limits: Limits = field(default_factory=Limits)  # the cgroup's limits (none: accounted, not limited)
    # where the cgroup goes: None is <parent>/mini-container/<id>; an OCI linux.cgroupsPath is absolute from
    # each hierarchy's root, or relative to the engine's parent (cgroups.base.cgroup_path_dir)
    cgroup_path: str | None = None
    root_path: Path | None = None  # an OCI bundle's root directory, used instead of image layers
    readonly_rootfs: bool = False
    mounts: list[Mount] = field(default_factory=list)
    masked_paths: list[str] = field(default_factory=lambda: list(DEFAULT_MASKED_PATHS))
    readonly_paths: list[str] = field(default_factory=lambda: list(DEFAULT_READONLY_PATHS))
    no_pivot: bool = False  # MS_MOVE + chroot instead of pivot_root (e.g. on a ramfs root)
    sysctls: dict[str, str] = field(default_factory=dict)
    process: ProcessSettings = field(default_factory=ProcessSettings)
    exec_fifo: Path | None = None  # OCI create: wait on this FIFO for `start` before execve
    # Networking (the network stage): "none" (lo up: what runc does), "bridge", "host" or "container"
    # (then `network_join_pid` is the pid whose network namespace to join); `publish` as -p gives it.
    network: str = "none"
    publish: list[str] = field(default_factory=list)
    network_dir: Path | None = None  # the network stage's state (leases, the nft table's record)
    network_join_pid: int | None = None
    # OCI hooks (hooks.Hook lists by kind) and the state they read on stdin, without pid and status
    # (ociVersion, id, bundle, annotations): the lifecycle sets both from config.json.
    hooks: dict[str, list] = field(default_factory=dict)
    hook_state: dict = field(default_factory=dict)
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
                    interactive: bool = False, limits: Limits | None = None, mounts: list[Mount] = (),
                    readonly_rootfs: bool = False) -> ContainerSpec:
    """Fill a spec from an image's configuration, the way `docker run` does.

    The command defaults to the image's Cmd; the environment is the image's Env, then PATH and
    HOSTNAME and HOME, then `-e` flags on top. The host name defaults to the short container id.
    `mounts` (-v, --tmpfs) are made in their order; `readonly_rootfs` (--read-only) makes / read-only.
    The process gets Docker's defaults: its capability set and its seccomp profile.
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
                         hostname=hostname, tty=tty, interactive=interactive, limits=limits or Limits(),
                         mounts=list(mounts), readonly_rootfs=readonly_rootfs,
                         process=ProcessSettings(seccomp=docker_default_seccomp()))


NETWORK_FILES = ("hosts", "hostname", "resolv.conf")


def set_network(spec: ContainerSpec, mode: str, publish: list[str], network_dir: Path,
                joined_directory: Path | None = None, joined_pid: int | None = None) -> None:
    """Give `spec` docker's networking: a `--network` mode, published ports, and /etc files.

    bridge and none: a network namespace of its own, and /etc/hosts, /etc/hostname and
    /etc/resolv.conf written by the network stage in the container's directory, bind-mounted in.
    host: the host's network namespace (no net namespace at all). container: the network namespace
    and the /etc files of the container in `joined_directory`, whose pid 1 is `joined_pid`.
    """
    spec.network, spec.publish, spec.network_dir = mode, list(publish), network_dir
    if mode in ("host", "container"):
        spec.namespaces = [kind for kind in spec.namespaces if kind != "net"]
    if mode == "host":
        return
    files_dir = (joined_directory or spec.directory) / "network"
    if mode == "container":
        spec.network_join_pid = joined_pid
    spec.mounts = [Mount(f"/etc/{name}", "bind", str(files_dir / name), ["rbind", "rprivate"])
                   for name in NETWORK_FILES] + spec.mounts
