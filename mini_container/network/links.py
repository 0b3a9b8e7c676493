"""Links, addresses and routes through rtnetlink (pyroute2): a bridge, veth pairs, the netns move.

Everything here is an rtnetlink message sent on an AF_NETLINK socket (`ip -d link`, `ip addr`,
`ip route` send the same ones):

- RTM_NEWLINK with IFLA_INFO_KIND "bridge" or "veth" creates a link (`ip link add mini0 type bridge`,
  `ip link add vethX type veth peer name cethX`); RTM_DELLINK deletes one. Deleting either end of a veth
  pair deletes both, and so does the death of the network namespace that holds one end.
- RTM_NEWLINK on an existing link changes it: IFLA_MASTER enslaves it to a bridge (`ip link set vethX
  master mini0`), IFF_UP brings it up, IFLA_IFNAME renames it (only while it is down: EBUSY otherwise),
  and IFLA_NET_NS_PID moves it into the network namespace of a pid (`ip link set cethX netns PID`).
  After the move the link has a new index in its new namespace, and addresses it had are gone.
- RTM_NEWADDR gives an address (`ip addr add 10.88.0.2/16 dev eth0`), and with it the kernel adds the
  connected route 10.88.0.0/16; RTM_NEWROUTE adds the default route (`ip route add default via 10.88.0.1`).

A netlink socket talks to the network namespace it was created in, whatever thread uses it later. To
configure a container's namespace without moving the engine, `in_netns_of(pid)` starts a thread, joins
/proc/PID/ns/net with setns(2) in it (a net namespace may be joined by one thread of a multi-threaded
process), opens the socket, goes back, and hands the socket to pyroute2. `ip netns exec` instead runs a
whole process in the namespace; pyroute2's own `netns=` forks a helper for each socket.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from .. import syscalls

CONTAINER_LINK = "eth0"  # the name of the container's end of its veth, inside its namespace


def host() -> IPRoute:
    """An rtnetlink socket in the caller's own network namespace (the host's)."""
    return IPRoute()


def _netlink_socket_in(pid: int) -> int:
    """A NETLINK_ROUTE socket created inside the network namespace of `pid`; the caller stays put."""
    target = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    outcome: dict[str, Any] = {}

    def joined() -> None:
        home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            syscalls.setns(target, syscalls.CLONE_NEWNET)
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                                     socket.NETLINK_ROUTE)
            finally:
                syscalls.setns(home, syscalls.CLONE_NEWNET)
            outcome["fd"] = sock.detach()
        except BaseException as err:  # raised again in the caller's thread
            outcome["error"] = err
        finally:
            os.close(home)

    try:
        thread = threading.Thread(target=joined, name=f"netns-{pid}")
        thread.start()
        thread.join()
    finally:
        os.close(target)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["fd"]


@contextlib.contextmanager
def in_netns_of(pid: int) -> Iterator[IPRoute]:
    """An rtnetlink socket inside the network namespace of `pid` (ip -n / nsenter -t PID -n ip ...)."""
    with IPRoute(fileno=_netlink_socket_in(pid)) as ipr:
        yield ipr


def index_of(ipr: IPRoute, name: str) -> int | None:
    """The index of link `name`, or None if there is none (`ip link show NAME`: one RTM_GETLINK)."""
    try:
        return ipr.link("get", ifname=name)[0]["index"]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise


def _index(ipr: IPRoute, name: str) -> int:
    index = index_of(ipr, name)
    if index is None:
        raise NetlinkError(errno.ENODEV, f"no link named {name}")
    return index


def create_bridge(ipr: IPRoute, name: str, address: str, prefixlen: int) -> int:
    """A bridge with the gateway address, up (`ip link add NAME type bridge; ip addr add; ip link set up`).

    A bridge is a software switch: frames that come in on one port go out on the port that has the
    destination MAC. The address on the bridge itself makes the host a member of the segment, and so
    the containers' gateway. Returns its index. Undo: `delete_link(name)`.
    """
    ipr.link("add", ifname=name, kind="bridge")
    index = _index(ipr, name)
    ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
    ipr.link("set", index=index, state="up")
    return index


def create_veth_pair(ipr: IPRoute, name: str, peer: str) -> tuple[int, int]:
    """A veth pair `name` <-> `peer`, both in the caller's namespace for now; their indexes.

    A veth pair is a virtual cable: a frame sent into one end comes out of the other. Undo:
    `delete_link(name)`.
    """
    ipr.link("add", ifname=name, kind="veth", peer=peer)
    return _index(ipr, name), _index(ipr, peer)


def plug_into_bridge(ipr: IPRoute, index: int, bridge: int) -> None:
    """Make link `index` a port of the bridge `bridge`, and bring it up (`ip link set NAME master BR up`)."""
    ipr.link("set", index=index, master=bridge, state="up")


def move_to_netns_of(ipr: IPRoute, index: int, pid: int) -> None:
    """Move link `index` into the network namespace of `pid` (`ip link set NAME netns PID`)."""
    ipr.link("set", index=index, net_ns_pid=pid)


def configure_container_end(pid: int, name: str, address: str, prefixlen: int, gateway: str) -> None:
    """Inside the netns of `pid`: rename `name` to eth0, give it `address`, bring it and lo up, route out.

    `ip -n NS link set NAME name eth0; ip -n NS addr add ADDRESS/PREFIX dev eth0; ip -n NS link set eth0
    up; ip -n NS link set lo up; ip -n NS route add default via GATEWAY`.
    """
    with in_netns_of(pid) as ipr:
        index = _index(ipr, name)
        ipr.link("set", index=index, ifname=CONTAINER_LINK)
        ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
        ipr.link("set", index=index, state="up")
        ipr.link("set", index=_index(ipr, "lo"), state="up")
        ipr.route("add", dst="0.0.0.0/0", gateway=gateway)


def set_loopback_up(pid: int) -> None:
    """Bring `lo` up in the netns of `pid` (a new namespace has it, down): 127.0.0.1 starts to work."""
    with in_netns_of(pid) as ipr:
        ipr.link("set", index=_index(ipr, "lo"), state="up")


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete link `name` if it exists (`ip link del NAME`); True if it did. A veth takes its peer along."""
    index = index_of(ipr, name)
    if index is None:
        return False
    try:
        ipr.link("del", index=index)
    except NetlinkError as err:
        if err.code != errno.ENODEV:  # gone meanwhile (its peer's namespace died)
            raise
        return False
    return True


