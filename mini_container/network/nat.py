"""NAT with nftables: masquerade for outbound traffic, DNAT for published ports, in the engine's own table.

Containers on the bridge have private addresses (10.88.0.0/16) that nothing beyond the host knows how
to reach. Two kinds of address translation, both done by netfilter's conntrack-based NAT, bridge them:

- masquerade (source NAT) in the postrouting hook: a packet from 10.88.0.2 leaving by any link other
  than the bridge gets the address of that link as its source. conntrack remembers the connection and
  rewrites the replies back, so the container never sees the host's address.
- DNAT (destination NAT) in the prerouting hook: a packet for one of the host's addresses on a published
  port (`-p 8080:80`) gets the container's address and port as its destination, before the routing
  decision, which then sends it out of the bridge. Only the first packet of a connection goes through
  the nat chains; the rest follow its conntrack entry (`conntrack -L`, from Debian's conntrack package).

Traps, each one a rule or a setting below:
- Forwarding: a host routes packets between its links only with net.ipv4.ip_forward=1 (it is 0 on a
  fresh host, and in a fresh network namespace). The engine turns it on at the first container and, if
  it was off, turns it off again when the last container goes. This is the one host-wide setting the
  engine changes: while it is on, the host routes between all its links (docker leaves it on for good).
  It belongs to the network namespace, like everything here; two engines' networks in one namespace
  would disagree about when to turn it off.
- Locally generated packets never pass prerouting: a connection from the host itself to
  127.0.0.1:8080 goes through the output hook, so the DNAT rules are jumped to from both hooks.
- The localhost trap: after DNAT, that packet still has source 127.0.0.1, and the kernel refuses to route
  a loopback source or destination out of a real link (a "martian") unless route_localnet is set on it:
  net.ipv4.conf.BRIDGE.route_localnet=1 (it goes with the bridge). And the container would answer
  127.0.0.1 to its own loopback: the source is masqueraded to the bridge's address on the way out.
- Hairpin: a container reaching a published port through the host's address is DNATed back onto the
  bridge; the answer would go straight to it from the other container's address, which it does not
  expect. Masquerading what is DNATed from the subnet back to the bridge sends the answer through the
  host. (Not `iifname "mini0"`: postrouting does not know the input link, and that match never hits.)
- br_netfilter: where it is loaded (/proc/sys/net/bridge/bridge-nf-call-iptables is 1), frames that
  the bridge switches from one container to another pass the ip hooks too, conntrack included: a host
  firewall's forward chain then judges traffic between containers as well.
- nftables tables are independent: an `accept` here cannot overrule a `drop` in another table on the
  same hook. A host whose forward chain drops (docker sets iptables' FORWARD policy to DROP) drops
  container traffic too, until it accepts the bridge's.

The table (`table ip BRIDGE`, named after the bridge) is written whole, the way `nft -f FILE` loads a
ruleset: one netlink transaction that the kernel applies all at once or not at all. It is rebuilt from
the leases whenever a published port comes or goes, so there is never a rule whose container is unknown,
and deleting the table deletes every rule the engine made. The host's own tables are never touched.
The engine hands the script to libnftables, the library that the `nft` command is a thin shell around
(`syscalls.nft_run_cmd_from_buffer`): the same parser and the same transaction, in the engine's own
process. Running `nft` for each change cost ~20 ms: the program's start-up, and its exit (see `_context`).

Look at it: `nft list table ip mini0`, `sysctl net.ipv4.ip_forward net.ipv4.conf.mini0.route_localnet`.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import syscalls
from ..errors import ContainerError, InvalidArgumentError

PROTOCOLS = ("tcp", "udp")
IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")  # the caller's network namespace's, as it opens it
_PUBLISH_FORMS = ("HOSTPORT:CTRPORT[/tcp|/udp] or HOSTIP:HOSTPORT:CTRPORT[/tcp|/udp], "
                  "e.g. 8080:80 or 127.0.0.1:8080:80/udp")


@dataclass(frozen=True)
class PortMapping:
    """A published port: host_ip:host_port (every host address if host_ip is None) -> container_port."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str | None = None

    def __str__(self) -> str:
        host = f"{self.host_ip}:" if self.host_ip else ""
        return f"{host}{self.host_port}:{self.container_port}/{self.protocol}"

    def overlaps(self, other: PortMapping) -> bool:
        """True if both would catch the same packets: same protocol and port, and an address in common."""
        return (self.protocol, self.host_port) == (other.protocol, other.host_port) and (
            self.host_ip is None or other.host_ip is None or self.host_ip == other.host_ip)


