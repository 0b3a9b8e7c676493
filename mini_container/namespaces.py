"""Stage 1, namespaces: what a process can see of the machine.

A namespace wraps one kind of global resource (host name, process ids, mounts, network stack, ...) so
that the processes inside see their own instance of it. Linux has eight kinds; a container is a
process that has its own instance of (usually) all of them. Three system calls drive them:

- clone(2) with CLONE_NEW* flags creates a child in new namespaces;
- unshare(2) moves the caller into new namespaces (two kinds, pid and time, move only its children);
- setns(2) moves the caller into an existing namespace, given an open file that refers to it.

/proc/PID/ns/ shows a process's namespaces as magic links, `uts -> uts:[4026531838]`: two processes
share a namespace exactly when the inode numbers match (`lsns` lists them this way). Opening such a
file gives the descriptor that setns() takes. `pid_for_children` and `time_for_children` show where
the process's future children will go.

A namespace lives as long as something holds it: a process in it, an open descriptor on its ns file,
a bind mount of that file (`persist()`, as `ip netns add` does), or a child namespace it owns. When
the last holder goes, the kernel destroys it along with everything in it (mounts, interfaces, IPC
objects).

Every namespace is owned by a user namespace (the creator's at creation time; with
CLONE_NEWUSER|CLONE_NEWUTS in one call the user namespace is made first and owns the others), and a
capability is effective only over namespaces owned by a user namespace where the process holds it.

Traps, kind by kind, are in the docs of `KINDS` below. Across kinds:
- Namespaces belong to a thread. unshare(CLONE_NEWUSER) and setns into a user, mnt or time namespace
  refuse a multi-threaded caller (EINVAL or EUSERS). A Python interpreter with threads (Jupyter) must
  fork first: `ForkedChild` and `run_in_child` below do that, and the engine never moves its own
  process.
- `join()` opens every /proc/PID/ns file before the first setns(): after joining a mount namespace,
  /proc may be another one. Order matters too; see `join()`.
- Since Linux 5.8, setns() also takes a pidfd and a set of flags and joins them all at once; we use
  the /proc files because they can be seen, listed and bind-mounted.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import pickle
import signal
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from mini_container import syscalls
from mini_container.errors import InvalidArgumentError


@dataclass(frozen=True)
class NamespaceKind:
    """One kind of namespace: its name in /proc/PID/ns, its CLONE_NEW* flag, and what it isolates."""

    name: str
    flag: int
    doc: str


# In nsenter's order, the order `join()` enters them in (user aside, see there).
def _kind(name: str, flag: int, doc: str) -> NamespaceKind:
    return NamespaceKind(name, flag, " ".join(doc.split()))


KINDS: dict[str, NamespaceKind] = {kind.name: kind for kind in (
    _kind("user", syscalls.CLONE_NEWUSER, """
        User and group ids, and capabilities. Inside, a process can be uid 0 with every capability
        while outside it is an ordinary id; it owns the namespaces created with or after it. Until
        /proc/PID/uid_map and gid_map are written, the process is nobody (65534) inside. Each map is
        written once, in one write(2), by the process itself or by a process in the parent namespace,
        as lines `inside outside count`. An unprivileged writer must write "deny" to /proc/PID/setgroups
        before gid_map (EPERM otherwise): else a process could drop a group that was denying it
        access. Traps: files owned by unmapped ids show as nobody; setns into a user namespace fails
        (EINVAL) for a multi-threaded caller or one already in it; a process cannot unshare its way
        back to the parent namespace."""),
    _kind("cgroup", syscalls.CLONE_NEWCGROUP, """
        The view of the cgroup tree. Its root is the caller's cgroup at the moment of
        unshare(CLONE_NEWCGROUP), so /proc/self/cgroup shows "/" for every hierarchy, and a cgroupfs
        mounted inside shows only that subtree. It hides the host's cgroup layout; it moves nothing
        and limits nothing (that is the cgroups stage). Trap: place the process in its container
        cgroup first and unshare second, else the namespace root is the host's cgroup, and a later
        move shows as paths like "/../sibling"."""),
    _kind("ipc", syscalls.CLONE_NEWIPC, """
        System V IPC objects (message queues, semaphore sets, shared memory segments: ipcs(1),
        /proc/sysvipc/msg, sem, shm) and POSIX message queues get their own key and id space, and
        their own limits (/proc/sys/kernel/msgmax, shmmax, ...). The objects die with the
        namespace. Traps: /proc/sysvipc shows the reader's namespace, but /dev/mqueue shows the one of
        whoever mounted it, so a container mounts its own; POSIX shared memory (shm_open) is files in
        /dev/shm, isolated by the mount namespace and not by this one."""),
    _kind("uts", syscalls.CLONE_NEWUTS, """
        The host name and NIS domain name (uname -n, /proc/sys/kernel/hostname and domainname). The
        new namespace starts with a copy of the caller's names; sethostname(2) inside changes only
        the copy. Trap: /etc/hostname and /etc/hosts are files of the root filesystem, not kernel
        state: a container that wants its name resolvable writes them itself."""),
    _kind("net", syscalls.CLONE_NEWNET, """
        A whole network stack: interfaces, addresses, routes, netfilter rules, sockets, the port
        space and /proc/net (a link to /proc/self/net). A new one holds only the loopback interface
        `lo`, down; a veth pair with one end on the host connects it (the network stage). Traps:
        /sys/class/net shows the namespace of whoever mounted /sys, so a container mounts a new sysfs;
        a socket stays in the namespace it was created in; when the namespace dies, virtual
        interfaces in it are destroyed and physical ones go back to the initial namespace."""),
    _kind("pid", syscalls.CLONE_NEWPID, """
        Process ids. The first process created in the namespace is its pid 1, the init: it reaps the
        orphans inside, and signals it has no handler for are dropped unless they come from an
        ancestor namespace. A process has one pid per level, listed by NSpid in /proc/PID/status.
        Traps: unshare(CLONE_NEWPID) and setns() move only the caller's future children
        (/proc/PID/ns/pid_for_children, which cannot even be read before the first child exists), so
        to join a container's pid namespace target a process inside it, not the one that unshared;
        when pid 1 exits the kernel kills everything inside, and a later fork() there fails with
        ENOMEM; /proc shows the pid namespace of whoever mounted it, so a container mounts its own."""),
    _kind("mnt", syscalls.CLONE_NEWNS, """
        The mount table (/proc/PID/mountinfo). unshare(CLONE_NEWNS) copies the caller's mounts;
        afterwards mounts made on one side stay there, unless propagation carries them. Trap:
        propagation is copied too; on a systemd host / is `shared`, and a mount made in the new
        namespace appears on the host. Make the copy private first (`make_mounts_private()`, or
        MS_SLAVE as runc does). setns into a mount namespace fails (EINVAL) for a multi-threaded
        caller, and sets its root and working directory to the namespace's root. A mount namespace
        file can be bind-mounted (`persist()`) only into an older mount namespace (EINVAL or EACCES
        otherwise: the mount could keep its own namespace alive), and only onto a mount that does not
        propagate into other namespaces (EINVAL). "Older" means a smaller namespace id, and on Linux
        6.18 we see ids handed out in per-CPU batches: a namespace created later on another CPU may
        get a smaller id and be refused. The initial namespace is older than all, so persisting from
        the host always works; between two new ones, create both on the same CPU."""),
    _kind("time", syscalls.CLONE_NEWTIME, """
        Offsets for CLOCK_MONOTONIC and CLOCK_BOOTTIME (with their _RAW, _COARSE and _ALARM variants),
        so that a container checkpointed on one machine and restored on another sees its clocks run
        on. CLOCK_REALTIME, the wall clock, is not namespaced. Offsets go into /proc/PID/timens_offsets
        (`monotonic SECS NANOSECS`) after unshare(CLONE_NEWTIME) and before any process has entered
        the namespace; then they are frozen (EACCES). Traps: like pid, unshare() moves only the
        caller's future children (time_for_children), or the caller itself at its next execve();
        setns() moves the caller at once."""),
)}


def parse_kinds(names: Iterable[str]) -> list[str]:
    """Check namespace kind names, as in /proc/PID/ns ("mnt", not "mount"); return each once, in order."""
    kinds: list[str] = []
    for name in names:
        if name not in KINDS:
            raise InvalidArgumentError(
                f"unknown namespace kind {name!r}: the kinds are {', '.join(KINDS)} (as in /proc/PID/ns)")
        if name not in kinds:
            kinds.append(name)
    return kinds


def _flags(kinds: Iterable[str]) -> int:
    return functools.reduce(lambda acc, kind: acc | KINDS[kind].flag, parse_kinds(kinds), 0)


def _proc(pid: int, name: str) -> str:
    """/proc/PID/NAME, for a process that exists."""
    if not os.path.isdir(f"/proc/{pid}"):
        raise InvalidArgumentError(f"no process with pid {pid}: it has exited or never existed (ps -p {pid})")
    return f"/proc/{pid}/{name}"


def _explain(err: OSError, hints: dict[int, str]) -> OSError:
    """Add the likely cause of a kernel refusal to `err`, as a note printed under its message."""
    if err.errno in hints:
        err.add_note(hints[err.errno])
    return err


_UNSHARE_HINTS = {
    errno.EPERM: "creating namespaces other than user needs CAP_SYS_ADMIN: run as root",
    errno.EINVAL: "unshare(CLONE_NEWUSER) refuses a multi-threaded process: fork, then unshare in the child",
    errno.ENOSPC: "a namespace limit is reached: see /proc/sys/user/max_*_namespaces",
    errno.EUSERS: "user and pid namespaces nest at most 32 deep",
}
_SETNS_HINTS = {
    errno.EPERM: "joining needs CAP_SYS_ADMIN over the namespace's owning user namespace: run as root",
    errno.EINVAL: "setns into a user or mnt namespace refuses a multi-threaded process (fork first), "
                  "and a process cannot re-enter the user namespace it is in",
    errno.EUSERS: "setns into a time namespace refuses a multi-threaded process: fork first",
}


def unshare(kinds: Iterable[str]) -> None:
    """Move the calling process into new namespaces of these kinds, in one unshare(2).

    pid and time move only the children forked afterwards. Call it in a forked child (`run_in_child`),
    never in a process that must keep its own view of the machine.
    """
    try:
        syscalls.unshare(_flags(kinds))
    except OSError as err:
        raise _explain(err, _UNSHARE_HINTS) from None


def join(pid: int, kinds: Iterable[str]) -> None:
    """Move the calling process into the namespaces of these kinds of process `pid`, as nsenter does.

    Every /proc/PID/ns file is opened first, then setns(2) is called on each and the files closed.
    The order is nsenter's, in two passes: every kind but user, in `KINDS` order (mnt late, after
    pid; time last), tolerating refusals; then user, then the kinds the first pass could not join.
    A privileged caller so joins user last (dropping its privileges only at the end), and an
    unprivileged one joins user first, gaining in it the capabilities the others need. The caller's
    own user namespace is skipped (setns refuses it). pid moves only the caller's future children.
    """
    wanted = parse_kinds(kinds)
    own_user = os.stat("/proc/self/ns/user").st_ino
    files: dict[str, int] = {}
    try:
        for kind in (k for k in KINDS if k in wanted):
            files[kind] = os.open(_proc(pid, f"ns/{kind}"), os.O_RDONLY | os.O_CLOEXEC)
        if "user" in files and os.fstat(files["user"]).st_ino == own_user:
            os.close(files.pop("user"))
        pending = dict(files)
        for kind, fd in files.items():
            if kind != "user":
                with contextlib.suppress(OSError):
                    syscalls.setns(fd, KINDS[kind].flag)
                    del pending[kind]
        for kind, fd in pending.items():
            try:
                syscalls.setns(fd, KINDS[kind].flag)
            except OSError as err:
                raise _explain(err, _SETNS_HINTS) from None
    finally:
        for fd in files.values():
            os.close(fd)


def join_path(path: str, kind: str) -> None:
    """Move the calling process into the `kind` namespace that the file at `path` refers to.

    `path` is a /proc/PID/ns file or a bind mount of one (`persist()`). Passing the kind's flag makes
    the kernel check that the file is a namespace of that kind (EINVAL otherwise).
    """
    flag = KINDS[parse_kinds([kind])[0]].flag
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        syscalls.setns(fd, flag)
    except OSError as err:
        raise _explain(err, _SETNS_HINTS) from None
    finally:
        os.close(fd)


def persist(pid: int, kind: str, path: str) -> None:
    """Keep the `kind` namespace of `pid` alive with no process in it: bind-mount its ns file on `path`.

    `path` is created as an empty file (it must not exist). The mount lives in the caller's mount
    namespace; `join_path(path, kind)` enters the namespace, `release(path)` lets it go. This is what
    `ip netns add` and `unshare --net=FILE` do. For a mnt namespace, the caller must be in an older
    mount namespace, with `path` on a mount that does not propagate to other namespaces (see the
    mnt entry of `KINDS`).
    """
    source = _proc(pid, f"ns/{parse_kinds([kind])[0]}")
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444))
    except FileExistsError:
        raise InvalidArgumentError(f"cannot persist a {kind} namespace on {path}: it exists; "
                                   "release() it or choose another path") from None
    try:
        syscalls.mount(source, path, None, syscalls.MS_BIND)
    except BaseException as err:
        os.unlink(path)
        if isinstance(err, OSError) and kind == "mnt":
            err.add_note("a mnt namespace file can be bind-mounted only from an older mount namespace (one "
                         "with a smaller id), onto a mount with private propagation: see KINDS['mnt'].doc")
        raise


def release(path: str) -> None:
    """Undo `persist()`: detach the bind mount at `path` and remove the file.

    The namespace dies if nothing else holds it. A file left by a persist() that crashed before its
    mount (no mount on it: EINVAL from umount2) is removed all the same.
    """
    try:
        syscalls.umount2(path, syscalls.MNT_DETACH)
    except OSError as err:
        if err.errno != errno.EINVAL:
            raise
    os.unlink(path)


def make_mounts_private(path: str = "/") -> None:
    """Stop mount events crossing between this mount namespace and others, below `path`.

    unshare(CLONE_NEWNS) copies propagation along with the mounts: without this, on a host where / is
    shared (systemd makes it so), mounts made in the new namespace also appear on the host.
    """
    syscalls.mount(None, path, None, syscalls.MS_REC | syscalls.MS_PRIVATE)


def _write_proc(path: str, text: str, hints: dict[int, str]) -> None:
    """Write `text` in a single write(2): the kernel parses id maps and time offsets per call."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    except OSError as err:
        err.filename = path
        raise _explain(err, hints) from None
    finally:
        os.close(fd)


