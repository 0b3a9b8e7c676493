"""scripts/provision.sh on bad input: one clear line, exit 1, and nothing installed or written.

Each test runs a copy of the script in a scratch project (a temporary directory holding
scripts/provision.sh and pyproject.toml) with fake apt-get, apt-cache, dpkg-query, systemctl and pip
first on PATH: each fake records its call, so a test sees whether the script tried to install anything,
and no real package is ever installed. The distribution comes from a fake os-release file named by
$MINI_CONTAINER_OS_RELEASE. A distribution the script accepts is shown by the next check it reaches: an
unknown option, refused after the distribution check passed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKES = ("apt-get", "apt-cache", "dpkg-query", "systemctl", "pip", "pip3")
NEEDED = "Debian 12 or Ubuntu 22.04/24.04 is needed"
KNOWN_OPTIONS = "(known: --no-images, --listen ADDRESS, --venv DIR)"


class Scratch:
    """A scratch project with a copy of provision.sh, fake package tools, and fake os-release files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.calls = root / "calls"
        (root / "scripts").mkdir()
        shutil.copy2(ROOT / "scripts" / "provision.sh", root / "scripts" / "provision.sh")
        shutil.copy2(ROOT / "pyproject.toml", root / "pyproject.toml")
        (root / "bin").mkdir()
        for name in FAKES:
            self.fake(name, "exit 1")

    def fake(self, name: str, body: str) -> None:
        """Replace the fake `name`: it records its arguments in `calls`, then runs `body`."""
        tool = self.root / "bin" / name
        tool.write_text(f'#!/bin/sh\necho "{name} $*" >> {self.calls}\n{body}\n')
        tool.chmod(0o755)

    def os_release(self, text: str) -> Path:
        path = self.root / "os-release"
        path.write_text(text)
        return path

    def run(self, *args: str, os_release: Path | None = None, nobody: bool = False) \
            -> subprocess.CompletedProcess:
        env = {"PATH": f"{self.root / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
               "MINI_CONTAINER_OS_RELEASE": str(os_release or self.root / "missing-os-release")}
        command = ["bash", str(self.root / "scripts" / "provision.sh"), *args]
        if nobody:  # uid and gid 65534: nobody and nogroup
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    def assert_refused(self, result: subprocess.CompletedProcess, message: str) -> None:
        """Exit 1, exactly `message` as the one line on stderr, nothing on stdout, nothing changed."""
        assert (result.returncode, result.stdout, result.stderr) == (1, "", f"provision.sh: {message}\n")
        assert not self.calls.exists(), f"tools were called: {self.calls.read_text()}"
        left = {path.name for path in self.root.iterdir()} - {"os-release"}
        assert left == {"bin", "pyproject.toml", "scripts"}, f"the script wrote {left}"


@pytest.fixture
def scratch():
    root = Path(tempfile.mkdtemp(prefix="mc-test-provision-"))
    root.chmod(0o755)  # readable by nobody, for the non-root test
    try:
        yield Scratch(root)
    finally:
        shutil.rmtree(root)


def os_release(**fields: str) -> str:
    return "".join(f'{key}="{value}"\n' for key, value in fields.items())


DEBIAN_12 = os_release(PRETTY_NAME="Debian GNU/Linux 12 (bookworm)", ID="debian", VERSION_ID="12",
                       VERSION_CODENAME="bookworm")


def test_without_root_it_refuses_before_anything(scratch):
    result = scratch.run(os_release=scratch.os_release(DEBIAN_12), nobody=True)
    scratch.assert_refused(result, "needs root: run it with sudo")


def test_without_os_release_it_cannot_tell_the_distribution(scratch):
    missing = scratch.root / "missing-os-release"
    scratch.assert_refused(scratch.run(), f"cannot tell the distribution (no {missing}): {NEEDED}")


