"""OCI hooks at their points of the build, on the real kernel: which namespaces each kind runs in,
what state it reads, and that a failing one stops the build and leaves nothing behind.

(The hooks' own mechanics, argv, env, timeouts and errors, are tested in test_oci.py.)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from mini_container.errors import ContainerError
from mini_container.image.store import ImageStore
from mini_container.runtime import oci
from mini_container.runtime.containers import ContainerStore
from mini_container.runtime.hooks import Hook
from mini_container.runtime.lifecycle import Lifecycle
from mini_container.runtime.spec import Mount
from mini_container.stepper import Stepper

# A hook that records, in directory $2, its kind ($1): its order, its state (stdin), its namespaces,
# and whether it sees the host's root. busybox's sh runs it inside the container, dash on the host.
HOOK = """#!/bin/sh
echo "$1" >> "$2/order"
cat > "$2/$1.state"
{ readlink /proc/self/ns/mnt; readlink /proc/self/ns/pid; } > "$2/$1.ns"
"""


@pytest.fixture
def container(engine_root, tmp_path):
    """A busybox container spec whose hooks record into a directory bind-mounted at /hooks."""
    record = tmp_path / "record"
    record.mkdir()
    (record / "hook.sh").write_text(HOOK)
    (record / "hook.sh").chmod(0o755)
    store = ContainerStore(engine_root)
    command = "echo command >> /hooks/order; readlink /proc/self/ns/mnt > /hooks/command.ns"
    spec = store.create(ImageStore(engine_root).get("busybox"), ["sh", "-c", command])
    spec.mounts.append(Mount("/hooks", "bind", str(record), ["rbind"]))
    spec.hook_state = {"ociVersion": "1.2.0", "id": spec.id, "bundle": str(tmp_path),
                       "annotations": {"a": "b"}}
    yield spec, record
    store.remove(spec.id, force=True)
    assert not spec.directory.exists()


def on_host(kind: str, record: Path) -> list[Hook]:
    return [Hook(str(record / "hook.sh"), ("hook.sh", kind, str(record)))]


def test_each_kind_runs_at_its_point_in_its_namespaces(container):
    spec, record = container
    spec.hooks = {kind: on_host(kind, record) for kind in ("prestart", "createRuntime", "createContainer")}
    spec.hooks["startContainer"] = [Hook("/hooks/hook.sh", ("hook.sh", "startContainer", "/hooks"))]
    with Stepper(spec, observe=False) as build:
        build.start()
        steps = [step.name for step in build.plan]
        build.run_all()
        pid = build.pid
        assert build.wait() == 0
    assert steps.index("mounts") < steps.index("runtime_hooks") < steps.index("container_hooks") \
        < steps.index("pivot_root")
    assert (record / "order").read_text().split() == [
        "prestart", "createRuntime", "createContainer", "startContainer", "command"]

    host_mnt, host_pid = os.readlink("/proc/self/ns/mnt"), os.readlink("/proc/self/ns/pid")
    container_mnt = (record / "command.ns").read_text().strip()
    assert container_mnt != host_mnt
    namespaces = {kind: (record / f"{kind}.ns").read_text().split()
                  for kind in ("prestart", "createRuntime", "createContainer", "startContainer")}
    assert namespaces["prestart"] == namespaces["createRuntime"] == [host_mnt, host_pid]
    assert namespaces["createContainer"][0] == namespaces["startContainer"][0] == container_mnt
    assert namespaces["createContainer"][1] != host_pid

    states = {kind: json.loads((record / f"{kind}.state").read_text()) for kind in namespaces}
    assert states["createRuntime"] == dict(spec.hook_state, status="creating", pid=pid)
    assert (states["prestart"]["pid"], states["createContainer"]["pid"], states["startContainer"]["pid"]) \
        == (pid, 1, 1)  # the pid as each hook's namespace sees pid 1
    assert [states[kind]["status"] for kind in ("createContainer", "startContainer")] == [
        "creating", "created"]


def test_a_failing_create_runtime_hook_stops_the_build_and_leaves_nothing(container, tmp_path):
    spec, record = container
    spec.hooks = {"createRuntime": [Hook("/bin/sh", ("sh", "-c", "echo no network; exit 3"))],
                  "createContainer": on_host("createContainer", record)}
    with pytest.raises(ContainerError, match=r"^error running createRuntime "
                                             r"hook #0: /bin/sh: exited with status 3; stdout: no network"):
        with Stepper(spec, observe=False) as build:
            build.start()
            while build.next_step.name != "runtime_hooks":
                build.step()
            directories = build.cgroup.directories()
            build.step()
    assert not (record / "order").exists()  # createContainer did not run, nor the command
    assert directories and not any(directory.exists() for directory in directories)


def test_a_failing_start_container_hook_keeps_the_command_from_running(container):
    spec, record = container
    spec.hooks = {"startContainer": [Hook("/bin/false")]}  # busybox's, in the container's root
    with pytest.raises(ContainerError, match="startContainer hook #0: /bin/false: exited with status 1"):
        with Stepper(spec, observe=False) as build:
            build.start()
            build.run_all()
    assert not (record / "order").exists()


# --- through the OCI lifecycle: config.json's hooks, all six kinds -----------------------------------

def test_config_hooks_run_at_create_start_and_delete(tmp_path):
    """Each kind logs "KIND STATUS" (its state's status) to a file the host and the container share."""
    record = tmp_path / "record"
    record.mkdir()
    (record / "hook.sh").write_text('#!/bin/sh\necho "$1 $(sed -n \'s/.*"status": "\\([a-z]*\\)".*/\\1/p\')" '
                                    '>> "$2/log"\n')
    (record / "hook.sh").chmod(0o755)
    bundle = tmp_path / "bundle"
    (bundle / "rootfs/bin").mkdir(parents=True)
    for name in ("proc", "sys", "dev", "tmp", "etc", "hooks"):
        (bundle / "rootfs" / name).mkdir()
    shutil.copy("/bin/busybox", bundle / "rootfs/bin/busybox")
    for applet in ("sh", "sed", "sleep"):
        (bundle / "rootfs/bin" / applet).symlink_to("busybox")
    config = oci.default_config(terminal=False)
    config["process"]["args"] = ["sleep", "30"]
    config["mounts"].append({"destination": "/hooks", "type": "bind", "source": str(record),
                             "options": ["rbind"]})
    config["hooks"] = {kind: [{"path": str(record / "hook.sh"), "args": ["hook.sh", kind, str(record)]}]
                       for kind in ("prestart", "createRuntime", "createContainer", "poststart", "poststop")}
    config["hooks"]["startContainer"] = [{"path": "/hooks/hook.sh",
                                          "args": ["hook.sh", "startContainer", "/hooks"]}]
    runtime = Lifecycle(tmp_path / "state")
    spec = oci.spec_from_config(config, bundle, "hooked", runtime.root / "hooked")
    log = record / "log"
    try:
        runtime.create(spec, bundle)
        assert log.read_text().splitlines() == [
            "prestart creating", "createRuntime creating", "createContainer creating"]
        runtime.start("hooked")
        deadline = time.monotonic() + 10
        while len(log.read_text().splitlines()) < 5:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        # the init runs startContainer once start opened its gate, while start runs poststart
        assert sorted(log.read_text().splitlines()[3:]) == ["poststart running", "startContainer created"]
    finally:
        runtime.delete("hooked", force=True)
    assert log.read_text().splitlines()[5:] == ["poststop stopped"]
    assert not (runtime.root / "hooked").exists()
