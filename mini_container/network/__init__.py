"""Stage 6, the network: veth pairs, a bridge, addresses and routes, NAT and published ports.

A new network namespace holds one link, `lo`, down: no address, no route, nothing reaches it. Giving
a container a network is plumbing between its namespace and the host's, done the way a CNI bridge
plugin (and docker) does it, with rtnetlink messages (`links`, `rtnetlink`) and an nftables table (`nat`):

1. A bridge on the host, `mini0`, created by the first container: a software switch with the
   gateway address 10.88.0.1/16 on it. `ip -d link show mini0`, `bridge link` (its ports).
2. A veth pair per container: two links joined like the ends of a cable. `ip link show type veth`.
3. The host end, vethXXXXXXXX, is plugged into the bridge (made a port of it) and up; the other end is
   born in the container's network namespace as eth0 (IFLA_NET_NS_PID): one request, `ip link add
   vethXXXXXXXX up master mini0 type veth peer name eth0 netns PID`. The host's `ip link` never shows
   it; inside, `nsenter -t PID -n ip link` does. The two ends still know each other: inside, `ip link`
   shows `eth0@if7`, the index of the host end; on the host, `vethXXXXXXXX@if2 ... link-netnsid 0`.
4. An address from the subnet, leased by IPAM: the engine keeps which container holds which address
   in files under a lock (`ipam`), since the kernel keeps no such list. Inside, through a socket made
   in the container's namespace, eth0 is brought up, the address goes on it (`ip addr add 10.88.0.2/16
   dev eth0`), which adds the route to the subnet, and a default route via the gateway sends everything
   else to the host (`nsenter -t PID -n ip route`): three requests in one send(2).
5. Masquerade: for the packets that leave the host by another link, the source address becomes the
   host's (`nat`); the host must also forward packets between links (net.ipv4.ip_forward=1).
6. Published ports: `-p 8080:80` is a DNAT rule, host port 8080 -> 10.88.0.2:80, in the engine's own
   nftables table (`nft list table ip mini0`). The localhost trap: from the host itself,
   127.0.0.1:8080 works only with route_localnet on the bridge and a masquerade for loopback sources
   (see `nat`).
7. /etc/hosts, /etc/hostname and /etc/resolv.conf for the container (`files`): containers on the
   bridge find each other by name through /etc/hosts, rewritten as they come and go.

Loopback is not plugged from outside: whoever makes a network namespace brings its `lo` up from inside
(`bring_loopback_up`), as the runtime's child does right after unshare(CLONE_NEWNET), as runc's init
does. The other modes: `none` is that and nothing else (no host-side step at all; `loopback_files`
are its /etc files); `host` leaves the container in the host's network namespace (the runtime does not
unshare it), sharing its links and ports; and `container:NAME` has the runtime's child `join()`
another container's network namespace instead of making one, as the containers of a Kubernetes pod
share one.

Undo: `detach()` deletes the host end of the veth (its peer in the container goes with it; when the
container's namespace dies the kernel deletes the pair by itself), removes the lease and the
container's rules; with the last container, the bridge and the table go too, and ip_forward is put
back as it was. After a crash, `prune()` finds leases whose container is gone and removes the same.
Deleting links is the slowest part of a container's network: the kernel frees a link only after RCU
grace periods (`links`).

What a user's host gets changed, only while containers are attached: the bridge and its veths, the
nftables table named after the bridge, route_localnet on the bridge, and net.ipv4.ip_forward (turned
on if it was off, and off again after the last container). Nothing else: no host route (the bridge's
connected route aside), no change to the host's own firewall tables.

For a bridge, the runtime calls `attach` from a parent step after the child's `net` step, and undoes it
on rm:

    attachment = network.attach(container_id, child_pid, "bridge", ["8080:80"], state_dir=root / "network",
                                name="web", files_dir=container_dir / "network")
    attachment.address, attachment.host_veth        # '10.88.0.2', 'veth1a2b3c4d'
    network.observe(child_pid)["routes"]            # [{'dst': 'default', 'gateway': '10.88.0.1', ...}, ...]
    network.detach(container_id, root / "network")

Traps: rtnetlink sockets act in the namespace they were created in (`links.in_netns_of`); link names
are at most 15 bytes (IFNAMSIZ); a packet to a host's published port from the host itself does not
pass prerouting; a drop in another firewall table wins over an accept in ours (`nat`).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from .. import syscalls
from ..errors import ContainerError, InvalidArgumentError
from . import files, ipam, links, nat
from .files import NetworkFiles, loopback_files
from .ipam import Lease, NetworkRecord, Store
from .links import bring_loopback_up
from .nat import PortMapping, parse_publish
from .rtnetlink import Rtnetlink

__all__ = ["Attachment", "PortMapping", "attach", "bring_loopback_up", "detach", "join", "loopback_files",
           "observe", "parse_mode", "parse_publish", "prune", "DEFAULT_BRIDGE", "DEFAULT_SUBNET"]

DEFAULT_BRIDGE = "mini0"
DEFAULT_SUBNET = "10.88.0.0/16"
MODES = ("bridge", "none", "host", "container:NAME")


@dataclass(frozen=True)
class Attachment:
    """A container's place on the network: its address, its veth, its ports and its /etc files.

    `files` is None for container:NAME, which shares the files of the container it joins.
    """

    container_id: str
    mode: str
    address: str | None = None
    prefixlen: int | None = None
    gateway: str | None = None
    host_veth: str | None = None
    container_veth: str | None = None
    publish: tuple[PortMapping, ...] = ()
    files: NetworkFiles | None = None


def parse_mode(mode: str) -> tuple[str, str | None]:
    """Check a --network value: ("bridge", None), ("none", None), ("host", None) or ("container", NAME)."""
    kind, _, target = mode.partition(":")
    if kind in ("bridge", "none", "host") and not target:
        return kind, None
    if kind == "container" and target:
        return kind, target
    raise InvalidArgumentError(f"unknown network mode {mode!r}: use one of {', '.join(MODES)}")


def join(pid: int) -> None:
    """Move the calling process into the network namespace of `pid` (--network container:NAME).

    setns(2) on /proc/PID/ns/net: what the runtime's child does instead of unshare(CLONE_NEWNET).
    """
    try:
        fd = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ContainerError(f"cannot join the network of pid {pid}: no such process (has the container "
                             "exited?)") from None
    try:
        syscalls.setns(fd, syscalls.CLONE_NEWNET)
    finally:
        os.close(fd)


def attach(container_id: str, pid: int, mode: str = "bridge", publish: Iterable[str | PortMapping] = (), *,
           state_dir: Path | str, name: str | None = None, hostname: str | None = None,
           files_dir: Path | str | None = None, bridge: str = DEFAULT_BRIDGE,
           subnet: str = DEFAULT_SUBNET) -> Attachment:
    """Connect the network namespace of `pid` (a new one, just unshared) as `mode` says.

    bridge: a veth pair between the bridge and the namespace, an address leased from `subnet`, a
    default route, NAT, and the `publish`ed ports ("8080:80", "127.0.0.1:8080:80/udp"); none, host and
    container:NAME: nothing to plug, only the /etc files (lo is brought up from inside, with
    `bring_loopback_up`; the runtime shares or joins a namespace). `name` and `hostname` are what
    other containers' /etc/hosts call this one. With `files_dir`, hosts, hostname and resolv.conf are
    written there, and the hosts file is kept current. On error nothing is left.
    `pid` must stay alive as long as the container: `prune()` takes its exit for the container's.
    """
    kind, _ = parse_mode(mode)
    _check_id(container_id)
    ports = [port if isinstance(port, PortMapping) else parse_publish(port) for port in publish]
    if ports and kind != "bridge":
        raise InvalidArgumentError(f"cannot publish ports with --network {mode}: published ports go through "
                                   "the bridge (--network bridge)")
    hostname = hostname or container_id[:12]
    names = list(dict.fromkeys(n for n in (hostname, name) if n))
    for each in names:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", each):
            raise InvalidArgumentError(f"bad name {each!r} for /etc/hosts: use up to 63 letters, digits, "
                                       "'_', '.' and '-', starting with a letter or digit")
    directory = Path(files_dir) if files_dir is not None else None
    if kind == "bridge":
        return _attach_bridge(container_id, pid, ports, Store(state_dir), _network(bridge, subnet), names,
                              directory)
    attachment = Attachment(container_id, mode)
    if kind == "none":
        attachment = replace(attachment, files=loopback_files(hostname))
    elif kind == "host":  # the host's own files: its loopback resolver is the container's too
        host_files = NetworkFiles(_read(Path("/etc/hosts"), files.hosts(None, [])), f"{hostname}\n",
                                  _read(files.HOST_RESOLV_CONF, ""))
        attachment = replace(attachment, files=host_files)
    if directory is not None and attachment.files is not None:
        files.write(directory, attachment.files)
    return attachment


def detach(container_id: str, state_dir: Path | str) -> None:
    """Undo `attach`: the veth, the lease, the container's rules; the bridge and table with the last one.

    A container without a lease (modes other than bridge, or detached already) is left as it is.
    """
    store = Store(state_dir)
    with store.locked():
        lease = store.lease(container_id)
        if lease is None:
            return
        with _step(f"cannot detach container {container_id}"):
            _unplug(store, lease)


def prune(state_dir: Path | str) -> list[str]:
    """Remove what the engine made for containers that are gone: after a crash, or what `minictl gc` does.

    A lease whose process no longer holds the recorded network namespace is a dead container's: its
    veth and lease go, and its rules with the table's rebuild. Ports of the bridge that no lease names
    go too. With no live container left, the bridge and the table go, and ip_forward is restored.
    Returns one line per thing removed.
    """
    store = Store(state_dir)
    if not store.root.is_dir():
        return []
    removed: list[str] = []
    with store.locked(), _step(f"cannot prune the network state in {store.root}"):
        record = store.network()
        if record is None:
            return removed
        with links.host() as sock:
            for lease in store.leases():
                if not lease.live():
                    links.delete_link(sock, lease.host_veth)
                    store.remove_lease(lease.container_id)
                    ports = "".join(f", port {p}" for p in map(_mapping, lease.publish))
                    removed.append(f"container {lease.container_id}: veth {lease.host_veth}, address "
                                   f"{lease.address}{ports}")
            leased = {lease.host_veth for lease in store.leases()}
            for port in links.ports_of(sock, record.bridge):
                if port not in leased and links.delete_link(sock, port):
                    removed.append(f"veth {port} on bridge {record.bridge}, which no lease names")
        if store.leases():
            _sync(store, record)
        else:
            removed += _close_network(store, record)
    return removed


def observe(pid: int) -> dict[str, Any]:
    """Links, addresses and routes inside the network namespace of `pid`, and the host end of its veth.

    The host end is found the way `ip link` shows it: eth0's IFLA_LINK is the index of its peer in
    the other namespace (`eth0@if7`), and that peer's IFLA_LINK points back at eth0.
    """
    with _step(f"cannot read the network namespace of pid {pid}"):
        with links.in_netns_of(pid) as sock:
            inside, routes = links.read_links(sock), links.read_routes(sock)
        host_end = None
        veth = next((link for link in inside if link["kind"] == "veth" and link["peer_netnsid"] is not None),
                    None)
        if veth is not None:
            pair = (veth["peer_index"], veth["index"])  # the host end's index, and its peer's: eth0's
            with links.host() as sock:
                host_end = next((link for link in links.read_links(sock) if link["kind"] == "veth"
                                 and (link["index"], link["peer_index"]) == pair), None)
    return {"pid": pid, "links": inside, "routes": routes, "host_end": host_end}


# --- bridge mode ------------------------------------------------------------------------------------

def _network(bridge: str, subnet: str) -> NetworkRecord:
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,14}", bridge):
        raise InvalidArgumentError(f"bad bridge name {bridge!r}: use 1 to 15 letters, digits or _, "
                                   "starting with a letter (it also names the nftables table)")
    try:
        network = ipaddress.IPv4Network(subnet)
    except ValueError as err:
        raise InvalidArgumentError(f"bad subnet {subnet!r}: {err} (give an IPv4 network such as "
                                   "10.88.0.0/16)") from None
    if network.prefixlen > 30:
        raise InvalidArgumentError(f"subnet {subnet} is too small: it needs room for a gateway and a "
                                   "container (a prefix of /30 or shorter)")
    return NetworkRecord(bridge, str(network))


def _check_id(container_id: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", container_id):
        raise InvalidArgumentError(f"bad container id {container_id!r} for the network: use letters, digits, "
                                   "'_', '.' and '-'")


def _veth_name(container_id: str) -> str:
    """vethXXXXXXXX: the host's end of the container's veth pair, named after the container's id."""
    return f"veth{hashlib.sha256(container_id.encode()).hexdigest()[:8]}"


