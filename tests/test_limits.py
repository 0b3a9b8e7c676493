"""minictl run with docker's resource flags, detached containers, stop/kill/logs/ps, and stats."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from helpers import minictl

from mini_container import cgroups

V2 = cgroups.detect().mode == "v2"
# The limit files as the container sees them at /sys/fs/cgroup, on this host's cgroup version.
FILES = {
    "memory": "memory.max" if V2 else "memory/memory.limit_in_bytes",
    "pids": "pids.max" if V2 else "pids/pids.max",
    "quota": "cpu.max" if V2 else "cpu/cpu.cfs_quota_us",
    "cpuset": "cpuset.cpus" if V2 else "cpuset/cpuset.cpus",
}


@pytest.fixture
def no_leftovers(engine_root):
    """Every container these tests start is gone afterwards, and so is its cgroup (named by its id)."""
    before = set(cgroups.names())
    yield
    for record in (engine_root / "containers").glob("*/container.json"):
        container = json.loads(record.read_text())
        minictl(engine_root, "rm", "-f", container["id"])
        pytest.fail(f"container {container['name']} was left behind")
    left = [name for name in set(cgroups.names()) - before if re.fullmatch(r"[0-9a-f]{64}", name)]
    assert left == [], "cgroups left behind in the engine's subtree"


def inside(root, *flags_and_command):
    return minictl(root, "run", "--rm", *flags_and_command)


def test_limits_are_in_the_containers_own_cgroup(engine_root, no_leftovers):
    script = "; ".join(f"cat /sys/fs/cgroup/{FILES[k]}" for k in ("memory", "pids", "quota", "cpuset"))
    result = inside(engine_root, "--memory", "64m", "--pids-limit", "50", "--cpus", "0.5", "--cpuset-cpus",
                    "0", "busybox", "sh", "-c", script)
    memory, pids, quota, cpuset = result.stdout.splitlines()
    assert int(memory) == 64 << 20 and pids == "50" and cpuset == "0"
    assert quota.split()[0] == "50000"


def test_the_cgroup_namespace_shows_its_own_root_read_only(engine_root, no_leftovers):
    result = inside(engine_root, "busybox", "sh", "-c", "cat /proc/self/cgroup; touch /sys/fs/cgroup/x")
    paths = [line.split(":", 2)[2] for line in result.stdout.splitlines()]
    assert paths and set(paths) == {"/"}
    assert "Read-only file system" in result.stderr


def test_a_memory_hog_is_oom_killed(engine_root, no_leftovers):
    hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived"
    result = inside(engine_root, "--memory", "32m", "--memory-swap", "32m", "busybox", "sh", "-c", hog)
    assert result.returncode == 137 and "survived" not in result.stdout


def test_pids_limit_stops_forks(engine_root, no_leftovers):
    script = "for i in $(seq 20); do sleep 2 & done 2>&1; wait"
    result = inside(engine_root, "--pids-limit", "8", "busybox", "sh", "-c", script)
    assert "can't fork" in result.stdout + result.stderr


def test_detached_logs_stats_stop_and_rm(engine_root, no_leftovers):
    started = minictl(engine_root, "run", "-d", "--name", "worker", "--memory", "64m", "busybox", "sh", "-c",
                      "echo hello from worker; while true; do :; done")
    assert started.returncode == 0, started.stderr
    container_id = started.stdout.strip()
    assert len(container_id) == 64
    ps = minictl(engine_root, "ps").stdout
    assert "worker" in ps and "Up " in ps

    deadline = time.monotonic() + 10
    while "hello from worker" not in minictl(engine_root, "logs", "worker").stdout:
        assert time.monotonic() < deadline

    line = json.loads(minictl(engine_root, "stats", "--no-stream", "--format", "json", "worker").stdout)
    assert set(line) == {"ID", "Name", "CPUPerc", "MemUsage", "MemPerc", "NetIO", "BlockIO", "PIDs"}
    assert line["Name"] == "worker" and line["MemUsage"].endswith("/ 64MiB")
    assert float(line["CPUPerc"].rstrip("%")) > 20  # a busy loop: most of a core
    assert line["PIDs"] == "1"

    begun = time.monotonic()
    assert minictl(engine_root, "stop", "-t", "1", "worker").returncode == 0
    assert time.monotonic() - begun < 8  # sh as pid 1 ignores SIGTERM: SIGKILL after 1 s
    assert "Exited (137)" in minictl(engine_root, "ps", "-a").stdout
    assert minictl(engine_root, "logs", "worker").stdout == "hello from worker\n"
    assert minictl(engine_root, "rm", "worker").returncode == 0


def test_kill_sends_the_named_signal(engine_root, no_leftovers):
    trap = "trap 'echo got TERM; exit 3' TERM; echo ready; while true; do sleep 0.1; done"
    started = minictl(engine_root, "run", "-d", "--name", "trapper", "busybox", "sh", "-c", trap)
    assert started.returncode == 0, started.stderr
    deadline = time.monotonic() + 10
    while "ready" not in minictl(engine_root, "logs", "trapper").stdout:
        assert time.monotonic() < deadline
    assert minictl(engine_root, "kill", "-s", "TERM", "trapper").returncode == 0
    assert minictl(engine_root, "logs", "-f", "trapper").stdout == "ready\ngot TERM\n"
    assert "Exited (3)" in minictl(engine_root, "ps", "-a").stdout
    assert minictl(engine_root, "rm", "trapper").returncode == 0


def test_detached_with_rm_removes_itself(engine_root, no_leftovers):
    started = minictl(engine_root, "run", "-d", "--rm", "busybox", "true")
    assert started.returncode == 0
    deadline = time.monotonic() + 10
    while started.stdout.strip()[:12] in minictl(engine_root, "ps", "-a", "-q").stdout:
        assert time.monotonic() < deadline


@pytest.mark.parametrize("flags, named", [
    (["--memory", "5x"], "--memory '5x'"),
    (["--memory-swap", "10m"], "--memory-swap needs --memory"),
    (["--memory", "64m", "--memory-swap", "32m"], "--memory-swap '32m'"),
    (["--cpus", "0"], "--cpus '0'"),
    (["--cpus", "-1"], "--cpus '-1'"),
    (["--cpus", "lots"], "--cpus 'lots'"),
    (["--cpu-quota", "-5"], "--cpu-quota -5"),
    (["--pids-limit", "0"], "pids limit"),
    (["--cpuset-cpus", "99"], "cpuset.cpus"),
    (["--device-read-bps", "/nonexistent:1m"], "--device-read-bps '/nonexistent:1m'"),
])
def test_bad_limits_are_one_line_and_leave_nothing(engine_root, no_leftovers, flags, named):
    result = minictl(engine_root, "run", "--rm", *flags, "busybox", "true")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and named in result.stderr, result.stderr
    assert os.listdir(engine_root / "containers") == [".lock"]
