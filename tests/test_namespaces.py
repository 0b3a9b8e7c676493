"""Stage 1, namespaces, on the real kernel.

Every namespace change happens in a forked child (`ForkedChild`, `run_in_child`): the test process
itself never moves, and each child's namespaces die with it. What the tests create on the host (temp
dirs, bind mounts of ns files, a System V queue, a cgroup) is removed by fixtures, even on failure.
"""

import errno
import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from mini_container import namespaces, syscalls
from mini_container.errors import InvalidArgumentError
from mini_container.namespaces import ForkedChild, run_in_child


def cgroup2_mount() -> str:
    """Where the cgroup v2 tree is mounted: /sys/fs/cgroup/unified on a hybrid host, /sys/fs/cgroup on v2."""
    with open("/proc/self/mountinfo") as f:
        return next(line.split()[4] for line in f if line.partition(" - ")[2].startswith("cgroup2 "))


CGROUP2_ROOT = cgroup2_mount()


def mount_points(pid: int | str = "self") -> set[str]:
    """Mount points in /proc/PID/mountinfo (field 5), with octal escapes undone."""
    with open(f"/proc/{pid}/mountinfo") as f:
        fields = [line.split() for line in f]
    return {field[4].encode().decode("unicode_escape") for field in fields}


def sysv_queue_keys() -> set[int]:
    """Keys of the System V message queues in the reader's IPC namespace."""
    with open("/proc/sysvipc/msg") as f:
        return {int(line.split()[0]) for line in list(f)[1:]}


def sysv_queue_key(msqid: int) -> int:
    with open("/proc/sysvipc/msg") as f:
        return next(int(line.split()[0]) for line in list(f)[1:] if int(line.split()[1]) == msqid)


def ipcmk_queue() -> int:
    """Create a System V message queue with util-linux's ipcmk; return its id."""
    if shutil.which("ipcmk") is None:
        raise RuntimeError("ipcmk is missing: apt-get install util-linux")
    out = subprocess.run(["ipcmk", "-Q"], check=True, capture_output=True, text=True).stdout
    return int(out.rsplit(":", 1)[1])


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


@pytest.fixture
def workdir():
    path = tempfile.mkdtemp(prefix="mini-ns-test-")
    yield path
    shutil.rmtree(path)


@pytest.fixture
def persisted():
    """Paths given to persist(); any still there at the end are released."""
    paths: list[str] = []
    yield paths
    for path in paths:
        if os.path.lexists(path):
            namespaces.release(path)


@pytest.fixture
def host_queue():
    msqid = ipcmk_queue()
    yield msqid
    subprocess.run(["ipcrm", "-q", str(msqid)], check=True)


@pytest.fixture
def cgroup2_dir():
    path = f"{CGROUP2_ROOT}/mini-container-test-namespaces-{os.getpid()}"
    os.mkdir(path)
    yield path
    for _ in range(100):  # the cgroup may report busy for a moment after its last process is reaped
        try:
            os.rmdir(path)
            break
        except OSError:
            time.sleep(0.02)
    else:
        os.rmdir(path)


# --- the kinds table and parse_kinds ---------------------------------------------------------------

def test_kinds_table_matches_proc_and_syscalls():
    assert list(namespaces.KINDS) == ["user", "cgroup", "ipc", "uts", "net", "pid", "mnt", "time"]
    assert {kind.flag for kind in namespaces.KINDS.values()} == {
        syscalls.CLONE_NEWUSER, syscalls.CLONE_NEWCGROUP, syscalls.CLONE_NEWIPC, syscalls.CLONE_NEWUTS,
        syscalls.CLONE_NEWNET, syscalls.CLONE_NEWPID, syscalls.CLONE_NEWNS, syscalls.CLONE_NEWTIME}
    assert namespaces.KINDS["mnt"].flag == syscalls.CLONE_NEWNS
    for name, kind in namespaces.KINDS.items():
        assert os.path.exists(f"/proc/self/ns/{name}")
        assert len(kind.doc) > 200 and "\n" not in kind.doc