def _mapping(fields: dict) -> PortMapping:
    return PortMapping(**fields)


def _attach_bridge(container_id: str, pid: int, ports: list[PortMapping], store: Store,
                   wanted: NetworkRecord, names: list[str], files_dir: Path | None) -> Attachment:
    failed = f"cannot attach container {container_id} to bridge {wanted.bridge}"
    with store.locked():
        record = store.network()
        if record is not None and (record.bridge, record.subnet) != (wanted.bridge, wanted.subnet):
            raise ContainerError(f"{failed}: {store.root} holds the network of bridge {record.bridge} "
                                 f"({record.subnet}); use those, or another state directory")
        if store.lease(container_id) is not None:
            raise ContainerError(f"{failed}: it is attached already (detach it first)")
        leases = store.leases()
        _check_ports(ports, leases, failed)
        try:
            netns = os.stat(f"/proc/{pid}/ns/net").st_ino
        except FileNotFoundError:
            raise ContainerError(f"{failed}: no process with pid {pid}") from None
        if record is None:
            with links.host() as sock:
                if links.index_of(sock, wanted.bridge) is not None:
                    raise ContainerError(f"{failed}: a link named {wanted.bridge} exists that this engine "
                                         f"did not make ({store.root} has no network.json); remove it "
                                         f"(ip link del {wanted.bridge}) or use another bridge name")
            record = wanted
        address, record = ipam.allocate(record, leases, store.root)
        host_veth = _veth_name(container_id)
        lease = Lease(container_id, address, pid, netns, host_veth, [asdict(port) for port in ports], names,
                      str(files_dir) if files_dir else None)
        store.save_network(record)
        store.save_lease(lease)
        try:
            with links.host() as sock:
                record, bridge, created = _open_network(sock, store, record)
                _plug(sock, lease, record, bridge)
            _sync(store, record, rules=created or bool(ports), written_later=container_id)
        except BaseException as err:
            _undo_attach(store, lease, err)
            if isinstance(err, ContainerError | OSError):
                raise ContainerError(f"{failed}: {_reason(err)}") from None
            raise
        network_files = NetworkFiles(_hosts_for(lease, store.leases()), f"{names[0]}\n", files.resolv_conf())
    attachment = Attachment(container_id, "bridge", address, record.prefixlen, record.gateway, host_veth,
                            links.CONTAINER_LINK, tuple(ports), network_files)
    if files_dir is not None:
        files.write(files_dir, attachment.files)
    return attachment


