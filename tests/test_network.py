"""The network stage on the real kernel, with every packet inside network namespaces made by the tests.

Each test gets a "host": a forked process in a network namespace of its own, where the engine makes
its bridge, veths and nftables table, and turns on ip_forward. "Containers" are more forked processes
in namespaces of their own; the "internet" is one more, wired to the host by a veth of its own. The
test process itself never moves: it asks these processes to run functions of this module (`Netns.call`).
When a test ends, or fails, its processes are killed and their namespaces die with everything in them;
the tests also check, before that, that detach and prune left nothing. The real host is checked to be
untouched at the end of the module.
"""

from __future__ import annotations

import errno
import ipaddress
import multiprocessing
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from mini_container import network, syscalls
from mini_container.errors import ContainerError, InvalidArgumentError
from mini_container.network import PortMapping, files, links, nat
from mini_container.network import rtnetlink as rt
from mini_container.runtime.spec import ContainerSpec
from mini_container.runtime.steps import plan

BRIDGE = "mctest0"
SUBNET = "10.99.0.0/24"
GATEWAY = "10.99.0.1"
HOST_UPLINK, INTERNET_UPLINK = "203.0.113.1", "203.0.113.2"  # TEST-NET-3: never routed anywhere


class Netns:
    """A forked process in a new network namespace that runs module-level functions sent to it."""

    def __init__(self) -> None:
        ours, theirs = multiprocessing.Pipe()
        self.pid = os.fork()
        if self.pid == 0:
            ours.close()
            self._serve(theirs)
        theirs.close()
        self._conn = ours
        self.netns = ours.recv()

    @staticmethod
    def _serve(conn) -> None:
        code = 0
        try:
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            syscalls.unshare(syscalls.CLONE_NEWNET)
            conn.send(os.stat("/proc/self/ns/net").st_ino)
            while True:
                try:
                    function, args, kwargs = conn.recv()
                except EOFError:
                    break
                try:
                    reply = (True, function(*args, **kwargs))
                except BaseException as err:
                    reply = (False, err)
                conn.send(reply)
        except BaseException:
            code = 1
        finally:
            os._exit(code)

    def call(self, function, *args, **kwargs):
        self._conn.send((function, args, kwargs))
        ok, value = self._conn.recv()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        """Kill the process (its namespace dies with it, and every link in it) and reap it."""
        if self._conn is None:
            return
        self._conn.close()
        self._conn = None
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


# --- run inside the namespaces ---------------------------------------------------------------------

_KEPT: list[socket.socket] = []  # sockets a namespace process keeps open between calls


def serve(port: int, protocol: str = "tcp") -> None:
    """Answer every connection (or datagram) on `port` with "PEER got MESSAGE", from a thread."""
    kind = socket.SOCK_STREAM if protocol == "tcp" else socket.SOCK_DGRAM
    server = socket.socket(socket.AF_INET, kind)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("0.0.0.0", port))
    _KEPT.append(server)

    def answer() -> None:
        while True:
            if protocol == "tcp":
                conn, peer = server.accept()
                with conn:
                    conn.sendall(f"{peer[0]} got {conn.recv(1024).decode()}".encode())
            else:
                data, peer = server.recvfrom(1024)
                server.sendto(f"{peer[0]} got {data.decode()}".encode(), peer)

    if protocol == "tcp":
        server.listen()
    threading.Thread(target=answer, daemon=True).start()


def request(address: str, port: int, message: str = "hello", protocol: str = "tcp") -> str:
    """Send `message` to address:port and return the answer (serve()'s "PEER got MESSAGE")."""
    if protocol == "udp":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(3)
            sock.sendto(message.encode(), (address, port))
            return sock.recvfrom(1024)[0].decode()
    with socket.create_connection((address, port), timeout=3) as sock:
        sock.sendall(message.encode())
        answer = b""
        while chunk := sock.recv(1024):
            answer += chunk
        return answer.decode()


def hold_port(port: int) -> None:
    """A host process listening on `port` (for the "port in use" refusal)."""
    sock = socket.socket()
    sock.bind(("0.0.0.0", port))
    sock.listen()
    _KEPT.append(sock)


