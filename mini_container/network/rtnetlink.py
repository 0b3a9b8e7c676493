"""rtnetlink spoken directly: the messages that `ip link`, `ip addr` and `ip route` send, built with `struct`.

`ip` is a thin program over one socket, socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE): it writes requests
into it and reads the kernel's answers (`strace -e trace=sendmsg,recvmsg ip link add ...` shows the
bytes). Every message is the same three layers, from <linux/netlink.h> and <linux/rtnetlink.h>:

    struct nlmsghdr   length, type (RTM_NEWLINK, RTM_NEWADDR, ...), flags, sequence number, port id
    a fixed header    struct ifinfomsg for a link, ifaddrmsg for an address, rtmsg for a route
    attributes        type-length-value records (struct rtattr), each padded to 4 bytes: IFLA_IFNAME
                      "mini0", IFLA_MASTER 4, ... An attribute may nest others: IFLA_LINKINFO holds
                      IFLA_INFO_KIND "veth" and IFLA_INFO_DATA, which holds the peer's own ifinfomsg and
                      attributes (VETH_INFO_PEER).

Flags say what is asked: NLM_F_REQUEST on every request, NLM_F_ACK for an answer even on success,
NLM_F_CREATE|NLM_F_EXCL for "make it, and fail if it exists" (`ip link add`), NLM_F_DUMP for "all of
them" (`ip link show`). The kernel answers a request with an NLMSG_ERROR message: error 0 is the
acknowledgement, a negative errno a refusal. With NETLINK_EXT_ACK set on the socket, a refusal also
carries the kernel's own sentence ("Unknown device type"). A dump is answered by a series of messages
closed by NLMSG_DONE.

Several requests may go in one send(2): the kernel runs them in order and acknowledges each (`ip -batch`
does this). It is not a transaction: a refused request does not stop the next one.

Why not pyroute2, which the engine used first: importing it takes ~0.3 s (its package imports its
database, its IPDB and its conntrack and ethtool modules, and asyncio, whatever one uses), which every
`minictl run --network bridge` paid; the engine needs a dozen messages (docs/benchmarks.md, section 3).

Traps: a netlink socket acts in the network namespace of the thread that created it, wherever it is
used later (see links.in_netns_of); a link in another namespace is not found by its name here; answers
are paired with requests by sequence number, and anything else read is skipped.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct

# <linux/netlink.h>
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLM_F_DUMP, NLM_F_EXCL, NLM_F_CREATE = 0x300, 0x200, 0x400
NLM_F_CAPPED, NLM_F_ACK_TLVS = 0x100, 0x200  # in an NLMSG_ERROR: request left out; attributes follow
SOL_NETLINK, NETLINK_CAP_ACK, NETLINK_EXT_ACK = 270, 10, 11
NLMSGERR_ATTR_MSG = 1

# <linux/rtnetlink.h>: message types, and values for routes
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK = 16, 17, 18
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PREFSRC = 1, 4, 5, 7

# <linux/if_link.h>, <linux/if_addr.h>, <linux/veth.h>: attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_LINK, IFLA_MASTER = 1, 3, 5, 10
IFLA_LINKINFO, IFLA_NET_NS_PID, IFLA_LINK_NETNSID = 18, 19, 37
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_BR_FORWARD_DELAY = 1
VETH_INFO_PEER = 1
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFF_UP = 0x1

NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
IFINFOMSG = struct.Struct("=BxHiII")  # family, (pad), device type, index, flags, change mask
IFADDRMSG = struct.Struct("=BBBBI")  # family, prefix length, flags, scope, index
RTMSG = struct.Struct("=BBBBBBBBI")  # family, dst_len, src_len, tos, table, protocol, scope, type, flags
RTATTR = struct.Struct("=HH")  # length, type; then the value, padded to 4 bytes
_INT = struct.Struct("=i")
_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
_NAMES = {RTM_NEWLINK: "RTM_NEWLINK", RTM_DELLINK: "RTM_DELLINK", RTM_GETLINK: "RTM_GETLINK",
          RTM_NEWADDR: "RTM_NEWADDR", RTM_GETADDR: "RTM_GETADDR", RTM_NEWROUTE: "RTM_NEWROUTE",
          RTM_GETROUTE: "RTM_GETROUTE"}


def attribute(kind: int, value: bytes | str | int) -> bytes:
    """One struct rtattr: a string gets its NUL, an int is a native u32, bytes (nested ones too) go as is."""
    if isinstance(value, str):
        value = value.encode() + b"\0"
    elif isinstance(value, int):
        value = struct.pack("=I", value)
    length = RTATTR.size + len(value)
    return RTATTR.pack(length, kind) + value + bytes(-length % 4)


def attributes(data: bytes) -> dict[int, bytes]:
    """Parse a run of rtattrs into {type: value}; the first of a repeated type wins."""
    found, offset = {}, 0
    while offset + RTATTR.size <= len(data):
        length, kind = RTATTR.unpack_from(data, offset)
        if length < RTATTR.size:
            break
        found.setdefault(kind & _TYPE_MASK, data[offset + RTATTR.size:offset + length])
        offset += (length + 3) & ~3
    return found


def link(index: int = 0, flags: int = 0, change: int = 0, *attrs: bytes) -> bytes:
    """The body of a link message: an ifinfomsg (IFF_* flags, and which of them `change` sets), attributes."""
    return IFINFOMSG.pack(socket.AF_UNSPEC, 0, index, flags, change) + b"".join(attrs)


def address(index: int, value: str, prefixlen: int) -> bytes:
    """The body of an RTM_NEWADDR for an IPv4 address (`ip addr add VALUE/PREFIXLEN dev INDEX`)."""
    raw = socket.inet_aton(value)
    return (IFADDRMSG.pack(socket.AF_INET, prefixlen, 0, RT_SCOPE_UNIVERSE, index)
            + attribute(IFA_LOCAL, raw) + attribute(IFA_ADDRESS, raw))


def default_route(gateway: str) -> bytes:
    """The body of an RTM_NEWROUTE for `ip route add default via GATEWAY` in the main table."""
    return (RTMSG.pack(socket.AF_INET, 0, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0)
            + attribute(RTA_GATEWAY, socket.inet_aton(gateway)))


class Rtnetlink:
    """A NETLINK_ROUTE socket in the network namespace where it was made (or one made there, `fileno`)."""

    def __init__(self, fileno: int | None = None):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                  socket.NETLINK_ROUTE, fileno)
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # refusals need not echo the whole request
        self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # and may explain themselves
        self._sequence = itertools.count(1)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnetlink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, *messages: tuple[int, int, bytes]) -> None:
        """Send (type, flags, body) requests in one send(2), with NLM_F_ACK; raise the first refusal.

        The OSError's errno is the kernel's, its text the errno's name, the request, and the kernel's
        explanation if it gave one.
        """
        waiting, packed = {}, []
        for kind, flags, body in messages:
            sequence = next(self._sequence)
            waiting[sequence] = kind
            packed.append(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_ACK | flags,
                                        sequence, 0) + body)
        self.sock.send(b"".join(packed))
        refusal = None
        while waiting:
            for kind, flags, sequence, payload in self._receive():
                if kind == NLMSG_ERROR and sequence in waiting:
                    error = _refusal(waiting.pop(sequence), flags, payload)
                    refusal = refusal or error
        if refusal is not None:
            raise refusal

    def get(self, kind: int, body: bytes) -> bytes:
        """One answer to a GET request (`ip link show NAME`): the payload after its nlmsghdr."""
        sequence = next(self._sequence)
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST, sequence, 0) + body)
        while True:
            for answer, flags, number, payload in self._receive():
                if number != sequence:
                    continue
                if answer == NLMSG_ERROR:
                    raise _refusal(kind, flags, payload)
                return payload

    def dump(self, kind: int, body: bytes) -> list[bytes]:
        """Every answer to a dump request (`ip link show`): payloads after their nlmsghdr."""
        sequence = next(self._sequence)
        self.sock.send(NLMSGHDR.pack(NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, sequence, 0)
                       + body)
        payloads = []
        while True:
            for answer, flags, number, payload in self._receive():
                if number != sequence:
                    continue
                if answer == NLMSG_DONE:
                    return payloads
                if answer == NLMSG_ERROR:
                    raise _refusal(kind, flags, payload)
                payloads.append(payload)

    def _receive(self) -> list[tuple[int, int, int, bytes]]:
        """The messages of one datagram: (type, flags, sequence, payload)."""
        data, offset, messages = self.sock.recv(1 << 16), 0, []
        while offset + NLMSGHDR.size <= len(data):
            length, kind, flags, sequence, _ = NLMSGHDR.unpack_from(data, offset)
            messages.append((kind, flags, sequence, data[offset + NLMSGHDR.size:offset + length]))
            offset += (length + 3) & ~3
        return messages


def _refusal(kind: int, flags: int, payload: bytes) -> OSError | None:
    """An NLMSG_ERROR's payload: None for an acknowledgement, else the OSError it stands for."""
    code = -_INT.unpack_from(payload)[0]
    if code == 0:
        return None
    text = f"{_NAMES.get(kind, kind)}: {os.strerror(code)}"
    if flags & NLM_F_ACK_TLVS:
        skip = _INT.size + NLMSGHDR.size  # the error, then the request's header (its body if not capped)
        if not flags & NLM_F_CAPPED:
            skip += NLMSGHDR.unpack_from(payload, _INT.size)[0] - NLMSGHDR.size
        explained = attributes(payload[skip:]).get(NLMSGERR_ATTR_MSG)
        if explained:
            text += f" ({explained.rstrip(bytes(1)).decode()})"
    return OSError(code, text)