def _check_ports(ports: list[PortMapping], leases: list[Lease], failed: str) -> None:
    """Refuse a port given twice, published by another container, or bound by a host process."""
    for i, port in enumerate(ports):
        if any(port.overlaps(other) for other in ports[:i]):
            raise ContainerError(f"{failed}: port {port} is given twice")
        for lease in leases:
            for other in map(_mapping, lease.publish):
                if port.overlaps(other):
                    raise ContainerError(f"{failed}: host port {port.host_port}/{port.protocol} is already "
                                         f"published by container {lease.container_id} ({other})")
        try:
            nat.check_port_free(port)
        except ContainerError as err:
            raise ContainerError(f"{failed}: {err}") from None


def _open_network(sock: Rtnetlink, store: Store, record: NetworkRecord) -> tuple[NetworkRecord, int, bool]:
    """Make sure the bridge is there and the host forwards; remember ip_forward's value if it was off.

    Returns the record, the bridge's index, and whether the bridge was created now.
    """
    bridge = links.index_of(sock, record.bridge)
    created = bridge is None
    if created:
        with _step(f"creating bridge {record.bridge} ({record.gateway}/{record.prefixlen})"):
            bridge = links.create_bridge(sock, record.bridge, record.gateway, record.prefixlen)
            nat.set_route_localnet(record.bridge)
    if nat.ip_forward() != "1":
        if record.ip_forward_before is None:
            record = replace(record, ip_forward_before=nat.ip_forward())
            store.save_network(record)
        nat.set_ip_forward("1")
    return record, bridge, created


