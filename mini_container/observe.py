"""What the kernel shows of one process: snapshots as plain dicts, and the difference between two.

A container is not a thing the kernel knows about; it is a process whose view of the machine has been
narrowed, one kernel object at a time. Everything that narrowing changes can be read back from outside,
and this module reads it:

- /proc/PID/ns/KIND: one magic link per namespace kind (`uts:[4026531838]`). Two processes share a
  namespace exactly when the inode numbers match; PID 1's links show the host's. `pid_for_children`
  and `time_for_children` differ from `pid` and `time` after unshare(): those two kinds apply only to
  children forked afterwards.
- uname(2): the hostname lives in the UTS namespace, and no /proc file shows another process's. We
  start a short-lived thread, setns(2) it into /proc/PID/ns/uts, call os.uname() there and setns it
  back. Namespaces belong to a task (a thread), not to the process, so only that thread moves, and
  the caller's own threads never change namespace. setns() of a uts or net namespace is allowed in a
  multi-threaded process such as a Jupyter kernel (a mnt or user namespace would not be: EINVAL).
- /proc/PID/mountinfo: the mount table as the process sees it, paths relative to its root. A new mount
  namespace starts as a copy with new mount ids, so mounts are compared by what they are (mount point,
  fstype, source, root), never by id. The optional fields (`shared:N`, `master:N`) show propagation;
  none means private.
- /proc/PID/cgroup: `hierarchy:controllers:path` lines, one per v1 hierarchy and `0::path` for v2.
- /proc/*/status: `NSpid:` lists a process's pid in each pid namespace from ours down to its own; the
  last number is the pid it sees for itself. A process whose parent is outside its namespace sees
  parent 0, as pid 1 of a container does.
- rtnetlink: links and addresses of a network namespace. /proc/PID/net/dev names the links but not
  their state or IPv4 addresses, and /sys/class/net shows the namespace of whoever mounted /sys. So a
  thread joins /proc/PID/ns/net and opens an AF_NETLINK socket: a socket belongs to the network
  namespace of the task that creates it. We send RTM_GETLINK and RTM_GETADDR dump requests and parse
  the replies with the network stage's own rtnetlink module (network/rtnetlink.py): the messages are
  small, and seeing their layout (nlmsghdr, ifinfomsg/ifaddrmsg, then type-length-value attributes) is
  the lesson.
- /proc/PID/root: a magic link to the process's root directory; listing through it shows "/" as the
  process sees it, even after pivot_root into another mount namespace.

Traps: a pid can exit (and its number be reused) while we read. We hold a pidfd (pidfd_open(2)) for
the whole snapshot; it becomes readable once the process has exited, so a snapshot that raced an exit is
returned marked `"partial": True` with the sections that failed, never half-read and unmarked. A zombie
has no namespaces left to read, so it is refused like a missing pid.

Diffs compare the host's pid namespace by nothing but its inode: its processes come and go for reasons
of their own, and listing them would bury the container's changes.
"""

from __future__ import annotations

import ipaddress
import os
import select
import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from mini_container import syscalls
from mini_container.errors import ContainerError
from mini_container.network import rtnetlink as rt

NAMESPACE_KINDS = ("pid", "pid_for_children", "net", "mnt", "uts", "ipc", "user", "cgroup",
                   "time", "time_for_children")
ROOT_LISTING_LIMIT = 64  # names of "/" kept in a snapshot; the total is recorded beside them

T = TypeVar("T")
Snapshot = dict[str, Any]
Change = dict[str, Any]


# --- reading one process --------------------------------------------------------------------------

def _proc(pid: int, name: str) -> str:
    return f"/proc/{pid}/{name}"


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return f.read()


def _ns_inode(pid: int | str, kind: str) -> int:
    """The inode number behind /proc/PID/ns/KIND, e.g. 4026531838 for `uts:[4026531838]`."""
    link = os.readlink(f"/proc/{pid}/ns/{kind}")
    return int(link[link.index("[") + 1:-1])


