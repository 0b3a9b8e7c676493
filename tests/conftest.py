"""Fixtures for tests/: the session's engine root, and the cgroup version selection."""

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def engine_root() -> Path:
    """The session's private engine root (made by the repository's conftest.py), holding busybox."""
    return Path(os.environ["MINI_CONTAINER_ROOT"])


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
        config.addinivalue_line("markers", "cgroup_v1: needs the cgroup v1 hierarchies; deselected by "
                                           "--cgroup-v2")

    def pytest_collection_modifyitems(self, config, items):
        on_v2 = config.getoption("--cgroup-v2")
        unwanted = "cgroup_v1" if on_v2 else "cgroup_v2_controllers"
        deselected = [item for item in items if item.get_closest_marker(unwanted)]
        if deselected:
            config.hook.pytest_deselected(items=deselected)
            items[:] = [item for item in items if not item.get_closest_marker(unwanted)]


def pytest_addoption(parser, pluginmanager):
    parser.addoption("--cgroup-v2", action="store_true", default=False,
                     help="the host is pure cgroup v2: run the cgroup_v2_controllers tests, deselect "
                          "the cgroup_v1 ones")
    pluginmanager.register(CgroupVersionSelection(), "cgroup-version-selection")