def wire_internet(pid: int) -> None:
    """A veth from here (HOST_UPLINK/24) to the namespace of `pid` (INTERNET_UPLINK/24), no route beyond."""
    with links.host() as sock:
        index = links.create_veth_pair(sock, "uplink", "uplinkpeer", peer_pid=pid)
        links.add_address(sock, index, HOST_UPLINK, 24)
    with links.in_netns_of(pid) as sock:
        index = links.index_of(sock, "uplinkpeer")
        links.add_address(sock, index, INTERNET_UPLINK, 24)
        sock.request((rt.RTM_NEWLINK, 0, rt.link(index, rt.IFF_UP, rt.IFF_UP)))  # ip link set uplinkpeer up


def make_link(name: str) -> None:
    """A veth pair NAME <-> NAMEp in this namespace."""
    with links.host() as sock:
        links.create_veth_pair(sock, name, f"{name}p")


def plug_stray_veth(name: str, bridge: str) -> None:
    """A veth plugged into `bridge` that no lease names: what a crash could leave."""
    with links.host() as sock:
        links.create_veth_pair(sock, name, f"{name}p", master=links.index_of(sock, bridge))


def host_state(bridge: str = BRIDGE) -> dict:
    """What the engine may have made in this namespace: links, the nftables table, ip_forward."""
    with links.host() as sock:
        names = sorted(link["name"] for link in links.read_links(sock))
    return {"links": names, "table": nat.list_table(bridge), "ip_forward": nat.ip_forward()}


def own_netns() -> int:
    return os.stat("/proc/self/ns/net").st_ino


# --- fixtures ---------------------------------------------------------------------------------------

def _real_host() -> dict:
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    return {"links": sorted(os.listdir("/sys/class/net")), "tables": tables, "ip_forward": nat.ip_forward()}


@pytest.fixture(scope="module", autouse=True)
def real_host_untouched():
    """The tests work in namespaces of their own: the host's links, tables and ip_forward never change."""
    before = _real_host()
    yield
    assert _real_host() == before


@pytest.fixture
def host():
    """The host: its loopback up, as a real host's is; no other link."""
    ns = Netns()
    ns.call(links.bring_loopback_up)
    yield ns
    ns.close()


@pytest.fixture
def containers():
    made: list[Netns] = []

    def make() -> Netns:
        made.append(Netns())
        return made[-1]

    yield make
    for ns in made:
        ns.close()


@pytest.fixture
def workdir():
    """A directory for network state and container files, removed after the test (pass or fail)."""
    path = Path(tempfile.mkdtemp(prefix="mini-container-network-"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def state(workdir) -> Path:
    return workdir / "network"


def attach_in(host: Netns, state: Path, container_id: str, pid: int, **kwargs) -> network.Attachment:
    kwargs.setdefault("bridge", BRIDGE)
    kwargs.setdefault("subnet", SUBNET)
    return host.call(network.attach, container_id, pid, state_dir=state, **kwargs)


def assert_nothing_left(host: Netns, state: Path) -> None:
    """No bridge, veth, table or lease; ip_forward back to the fresh namespace's 0."""
    assert host.call(host_state) == {"links": ["lo"], "table": "", "ip_forward": "0"}
    assert list((state / "leases").iterdir()) == []
    assert not (state / "network.json").exists()


def assert_one_line(err: pytest.ExceptionInfo, *words: str) -> None:
    message = str(err.value)
    assert "\n" not in message and isinstance(err.value, ContainerError)
    for word in words:
        assert word in message, message


# --- parsing ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("spec, mapping", [
    ("8080:80", PortMapping(8080, 80)),
    ("8080:80/udp", PortMapping(8080, 80, "udp")),
    ("127.0.0.1:8080:80", PortMapping(8080, 80, "tcp", "127.0.0.1")),
    ("10.0.0.1:53:5353/udp", PortMapping(53, 5353, "udp", "10.0.0.1")),
])
def test_parse_publish(spec, mapping):
    assert network.parse_publish(spec) == mapping
    assert network.parse_publish(str(mapping)) == mapping


@pytest.mark.parametrize("spec, says", [
    ("80", "expected HOSTPORT:CTRPORT"), ("8080:", "expected"), (":80", "expected"), ("1:2:3:4", "expected"),
    ("a:80", "host port 'a'"), ("8080:80/sctp", "protocol 'sctp'"), ("70000:80", "70000"),
    ("0:80", "host port '0'"), ("8080:-1", "container port"), ("1.2.3:8080:80", "not an IPv4 address"),
    ("[::1]:8080:80", "expected"),
])
def test_bad_publish_spec_is_one_clear_line(spec, says):
    with pytest.raises(InvalidArgumentError) as err:
        network.parse_publish(spec)
    assert_one_line(err, repr(spec), says)


