"""Checking an OCI config.json before any of it reaches the kernel: every error names its JSON path.

The OCI runtime spec (opencontainers/runtime-spec: config.md, config-linux.md) describes a container
as one JSON document. A runtime MUST refuse values it cannot honour and MUST ignore properties it does
not know (annotations, other platforms' sections, fields from a newer minor version). This module
checks, in two passes:

1. shape: every known property has its JSON type and range (uint32 for ids, int64 for memory, an
   absolute path where the spec says so). The table `CONFIG` below reads like the spec's JSON schema.
   Trap: in Python `True` is an `int` (isinstance(True, int)), so the integer check excludes bool
   explicitly: `"uid": true` is refused, as is `1.0`.
2. meaning: the rules that protect the host or that the kernel would refuse later with a bare
   EINVAL, checked here with a message that says what to change:
   - a host name needs a UTS namespace of the container's own, else sethostname(2) renames the host;
   - a sysctl is written under /proc/sys, and only some are per-namespace (net.* in the network
     namespace, kernel.shm*/sem/msg* and fs.mqueue.* in the IPC namespace, kernel.domainname in UTS):
     writing any other one would change the host for everyone, so it is refused, as runc does;
   - uid/gid mappings (written to /proc/PID/uid_map) only mean something with a new user namespace,
     and a new user namespace without mappings leaves every id unmapped (nobody, 65534);
   - setrlimit(2) refuses a soft limit above the hard one; oom_score_adj is -1000..1000; a CFS quota
     below 1 ms and a period outside 1 ms..1 s are refused by the cgroup files (EINVAL);
   - a namespace kind listed twice is an error (the spec says so: which one would win?).

    validate(config)   # raises InvalidConfigError: "config.json: linux.namespaces[2].type: unknown ..."
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from ..errors import InvalidArgumentError
from .capabilities import CAPABILITIES
from .process import RLIMITS

SUPPORTED_VERSIONS = "1.0.0 to 1.2.x"
NAMESPACE_TYPES = ("pid", "network", "mount", "ipc", "uts", "user", "cgroup", "time")
THROTTLES = ("throttleReadBpsDevice", "throttleWriteBpsDevice", "throttleReadIOPSDevice",
             "throttleWriteIOPSDevice")
HOOK_KINDS = ("prestart", "createRuntime", "createContainer", "startContainer", "poststart", "poststop")
SECCOMP_ACTIONS = ("SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP",
                   "SCMP_ACT_ERRNO", "SCMP_ACT_TRACE", "SCMP_ACT_ALLOW", "SCMP_ACT_LOG", "SCMP_ACT_NOTIFY")
SECCOMP_OPERATORS = ("SCMP_CMP_NE", "SCMP_CMP_LT", "SCMP_CMP_LE", "SCMP_CMP_EQ", "SCMP_CMP_GE", "SCMP_CMP_GT",
                     "SCMP_CMP_MASKED_EQ")
SECCOMP_FLAGS = ("SECCOMP_FILTER_FLAG_TSYNC", "SECCOMP_FILTER_FLAG_LOG", "SECCOMP_FILTER_FLAG_SPEC_ALLOW",
                 "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV")
SECCOMP_ARCHES = tuple(f"SCMP_ARCH_{arch}" for arch in (
    "X86", "X86_64", "X32", "ARM", "AARCH64", "MIPS", "MIPS64", "MIPS64N32", "MIPSEL", "MIPSEL64",
    "MIPSEL64N32", "PPC", "PPC64", "PPC64LE", "S390", "S390X", "PARISC", "PARISC64", "RISCV64",
    "LOONGARCH64"))
PROPAGATIONS = ("private", "rprivate", "shared", "rshared", "slave", "rslave", "unbindable", "runbindable")
# sysctls that live in a namespace, and which one (runc's list); everything else is host-wide.
IPC_SYSCTLS = ("kernel.msgmax", "kernel.msgmnb", "kernel.msgmni", "kernel.sem", "kernel.shmall",
               "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced")
HOST_NAME_MAX = 64  # bytes: sethostname(2) refuses longer names (EINVAL)

_VERSION = re.compile(r"^(\d+)\.(\d+)\.(\d+)(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_CPU_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")
_SYSCTL_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")


class InvalidConfigError(InvalidArgumentError):
    """A config.json the runtime refuses; `path` is the JSON path at fault, e.g. "process.args[0]"."""

    def __init__(self, path: str, message: str):
        super().__init__(f"config.json: {path}: {message}")
        self.path = path


# --- shapes: one checker per JSON type, composed like the spec's schema ------------------------------
Check = Callable[[Any, str], None]


def _json_kind(value: Any) -> str:
    kinds = {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _got(value: Any) -> str:
    shown = json.dumps(value, default=repr)
    return f"got {_json_kind(value)} {shown if len(shown) <= 40 else shown[:37] + '...'}"


def integer(low: int, high: int) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, int) or isinstance(value, bool):
            raise InvalidConfigError(path, f"must be an integer, {_got(value)}")
        if not low <= value <= high:
            raise InvalidConfigError(path, f"must be in {low}..{high}, got {value}")
    return check


UINT32 = integer(0, 2**32 - 1)
UINT64 = integer(0, 2**64 - 1)
INT32 = integer(-(2**31), 2**31 - 1)
INT64 = integer(-(2**63), 2**63 - 1)


def boolean(value: Any, path: str) -> None:
    if type(value) is not bool:
        raise InvalidConfigError(path, f"must be true or false, {_got(value)}")


def string(*, nonempty: bool = False, absolute: bool = False, choices: tuple[str, ...] = (),
           what: str = "value") -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, str):
            raise InvalidConfigError(path, f"must be a string, {_got(value)}")
        if "\0" in value:
            raise InvalidConfigError(path, "must not contain a NUL character")
        if nonempty and not value:
            raise InvalidConfigError(path, "must be a non-empty string")
        if absolute and not value.startswith("/"):
            raise InvalidConfigError(path, f"must be an absolute path, got {value!r}")
        if choices and value not in choices:
            expected = ", ".join(choices)
            raise InvalidConfigError(path, f"unknown {what} {value!r} (expected one of: {expected})")
    return check


STRING = string()
ABSOLUTE = string(nonempty=True, absolute=True)


def array(item: Check, *, min_items: int = 0) -> Check:
    def check(value: Any, path: str) -> None:
        if not isinstance(value, list):
            raise InvalidConfigError(path, f"must be an array, {_got(value)}")
        if len(value) < min_items:
            raise InvalidConfigError(path, f"must hold at least {min_items} item(s)")
        for index, element in enumerate(value):
            item(element, f"{path}[{index}]")
    return check


def string_map(value: Any, path: str) -> None:
    """An object whose keys are non-empty and whose values are strings (annotations, sysctl, unified)."""
    if not isinstance(value, dict):
        raise InvalidConfigError(path, f"must be an object of strings, {_got(value)}")
    for key, element in value.items():
        if not key:
            raise InvalidConfigError(path, "keys must be non-empty strings")
        STRING(element, f"{path}[{json.dumps(key)}]")


def obj(fields: dict[str, Check], *, required: tuple[str, ...] = ()) -> Check:
    """An object with these known properties; unknown ones are ignored, as the spec requires."""
    def check(value: Any, path: str) -> None:
        if not isinstance(value, dict):
            raise InvalidConfigError(path, f"must be an object, {_got(value)}")
        for key in required:
            if key not in value:
                raise InvalidConfigError(join(path, key), "missing")
        for key, field_check in fields.items():
            if key in value:
                field_check(value[key], join(path, key))
    return check


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


# --- the schema: config.md and config-linux.md, the properties this runtime reads or type-checks ----
_HOOK = obj({"path": ABSOLUTE, "args": array(STRING), "env": array(STRING), "timeout": integer(1, 2**31 - 1)},
            required=("path",))
_ID_MAPPING = obj({"containerID": UINT32, "hostID": UINT32, "size": UINT32},
                  required=("containerID", "hostID", "size"))
_MOUNT = obj({"destination": ABSOLUTE, "source": STRING, "type": STRING, "options": array(STRING),
              "uidMappings": array(_ID_MAPPING), "gidMappings": array(_ID_MAPPING)},
             required=("destination",))
_PROCESS = obj({
    "terminal": boolean,
    "consoleSize": obj({"height": UINT32, "width": UINT32}, required=("height", "width")),
    "cwd": ABSOLUTE,
    "env": array(STRING),
    "args": array(STRING, min_items=1),
    "user": obj({"uid": UINT32, "gid": UINT32, "umask": UINT32, "additionalGids": array(UINT32)},
                required=("uid", "gid")),
    "capabilities": obj({name: array(STRING) for name in
                         ("bounding", "effective", "inheritable", "permitted", "ambient")}),
    "noNewPrivileges": boolean,
    "rlimits": array(obj({"type": STRING, "soft": UINT64, "hard": UINT64},
                         required=("type", "soft", "hard"))),
    "oomScoreAdj": integer(-1000, 1000),
    "apparmorProfile": STRING,
    "selinuxLabel": STRING,
}, required=("cwd", "args"))
_THROTTLE = obj({"major": UINT32, "minor": UINT32, "rate": UINT64}, required=("major", "minor", "rate"))
_RESOURCES = obj({
    "devices": array(obj({"allow": boolean, "type": string(choices=("a", "b", "c"), what="device type"),
                          "major": INT64, "minor": INT64, "access": STRING}, required=("allow",))),
    "memory": obj({name: INT64 for name in ("limit", "reservation", "swap", "kernel", "kernelTCP")}
                  | {"swappiness": integer(0, 100), "disableOOMKiller": boolean, "useHierarchy": boolean}),
    "cpu": obj({"shares": UINT64, "quota": INT64, "burst": UINT64, "period": UINT64, "realtimeRuntime": INT64,
                "realtimePeriod": UINT64, "cpus": STRING, "mems": STRING, "idle": INT64}),
    "pids": obj({"limit": INT64}),
    "blockIO": obj({"weight": integer(0, 65535), "leafWeight": integer(0, 65535),
                    "weightDevice": array(obj({"major": INT64, "minor": INT64}, required=("major", "minor")))}
                   | {name: array(_THROTTLE) for name in THROTTLES}),
    "hugepageLimits": array(obj({"pageSize": STRING, "limit": UINT64}, required=("pageSize", "limit"))),
    "unified": string_map,
    "oomScoreAdj": integer(-1000, 1000),
})
_SECCOMP = obj({
    "defaultAction": string(choices=SECCOMP_ACTIONS, what="seccomp action"),
    "defaultErrnoRet": UINT32,
    "architectures": array(string(choices=SECCOMP_ARCHES, what="architecture")),
    "flags": array(string(choices=SECCOMP_FLAGS, what="seccomp flag")),
    "listenerPath": STRING,
    "syscalls": array(obj({
        "names": array(string(nonempty=True), min_items=1),
        "action": string(choices=SECCOMP_ACTIONS, what="seccomp action"),
        "errnoRet": UINT32,
        "args": array(obj({"index": UINT32, "value": UINT64, "valueTwo": UINT64,
                           "op": string(choices=SECCOMP_OPERATORS, what="operator")},
                          required=("index", "value", "op"))),
    }, required=("names", "action"))),
}, required=("defaultAction",))
_LINUX = obj({
    "namespaces": array(obj({"type": string(choices=NAMESPACE_TYPES, what="namespace type"),
                             "path": ABSOLUTE}, required=("type",))),
    "uidMappings": array(_ID_MAPPING),
    "gidMappings": array(_ID_MAPPING),
    "devices": array(obj({"type": string(choices=("c", "b", "u", "p"), what="device type"),
                          "path": ABSOLUTE, "major": INT64, "minor": INT64, "fileMode": UINT32,
                          "uid": UINT32, "gid": UINT32}, required=("type", "path"))),
    "resources": _RESOURCES,
    "cgroupsPath": STRING,
    "sysctl": string_map,
    "seccomp": _SECCOMP,
    "rootfsPropagation": string(choices=PROPAGATIONS, what="propagation"),
    "maskedPaths": array(ABSOLUTE),
    "readonlyPaths": array(ABSOLUTE),
    "mountLabel": STRING,
    "timeOffsets": obj({}),
})
CONFIG = obj({
    "ociVersion": string(nonempty=True),
    "root": obj({"path": string(nonempty=True), "readonly": boolean}, required=("path",)),
    "mounts": array(_MOUNT),
    "process": _PROCESS,
    "hostname": STRING,
    "domainname": STRING,
    "hooks": obj({kind: array(_HOOK) for kind in HOOK_KINDS}),
    "annotations": string_map,
    "linux": _LINUX,
}, required=("ociVersion", "root", "process"))


# --- meaning: the rules a schema cannot say -------------------------------------------------------
def _version(config: dict) -> None:
    version = config["ociVersion"]
    match = _VERSION.match(version)
    if not match:
        raise InvalidConfigError("ociVersion", f"{version!r} is not a SemVer version such as '1.0.2'")
    if (int(match[1]), int(match[2])) not in {(1, 0), (1, 1), (1, 2)}:
        raise InvalidConfigError("ociVersion", f"unsupported version {version!r}: this runtime reads "
                                               f"{SUPPORTED_VERSIONS}")


def _process(config: dict) -> None:
    process = config["process"]
    string(nonempty=True)(process["args"][0], "process.args[0]")
    for index, pair in enumerate(process.get("env", [])):
        if not pair.partition("=")[0] or "=" not in pair:
            raise InvalidConfigError(f"process.env[{index}]", f"must be KEY=VALUE, got {pair!r}")
    for name, names in process.get("capabilities", {}).items():
        for index, cap in enumerate(names):
            if cap not in CAPABILITIES:
                raise InvalidConfigError(f"process.capabilities.{name}[{index}]",
                                         f"unknown capability {cap!r} (see capabilities(7): CAP_CHOWN, ...)")
    seen: dict[str, int] = {}
    for index, rlimit in enumerate(process.get("rlimits", [])):
        path = f"process.rlimits[{index}]"
        if rlimit["type"] not in RLIMITS:
            raise InvalidConfigError(f"{path}.type", f"unknown rlimit {rlimit['type']!r} (see getrlimit(2))")
        if rlimit["type"] in seen:
            raise InvalidConfigError(f"{path}.type", f"duplicate {rlimit['type']} (also at "
                                                     f"process.rlimits[{seen[rlimit['type']]}])")
        seen[rlimit["type"]] = index
        if rlimit["soft"] > rlimit["hard"]:
            raise InvalidConfigError(f"{path}.soft", f"{rlimit['soft']} is above the hard limit "
                                                     f"{rlimit['hard']} (setrlimit(2) refuses it)")


def _namespaces(config: dict) -> None:
    linux = config.get("linux", {})
    seen: dict[str, int] = {}
    for index, namespace in enumerate(linux.get("namespaces", [])):
        kind = namespace["type"]
        if kind in seen:
            first = f"linux.namespaces[{seen[kind]}]"
            raise InvalidConfigError(f"linux.namespaces[{index}].type",
                                     f"duplicate namespace type {kind!r} (also at {first})")
        seen[kind] = index
    hostname = config.get("hostname", "")
    if hostname and "uts" not in seen:
        raise InvalidConfigError("hostname", 'setting a host name needs a UTS namespace of the container\'s '
                                             'own: add {"type": "uts"} to linux.namespaces')
    if len(hostname.encode()) > HOST_NAME_MAX:
        raise InvalidConfigError("hostname", f"longer than {HOST_NAME_MAX} bytes (sethostname(2) refuses it)")
    user = linux.get("namespaces", [])[seen["user"]] if "user" in seen else None
    for key in ("uidMappings", "gidMappings"):
        if linux.get(key) and user is None:
            raise InvalidConfigError(f"linux.{key}", 'id mappings need a user namespace: add '
                                                     '{"type": "user"} to linux.namespaces')
        if user is not None and "path" not in user and not linux.get(key):
            raise InvalidConfigError(f"linux.{key}", "missing: a new user namespace needs mappings, else "
                                                     "every id in it is unmapped (shown as 65534)")


def _mounts(config: dict) -> None:
    for index, mount in enumerate(config.get("mounts", [])):
        path = f"mounts[{index}]"
        if is_bind(mount):
            if not mount.get("source"):
                raise InvalidConfigError(f"{path}.source", "missing: a bind mount needs the path it binds")
        elif not mount.get("type"):
            raise InvalidConfigError(f"{path}.type", 'missing: give a filesystem type (tmpfs, proc, ...), or '
                                                     '"bind" in options for a bind mount')


def is_bind(mount: dict) -> bool:
    """A bind mount, in the spec's words: `bind` or `rbind` among the options (or the type "bind")."""
    return mount.get("type") == "bind" or bool({"bind", "rbind"} & set(mount.get("options", [])))