def ports_of(ipr: IPRoute, bridge: str) -> list[str]:
    """Names of the links enslaved to `bridge` (`ip link show master BRIDGE`)."""
    index = index_of(ipr, bridge)
    if index is None:
        return []
    return [link.get("ifname") for link in ipr.get_links(master=index)]


# --- reading a namespace back --------------------------------------------------------------------

def read_links(ipr: IPRoute) -> list[dict[str, Any]]:
    """Links with their IPv4 addresses (`ip -br addr`), and the bridge each is a port of (`master`).

    `peer_index` is, for a veth, the index of its peer (`eth0@if7`), in the namespace that
    `peer_netnsid` numbers (None when the peer is in the same namespace).
    """
    messages = list(ipr.get_links())
    names = {msg["index"]: msg.get("ifname") for msg in messages}
    links = {}
    for msg in messages:
        info = msg.get("linkinfo")
        links[msg["index"]] = {
            "name": msg.get("ifname"), "index": msg["index"], "state": msg["state"],
            "mac": msg.get("address"), "kind": info.get("kind") if info else None,
            "peer_index": msg.get("link"), "peer_netnsid": msg.get("link_netnsid"),
            "master": names.get(msg.get("master")), "addresses": []}
    for msg in ipr.get_addr(family=socket.AF_INET):
        if msg["index"] in links:
            links[msg["index"]]["addresses"].append(f"{msg.get('address')}/{msg['prefixlen']}")
    return sorted(links.values(), key=lambda link: link["index"])


def read_routes(ipr: IPRoute) -> list[dict[str, Any]]:
    """The IPv4 main routing table (`ip route`): destination, gateway and device of each route."""
    names = {msg["index"]: msg.get("ifname") for msg in ipr.get_links()}
    routes = []
    for msg in ipr.get_routes(family=socket.AF_INET, table=254):
        dst = msg.get("dst")
        routes.append({"dst": f"{dst}/{msg['dst_len']}" if dst else "default",
                       "gateway": msg.get("gateway"), "dev": names.get(msg.get("oif")),
                       "source": msg.get("prefsrc")})
    return routes