@pytest.mark.parametrize("name, text", [
    ("Fedora Linux 40", os_release(PRETTY_NAME="Fedora Linux 40", ID="fedora", VERSION_ID="40")),
    ("Debian GNU/Linux 11 (bullseye)", os_release(PRETTY_NAME="Debian GNU/Linux 11 (bullseye)", ID="debian",
                                                  VERSION_ID="11", VERSION_CODENAME="bullseye")),
    ("Ubuntu 20.04.6 LTS", os_release(PRETTY_NAME="Ubuntu 20.04.6 LTS", ID="ubuntu", ID_LIKE="debian",
                                      VERSION_ID="20.04", UBUNTU_CODENAME="focal")),
    ("Linux Mint 20.3", os_release(PRETTY_NAME="Linux Mint 20.3", ID="linuxmint", ID_LIKE="ubuntu debian",
                                   VERSION_ID="20.3", UBUNTU_CODENAME="focal")),
    ("Alpine Linux v3.20", os_release(PRETTY_NAME="Alpine Linux v3.20", ID="alpine", VERSION_ID="3.20.0")),
    ("unknown", ""),
])
def test_unsupported_distribution_is_refused_naming_it(scratch, name, text):
    result = scratch.run(os_release=scratch.os_release(text))
    scratch.assert_refused(result, f"unsupported distribution '{name}': {NEEDED}")


@pytest.mark.parametrize("text", [
    DEBIAN_12,
    os_release(PRETTY_NAME="Debian GNU/Linux trixie/sid", ID="debian", VERSION_CODENAME="trixie"),
    os_release(PRETTY_NAME="Ubuntu 22.04.4 LTS", ID="ubuntu", ID_LIKE="debian", VERSION_ID="22.04",
               UBUNTU_CODENAME="jammy"),
    os_release(PRETTY_NAME="Ubuntu 24.04.1 LTS", ID="ubuntu", ID_LIKE="debian", VERSION_ID="24.04",
               UBUNTU_CODENAME="noble"),
    os_release(PRETTY_NAME="Linux Mint 21.3", ID="linuxmint", ID_LIKE="ubuntu debian", VERSION_ID="21.3",
               UBUNTU_CODENAME="jammy"),
], ids=["debian-12", "debian-testing", "ubuntu-22.04", "ubuntu-24.04", "mint-21-on-jammy"])
def test_supported_distribution_passes_to_the_options(scratch, text):
    result = scratch.run("--bogus", os_release=scratch.os_release(text))
    scratch.assert_refused(result, f"unknown option '--bogus' {KNOWN_OPTIONS}")


@pytest.mark.parametrize("args, message", [
    (["--listen"], "--listen needs an address"),
    (["--listen", ""], "--listen needs an address"),
    (["--venv"], "--venv needs a directory"),
    (["--no-images", "--images"], f"unknown option '--images' {KNOWN_OPTIONS}"),
])
def test_bad_options_are_refused(scratch, args, message):
    scratch.assert_refused(scratch.run(*args, os_release=scratch.os_release(DEBIAN_12)), message)


def test_a_package_without_candidate_stops_before_any_install(scratch):
    """Ubuntu without universe: skopeo has no candidate, so nothing at all is installed."""
    scratch.fake("apt-get", "exit 0")
    scratch.fake("apt-cache", '[ "$2" != skopeo ] || exit 100')
    result = scratch.run(os_release=scratch.os_release(DEBIAN_12))
    assert result.returncode == 1 and result.stdout == ""
    line, = result.stderr.splitlines()
    assert line.startswith("provision.sh: no installable candidate for skopeo in the apt sources")
    assert line.endswith("nothing was installed")
    calls = scratch.calls.read_text().splitlines()
    assert "apt-get update -qq" in calls and not [c for c in calls if c.startswith("apt-get install")]
    assert not (scratch.root / ".venv").exists()


def test_the_real_os_release_is_read_by_default():
    """Without the override the script reads /etc/os-release (this host: Debian 12, accepted)."""
    env = {key: value for key, value in os.environ.items() if key != "MINI_CONTAINER_OS_RELEASE"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "provision.sh"), "--bogus"], env=env,
                            capture_output=True, text=True, timeout=60)
    expected = f"provision.sh: unknown option '--bogus' {KNOWN_OPTIONS}\n"
    assert (result.returncode, result.stderr) == (1, expected)
