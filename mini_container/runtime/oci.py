"""The OCI bundle: a directory holding a root filesystem and a config.json that describes the container.

This is the contract between Docker (or containerd, podman, a person) and a low-level runtime such as
runc: `runc create --bundle DIR ID` reads DIR/config.json and builds exactly what it says. The same
file, read here, becomes the engine's `ContainerSpec`, so a bundle runs the same under runc and under
this engine. Try it:

    mkdir -p bundle/rootfs && cd bundle && runc spec     # the default config.json, terminal: true
    python3 -c 'from mini_container.runtime import oci; print(oci.default_config())'

What each part of config.json becomes in the kernel:

    process.args/env/cwd         execve(2) and chdir(2), the last thing the init does; without HOME in env,
                                 runc gives the user's home from the container's /etc/passwd (`set_home`)
    process.user                 setgroups(2), setresgid(2), setresuid(2) (ids inside the user namespace)
    process.capabilities         five sets: capset(2) and PR_CAPBSET_DROP, PR_CAP_AMBIENT; /proc/PID/status
    process.noNewPrivileges      prctl(PR_SET_NO_NEW_PRIVS): setuid binaries gain nothing; NoNewPrivs: 1
    process.rlimits              prlimit(2); see /proc/PID/limits
    process.oomScoreAdj          /proc/PID/oom_score_adj
    root.path, root.readonly     the new root for pivot_root(2), remounted MS_RDONLY if readonly
    mounts                       mount(2) in the listed order, inside the new mount namespace
    linux.namespaces             clone(2)/unshare(2) flags; an entry with a path is setns(2) into that file
    linux.resources              cgroup files (memory.max, cpu.max, pids.max, io.max, ...)
    linux.cgroupsPath            where the cgroup is: absolute from each hierarchy's root, else relative
                                 to the engine's parent (Docker's "/docker/ID", or "PARENT/ID")
    linux.maskedPaths            /dev/null (files) or an empty read-only tmpfs (directories) mounted over
    linux.readonlyPaths          a read-only bind mount of the path onto itself
    linux.sysctl                 writes under /proc/sys, allowed only for namespaced ones (oci_validate)
    linux.seccomp                a BPF filter loaded with seccomp(2) just before execve
    hooks                        programs the runtime runs at points of the lifecycle (see hooks.py)

Traps: `root.path` and bind-mount sources may be relative, and are then relative to the bundle, not
to the caller's working directory. Cgroup values of 0 (Go's zero value) and -1 mean "not set" or "no
limit", never "zero". A namespace entry with a `path` joins an existing namespace instead of making
one (setns(2) on that file: ContainerSpec.namespace_paths).
"""

from __future__ import annotations

import copy
import json
import os
import stat
from pathlib import Path

from .. import rootfs
from ..cgroups import DeviceThrottle, Limits
from ..errors import InvalidArgumentError
from .hooks import hooks_from_config
from .oci_validate import InvalidConfigError, is_bind, validate
from .spec import ContainerSpec, Mount, ProcessSettings

__all__ = ["InvalidConfigError", "default_config", "home_directory", "limits_from_resources", "load_config",
           "namespace_paths", "set_home", "spec_from_config", "validate"]

OCI_VERSION = "1.0.2-dev"  # what Debian's runc 1.1.5 writes
# The OCI name of each namespace and the engine's (the name of its /proc/PID/ns file).
NAMESPACE_KINDS = {"pid": "pid", "network": "net", "mount": "mnt", "ipc": "ipc", "uts": "uts", "user": "user",
                   "cgroup": "cgroup", "time": "time"}
_DEFAULT_CAPS = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
_THROTTLES = {"throttleReadBpsDevice": "read_bps", "throttleWriteBpsDevice": "write_bps",
              "throttleReadIOPSDevice": "read_iops", "throttleWriteIOPSDevice": "write_iops"}