_MAP_HINTS = {
    errno.EPERM: "uid_map and gid_map can be written only once each; the writer needs CAP_SETUID/CAP_SETGID "
                 "over the outside ids, and an unprivileged writer must deny setgroups before gid_map",
    errno.EINVAL: "map lines must be `inside outside count`, without overlapping ranges, at most 340 lines",
}


def write_id_maps(pid: int, uid_map: list[tuple[int, int, int]], gid_map: list[tuple[int, int, int]],
                  deny_setgroups: bool = True) -> None:
    """Write the uid and gid maps of the user namespace of `pid`, from the parent namespace.

    Each map is a list of (inside, outside, count) ranges: (0, 100000, 65536) makes ids 0..65535
    inside be 100000..165535 outside. With `deny_setgroups`, "deny" goes to /proc/PID/setgroups first,
    as an unprivileged writer must do; setgroups(2) is then refused inside the namespace.
    """
    for name, ranges in (("uid_map", uid_map), ("gid_map", gid_map)):
        if not ranges or any(len(r) != 3 or min(r) < 0 or r[2] == 0 for r in ranges):
            raise InvalidArgumentError(f"bad {name} {ranges!r}: give (inside, outside, count) ranges of "
                                       "non-negative ids with count > 0, e.g. [(0, 100000, 65536)]")
    if deny_setgroups:
        _write_proc(_proc(pid, "setgroups"), "deny", _MAP_HINTS)
    for name, ranges in (("uid_map", uid_map), ("gid_map", gid_map)):
        text = "".join(f"{inside} {outside} {count}\n" for inside, outside, count in ranges)
        _write_proc(_proc(pid, name), text, _MAP_HINTS)


