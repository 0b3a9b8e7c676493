"""Starting a container: `minictl run` and the engine's API against `runc run` (issue 5).

    sudo .venv/bin/python -m benchmarks.bench_run [--rounds 10] [--network none] [--profile]

The goals it checks: `minictl run --rm busybox /bin/true` takes no longer (median wall time) than
`runc run` of the same rootfs as a bundle; the same container built from inside a running Python
process through the API takes no more than half as long. Run it from the repository's root, as root,
with the real interpreter (a pyenv shim adds ~100 ms to every start and is refused).

Contenders, run in turns (see `benchmarks.common`), each a container running busybox's /bin/true with
new pid, mount, uts, ipc, net and cgroup namespaces, a cgroup, and only a loopback device:
- minictl: `python -m mini_container.cli run --rm --network none busybox /bin/true`, a new interpreter
  each time: start-up, imports, the overlay root, the build, waiting, removal;
- runc: `runc run` of a bundle made here: config.json from `runc spec`, made to match minictl's
  container (terminal false, /bin/true, a read-write root, a cgroup namespace, Docker's capabilities
  and Docker's seccomp profile, which minictl loads and `runc spec` leaves out), and the busybox
  image's layers flattened into rootfs/. runc puts the container in `<its own cgroup>/<id>` and
  deletes it when it exits;
- mini-runc: the engine's runc-compatible command line on the very same bundle;
- api: in this process, already imported: `ContainerStore.create`, `Stepper(spec, observe=False)`
  start, run_all, wait and close, then `ContainerStore.remove`. Each step of the Stepper is timed: the
  per-step table says where a container's start-up goes.

Then the command line's own costs, which the API does not pay: the interpreter's start-up
(`python -c pass`), the imports (`python -c "import mini_container.cli"`), and the heaviest modules
according to `python -X importtime -m mini_container.cli --help`. `--profile` adds one `minictl run`
under cProfile (the parent's side only: the child's steps run in processes of their own).
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

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
from mini_container.errors import ContainerError
from mini_container.image.store import ImageStore
from mini_container.image.unpack import apply_layer
from mini_container.locations import engine_root
from mini_container.runtime.capabilities import docker_default_sets
from mini_container.runtime.containers import ContainerStore
from mini_container.runtime.docker_seccomp import docker_default_seccomp
from mini_container.runtime.spec import set_network
from mini_container.stepper import Stepper

REPOSITORY = Path(__file__).resolve().parent.parent
COMMAND = ["/bin/true"]
NAMESPACES = ["pid", "network", "ipc", "uts", "mount", "cgroup"]  # minictl's defaults, in runc's names
GOAL_CLI = 1.0  # minictl's median over runc's, at most
GOAL_API = 0.5  # the API's median over runc's, at most


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    require_root()
    python = interpreter()
    require_tool("runc", "runc")
    root = Path(options.root)
    try:
        image = ImageStore(root).get("busybox")
    except ContainerError as error:
        raise SystemExit(f"{error}\n(the benchmark runs busybox: minictl bootstrap busybox)") from None
    work = Path(tempfile.mkdtemp(prefix="mini-bench-run-", dir=options.workdir))
    # An installed engine has its bytecode cached; a source tree run with PYTHONDONTWRITEBYTECODE would
    # compile every module on every start (~0.3 s here). The warm-up round fills a cache of our own.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(work / "pycache")
    try:
        bundle = make_bundle(root, image, work / "bundle")
        for line in machine({"store": root, "bundle": bundle}):
            print(line)
        print(f"tools: {version(['runc', '--version'])}; minictl's network: {options.network}", flush=True)
        api = ApiRuns(root, image, options.network)
        minictl = [python, "-m", "mini_container.cli", "--root", str(root), "run", "--rm", "--network",
                   options.network, "busybox", *COMMAND]
        mini_runc = [python, "-m", "mini_container.cli.runc", "--root", str(work / "mini-runc-state")]
        runc = ["runc", "--root", str(work / "runc-state")]
        contenders = [
            Contender("minictl", lambda n: command(minictl)),
            Contender("runc", lambda n: command([*runc, "run", "--bundle", str(bundle), f"bench-runc-{n}"])),
            Contender("mini-runc", lambda n: command([*mini_runc, "run", "--bundle", str(bundle),
                                                      f"bench-mini-runc-{n}"])),
            Contender("api", api.run),
        ]
        alternate(contenders, options.rounds)
        report(contenders, api)
        report_command_line(python, options.rounds)
        if options.profile:
            profile(minictl)
    finally:
        shutil.rmtree(work)
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(engine_root()), help="the engine's store, with busybox in it")
    parser.add_argument("--rounds", type=int, default=10, help="timed rounds, after one warm-up round")
    parser.add_argument("--network", default="none",
                        help="minictl's --network: none (lo up, like runc; the default) or bridge")
    parser.add_argument("--workdir", default="/var/tmp", help="where the bundle and the state go")
    parser.add_argument("--profile", action="store_true", help="profile one more minictl run (cProfile)")
    return parser.parse_args(argv)


# --- the runc bundle ------------------------------------------------------------------------------


def make_bundle(root: Path, image, bundle: Path) -> Path:
    """A bundle for runc: `runc spec`'s config.json made like minictl's container, the image flattened."""
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True)
    store = ImageStore(root)
    for layer, diff_id in zip(image.manifest.layers, image.image_config["rootfs"]["diff_ids"], strict=True):
        with open(store.blob_path(layer.digest), "rb") as blob:
            apply_layer(blob, rootfs, image=image.reference, layer=layer.digest, diff_id=diff_id)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config = json.loads((bundle / "config.json").read_text())
    config["process"].update(terminal=False, args=COMMAND, capabilities=docker_default_sets(),
                             noNewPrivileges=False, rlimits=[])  # what minictl gives, as docker does
    config["linux"]["seccomp"] = docker_default_seccomp()  # minictl's default filter; runc spec has none
    config["root"]["readonly"] = False  # minictl's overlay root is writable
    kinds = [namespace["type"] for namespace in config["linux"]["namespaces"]]
    config["linux"]["namespaces"] += [{"type": kind} for kind in NAMESPACES if kind not in kinds]
    (bundle / "config.json").write_text(json.dumps(config, indent=2))
    return bundle


# --- the contenders -------------------------------------------------------------------------------


def command(argv: list[str]) -> float:
    """Run one container through a command line; its wall time, from fork to the exit being reaped."""
    start = time.perf_counter()
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=REPOSITORY,
                            check=False)
    took = time.perf_counter() - start
    reap_orphans()
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {result.returncode}")
    return took


def reap_orphans() -> None:
    """Wait for any orphan reparented to us: the API's Stepper makes this process a child subreaper."""
    try:
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    except ChildProcessError:
        pass


