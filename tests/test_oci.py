"""OCI config.json: runc's default, validation with JSON paths, the mapping to ContainerSpec, and hooks."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from mini_container import namespaces, syscalls
from mini_container.cgroups import DeviceThrottle, Limits
from mini_container.errors import InvalidArgumentError
from mini_container.runtime import hooks, oci
from mini_container.runtime.hooks import Hook, HookError
from mini_container.runtime.oci import InvalidConfigError
from mini_container.runtime.spec import Mount


@pytest.fixture
def scratch():
    with tempfile.TemporaryDirectory(prefix="test-oci-") as directory:
        yield Path(directory)


def runc_spec(bundle: Path, *flags: str) -> dict:
    """What Debian's runc writes for `runc spec [flags]` in `bundle`."""
    if shutil.which("runc") is None:
        pytest.fail("runc is not installed: apt-get install runc")
    subprocess.run(["runc", "spec", "--bundle", str(bundle), *flags], check=True)
    return json.loads((bundle / "config.json").read_text())


@pytest.fixture
def bundle(scratch) -> Path:
    """A bundle directory with an empty rootfs/ and no config.json yet."""
    (scratch / "rootfs").mkdir()
    return scratch


# --- the default config: runc's, field by field --------------------------------------------------------
@pytest.mark.parametrize("flags, rootless", [((), False), (("--rootless",), True)], ids=["spec", "rootless"])
def test_default_config_is_what_runc_spec_writes(bundle, flags, rootless):
    theirs = runc_spec(bundle, *flags)
    ours = oci.default_config(terminal=True, rootless=rootless)
    for key in ("ociVersion", "process", "root", "hostname", "mounts", "linux"):
        assert ours[key] == theirs[key], key
    for key in ("terminal", "user", "args", "env", "cwd", "capabilities", "rlimits", "noNewPrivileges"):
        assert ours["process"][key] == theirs["process"][key], f"process.{key}"
    for key in theirs["linux"]:
        assert ours["linux"][key] == theirs["linux"][key], f"linux.{key}"
    assert ours == theirs
    assert list(ours["linux"]) == list(theirs["linux"])  # same key order: the files diff line by line


def test_default_config_without_terminal_differs_only_there(bundle):
    theirs = runc_spec(bundle)
    theirs["process"]["terminal"] = False
    assert oci.default_config() == theirs


def test_runc_defaults_validate(bundle):
    oci.validate(runc_spec(bundle))
    oci.validate(oci.default_config(rootless=True))


@pytest.mark.parametrize("version", ["1.0.0", "1.0.2-dev", "1.1.0", "1.2.0", "1.2.1", "1.2.0+build.5"])
def test_supported_versions(version):
    config = oci.default_config()
    config["ociVersion"] = version
    oci.validate(config)


def test_unknown_properties_are_ignored():
    config = oci.default_config()
    config["annotations"] = {"org.example.key": "value", "empty": ""}
    config["vm"] = {"hypervisor": {"path": "/usr/bin/qemu"}}
    config["x-something-new"] = [1, 2, 3]
    config["process"]["selinuxLabel"] = "system_u:system_r:container_t:s0"
    config["process"]["somethingFromTheFuture"] = {"a": 1}
    config["linux"]["intelRdt"] = {"closID": "guaranteed"}
    oci.validate(config)


# --- invalid configs: each names its JSON path ----------------------------------------------------------
def put(where: tuple, value) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        node = config
        for key in where[:-1]:
            node = node.setdefault(key, {}) if isinstance(node, dict) else node[key]
        node[where[-1]] = value
    return mutate


def drop(where: tuple) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        node = config
        for key in where[:-1]:
            node = node[key]
        del node[where[-1]]
    return mutate


def both(*mutations: Callable[[dict], None]) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        for mutation in mutations:
            mutation(config)
    return mutate


def add_namespace(entry: dict) -> Callable[[dict], None]:
    return lambda config: config["linux"]["namespaces"].append(entry)


def without_namespace(kind: str) -> Callable[[dict], None]:
    def mutate(config: dict) -> None:
        config["linux"]["namespaces"] = [ns for ns in config["linux"]["namespaces"] if ns["type"] != kind]
    return mutate


