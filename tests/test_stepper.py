"""The step-through: each step's diff names the change that step made, on the real kernel."""

from __future__ import annotations

import os
import tempfile

import pytest

from mini_container.errors import ContainerError, ExecutableNotFoundError
from mini_container.image.store import ImageStore
from mini_container.runtime.containers import ContainerStore
from mini_container.runtime.spec import Mount
from mini_container.stepper import Stepper


@pytest.fixture
def make_spec(engine_root):
    """Create container specs in the session's engine root; remove every one afterwards."""
    containers, made = ContainerStore(engine_root), []

    def make(command, **options):
        spec = containers.create(ImageStore(engine_root).get("busybox"), command, **options)
        made.append(spec)
        return spec

    yield make
    for spec in made:
        containers.remove(spec.id, force=True)
    assert not any(spec.directory.exists() for spec in made)


def _texts(result) -> str:
    return "\n".join(change["text"] for change in result.diff)


def test_each_step_names_its_change(make_spec):
    output = tempfile.TemporaryFile()
    spec = make_spec(["sh", "-c", "echo built by $HOSTNAME; sleep 0.5"], hostname="box")
    spec.stdout = output.fileno()
    seen = {}
    with Stepper(spec) as build:
        build.start()
        first_pid = build.pid
        while not build.done:
            result = build.step()
            seen[result.name] = result
        code = build.wait()
    output.seek(0)
    assert (code, output.read()) == (0, b"built by box\n")
    assert [s.name for s in build.plan] == list(seen)

    for kind in ("uts", "ipc", "net", "mnt"):
        changes = [c for c in seen[kind].diff if c["section"] == "namespaces"]
        assert [c["what"] for c in changes] == [kind], f"step {kind}: {changes}"
    assert "hostname changed: " in _texts(seen["hostname"]) and "-> box" in _texts(seen["hostname"])
    assert [link["name"] for link in seen["net"].snapshot["network"]] == ["lo"]
    assert seen["pid"].pid != first_pid and "process 1 (" in _texts(seen["pid"])
    assert "mounted overlay on " in _texts(seen["rootfs"])
    cgroup = seen["cgroup"].details  # the cgroup step's details: where, which limits, what usage
    assert all(path.endswith(f"mini-container/{spec.id}") for path in cgroup["directories"].values())
    assert cgroup["usage"]["pids_current"] == 1 and "memory_max" in cgroup["limits"]
    assert any(f"mini-container/{spec.id}" in change["text"] for change in seen["cgroup"].diff)
    assert "mounted proc on " in _texts(seen["proc"])
    assert "mounted sysfs on " in _texts(seen["sys"])
    assert "mounted devpts on " in _texts(seen["dev"])
    assert "mounted overlay on /\n" in _texts(seen["pivot_root"]) + "\n"
    assert "unmounted / (" in _texts(seen["pivot_root"])
    # execve closes the channel (close-on-exec) after it switched the executable, before it renames
    # the process: the executable is certain to have changed when the step returns, the name is not.
    assert "-> /bin/busybox" in _texts(seen["exec"])


def test_the_process_waits_between_steps(make_spec):
    """Between two steps the child is blocked: its state stays exactly as the last step left it."""
    spec = make_spec(["true"], hostname="paused")
    with Stepper(spec) as build:
        build.start()
        build.step()  # uts
        build.step()  # hostname
        pid = build.pid
        assert os.readlink(f"/proc/{pid}/ns/uts") != os.readlink("/proc/self/ns/uts")
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        with open(f"/proc/{pid}/stat") as f:
            assert f.read().rsplit(")", 1)[1].split()[0] == "S"  # sleeping in recv(2)


def test_missing_executable_fails_the_exec_step(make_spec):
    spec = make_spec(["no-such-program"])
    with Stepper(spec, observe=False) as build:
        build.start()
        with pytest.raises(ExecutableNotFoundError, match="'no-such-program' not found"):
            build.run_all()
        assert build.wait() == 127


def test_without_observing_a_failed_step_stops_the_batch_and_names_itself(make_spec, tmp_path):
    """run_all sends the child steps between two parent steps at once: the first failure is the one
    reported, and the child does no step after it."""
    spec = make_spec(["true"])
    spec.mounts.append(Mount("/data", "bind", str(tmp_path / "missing"), ["rbind"]))
    with Stepper(spec, observe=False) as build:
        with pytest.raises(ContainerError, match=r"step 'mounts' failed: .*missing"):
            build.run_all()
        assert build.plan[build.position - 1].name == "exec"  # every step was asked for
        root = build.pid
        assert os.waitpid(build.waitable, 0)[1] != 0  # the child exited after the failure
        build.waitable = None
    assert root and not os.path.exists(f"/proc/{root}")


def test_close_in_the_middle_kills_and_reaps_everything(make_spec):
    spec = make_spec(["true"])
    build = Stepper(spec, observe=False)
    build.start()
    first = build.pid
    while build.next_step.name != "proc":
        build.step()
    pids = (first, build.pid)
    assert pids[0] != pids[1]  # the child that forked (and exited), and pid 1 of the new namespace
    assert os.path.exists(f"/proc/{build.pid}/status")
    with open(f"/proc/{build.pid}/status") as f:  # reparented to us, the subreaper
        assert f"PPid:\t{os.getpid()}\n" in f.read()
    build.close()
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}")