class ApiRuns:
    """The container built through the engine's API, in this process, with every phase timed."""

    def __init__(self, root: Path, image, network: str):
        self.root, self.image, self.network = root, image, network
        self.store = ContainerStore(root)
        self.phases: dict[str, list[float]] = defaultdict(list)  # name -> seconds, one per timed round
        self.lifecycle: list[float] = []  # create to remove
        self.order: list[str] = []

    def run(self, number: int) -> float:
        """One container: create, the Stepper from start to close, remove. Returns the Stepper's part."""
        marks: list[tuple[str, float]] = []
        begin = time.perf_counter()
        spec = self.store.create(self.image, COMMAND)
        set_network(spec, self.network, [], self.root / "network")  # as minictl run does
        marks.append(("create (record, directories)", time.perf_counter()))
        build = Stepper(spec, observe=False)
        try:
            build.start()
            marks.append(("start (fork the child)", time.perf_counter()))
            while not build.done:
                name = build.next_step.name
                build.step()
                marks.append((name, time.perf_counter()))
            code = build.wait()
            marks.append(("wait (for /bin/true's exit)", time.perf_counter()))
        finally:
            build.close()
        marks.append(("close (cgroup removed)", time.perf_counter()))
        self.store.remove(spec.id, force=True)
        marks.append(("remove (directories)", time.perf_counter()))
        if code != 0:
            raise SystemExit(f"the API's container exited with {code}")
        if number > 0:  # round 0 is the warm-up
            previous = begin
            for name, moment in marks:
                self.phases[name].append(moment - previous)
                previous = moment
            self.order = [name for name, _ in marks]
            self.lifecycle.append(marks[-1][1] - begin)
        return marks[-2][1] - marks[0][1]  # start to close: the Stepper


