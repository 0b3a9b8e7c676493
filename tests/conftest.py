"""Shared set-up: every test runs as root on the real kernel and must leave nothing behind.

The whole session (the lessons under nbval included) uses a private engine root, made here with the
busybox image in it and exported as $MINI_CONTAINER_ROOT, and removed at the end with all it holds.
"""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_ENGINE_ROOT: Path | None = None


def pytest_configure(config):
    global _ENGINE_ROOT
    if os.geteuid() != 0:
        raise pytest.UsageError("the mini-container tests run on the real kernel and need root: run them with sudo")
    from mini_container.image.bootstrap import bootstrap_busybox
    from mini_container.image.store import ImageStore

    _ENGINE_ROOT = Path(tempfile.mkdtemp(prefix="mini-container-tests-"))
    os.environ["MINI_CONTAINER_ROOT"] = str(_ENGINE_ROOT)
    bootstrap_busybox(ImageStore(_ENGINE_ROOT))


def pytest_unconfigure(config):
    if _ENGINE_ROOT is None:
        return
    from helpers import mounts_under

    leftovers = mounts_under(_ENGINE_ROOT)
    shutil.rmtree(_ENGINE_ROOT, ignore_errors=True)
    assert leftovers == [], f"mounts left behind under the engine root: {leftovers}"


@pytest.fixture(scope="session")
def engine_root() -> Path:
    """The session's private engine root, holding the busybox image."""
    return _ENGINE_ROOT


# --- cgroup v2 controller tests (tests/test_cgroups.py) ----------------------------------------------
class CgroupVersionSelection:
    """`--cgroup-v2` says the run is on a pure cgroup v2 host (the VM run sets it).

    Tests marked `cgroup_v2_controllers` need a v2 hierarchy with controllers: deselected by default,
    run (and failing, naming what is missing, if the controllers are absent) with --cgroup-v2.
    Tests marked `cgroup_v1` need the v1 hierarchies: run by default, deselected with --cgroup-v2.
    """

    def pytest_configure(self, config):
        config.addinivalue_line("markers", "cgroup_v2_controllers: needs cgroup v2 controllers; runs only "
                                           "with --cgroup-v2")
        config.addinivalue_line("markers", "cgroup_v1: needs the cgroup v1 hierarchies; skipped by --cgroup-v2")

    def pytest_collection_modifyitems(self, config, items):
        on_v2 = config.getoption("--cgroup-v2")
        unwanted = "cgroup_v1" if on_v2 else "cgroup_v2_controllers"
        deselected = [item for item in items if item.get_closest_marker(unwanted)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker(unwanted)]


def pytest_addoption(parser, pluginmanager):
    parser.addoption("--cgroup-v2", action="store_true", default=False,
                     help="the host is pure cgroup v2: run the cgroup_v2_controllers tests, deselect cgroup_v1")
    pluginmanager.register(CgroupVersionSelection(), "cgroup-version-selection")
