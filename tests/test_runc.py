"""mini-runc against runc: the same bundle gives the same container; runc's commands, outputs, errors."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO

from mini_container.runtime import oci

RUNC = shutil.which("runc")
APPLETS = ["sh", "cat", "hostname", "ls", "sleep", "grep", "readlink", "id"]


@pytest.fixture
def bundle():
    """A bundle: a busybox root filesystem and runc's default config.json with terminal: false."""
    if RUNC is None:
        pytest.fail("runc is not installed: apt-get install runc (the comparison needs it)")
    path = Path(tempfile.mkdtemp(prefix="bundle-"))
    (path / "rootfs/bin").mkdir(parents=True)
    for name in ("proc", "sys", "dev", "tmp", "etc"):
        (path / "rootfs" / name).mkdir()
    shutil.copy("/bin/busybox", path / "rootfs/bin/busybox")
    for applet in APPLETS:
        (path / "rootfs/bin" / applet).symlink_to("busybox")
    config = oci.default_config(terminal=False)
    (path / "config.json").write_text(json.dumps(config))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def state_root():
    """mini-runc's --root for one test; whatever is left in it is deleted with --force."""
    root = Path(tempfile.mkdtemp(prefix="mini-runc-"))
    yield root
    left = [entry.name for entry in root.iterdir()]
    for container_id in left:
        mini_runc(root, "delete", "--force", container_id)
    shutil.rmtree(root)
    assert left == [], f"containers left behind: {left}"


def mini_runc(root: Path, *args: str, cwd: Path | None = None, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "mini_container.cli.runc", "--root", str(root), *args],
                          capture_output=True, text=True, timeout=60, cwd=cwd, env=env, **kwargs)


def set_args(bundle: Path, *args: str) -> None:
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = list(args)
    (bundle / "config.json").write_text(json.dumps(config))


PROBE = ("hostname; for k in pid net mnt uts ipc user cgroup; do readlink /proc/self/ns/$k; done; "
         "grep ^Cap /proc/self/status; cat /proc/self/mountinfo; exit 7")


def observed(result: subprocess.CompletedProcess) -> dict:
    """What a container showed of itself: hostname, isolated namespaces, capabilities, mounts."""
    lines = result.stdout.splitlines()
    kinds = ["pid", "net", "mnt", "uts", "ipc", "user", "cgroup"]
    isolated = {kind for kind, link in zip(kinds, lines[1:8], strict=True)
                if link != os.readlink(f"/proc/self/ns/{kind}")}
    mounts = set()
    for line in lines[13:]:
        fields = line.split()
        point, fstype = fields[4], fields[fields.index("-") + 1]
        # runc also mounts the named v1 hierarchy name=systemd; the engine mounts the v2 tree instead
        if point not in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified"):
            mounts.add((point, fstype))
    return {"exit": result.returncode, "hostname": lines[0], "isolated": isolated,
            "capabilities": lines[8:13], "mounts": mounts}


def test_the_same_bundle_under_runc_and_mini_runc(bundle, state_root):
    set_args(bundle, "sh", "-c", PROBE)
    ours = mini_runc(state_root, "run", "probe", cwd=bundle)
    theirs = subprocess.run([RUNC, "--root", str(state_root / ".runc"), "run", "probe"], cwd=bundle,
                            capture_output=True, text=True, timeout=60)
    shutil.rmtree(state_root / ".runc", ignore_errors=True)
    assert theirs.returncode == 7, theirs.stderr
    mine, runc = observed(ours), observed(theirs)
    assert mine == runc
    assert mine["hostname"] == "runc" and mine["isolated"] == {"pid", "net", "mnt", "uts", "ipc"}


def test_create_start_state_kill_delete(bundle, state_root, tmp_path):
    set_args(bundle, "sh", "-c", "echo hello from c1; sleep 30")
    output = tmp_path / "output"
    with open(output, "w") as stdio:  # the container keeps create's stdio: give it a file, not a pipe
        command = ["--root", str(state_root), "create", "--bundle", str(bundle), "--pid-file",
                   str(tmp_path / "pid"), "c1"]
        created = subprocess.run([sys.executable, "-m", "mini_container.cli.runc", *command],
                                 stdin=subprocess.DEVNULL, stdout=stdio, stderr=stdio, timeout=60,
                                 env={**os.environ, "PYTHONPATH": str(REPO)})
    assert created.returncode == 0, output.read_text()
    state = json.loads(mini_runc(state_root, "state", "c1").stdout)
    assert state["status"] == "created" and state["id"] == "c1" and state["bundle"] == str(bundle)
    assert set(state) >= {"ociVersion", "id", "pid", "status", "bundle", "rootfs", "created", "owner"}
    assert (tmp_path / "pid").read_text() == str(state["pid"])

    assert mini_runc(state_root, "start", "c1").returncode == 0
    assert json.loads(mini_runc(state_root, "state", "c1").stdout)["status"] == "running"
    deadline = time.monotonic() + 10
    while output.read_text() != "hello from c1\n":
        assert time.monotonic() < deadline
    again = mini_runc(state_root, "start", "c1")
    assert again.returncode == 1 and "cannot start a container that is running" in again.stderr
    refused = mini_runc(state_root, "delete", "c1")
    assert refused.returncode == 1 and "not stopped" in refused.stderr

    listing = mini_runc(state_root, "list", "--format", "json")
    assert [entry["id"] for entry in json.loads(listing.stdout)] == ["c1"]
    assert json.loads(mini_runc(state_root, "ps", "--format", "json", "c1").stdout) == [state["pid"]]

    assert mini_runc(state_root, "kill", "c1", "KILL").returncode == 0
    deadline = time.monotonic() + 10
    while json.loads(mini_runc(state_root, "state", "c1").stdout)["status"] != "stopped":
        assert time.monotonic() < deadline
    assert mini_runc(state_root, "delete", "c1").returncode == 0
    assert mini_runc(state_root, "list", "--format", "json").stdout.strip() == "null"


def test_errors_are_runc_shaped(bundle, state_root, tmp_path):
    missing = mini_runc(state_root, "state", "nope")
    assert missing.returncode == 1
    assert missing.stderr.startswith('time="')
    assert 'level=error msg="container does not exist: nope"' in missing.stderr

    log = tmp_path / "log.json"
    mini_runc(state_root, "--log", str(log), "--log-format", "json", "kill", "nope")
    entry = json.loads(log.read_text().splitlines()[-1])
    assert entry["level"] == "error" and "does not exist" in entry["msg"] and "time" in entry

    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = []
    (bundle / "config.json").write_text(json.dumps(config))
    invalid = mini_runc(state_root, "create", "--bundle", str(bundle), "bad")
    assert invalid.returncode == 1 and "process.args" in invalid.stderr


def test_spec_writes_runcs_default_and_features_parse(tmp_path):
    assert mini_runc(tmp_path, "spec", "--bundle", str(tmp_path)).returncode == 0
    assert json.loads((tmp_path / "config.json").read_text()) == oci.default_config(terminal=True)
    again = mini_runc(tmp_path, "spec", "--bundle", str(tmp_path))
    assert again.returncode == 1 and "exists" in again.stderr
    features = json.loads(mini_runc(tmp_path, "features").stdout)
    assert "createRuntime" in features["hooks"] and "CAP_SYS_ADMIN" in features["linux"]["capabilities"]
    (tmp_path / "config.json").unlink()