def test_modes():
    assert network.parse_mode("bridge") == ("bridge", None)
    assert network.parse_mode("none") == ("none", None)
    assert network.parse_mode("host") == ("host", None)
    assert network.parse_mode("container:web") == ("container", "web")
    for bad in ("bridged", "container:", "host:x", ""):
        with pytest.raises(InvalidArgumentError) as err:
            network.parse_mode(bad)
        assert_one_line(err, "unknown network mode", "bridge, none, host, container:NAME")


def test_resolv_conf_never_points_at_the_containers_own_loopback(workdir):
    host_file, upstream = workdir / "resolv.conf", workdir / "upstream.conf"
    host_file.write_text("search example.org\nnameserver 192.0.2.53\n")
    assert files.resolv_conf(host_file, upstream) == host_file.read_text()
    host_file.write_text("search example.org\nnameserver 127.0.0.53\noptions edns0\n")
    assert files.resolv_conf(host_file, upstream) == \
        "search example.org\noptions edns0\nnameserver 8.8.8.8\nnameserver 8.8.4.4\n"
    upstream.write_text("nameserver 192.0.2.1\n")
    assert files.resolv_conf(host_file, upstream) == "nameserver 192.0.2.1\n"


# --- modes ------------------------------------------------------------------------------------------

def test_none_mode_has_loopback_up_and_no_route(host, containers, state):
    box = containers()
    assert [link["state"] for link in host.call(network.observe, box.pid)["links"]] == ["down"]  # lo, new
    box.call(network.bring_loopback_up)  # from inside, as the runtime's child does after unshare
    attachment = host.call(network.attach, "quiet", box.pid, "none", state_dir=state, hostname="q")
    assert attachment.address is None and attachment.files == files.loopback_files("q")
    assert "127.0.0.1\tlocalhost" in attachment.files.hosts and attachment.files.resolv_conf == ""
    seen = host.call(network.observe, box.pid)
    assert [(link["name"], link["state"], link["addresses"]) for link in seen["links"]] == \
        [("lo", "up", ["127.0.0.1/8"])]
    assert seen["routes"] == [] and seen["host_end"] is None
    with pytest.raises(OSError) as err:
        box.call(request, HOST_UPLINK, 80)
    assert err.value.errno == errno.ENETUNREACH
    box.call(serve, 7000)
    assert box.call(request, "127.0.0.1", 7000, "self") == "127.0.0.1 got self"
    assert not (state / "network.json").exists()


def test_host_mode_makes_nothing_and_container_mode_joins(host, containers, state):
    box = containers()
    attachment = host.call(network.attach, "shared", box.pid, "host", state_dir=state, hostname="h")
    assert attachment.address is None and attachment.files.hostname == "h\n"
    assert host.call(host_state) == {"links": ["lo"], "table": "", "ip_forward": "0"}
    with pytest.raises(InvalidArgumentError) as err:
        host.call(network.attach, "p", box.pid, "host", ["8080:80"], state_dir=state)
    assert_one_line(err, "cannot publish ports with --network host")
    joined = host.call(network.attach, "pod", box.pid, "container:shared", state_dir=state)
    assert joined.files is None and joined.address is None  # it shares the files of the one it joins
    pod = containers()
    assert pod.netns != box.netns
    pod.call(network.join, box.pid)
    assert pod.call(own_netns) == box.netns
    with pytest.raises(ContainerError) as err:
        pod.call(network.join, 2 ** 22 + 1)
    assert_one_line(err, "no such process")


# --- bridge -----------------------------------------------------------------------------------------

