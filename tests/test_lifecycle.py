"""The OCI lifecycle on the real kernel: created waits at the gate, start execs, state follows pid 1."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest

from mini_container.errors import ContainerError, ContainerNotFoundError, ExecutableNotFoundError
from mini_container.image.store import ImageStore
from mini_container.runtime.lifecycle import Lifecycle
from mini_container.runtime.spec import spec_from_image


@pytest.fixture
def lifecycle():
    """A private runtime root; every container left in it is deleted (forced) afterwards."""
    root = Path(tempfile.mkdtemp(prefix="mini-runtime-"))
    runtime = Lifecycle(root / "state")
    yield runtime
    left = [state["id"] for state in runtime.list()]
    for container_id in left:
        runtime.delete(container_id, force=True)
    shutil.rmtree(root)
    assert left == [], f"containers left behind: {left}"


def make_spec(engine_root, container_id, command):
    image = ImageStore(engine_root).get("busybox")
    return spec_from_image(image, id=container_id, name=container_id, directory=Path("/nonexistent"),
                           command=command)


def wait_for_status(runtime, container_id, status, timeout=10):
    deadline = time.monotonic() + timeout
    while runtime.state(container_id)["status"] != status:
        assert time.monotonic() < deadline, runtime.state(container_id)
        time.sleep(0.05)


def test_create_waits_until_start(engine_root, lifecycle, tmp_path):
    marker = tmp_path / "ran"
    spec = make_spec(engine_root, "gate", ["sh", "-c", "sleep 30"])
    state = lifecycle.create(spec, bundle=tmp_path, pid_file=tmp_path / "pid")
    assert state["status"] == "created" and state["ociVersion"].startswith("1.")
    pid = state["pid"]
    assert (tmp_path / "pid").read_text() == str(pid)
    time.sleep(0.3)
    assert not marker.exists()
    assert "python" in os.readlink(f"/proc/{pid}/exe")  # still the engine's code, fully built
    assert os.readlink(f"/proc/{pid}/ns/uts") != os.readlink("/proc/self/ns/uts")

    assert lifecycle.start("gate")["status"] == "running"
    deadline = time.monotonic() + 10
    while "busybox" not in os.readlink(f"/proc/{pid}/exe"):
        assert time.monotonic() < deadline
    with pytest.raises(ContainerError, match="cannot start a container that is running"):
        lifecycle.start("gate")
    with pytest.raises(ContainerError, match="not stopped"):
        lifecycle.delete("gate")
    lifecycle.delete("gate", force=True)
    with pytest.raises(ContainerNotFoundError):
        lifecycle.state("gate")


def test_kill_then_stopped_then_delete(engine_root, lifecycle, tmp_path):
    lifecycle.create(make_spec(engine_root, "victim", ["sleep", "30"]), bundle=tmp_path)
    lifecycle.start("victim")
    lifecycle.kill("victim", signal.SIGKILL)
    wait_for_status(lifecycle, "victim", "stopped")
    with pytest.raises(ContainerError, match="stopped"):
        lifecycle.kill("victim", signal.SIGTERM)
    state = lifecycle.delete("victim")
    assert state["status"] == "stopped"
    assert not (lifecycle.root / "victim").exists()


def test_pause_resume_and_pids(engine_root, lifecycle, tmp_path):
    lifecycle.create(make_spec(engine_root, "frozen", ["sh", "-c", "sleep 30 & wait"]), bundle=tmp_path)
    lifecycle.start("frozen")
    deadline = time.monotonic() + 10
    while len(lifecycle.pids("frozen")) < 2:
        assert time.monotonic() < deadline
    lifecycle.pause("frozen")
    assert lifecycle.state("frozen")["status"] == "paused"
    lifecycle.resume("frozen")
    assert lifecycle.state("frozen")["status"] == "running"
    lifecycle.kill("frozen", signal.SIGKILL, all_processes=True)
    wait_for_status(lifecycle, "frozen", "stopped")
    lifecycle.delete("frozen")


def test_delete_a_created_container(engine_root, lifecycle, tmp_path):
    state = lifecycle.create(make_spec(engine_root, "unborn", ["true"]), bundle=tmp_path)
    lifecycle.delete("unborn")
    assert not os.path.exists(f"/proc/{state['pid']}/exe")


def test_create_refuses_a_taken_id_and_a_missing_executable(engine_root, lifecycle, tmp_path):
    lifecycle.create(make_spec(engine_root, "taken", ["true"]), bundle=tmp_path)
    with pytest.raises(ContainerError, match="already exists"):
        lifecycle.create(make_spec(engine_root, "taken", ["true"]), bundle=tmp_path)
    lifecycle.delete("taken")
    with pytest.raises(ExecutableNotFoundError, match="'no-such-program' not found"):
        lifecycle.create(make_spec(engine_root, "broken", ["no-such-program"]), bundle=tmp_path)
    assert not (lifecycle.root / "broken").exists()
