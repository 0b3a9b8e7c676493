"""minictl gc: what a crash leaves (a cgroup, a record that says running, half-made directories) goes."""

from __future__ import annotations

import json
import os
import signal
import time

from helpers import minictl

from mini_container import cgroups
from mini_container.runtime.containers import process_alive


def wait_until(condition, timeout=10):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.05)


def record_of(root, name):
    for path in (root / "containers").glob("*/container.json"):
        record = json.loads(path.read_text())
        if record["name"] == name:
            return record
    raise AssertionError(f"no record for {name}")


def test_gc_after_the_monitor_is_killed(engine_root, tmp_path):
    runtime_root = tmp_path / "runtime"
    bystander = minictl(engine_root, "run", "-d", "--name", "bystander", "busybox", "sleep", "100")
    crashed = minictl(engine_root, "run", "-d", "--name", "crashed", "--network", "none", "busybox",
                      "sleep", "100")
    assert bystander.returncode == 0 and crashed.returncode == 0, crashed.stderr
    try:
        record = record_of(engine_root, "crashed")
        os.kill(record["monitor"], signal.SIGKILL)  # the crash: pid 1 dies with its monitor
        wait_until(lambda: not process_alive(record["pid"]))
        assert record["id"] in cgroups.names()  # nobody removed it
        half_made = engine_root / "containers" / ("f" * 64)
        half_made.mkdir()
        stuck = runtime_root / "stuck"
        stuck.mkdir(parents=True)
        (stuck / "state.json").write_text(json.dumps({"id": "stuck", "status": "creating", "pid": 0}))

        result = minictl(engine_root, "gc", "--runtime-root", str(runtime_root))
        assert result.returncode == 0, result.stderr
        assert f"removed cgroup {record['id']}" in result.stdout
        assert "removed stale state of container crashed (now exited)" in result.stdout
        assert f"removed half-made container directory {'f' * 64}" in result.stdout
        assert "removed half-created OCI container stuck" in result.stdout
        assert record["id"] not in cgroups.names() and not half_made.exists() and not stuck.exists()
        listing = minictl(engine_root, "ps", "-a").stdout
        assert "Exited (?)" in listing and "bystander" in minictl(engine_root, "ps").stdout

        again = minictl(engine_root, "gc", "--runtime-root", str(runtime_root))
        assert again.stdout == "nothing to remove\n"
    finally:
        for name in ("crashed", "bystander"):
            minictl(engine_root, "rm", "-f", name)