def test_two_containers_talk_by_address_and_by_name(host, containers, state, workdir):
    web, db = containers(), containers()
    a = attach_in(host, state, "c-web", web.pid, name="web", files_dir=workdir / "web")
    assert (a.address, a.prefixlen, a.gateway, a.container_veth) == ("10.99.0.2", 24, GATEWAY, "eth0")
    assert "db" not in (workdir / "web" / "hosts").read_text()
    b = attach_in(host, state, "c-db", db.pid, name="db", hostname="database", files_dir=workdir / "db")
    assert b.address == "10.99.0.3"
    assert (workdir / "db" / "hostname").read_text() == "database\n"
    assert (workdir / "db" / "resolv.conf").read_text() == files.resolv_conf() == b.files.resolv_conf

    db.call(serve, 5432)
    assert web.call(request, b.address, 5432, "by address") == f"{a.address} got by address"
    hosts = (workdir / "web" / "hosts").read_text()  # rewritten when db came
    by_name = {name: line.split()[0] for line in hosts.splitlines() if not line.startswith("#")
               for name in line.split()[1:]}
    assert by_name["db"] == by_name["database"] == b.address and by_name["web"] == a.address
    assert web.call(request, by_name["db"], 5432, "by name") == f"{a.address} got by name"

    seen = host.call(network.observe, web.pid)
    eth0 = next(link for link in seen["links"] if link["name"] == "eth0")
    assert eth0["addresses"] == ["10.99.0.2/24"] and eth0["state"] == "up" and eth0["kind"] == "veth"
    assert {"dst": "default", "gateway": GATEWAY, "dev": "eth0", "source": None} in seen["routes"]
    assert seen["host_end"]["name"] == a.host_veth and seen["host_end"]["master"] == BRIDGE
    assert seen["host_end"]["peer_index"] == eth0["index"]

    host.call(network.detach, "c-db", state)
    assert "db" not in (workdir / "web" / "hosts").read_text()
    assert b.host_veth not in host.call(host_state)["links"]
    host.call(network.detach, "c-web", state)
    host.call(network.detach, "c-web", state)  # a second detach has nothing to do
    assert_nothing_left(host, state)


@pytest.mark.parametrize("bridge_netfilter", ["0", "1"])
def test_published_ports_answer_from_loopback_host_address_and_other_hosts(host, containers, state,
                                                                          bridge_netfilter):
    # With br_netfilter, frames switched between containers pass the ip hooks too; the rules work either way.
    host.call(Path("/proc/sys/net/bridge/bridge-nf-call-iptables").write_text, bridge_netfilter)
    internet = containers()
    host.call(wire_internet, internet.pid)
    web, neighbour = containers(), containers()
    a = attach_in(host, state, "web", web.pid, publish=["8080:80", "8081:81/udp", "127.0.0.1:8082:80"])
    attach_in(host, state, "neighbour", neighbour.pid)
    web.call(serve, 80)
    web.call(serve, 81, "udp")
    table = host.call(nat.list_table, BRIDGE)
    assert f"tcp dport 8080 dnat to {a.address}:80" in table

    # From the host itself: 127.0.0.1 needs route_localnet and the loopback masquerade; the
    # container sees the bridge's address.
    assert host.call(request, "127.0.0.1", 8080) == f"{GATEWAY} got hello"
    assert host.call(request, "127.0.0.1", 8082) == f"{GATEWAY} got hello"
    assert host.call(request, HOST_UPLINK, 8080) == f"{HOST_UPLINK} got hello"
    assert host.call(request, HOST_UPLINK, 8081, "dgram", "udp") == f"{HOST_UPLINK} got dgram"
    # From another machine: prerouting DNAT, and the container sees the real client.
    assert internet.call(request, HOST_UPLINK, 8080) == f"{INTERNET_UPLINK} got hello"
    assert internet.call(request, HOST_UPLINK, 8081, "dgram", "udp") == f"{INTERNET_UPLINK} got dgram"
    with pytest.raises(ConnectionRefusedError):  # published on 127.0.0.1 only
        internet.call(request, HOST_UPLINK, 8082)
    # Hairpin: another container through the host's address; answered through the host.
    assert neighbour.call(request, HOST_UPLINK, 8080) == f"{GATEWAY} got hello"

    host.call(network.detach, "web", state)
    assert "dnat to" not in host.call(nat.list_table, BRIDGE)
    with pytest.raises(ConnectionRefusedError):
        host.call(request, "127.0.0.1", 8080)
    host.call(network.detach, "neighbour", state)
    assert host.call(host_state) == {"links": ["lo", "uplink"], "table": "", "ip_forward": "0"}


def test_outbound_traffic_is_masqueraded_to_the_host_address(host, containers, state):
    internet = containers()
    host.call(wire_internet, internet.pid)
    internet.call(serve, 9000)
    box = containers()
    with pytest.raises(OSError):  # the internet has no route back to 10.99.0.0/24: without NAT, no answer
        box.call(request, INTERNET_UPLINK, 9000)
    attach_in(host, state, "box", box.pid)
    assert host.call(nat.ip_forward) == "1"
    assert box.call(request, INTERNET_UPLINK, 9000, "out") == f"{HOST_UPLINK} got out"
    host.call(network.detach, "box", state)
    assert host.call(host_state) == {"links": ["lo", "uplink"], "table": "", "ip_forward": "0"}