def test_parse_kinds_keeps_order_and_drops_repeats():
    assert namespaces.parse_kinds(["uts", "pid", "uts", "time"]) == ["uts", "pid", "time"]
    assert namespaces.parse_kinds(iter(["mnt"])) == ["mnt"]


def test_parse_kinds_names_the_bad_kind_and_lists_the_valid_ones():
    with pytest.raises(InvalidArgumentError) as caught:
        namespaces.parse_kinds(["uts", "mount"])
    message = str(caught.value)
    assert "'mount'" in message
    assert "user, cgroup, ipc, uts, net, pid, mnt, time" in message


def test_unshare_rejects_a_bad_kind_before_any_syscall():
    with pytest.raises(InvalidArgumentError, match="'network'"):
        namespaces.unshare(["uts", "network"])


# --- each kind, isolated -------------------------------------------------------------------------

def test_uts_hostname_change_is_unseen_by_the_host():
    host_name = socket.gethostname()

    def rename():
        namespaces.unshare(["uts"])
        syscalls.sethostname("mini-uts-test")
        return socket.gethostname(), namespaces.compare_with_host(os.getpid())["uts"]

    inside_name, uts = run_in_child(rename)
    assert inside_name == "mini-uts-test"
    assert socket.gethostname() == host_name != "mini-uts-test"
    assert not uts.shared and uts.inode != uts.host_inode


def test_pid_namespace_applies_to_children_only():
    def first_child_is_pid_1():
        before = namespaces.observe(os.getpid())["pid"]
        namespaces.unshare(["pid"])
        after = namespaces.observe(os.getpid())["pid"]

        def report():
            status = dict(line.split(":", 1) for line in read("/proc/self/status").splitlines())
            # /proc is still the host's (it shows the pid namespace of whoever mounted it): there,
            # /proc/1 is the host's init, and /proc/self is this process under its host pid.
            return os.getpid(), status["NSpid"].split(), os.stat("/proc/self/ns/pid").st_ino

        return os.getpid(), before, after, run_in_child(report)

    caller_pid, before, after, (child_pid, nspid, child_ns) = run_in_child(first_child_is_pid_1)
    assert caller_pid != 1 and before == after  # the caller stays where it was
    assert child_pid == 1
    assert len(nspid) == 2 and nspid[-1] == "1" and int(nspid[0]) > 1
    assert child_ns != before


def test_net_namespace_holds_only_lo():
    def interfaces():
        namespaces.unshare(["net"])
        lines = read("/proc/self/net/dev").splitlines()[2:]
        return sorted(line.split(":")[0].strip() for line in lines)

    assert run_in_child(interfaces) == ["lo"]
    assert "lo" in read("/proc/self/net/dev")


def test_ipc_objects_are_invisible_across_the_boundary(host_queue):
    host_key = sysv_queue_key(host_queue)

    created: list[int] = []  # filled in the child's memory

    def create_inside():
        namespaces.unshare(["ipc"])
        created.append(ipcmk_queue())
        return sysv_queue_key(created[0]), sysv_queue_keys()

    def remove_inside():
        subprocess.run(["ipcrm", "-q", str(created[0])], check=True)
        return sysv_queue_keys()

    with ForkedChild(create_inside, remove_inside) as child:
        inside_key, seen_inside = child.step()
        assert host_key not in seen_inside
        assert inside_key in seen_inside
        assert inside_key not in sysv_queue_keys()
        assert host_key in sysv_queue_keys()
        assert child.step() == set()


