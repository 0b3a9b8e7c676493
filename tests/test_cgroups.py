"""Stage 2, cgroups, on the real kernel: limits that bite, counters that count, nothing left behind.

Which tests run where:
- unmarked tests run everywhere: detection, units and validation, and the v2 *core* files, which the v2
  tree offers even without controllers (create, add, freeze/thaw through cgroup.freeze and
  cgroup.events, kill through cgroup.kill, destroy, cpu.stat, PSI). On a hybrid host they use its v2
  tree (/sys/fs/cgroup/unified), on a pure v2 host the root tree.
- `cgroup_v1` tests use the v1 backend (every limit and counter); they need the v1 hierarchies.
- `cgroup_v2_controllers` tests are the same limit and counter tests against the v2 backend; they need a
  v2 tree whose controllers (cpu, memory, pids, io) reach the test's cgroups. They are deselected by
  default; `--cgroup-v2` (set by the pure-v2 VM run) selects them and deselects the `cgroup_v1` ones.
  Where the controllers are missing they then fail (as errors of the `sandbox` fixture's set-up),
  naming the missing controllers. On a v2 host the cgroup
  the shell runs in holds processes, and v2's no-internal-process rule forbids delegating from it, so
  the VM run points the tests at an empty cgroup below the root:

      mkdir /sys/fs/cgroup/mc-tests
      MINI_CONTAINER_CGROUP_PARENT=/mc-tests python -m pytest tests/test_cgroups.py --cgroup-v2
      rmdir /sys/fs/cgroup/mc-tests

Safety on a shared host: each test gets its own parent cgroup `mc-test-<random>` below the cgroup
pytest runs in (or below $MINI_CONTAINER_CGROUP_PARENT), in every hierarchy it uses. The `sandbox`
fixture kills only the processes inside that subtree (which only the test put there), reaps them (it
makes pytest a child subreaper for the test, so orphans of a fork bomb come back to it) and removes
every directory, even when the test fails.

Tolerances: the CPU quota test runs a busy loop under a quota of half a core for 2.5 s and expects
docker's CPU% to be 50 ± 10; the freeze test allows 5 ms of CPU time while frozen.
"""

from __future__ import annotations

import os
import posixpath
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import suppress
from pathlib import Path

import pytest

from mini_container import cgroups, syscalls
from mini_container.cgroups import (
    ENV_PARENT,
    Cgroup,
    CgroupError,
    DeviceThrottle,
    Layout,
    Limits,
    Stats,
    V1Cgroup,
    V2Cgroup,
    cpu_percent,
    detect,
)
from mini_container.cgroups.v2 import CONTROLLERS as V2_ALL_CONTROLLERS
from mini_container.cgroups.v2 import enable_controllers
from mini_container.errors import ContainerError, InvalidArgumentError

PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
MiB = 1 << 20
V2_CONTROLLERS_NEEDED = ("cpu", "memory", "pids")

BACKENDS = [
    pytest.param(V1Cgroup, id="v1", marks=pytest.mark.cgroup_v1),
    pytest.param(V2Cgroup, id="v2", marks=pytest.mark.cgroup_v2_controllers),
]
CORE_BACKENDS = [  # what works without v2 controllers: the v2 variant runs everywhere
    pytest.param(V1Cgroup, id="v1", marks=pytest.mark.cgroup_v1),
    pytest.param(V2Cgroup, id="v2-core"),
]


def root_disk() -> str:
    """MAJ:MIN of the whole disk holding /, for I/O throttles."""
    device = os.stat("/").st_dev
    sysfs = Path(f"/sys/dev/block/{os.major(device)}:{os.minor(device)}")
    assert sysfs.exists(), f"/ is not on a block device ({os.major(device)}:{os.minor(device)}): the I/O " \
                           f"tests need a disk-backed root filesystem"
    sysfs = sysfs.resolve()
    if (sysfs / "partition").exists():
        sysfs = sysfs.parent
    return (sysfs / "dev").read_text().strip()


def reap_adopted_zombies() -> None:
    """Wait for every zombie child of this process (orphans handed to it as a subreaper)."""
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            if state == "Z" and int(parent) == me:
                with suppress(ChildProcessError):
                    os.waitpid(int(entry.name), 0)