def test_fifty_attach_detach_cycles_leave_nothing(host, state):
    for i in range(50):
        box = Netns()
        try:
            attachment = attach_in(host, state, f"cycle{i}", box.pid, publish=[f"{8000 + i}:80"])
            assert ipaddress.ip_address(attachment.address) in ipaddress.ip_network(SUBNET)
            host.call(network.detach, f"cycle{i}", state)
        finally:
            box.close()
    assert_nothing_left(host, state)


# --- refusals and crashes ---------------------------------------------------------------------------

def test_bad_inputs_are_one_line_and_leave_nothing(host, containers, state):
    first, other = containers(), containers()
    attach_in(host, state, "first", first.pid, publish=["8080:80"])
    before = (host.call(host_state), sorted(p.name for p in (state / "leases").iterdir()))

    def refused(*words, **kwargs):
        with pytest.raises(ContainerError) as err:
            attach_in(host, state, "other", other.pid, **kwargs)
        assert_one_line(err, *words)
        assert (host.call(host_state), sorted(p.name for p in (state / "leases").iterdir())) == before

    refused("already published by container first", publish=["8080:81"])
    refused("already published by container first", publish=["127.0.0.1:8080:81"])
    refused("given twice", publish=["9000:80", "9000:81"])
    host.call(hold_port, 8090)
    refused("host port 8090/tcp is in use", publish=["8090:80"])
    refused("192.0.2.9 is not an address of this host", publish=["192.0.2.9:8091:80"])
    refused("unknown network mode 'bridged'", mode="bridged")
    refused("cannot publish ports with --network none", mode="none", publish=["8092:80"])
    refused("bad -p '8093'", publish=["8093"])
    refused("bad bridge name", bridge="no-dashes")
    refused("bad name 'two words' for /etc/hosts", name="two words")
    refused("holds the network of bridge mctest0", subnet="10.98.0.0/24")
    with pytest.raises(ContainerError) as err:
        attach_in(host, state, "first", other.pid)
    assert_one_line(err, "attached already")
    with pytest.raises(ContainerError) as err:
        attach_in(host, state, "ghost", 2 ** 22 + 1)
    assert_one_line(err, "no process with pid")
    host.call(network.detach, "first", state)
    assert_nothing_left(host, state)


def test_exhausted_subnet(host, containers, state):
    small = "10.99.3.0/29"  # .1 is the gateway, .7 the broadcast: five containers
    boxes = [containers() for _ in range(6)]
    addresses = [attach_in(host, state, f"c{i}", box.pid, subnet=small).address
                 for i, box in enumerate(boxes[:5])]
    assert addresses == [f"10.99.3.{i}" for i in range(2, 7)]
    links_before = host.call(host_state)["links"]
    with pytest.raises(ContainerError) as err:
        attach_in(host, state, "c5", boxes[5].pid, subnet=small)
    assert_one_line(err, "subnet 10.99.3.0/29 of bridge mctest0 is exhausted", "5 container addresses")
    assert host.call(host_state)["links"] == links_before
    host.call(network.detach, "c2", state)  # the freed address is handed out again, after the others
    assert attach_in(host, state, "c5", boxes[5].pid, subnet=small).address == "10.99.3.4"
    for i in (0, 1, 3, 4, 5):
        host.call(network.detach, f"c{i}", state)
    assert_nothing_left(host, state)


def test_a_failure_halfway_undoes_everything(host, containers, state):
    box = containers()
    box.call(make_link, "eth0")  # the bridge is made, then the veth's end cannot be born there as eth0
    with pytest.raises(ContainerError) as err:
        attach_in(host, state, "clash", box.pid, publish=["8080:80"])
    assert_one_line(err, "cannot attach container clash", "creating veth pair", "eth0 in the network "
                    f"namespace of pid {box.pid}", "RTM_NEWLINK: File exists")
    assert_nothing_left(host, state)
    assert sorted(link["name"] for link in host.call(network.observe, box.pid)["links"]) == \
        ["eth0", "eth0p", "lo"]  # the pair is made whole or not at all