def default_config(terminal: bool = False, rootless: bool = False) -> dict:
    """The config.json that `runc spec` writes (with `--rootless`: `runc spec --rootless`).

    runc always writes terminal: true; here it is a parameter, as a bundle run without a terminal
    (by a test, or by Docker for `docker run` without -t) needs false and nothing else changed.
    """
    config = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": terminal,
            "user": {"uid": 0, "gid": 0},
            "args": ["sh"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
            "cwd": "/",
            "capabilities": {name: list(_DEFAULT_CAPS) for name in ("bounding", "effective", "permitted",
                                                                     "ambient")},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": True,
        },
        "root": {"path": "rootfs", "readonly": True},
        "hostname": "runc",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
             "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
             "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
             "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
             "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs",
             "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
             "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        ],
        "linux": {
            "resources": {"devices": [{"allow": False, "access": "rwm"}]},
            "namespaces": [{"type": kind} for kind in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                            "/proc/scsi"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    }
    if rootless:
        _make_rootless(config)
    return config


def _make_rootless(config: dict) -> None:
    """runc's `spec --rootless`: what an unprivileged user can still do, and only that.

    A new user namespace maps the caller's own uid and gid to root inside (one id each: an unprivileged
    process may write only that line to uid_map). Without privilege over the host there is no new
    network namespace worth having (nothing could be plugged into it), no sysfs mount (a sysfs may be
    mounted only by the owner of the network namespace: /sys is bind-mounted from the host instead), no
    devpts gid=5 (gid 5 is not mapped), and no cgroup device rules (cgroups are not the caller's).
    """
    linux = config["linux"]
    linux["namespaces"] = [ns for ns in linux["namespaces"] if ns["type"] != "network"] + [{"type": "user"}]
    linux["uidMappings"] = [{"containerID": 0, "hostID": os.geteuid(), "size": 1}]
    linux["gidMappings"] = [{"containerID": 0, "hostID": os.getegid(), "size": 1}]
    del linux["resources"]
    for mount in config["mounts"]:
        if mount["type"] == "devpts":
            mount["options"].remove("gid=5")
        if mount["type"] == "sysfs":
            mount.update(type="none", source="/sys", options=["rbind", "nosuid", "noexec", "nodev", "ro"])
    # keep runc's key order (uidMappings and gidMappings first) so that the files compare line by line
    config["linux"] = {key: linux[key] for key in ("uidMappings", "gidMappings", "namespaces", "maskedPaths",
                                                   "readonlyPaths")}


def load_config(bundle: Path) -> dict:
    """Read and validate `bundle`/config.json; InvalidConfigError names the JSON path at fault."""
    path = Path(bundle) / "config.json"
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InvalidArgumentError(f"config.json: not found in the bundle {bundle}: write one with "
                                   f"'runc spec' (or mini-runc spec) in that directory") from None
    except OSError as e:
        raise InvalidArgumentError(f"config.json: cannot read {path}: {e.strerror}") from None
    try:
        config = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidArgumentError(f"config.json: not valid JSON at line {e.lineno} column {e.colno} of "
                                   f"{path}: {e.msg}") from None
    validate(config)
    return config


def namespace_paths(config: dict) -> dict[str, str]:
    """The namespaces to join rather than create: engine kind ("net", "mnt", ...) -> the file to setns(2).

    ContainerSpec.namespaces lists every kind the container gets apart from the host's, joined or new;
    ContainerSpec.namespace_paths, this dict, the kinds to join (open the path, setns) rather than make.
    """
    namespaces = config.get("linux", {}).get("namespaces", [])
    return {NAMESPACE_KINDS[ns["type"]]: ns["path"] for ns in namespaces if "path" in ns}


def spec_from_config(config: dict, bundle: Path, container_id: str, directory: Path) -> ContainerSpec:
    """The engine's ContainerSpec for a validated config.json of `bundle`.

    `directory` is the container's own state directory. The container has no image: its root is
    root.path (relative to the bundle unless absolute), used as it is, without an overlay; messages
    name that directory where they would name the image ("not found in image /bundle/rootfs").
    """
    validate(config)
    bundle = Path(bundle).absolute()
    root = bundle / config["root"]["path"]  # an absolute root.path replaces the bundle part
    if not root.is_dir():
        raise InvalidConfigError("root.path", f"no directory at {root}: unpack a root filesystem there")
    process = config["process"]
    linux = config.get("linux", {})
    return ContainerSpec(
        id=container_id, name=_short_name(container_id), image=str(root), lowers=[],
        directory=Path(directory),
        command=list(process["args"]),
        env=dict(pair.split("=", 1) for pair in process.get("env", [])),
        cwd=process["cwd"],
        hostname=config.get("hostname", ""),
        namespaces=[NAMESPACE_KINDS[ns["type"]] for ns in linux.get("namespaces", [])],
        namespace_paths=namespace_paths(config),
        tty=process.get("terminal", False),
        interactive=True,  # runc hands its own stdin to the container; it never substitutes /dev/null
        limits=limits_from_resources(linux.get("resources", {})),
        cgroup_path=linux.get("cgroupsPath") or None,
        root_path=root,
        readonly_rootfs=config["root"].get("readonly", False),
        mounts=[_mount(mount, bundle) for mount in config.get("mounts", [])],
        masked_paths=list(linux.get("maskedPaths", [])),
        readonly_paths=list(linux.get("readonlyPaths", [])),
        sysctls=dict(linux.get("sysctl", {})),
        process=_process_settings(process, linux),
        hooks=hooks_from_config(config),
    )


def set_home(spec: ContainerSpec) -> None:
    """runc's rule for HOME: a process whose environment has none (or an empty one) gets its user's home
    directory from the container's /etc/passwd, or "/" if the uid has no line there."""
    if not spec.env.get("HOME"):
        spec.env["HOME"] = home_directory(spec.root_path, spec.process.uid)


def home_directory(root: Path, uid: int) -> str:
    """The home field of `uid`'s line in the /etc/passwd of `root`, or "/".

    The file is resolved inside the root (openat2 RESOLVE_IN_ROOT: a symlink in the image cannot make
    a host file be read) and read only if it is a regular file (a FIFO there would block open(2)).
    """
    try:
        fd = rootfs.open_in_root(root, "/etc/passwd")
    except OSError:
        return "/"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "/"
        with open(f"/proc/self/fd/{fd}", errors="replace") as passwd:  # reopens the O_PATH descriptor
            lines = passwd.read().splitlines()
    finally:
        os.close(fd)
    for line in lines:
        fields = line.split(":")
        if len(fields) >= 6 and fields[2] == str(uid):
            return fields[5] or "/"
    return "/"


def _short_name(container_id: str) -> str:
    """The container's name in messages and in its /etc/hosts: the id, or docker's short form (12
    characters) of an id longer than a host name may be (63; docker's ids are 64 hex digits)."""
    return container_id if len(container_id) <= 63 else container_id[:12]


def _mount(mount: dict, bundle: Path) -> Mount:
    """One `mounts` entry; a bind mount gets type "bind" and a source resolved against the bundle."""
    options = list(mount.get("options", []))
    if is_bind(mount):
        return Mount(mount["destination"], "bind", str(bundle / mount["source"]), options)
    return Mount(mount["destination"], mount["type"], mount.get("source", ""), options)


def _process_settings(process: dict, linux: dict) -> ProcessSettings:
    user = process.get("user", {})
    capabilities = process.get("capabilities")
    return ProcessSettings(
        uid=user.get("uid", 0), gid=user.get("gid", 0), additional_gids=list(user.get("additionalGids", [])),
        capabilities=None if capabilities is None else {
            name: list(capabilities.get(name, []))
            for name in ("bounding", "effective", "inheritable", "permitted", "ambient")},
        no_new_privileges=process.get("noNewPrivileges", False),
        rlimits=[(rlimit["type"], rlimit["soft"], rlimit["hard"]) for rlimit in process.get("rlimits", [])],
        oom_score_adj=process.get("oomScoreAdj"),
        seccomp=copy.deepcopy(linux.get("seccomp")),
        umask=user.get("umask"),
    )


def limits_from_resources(resources: dict) -> Limits:
    """linux.resources -> Limits. 0 and -1 mean "not set" or "unlimited": both become None."""
    memory, cpu = resources.get("memory", {}), resources.get("cpu", {})
    limit, swap = memory.get("limit", 0), memory.get("swap", 0)
    quota, period = cpu.get("quota", 0), cpu.get("period", 0)
    pids = resources.get("pids", {}).get("limit", 0)
    block_io = resources.get("blockIO", {})
    rates: dict[str, dict[str, int]] = {}
    for key, name in _THROTTLES.items():
        for throttle in block_io.get(key, []):
            if throttle["rate"] > 0:  # a rate of 0 removes the throttle
                rates.setdefault(f"{throttle['major']}:{throttle['minor']}", {})[name] = throttle["rate"]
    try:
        return Limits(
            memory_max=limit if limit > 0 else None,
            memory_swap_max=swap - limit if swap > 0 else None,  # OCI's swap is memory + swap together
            cpu_quota_us=quota if quota > 0 else None,
            cpu_period_us=period or 100_000,
            cpu_shares=cpu.get("shares") or None,
            pids_max=pids if pids > 0 else None,
            io_weight=block_io.get("weight") or None,
            io_throttles=tuple(DeviceThrottle(device, **values) for device, values in rates.items()),
            cpuset_cpus=cpu.get("cpus") or None,
            cpuset_mems=cpu.get("mems") or None,
        )
    except InvalidArgumentError as e:
        raise InvalidConfigError("linux.resources", str(e)) from None