def _plug(sock: Rtnetlink, lease: Lease, record: NetworkRecord, bridge: int) -> None:
    """The veth pair: the host end up in the bridge, the other end born in the container's netns as eth0."""
    with _step(f"creating veth pair {lease.host_veth} (port of {record.bridge}) <-> {links.CONTAINER_LINK} "
               f"in the network namespace of pid {lease.pid}"):
        links.create_veth_pair(sock, lease.host_veth, links.CONTAINER_LINK, master=bridge, peer_pid=lease.pid)
    with _step(f"setting up {links.CONTAINER_LINK} ({lease.address}/{record.prefixlen}, default via "
               f"{record.gateway}) in the network namespace of pid {lease.pid}"):
        links.configure_container_end(lease.pid, links.CONTAINER_LINK, lease.address, record.prefixlen,
                                      record.gateway)


def _unplug(store: Store, lease: Lease) -> None:
    """Delete the veth (both ends, wherever the peer is), the lease, and the rules; close if last."""
    with links.host() as sock:
        links.delete_link(sock, lease.host_veth)
    store.remove_lease(lease.container_id)
    record = store.network()
    if record is None:
        return
    if store.leases():
        _sync(store, record, rules=bool(lease.publish))
    else:
        _close_network(store, record)


def _undo_attach(store: Store, lease: Lease, err: BaseException) -> None:
    """Remove what a failed attach made; a failure here is added to `err` as a note, not raised."""
    try:
        _unplug(store, lease)
    except Exception as cleanup:  # the first error is the one to report
        err.add_note(f"undoing the attach failed too: {_reason(cleanup)}; `minictl network prune` retries")


