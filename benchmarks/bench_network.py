"""Networking: what a bridge adds to a container's start, and what the bridge carries (issue 6).

    sudo .venv/bin/python -m benchmarks.bench_network [--rounds 10] [--seconds 3] [--throughput-rounds 5]

The goals it checks: (a) `minictl run --rm busybox /bin/true` with `--network bridge` takes no more than
20 ms longer (median wall time) than with `--network none`; (b) TCP throughput from one container to
another over the bridge is at least 0.5x the throughput of the host's loopback. Run it from the
repository's root, as root, with the real interpreter; it needs iperf3 (apt-get install iperf3).

It runs in a network namespace of its own, made first thing (as the test session does), which stands in
for the host: the bridge, the veths, the nftables table and ip_forward are made there, and no packet
leaves it. It uses an engine root of its own, with the busybox image built into it, removed at the end:
no other engine's containers or network state take part.

1. Start-up. Contenders in turns (see `benchmarks.common`), each running busybox's /bin/true:
   `minictl run --rm --network none|bridge` (a new interpreter each time), and the same through the API
   in this process (`bench_run.ApiRuns`: create, Stepper start/run_all/wait/close, remove). With no other
   container, every bridge run creates the bridge and the nftables table and deletes them at the end
   (the engine keeps them only while a container is attached); the same rounds are run again while a
   long-lived container keeps the bridge up, where a container pays for its veth alone. In the API's
   bridge runs, the network stage's functions are wrapped with timers (in this process only): the
   breakdown of where the bridge's time goes. Then the import of the network stage, in new interpreters.
2. Throughput. Two long-lived containers on the bridge (through the API). iperf3 runs in their network
   namespaces (`nsenter --net=/proc/PID/ns/net`: the host's iperf3 binary, the container's network):
   the server in one, the client in the other, so every byte goes veth -> bridge -> veth. Against it,
   iperf3 over this namespace's loopback. In turns, `--seconds` each; the figure is the receiver's.
   Before that, the first TCP connection from a container just built to the other one is timed: whether
   a new port forwards at once.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from benchmarks.bench_run import COMMAND, ApiRuns, command
from benchmarks.common import (
    Contender,
    alternate,
    interpreter,
    machine,
    ratio,
    require_root,
    require_tool,
    seconds,
    spread,
    table,
    version,
)
from mini_container import network, syscalls
from mini_container.image.bootstrap import bootstrap_busybox
from mini_container.image.store import ImageStore
from mini_container.network import files, ipam, links, nat
from mini_container.runtime.containers import ContainerStore
from mini_container.runtime.spec import set_network
from mini_container.stepper import Stepper

GOAL_ADDED_MS = 20.0  # bridge minus none, minictl's medians, at most
GOAL_THROUGHPUT = 0.5  # bridge over loopback, at least
PORT = 5201


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    require_root()
    python = interpreter()
    require_tool("iperf3", "iperf3")
    require_tool("nsenter", "util-linux")
    syscalls.unshare(syscalls.CLONE_NEWNET)  # everything below happens in a network namespace of our own
    network.bring_loopback_up()
    work = Path(tempfile.mkdtemp(prefix="mini-bench-network-", dir=options.workdir))
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # as bench_run: an installed engine has its bytecode
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        root = work / "root"
        image = bootstrap_busybox(ImageStore(root))
        for line in machine({"store": root}):
            print(line)
        print(f"tools: {version(['iperf3', '--version'])}", flush=True)
        start_up(python, root, image, options.rounds, keepers=0)
        start_up(python, root, image, options.rounds, keepers=1)
        report_imports(python, options.rounds)
        throughput(root, image, options.seconds, options.throughput_rounds)
    finally:
        shutil.rmtree(work)
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_network", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="timed start-up rounds, after one warm-up")
    parser.add_argument("--seconds", type=float, default=3, help="length of one iperf3 run")
    parser.add_argument("--throughput-rounds", type=int, default=5,
                        help="timed iperf3 rounds, after one warm-up")
    parser.add_argument("--workdir", default="/var/tmp", help="where the engine root and the caches go")
    return parser.parse_args(argv)


# --- 1. start-up ----------------------------------------------------------------------------------


def start_up(python: str, root: Path, image, rounds: int, keepers: int) -> None:
    """Both modes through minictl and the API, with `keepers` long-lived containers on the bridge."""
    def minictl(mode: str) -> list[str]:
        return [python, "-m", "mini_container.cli", "--root", str(root), "run", "--rm", "--network", mode,
                "busybox", *COMMAND]

    api = {mode: ApiRuns(root, image, mode) for mode in ("none", "bridge")}
    timers = Timers()
    contenders = [
        Contender("minictl none", lambda n: command(minictl("none"))),
        Contender("minictl bridge", lambda n: command(minictl("bridge"))),
        Contender("api none", api["none"].run),
        Contender("api bridge", lambda n: timers.run(n, api["bridge"].run)),
    ]
    title = "beside a container that keeps the bridge up" if keepers else "alone: the bridge made and deleted"
    print(f"\n== start-up, {title} ==", flush=True)
    with Containers(root, image, keepers):
        alternate(contenders, rounds)
    report_start_up(contenders, api, timers)


def report_start_up(contenders: list[Contender], api: dict[str, ApiRuns], timers: Timers) -> None:
    minictl_none, minictl_bridge, api_none, api_bridge = contenders
    print()
    print(table([(c.name, seconds(c.times), spread(c.times)) for c in contenders],
                ["contender", "median s", "min-max s"]))
    print()
    for bridge, none, goal in [(minictl_bridge, minictl_none, GOAL_ADDED_MS), (api_bridge, api_none, None)]:
        added = 1000 * (bridge.median - none.median)
        paired = 1000 * statistics.median(b - n for b, n in zip(bridge.times, none.times, strict=True))
        of_medians, paired_ratio = ratio(bridge, none)
        verdict = "" if goal is None else f"; goal <= {goal:.0f} ms: {'met' if added <= goal else 'NOT met'}"
        print(f"{bridge.name} - {none.name}: {added:+.1f} ms (median of per-round differences "
              f"{paired:+.1f} ms), {of_medians:.2f}x (per-round {paired_ratio:.2f}x){verdict}")
    print("\nthe API's steps that differ (medians, ms):")
    names = ["net", "network", "close (cgroup removed)"]
    print(table([(name, *(f"{1000 * statistics.median(api[mode].phases[name]):.1f}"
                          if api[mode].phases.get(name) else "-" for mode in ("none", "bridge")))
                 for name in names], ["step", "none", "bridge"]))
    print("\nthe bridge's work in the API's bridge runs (medians per container; calls per container):")
    print(timers.table())


class Timers:
    """Timers wrapped around the network stage's functions while `run` runs (this process only)."""

    WRAPPED = [(network, "attach"), (network, "detach"), *((links, name) for name in (
        "create_bridge", "create_veth_pair", "configure_container_end", "in_netns_of", "index_of",
        "delete_link")),
        *((nat, name) for name in ("write_table", "delete_table", "table_exists", "set_route_localnet",
                                   "set_ip_forward")),
        *((ipam.Store, name) for name in ("locked", "save_network", "save_lease", "leases", "remove_lease")),
        (ipam, "allocate"), *((files, name) for name in ("resolv_conf", "write", "write_in_place"))]
    CONTEXTS = ("links.in_netns_of", "Store.locked")  # timed from entering to the body, not to the exit

    def __init__(self) -> None:
        self.calls: dict[str, list[list[float]]] = defaultdict(list)  # name -> per run, each call's seconds
        self._current: dict[str, list[float]] | None = None

    def run(self, number: int, action: Callable[[int], float]) -> float:
        self._current = defaultdict(list)
        originals = [(owner, name, getattr(owner, name)) for owner, name in self.WRAPPED]
        for owner, name, original in originals:
            setattr(owner, name, self._timed(self._label(owner, name), original))
        try:
            return action(number)
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)
            if number > 0:  # round 0 is the warm-up
                for label, taken in self._current.items():
                    self.calls[label].append(taken)

    @staticmethod
    def _label(owner, name: str) -> str:
        return f"{owner.__name__.removeprefix('mini_container.').removeprefix('network.')}.{name}"

    def _timed(self, label: str, original):
        if label in self.CONTEXTS:
            return self._timed_context(label, original)

        @functools.wraps(original)
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                name = label
                if label == "links.delete_link":  # the veth's and the bridge's costs differ
                    name += " (bridge)" if args[1] == network.DEFAULT_BRIDGE else " (veth)"
                self._current[name].append(time.perf_counter() - start)
        return timed

    def _timed_context(self, label: str, original):
        """A context manager's set-up alone: entering `in_netns_of` (a thread joins it), taking a lock."""
        @contextlib.contextmanager
        def timed(*args, **kwargs):
            start = time.perf_counter()
            with original(*args, **kwargs) as value:
                self._current[f"{label} (enter)"].append(time.perf_counter() - start)
                yield value
        return timed

    def table(self) -> str:
        runs = max((len(per_run) for per_run in self.calls.values()), default=0)
        rows = []
        for label, per_run in self.calls.items():
            totals = [sum(calls) for calls in per_run] + [0.0] * (runs - len(per_run))
            counts = [len(calls) for calls in per_run] + [0] * (runs - len(per_run))
            rows.append((label, f"{1000 * statistics.median(totals):.2f}", f"{statistics.median(counts):g}"))
        return table(rows, ["function (nested ones are inside attach or detach)", "ms", "calls"])


