"""The VM test's runner (scripts/vm/run.py) on bad input: it never passes silently.

The VM test itself runs with `make test-vm` (minutes, under emulation here): these tests check, in
seconds, that the runner fails naming the Debian package of a missing tool before it builds or boots
anything, and that its verdict on the guest's results fails when a phase did not run, when a phase
failed, and when the cgroup v2 controller tests did not run (a suite that deselected them all would
otherwise look green).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "scripts" / "vm" / "run.py"


def load_runner():
    spec = importlib.util.spec_from_file_location("vm_run", RUNNER)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclass looks itself up there)
    spec.loader.exec_module(module)
    return module


def cache_listing(cache: Path) -> list[str]:
    return sorted(os.listdir(cache)) if cache.is_dir() else []


@pytest.mark.parametrize("present, missing", [
    ((), ("qemu-system-x86_64", "debootstrap", "mkfs.ext4")),
    (("debootstrap", "mkfs.ext4"), ("qemu-system-x86_64",)),
    (("qemu-system-x86_64", "mkfs.ext4"), ("debootstrap",)),
])
def test_a_missing_tool_fails_naming_its_package_before_anything(tmp_path, present, missing):
    for tool in present:
        found = shutil.which(tool, path=os.environ["PATH"] + ":/usr/sbin:/sbin")
        assert found, f"{tool} is not installed here: run scripts/provision.sh"
        (tmp_path / tool).symlink_to(found)
    cache = load_runner().CACHE
    before = cache_listing(cache)
    result = subprocess.run([sys.executable, str(RUNNER)], env={"PATH": str(tmp_path)},
                            capture_output=True, text=True, timeout=60)
    packages = {"qemu-system-x86_64": "qemu-system-x86", "debootstrap": "debootstrap",
                "mkfs.ext4": "e2fsprogs"}
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"vm: FAILED: {', '.join(missing)} missing: apt-get install "
                             f"{' '.join(packages[tool] for tool in missing)} (or run scripts/provision.sh, "
                             f"which installs them)\n")
    assert cache_listing(cache) == before, "the runner touched the image cache"


def junit(*cases: tuple[str, str | None]) -> str:
    """A pytest-style JUnit report of (name, failure message or None) test cases."""
    body = "".join(f'<testcase classname="tests.test_cgroups" name="{name}">'
                   + (f'<failure message="{failure}">trace</failure>' if failure else "") + "</testcase>"
                   for name, failure in cases)
    return f'<?xml version="1.0"?><testsuites><testsuite name="vm">{body}</testsuite></testsuites>'


def results(tmp_path: Path, phases: dict[str, int] | None, **reports: str) -> Path:
    """A guest's results directory: its phases file (NAME EXIT-CODE SECONDS) and the JUnit reports of
    its pytest phases (those not given: PASSED's)."""
    if phases is not None:
        (tmp_path / "phases").write_text("".join(f"{name} {code} 42\n" for name, code in phases.items()))
    for name, report in {**PASSED, **reports}.items():
        (tmp_path / f"{name}.xml").write_text(report)
    return tmp_path


ALL_PASSED = {"provision": 0, "cgroups": 0, "tests": 0, "lessons": 0, "containers": 0}
PASSED = {  # each pytest phase's report when all went well
    "cgroups": junit(("test_memory_hog_is_oom_killed_and_counted[v2]", None),
                     ("test_detect_matches_this_host", None)),
    "tests": junit(("test_run_busybox", None), ("test_stepper", None)),
    "lessons": junit(("Cell 0", None)),
    "containers": junit(("test_exit_code", None)),
}


def test_verdict_passes_when_every_phase_and_the_v2_tests_passed(tmp_path, capsys):
    assert load_runner().verdict(results(tmp_path, ALL_PASSED)) == []
    out = capsys.readouterr().out.splitlines()
    assert "vm: cgroups: 2 tests, 0 failed in 42 s" in out
    assert out[-1] == "vm: 6 passed, 0 failed"


def test_verdict_fails_when_no_v2_controller_test_ran(tmp_path):
    cgroups = junit(("test_freeze_stops_progress_and_thaw_resumes_it[v2-core]", None))
    assert load_runner().verdict(results(tmp_path, ALL_PASSED, cgroups=cgroups)) == [
        "no cgroup v2 controller test ([v2]) passed: they did not run"]


def test_verdict_fails_when_a_phase_ran_no_test(tmp_path):
    problems = load_runner().verdict(results(tmp_path, ALL_PASSED, lessons=junit()))
    assert problems == ["phase lessons reported no test"]


def test_verdict_fails_when_the_guest_ran_no_phase(tmp_path):
    problems = load_runner().verdict(results(tmp_path, None))
    assert problems == [f"phase {name} did not run" for name in ("provision", "cgroups", "tests", "lessons",
                                                                  "containers")]


def test_verdict_names_the_failed_phase_and_test(tmp_path, capsys):
    tests = junit(("test_run_busybox", "AssertionError: exit 1"), ("test_stepper", None))
    problems = load_runner().verdict(results(tmp_path, {**ALL_PASSED, "tests": 1}, tests=tests))
    assert problems == ["phase tests exited with 1"]
    out = capsys.readouterr().out
    assert "vm:   FAILED tests.test_cgroups::test_run_busybox: AssertionError: exit 1" in out
    assert out.splitlines()[-1] == "vm: 5 passed, 1 failed"