def _sync(store: Store, record: NetworkRecord, rules: bool = True, written_later: str | None = None) -> None:
    """Rewrite the containers' hosts files and, if `rules`, rebuild the nftables table from the leases.

    The table holds the masquerade rule and the published ports: a container that publishes nothing
    changes none of it. The hosts file of container `written_later` is left to the caller.
    """
    leases = store.leases()
    if rules:
        nat.write_table(record.bridge, record.subnet,
                        [(lease.container_id, lease.address, port) for lease in leases
                         for port in map(_mapping, lease.publish)])
    for lease in leases:
        if lease.container_id == written_later:
            continue
        if lease.files_dir is not None and Path(lease.files_dir).is_dir():
            files.write_in_place(Path(lease.files_dir) / "hosts", _hosts_for(lease, leases))


def _hosts_for(lease: Lease, leases: list[Lease]) -> str:
    others = [(other.address, other.names) for other in leases
              if other.container_id != lease.container_id and other.names]
    return files.hosts((lease.address, lease.names), others)


def _close_network(store: Store, record: NetworkRecord) -> list[str]:
    """The last container is gone: delete the table and the bridge, restore ip_forward, forget the network."""
    closed = []
    if nat.table_exists(record.bridge):
        nat.delete_table(record.bridge)
        closed.append(f"nftables table ip {record.bridge}")
    with links.host() as sock:
        if links.delete_link(sock, record.bridge):
            closed.append(f"bridge {record.bridge}")
    if record.ip_forward_before is not None and nat.ip_forward() != record.ip_forward_before:
        nat.set_ip_forward(record.ip_forward_before)
        closed.append(f"net.ipv4.ip_forward set back to {record.ip_forward_before}")
    store.remove_network()
    return closed


def _read(path: Path, default: str) -> str:
    return path.read_text() if path.is_file() else default


def _reason(err: BaseException) -> str:
    """One line for an error from netlink, the kernel or the engine."""
    if isinstance(err, OSError) and err.strerror:
        return f"{err.strerror}" + (f": {err.filename}" if err.filename else "")
    return str(err)


@contextlib.contextmanager
def _step(what: str) -> Iterator[None]:
    """Report a netlink or kernel refusal inside the block as one ContainerError line naming `what`."""
    try:
        yield
    except OSError as err:
        raise ContainerError(f"{what}: {_reason(err)}") from None