def _port(text: str, spec: str, which: str) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not 1 <= int(text) <= 65535:
        raise InvalidArgumentError(f"bad -p {spec!r}: {which} port {text!r} is not a number from 1 to 65535")
    return int(text)


def parse_publish(spec: str) -> PortMapping:
    """Parse a -p value: "8080:80", "8080:80/udp", "127.0.0.1:8080:80", "127.0.0.1:8080:80/tcp"."""
    ports, _, protocol = spec.partition("/")
    protocol = protocol or "tcp"
    if protocol not in PROTOCOLS:
        raise InvalidArgumentError(f"bad -p {spec!r}: protocol {protocol!r} is not tcp or udp")
    parts = ports.split(":")
    if len(parts) not in (2, 3) or "" in parts:
        raise InvalidArgumentError(f"bad -p {spec!r}: expected {_PUBLISH_FORMS}")
    host_ip = None
    if len(parts) == 3:
        try:
            host_ip = str(ipaddress.IPv4Address(parts[0]))
        except ValueError:
            raise InvalidArgumentError(f"bad -p {spec!r}: {parts[0]!r} is not an IPv4 address "
                                       "(IPv6 is not supported)") from None
    return PortMapping(_port(parts[-2], spec, "host"), _port(parts[-1], spec, "container"), protocol, host_ip)