MAPPING = [{"containerID": 0, "hostID": 100000, "size": 65536}]
NOFILE = {"type": "RLIMIT_NOFILE", "soft": 1, "hard": 1}
INVALID = [
    # (mutation of runc's default config, the JSON path at fault, a piece of the message)
    (drop(("ociVersion",)), "ociVersion", "missing"),
    (put(("ociVersion",), 1), "ociVersion", "must be a string, got number 1"),
    (put(("ociVersion",), "one"), "ociVersion", "not a SemVer version"),
    (put(("ociVersion",), "2.0.0"), "ociVersion", "unsupported version '2.0.0'"),
    (put(("ociVersion",), "1.3.0"), "ociVersion", "unsupported version '1.3.0'"),
    (put(("ociVersion",), "0.5.0-dev"), "ociVersion", "unsupported version"),
    (drop(("root",)), "root", "missing"),
    (drop(("root", "path")), "root.path", "missing"),
    (put(("root", "path"), ""), "root.path", "must be a non-empty string"),
    (put(("root", "readonly"), "yes"), "root.readonly", "must be true or false, got string \"yes\""),
    (put(("root",), "rootfs"), "root", "must be an object"),
    (drop(("process",)), "process", "missing"),
    (drop(("process", "args")), "process.args", "missing"),
    (put(("process", "args"), []), "process.args", "at least 1 item"),
    (put(("process", "args"), "sh"), "process.args", "must be an array"),
    (put(("process", "args", 0), ""), "process.args[0]", "must be a non-empty string"),
    (put(("process", "args", 0), 5), "process.args[0]", "must be a string, got number 5"),
    (put(("process", "args"), ["sh", None]), "process.args[1]", "must be a string, got null"),
    (put(("process", "args"), ["sh", "a\0b"]), "process.args[1]", "NUL"),
    (drop(("process", "cwd")), "process.cwd", "missing"),
    (put(("process", "cwd"), "tmp"), "process.cwd", "must be an absolute path"),
    (put(("process", "env"), "PATH=/bin"), "process.env", "must be an array"),
    (put(("process", "env", 1), "TERM"), "process.env[1]", "must be KEY=VALUE"),
    (put(("process", "env", 0), "=value"), "process.env[0]", "must be KEY=VALUE"),
    (put(("process", "terminal"), 1), "process.terminal", "must be true or false"),
    (put(("process", "consoleSize"), {"height": 25}), "process.consoleSize.width", "missing"),
    (drop(("process", "user", "gid")), "process.user.gid", "missing"),
    (put(("process", "user", "uid"), -1), "process.user.uid", "must be in 0..4294967295, got -1"),
    (put(("process", "user", "uid"), True), "process.user.uid", "must be an integer, got boolean true"),
    (put(("process", "user", "gid"), 1.5), "process.user.gid", "must be an integer, got number 1.5"),
    (put(("process", "user", "additionalGids"), [1, "2"]), "process.user.additionalGids[1]",
     "must be an integer"),
    (put(("process", "user", "umask"), -18), "process.user.umask", "must be in 0..4294967295"),
    (put(("process", "capabilities", "bounding", 1), "CAP_KILLER"), "process.capabilities.bounding[1]",
     "unknown capability 'CAP_KILLER'"),
    (put(("process", "capabilities", "effective"), "CAP_KILL"), "process.capabilities.effective",
     "must be an array"),
    (put(("process", "capabilities", "inheritable"), ["chown"]), "process.capabilities.inheritable[0]",
     "unknown capability"),
    (put(("process", "noNewPrivileges"), "true"), "process.noNewPrivileges", "must be true or false"),
    (put(("process", "rlimits", 0, "type"), "RLIMIT_FOO"), "process.rlimits[0].type", "unknown rlimit"),
    (put(("process", "rlimits", 0, "soft"), 2048), "process.rlimits[0].soft", "above the hard limit 1024"),
    (put(("process", "rlimits", 0, "soft"), -1), "process.rlimits[0].soft", "must be in 0.."),
    (drop(("process", "rlimits", 0, "hard")), "process.rlimits[0].hard", "missing"),
    (put(("process", "rlimits"), [NOFILE, NOFILE]), "process.rlimits[1].type",
     "duplicate RLIMIT_NOFILE (also at process.rlimits[0])"),
    (put(("process", "oomScoreAdj"), 1001), "process.oomScoreAdj", "must be in -1000..1000"),
    (put(("hostname",), 7), "hostname", "must be a string"),
    (put(("hostname",), "h" * 65), "hostname", "longer than 64 bytes"),
    (without_namespace("uts"), "hostname", "needs a UTS namespace"),
    (put(("mounts",), {"/proc": "proc"}), "mounts", "must be an array, got object"),
    (put(("mounts", 0), ["proc"]), "mounts[0]", "must be an object, got array"),
    (drop(("mounts", 0, "destination")), "mounts[0].destination", "missing"),
    (put(("mounts", 1, "destination"), "dev"), "mounts[1].destination", "must be an absolute path"),
    (put(("mounts", 2, "options"), "nosuid"), "mounts[2].options", "must be an array"),
    (put(("mounts", 2, "options", 3), 666), "mounts[2].options[3]", "must be a string"),
    (drop(("mounts", 3, "type")), "mounts[3].type", "missing"),
    (put(("mounts", 4, "source"), 5), "mounts[4].source", "must be a string"),
    (lambda c: c["mounts"].append({"destination": "/data", "options": ["rbind"]}), "mounts[7].source",
     "a bind mount needs"),
    (put(("linux",), "linux"), "linux", "must be an object"),
    (put(("linux", "namespaces"), {"pid": {}}), "linux.namespaces", "must be an array"),
    (put(("linux", "namespaces", 2, "type"), "foo"), "linux.namespaces[2].type",
     "unknown namespace type 'foo'"),
    (put(("linux", "namespaces", 1, "type"), "net"), "linux.namespaces[1].type",
     "unknown namespace type 'net' (expected one of: pid, network, mount"),
    (drop(("linux", "namespaces", 0, "type")), "linux.namespaces[0].type", "missing"),
    (put(("linux", "namespaces", 1, "path"), "var/run/netns/x"), "linux.namespaces[1].path",
     "must be an absolute path"),
    (add_namespace({"type": "pid"}), "linux.namespaces[5].type",
     "duplicate namespace type 'pid' (also at linux.namespaces[0])"),
    (add_namespace({"type": "user"}), "linux.uidMappings", "missing: a new user namespace needs mappings"),
    (both(add_namespace({"type": "user"}), put(("linux", "uidMappings"), MAPPING)), "linux.gidMappings",
     "missing"),
    (put(("linux", "uidMappings"), MAPPING), "linux.uidMappings", "need a user namespace"),
    (put(("linux", "gidMappings"), [{"containerID": 0, "hostID": 0}]), "linux.gidMappings[0].size",
     "missing"),
    (put(("linux", "uidMappings"), [{"containerID": 0, "hostID": 2**32, "size": 1}]),
     "linux.uidMappings[0].hostID", "must be in 0..4294967295"),
    (put(("linux", "maskedPaths", 0), "proc/kcore"), "linux.maskedPaths[0]", "must be an absolute path"),
    (put(("linux", "readonlyPaths"), "/proc/sys"), "linux.readonlyPaths", "must be an array"),
    (put(("linux", "sysctl"), ["net.ipv4.ip_forward=1"]), "linux.sysctl", "must be an object of strings"),
    (put(("linux", "sysctl"), {"kernel.shmmax": 1}), 'linux.sysctl["kernel.shmmax"]', "must be a string"),
    (put(("linux", "sysctl"), {"vm.swappiness": "1"}), 'linux.sysctl["vm.swappiness"]',
     "writing it would change the host"),
    (put(("linux", "sysctl"), {"kernel.hostname": "x"}), 'linux.sysctl["kernel.hostname"]',
     "top-level hostname"),
    (put(("linux", "sysctl"), {"net/../../x": "1"}), 'linux.sysctl["net/../../x"]', "not a sysctl name"),
    (both(without_namespace("network"), put(("linux", "sysctl"), {"net.ipv4.ip_forward": "1"})),
     'linux.sysctl["net.ipv4.ip_forward"]', "belongs to the network namespace"),
    (both(without_namespace("ipc"), put(("linux", "sysctl"), {"fs.mqueue.msg_max": "20"})),
     'linux.sysctl["fs.mqueue.msg_max"]', "belongs to the ipc namespace"),
    (put(("linux", "resources"), []), "linux.resources", "must be an object"),
    (put(("linux", "resources", "memory", "limit"), "64m"), "linux.resources.memory.limit",
     "must be an integer, got string \"64m\""),
    (put(("linux", "resources", "memory", "limit"), -2), "linux.resources.memory.limit", "-1 for no limit"),
    (put(("linux", "resources", "memory"), {"limit": 100 << 20, "swap": 50 << 20}),
     "linux.resources.memory.swap", "is below memory.limit"),
    (put(("linux", "resources", "memory"), {"swap": 100 << 20}), "linux.resources.memory.swap",
     "needs memory.limit too"),
    (put(("linux", "resources", "memory", "swappiness"), 101), "linux.resources.memory.swappiness",
     "must be in 0..100"),
    (put(("linux", "resources", "cpu", "quota"), 500), "linux.resources.cpu.quota", "at least 1 ms"),
    (put(("linux", "resources", "cpu", "period"), 10), "linux.resources.cpu.period", "1 ms to 1 s"),
    (put(("linux", "resources", "cpu", "shares"), 1), "linux.resources.cpu.shares", "2..262144"),
    (put(("linux", "resources", "cpu", "shares"), -5), "linux.resources.cpu.shares", "must be in 0.."),
    (put(("linux", "resources", "cpu", "cpus"), "0-"), "linux.resources.cpu.cpus", "a list like '0-1,3'"),
    (put(("linux", "resources", "pids"), {"limit": "10"}), "linux.resources.pids.limit",
     "must be an integer"),
    (put(("linux", "resources", "blockIO", "weight"), 5), "linux.resources.blockIO.weight", "10..1000"),
    (put(("linux", "resources", "blockIO", "throttleReadBpsDevice"), [{"major": 8, "minor": 0}]),
     "linux.resources.blockIO.throttleReadBpsDevice[0].rate", "missing"),
    (put(("linux", "resources", "blockIO", "throttleWriteIOPSDevice"),
         [{"major": -1, "minor": 0, "rate": 1}]),
     "linux.resources.blockIO.throttleWriteIOPSDevice[0].major", "must be in 0.."),
    (put(("linux", "resources", "devices", 0, "access"), "rwx"), "linux.resources.devices[0].access",
     "made of r, w and m"),
    (drop(("linux", "resources", "devices", 0, "allow")), "linux.resources.devices[0].allow", "missing"),
    (put(("linux", "resources", "devices", 0, "type"), "z"), "linux.resources.devices[0].type",
     "unknown device type 'z'"),
    (put(("linux", "devices"), [{"type": "c", "path": "/dev/fuse"}]), "linux.devices[0].major",
     "missing: a 'c' device needs it"),
    (put(("linux", "devices"), [{"type": "x", "path": "/dev/x"}]), "linux.devices[0].type",
     "unknown device type 'x'"),
    (put(("linux", "devices"), [{"type": "p", "path": "fifo"}]), "linux.devices[0].path",
     "must be an absolute path"),
    (put(("linux", "seccomp"), {}), "linux.seccomp.defaultAction", "missing"),
    (put(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_NOPE"}), "linux.seccomp.defaultAction",
     "unknown seccomp action 'SCMP_ACT_NOPE'"),
    (put(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ERRNO", "architectures": ["x86_64"]}),
     "linux.seccomp.architectures[0]", "unknown architecture"),
    (put(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ALLOW",
                                "syscalls": [{"names": [], "action": "SCMP_ACT_ERRNO"}]}),
     "linux.seccomp.syscalls[0].names", "at least 1 item"),
    (put(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["ptrace"]}]}),
     "linux.seccomp.syscalls[0].action", "missing"),
    (put(("linux", "seccomp"), {"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "op": "EQ"}]}]}),
     "linux.seccomp.syscalls[0].args[0].op", "unknown operator 'EQ'"),
    (put(("linux", "rootfsPropagation"), "everywhere"), "linux.rootfsPropagation", "unknown propagation"),
    (put(("linux", "cgroupsPath"), 42), "linux.cgroupsPath", "must be a string"),
    (put(("hooks",), []), "hooks", "must be an object"),
    (put(("hooks",), {"prestart": [{"path": "hook"}]}), "hooks.prestart[0].path", "must be an absolute path"),
    (put(("hooks",), {"createRuntime": [{}]}), "hooks.createRuntime[0].path", "missing"),
    (put(("hooks",), {"poststop": [{"path": "/bin/true", "timeout": 0}]}), "hooks.poststop[0].timeout",
     "must be in 1.."),
    (put(("hooks",), {"poststart": [{"path": "/bin/true", "args": "true"}]}), "hooks.poststart[0].args",
     "must be an array"),
    (put(("annotations",), {"a": 1}), 'annotations["a"]', "must be a string"),
    (put(("annotations",), {"": "x"}), "annotations", "keys must be non-empty"),
]


@pytest.mark.parametrize("mutate, path, fragment", INVALID, ids=[f"{i:03}-{case[1]}" for i, case in
                                                                  enumerate(INVALID)])
def test_invalid_config_names_its_json_path(mutate, path, fragment):
    config = oci.default_config()
    mutate(config)
    with pytest.raises(InvalidConfigError) as caught:
        oci.validate(config)
    message = str(caught.value)
    assert message.startswith(f"config.json: {path}: "), message
    assert fragment in message
    assert caught.value.path == path


def test_not_an_object_at_all():
    with pytest.raises(InvalidConfigError, match=r"^config.json: \(top level\): must be a JSON object"):
        oci.validate([oci.default_config()])


def test_load_config(bundle):
    config = oci.default_config()
    (bundle / "config.json").write_text(json.dumps(config))
    assert oci.load_config(bundle) == config


def test_load_config_errors(bundle):
    with pytest.raises(InvalidArgumentError, match="config.json: not found in the bundle .*runc spec"):
        oci.load_config(bundle)
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2",\n "root": }')
    with pytest.raises(InvalidArgumentError, match="config.json: not valid JSON at line 2 column 10"):
        oci.load_config(bundle)
    broken = oci.default_config()
    broken["mounts"][1]["destination"] = "dev"
    (bundle / "config.json").write_text(json.dumps(broken))
    with pytest.raises(InvalidConfigError, match=r"^config.json: mounts\[1\].destination: must be an abs"):
        oci.load_config(bundle)


# --- config.json -> ContainerSpec ------------------------------------------------------------------------
def test_spec_from_runc_default(bundle, scratch):
    config = runc_spec(bundle)
    config["process"]["terminal"] = False
    spec = oci.spec_from_config(config, bundle, "box", scratch / "state")
    assert (spec.id, spec.name, spec.directory, spec.lowers) == ("box", "box", scratch / "state", [])
    assert spec.command == ["sh"]
    assert spec.env == {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                        "TERM": "xterm"}
    assert (spec.cwd, spec.hostname, spec.tty, spec.interactive) == ("/", "runc", False, True)
    assert spec.namespaces == ["pid", "net", "ipc", "uts", "mnt"]
    assert oci.namespace_paths(config) == {}
    assert (spec.root_path, spec.readonly_rootfs) == (bundle / "rootfs", True)
    assert spec.mounts[0] == Mount("/proc", "proc", "proc", [])
    assert spec.mounts[2] == Mount("/dev/pts", "devpts", "devpts",
                                   ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"])
    assert [m.destination for m in spec.mounts] == ["/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue",
                                                    "/sys", "/sys/fs/cgroup"]
    assert spec.masked_paths == config["linux"]["maskedPaths"]
    assert spec.readonly_paths == config["linux"]["readonlyPaths"]
    assert spec.limits == Limits()
    assert spec.sysctls == {}
    caps = ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    process = spec.process
    assert process.capabilities == {"bounding": caps, "effective": caps, "inheritable": [], "permitted": caps,
                                    "ambient": caps}
    assert (process.uid, process.gid, process.additional_gids, process.umask) == (0, 0, [], None)
    assert process.no_new_privileges is True
    assert process.rlimits == [("RLIMIT_NOFILE", 1024, 1024)]
    assert (process.oom_score_adj, process.seccomp) == (None, None)


def full_config(bundle: Path) -> dict:
    """A config.json with every field the engine maps set to something other than its default."""
    config = oci.default_config(terminal=True)
    config["process"].update({
        "args": ["/bin/app", "--serve", ""], "env": ["A=b=c", "EMPTY=", "A=last"], "cwd": "/srv",
        "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 27], "umask": 0o027},
        "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL"], "effective": ["CAP_KILL"],
                         "inheritable": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN", "CAP_KILL"], "ambient": []},
        "noNewPrivileges": False,
        "rlimits": [{"type": "RLIMIT_NOFILE", "soft": 512, "hard": 4096},
                    {"type": "RLIMIT_CORE", "soft": 0, "hard": 0}],
        "oomScoreAdj": 500,
    })
    config["root"] = {"path": str(bundle / "rootfs"), "readonly": False}
    config["hostname"] = "app"
    config["mounts"] = [
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=16m"]},
        {"destination": "/data", "type": "none", "source": "data", "options": ["rbind", "ro"]},
        {"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts"},
    ]
    config["linux"] = {
        "namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/app"}, {"type": "ipc"},
                       {"type": "uts"}, {"type": "mount"}, {"type": "user"}, {"type": "cgroup"},
                       {"type": "time"}],
        "uidMappings": MAPPING, "gidMappings": MAPPING,
        "resources": {
            "memory": {"limit": 64 << 20, "swap": 128 << 20},
            "cpu": {"shares": 512, "quota": 50_000, "period": 200_000, "cpus": "0", "mems": "0"},
            "pids": {"limit": 50},
            "blockIO": {"weight": 500,
                        "throttleReadBpsDevice": [{"major": 8, "minor": 0, "rate": 1 << 20}],
                        "throttleReadIOPSDevice": [{"major": 8, "minor": 16, "rate": 200}],
                        "throttleWriteIOPSDevice": [{"major": 8, "minor": 0, "rate": 100},
                                                    {"major": 8, "minor": 32, "rate": 0}]},
        },
        "maskedPaths": ["/proc/kcore"],
        "readonlyPaths": ["/proc/sys"],
        "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "65536"},
        "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": 1,
                    "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW"}]},
    }
    return config


