"""Process settings on the real kernel: user, capabilities, no_new_privs, rlimits, OOM score, umask,
seccomp, dumpability, and what an exec'd program inherits of them.

Every change is made in a forked child (`run_in_child`, `ForkedChild`, or a fork that execs), so the
test process keeps its uid, its capabilities and no filter. Namespaces a test needs (a mount
namespace for a refused mount, a network namespace for port 80) are the child's own and die with it.
"""

import errno
import fcntl
import json
import os
import resource
import socket
import struct
import traceback

import pytest

from mini_container import namespaces
from mini_container import syscalls as sc
from mini_container.errors import ContainerError, InvalidArgumentError
from mini_container.namespaces import ForkedChild, run_in_child
from mini_container.runtime import capabilities as caps
from mini_container.runtime import process, seccomp
from mini_container.runtime.docker_seccomp import docker_default_seccomp
from mini_container.runtime.spec import ProcessSettings

DOCKER_CAPS = 0x00000000A80425FB  # `docker run`'s CapEff/CapPrm/CapBnd, as root
NET_BIND_SERVICE = 1 << 10


def status(pid: int | str = "self") -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def cap_masks(fields: dict[str, str]) -> dict[str, int]:
    return {key: int(fields[key], 16) for key in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")}


def apply_then(settings: ProcessSettings, check):
    """In a forked child: apply `settings`, then return what `check()` returns."""
    def child():
        process.apply(settings)
        return check()
    return run_in_child(child)


def exec_after_apply(settings: ProcessSettings, argv: list[str]) -> tuple[int, str, str]:
    """Fork; in the child apply `settings` and execv `argv`. Return (exit code, stdout, stderr)."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            process.apply(settings)
            os.execv(argv[0], argv)
        except BaseException:
            traceback.print_exc()
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(err_w)
    with os.fdopen(out_r) as out, os.fdopen(err_r) as err:
        stdout, stderr = out.read(), err.read()
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), stdout, stderr


def errno_of(call, *args) -> int:
    """Call and return 0, or the errno it failed with."""
    try:
        result = call(*args)
        if isinstance(result, socket.socket):
            result.close()
        return 0
    except OSError as err:
        return err.errno


def loopback_up() -> None:
    """ip link set lo up, with the SIOCGIFFLAGS/SIOCSIFFLAGS ioctls."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sh", fcntl.ioctl(s, siocgifflags, struct.pack("16sh", b"lo", 0)))[1]
        fcntl.ioctl(s, siocsifflags, struct.pack("16sh", b"lo", flags | iff_up))


# --- capability names ------------------------------------------------------------------------------


def test_capability_numbers_match_the_kernel():
    assert len(caps.CAPABILITIES) == 41
    assert caps.CAPABILITIES["CAP_NET_RAW"] == 13 and caps.CAPABILITIES["CAP_CHECKPOINT_RESTORE"] == 40
    assert caps.last_cap() >= 40, "this kernel is older than 5.9: it has no CAP_CHECKPOINT_RESTORE"
    assert caps.mask(caps.DOCKER_DEFAULT) == DOCKER_CAPS
    assert caps.names(NET_BIND_SERVICE | 1) == ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]


def test_unknown_capability_is_a_clear_error():
    with pytest.raises(InvalidArgumentError, match="capabilities.bounding: unknown capability 'CAP_FLY'"):
        caps.resolve({"bounding": ["CAP_FLY"]})
    with pytest.raises(InvalidArgumentError, match="unknown set"):
        caps.resolve({"bonding": []})


def test_effective_must_be_within_permitted_and_ambient_is_clamped_as_runc_does():
    with pytest.raises(InvalidArgumentError, match=r"effective: CAP_KILL must also be in permitted"):
        caps.resolve({"effective": ["CAP_KILL"], "permitted": []})
    kill = caps.CAPABILITIES["CAP_KILL"]
    assert caps.resolve({"permitted": ["CAP_KILL"], "ambient": ["CAP_KILL"]}).ambient == 0
    both = {"permitted": ["CAP_KILL"], "inheritable": ["CAP_KILL"], "ambient": ["CAP_KILL"]}
    assert caps.resolve(both).ambient == 1 << kill


