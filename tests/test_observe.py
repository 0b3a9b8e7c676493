"""observe: snapshots of real processes in real namespaces, and the diffs a person reads.

Every namespace change happens in a forked child that waits for orders on a pipe; the test process
only observes, and checks at the end of each test that its own namespaces never moved.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import socket
import struct
import tempfile
import threading
from collections.abc import Callable, Iterator

import pytest

from mini_container import observe, syscalls
from mini_container.errors import ContainerError

SIOCGIFFLAGS, SIOCSIFFLAGS, IFF_UP = 0x8913, 0x8914, 0x1


def own_namespaces() -> dict[str, set[str]]:
    """For each kind, the namespaces that the test process's threads (whichever exist now) are in."""
    seen: dict[str, set[str]] = {kind: set() for kind in ("uts", "net", "mnt", "pid")}
    for task in os.listdir("/proc/self/task"):
        for kind in seen:
            try:
                seen[kind].add(os.readlink(f"/proc/self/task/{task}/ns/{kind}"))
            except FileNotFoundError:
                pass  # a thread that finished while we looked
    return seen


class Child:
    """A forked child that runs named steps on request and otherwise blocks, so /proc shows its state."""

    def __init__(self, steps: dict[str, Callable[[], object]]) -> None:
        orders_r, self._orders = os.pipe()
        self._replies, replies_w = os.pipe()
        self.extra_pids: list[int] = []  # grandchildren the child reports, killed on cleanup
        self.pid = os.fork()
        if self.pid == 0:  # the child: never returns into pytest
            code = 1
            try:
                syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
                os.close(self._orders)
                os.close(self._replies)
                with os.fdopen(orders_r) as orders, os.fdopen(replies_w, "w") as replies:
                    for line in orders:
                        try:
                            reply = f"ok {steps[line.strip()]() or ''}"
                        except Exception as e:
                            reply = f"error {e!r}"
                        replies.write(reply.replace("\n", " ") + "\n")
                        replies.flush()
                while True:  # orders closed: reap what the steps forked (already killed), then exit
                    try:
                        os.wait()
                    except ChildProcessError:
                        break
                code = 0
            finally:
                os._exit(code)
        os.close(orders_r)
        os.close(replies_w)
        self._reader = os.fdopen(self._replies)

    def do(self, step: str) -> str:
        """Run `step` in the child; return what it returned, as text."""
        os.write(self._orders, f"{step}\n".encode())
        status, _, value = self._reader.readline().rstrip("\n").partition(" ")
        assert status == "ok", f"step {step!r} failed in the child: {value or 'it died'}"
        return value

    def stop(self) -> None:
        """Kill what the steps forked, let the child reap it and exit (or kill it), and reap the child."""
        for pid in self.extra_pids:
            os.kill(pid, signal.SIGKILL)
        os.close(self._orders)
        self._reader.close()
        pidfd = syscalls.pidfd_open(self.pid)
        try:
            if not select.select([pidfd], [], [], 5)[0]:
                os.kill(self.pid, signal.SIGKILL)
        finally:
            os.close(pidfd)
        os.waitpid(self.pid, 0)


@pytest.fixture
def spawn() -> Iterator[Callable[[dict], Child]]:
    children: list[Child] = []
    namespaces = own_namespaces()

    def start(steps: dict[str, Callable[[], object]]) -> Child:
        children.append(Child(steps))
        return children[-1]

    yield start
    for child in children:
        child.stop()
    assert own_namespaces() == namespaces, "observing moved one of the test process's threads"


@pytest.fixture
def mount_dir() -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="observe-") as path:
        yield path


def texts(changes: list[dict]) -> list[str]:
    return [c["text"] for c in changes]


def new_uts_named_box() -> None:
    syscalls.unshare(syscalls.CLONE_NEWUTS)
    syscalls.sethostname("box")


