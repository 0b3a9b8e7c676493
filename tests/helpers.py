"""Helpers shared by the tests: running minictl against a private store, and checking for leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def minictl(root: Path, *args: str, input: str | None = None, timeout: float = 60, **kwargs):
    """Run `python -m mini_container.cli --root ROOT ARGS...`; return the CompletedProcess (text mode)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MINI_CONTAINER_ROOT", None)
    return subprocess.run([sys.executable, "-m", "mini_container.cli", "--root", str(root), *args],
                          input=input, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)


def mounts_under(path: Path) -> list[str]:
    """Mount points of the host's mount namespace at or below `path`."""
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4] for line in f]
    return [p for p in points if p == str(path) or p.startswith(f"{path}/")]


def wait_for(condition, what: str, timeout: float = 10, interval: float = 0.05):
    """Call `condition` until it returns something true, and return that; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(interval)
    return result