class Containers:
    """Long-lived busybox containers on the bridge, built through the API, removed on exit."""

    def __init__(self, root: Path, image, count: int, command: list[str] = ("sleep", "3600")):
        self.root, self.image, self.count, self.command = root, image, count, list(command)
        self.store = ContainerStore(root)
        self.builds: list[Stepper] = []

    def start_one(self) -> Stepper:
        spec = self.store.create(self.image, self.command)
        set_network(spec, "bridge", [], self.root / "network")
        build = Stepper(spec, observe=False)
        self.builds.append(build)
        build.run_all()
        return build

    def __enter__(self) -> Containers:
        try:
            for _ in range(self.count):
                self.start_one()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        for build in reversed(self.builds):
            build.close()
            self.store.remove(build.spec.id, force=True)
        self.builds.clear()


def report_imports(python: str, rounds: int) -> None:
    """The import of the network stage on top of what `minictl run` imports anyway, in new interpreters."""
    base = "import mini_container.cli, mini_container.stepper"
    contenders = [Contender("run's imports", lambda n: command([python, "-c", base])),
                  Contender("and mini_container.network",
                            lambda n: command([python, "-c", f"{base}; import mini_container.network"]))]
    print("\n== importing the network stage ==", flush=True)
    alternate(contenders, rounds, progress=False)
    print(table([(c.name, seconds(c.times), spread(c.times)) for c in contenders],
                ["command", "median s", "min-max s"]))
    print(f"the network stage's import: {1000 * (contenders[1].median - contenders[0].median):+.1f} ms")