def set_time_offsets(pid: int, monotonic_ns: int = 0, boottime_ns: int = 0) -> None:
    """Set how far CLOCK_MONOTONIC and CLOCK_BOOTTIME are moved in the new time namespace of `pid`.

    `pid` has called unshare(CLONE_NEWTIME) and has no child yet: the offsets apply to
    /proc/PID/ns/time_for_children and freeze when the first process enters it. Offsets are in
    nanoseconds and may be negative (not below the clock's zero).
    """
    hints = {errno.EACCES: f"time offsets are frozen once a process is in the time namespace: pid {pid} must "
                           "have unshared time and not forked yet",
             errno.EPERM: "writing time offsets needs CAP_SYS_TIME over the time namespace",
             errno.ERANGE: "an offset may not move the clock below zero"}
    lines = []
    for clock, offset in (("monotonic", monotonic_ns), ("boottime", boottime_ns)):
        seconds, nanoseconds = divmod(offset, 1_000_000_000)
        lines.append(f"{clock} {seconds} {nanoseconds}\n")
    _write_proc(_proc(pid, "timens_offsets"), "".join(lines), hints)


def observe(pid: int) -> dict[str, int]:
    """{kind: inode} of the namespaces of `pid`, from /proc/PID/ns (the number in `uts:[4026531838]`).

    Reading another process's ns files needs ptrace read access to it (PermissionError otherwise).
    """
    try:
        return {kind: os.stat(_proc(pid, f"ns/{kind}")).st_ino for kind in KINDS}
    except PermissionError as err:
        err.add_note(f"reading /proc/{pid}/ns needs ptrace read access to pid {pid} (CAP_SYS_PTRACE); "
                     "a supervisor or a security module may refuse it even to root")
        raise