class Sandbox:
    """A unique parent cgroup per hierarchy for one test, and the processes the test started.

    With `controllers`, a v2 sandbox has the controllers handed down to it (written to its parent's
    cgroup.subtree_control, as an operator would) and fails, naming them, when they are missing.
    """

    def __init__(self, layout: Layout, backend: type[Cgroup], controllers: bool = False) -> None:
        self.backend = backend
        self.controllers = controllers and backend is V2Cgroup
        # The layout the backend sees: the v2 backend gets a v2-only view even on a hybrid host.
        self.layout = layout if backend is V1Cgroup else Layout("v2", {}, layout.v2)
        self.parent = posixpath.join(os.environ.get(ENV_PARENT, ""), f"mc-test-{uuid.uuid4().hex[:10]}")
        self.dirs: list[Path] = []
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> Sandbox:
        syscalls.prctl(PR_SET_CHILD_SUBREAPER, 1)
        try:
            self._make_parents()
            if self.controllers:
                self._require_v2_controllers()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _make_parents(self) -> None:
        hierarchies = list(dict.fromkeys(self.backend.hierarchies(self.layout).values()))
        for hierarchy in hierarchies:
            directory = hierarchy.directory(cgroups.parent_path(hierarchy, self.parent))
            if hierarchy.version == 2 and self.controllers:
                offered = (directory.parent / "cgroup.controllers").read_text().split()
                enable_controllers(directory.parent, [c for c in V2_ALL_CONTROLLERS if c in offered])
            directory.mkdir()
            self.dirs.append(directory)
            for name in ("cpuset.cpus", "cpuset.mems"):  # a v1 cpuset starts empty
                if (directory / name).exists() and not (directory / name).read_text().strip():
                    (directory / name).write_text((directory.parent / name).read_text())

    def _require_v2_controllers(self) -> None:
        offered = (self.dirs[0] / "cgroup.controllers").read_text().split()
        missing = [name for name in V2_CONTROLLERS_NEEDED if name not in offered]
        if missing:
            pytest.fail(f"cgroup v2 controllers missing at {self.dirs[0]}: {', '.join(missing)} (offered: "
                        f"{offered or 'none'}); run on a pure v2 host with {ENV_PARENT} set to an empty "
                        f"cgroup whose parent delegates them")

    def __exit__(self, *_exc) -> None:
        try:
            cgroup_dirs = [Path(d) for top in self.dirs if top.exists() for d, _, _ in os.walk(top)]
            for directory in cgroup_dirs:  # frozen processes must be thawed to die (v1)
                for name, value in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
                    if (directory / name).exists():
                        (directory / name).write_text(value)
            deadline = time.monotonic() + 10
            while pids := [int(p) for d in cgroup_dirs for p in (d / "cgroup.procs").read_text().split()]:
                assert time.monotonic() < deadline, f"processes {pids} of the test would not die"
                for pid in pids:
                    with suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.01)
            for proc in self.procs:
                proc.kill()
                proc.wait(timeout=10)
                if proc.stdout:
                    proc.stdout.close()
            reap_adopted_zombies()
            for directory in sorted(cgroup_dirs, key=lambda d: len(d.parts), reverse=True):
                directory.rmdir()
        finally:
            syscalls.prctl(PR_SET_CHILD_SUBREAPER, 0)

    def create(self, name: str = "box", limits: Limits | None = None) -> Cgroup:
        return self.backend.create(name, limits or Limits(), self.layout, self.parent)

    def start(self, cgroup: Cgroup, code: str, stdout: int = subprocess.DEVNULL) -> subprocess.Popen:
        """Run `python -c code` inside `cgroup`: it waits at a gate until it has been moved there."""
        proc = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()\n" + code],
                                stdin=subprocess.PIPE, stdout=stdout)
        self.procs.append(proc)
        cgroup.add(proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        return proc

    def leftovers(self, name: str = "box") -> list[str]:
        """Names of the directories of container `name`, and of the engine's subtree, that still exist."""
        paths = self.backend.at(name, self.layout, self.parent).directories()
        return sorted({path.name for path in paths + [path.parent for path in paths] if path.exists()})


@pytest.fixture(scope="session")
def layout() -> Layout:
    return detect()


@pytest.fixture(params=BACKENDS)
def sandbox(request, layout):
    """A sandbox for the v1 backend, or the v2 backend with its controllers."""
    with Sandbox(layout, request.param, controllers=True) as box:
        yield box


@pytest.fixture(params=CORE_BACKENDS)
def core_sandbox(request, layout):
    """A sandbox for the v1 backend, or the v2 backend using only v2's core files."""
    with Sandbox(layout, request.param) as box:
        yield box


@pytest.fixture
def v2_sandbox(layout):
    """A sandbox for the v2 backend using only v2's core files."""
    with Sandbox(layout, V2Cgroup) as box:
        yield box


@pytest.fixture
def v2_controllers_sandbox(layout):
    """A sandbox for the v2 backend with its controllers."""
    with Sandbox(layout, V2Cgroup, controllers=True) as box:
        yield box


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


BUSY_LOOP = "while True:\n    pass\n"
SLEEPER = "import time\ntime.sleep(60)\n"


# --- detection ----------------------------------------------------------------------------------------
KNOWN = frozenset({"cpu", "cpuacct", "cpuset", "memory", "pids", "freezer", "blkio", "devices"})
V1_MOUNTINFO = """\
24 23 0:21 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
25 24 0:22 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
26 24 0:23 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
27 24 0:24 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
28 24 0:25 / /sys/fs/cgroup/my\\040pids rw - cgroup cgroup rw,pids
"""
V2_MOUNTINFO = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
HYBRID_MOUNTINFO = V1_MOUNTINFO + "31 24 0:27 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"


def test_detect_tells_v1_v2_and_hybrid_apart_from_mountinfo():
    v1 = detect(V1_MOUNTINFO, KNOWN)
    assert v1.mode == "v1" and v1.v2 is None
    assert v1.v1["cpu"] is v1.v1["cpuacct"], "co-mounted controllers share one hierarchy"
    assert v1.v1["cpu"].mount == Path("/sys/fs/cgroup/cpu,cpuacct")
    assert v1.v1["pids"].mount == Path("/sys/fs/cgroup/my pids"), "mountinfo's \\040 is a space"
    assert set(v1.v1) == {"cpu", "cpuacct", "memory", "pids"}, "name=systemd is no controller"

    v2 = detect(V2_MOUNTINFO, KNOWN)
    assert (v2.mode, v2.v1, v2.v2.mount) == ("v2", {}, Path("/sys/fs/cgroup"))

    hybrid = detect(HYBRID_MOUNTINFO, KNOWN)
    assert hybrid.mode == "hybrid" and hybrid.v2.mount == Path("/sys/fs/cgroup/unified")
    assert hybrid.v1["memory"].mount == Path("/sys/fs/cgroup/memory")

    with pytest.raises(CgroupError, match="no cgroup filesystem"):
        detect("24 23 0:21 / /sys/fs/cgroup rw - tmpfs tmpfs rw\n", KNOWN)


def test_hierarchy_maps_cgroup_paths_through_the_mount_root():
    mounted_at_a_subtree = cgroups.Hierarchy(2, Path("/sys/fs/cgroup"), "/ns", frozenset())
    assert mounted_at_a_subtree.directory("/ns") == Path("/sys/fs/cgroup")
    assert mounted_at_a_subtree.directory("/ns/a/b") == Path("/sys/fs/cgroup/a/b")
    with pytest.raises(CgroupError, match="outside the part of the hierarchy"):
        mounted_at_a_subtree.directory("/elsewhere")


def test_detect_matches_this_host(layout):
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    has_v2 = any(line.partition(" - ")[2].startswith("cgroup2 ") for line in lines)
    has_v1 = any(line.partition(" - ")[2].startswith("cgroup ") and set(line.split()[-1].split(",")) & KNOWN
                 for line in lines)
    assert layout.mode == {(True, True): "hybrid", (True, False): "v1", (False, True): "v2"}[(has_v1, has_v2)]
    for hierarchy in {*layout.v1.values(), *([layout.v2] if layout.v2 else [])}:
        own = hierarchy.directory(cgroups.cgroup_of("self", hierarchy))
        assert (own / "cgroup.procs").exists()
        assert str(os.getpid()) in (own / "cgroup.procs").read_text().split(), f"pytest is not in {own}"


def test_parent_is_below_the_engines_own_cgroup(layout, monkeypatch):
    hierarchy = layout.v2 or next(iter(layout.v1.values()))
    own = cgroups.cgroup_of("self", hierarchy)
    monkeypatch.delenv(ENV_PARENT, raising=False)
    assert cgroups.parent_path(hierarchy) == own
    assert cgroups.subtree_dir(hierarchy) == hierarchy.directory(own) / "mini-container"
    monkeypatch.setenv(ENV_PARENT, "tests/run1")
    assert cgroups.parent_path(hierarchy) == posixpath.join(own, "tests/run1")
    assert cgroups.parent_path(hierarchy, "/elsewhere") == "/elsewhere", "the argument wins over the env"
    monkeypatch.setenv(ENV_PARENT, "/abs")
    assert cgroups.parent_path(hierarchy) == "/abs"
    with pytest.raises(InvalidArgumentError, match=r"'\.\.'"):
        cgroups.parent_path(hierarchy, "../escape")


@pytest.mark.parametrize("name", ["../escape", "a/b", "", ".hidden", "x" * 129])
def test_container_name_must_be_one_path_component(layout, name):
    with pytest.raises(InvalidArgumentError, match="cgroup name"):
        V2Cgroup.at(name, layout)


# --- units and validation -----------------------------------------------------------------------------
def test_conversions_match_docker():
    assert cgroups.shares_to_weight(1024) == 39  # docker's default shares map to weight 39
    assert (cgroups.shares_to_weight(2), cgroups.shares_to_weight(262144)) == (1, 10000)
    assert (cgroups.weight_to_shares(1), cgroups.weight_to_shares(10000)) == (2, 262144)
    assert (cgroups.blkio_weight_to_io_weight(10), cgroups.blkio_weight_to_io_weight(1000)) == (1, 10000)
    assert (cgroups.io_weight_to_blkio_weight(1), cgroups.io_weight_to_blkio_weight(10000)) == (10, 1000)
    assert cgroups.quota_for_cpus(1.5) == 150_000
    assert cgroups.quota_for_cpus(0.5, period_us=200_000) == 100_000
    assert Limits(cpu_quota_us=50_000).cpus == 0.5
    assert Limits(memory_max=MiB, pids_max=3, io_throttles=(DeviceThrottle("8:0", read_bps=1),)).resources() \
        == {"memory", "pids", "io"}


@pytest.mark.parametrize("make, named", [
    (lambda: Limits(cpu_quota_us=0), "cpu quota"),
    (lambda: Limits(cpu_quota_us=-100_000), "cpu quota"),
    (lambda: Limits(cpu_quota_us=999), "cpu quota"),
    (lambda: Limits(cpu_quota_us=50_000, cpu_period_us=0), "cpu period"),
    (lambda: Limits(pids_max=0), "pids limit"),
    (lambda: Limits(memory_max=-1), "memory limit"),
    (lambda: Limits(memory_swap_max=MiB), "swap limit needs a memory limit"),
    (lambda: Limits(cpu_shares=1), "cpu shares"),
    (lambda: Limits(io_weight=5), "I/O weight"),
    (lambda: Limits(cpuset_cpus="first"), "cpuset_cpus"),
    (lambda: DeviceThrottle("sda", read_bps=1), "MAJ:MIN"),
    (lambda: DeviceThrottle("8:0", write_iops=-1), "write_iops"),
])
def test_bad_limits_are_refused_naming_the_limit(make, named):
    with pytest.raises(InvalidArgumentError, match=named) as caught:
        make()
    assert isinstance(caught.value, ContainerError)


def test_cpu_percent_counts_one_busy_core_as_100():
    start = Stats(read_at_ns=0, system_cpu_ns=0, online_cpus=2, cpu_usage_ns=0)
    one_second_on_two_cores = 2_000_000_000
    busy_core = Stats(read_at_ns=10**9, system_cpu_ns=one_second_on_two_cores, online_cpus=2,
                      cpu_usage_ns=10**9)
    half_core = Stats(read_at_ns=10**9, system_cpu_ns=one_second_on_two_cores, online_cpus=2,
                      cpu_usage_ns=5 * 10**8)
    assert cpu_percent(start, busy_core) == pytest.approx(100.0)
    assert cpu_percent(start, half_core) == pytest.approx(50.0)
    assert cpu_percent(start, Stats(system_cpu_ns=1, online_cpus=2)) == 0.0, "no CPU reading, no percent"


# --- the limits on the real kernel ----------------------------------------------------------------------
def test_memory_hog_is_oom_killed_and_counted(sandbox):
    # A little swap, so that on v1 the memory limit is reached before memory+swap (see V1Cgroup._limit_hits).
    box = sandbox.create(limits=Limits(memory_max=64 * MiB, memory_swap_max=16 * MiB))
    hog = sandbox.start(box, "chunks = []\nfor _ in range(512):\n    chunks.append(b'x' * (1 << 20))\n")
    assert hog.wait(timeout=30) == -signal.SIGKILL, "the hog outgrew 64 MiB and was not killed"
    stats = box.stats()
    assert stats.oom_kills >= 1 and stats.memory_limit_hits >= 1
    assert stats.memory_usage_bytes <= 64 * MiB


def test_fork_bomb_stops_at_pids_max_and_host_stays_responsive(sandbox):
    box = sandbox.create(limits=Limits(pids_max=20, memory_max=512 * MiB, cpu_quota_us=50_000))
    sandbox.start(box, "import os, time\nwhile True:\n    try:\n        os.fork()\n"
                       "    except OSError:\n        time.sleep(0.05)\n")
    wait_until(lambda: box.stats().pids_current == 20, "the bomb to reach pids.max")
    started = time.monotonic()
    subprocess.run(["true"], check=True)
    assert time.monotonic() - started < 1.0, "the host was slow to start a process during the bomb"
    for _ in range(5):
        assert box.stats().pids_current <= 20
        time.sleep(0.1)
    assert box.stats().pids_limit_hits > 0, "pids.events counts the forks refused"
    box.kill()
    assert box.procs() == []
    box.destroy()
    assert sandbox.leftovers() == [], "the container's cgroups and the emptied subtree are gone"


def test_busy_loop_uses_about_its_cpu_quota(sandbox):
    box = sandbox.create(limits=Limits(cpu_quota_us=50_000, cpu_period_us=100_000))
    sandbox.start(box, BUSY_LOOP)
    before = box.stats()
    time.sleep(2.5)
    after = box.stats()
    assert cpu_percent(before, after) == pytest.approx(50, abs=10), "half a core is 50% ± 10 points"
    assert after.cpu_throttled_periods > before.cpu_throttled_periods
    assert after.cpu_throttled_ns > 0


def test_memory_limit_below_usage_is_refused_and_nothing_changes(sandbox):
    box = sandbox.create(limits=Limits(memory_max=256 * MiB))
    proc = sandbox.start(box, "import time\nheld = b'x' * (48 << 20)\nprint('ready', flush=True)\n"
                              "time.sleep(60)\n", stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    with pytest.raises(CgroupError, match=r"memory limit 16777216 bytes is below the \d+ bytes"):
        box.set_limits(Limits(memory_max=16 * MiB))
    assert proc.poll() is None, "refusing the limit must not kill anything"
    assert box.limits().memory_max == 256 * MiB


def test_limits_are_written_and_read_back(sandbox):
    throttle = DeviceThrottle(root_disk(), read_bps=MiB, write_iops=100)
    wanted = Limits(memory_max=64 * MiB, memory_swap_max=0, cpu_quota_us=25_000, cpu_period_us=50_000,
                    cpu_shares=512, pids_max=42, io_weight=500, io_throttles=(throttle,), cpuset_cpus="0",
                    cpuset_mems="0")
    box = sandbox.create(limits=wanted)
    got = box.limits()
    v2_weight = cgroups.io_weight_to_blkio_weight(cgroups.blkio_weight_to_io_weight(500))
    assert got.io_weight in (500, v2_weight), "500 in BFQ's files, 499 through v2 io.weight's scale"
    shares = 512 if sandbox.backend is V1Cgroup else cgroups.weight_to_shares(cgroups.shares_to_weight(512))
    assert got == Limits(memory_max=64 * MiB, memory_swap_max=0, cpu_quota_us=25_000, cpu_period_us=50_000,
                         cpu_shares=shares, pids_max=42, io_weight=got.io_weight, io_throttles=(throttle,),
                         cpuset_cpus="0", cpuset_mems="0")
    assert box.stats().memory_limit_bytes == 64 * MiB and box.stats().pids_max == 42


@pytest.fixture
def disk_file():
    """A 4 MiB file on the root disk, written through to it (O_DIRECT reads of it reach the disk)."""
    with tempfile.NamedTemporaryFile(dir="/var/tmp", prefix="mc-test-io-") as file:
        assert os.fstat(file.fileno()).st_dev == os.stat("/").st_dev, "/var/tmp must be on the root disk"
        file.write(os.urandom(4 * MiB))
        file.flush()
        os.fsync(file.fileno())
        yield file.name


def test_io_reads_are_counted(sandbox, disk_file):
    box = sandbox.create()
    reader = sandbox.start(box, f"import mmap, os\nfd = os.open({disk_file!r}, os.O_RDONLY | os.O_DIRECT)\n"
                                "buffer = mmap.mmap(-1, 1 << 20)\n"
                                "for block in range(4):\n    os.preadv(fd, [buffer], block << 20)\n")
    assert reader.wait(timeout=30) == 0
    assert box.stats().io_read_bytes >= 4 * MiB, "4 MiB of direct reads (past the page cache) from the disk"


def test_zombie_leaves_cgroup_procs_but_still_counts_in_pids_current(sandbox):
    box = sandbox.create(limits=Limits(pids_max=10))
    child = sandbox.start(box, "import os\nos._exit(0)\n")
    wait_until(lambda: box.procs() == [], "the child to exit")
    assert Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    assert box.stats().pids_current == 1, "a zombie is charged to pids until its parent reaps it"
    box.destroy()  # not populated: rmdir works although the zombie is not reaped yet
    assert not box.exists()
    assert child.wait(timeout=5) == 0


def test_cpuset_the_host_lacks_is_refused_and_nothing_is_left(sandbox):
    with pytest.raises(CgroupError, match="cpuset.cpus"):
        sandbox.create(limits=Limits(cpuset_cpus="4095"))
    assert sandbox.leftovers() == []


def test_observe_reads_path_limits_and_usage(sandbox):
    box = sandbox.create(limits=Limits(memory_max=128 * MiB, pids_max=16))
    sleeper = sandbox.start(box, SLEEPER)
    wait_until(lambda: box.stats().pids_current == 1, "the sleeper to run")
    seen = cgroups.observe(sleeper.pid)
    assert seen["version"] == sandbox.backend.version
    assert seen["cgroups"] and all(path.endswith(f"/{sandbox.parent.lstrip('/')}/mini-container/box")
                                   for path in seen["cgroups"].values())
    assert seen["limits"]["memory_max"] == 128 * MiB and seen["limits"]["pids_max"] == 16
    assert seen["usage"]["pids_current"] == 1 and seen["usage"]["memory_usage_bytes"] > 0
    has_v2_tree = sandbox.layout.v2 is not None
    assert set(seen["usage"]["pressure"]) == ({"cpu", "memory", "io"} if has_v2_tree else set())


def test_create_lookup_names_and_destroy_through_the_engine(sandbox):
    made = cgroups.create("web", Limits(pids_max=8), parent=sandbox.parent, layout=sandbox.layout)
    assert type(made) is sandbox.backend
    assert cgroups.names(parent=sandbox.parent, layout=sandbox.layout) == ["web"]
    found = cgroups.lookup("web", parent=sandbox.parent, layout=sandbox.layout)
    assert found.directories() == made.directories() and found.limits().pids_max == 8
    with pytest.raises(CgroupError, match="already exists"):
        cgroups.create("web", parent=sandbox.parent, layout=sandbox.layout)
    found.destroy()
    assert cgroups.names(parent=sandbox.parent, layout=sandbox.layout) == []
    with pytest.raises(CgroupError, match="no cgroup for container 'web'"):
        cgroups.lookup("web", parent=sandbox.parent, layout=sandbox.layout)


# --- what works without controllers: freezing, killing, destroying ---------------------------------------
def test_freeze_stops_progress_and_thaw_resumes_it(core_sandbox):
    box = core_sandbox.create()
    sandbox_proc = core_sandbox.start(box, BUSY_LOOP)
    wait_until(lambda: box.stats().cpu_usage_ns > 100_000_000, "the loop to use 0.1 s of CPU")
    box.freeze()
    assert box.frozen()
    frozen_at = box.stats().cpu_usage_ns
    time.sleep(0.5)
    assert box.stats().cpu_usage_ns - frozen_at < 5_000_000, "a frozen loop used CPU"
    assert sandbox_proc.poll() is None, "freezing is not killing"
    box.thaw()
    assert not box.frozen()
    time.sleep(0.5)
    assert box.stats().cpu_usage_ns - frozen_at > 50_000_000, "the thawed loop did not run again"


def test_kill_all_and_destroy_leave_no_directory(core_sandbox):
    box = core_sandbox.create()
    tree = core_sandbox.start(box, "import os, time\nfor _ in range(3):\n    if os.fork() == 0:\n"
                                   "        os.fork()\n        time.sleep(60)\n        os._exit(0)\n"
                                   "time.sleep(60)\n")
    wait_until(lambda: len(box.procs()) == 7, "a parent, 3 children and 3 grandchildren")
    box.kill()
    assert box.procs() == []
    assert tree.wait(timeout=5) == -signal.SIGKILL
    box.destroy()
    assert not box.exists()
    assert core_sandbox.leftovers() == [], "the container's cgroups and the emptied subtree are gone"


def test_destroy_refuses_while_processes_remain_and_moves_nothing(core_sandbox):
    box = core_sandbox.create()
    sleeper = core_sandbox.start(box, SLEEPER)
    with pytest.raises(CgroupError, match=rf"still holds processes \[{sleeper.pid}\]"):
        box.destroy()
    assert box.exists() and box.procs() == [sleeper.pid] and sleeper.poll() is None


def test_v2_core_files_work_without_controllers(v2_sandbox):
    box = v2_sandbox.create()
    v2_sandbox.start(box, BUSY_LOOP)
    wait_until(lambda: box.stats().cpu_usage_ns > 50_000_000, "cpu.stat to count the loop")
    stats = box.stats()
    assert set(stats.pressure) == {"cpu", "memory", "io"}, "PSI files exist in every v2 cgroup"
    assert stats.cpu_user_ns > 0
    assert (box.dir / "cgroup.events").read_text().split()[:2] == ["populated", "1"]
    box.kill()  # one write to cgroup.kill
    assert (box.dir / "cgroup.events").read_text().split()[:2] == ["populated", "0"]
    box.destroy()
    assert not box.dir.exists()


@pytest.mark.cgroup_v1
def test_v1_controller_the_host_does_not_mount_is_named_and_nothing_is_left(layout):
    without_pids = Layout(layout.mode, {k: h for k, h in layout.v1.items() if k != "pids"}, layout.v2)
    with Sandbox(layout, V1Cgroup) as box:
        with pytest.raises(CgroupError, match="controller.*pids, which this host does not mount"):
            V1Cgroup.create("box", Limits(pids_max=10), without_pids, box.parent)
        assert box.leftovers() == []


def test_v2_controller_the_parent_is_not_offered_is_named_and_nothing_is_left(v2_sandbox):
    bare = v2_sandbox.dirs[0] / "bare"  # its parent, the test's cgroup, hands it no controller
    bare.mkdir()
    with pytest.raises(CgroupError, match=r"controller\(s\) memory, pids, which the parent cgroup \S*/bare"):
        V2Cgroup.create("box", Limits(memory_max=64 * MiB, pids_max=10), v2_sandbox.layout,
                        posixpath.join(v2_sandbox.parent, "bare"))
    assert [entry.name for entry in bare.iterdir() if entry.is_dir()] == []


@pytest.mark.cgroup_v2_controllers
def test_v2_no_internal_processes_rule_is_explained(v2_controllers_sandbox):
    box = v2_controllers_sandbox
    busy = box.dirs[0] / "busy"
    enable_controllers(box.dirs[0], ["memory"])
    busy.mkdir()
    box.start(V2Cgroup("busy", {"unified": busy}), SLEEPER)
    with pytest.raises(CgroupError, match=f"holds processes.*{ENV_PARENT}"):
        V2Cgroup.create("box", Limits(memory_max=64 * MiB), box.layout, posixpath.join(box.parent, "busy"))
    assert not (busy / "mini-container").exists()