def _sysctls(config: dict) -> None:
    linux = config.get("linux", {})
    kinds = {namespace["type"] for namespace in linux.get("namespaces", [])}
    for name in linux.get("sysctl", {}):
        path = f"linux.sysctl[{json.dumps(name)}]"
        if not _SYSCTL_NAME.match(name):
            raise InvalidConfigError(path, "not a sysctl name such as net.ipv4.ip_forward")
        if name in IPC_SYSCTLS or name.startswith("fs.mqueue."):
            needed = "ipc"
        elif name.startswith("net."):
            needed = "network"
        elif name == "kernel.domainname":
            needed = "uts"
        elif name == "kernel.hostname":
            raise InvalidConfigError(path, "set the host name with the top-level hostname field instead")
        else:
            raise InvalidConfigError(path, "not in a namespace of its own: writing it would change the host")
        if needed not in kinds:
            raise InvalidConfigError(path, f'belongs to the {needed} namespace: add {{"type": "{needed}"}} '
                                           f"to linux.namespaces, or it would change the host")


def _resources(config: dict) -> None:
    resources = config.get("linux", {}).get("resources", {})
    base = "linux.resources"
    memory = resources.get("memory", {})
    for key in ("limit", "swap"):
        if memory.get(key, 0) < -1:
            raise InvalidConfigError(f"{base}.memory.{key}", "must be a number of bytes, or -1 for no limit")
    limit, swap = memory.get("limit", 0), memory.get("swap", 0)
    if swap > 0 and limit <= 0:
        raise InvalidConfigError(f"{base}.memory.swap", "needs memory.limit too: it is memory + swap")
    if swap > 0 and swap < limit:
        raise InvalidConfigError(f"{base}.memory.swap", f"{swap} is below memory.limit {limit}: it is memory "
                                                        f"+ swap together, so it must be at least the limit")
    cpu = resources.get("cpu", {})
    _range_unless_unset(cpu.get("quota", 0), 1_000, 2**63 - 1, f"{base}.cpu.quota", "µs: at least 1 ms")
    _range_unless_unset(cpu.get("period", 0), 1_000, 1_000_000, f"{base}.cpu.period", "µs: 1 ms to 1 s")
    _range_unless_unset(cpu.get("shares", 0), 2, 262_144, f"{base}.cpu.shares", "(1024 is the default)")
    for key in ("cpus", "mems"):
        if cpu.get(key) and not _CPU_LIST.match(cpu[key]):
            raise InvalidConfigError(f"{base}.cpu.{key}", f"must be a list like '0-1,3', got {cpu[key]!r}")
    weight = resources.get("blockIO", {}).get("weight", 0)
    _range_unless_unset(weight, 10, 1_000, f"{base}.blockIO.weight", "")
    for index, rule in enumerate(resources.get("devices", [])):
        if set(rule.get("access", "")) - set("rwm"):
            raise InvalidConfigError(f"{base}.devices[{index}].access",
                                     f"must be made of r, w and m, got {rule['access']!r}")


def _range_unless_unset(value: int, low: int, high: int, path: str, unit: str) -> None:
    """Check a cgroup value where 0 and -1 mean "not set" (runc's reading of Go's zero values)."""
    if value not in (0, -1) and not low <= value <= high:
        raise InvalidConfigError(path, f"must be {low}..{high} {unit}".rstrip() + f", or unset; got {value}")


def _devices(config: dict) -> None:
    for index, device in enumerate(config.get("linux", {}).get("devices", [])):
        missing = [key for key in ("major", "minor") if key not in device]
        if device["type"] != "p" and missing:
            raise InvalidConfigError(f"linux.devices[{index}].{missing[0]}",
                                     f"missing: a {device['type']!r} device needs it (a FIFO has none)")


_RULES = (_version, _process, _namespaces, _mounts, _sysctls, _resources, _devices)


def validate(config: Any) -> None:
    """Raise InvalidConfigError, naming the JSON path at fault, unless `config` is a usable config.json."""
    if not isinstance(config, dict):
        raise InvalidConfigError("(top level)", f"must be a JSON object, {_got(config)}")
    CONFIG(config, "")
    for rule in _RULES:
        rule(config)
