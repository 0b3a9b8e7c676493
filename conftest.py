"""Session set-up for the whole suite (tests/ and the lessons under nbval).

Every test runs as root on the real kernel and must leave nothing behind. The session uses a private
engine root, made here with the busybox image in it and exported as $MINI_CONTAINER_ROOT (the
notebooks' kernels inherit it), and removed at the end with all it holds.

The whole session also runs in a network namespace of its own, with only a loopback device: the
bridges, veths, NAT rules and ip_forward settings that containers get are made there, and every
packet the tests send stays on this machine. The host's own network is never touched.
"""

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent
_ENGINE_ROOT: Path | None = None


def pytest_configure(config):
    global _ENGINE_ROOT
    if os.geteuid() != 0:
        raise pytest.UsageError("the mini-container tests run on the real kernel as root: run them with sudo")
    from mini_container import namespaces
    from mini_container.image.bootstrap import bootstrap_busybox
    from mini_container.image.store import ImageStore

    namespaces.unshare(["net"])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

    _ENGINE_ROOT = Path(tempfile.mkdtemp(prefix="mini-container-tests-"))
    os.environ["MINI_CONTAINER_ROOT"] = str(_ENGINE_ROOT)
    # The lessons' kernels start in lessons/: let them import the engine even when it is not installed.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    bootstrap_busybox(ImageStore(_ENGINE_ROOT))


def pytest_unconfigure(config):
    if _ENGINE_ROOT is None:
        return
    with open("/proc/self/mountinfo") as f:
        leftovers = [line.split()[4] for line in f if line.split()[4].startswith(str(_ENGINE_ROOT))]
    shutil.rmtree(_ENGINE_ROOT, ignore_errors=True)
    assert leftovers == [], f"mounts left behind under the engine root: {leftovers}"