def test_spec_from_config_maps_every_field(bundle, scratch):
    config = full_config(bundle)
    spec = oci.spec_from_config(config, bundle, "app1", scratch / "state")
    assert spec.command == ["/bin/app", "--serve", ""]
    assert spec.env == {"A": "last", "EMPTY": ""}
    assert (spec.cwd, spec.hostname, spec.tty) == ("/srv", "app", True)
    assert (spec.root_path, spec.readonly_rootfs) == (bundle / "rootfs", False)
    assert spec.mounts == [Mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "size=16m"]),
                           Mount("/data", "bind", str(bundle / "data"), ["rbind", "ro"]),
                           Mount("/etc/hosts", "bind", "/etc/hosts", [])]
    assert spec.namespaces == ["pid", "net", "ipc", "uts", "mnt", "user", "cgroup", "time"]
    assert oci.namespace_paths(config) == {"net": "/var/run/netns/app"}
    assert spec.limits == Limits(
        memory_max=64 << 20, memory_swap_max=64 << 20, cpu_quota_us=50_000, cpu_period_us=200_000,
        cpu_shares=512, pids_max=50, io_weight=500, cpuset_cpus="0", cpuset_mems="0",
        io_throttles=(DeviceThrottle("8:0", read_bps=1 << 20, write_iops=100),
                      DeviceThrottle("8:16", read_iops=200)))
    assert spec.masked_paths == ["/proc/kcore"] and spec.readonly_paths == ["/proc/sys"]
    assert spec.sysctls == {"net.ipv4.ip_forward": "1", "kernel.shmmax": "65536"}
    process = spec.process
    assert (process.uid, process.gid, process.additional_gids, process.umask) == (1000, 100, [5, 27], 0o027)
    assert process.capabilities == config["process"]["capabilities"]
    assert process.no_new_privileges is False
    assert process.rlimits == [("RLIMIT_NOFILE", 512, 4096), ("RLIMIT_CORE", 0, 0)]
    assert process.oom_score_adj == 500
    assert process.seccomp == config["linux"]["seccomp"]
    assert process.seccomp is not config["linux"]["seccomp"]  # a copy: the spec owns its values