def test_user_namespace_maps_written_from_the_parent(workdir):
    def ids():
        return os.getuid(), os.getgid(), os.stat("/").st_uid, read("/proc/self/uid_map").split()

    def become_root():  # as a runtime does once the maps are written: ids 0 inside, 100000 outside
        os.setresgid(0, 0, 0)
        os.setresuid(0, 0, 0)
        return ids()

    with ForkedChild(lambda: namespaces.unshare(["user"]), ids, become_root) as child:
        child.step()
        uid, gid, root_owner, uid_map = child.step()
        assert (uid, gid, root_owner, uid_map) == (65534, 65534, 65534, [])  # unmapped: nobody

        namespaces.write_id_maps(child.pid, [(0, 100000, 65536)], [(0, 100000, 1000), (1000, 200000, 10)])
        uid, gid, root_owner, uid_map = child.step()
        assert (uid, gid) == (0, 0)
        assert root_owner == 65534  # the host's root (uid 0 outside) is not mapped inside
        assert uid_map == ["0", "100000", "65536"]
        status = dict(line.split(":", 1) for line in read(f"/proc/{child.pid}/status").splitlines())
        assert status["Uid"].split() == ["100000"] * 4  # seen from the host
        assert read(f"/proc/{child.pid}/gid_map").split() == ["0", "100000", "1000", "1000", "200000", "10"]
        assert read(f"/proc/{child.pid}/setgroups") == "deny\n"

        with pytest.raises(PermissionError) as caught:
            namespaces.write_id_maps(child.pid, [(0, 300000, 1)], [(0, 300000, 1)], deny_setgroups=False)
        assert "written only once" in "".join(caught.value.__notes__)


def test_write_id_maps_rejects_a_bad_range():
    with pytest.raises(InvalidArgumentError, match="bad uid_map"):
        namespaces.write_id_maps(os.getpid(), [(0, 100000, 0)], [(0, 100000, 1)])