# --- 2. throughput --------------------------------------------------------------------------------


def throughput(root: Path, image, length: float, rounds: int) -> None:
    print("\n== throughput ==", flush=True)
    with Containers(root, image, 1) as boxes, contextlib.ExitStack() as servers:
        server = boxes.builds[0]
        address = read_address(server.pid)
        servers.enter_context(iperf3_server(["nsenter", f"--net=/proc/{server.pid}/ns/net"], address))
        servers.enter_context(iperf3_server([], "127.0.0.1"))
        started = time.perf_counter()
        client = boxes.start_one()
        built = time.perf_counter()
        connected = in_netns(client.pid, functools.partial(first_connection, address))
        port = bridge_port_state(client.network.host_veth)
        print(f"a new container's first TCP connection to the other, as soon as its build returned: "
              f"{1000 * connected:.1f} ms (the build took {1000 * (built - started):.0f} ms); its bridge "
              f"port then: {port}")
        results: dict[str, list[dict]] = defaultdict(list)

        def run(name: str, prefix: list[str], target: str) -> Callable[[int], float]:
            def once(number: int) -> float:
                done = subprocess.run([*prefix, "iperf3", "-c", target, "-p", str(PORT), "-t", str(length),
                                       "-J"], capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"iperf3 -c {target} failed: {done.stdout[-500:]}{done.stderr[-500:]}")
                end = json.loads(done.stdout)["end"]
                if number > 0:
                    results[name].append(end)
                return end["sum_received"]["bits_per_second"] / 1e9
            return once

        contenders = [Contender("loopback", run("loopback", [], "127.0.0.1")),
                      Contender("bridge", run("bridge", ["nsenter", f"--net=/proc/{client.pid}/ns/net"],
                                              address))]
        alternate(contenders, rounds)
    print()
    rows = []
    for contender in contenders:
        retransmits = [end["sum_sent"].get("retransmits", 0) for end in results[contender.name]]
        low, high = min(contender.times), max(contender.times)
        rows.append((contender.name, f"{contender.median:.2f}", f"{low:.2f}-{high:.2f}",
                     f"{statistics.median(retransmits):g}"))
    print(table(rows, ["path", "median Gbit/s", "min-max Gbit/s", "retransmits"]))
    of_medians, paired = ratio(contenders[1], contenders[0])
    verdict = "met" if of_medians >= GOAL_THROUGHPUT else "NOT met"
    print(f"\nbridge/loopback throughput: {of_medians:.2f}x (median of per-round ratios {paired:.2f}x); "
          f"goal >= {GOAL_THROUGHPUT}: {verdict}")


