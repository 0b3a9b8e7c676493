"""The embedded default images: busybox (from the host's busybox-static) and Debian (debootstrap), each
two real layers imported like any other image, the second one deleting and replacing files of the first.

The Debian image is built by scripts/provision.sh (debootstrap from the mirror the host's apt uses, its
.debs cached in /var/cache/mini-container/debootstrap) into the default store, so that the tests never
download: `test_the_provisioned_debian_image` checks and runs that image.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import REPO, minictl, mounts_under

from mini_container.errors import ContainerError
from mini_container.image import bootstrap
from mini_container.image.bootstrap import DEBOOTSTRAP_CACHE, apt_mirror, bootstrap_busybox
from mini_container.image.layer_paths import OPAQUE_XATTR, is_whiteout
from mini_container.image.store import ImageStore
from mini_container.locations import DEFAULT_ROOT


@pytest.fixture
def root():
    path = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    yield path
    leftovers = mounts_under(path)
    shutil.rmtree(path)
    assert leftovers == [], f"mounts left behind: {leftovers}"


def run(root: Path, image: str, *command: str):
    return minictl(root, "run", "--rm", image, *command, timeout=120)


def assert_two_layers_with_whiteouts(image, deleted: str, opaque: str) -> None:
    """Layer 2 holds a 0/0 whiteout for `deleted` and an opaque `opaque`; layer 1 still has the file."""
    lower, upper = image.layers
    assert (lower / deleted).exists()
    assert is_whiteout(os.lstat(upper / deleted))
    assert os.getxattr(upper / opaque, OPAQUE_XATTR) == b"y"
    assert len(image.image_config["history"]) == 3 and image.image_config["history"][2]["empty_layer"]
    assert all("whiteout" in h["created_by"] for h in image.image_config["history"][1:2])


# --- busybox ----------------------------------------------------------------------------------------

def test_busybox_is_two_layers_the_second_deleting_and_replacing_files(engine_root):
    image = ImageStore(engine_root).get("busybox")
    assert image.reference == "busybox:latest" and image.config["Cmd"] == ["sh"]
    assert_two_layers_with_whiteouts(image, "etc/motd", "usr/share/doc/busybox")
    assert os.readlink(image.layers[0] / "bin/sh") == "/bin/busybox"
    assert image.image_config["rootfs"]["diff_ids"] == [layer.diff_id for layer in image.chain]


def test_running_busybox_shows_the_top_layer(engine_root):
    result = run(engine_root, "busybox", "cat", "/etc/os-release")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith('NAME="mini-container busybox"\n')  # layer 1's says NAME="BusyBox"
    assert "replaced by layer 2 of this image" in result.stdout
    gone = run(engine_root, "busybox", "ls", "/etc/motd")
    assert gone.returncode != 0 and "No such file or directory" in gone.stdout + gone.stderr
    assert run(engine_root, "busybox", "ls", "/usr/share/doc/busybox").stdout.split() == ["README"]


def test_busybox_bootstrap_is_reproducible(root):
    store = ImageStore(root)
    first = bootstrap_busybox(store)
    layers = sorted(os.listdir(store.layers_dir))
    second = bootstrap_busybox(store)
    assert (second.digest, second.id) == (first.digest, first.id)  # the same bytes, so the same digests
    assert sorted(os.listdir(store.layers_dir)) == layers  # nothing unpacked again


def test_a_busybox_that_is_not_static_is_refused(root, monkeypatch):
    monkeypatch.setattr(bootstrap, "BUSYBOX", Path(shutil.which("ls")))
    with pytest.raises(ContainerError, match="not statically linked: install Debian's busybox-static"):
        bootstrap_busybox(ImageStore(root))
    assert not (root / "images").exists() and not (root / "blobs").exists()


def test_progress_is_shown_on_a_terminal_only(root):
    controller, terminal = os.openpty()
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        child = subprocess.run([sys.executable, "-m", "mini_container.cli", "--root", str(root), "bootstrap",
                                "busybox"], stderr=terminal, stdout=subprocess.DEVNULL, env=env, timeout=60)
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(controller)
    assert child.returncode == 0
    assert b"writing layer 1/2" in shown and b"unpacked layer 1/2" in shown and b"unpacked layer 2/2" in shown
    piped = minictl(root, "bootstrap", "busybox")
    assert piped.returncode == 0 and piped.stderr == ""
    assert piped.stdout.startswith("busybox:latest: 2 layers")


# --- debian -----------------------------------------------------------------------------------------

def test_apt_mirror_is_read_from_list_and_deb822_sources(root):
    (root / "sources.list.d").mkdir()
    assert apt_mirror(sources=root) == "http://deb.debian.org/debian"  # nothing: Debian's own
    (root / "sources.list").write_text("# a comment\ndeb [arch=amd64] http://one/d bookworm-updates main\n")
    (root / "sources.list.d" / "debian.sources").write_text(
        "Types: deb-src\nURIs: http://source.only/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.two/debian/\nSuites: bookworm bookworm-updates\nComponents: main\n")
    assert apt_mirror(sources=root) == "http://mirror.two/debian"
    (root / "sources.list.d" / "local.list").write_text("deb [signed-by=/k] http://three/d bookworm main\n")
    assert apt_mirror(sources=root) == "http://three/d"  # one-line sources are read first


def test_the_provisioned_debian_image(root):
    """The Debian image that scripts/provision.sh built with debootstrap (the tests download nothing)."""
    store = ImageStore(DEFAULT_ROOT)
    try:
        image = store.get("debian")
    except ContainerError as e:
        pytest.fail(f"{e} -- scripts/provision.sh builds it (sudo scripts/provision.sh)")
    assert sorted(image.repo_tags) == ["debian:bookworm", "debian:latest"] and image.config["Cmd"] == ["bash"]
    assert_two_layers_with_whiteouts(image, "etc/motd", "usr/share/doc")
    lower, upper = image.layers
    assert not any((lower / "dev").iterdir()) and not (lower / "etc/hostname").exists()
    assert stat.S_ISLNK(os.lstat(lower / "etc/os-release").st_mode)
    assert list((lower / "var/lib/apt/lists").iterdir()) == [lower / "var/lib/apt/lists/partial"]
    assert len(list(DEBOOTSTRAP_CACHE.glob("*.deb"))) > 50  # a second build downloads no package

    script = "cat /etc/os-release; ls /usr/share/doc/bash; ls /etc/motd"
    result = run(DEFAULT_ROOT, "debian", "sh", "-c", script)
    assert "mini-container build" in result.stdout and 'VERSION_CODENAME=bookworm' in result.stdout
    assert "copyright\n" in result.stdout and "changelog" not in result.stdout
    assert "cannot access '/etc/motd': No such file or directory" in result.stderr and result.returncode != 0
    version = run(DEFAULT_ROOT, "debian:bookworm", "dpkg-query", "-W", "-f=${Version}", "bash")
    assert version.returncode == 0 and version.stdout.startswith("5.2")