def check_port_free(mapping: PortMapping) -> None:
    """Refuse a host port that a host process has bound: bind(2) a probe socket to it, then close it.

    TCP probes with SO_REUSEADDR, so that only a listener (not a connection in TIME_WAIT) counts. The
    check is made once: a process that binds the port later gets nothing from other hosts, since DNAT
    comes first (docker runs a docker-proxy process that holds each published port for that reason).
    """
    kind = socket.SOCK_STREAM if mapping.protocol == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as probe:
        if mapping.protocol == "tcp":
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((mapping.host_ip or "0.0.0.0", mapping.host_port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise ContainerError(
                    f"cannot publish {mapping}: host port {mapping.host_port}/{mapping.protocol} is in use "
                    f"by a process on the host (ss -lntup 'sport = :{mapping.host_port}'); choose another "
                    "host port") from None
            if err.errno == errno.EADDRNOTAVAIL:
                raise ContainerError(f"cannot publish {mapping}: {mapping.host_ip} is not an address of this "
                                     "host (ip -br addr); give one of its addresses, or none") from None
            raise


def render_table(bridge: str, subnet: str, published: list[tuple[str, str, PortMapping]]) -> str:
    """The nft script that replaces `table ip BRIDGE` with one holding these (container, address, port) rules.

    `table ip T {}` then `delete table ip T` first: the declaration makes the delete succeed whether or
    not the table exists, and the whole script is a single transaction.
    """
    rules = []
    for container_id, address, port in published:
        match = f"ip daddr {port.host_ip} " if port.host_ip else ""
        rule = f"{match}{port.protocol} dport {port.host_port} dnat to {address}:{port.container_port}"
        rules.append(f'\t\t{rule} comment "{container_id}"')
    return "\n".join([
        f"table ip {bridge} {{}}",
        f"delete table ip {bridge}",
        f"table ip {bridge} {{",
        "\tchain prerouting {",
        "\t\ttype nat hook prerouting priority dstnat; policy accept;",
        "\t\tfib daddr type local jump published",
        "\t}",
        "\tchain output {",
        "\t\ttype nat hook output priority -100; policy accept;",  # dstnat; nft 1.0.6 names it only there
        "\t\tfib daddr type local jump published",
        "\t}",
        "\tchain published {",
        *rules,
        "\t}",
        "\tchain postrouting {",
        "\t\ttype nat hook postrouting priority srcnat; policy accept;",
        f'\t\tip saddr {subnet} oifname != "{bridge}" masquerade comment "outbound"',
        f'\t\tip saddr 127.0.0.0/8 oifname "{bridge}" masquerade comment "published, from loopback"',
        f'\t\tct status dnat ip saddr {subnet} oifname "{bridge}" masquerade comment "published, hairpin"',
        "\t}",
        "}",
        "",
    ])


_CONTEXTS: dict[tuple[int, int], object] = {}  # (pid, network namespace inode) -> a libnftables context


def _context() -> object:
    """This process's libnftables context for the calling thread's network namespace, made at first use.

    It is kept, not freed after each script, for the kernel's sake: closing an nftables netlink socket
    waits until the kernel has freed whatever that socket's transactions deleted (nft_rcv_nl_event
    flushes nf_tables' destroy work, which waits for an RCU grace period: 8-20 ms on the machine of
    docs/benchmarks.md). `nft` pays it as it exits; an open socket lets the kernel free in the background.
    The key holds the pid, as a forked child must not use its parent's socket, and the namespace, as a
    socket talks to the one it was made in.
    """
    key = (os.getpid(), os.stat("/proc/thread-self/ns/net").st_ino)
    if key not in _CONTEXTS:
        _CONTEXTS[key] = syscalls.nft_ctx_new()
    return _CONTEXTS[key]


def _nft(script: str, doing: str) -> str:
    """Run an nft script through libnftables; what it printed. A refusal is one line naming `doing`."""
    try:
        result, output, errors = syscalls.nft_run_cmd_from_buffer(_context(), script)
    except OSError as err:
        raise ContainerError(f"{doing}: {err.strerror}") from None
    if result != 0:
        first = next((line for line in errors.splitlines() if line.strip()), f"libnftables returned {result}")
        raise ContainerError(f"{doing}: nftables refused the ruleset: {first.strip()}")
    return output


def write_table(bridge: str, subnet: str, published: list[tuple[str, str, PortMapping]]) -> None:
    """Create or replace the engine's table, atomically. Undo: `delete_table(bridge)`."""
    _nft(render_table(bridge, subnet, published), f"writing nftables table ip {bridge}")


def delete_table(bridge: str) -> None:
    """Delete the engine's table and every rule in it, if it exists (`nft delete table ip BRIDGE`)."""
    _nft(f"table ip {bridge} {{}}\ndelete table ip {bridge}\n", f"deleting nftables table ip {bridge}")


def table_exists(bridge: str) -> bool:
    """True if `table ip BRIDGE` exists (`nft list tables ip`)."""
    tables = _nft("list tables ip", "listing nftables tables")
    return f"table ip {bridge}" in tables.splitlines()


def list_table(bridge: str) -> str:
    """The table as nft prints it (`nft list table ip BRIDGE`), or "" if there is none."""
    if not table_exists(bridge):
        return ""
    return _nft(f"list table ip {bridge}", f"listing nftables table ip {bridge}")


def ip_forward() -> str:
    """net.ipv4.ip_forward of the caller's network namespace: "1" if it routes between links."""
    return IP_FORWARD.read_text().strip()


def set_ip_forward(value: str) -> None:
    """Write net.ipv4.ip_forward (it also sets every link's conf/*/forwarding to the same value)."""
    IP_FORWARD.write_text(value)


def set_route_localnet(bridge: str) -> None:
    """Let 127.0.0.0/8 sources and destinations be routed through `bridge` (dies with the bridge)."""
    Path(f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").write_text("1")