@dataclass(frozen=True)
class NamespaceComparison:
    """One kind, compared: the namespace of a process and the host's; `shared` means not isolated."""

    kind: str
    inode: int
    host_inode: int
    shared: bool


def compare_with_host(pid: int) -> dict[str, NamespaceComparison]:
    """For each kind, the namespace of `pid` next to the host's, as lsns shows them.

    The host is PID 1, or kthreadd (pid 2) where PID 1 refuses to be inspected (a supervisor may
    deny ptrace access even to root): kernel threads live in the initial namespaces.
    """
    try:
        host = observe(1)
    except PermissionError:
        with open("/proc/2/comm") as f:
            if f.read().strip() != "kthreadd":
                raise
        host = observe(2)
    return {kind: NamespaceComparison(kind, inode, host[kind], inode == host[kind])
            for kind, inode in observe(pid).items()}


class ForkedChild:
    """A forked child that runs `steps` one at a time, when asked, and sends back what each returns.

    Namespaces are changed in a child so that the calling process never moves. Between steps the child
    waits on a pipe, so /proc/PID shows the state after the last step, and the parent can do its part
    (write uid_map, set time offsets, persist or join the namespaces). After the last step the child
    keeps waiting, holding its namespaces, until `close()`. It gets SIGKILL if its parent dies first
    (PR_SET_PDEATHSIG). Results and exceptions travel pickled; exceptions are raised again by `step()`.
    A step may start a ForkedChild of its own: after unshare(["pid"]), that one is pid 1.

        with ForkedChild(lambda: unshare(["user"]), os.getuid, os.getuid) as child:
            child.step()
            assert os.getuid() == 0 and child.step() == 65534   # not mapped yet: nobody
            write_id_maps(child.pid, [(0, 0, 1)], [(0, 0, 1)])  # root outside is root inside
            assert child.step() == 0
    """

    def __init__(self, *steps: Callable[[], Any]) -> None:
        requests_r, self._requests = os.pipe()
        self._replies, replies_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self._requests)
            os.close(self._replies)
            _serve(steps, requests_r, replies_w)
        os.close(requests_r)
        os.close(replies_w)
        self.exit_code: int | None = None

    def step(self) -> Any:
        """Run the next step in the child and return its result (or raise its exception)."""
        try:
            os.write(self._requests, b"s")
            header = _read_exactly(self._replies, 8)
        except BrokenPipeError:
            header = b""
        size = struct.unpack("Q", header)[0] if len(header) == 8 else -1
        payload = _read_exactly(self._replies, size) if size > 0 else b""
        if len(payload) != size:
            raise ChildProcessError(f"forked child {self.pid} exited without answering (no step left?)")
        ok, value = pickle.loads(payload)
        if not ok:
            value.add_note(f"(raised in forked child {self.pid})")
            raise value
        return value

    @property
    def closed(self) -> bool:
        """True once the child has been reaped."""
        return self.exit_code is not None

    def close(self, timeout: float = 5.0) -> int:
        """Let the child exit (it waits for this pipe to close), reap it, and return its exit code.

        A child still busy after `timeout` seconds is killed (exit code -9).
        """
        if self.exit_code is not None:
            return self.exit_code
        os.close(self._requests)
        os.close(self._replies)
        deadline = time.monotonic() + timeout
        while (reaped := os.waitpid(self.pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(self.pid, signal.SIGKILL)
                reaped = os.waitpid(self.pid, 0)
                break
            time.sleep(0.005)
        self.exit_code = os.waitstatus_to_exitcode(reaped[1])
        return self.exit_code

    def __enter__(self) -> ForkedChild:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _read_exactly(fd: int, size: int) -> bytes:
    """Read `size` bytes from a pipe, or fewer if the writer closed it first."""
    data = b""
    while len(data) < size and (chunk := os.read(fd, size - len(data))):
        data += chunk
    return data


def _serve(steps: tuple[Callable[[], Any], ...], requests: int, replies: int) -> None:
    """The child's side of `ForkedChild`: run a step per request byte; exit when the pipe closes."""
    code = 0
    try:
        syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
        for step in steps:
            if not os.read(requests, 1):
                break
            try:
                reply = (True, step())
            except BaseException as err:
                reply = (False, err)
            try:
                payload = pickle.dumps(reply)
            except Exception as err:
                payload = pickle.dumps((False, RuntimeError(f"cannot send {reply[1]!r} back: {err}")))
            os.write(replies, struct.pack("Q", len(payload)) + payload)
        os.read(requests, 1)
    except BaseException:
        code = 1
    finally:
        os._exit(code)


def run_in_child(function: Callable[..., Any], *args: Any) -> Any:
    """Call `function(*args)` in a forked child and return its result (or raise its exception)."""
    with ForkedChild(functools.partial(function, *args)) as child:
        return child.step()
