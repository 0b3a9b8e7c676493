"""Links, addresses and routes: a bridge, veth pairs, a container's eth0, each one rtnetlink request.

Everything here is a message of `rtnetlink` (see that module for their layout), the ones `ip` sends:

- RTM_NEWLINK with IFLA_INFO_KIND "bridge" creates a bridge (`ip link add mini0 up type bridge
  forward_delay 0`); RTM_DELLINK deletes a link (`ip link del NAME`), found by its name.
- One RTM_NEWLINK makes a container's whole cable (`ip link add vethX up master mini0 type veth peer
  name eth0 netns PID`): a veth pair whose host end is up and plugged into the bridge (IFLA_MASTER), and
  whose other end is born in the container's network namespace (IFLA_NET_NS_PID in the peer's own
  attributes), already named eth0. Made on the host and then moved (`ip link set cethX netns PID`), the
  peer would be registered twice, and renamed while down; deleting either end deletes both, and so
  does the death of the network namespace that holds one end.
- Inside the container's namespace: RTM_NEWLINK with IFF_UP brings eth0 up (the peer cannot be made
  up with the pair: the kernel opens it before it has a peer, ENOTCONN), RTM_NEWADDR gives it an address
  (`ip addr add 10.88.0.2/16 dev eth0`, which adds the connected route 10.88.0.0/16), RTM_NEWROUTE the
  default route (`ip route add default via 10.88.0.1`): three requests, sent in one send(2).

A netlink socket talks to the network namespace it was created in, whatever thread uses it later. To
configure a container's namespace without moving the engine, `in_netns_of(pid)` joins /proc/PID/ns/net
with setns(2), opens the socket, and at once joins its own namespace again: setns moves only the calling
thread (a net namespace may be joined by one thread of a multi-threaded process, such as a Jupyter
kernel), and only for those few microseconds. `ip netns exec` instead runs a whole process there.

Loopback, from inside: a new namespace's `lo` is down, so 127.0.0.1 answers nothing. The runtime's child
brings it up itself right after unshare(CLONE_NEWNET) (`bring_loopback_up`), with the older interface
that `ifconfig lo up` uses: ioctl(SIOCGIFFLAGS) and ioctl(SIOCSIFFLAGS) with IFF_UP on a `struct ifreq`
naming "lo", through any socket of the namespace.

Traps: a bridge forwards through a new port only once the port is in the "forwarding" state; with STP
off (the default) that is at once, and forward_delay 0 keeps it so should STP be turned on
(`bridge link` shows the state). Link names are at most 15 bytes (IFNAMSIZ). Deleting a link is the
slow part: the kernel waits for RCU grace periods (rcu_barrier) before it frees it, ~15 ms for a veth
and ~30 ms for a bridge on the machine of docs/benchmarks.md.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import ipaddress
import socket
import struct
from collections.abc import Iterator
from typing import Any

from .. import syscalls
from . import rtnetlink as rt
from .rtnetlink import Rtnetlink

CONTAINER_LINK = "eth0"  # the name of the container's end of its veth, inside its namespace

# <linux/sockios.h>: the flags of a link by name, through a struct ifreq (16 bytes of name, then a short)
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFREQ_FLAGS = struct.Struct("16sh22x")  # sizeof(struct ifreq) is 40 on 64-bit Linux


def bring_loopback_up() -> None:
    """Bring `lo` of the caller's own network namespace up (`ifconfig lo up`): 127.0.0.1 starts to answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        name, flags = IFREQ_FLAGS.unpack(fcntl.ioctl(sock, SIOCGIFFLAGS, IFREQ_FLAGS.pack(b"lo", 0)))
        fcntl.ioctl(sock, SIOCSIFFLAGS, IFREQ_FLAGS.pack(name, flags | rt.IFF_UP))


def host() -> Rtnetlink:
    """An rtnetlink socket in the caller's own network namespace (the host's)."""
    return Rtnetlink()


def _netlink_socket_in(pid: int) -> int:
    """A NETLINK_ROUTE socket made inside the network namespace of `pid`; the calling thread comes back."""
    with open(f"/proc/{pid}/ns/net", "rb") as target, open("/proc/thread-self/ns/net", "rb") as home:
        syscalls.setns(target.fileno(), syscalls.CLONE_NEWNET)
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)  # close-on-exec
        finally:
            syscalls.setns(home.fileno(), syscalls.CLONE_NEWNET)
    return sock.detach()