def _in_namespace(pid: int, kind: str, flag: int, work: Callable[[], T]) -> T:
    """Run `work` in a new thread that has joined the `kind` namespace of `pid`; the caller stays put.

    The thread returns to its own namespace before it ends: Thread.join() returns while the OS
    thread is still exiting, and even then it must not show up in /proc as living elsewhere.
    """
    target = os.open(_proc(pid, f"ns/{kind}"), os.O_RDONLY | os.O_CLOEXEC)
    outcome: dict[str, Any] = {}

    def joined() -> None:
        home = os.open(f"/proc/thread-self/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(target, flag)
            try:
                outcome["value"] = work()
            finally:
                syscalls.setns(home, flag)
        except BaseException as e:  # handed to the caller's thread and raised there
            outcome["error"] = e
        finally:
            os.close(home)

    try:
        thread = threading.Thread(target=joined, name=f"observe-{kind}-{pid}")
        thread.start()
        thread.join()
    finally:
        os.close(target)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def read_uname(pid: int) -> dict[str, str]:
    """Nodename and kernel release as `pid` sees them, from inside its UTS namespace."""
    seen = _in_namespace(pid, "uts", syscalls.CLONE_NEWUTS, os.uname)
    return {"nodename": seen.nodename, "release": seen.release}


def read_namespaces(pid: int) -> dict[str, int]:
    """{kind: inode} for every namespace kind this kernel has (our own /proc/self/ns lists them).

    A process that has unshared pid or time but not yet forked has a `pid_for_children` (or
    `time_for_children`) link that cannot be read (ENOENT) until its first child exists: it is
    left out here, which is exactly what that trap looks like.
    """
    present = set(os.listdir("/proc/self/ns"))
    found = {}
    for kind in NAMESPACE_KINDS:
        if kind not in present:
            continue
        try:
            found[kind] = _ns_inode(pid, kind)
        except FileNotFoundError:
            if not kind.endswith("_for_children") or not os.path.exists(_proc(pid, "ns")):
                raise
    return found


def read_host_namespaces() -> dict[str, int]:
    """The host's namespaces: PID 1's, or kthreadd's (pid 2) where PID 1 is shielded from us.

    Reading another process's ns links needs ptrace read access; a supervisor running as PID 1 may
    deny it even to root. Kernel threads live in the kernel's initial namespaces, so kthreadd shows
    the same host namespaces that an ordinary init would.
    """
    try:
        return read_namespaces(1)
    except PermissionError:
        if _read("/proc/2/comm").strip() != "kthreadd":
            raise
        return read_namespaces(2)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash in paths as octal escapes (`\\040`)."""
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def read_mounts(pid: int) -> list[dict[str, Any]]:
    """/proc/PID/mountinfo, one dict per mount, in the kernel's order (parents before children)."""
    mounts = []
    for line in _read(_proc(pid, "mountinfo")).splitlines():
        left, right = line.split(" - ", 1)
        mount_id, parent, device, root, point, options, *optional = left.split(" ")
        fstype, source, super_options = right.split(" ", 2)
        mounts.append({
            "id": int(mount_id), "parent": int(parent), "device": device,
            "root": _unescape(root), "mount_point": _unescape(point), "options": options,
            "propagation": optional, "fstype": fstype, "source": _unescape(source),
            "super_options": super_options,
        })
    return mounts


def read_cgroup(pid: int) -> list[dict[str, Any]]:
    """/proc/PID/cgroup: one entry per hierarchy (v1) plus `0::` for the v2 unified hierarchy."""
    entries = []
    for line in _read(_proc(pid, "cgroup")).splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        entries.append({"hierarchy": int(hierarchy),
                        "controllers": controllers.split(",") if controllers else [], "path": path})
    return entries


def _status(pid: str) -> dict[str, str]:
    fields = {}
    for line in _read(f"/proc/{pid}/status").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def read_processes(pid: int) -> list[dict[str, Any]]:
    """Every process whose pid namespace is that of `pid`, with host and in-namespace pids."""
    namespace = _ns_inode(pid, "pid")
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if _ns_inode(entry, "pid") != namespace:
                continue
            status = _status(entry)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # exited while we looked, or shielded from us (a supervisor as PID 1)
        found.append({"pid": int(entry), "ns_pid": int(status["NSpid"].split()[-1]),
                      "ppid": int(status["PPid"]), "comm": status["Name"]})
    inside = {p["pid"]: p["ns_pid"] for p in found}
    for p in found:
        p["ns_ppid"] = inside.get(p["ppid"], 0)  # a parent outside the namespace shows as 0
    return sorted(found, key=lambda p: p["ns_pid"])


# --- rtnetlink (the messages and the socket are network/rtnetlink.py's) ---------------------------------
IFLA_OPERSTATE = 16  # <linux/if_link.h>
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")


def _links_and_addresses() -> list[dict[str, Any]]:
    """Links of the calling thread's network namespace, each with its addresses."""
    with rt.Rtnetlink() as sock:
        links = {}
        for payload in sock.dump(rt.RTM_GETLINK, rt.IFINFOMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            _, _, index, flags, _ = rt.IFINFOMSG.unpack_from(payload)
            attrs = rt.attributes(payload[rt.IFINFOMSG.size:])
            info = rt.attributes(attrs.get(rt.IFLA_LINKINFO, b""))
            operstate = attrs.get(IFLA_OPERSTATE, b"\0")[0]
            links[index] = {
                "name": attrs[rt.IFLA_IFNAME].rstrip(b"\0").decode(), "index": index,
                "state": "up" if flags & rt.IFF_UP else "down",
                "operstate": OPERSTATES[operstate] if operstate < len(OPERSTATES) else str(operstate),
                "mac": attrs.get(rt.IFLA_ADDRESS, b"").hex(":"),
                "kind": info.get(rt.IFLA_INFO_KIND, b"").rstrip(b"\0").decode(), "addresses": [],
            }
        for payload in sock.dump(rt.RTM_GETADDR, rt.IFADDRMSG.pack(socket.AF_UNSPEC, 0, 0, 0, 0)):
            family, prefix, _, _, index = rt.IFADDRMSG.unpack_from(payload)
            attrs = rt.attributes(payload[rt.IFADDRMSG.size:])
            raw = attrs.get(rt.IFA_LOCAL) or attrs.get(rt.IFA_ADDRESS)  # LOCAL: ours on point-to-point links
            if raw and index in links:
                address = ipaddress.ip_address(raw)
                links[index]["addresses"].append(
                    {"family": f"ipv{address.version}", "address": str(address), "prefix": prefix})
    return sorted(links.values(), key=lambda link: link["index"])


def read_network(pid: int) -> list[dict[str, Any]]:
    """Links (name, index, up/down, MAC, kind) and their addresses in the network namespace of `pid`."""
    return _in_namespace(pid, "net", syscalls.CLONE_NEWNET, _links_and_addresses)


def read_root(pid: int) -> dict[str, Any]:
    """The process's root directory, and the names in "/" as it sees them (sorted, at most 64)."""
    names = sorted(os.listdir(_proc(pid, "root")))
    return {"path": os.readlink(_proc(pid, "root")), "entries": names[:ROOT_LISTING_LIMIT],
            "total": len(names)}


def _read_identity(pid: int) -> dict[str, Any]:
    raw = _read(_proc(pid, "cmdline"))
    try:
        exe: str | None = os.readlink(_proc(pid, "exe"))
    except FileNotFoundError:
        exe = None  # kernel threads have none; an exited process is caught by the pidfd check
    return {"comm": _read(_proc(pid, "comm")).rstrip("\n"), "cmdline": raw.split("\0")[:-1], "exe": exe}


# --- snapshot -----------------------------------------------------------------------------------------

def _exited(pidfd: int) -> bool:
    """A pidfd polls readable once its process has exited (zombies included)."""
    return bool(select.select([pidfd], [], [], 0)[0])


def snapshot(pid: int) -> Snapshot:
    """Everything observable of `pid`'s kernel state, as a JSON-serialisable dict.

    Sections: pid, comm, cmdline, exe, uname, namespaces, isolated_namespaces (kinds that differ from
    the host's, see read_host_namespaces), mounts, cgroup, processes, network, root. If the process
    exits while it is read, the result has "partial": True and "errors": {section: message}. Raises
    ContainerError for a pid that does not exist or has already exited.
    """
    try:
        pidfd = syscalls.pidfd_open(pid)
    except ProcessLookupError:
        raise ContainerError(f"cannot observe pid {pid}: no such process; check the pid "
                             "(did the process exit?)") from None
    except OSError as e:
        raise ContainerError(f"cannot observe pid {pid}: {e}") from e
    try:
        if _exited(pidfd):
            raise ContainerError(f"cannot observe pid {pid}: it has exited (a zombie has no namespaces)")
        snap: Snapshot = {"pid": pid}
        errors: dict[str, str] = {}

        def section(name: str, read: Callable[[int], Any]) -> Any:
            try:
                return read(pid)
            except OSError as e:
                if not _exited(pidfd):
                    hint = "; observing another process needs root" if isinstance(e, PermissionError) else ""
                    raise ContainerError(f"cannot read the {name} of pid {pid}: {e}{hint}") from e
                errors[name] = f"the process exited while it was read ({e})"
                return None

        snap.update(section("identity", _read_identity) or {})
        readers = {"uname": read_uname, "namespaces": read_namespaces, "mounts": read_mounts,
                   "cgroup": read_cgroup, "processes": read_processes, "network": read_network,
                   "root": read_root}
        for name, read in readers.items():
            value = section(name, read)
            if value is not None:
                snap[name] = value
        if "namespaces" in snap:
            host = read_host_namespaces()
            snap["isolated_namespaces"] = [k for k, ino in snap["namespaces"].items() if ino != host.get(k)]
        if errors or _exited(pidfd):
            snap["partial"], snap["errors"] = True, errors
        return snap
    finally:
        os.close(pidfd)


# --- diff --------------------------------------------------------------------------------------------

def _change(section: str, what: str, before: Any, after: Any, text: str) -> Change:
    return {"section": section, "what": what, "before": before, "after": after, "text": text}


def _diff_identity(a: Snapshot, b: Snapshot) -> list[Change]:
    labels = {"pid": "pid", "comm": "command name", "exe": "executable"}
    changes = [_change("process", key, a.get(key), b.get(key),
                       f"{label} changed: {a.get(key)} -> {b.get(key)}")
               for key, label in labels.items() if a.get(key) != b.get(key)]
    if a.get("cmdline") != b.get("cmdline"):
        shown = [" ".join(s.get("cmdline") or []) for s in (a, b)]
        changes.append(_change("process", "cmdline", a.get("cmdline"), b.get("cmdline"),
                               f"command line changed: {shown[0]} -> {shown[1]}"))
    return changes


def _diff_uname(a: dict, b: dict) -> list[Change]:
    labels = {"nodename": "hostname", "release": "kernel release"}
    return [_change("uname", labels[key], a[key], b[key], f"{labels[key]} changed: {a[key]} -> {b[key]}")
            for key in labels if a[key] != b[key]]


def _diff_namespaces(a: dict, b: dict) -> list[Change]:
    return [_change("namespaces", kind, a.get(kind), b.get(kind),
                    f"{kind} namespace changed: {a.get(kind)} -> {b.get(kind)}")
            for kind in NAMESPACE_KINDS if a.get(kind) != b.get(kind)]


def _mount_keys(mounts: list[dict]) -> dict[tuple, dict]:
    """Mounts by what they are; a second identical mount stacked on the first gets the next number."""
    keyed: dict[tuple, dict] = {}
    for m in mounts:
        base = (m["mount_point"], m["fstype"], m["source"], m["root"])
        n = 0
        while (*base, n) in keyed:
            n += 1
        keyed[(*base, n)] = m
    return keyed


def _diff_mounts(a: list[dict], b: list[dict]) -> list[Change]:
    before, after = _mount_keys(a), _mount_keys(b)
    changes = []
    for key, m in before.items():
        if key not in after:
            changes.append(_change("mounts", m["mount_point"], m, None,
                                   f"unmounted {m['mount_point']} ({m['fstype']})"))
    for key, m in after.items():
        point, old = m["mount_point"], before.get(key)
        if old is None:
            bind = f" (bind of {m['root']})" if m["root"] != "/" else ""
            changes.append(_change("mounts", point, None, m, f"mounted {m['fstype']} on {point}{bind}"))
            continue
        if old["options"] != m["options"]:
            changes.append(_change("mounts", point, old["options"], m["options"],
                                   f"remounted {point}: {old['options']} -> {m['options']}"))
        if old["propagation"] != m["propagation"]:
            was, now = (" ".join(x["propagation"]) or "private" for x in (old, m))
            changes.append(_change("mounts", point, was, now,
                                   f"propagation of {point} changed: {was} -> {now}"))
    return changes


def _hierarchy(entry: dict) -> str:
    return ",".join(entry["controllers"]) or ("v2" if entry["hierarchy"] == 0 else str(entry["hierarchy"]))


def _diff_cgroup(a: list[dict], b: list[dict]) -> list[Change]:
    before = {_hierarchy(e): e["path"] for e in a}
    after = {_hierarchy(e): e["path"] for e in b}
    return [_change("cgroup", name, before.get(name), after.get(name),
                    f"cgroup ({name}) changed: {before.get(name)} -> {after.get(name)}")
            for name in sorted(before.keys() | after.keys()) if before.get(name) != after.get(name)]


def _container_processes(snap: Snapshot) -> dict[int, dict]:
    """Processes by host pid, or none when the namespace is the host's (see the module docstring)."""
    if "pid" not in snap.get("isolated_namespaces", []):
        return {}
    return {p["pid"]: p for p in snap["processes"]}


def _diff_processes(a: Snapshot, b: Snapshot) -> list[Change]:
    before, after = _container_processes(a), _container_processes(b)
    changes = []
    for host_pid, p in before.items():
        if host_pid not in after:
            changes.append(_change("processes", f"process {p['ns_pid']}", p, None,
                                   f"process {p['ns_pid']} ({p['comm']}) left the pid namespace"))
    for host_pid, p in after.items():
        old = before.get(host_pid)
        if old is None:
            changes.append(_change("processes", f"process {p['ns_pid']}", None, p,
                                   f"process {p['ns_pid']} ({p['comm']}) appeared in the pid namespace"))
        elif old["comm"] != p["comm"]:
            changes.append(_change("processes", f"process {p['ns_pid']}", old["comm"], p["comm"],
                                   f"process {p['ns_pid']} now runs {p['comm']} (was {old['comm']})"))
    return changes


def _address(a: dict) -> str:
    return f"{a['address']}/{a['prefix']}"


def _diff_network(a: list[dict], b: list[dict]) -> list[Change]:
    before = {link["name"]: link for link in a}
    after = {link["name"]: link for link in b}
    changes = [_change("network", name, link, None, f"link {name} disappeared")
               for name, link in before.items() if name not in after]
    for name, link in after.items():
        old = before.get(name)
        if old is None:
            changes.append(_change("network", name, None, link, f"link {name} appeared"))
            old = {"state": link["state"], "mac": link["mac"], "addresses": []}
        if old["state"] != link["state"]:
            changes.append(_change("network", name, old["state"], link["state"],
                                   f"link {name} went {link['state']}"))
        if old["mac"] != link["mac"]:
            changes.append(_change("network", name, old["mac"], link["mac"],
                                   f"link {name} MAC changed: {old['mac']} -> {link['mac']}"))
        was = {_address(x) for x in old["addresses"]}
        now = {_address(x) for x in link["addresses"]}
        changes += [_change("network", name, None, x, f"address {x} added to {name}")
                    for x in sorted(now - was)]
        changes += [_change("network", name, x, None, f"address {x} removed from {name}")
                    for x in sorted(was - now)]
    return changes


def _diff_root(a: dict, b: dict) -> list[Change]:
    changes = []
    if a["path"] != b["path"]:
        changes.append(_change("root", "path", a["path"], b["path"],
                               f"root changed: {a['path']} -> {b['path']}"))
    gained = sorted(set(b["entries"]) - set(a["entries"]))
    lost = sorted(set(a["entries"]) - set(b["entries"]))
    if gained:
        changes.append(_change("root", "entries", None, gained, f"/ now holds: {', '.join(gained)}"))
    if lost:
        changes.append(_change("root", "entries", lost, None, f"/ no longer holds: {', '.join(lost)}"))
    return changes


_SECTION_DIFFS: dict[str, Callable[[Any, Any], list[Change]]] = {
    "uname": _diff_uname, "namespaces": _diff_namespaces, "mounts": _diff_mounts, "cgroup": _diff_cgroup,
    "network": _diff_network, "root": _diff_root,
}


def diff(before: Snapshot, after: Snapshot) -> list[Change]:
    """The changes from one snapshot to the next, each with a sentence a person can read in "text".

    Snapshots of different pids are compared like any other (after a fork into a new pid namespace the
    observed process changes). A section missing from either side (a partial snapshot) is skipped.
    The sentences read like: "pid changed: 1234 -> 1240", "hostname changed: vm -> box",
    "uts namespace changed: 4026531838 -> 4026532301", "mounted proc on /proc", "unmounted / (ext4)",
    "remounted /: rw -> ro", "propagation of / changed: shared:1 -> private", "cgroup (memory) changed:
    / -> /mini/box", "process 1 (sh) appeared in the pid namespace", "link eth0 appeared",
    "link lo went up", "address 10.0.0.2/24 added to eth0", "root changed: / -> /var/lib/box/rootfs".
    """
    changes = _diff_identity(before, after)
    for name, compare in _SECTION_DIFFS.items():
        if name in before and name in after:
            changes += compare(before[name], after[name])
    if "processes" in before and "processes" in after:
        changes += _diff_processes(before, after)
    if after.get("partial"):
        changes.append(_change("snapshot", "partial", None, after["errors"],
                               f"pid {after['pid']} exited while it was observed: the view after is partial"))
    return changes


# --- describe ----------------------------------------------------------------------------------------

def _tree(processes: list[dict]) -> list[str]:
    children: dict[int, list[dict]] = {}
    for p in processes:
        children.setdefault(p["ns_ppid"], []).append(p)
    lines: list[str] = []

    def walk(parent: int, depth: int) -> None:
        for p in children.get(parent, []):
            lines.append(f"{'  ' * depth}{p['ns_pid']} {p['comm']} (host pid {p['pid']})")
            walk(p["ns_pid"], depth + 1)

    walk(0, 0)
    return lines


def describe(snap: Snapshot) -> str:
    """A compact multi-line summary of a snapshot for a terminal or a notebook."""
    command = " ".join(snap.get("cmdline") or [])
    command = command if len(command) <= 80 else command[:77] + "..."
    lines = [f"pid {snap['pid']}: {snap.get('comm', '?')}  {command}"]
    if "uname" in snap:
        lines.append(f"hostname: {snap['uname']['nodename']} (kernel {snap['uname']['release']})")
    if "namespaces" in snap:
        isolated = snap["isolated_namespaces"]
        shared = [k for k in snap["namespaces"] if k not in isolated]
        lines.append(f"namespaces: own {' '.join(isolated) or '-'}; the host's: {' '.join(shared) or '-'}")
    if "root" in snap:
        root = snap["root"]
        more = f" (+{root['total'] - len(root['entries'])})" if root["total"] > len(root["entries"]) else ""
        lines.append(f"root: {root['path']}  / holds {' '.join(root['entries'])}{more}")
    if "mounts" in snap:
        shown = [f"{m['mount_point']} {m['fstype']}" for m in snap["mounts"]]
        more = f", ... (+{len(shown) - 8})" if len(shown) > 8 else ""
        lines.append(f"mounts ({len(shown)}): {', '.join(shown[:8])}{more}")
    if "cgroup" in snap:
        lines.append("cgroup: " + ", ".join(f"{_hierarchy(e)} {e['path']}" for e in snap["cgroup"]))
    if "processes" in snap:
        if "pid" in snap.get("isolated_namespaces", []):
            namespace = snap["namespaces"]["pid"]
            lines.append(f"processes ({len(snap['processes'])}) in pid namespace {namespace}:")
            lines += [f"  {line}" for line in _tree(snap["processes"])]
        else:
            lines.append(f"processes: {len(snap['processes'])} in the host's pid namespace")
    if "network" in snap:
        links = [" ".join([link["name"], link["state"], *map(_address, link["addresses"])])
                 for link in snap["network"]]
        lines.append(f"network: {'; '.join(links) or 'no links'}")
    if snap.get("partial"):
        lines.append("partial: " + "; ".join(f"{k}: {v}" for k, v in snap["errors"].items()))
    return "\n".join(lines)
