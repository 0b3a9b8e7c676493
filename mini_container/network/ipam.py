"""IP address management: which container holds which address, as files on disk under a lock.

The kernel keeps no list of "free addresses": an address is taken when some link carries it, and two
containers given the same one would both answer ARP for it. So the engine keeps the record itself, the
way the CNI host-local plugin does, in its network state directory:

    network.json          the network: bridge, subnet, gateway, the last address handed out, and the
                          host's net.ipv4.ip_forward before the engine turned it on (to restore it)
    leases/ID.json        one per attached container: its address, its veth's name, its published ports,
                          its names for /etc/hosts, the pid and network namespace it was attached to
    lock                  flock(2)ed by every engine process for the whole of an attach, detach or prune

The lock makes "read the leases, pick a free address, write the lease" one step for every process on
the machine (flock(2) locks belong to the open file and go away when the process dies, even killed, so
a crash leaves no stale lock). Addresses are handed out in turn after the last one, as host-local does,
not lowest-free first: a container that just left may still be in its neighbours' ARP caches and the
host's conntrack table, and its address is better not reused at once.

The lease is written before the veth is made: a crash between the two leaves a lease whose container is
gone, which `prune` finds by its pid and netns inode (/proc/PID/ns/net), and removes with what it names.

Look at it: `ls STATE/leases; cat STATE/leases/*.json`.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..errors import ContainerError


@dataclass(frozen=True)
class NetworkRecord:
    """The bridge network that a state directory manages."""

    bridge: str
    subnet: str
    last_address: str | None = None
    ip_forward_before: str | None = None  # "0" if the engine turned forwarding on; None if it was on

    @property
    def gateway(self) -> str:
        """The bridge's own address: the subnet's first host address."""
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def prefixlen(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


@dataclass(frozen=True)
class Lease:
    """One container's address on the bridge, and everything the engine made for it."""

    container_id: str
    address: str
    pid: int
    netns: int  # the inode of /proc/PID/ns/net at attach time: the container is live while they match
    host_veth: str  # the host's end of the container's veth pair (the other end is its eth0)
    publish: list[dict] = field(default_factory=list)  # PortMapping fields
    names: list[str] = field(default_factory=list)
    files_dir: str | None = None

    def live(self) -> bool:
        """True while the process the container was attached through still holds that network namespace."""
        try:
            return os.stat(f"/proc/{self.pid}/ns/net").st_ino == self.netns
        except (FileNotFoundError, ProcessLookupError):
            return False


class Store:
    """A network's state directory: network.json, leases/, and the lock."""

    def __init__(self, state_dir: Path | str):
        self.root = Path(state_dir)
        self.leases_dir = self.root / "leases"

    @contextlib.contextmanager
    def locked(self) -> Iterator[Store]:
        """Hold the state directory's lock (flock LOCK_EX on STATE/lock) for the block."""
        self.leases_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self
        finally:
            os.close(fd)  # releases the lock

    # --- network.json ---------------------------------------------------------------------------
    def network(self) -> NetworkRecord | None:
        """The network record, or None while no container is attached."""
        try:
            return NetworkRecord(**json.loads((self.root / "network.json").read_text()))
        except FileNotFoundError:
            return None

    def save_network(self, record: NetworkRecord) -> None:
        _write_json(self.root / "network.json", asdict(record))

    def remove_network(self) -> None:
        (self.root / "network.json").unlink(missing_ok=True)

    # --- leases ---------------------------------------------------------------------------------
    def leases(self) -> list[Lease]:
        """Every lease, ordered by address."""
        if not self.leases_dir.is_dir():
            return []
        found = [Lease(**json.loads(path.read_text())) for path in self.leases_dir.glob("*.json")]
        return sorted(found, key=lambda lease: ipaddress.ip_address(lease.address))

    def lease(self, container_id: str) -> Lease | None:
        try:
            return Lease(**json.loads(self._lease_path(container_id).read_text()))
        except FileNotFoundError:
            return None

    def save_lease(self, lease: Lease) -> None:
        _write_json(self._lease_path(lease.container_id), asdict(lease))

    def remove_lease(self, container_id: str) -> None:
        self._lease_path(container_id).unlink(missing_ok=True)

    def _lease_path(self, container_id: str) -> Path:
        return self.leases_dir / f"{container_id}.json"


def allocate(record: NetworkRecord, leases: list[Lease], state_dir: Path) -> tuple[str, NetworkRecord]:
    """The next free address after the last one handed out (wrapping), and the record that remembers it.

    The gateway (the first host address) and the broadcast address are never handed out.
    """
    subnet = ipaddress.ip_network(record.subnet)
    taken = {int(ipaddress.ip_address(lease.address)) for lease in leases}
    first = int(subnet.network_address) + 2  # + 1 is the gateway
    count = int(subnet.broadcast_address) - first  # up to the one before the broadcast address
    start = 0
    if record.last_address is not None:
        start = (int(ipaddress.ip_address(record.last_address)) - first + 1) % max(count, 1)
    for step in range(count):
        address = first + (start + step) % count
        if address not in taken:
            chosen = str(ipaddress.ip_address(address))
            return chosen, replace(record, last_address=chosen)
    raise ContainerError(f"subnet {subnet} of bridge {record.bridge} is exhausted: all {count} "
                         f"container addresses are leased (see {state_dir}/leases); remove a container "
                         "or use a larger subnet")


def _write_json(path: Path, value: dict) -> None:
    """Write a record whole or not at all, should the engine die: a temporary file renamed over the old."""
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(value, indent=1))
    os.replace(temporary, path)