def test_hostname_in_new_uts_namespace_is_seen_and_diffed(spawn):
    child = spawn({"uts": new_uts_named_box})
    before = observe.snapshot(child.pid)
    child.do("uts")
    after = observe.snapshot(child.pid)

    assert before["uname"]["nodename"] == os.uname().nodename
    assert after["uname"]["nodename"] == "box"
    assert set(after["isolated_namespaces"]) - set(before["isolated_namespaces"]) == {"uts"}
    assert f"hostname changed: {os.uname().nodename} -> box" in texts(observe.diff(before, after))
    uts = [c for c in observe.diff(before, after) if c["section"] == "namespaces"]
    assert [c["text"] for c in uts] == [
        f"uts namespace changed: {before['namespaces']['uts']} -> {after['namespaces']['uts']}"]
    assert os.uname().nodename != "box"


def lo_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(s, SIOCGIFFLAGS, request + b"\0" * 22)[:18])[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH", b"lo", flags | IFF_UP) + b"\0" * 22)


def test_new_net_namespace_has_only_lo_and_its_state_change_is_diffed(spawn):
    child = spawn({"net": lambda: syscalls.unshare(syscalls.CLONE_NEWNET), "lo_up": lo_up})
    child.do("net")
    down = observe.snapshot(child.pid)
    child.do("lo_up")
    up = observe.snapshot(child.pid)

    links = [(link["name"], link["state"], link["addresses"]) for link in down["network"]]
    assert links == [("lo", "down", [])]
    assert [(link["name"], link["state"]) for link in up["network"]] == [("lo", "up")]
    changes = texts(observe.diff(down, up))
    assert "link lo went up" in changes
    assert "address 127.0.0.1/8 added to lo" in changes
    assert "lo down" in observe.describe(down)


def private_mount_ns() -> None:
    """A new mount namespace whose mounts no longer propagate to or from the host's."""
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def test_tmpfs_in_private_mount_namespace_is_diffed_as_mounted(spawn, mount_dir):
    child = spawn({"mnt": private_mount_ns, "tmpfs": lambda: syscalls.mount("tmpfs", mount_dir, "tmpfs"),
                   "shared": lambda: syscalls.mount(None, mount_dir, None, syscalls.MS_SHARED)})
    child.do("mnt")
    before = observe.snapshot(child.pid)
    child.do("tmpfs")
    mounted = observe.snapshot(child.pid)
    child.do("shared")
    shared = observe.snapshot(child.pid)

    changes = observe.diff(before, mounted)
    assert texts(changes) == [f"mounted tmpfs on {mount_dir}"]
    assert changes[0]["after"]["source"] == "tmpfs"
    [change] = observe.diff(mounted, shared)
    assert change["text"].startswith(f"propagation of {mount_dir} changed: private -> shared:")
    assert not any(m["mount_point"] == mount_dir for m in observe.snapshot(os.getpid())["mounts"])


def test_unsharing_mount_namespace_copies_mounts_under_new_ids(spawn):
    child = spawn({"mnt": private_mount_ns, "again": lambda: syscalls.unshare(syscalls.CLONE_NEWNS)})
    child.do("mnt")  # first away from the host's mount table, which other work may change meanwhile
    first = observe.snapshot(child.pid)
    child.do("again")
    copy = observe.snapshot(child.pid)

    assert {m["id"] for m in first["mounts"]}.isdisjoint(m["id"] for m in copy["mounts"])
    assert [c["text"] for c in observe.diff(first, copy)] == [
        f"mnt namespace changed: {first['namespaces']['mnt']} -> {copy['namespaces']['mnt']}"]


def test_pid_namespace_tree_shows_pid_1_and_its_host_pid(spawn):
    def pid_namespace_with_two_processes() -> str:
        syscalls.unshare(syscalls.CLONE_NEWPID)
        ready_r, ready_w = os.pipe()
        first = os.fork()
        if first == 0:  # pid 1 of the new namespace
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            if os.fork() == 0:  # pid 2
                os.write(ready_w, b"x")
                signal.pause()
            signal.pause()
        os.read(ready_r, 1)
        return str(first)

    child = spawn({"pid": pid_namespace_with_two_processes})
    before = observe.snapshot(child.pid)
    init = int(child.do("pid"))
    child.extra_pids.append(init)  # killing pid 1 kills every process of its namespace
    after_unshare = observe.snapshot(child.pid)
    inside = observe.snapshot(init)

    assert "pid_for_children" in after_unshare["isolated_namespaces"]
    assert "pid" not in after_unshare["isolated_namespaces"]  # unshare(CLONE_NEWPID) moves only children
    tree = {p["ns_pid"]: (p["pid"], p["ns_ppid"], p["comm"]) for p in inside["processes"]}
    assert set(tree) == {1, 2}
    assert tree[1][:2] == (init, 0)  # pid 1's parent is outside the namespace
    assert tree[2][1] == 1
    changes = texts(observe.diff(after_unshare, inside))
    assert f"pid changed: {child.pid} -> {init}" in changes
    assert any(t.startswith("pid namespace changed: ") for t in changes)
    assert f"process 1 ({tree[1][2]}) appeared in the pid namespace" in changes
    assert not any("left the pid namespace" in t for t in observe.diff(before, inside))  # host churn ignored
    assert f"1 {tree[1][2]} (host pid {init})" in observe.describe(inside)


def test_snapshot_from_a_thread_heavy_process(spawn):
    stop = threading.Event()
    threads = [threading.Thread(target=stop.wait) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        child = spawn({"uts": new_uts_named_box, "net": lambda: syscalls.unshare(syscalls.CLONE_NEWNET)})
        child.do("uts")
        child.do("net")
        namespaces = own_namespaces()
        seen: list[dict] = []
        worker = threading.Thread(target=lambda: seen.append(observe.snapshot(child.pid)))
        worker.start()
        worker.join()
        snap = observe.snapshot(child.pid)
        assert own_namespaces() == namespaces
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert snap["uname"]["nodename"] == seen[0]["uname"]["nodename"] == "box"
    assert [link["name"] for link in snap["network"]] == ["lo"]
    assert os.uname().nodename != "box"


def test_dead_pid_raises_a_clean_error():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    with pytest.raises(ContainerError, match=f"cannot observe pid {pid}: no such process"):
        observe.snapshot(pid)


def test_zombie_is_refused_cleanly():
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped: a zombie
        with pytest.raises(ContainerError, match="has exited"):
            observe.snapshot(pid)
    finally:
        os.waitpid(pid, 0)


def test_process_exiting_mid_snapshot_gives_a_partial_snapshot(spawn, monkeypatch):
    child = spawn({})
    read_mounts = observe.read_mounts

    def exit_then_read(pid: int) -> list[dict]:  # the fault: the process dies between two sections
        os.kill(pid, signal.SIGKILL)
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        return read_mounts(pid)

    monkeypatch.setattr(observe, "read_mounts", exit_then_read)
    snap = observe.snapshot(child.pid)

    assert snap["partial"] is True
    assert "uname" in snap and "network" not in snap
    assert set(snap["errors"]) >= {"network", "root"}
    assert "exited while it was observed" in texts(observe.diff(snap, snap))[-1]
    json.dumps(snap)


def test_snapshots_and_diffs_are_json_serialisable(spawn):
    child = spawn({"uts": new_uts_named_box})
    before = observe.snapshot(child.pid)
    child.do("uts")
    after = observe.snapshot(child.pid)
    for value in (before, after, observe.diff(before, after), observe.snapshot(os.getpid())):
        assert json.loads(json.dumps(value)) == value
    assert set(after) >= {"pid", "comm", "cmdline", "exe", "uname", "namespaces", "isolated_namespaces",
                          "mounts", "cgroup", "processes", "network", "root"}
    assert "partial" not in after