def test_prune_removes_what_dead_containers_left(host, containers, state):
    alive, dead = containers(), containers()
    attach_in(host, state, "alive", alive.pid, publish=["8080:80"])
    gone = attach_in(host, state, "dead", dead.pid, publish=["8081:80"])
    dead.close()  # a crash: no detach; its namespace dies, and the kernel deletes its veth pair
    host.call(plug_stray_veth, "vethstray", BRIDGE)
    removed = host.call(network.prune, state)
    assert removed == [f"container dead: veth {gone.host_veth}, address {gone.address}, port 8081:80/tcp",
                       f"veth vethstray on bridge {BRIDGE}, which no lease names"]
    assert "8081" not in host.call(nat.list_table, BRIDGE) and "8080" in host.call(nat.list_table, BRIDGE)
    assert [p.name for p in (state / "leases").iterdir()] == ["alive.json"]
    assert host.call(network.prune, state) == []
    alive.close()
    assert host.call(network.prune, state)[-3:] == [f"nftables table ip {BRIDGE}", f"bridge {BRIDGE}",
                                                     "net.ipv4.ip_forward set back to 0"]
    assert_nothing_left(host, state)


def test_observe_refuses_a_missing_pid():
    with pytest.raises(ContainerError) as err:
        network.observe(2 ** 22 + 1)
    assert_one_line(err, "cannot read the network namespace of pid")



# --- the wire, the nftables library and the runtime's plan -------------------------------------------

def refusal_of_unknown_link_kind() -> tuple[int, str] | None:
    """What the kernel answers to `ip link add bogus type nosuchkind`, as the rtnetlink module reports it."""
    kind = rt.attribute(rt.IFLA_LINKINFO, rt.attribute(rt.IFLA_INFO_KIND, "nosuchkind"))
    with links.host() as sock:
        try:
            sock.request((rt.RTM_NEWLINK, rt.NLM_F_CREATE | rt.NLM_F_EXCL,
                          rt.link(0, 0, 0, rt.attribute(rt.IFLA_IFNAME, "bogus"), kind)))
        except OSError as err:
            return err.errno, err.strerror
    return None


def delete_named(name: str) -> bool:
    with links.host() as sock:
        return links.delete_link(sock, name)


def test_rtnetlink_refusals_carry_the_errno_and_the_kernels_words(host):
    assert host.call(refusal_of_unknown_link_kind) == \
        (errno.EOPNOTSUPP, "RTM_NEWLINK: Operation not supported (Unknown device type)")
    host.call(make_link, "twice")
    with pytest.raises(OSError) as err:
        host.call(make_link, "twice")
    assert err.value.errno == errno.EEXIST and err.value.strerror == "RTM_NEWLINK: File exists"
    assert host.call(delete_named, "twice") is True  # and its peer with it
    assert (host.call(delete_named, "twice"), host.call(delete_named, "twicep")) == (False, False)
    assert host.call(host_state)["links"] == ["lo"]


def test_a_ruleset_that_nftables_refuses_is_one_line_and_leaves_no_table(host):
    with pytest.raises(ContainerError) as err:
        host.call(nat.write_table, BRIDGE, "10.99.0.0/33", [])
    assert_one_line(err, f"writing nftables table ip {BRIDGE}: nftables refused the ruleset: Error:")
    assert host.call(nat.table_exists, BRIDGE) is False
    host.call(nat.write_table, BRIDGE, SUBNET, [])
    assert host.call(nat.table_exists, BRIDGE) is True and "masquerade" in host.call(nat.list_table, BRIDGE)
    host.call(nat.delete_table, BRIDGE)
    host.call(nat.delete_table, BRIDGE)  # a second delete has nothing to do
    assert host.call(host_state) == {"links": ["lo"], "table": "", "ip_forward": "0"}


def test_the_network_stage_loads_no_netlink_library():
    """`import mini_container.network` stays light: minictl pays for it on every bridge or none container."""
    code = ("import sys, mini_container.network; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'pyroute2', 'asyncio'}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.stdout == "[]\n"


@pytest.mark.parametrize("mode, parent_step", [("none", False), ("bridge", True)])
def test_only_a_bridge_needs_a_parent_step(workdir, mode, parent_step):
    """--network none is done by the child's net step alone (lo up, from inside); a bridge is plugged in."""
    spec = ContainerSpec(id="c", name="c", image="busybox", lowers=[], directory=workdir, command=["true"],
                         network=mode)
    names = [step.name for step in plan(spec)]
    assert "net" in names and ("network" in names) == parent_step