def test_unset_and_unlimited_resources_map_to_none(bundle, scratch):
    config = oci.default_config()
    config["linux"]["resources"].update({"memory": {"limit": -1, "swap": -1}, "pids": {"limit": -1},
                                         "cpu": {"quota": -1, "period": 0, "shares": 0, "cpus": ""},
                                         "blockIO": {"weight": 0}})
    assert oci.spec_from_config(config, bundle, "box", scratch / "state").limits == Limits()


def test_missing_capabilities_and_sets(bundle, scratch):
    config = oci.default_config()
    del config["process"]["capabilities"]
    assert oci.spec_from_config(config, bundle, "box", scratch / "s").process.capabilities is None
    config["process"]["capabilities"] = {"bounding": ["CAP_KILL"]}
    sets = oci.spec_from_config(config, bundle, "box", scratch / "s").process.capabilities
    assert sets == {"bounding": ["CAP_KILL"], "effective": [], "inheritable": [], "permitted": [],
                    "ambient": []}


def test_spec_from_config_needs_the_root_directory(scratch):
    with pytest.raises(InvalidConfigError, match=r"^config.json: root.path: no directory at .*/rootfs"):
        oci.spec_from_config(oci.default_config(), scratch, "box", scratch / "state")


def test_spec_from_config_validates(bundle, scratch):
    config = oci.default_config()
    config["linux"]["namespaces"][2]["type"] = "foo"
    with pytest.raises(InvalidConfigError, match=r"linux.namespaces\[2\].type: unknown namespace type 'foo'"):
        oci.spec_from_config(config, bundle, "box", scratch / "state")