# --- user, capabilities, no_new_privs, rlimits, OOM score, umask ------------------------------------


def test_docker_default_capabilities_in_every_set():
    masks = apply_then(ProcessSettings(), lambda: cap_masks(status()))
    assert masks == {"CapInh": 0, "CapPrm": DOCKER_CAPS, "CapEff": DOCKER_CAPS, "CapBnd": DOCKER_CAPS,
                     "CapAmb": 0}


def test_a_custom_list_sets_each_set_exactly():
    sets = {"bounding": ["CAP_KILL", "CAP_NET_RAW", "CAP_NET_ADMIN"], "effective": ["CAP_KILL"],
            "permitted": ["CAP_KILL", "CAP_NET_RAW"], "inheritable": ["CAP_NET_RAW"],
            "ambient": ["CAP_NET_RAW"]}
    masks = apply_then(ProcessSettings(capabilities=sets), lambda: cap_masks(status()))
    kill, net_raw, net_admin = 1 << 5, 1 << 13, 1 << 12
    assert masks == {"CapBnd": kill | net_raw | net_admin, "CapPrm": kill | net_raw, "CapEff": kill,
                     "CapInh": net_raw, "CapAmb": net_raw}


def test_a_dropped_capability_is_refused(tmp_path):
    def child():
        namespaces.unshare(["mnt"])  # a mount that wrongly succeeds stays in the child's namespace
        namespaces.make_mounts_private()
        process.apply(ProcessSettings())  # Docker's defaults: CAP_NET_RAW, no CAP_SYS_ADMIN
        raw_with = errno_of(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        mount = errno_of(sc.mount, "tmpfs", str(tmp_path), "tmpfs")
        process.apply(ProcessSettings(capabilities={"bounding": ["CAP_KILL"], "permitted": ["CAP_KILL"]}))
        raw_without = errno_of(socket.socket, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        return raw_with, mount, raw_without
    assert run_in_child(child) == (0, errno.EPERM, errno.EPERM)


def test_uid_gid_and_groups_switch():
    settings = ProcessSettings(uid=1000, gid=1001, additional_gids=[10, 20])
    fields = apply_then(settings, status)
    assert fields["Uid"].split() == ["1000"] * 4
    assert fields["Gid"].split() == ["1001"] * 4
    assert fields["Groups"].split() == ["10", "20"]
    assert int(fields["CapEff"], 16) == DOCKER_CAPS  # kept across the switch, until execve


def test_capabilities_kept_across_the_uid_switch_bind_port_80():
    def bind_80(capabilities: list[str]) -> int:
        namespaces.unshare(["net"])  # a private loopback: port 80 of the host is not touched
        loopback_up()
        sets = dict.fromkeys(caps.SETS, capabilities)
        process.apply(ProcessSettings(uid=1000, gid=1000, capabilities=sets))
        assert os.getuid() == 1000
        with socket.socket() as s:
            return errno_of(s.bind, ("127.0.0.1", 80))
    assert run_in_child(bind_80, ["CAP_NET_BIND_SERVICE"]) == 0
    assert run_in_child(bind_80, []) == errno.EACCES


def test_no_new_privs():
    assert status()["NoNewPrivs"] == "0"
    assert apply_then(ProcessSettings(no_new_privileges=True), status)["NoNewPrivs"] == "1"
    assert apply_then(ProcessSettings(), status)["NoNewPrivs"] == "0"


def test_rlimit_nofile():
    def check():
        opened = []
        try:
            while len(opened) < 100:
                opened.append(os.open("/dev/null", os.O_RDONLY))
        except OSError as err:
            return resource.getrlimit(resource.RLIMIT_NOFILE), err.errno
        finally:
            for fd in opened:
                os.close(fd)
        return resource.getrlimit(resource.RLIMIT_NOFILE), 0
    settings = ProcessSettings(rlimits=[("RLIMIT_NOFILE", 64, 128)])
    assert apply_then(settings, check) == ((64, 128), errno.EMFILE)


def test_apply_completes_when_rlimit_nofile_leaves_no_descriptor_free():
    def child():
        lowest_free = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest_free)
        process.apply(ProcessSettings(uid=1000, gid=1000, oom_score_adj=100, seccomp=docker_default_seccomp(),
                                      rlimits=[("RLIMIT_NOFILE", lowest_free, lowest_free)]))
        return errno_of(os.open, "/dev/null", os.O_RDONLY), os.getuid()
    assert run_in_child(child) == (errno.EMFILE, 1000)


def test_rlimit_errors():
    with pytest.raises(InvalidArgumentError, match="unknown limit 'RLIMIT_FILES'"):
        process.set_rlimits([("RLIMIT_FILES", 1, 1)])
    with pytest.raises(InvalidArgumentError, match="soft limit 10 is above the hard limit 5"):
        process.set_rlimits([("RLIMIT_NOFILE", 10, 5)])


def test_oom_score_adj_by_self_and_by_the_parent():
    read_own = lambda: open("/proc/self/oom_score_adj").read().strip()  # noqa: E731
    assert apply_then(ProcessSettings(oom_score_adj=500), read_own) == "500"
    with ForkedChild(read_own) as child:
        process.set_oom_score_adj(300, child.pid)
        assert child.step() == "300"
    with pytest.raises(InvalidArgumentError, match="outside -1000..1000"):
        process.set_oom_score_adj(1001)


def test_umask(tmp_path):
    def check():
        path = tmp_path / "file"
        path.touch(mode=0o666)
        return status()["Umask"], path.stat().st_mode & 0o777
    assert apply_then(ProcessSettings(umask=0o027), check) == ("0027", 0o640)
    assert apply_then(ProcessSettings(), lambda: status()["Umask"]) == "0022"  # runc's default


def test_a_bad_setting_changes_nothing():
    def child():
        before = process.observe()
        with pytest.raises(InvalidArgumentError):
            process.apply(ProcessSettings(uid=1000, rlimits=[("RLIMIT_NOFILE", 1, 1)], umask=0o077,
                                          capabilities={"bounding": ["CAP_NOPE"]}))
        return before == process.observe()
    assert run_in_child(child)


def test_observe_from_outside():
    with ForkedChild(lambda: process.apply(ProcessSettings(uid=1000, gid=1000, umask=0o077,
                                                           no_new_privileges=True))) as child:
        before = process.observe(child.pid)
        child.step()
        after = process.observe(child.pid)
    assert before["uid"] == [0, 0, 0, 0] and after["uid"] == [1000, 1000, 1000, 1000]
    assert after["umask"] == 0o077 and after["no_new_privs"] == 1 and after["seccomp"] == 0
    assert sorted(after["capabilities"]["effective"]) == sorted(caps.DOCKER_DEFAULT)
    assert after["rlimits"]["RLIMIT_NOFILE"] == resource.getrlimit(resource.RLIMIT_NOFILE)


# --- seccomp --------------------------------------------------------------------------------------


def test_docker_profile_resolves_against_capabilities():
    def allowed(profile: dict) -> set[str]:
        plain = [r for r in profile["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r]
        return {name for rule in plain for name in rule["names"]}
    default = docker_default_seccomp()
    admin = docker_default_seccomp(caps.DOCKER_DEFAULT + ["CAP_SYS_ADMIN"])
    assert default["defaultAction"] == "SCMP_ACT_ERRNO" and default["defaultErrnoRet"] == errno.EPERM
    assert {"read", "execve", "chroot"} <= allowed(default) and "mount" not in allowed(default)
    assert {"mount", "unshare", "clone", "clone3"} <= allowed(admin)
    clone3 = [rule for rule in default["syscalls"] if rule["names"] == ["clone3"]]
    assert clone3 == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS}]
    assert not [rule for rule in admin["syscalls"] if rule["names"] == ["clone3"] and "errnoRet" in rule]
    assert "chroot" not in allowed(docker_default_seccomp(["CAP_KILL"]))
    if os.uname().machine == "x86_64":
        assert default["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        assert "arch_prctl" in allowed(default)
    text = seccomp.filter_text(default)
    assert 'syscall "execve"' in text and 'syscall "mount"' not in text


def test_docker_profile_in_force():
    def child():
        process.apply(ProcessSettings(seccomp=docker_default_seccomp()))
        pid = os.fork()
        if pid == 0:
            os._exit(7)
        forked = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        return (status()["Seccomp"], errno_of(sc.unshare, sc.CLONE_NEWUSER),
                errno_of(sc.mount, "tmpfs", "/nonexistent", "tmpfs"), sorted(os.listdir("/proc/self/ns"))[:1],
                forked)
    assert run_in_child(child) == ("2", errno.EPERM, errno.EPERM, ["cgroup"], 7)
    # the control: the same capabilities without the filter may make a user namespace
    assert apply_then(ProcessSettings(), lambda: errno_of(sc.unshare, sc.CLONE_NEWUSER)) == 0


@pytest.mark.parametrize("no_new_privileges", [False, True], ids=["seccomp-early", "seccomp-last"])
def test_execve_works_under_the_docker_profile(no_new_privileges):
    settings = ProcessSettings(seccomp=docker_default_seccomp(), no_new_privileges=no_new_privileges)
    assert exec_after_apply(settings, ["/bin/true"])[0] == 0
    argv = ["/bin/sh", "-c", "grep -E 'Seccomp|NoNewPrivs' /proc/self/status"]
    code, out, err = exec_after_apply(settings, argv)
    assert code == 0, err
    assert "Seccomp:\t2" in out and f"NoNewPrivs:\t{int(no_new_privileges)}" in out


def test_custom_profile_errno_and_argument_conditions(tmp_path):
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [
            {"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOTSUP},
            # two conditions on the same argument: either one matches
            {"names": ["socket"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EAFNOSUPPORT,
             "args": [{"index": 0, "value": socket.AF_INET6, "op": "SCMP_CMP_EQ"},
                      {"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"}]},
            # (flags & O_ACCMODE) == O_WRONLY: opening for writing only
            {"names": ["open", "openat"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EROFS,
             "args": [{"index": 2, "value": os.O_ACCMODE, "valueTwo": os.O_WRONLY,
                       "op": "SCMP_CMP_MASKED_EQ"}]},
        ],
    }
    target = str(tmp_path / "file")

    def check():
        families = (socket.AF_INET6, socket.AF_UNIX, socket.AF_INET)
        sockets = [errno_of(socket.socket, family) for family in families]
        return (errno_of(os.uname), *sockets, errno_of(os.open, target, os.O_WRONLY | os.O_CREAT),
                errno_of(os.open, "/proc/self/status", os.O_RDONLY))
    assert apply_then(ProcessSettings(seccomp=profile), check) == (
        errno.ENOTSUP, errno.EAFNOSUPPORT, errno.EAFNOSUPPORT, 0, errno.EROFS, 0)
    assert not os.path.exists(target)


def test_a_filter_is_compiled_once_and_a_forked_child_installs_it(monkeypatch):
    profile = {"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_LOG"],
               "syscalls": [{"names": ["uname"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOTSUP}]}
    compiled = seccomp.compile_filter(profile)
    assert compiled.flags == sc.SECCOMP_FILTER_FLAG_LOG
    assert len(compiled.program) % 8 == 0 and len(compiled.program) > 8  # struct sock_filter[]
    assert seccomp.compile_filter(json.loads(json.dumps(profile))) is compiled  # an equal profile: reused

    def child():
        monkeypatch.setattr(sc, "seccomp_init", None)  # libseccomp is not called again in the child
        process.apply(ProcessSettings(seccomp=profile))
        return errno_of(os.uname), status()["Seccomp_filters"]
    assert run_in_child(child) == (errno.ENOTSUP, "1")


@pytest.mark.parametrize("profile, message", [
    ({"syscalls": []}, r"linux.seccomp.defaultAction: missing"),
    ({"defaultAction": "SCMP_ACT_MAYBE"}, r"linux.seccomp.defaultAction: unknown action 'SCMP_ACT_MAYBE'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["read"], "action": "SCMP_ACT_NOTIFY"}]},
     r"syscalls\[0\].action: SCMP_ACT_NOTIFY needs a seccomp agent"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
        {"names": ["read"], "action": "SCMP_ACT_KILL", "args": [{"index": 0, "op": "SCMP_CMP_IS"}]}]},
     r"syscalls\[0\].args\[0\].op: unknown operator 'SCMP_CMP_IS'"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_Z80"]}, r"unknown architecture"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}, r"unsupported flag"),
])
def test_invalid_profiles_name_the_json_path(profile, message):
    with pytest.raises(InvalidArgumentError, match=message):
        seccomp.parse(profile)


def test_loading_without_no_new_privs_needs_cap_sys_admin():
    def child():
        caps.set_capabilities(0, 0, 0)
        with pytest.raises(ContainerError, match="needs no_new_privileges or CAP_SYS_ADMIN"):
            seccomp.install(seccomp.compile_filter({"defaultAction": "SCMP_ACT_ALLOW"}))
        return status()["Seccomp"]
    assert run_in_child(child) == "0"


# --- dumpability ----------------------------------------------------------------------------------


def read_environ_as(uid: int, pid: int) -> int:
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    return errno_of(lambda: open(f"/proc/{pid}/environ", "rb").close())


def test_non_dumpable_hides_the_process_from_its_own_uid():
    def become_uid_1000():
        os.setresgid(1000, 1000, 1000)
        os.setresuid(1000, 1000, 1000)
        sc.prctl(sc.PR_SET_DUMPABLE, 1)  # what execve would do: the uid change made it non-dumpable
        return process.is_dumpable()

    def joining():
        process.make_non_dumpable()
        return process.is_dumpable()
    with ForkedChild(become_uid_1000, joining) as target:
        assert target.step() is True
        assert run_in_child(read_environ_as, 1000, target.pid) == 0
        assert target.step() is False
        assert run_in_child(read_environ_as, 1000, target.pid) == errno.EACCES


# --- what an exec'd program sees ------------------------------------------------------------------


def test_exec_after_apply_docker_defaults_as_root():
    code, out, err = exec_after_apply(ProcessSettings(), ["/bin/sh", "-c", "grep Cap /proc/self/status"])
    assert code == 0, err
    seen = cap_masks(dict(line.split(":\t") for line in out.splitlines()))
    assert seen == {"CapInh": 0, "CapPrm": DOCKER_CAPS, "CapEff": DOCKER_CAPS, "CapBnd": DOCKER_CAPS,
                    "CapAmb": 0}


def test_exec_after_apply_non_root_keeps_only_ambient_capabilities():
    argv = ["/bin/sh", "-c", "grep -E '^(Cap|Uid)' /proc/self/status"]
    code, out, err = exec_after_apply(ProcessSettings(uid=1000, gid=1000), argv)
    assert code == 0, err
    seen = dict(line.split(":\t") for line in out.splitlines())
    assert seen["Uid"].split() == ["1000"] * 4
    assert cap_masks(seen) == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapBnd": DOCKER_CAPS, "CapAmb": 0}

    ambient = dict.fromkeys(caps.SETS, ["CAP_NET_BIND_SERVICE"])
    code, out, err = exec_after_apply(ProcessSettings(uid=1000, gid=1000, capabilities=ambient), argv)
    assert code == 0, err
    seen = cap_masks(dict(line.split(":\t") for line in out.splitlines()))
    assert seen == dict.fromkeys(("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"), NET_BIND_SERVICE)