def read_address(pid: int) -> str:
    eth0 = next(link for link in network.observe(pid)["links"] if link["name"] == links.CONTAINER_LINK)
    return eth0["addresses"][0].split("/")[0]


@contextlib.contextmanager
def iperf3_server(prefix: list[str], address: str) -> Iterator[None]:
    """An iperf3 server on `address`, under `prefix` (nsenter into a container's network), until the end."""
    server = subprocess.Popen([*prefix, "iperf3", "-s", "-B", address, "-p", str(PORT)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not listening(prefix, address):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the iperf3 server on {address} did not start")
            time.sleep(0.05)
        yield
    finally:
        server.terminate()
        server.wait(timeout=10)


def listening(prefix: list[str], address: str) -> bool:
    done = subprocess.run([*prefix, "ss", "-Hltn", f"sport = :{PORT}"], capture_output=True, text=True,
                          check=False)
    return address in done.stdout


def in_netns(pid: int, function: Callable[[], float]) -> float:
    """Call `function` in a thread that joined the network namespace of `pid` (the caller stays put)."""
    outcome: dict[str, object] = {}

    def joined() -> None:
        with open(f"/proc/{pid}/ns/net") as target:
            syscalls.setns(target.fileno(), syscalls.CLONE_NEWNET)  # this thread only; it ends after
        try:
            outcome["value"] = function()
        except BaseException as err:
            outcome["error"] = err

    thread = threading.Thread(target=joined)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def first_connection(address: str) -> float:
    """Seconds until a TCP connection to the iperf3 port is accepted (a lost SYN would cost 1 s)."""
    start = time.perf_counter()
    with socket.create_connection((address, PORT), timeout=5):
        return time.perf_counter() - start


def bridge_port_state(veth: str) -> str:
    """The state of a bridge port as `bridge link` shows it (forwarding, disabled, ...)."""
    done = subprocess.run(["bridge", "-j", "link", "show", "dev", veth], capture_output=True, text=True,
                          check=False)
    entries = json.loads(done.stdout or "[]")
    return entries[0].get("state", "?") if entries else f"? ({done.stderr.strip()})"


if __name__ == "__main__":
    sys.exit(main())