# --- the report -----------------------------------------------------------------------------------


def report(contenders: list[Contender], api: ApiRuns) -> None:
    minictl, runc, mini_runc, api_ = contenders
    rows = [(c.name, seconds(c.times), spread(c.times)) for c in contenders]
    rows.append(("api, create to remove", seconds(api.lifecycle), spread(api.lifecycle)))
    print()
    print(table(rows, ["contender", "median s", "min-max s"]))
    print()
    for contender, goal, what in [(minictl, GOAL_CLI, "minictl/runc"), (api_, GOAL_API, "api/runc"),
                                  (mini_runc, None, "mini-runc/runc")]:
        of_medians, paired = ratio(contender, runc)
        verdict = "" if goal is None else f"; goal <= {goal}: {'met' if of_medians <= goal else 'NOT met'}"
        print(f"{what} wall time: {of_medians:.2f}x (median of per-round ratios {paired:.2f}x){verdict}")
    print(f"api (create to remove)/runc wall time: {statistics.median(api.lifecycle) / runc.median:.2f}x")
    total = sum(statistics.median(api.phases[name]) for name in api.order)
    rows = [(name, f"{statistics.median(api.phases[name]) * 1000:.1f}",
             f"{100 * statistics.median(api.phases[name]) / total:.0f}%") for name in api.order]
    print("\nthe API's container, phase by phase (medians; steps run in the child unless marked parent):")
    print(table(rows, ["phase", "ms", "share"]))


def report_command_line(python: str, rounds: int) -> None:
    """What a `minictl` command pays before it does anything: the interpreter and the imports."""
    start_up = [command([python, "-c", "pass"]) for _ in range(rounds)]
    imports = [command([python, "-c", "import mini_container.cli"]) for _ in range(rounds)]
    helps = [command([python, "-m", "mini_container.cli", "--help"]) for _ in range(rounds)]
    print("\nthe command line's fixed costs (medians of separate runs):")
    print(table([("python -c pass", seconds(start_up)),
                 ("python -c 'import mini_container.cli'", seconds(imports)),
                 ("python -m mini_container.cli --help", seconds(helps))], ["command", "median s"]))
    result = subprocess.run([python, "-X", "importtime", "-m", "mini_container.cli", "--help"],
                            cwd=REPOSITORY, capture_output=True, text=True, check=True)
    modules = parse_importtime(result.stderr)
    total = sum(own for own, _ in modules.values())
    print(f"\nimports, from one run of -X importtime ({total / 1000:.0f} ms in all; an import's cumulative "
          "time includes what it imports first):")
    engine = sorted(((name, times) for name, times in modules.items() if name.startswith("mini_container")),
                    key=lambda item: -item[1][1])[:12]
    print(table([(name, f"{own / 1000:.1f}", f"{total / 1000:.1f}") for name, (own, total) in engine],
                ["engine module", "own ms", "cumulative ms"]))
    by_package: dict[str, int] = defaultdict(int)
    for name, (own, _) in modules.items():
        if not name.startswith("mini_container"):
            by_package[name.split(".")[0]] += own
    heaviest = sorted(by_package.items(), key=lambda item: -item[1])[:12]
    print(table([(name, f"{own / 1000:.1f}") for name, own in heaviest],
                ["other package", "own ms (all modules)"]))


def parse_importtime(text: str) -> dict[str, tuple[int, int]]:
    """`import time: SELF | CUMULATIVE | NAME` lines -> {name: (self µs, cumulative µs)}."""
    modules = {}
    for line in text.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|(\s*)(\S+)", line)
        if match:
            modules[match[4]] = (int(match[1]), int(match[2]))
    return modules


def profile(argv: list[str]) -> None:
    """One more minictl run under cProfile: the parent's side, by cumulative time."""
    with tempfile.NamedTemporaryFile(suffix=".prof") as output:
        subprocess.run([argv[0], "-m", "cProfile", "-o", output.name, *argv[1:]], cwd=REPOSITORY, check=True)
        print("\nminictl run under cProfile (the parent's side), by cumulative time:")
        pstats.Stats(output.name).sort_stats("cumulative").print_stats(30)


if __name__ == "__main__":
    sys.exit(main())