def test_cgroup_namespace_shows_its_root_as_slash(cgroup2_dir):
    name = cgroup2_dir.removeprefix(CGROUP2_ROOT)

    def enter_cgroup():
        with open(f"{cgroup2_dir}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
        return read("/proc/self/cgroup")

    def unshare_cgroup():
        namespaces.unshare(["cgroup"])
        return read("/proc/self/cgroup")

    with ForkedChild(enter_cgroup, unshare_cgroup) as child:
        assert f"0::{name}\n" in child.step()
        inside = child.step()
        assert [line.rsplit(":", 1)[1] for line in inside.splitlines()] == ["/"] * len(inside.splitlines())
        assert f"0::{name}\n" in read(f"/proc/{child.pid}/cgroup")  # the host still sees the real path
        assert not namespaces.compare_with_host(child.pid)["cgroup"].shared


def test_time_offset_moves_monotonic_in_the_childs_namespace_only():
    def clocks():
        def inside():
            return time.clock_gettime(time.CLOCK_MONOTONIC), read("/proc/self/timens_offsets").split()

        return time.clock_gettime(time.CLOCK_MONOTONIC), run_in_child(inside)

    with ForkedChild(lambda: namespaces.unshare(["time"]), clocks) as child:
        child.step()
        namespaces.set_time_offsets(child.pid, monotonic_ns=1000 * 10**9)
        unsharer, (grandchild, offsets) = child.step()
        outside = time.clock_gettime(time.CLOCK_MONOTONIC)
        assert abs(unsharer - outside) < 5  # unshare() moved only the children
        assert abs(grandchild - outside - 1000) < 5
        assert offsets == ["monotonic", "1000", "0", "boottime", "0", "0"]

        with pytest.raises(PermissionError) as caught:  # a process is in the namespace now: frozen
            namespaces.set_time_offsets(child.pid, monotonic_ns=5 * 10**9)
        assert "frozen" in "".join(caught.value.__notes__)


def test_mnt_mount_inside_is_absent_from_the_host(workdir):
    target = os.path.join(workdir, "m")
    os.mkdir(target)

    def mount_tmpfs():
        namespaces.unshare(["mnt"])
        namespaces.make_mounts_private()
        syscalls.mount("tmpfs", target, "tmpfs")
        with open(os.path.join(target, "inside"), "w") as f:
            f.write("only here")
        return os.listdir(target)

    with ForkedChild(mount_tmpfs) as child:
        assert child.step() == ["inside"]
        assert target in mount_points(child.pid)
        assert target not in mount_points()
        assert os.listdir(target) == []
        assert not namespaces.compare_with_host(child.pid)["mnt"].shared


def test_mnt_propagation_is_copied_until_made_private(workdir):
    """A mount made in a copy of a shared mount shows up in the original, unless the copy is private."""
    def in_copy(path, private):
        namespaces.unshare(["mnt"])
        if private:
            namespaces.make_mounts_private()
        syscalls.mount("tmpfs", path, "tmpfs")

    def experiment():
        namespaces.unshare(["mnt"])
        namespaces.make_mounts_private()
        syscalls.mount("tmpfs", workdir, "tmpfs")
        syscalls.mount(None, workdir, None, syscalls.MS_SHARED)
        leaked, kept = os.path.join(workdir, "leaked"), os.path.join(workdir, "kept")
        os.mkdir(leaked)
        os.mkdir(kept)
        run_in_child(in_copy, leaked, False)
        run_in_child(in_copy, kept, True)
        return leaked in mount_points(), kept in mount_points()

    assert run_in_child(experiment) == (True, False)
    assert os.listdir(workdir) == []


# --- join, persist, observe ----------------------------------------------------------------------

def test_join_enters_another_processs_uts_and_net():
    def build():
        namespaces.unshare(["uts", "net"])
        syscalls.sethostname("joined-ns")

    with ForkedChild(build) as holder:
        holder.step()

        def joined():
            namespaces.join(holder.pid, ["uts", "net"])
            return socket.gethostname(), namespaces.observe(os.getpid())

        name, seen = run_in_child(joined)
        assert name == "joined-ns"
        target = namespaces.observe(holder.pid)
        assert seen["uts"] == target["uts"] and seen["net"] == target["net"]
        assert seen["ipc"] == namespaces.observe(os.getpid())["ipc"]  # kinds not asked for stay
    assert socket.gethostname() != "joined-ns"


def test_join_all_eight_kinds_of_a_process_inside_them():
    """A process inside all eight (user owning the rest), joined by a root process as nsenter -a would."""
    everything = list(namespaces.KINDS)
    inner: list[ForkedChild] = []

    def start_inner():
        inner.append(ForkedChild(os.getpid))
        return inner[0].pid, inner[0].step()

    with ForkedChild(lambda: namespaces.unshare(everything), start_inner, lambda: inner[0].close()) as outer:
        outer.step()
        namespaces.write_id_maps(outer.pid, [(0, 100000, 65536)], [(0, 100000, 65536)])
        namespaces.set_time_offsets(outer.pid, monotonic_ns=500 * 10**9)
        target, pid_inside = outer.step()
        assert pid_inside == 1

        def joined():
            namespaces.join(target, everything)
            seen = namespaces.observe(os.getpid())
            seen["pid_for_children"] = os.stat("/proc/self/ns/pid_for_children").st_ino
            return seen, time.clock_gettime(time.CLOCK_MONOTONIC), os.getuid()

        seen, monotonic, uid = run_in_child(joined)
        expected = namespaces.observe(target)
        for kind in everything:
            if kind != "pid":
                assert seen[kind] == expected[kind], kind
        assert seen["pid"] != expected["pid"]  # setns(pid) moved only future children...
        assert seen["pid_for_children"] == expected["pid"]  # ...which would be inside
        assert monotonic - time.clock_gettime(time.CLOCK_MONOTONIC) > 490  # setns(time) moved the caller
        assert uid == 65534  # kernel uid 0 is not mapped in that user namespace
        outer.step()


def test_join_a_process_that_is_gone_says_so():
    with ForkedChild(os.getpid) as child:
        gone = child.pid
    with pytest.raises(InvalidArgumentError, match=f"no process with pid {gone}"):
        namespaces.join(gone, ["uts"])


@pytest.mark.parametrize("kind", ["uts", "net", "mnt"])
def test_persist_keeps_a_namespace_without_processes_until_release(kind, workdir, persisted):
    path = os.path.join(workdir, kind)
    persisted.append(path)

    def build():
        namespaces.unshare([kind])
        if kind == "uts":
            syscalls.sethostname("persisted-uts")

    with ForkedChild(build) as creator:
        creator.step()
        inode = namespaces.observe(creator.pid)[kind]
        namespaces.persist(creator.pid, kind, path)
    assert creator.closed  # the creator has exited and been reaped; only the bind mount holds the ns

    assert path in mount_points()
    assert os.stat(path).st_ino == inode

    def enter():
        namespaces.join_path(path, kind)
        return namespaces.observe(os.getpid())[kind], socket.gethostname()

    joined_inode, name = run_in_child(enter)
    assert joined_inode == inode
    if kind == "uts":
        assert name == "persisted-uts"

    namespaces.release(path)
    assert path not in mount_points()
    assert not os.path.lexists(path)


def test_persist_refuses_an_existing_path(workdir):
    path = os.path.join(workdir, "taken")
    open(path, "w").close()
    with pytest.raises(InvalidArgumentError, match="exists"):
        namespaces.persist(os.getpid(), "uts", path)
    assert path not in mount_points()


def test_join_path_checks_the_kind(workdir, persisted):
    path = os.path.join(workdir, "uts")
    persisted.append(path)
    namespaces.persist(os.getpid(), "uts", path)
    with pytest.raises(OSError, match="EINVAL"):
        run_in_child(namespaces.join_path, path, "net")
    namespaces.release(path)


def test_persist_mnt_of_an_older_namespace_is_refused(workdir):
    """Bind-mounting the host's mount namespace inside a newer one could make a loop: refused."""
    path = os.path.join(workdir, "host-mnt")
    parent = os.getpid()

    def try_persist():
        namespaces.unshare(["mnt"])
        namespaces.make_mounts_private()
        namespaces.persist(parent, "mnt", path)

    with pytest.raises(OSError) as caught:
        run_in_child(try_persist)
    assert "older mount namespace" in "".join(caught.value.__notes__)
    assert caught.value.errno in (errno.EACCES, errno.EINVAL)
    assert not os.path.lexists(path)  # persist() removed the file it had created


def test_persist_mnt_needs_private_propagation(workdir):
    """Onto a shared mount with a peer in that very namespace, the bind mount would propagate: EINVAL.

    Both new namespaces are made on one CPU: namespace ids come in per-CPU batches, and the newer one
    must get the larger id (see KINDS["mnt"].doc).
    """
    def experiment():
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        namespaces.unshare(["mnt"])
        namespaces.make_mounts_private()
        syscalls.mount("tmpfs", workdir, "tmpfs")
        syscalls.mount(None, workdir, None, syscalls.MS_SHARED)
        path = os.path.join(workdir, "mnt")
        with ForkedChild(lambda: namespaces.unshare(["mnt"])) as newer:  # its copy of workdir is a peer
            newer.step()
            try:
                namespaces.persist(newer.pid, "mnt", path)
            except OSError as err:
                refused = err.errno
            syscalls.mount(None, workdir, None, syscalls.MS_PRIVATE)
            namespaces.persist(newer.pid, "mnt", path)
            mounted = path in mount_points()
            namespaces.release(path)
        return refused, mounted, path in mount_points(), os.listdir(workdir)

    assert run_in_child(experiment) == (errno.EINVAL, True, False, [])


def test_observe_and_compare_with_host():
    own = namespaces.observe(os.getpid())
    assert list(own) == list(namespaces.KINDS)
    assert all(inode > 0 for inode in own.values())
    # the test session runs in a network namespace of its own (see conftest.py): only net differs
    own_rows = namespaces.compare_with_host(os.getpid())
    assert {kind for kind, row in own_rows.items() if not row.shared} == {"net"}

    with ForkedChild(lambda: namespaces.unshare(["uts", "ipc"])) as child:
        child.step()
        rows = namespaces.compare_with_host(child.pid)
        assert {kind for kind, row in rows.items() if not row.shared} == {"uts", "ipc", "net"}
        assert rows["uts"].host_inode == own["uts"] != rows["uts"].inode
        assert rows["net"].inode == own["net"] != rows["net"].host_inode  # the session's, not the host's


def test_forked_child_returns_results_and_raises_the_childs_errors():
    def fail():
        raise InvalidArgumentError("from the child")

    with ForkedChild(os.getpid, fail, lambda: os._exit(3)) as child:
        assert child.step() == child.pid != os.getpid()
        with pytest.raises(InvalidArgumentError, match="from the child") as caught:
            child.step()
        assert f"forked child {child.pid}" in caught.value.__notes__[0]
        with pytest.raises(ChildProcessError):
            child.step()
        assert child.close() == 3