# --- hooks ------------------------------------------------------------------------------------------------
STATE = {"ociVersion": "1.0.2-dev", "id": "box", "status": "creating", "pid": 4242, "bundle": "/srv/box",
         "annotations": {"org.example": "yes"}}


def script(directory: Path, name: str, body: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_hook_reads_the_state_on_stdin(scratch):
    out = scratch / "state.json"
    record = 'cat > "$1"; tr "\\0" " " < /proc/$$/cmdline > "$1.argv"; env > "$1.env"'
    hook = Hook("/bin/sh", ("hook-argv0", "-c", record, "sh", str(out)), ("FOO=bar", "X=y=z"))
    hooks.run_hooks("createRuntime", [hook], STATE)
    assert json.loads(out.read_text()) == STATE
    assert Path(f"{out}.argv").read_text() == f"hook-argv0 -c {record} sh {out} "  # args is the whole argv
    env = Path(f"{out}.env").read_text().splitlines()
    assert "FOO=bar" in env and "X=y=z" in env
    assert not any(line.startswith("HOME=") for line in env)  # env given: exactly that environment


def test_hook_without_args_or_env(scratch, monkeypatch):
    monkeypatch.setenv("HOOK_TEST_DIR", str(scratch))
    recorder = script(scratch, "record", 'cat > "$HOOK_TEST_DIR/state.json"\n'
                                         'echo "$0 $#" > "$HOOK_TEST_DIR/argv"\n')
    hooks.run_hooks("poststop", [Hook(recorder)], dict(STATE, status="stopped"))
    assert json.loads((scratch / "state.json").read_text())["status"] == "stopped"
    assert (scratch / "argv").read_text() == f"{recorder} 0\n"  # argv is just the path; env is ours


def test_hooks_from_config(scratch):
    config = oci.default_config()
    config["hooks"] = {"prestart": [{"path": "/usr/bin/setup", "args": ["setup", "-v"], "env": ["A=1"],
                                     "timeout": 5}, {"path": "/usr/bin/other"}],
                       "poststop": [{"path": "/usr/sbin/cleanup.sh"}]}
    oci.validate(config)
    parsed = hooks.hooks_from_config(config)
    assert parsed["prestart"] == [Hook("/usr/bin/setup", ("setup", "-v"), ("A=1",), 5),
                                  Hook("/usr/bin/other")]
    assert parsed["poststop"] == [Hook("/usr/sbin/cleanup.sh")]
    assert parsed["createRuntime"] == parsed["startContainer"] == []
    assert list(parsed) == ["prestart", "createRuntime", "createContainer", "startContainer", "poststart",
                            "poststop"]


def test_failing_hook_names_itself_and_stops_the_rest(scratch):
    log = scratch / "log"
    first = script(scratch, "first", f'echo first >> {log}\n')
    failing = script(scratch, "failing", 'echo "half done" ; echo "no network namespace" >&2; exit 3\n')
    never = script(scratch, "never", f'echo never >> {log}\n')
    with pytest.raises(HookError) as caught:
        hooks.run_hooks("createRuntime", [Hook(first), Hook(failing), Hook(never)], STATE)
    assert str(caught.value) == (f"error running createRuntime hook #1: {failing}: exited with status 3; "
                                 f"stdout: half done; stderr: no network namespace; fix or remove "
                                 f"hooks.createRuntime[1] in config.json")
    assert log.read_text() == "first\n"


def test_hook_killed_by_a_signal_or_missing(scratch):
    suicidal = script(scratch, "suicidal", "kill -TERM $$\n")
    with pytest.raises(HookError, match=r"^error running startContainer hook #0: .*suicidal: "
                                        r"killed by SIGTERM; fix or remove hooks.startContainer\[0\]"):
        hooks.run_hooks("startContainer", [Hook(suicidal)], STATE)
    with pytest.raises(HookError, match=r"^error running prestart hook #0: /nonexistent/hook: "
                                        r"cannot execute it: No such file or directory"):
        hooks.run_hooks("prestart", [Hook("/nonexistent/hook")], STATE)


def _gone(pid: int) -> bool:
    """True once `pid` no longer runs (a zombie counts as gone; if it is ours, it is reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    if state == "Z":
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        return True
    return False


def test_hook_timeout_kills_the_hook_and_its_children(scratch):
    pid_file = scratch / "sleeper.pid"
    slow = script(scratch, "slow", f"sleep 30 & echo $! > {pid_file}; wait\n")
    started = time.monotonic()
    with pytest.raises(HookError, match=r"^error running createContainer hook #0: .*slow: "
                                        r"still running after its timeout of 1 s: killed"):
        hooks.run_hooks("createContainer", [Hook(slow, timeout=1)], STATE)
    assert time.monotonic() - started < 5
    sleeper = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while not _gone(sleeper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _gone(sleeper), f"the hook's child {sleeper} survived the timeout"


@pytest.mark.parametrize("kind", ["poststop", "poststart"])
def test_poststop_and_poststart_failures_are_warnings(scratch, caplog, kind):
    after = scratch / "after"
    failing = script(scratch, "failing", "echo cleanup failed >&2; exit 1\n")
    later = script(scratch, "later", f"touch {after}\n")
    with caplog.at_level(logging.WARNING, logger="mini_container.runtime.hooks"):
        hooks.run_hooks(kind, [Hook(failing), Hook(later)], dict(STATE, status="stopped"))
    assert after.exists()  # the next hook still ran
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert record.getMessage().startswith(f"error running {kind} hook #0: {failing}: exited with status 1; "
                                          f"stderr: cleanup failed")


def test_run_hooks_checks_its_arguments():
    with pytest.raises(InvalidArgumentError, match="unknown hook kind 'prestop'"):
        hooks.run_hooks("prestop", [], STATE)
    with pytest.raises(InvalidArgumentError, match="lacks id, bundle"):
        hooks.run_hooks("poststart", [], {"ociVersion": "1.0.2", "status": "running"})
    with pytest.raises(InvalidArgumentError, match="use run_hooks"):
        hooks.run_in_container("createRuntime", [], STATE)


def test_container_hooks_run_in_the_containers_namespaces(scratch):
    """A child in new uts and pid namespaces stands in for the init: the hook inherits them."""
    out = scratch / "seen"
    recorder = script(scratch, "record", f"cat > {out}; cat /proc/sys/kernel/hostname > {out}.host; "
                                         f"readlink /proc/self/ns/pid > {out}.ns\n")
    run = [Hook(recorder)]
    with namespaces.ForkedChild(lambda: namespaces.unshare(["uts", "pid"]),
                                lambda: syscalls.sethostname("hookbox"),
                                lambda: namespaces.run_in_child(hooks.run_in_container, "startContainer", run,
                                                                dict(STATE, status="created"))) as child:
        for _ in range(3):
            child.step()
    assert child.exit_code == 0
    seen = json.loads(out.read_text())
    assert seen == dict(STATE, status="created", pid=1)  # the init's pid as the init sees it
    assert Path(f"{out}.host").read_text() == "hookbox\n"
    assert Path(f"{out}.ns").read_text().strip() != os.readlink("/proc/self/ns/pid")