@contextlib.contextmanager
def in_netns_of(pid: int) -> Iterator[Rtnetlink]:
    """An rtnetlink socket inside the network namespace of `pid` (ip -n / nsenter -t PID -n ip ...)."""
    with Rtnetlink(fileno=_netlink_socket_in(pid)) as sock:
        yield sock


def index_of(sock: Rtnetlink, name: str) -> int | None:
    """The index of link `name`, or None if there is none (`ip link show NAME`: one RTM_GETLINK)."""
    try:
        answer = sock.get(rt.RTM_GETLINK, rt.link(0, 0, 0, rt.attribute(rt.IFLA_IFNAME, name)))
    except OSError as err:
        if err.errno == errno.ENODEV:
            return None
        raise
    return rt.IFINFOMSG.unpack_from(answer)[2]


def _index(sock: Rtnetlink, name: str) -> int:
    index = index_of(sock, name)
    if index is None:
        raise OSError(errno.ENODEV, f"no link named {name}")
    return index


def create_bridge(sock: Rtnetlink, name: str, address: str, prefixlen: int) -> int:
    """A bridge, up, with the gateway address: `ip link add NAME up type bridge forward_delay 0; ip addr add`.

    A bridge is a software switch: frames that come in on one port go out on the port that has the
    destination MAC. The address on the bridge itself makes the host a member of the segment, and so
    the containers' gateway. Returns its index. Undo: `delete_link(name)`.
    """
    kind = rt.attribute(rt.IFLA_INFO_KIND, "bridge")
    data = rt.attribute(rt.IFLA_INFO_DATA, rt.attribute(rt.IFLA_BR_FORWARD_DELAY, 0))
    sock.request((rt.RTM_NEWLINK, rt.NLM_F_CREATE | rt.NLM_F_EXCL,
                  rt.link(0, rt.IFF_UP, rt.IFF_UP, rt.attribute(rt.IFLA_IFNAME, name),
                          rt.attribute(rt.IFLA_LINKINFO, kind + data))))
    index = _index(sock, name)
    add_address(sock, index, address, prefixlen)
    return index


def create_veth_pair(sock: Rtnetlink, name: str, peer: str, *, master: int | None = None,
                     peer_pid: int | None = None) -> int:
    """A veth pair: `name` here, up, a port of bridge `master` if given; `peer` in the netns of `peer_pid`.

    `ip link add NAME up [master BRIDGE] type veth peer name PEER [netns PID]`, one RTM_NEWLINK. A veth
    pair is a virtual cable: a frame sent into one end comes out of the other. The peer is down (see
    `configure_container_end`); without `peer_pid` it stays in this namespace. Returns the index of
    `name`. Undo: `delete_link(name)`.
    """
    peer_attributes = [rt.attribute(rt.IFLA_IFNAME, peer)]
    if peer_pid is not None:
        peer_attributes.append(rt.attribute(rt.IFLA_NET_NS_PID, peer_pid))
    peer_link = rt.attribute(rt.VETH_INFO_PEER, rt.link(0, 0, 0, *peer_attributes))
    info = rt.attribute(rt.IFLA_INFO_KIND, "veth") + rt.attribute(rt.IFLA_INFO_DATA, peer_link)
    attributes = [rt.attribute(rt.IFLA_IFNAME, name), rt.attribute(rt.IFLA_LINKINFO, info)]
    if master is not None:
        attributes.append(rt.attribute(rt.IFLA_MASTER, master))
    sock.request((rt.RTM_NEWLINK, rt.NLM_F_CREATE | rt.NLM_F_EXCL,
                  rt.link(0, rt.IFF_UP, rt.IFF_UP, *attributes)))
    return _index(sock, name)


def add_address(sock: Rtnetlink, index: int, address: str, prefixlen: int) -> None:
    """Give link `index` an IPv4 address (`ip addr add ADDRESS/PREFIXLEN dev LINK`)."""
    sock.request((rt.RTM_NEWADDR, rt.NLM_F_CREATE | rt.NLM_F_EXCL, rt.address(index, address, prefixlen)))


def configure_container_end(pid: int, name: str, address: str, prefixlen: int, gateway: str) -> None:
    """Inside the netns of `pid`: bring `name` up, give it `address`, and a default route via `gateway`.

    `ip -n NS link set NAME up; ip -n NS addr add ADDRESS/PREFIXLEN dev NAME; ip -n NS route add default
    via GATEWAY`, in one send(2). The route needs the address first: its gateway must be on a subnet
    that a link of the namespace reaches.
    """
    with in_netns_of(pid) as sock:
        index = _index(sock, name)
        sock.request((rt.RTM_NEWLINK, 0, rt.link(index, rt.IFF_UP, rt.IFF_UP)),
                     (rt.RTM_NEWADDR, rt.NLM_F_CREATE | rt.NLM_F_EXCL, rt.address(index, address, prefixlen)),
                     (rt.RTM_NEWROUTE, rt.NLM_F_CREATE | rt.NLM_F_EXCL, rt.default_route(gateway)))


def delete_link(sock: Rtnetlink, name: str) -> bool:
    """Delete link `name` if it exists (`ip link del NAME`); True if it did. A veth takes its peer along."""
    try:
        sock.request((rt.RTM_DELLINK, 0, rt.link(0, 0, 0, rt.attribute(rt.IFLA_IFNAME, name))))
    except OSError as err:
        if err.errno == errno.ENODEV:  # not there, or gone meanwhile (its peer's namespace died)
            return False
        raise
    return True


def ports_of(sock: Rtnetlink, bridge: str) -> list[str]:
    """Names of the links enslaved to `bridge` (`ip link show master BRIDGE`)."""
    links = read_links(sock)
    return [link["name"] for link in links if link["master"] == bridge]


# --- reading a namespace back --------------------------------------------------------------------

def read_links(sock: Rtnetlink) -> list[dict[str, Any]]:
    """Links with their IPv4 addresses (`ip -br addr`), and the bridge each is a port of (`master`).

    `peer_index` is, for a veth, the index of its peer (`eth0@if7`), in the namespace that
    `peer_netnsid` numbers (None when the peer is in the same namespace).
    """
    links, masters = {}, {}
    for payload in sock.dump(rt.RTM_GETLINK, rt.link()):
        _, _, index, flags, _ = rt.IFINFOMSG.unpack_from(payload)
        attrs = rt.attributes(payload[rt.IFINFOMSG.size:])
        kind = rt.attributes(attrs.get(rt.IFLA_LINKINFO, b"")).get(rt.IFLA_INFO_KIND)
        netnsid = attrs.get(rt.IFLA_LINK_NETNSID)
        masters[index] = _u32(attrs.get(rt.IFLA_MASTER))
        links[index] = {
            "name": _text(attrs[rt.IFLA_IFNAME]), "index": index,
            "state": "up" if flags & rt.IFF_UP else "down",
            "mac": attrs.get(rt.IFLA_ADDRESS, b"").hex(":") or None, "kind": _text(kind) if kind else None,
            "peer_index": _u32(attrs.get(rt.IFLA_LINK)),
            "peer_netnsid": struct.unpack("=i", netnsid)[0] if netnsid else None, "addresses": []}
    for index, master in masters.items():
        links[index]["master"] = links[master]["name"] if master in links else None
    for payload in sock.dump(rt.RTM_GETADDR, rt.IFADDRMSG.pack(socket.AF_INET, 0, 0, 0, 0)):
        family, prefixlen, _, _, index = rt.IFADDRMSG.unpack_from(payload)
        attrs = rt.attributes(payload[rt.IFADDRMSG.size:])
        raw = attrs.get(rt.IFA_LOCAL) or attrs.get(rt.IFA_ADDRESS)  # LOCAL is ours on point-to-point links
        if family == socket.AF_INET and raw and index in links:
            links[index]["addresses"].append(f"{ipaddress.IPv4Address(raw)}/{prefixlen}")
    return sorted(links.values(), key=lambda link: link["index"])


def read_routes(sock: Rtnetlink) -> list[dict[str, Any]]:
    """The IPv4 main routing table (`ip route`): destination, gateway and device of each route."""
    names = {link["index"]: link["name"] for link in read_links(sock)}
    routes = []
    for payload in sock.dump(rt.RTM_GETROUTE, rt.RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
        family, dst_len, _, _, table, _, _, _, _ = rt.RTMSG.unpack_from(payload)
        attrs = rt.attributes(payload[rt.RTMSG.size:])
        if family != socket.AF_INET or table != rt.RT_TABLE_MAIN:
            continue
        dst, gateway, source = (attrs.get(kind) for kind in (rt.RTA_DST, rt.RTA_GATEWAY, rt.RTA_PREFSRC))
        routes.append({"dst": f"{ipaddress.IPv4Address(dst)}/{dst_len}" if dst else "default",
                       "gateway": str(ipaddress.IPv4Address(gateway)) if gateway else None,
                       "dev": names.get(_u32(attrs.get(rt.RTA_OIF))),
                       "source": str(ipaddress.IPv4Address(source)) if source else None})
    return routes


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode()


def _u32(raw: bytes | None) -> int | None:
    return struct.unpack("=I", raw)[0] if raw else None
