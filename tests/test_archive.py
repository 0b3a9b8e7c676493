"""Image archives with the real tools, offline: docker (a private dockerd from docker.io), skopeo and umoci.

- minictl save -> docker load and docker run; minictl save -> skopeo inspect and skopeo copy.
- docker import + docker run + docker commit -> docker save (Docker 20.10: one directory per layer) ->
  minictl load and minictl run; the same images in the Docker 25+ form (built here from docker's tar).
- OCI layouts made by skopeo (gzip, zstd and uncompressed layers) and by umoci, as directories and tars
  (a whole tar compressed too), and a multi-platform layout (this host's image is picked).
- Layer semantics: the tree that unpack.apply_layer builds from a loaded image, and the overlay view of
  the store's layers (mounted in a forked child), equal `umoci raw unpack`'s (whiteouts, opaque
  directories, hard links, symlinks, a fifo, setuid, setgid and sticky bits, owners, user xattrs).
- Bad input: a truncated tar, a missing blob, unknown media types, a wrong DiffID after a good image:
  one line, a non-zero exit, and the store as it was.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import pty
import select
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest
import zstandard
from docker_fixture import Dockerd
from helpers import REPO, minictl, mounts_under
from registry_fixture import build_layout, require

from mini_container import rootfs, syscalls
from mini_container.image import archive, oci
from mini_container.image.reference import parse
from mini_container.image.registry import host_platform
from mini_container.image.store import ImageStore
from mini_container.image.unpack import apply_layer
from mini_container.namespaces import run_in_child

UNKNOWN = "application/vnd.example.not-a-layer"


# --- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="mc-archive-", dir="/tmp"))
    yield path
    shutil.rmtree(path)


@pytest.fixture(scope="module")
def dockerd():
    daemon = Dockerd()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.stop()
        assert daemon.leftovers() == []


@pytest.fixture
def root():
    """A private, empty store root, removed afterwards (and checked for mounts left behind)."""
    path = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    yield path
    leftovers = mounts_under(path)
    shutil.rmtree(path)
    assert leftovers == [], f"mounts left behind: {leftovers}"


@pytest.fixture(scope="module")
def busybox(engine_root):
    """The session's busybox image (bootstrapped by conftest.py)."""
    return ImageStore(engine_root).get("busybox")


@pytest.fixture(scope="module")
def busybox_tar(engine_root, workdir) -> Path:
    path = workdir / "busybox.tar"
    result = minictl(engine_root, "save", "-o", str(path), "busybox")
    assert result.returncode == 0 and result.stdout == "", result.stderr
    return path


@pytest.fixture(scope="module")
def docker_saved(dockerd, workdir) -> dict:
    """Two images made by docker without a network: `docker import` of a static busybox rootfs
    (mc-test/base:v1), and a container of it that deletes /etc/motd and writes /srv/new, committed
    (mc-test/app:v2, also tagged latest). `docker save` of both, by name, and of base by id alone."""
    rootfs_tar = workdir / "docker-rootfs.tar"
    with tarfile.open(rootfs_tar, "w") as tar:
        tar.add("/bin/busybox", "bin/busybox")
        for name, data in {"etc/motd": b"deleted by layer 2\n", "etc/keep": b"kept\n"}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for applet in ("sh", "cat", "test", "ls", "mkdir", "rm", "echo"):
            info = tarfile.TarInfo(f"bin/{applet}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(info)
    dockerd.docker("import", "--change", 'CMD ["sh"]', str(rootfs_tar), "mc-test/base:v1")
    dockerd.docker("run", "--name", "mc-commit", "--network", "none", "mc-test/base:v1", "sh", "-c",
                   "rm /etc/motd && mkdir /srv && echo written by docker > /srv/new")
    dockerd.docker("commit", "mc-commit", "mc-test/app:v2")
    dockerd.docker("rm", "mc-commit")
    dockerd.docker("tag", "mc-test/app:v2", "mc-test/app:latest")
    ids = {name: dockerd.docker("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()
           for name in ("mc-test/base:v1", "mc-test/app:v2")}
    named, by_id = workdir / "docker-named.tar", workdir / "docker-by-id.tar"
    dockerd.docker("save", "-o", str(named), "mc-test/app:v2", "mc-test/app:latest", "mc-test/base:v1")
    dockerd.docker("save", "-o", str(by_id), ids["mc-test/base:v1"])
    return {"named": named, "by_id": by_id, "ids": ids}


# --- helpers --------------------------------------------------------------------------------------------

def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def read_tar(path: Path) -> dict[str, bytes | str]:
    """Every regular member's bytes, and each symlink's target (a str), by name."""
    members: dict[str, bytes | str] = {}
    with tarfile.open(path) as tar:
        for member in tar:
            if member.isreg():
                members[member.name.removeprefix("./")] = tar.extractfile(member).read()
            elif member.issym():
                members[member.name.removeprefix("./")] = member.linkname
    return members


def write_tar(path: Path, members: dict[str, bytes | str]) -> Path:
    """A tar of `members` (bytes: a file; str: a symlink to it), in the order given."""
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, str):
                info.type, info.linkname = tarfile.SYMTYPE, data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def skopeo(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    """skopeo in a mount namespace of its own with a tmpfs on /var/lib, so that the blob-info cache it
    keeps as root in /var/lib/containers dies with it; its big temporary files go to `workdir`."""
    binary = require("skopeo", "skopeo")
    result = subprocess.run(["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                             'mount -t tmpfs tmpfs /var/lib && exec "$@"', "sh", binary, "--insecure-policy",
                             *args], capture_output=True, text=True, timeout=60,
                            env={**os.environ, "TMPDIR": str(workdir)})
    assert result.returncode == 0, f"skopeo {' '.join(args)}: {result.stderr}"
    return result


def minictl_bytes(root: Path, *args: str) -> subprocess.CompletedProcess:
    """minictl with its stdout a pipe, read as bytes."""
    return subprocess.run([sys.executable, "-m", "mini_container.cli", "--root", str(root), *args],
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})


def loaded_lines(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def load(root: Path, source: Path) -> list[str]:
    """archive.load in this process (minictl's start-up costs seconds): the familiar names, or ids."""
    return [name for image in archive.load(ImageStore(root), source) for name in image.names or [image.id]]


def refused(root: Path, source: Path) -> str:
    """The one-line error of an archive.load that must fail."""
    with pytest.raises(oci.InvalidImageError) as raised:
        archive.load(ImageStore(root), source)
    assert "\n" not in str(raised.value)
    return str(raised.value)


def one_line_error(result) -> str:
    """A failed minictl run's stderr: one `minictl: ...` line and no traceback."""
    assert result.returncode != 0, result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("minictl: "), result.stderr
    return result.stderr


def store_state(root: Path) -> dict[str, set[str]]:
    """What a store holds on disk: blob files, layer directories, image records and names."""
    listing = {part: set(os.listdir(root / part)) if (root / part).is_dir() else set()
               for part in ("blobs/sha256", "layers", "layerdb", "images")}
    listing["names"] = {image.reference for image in ImageStore(root).list()}
    return listing


EMPTY = {"blobs/sha256": set(), "layers": set(), "layerdb": set(), "images": set(), "names": set()}


def media_types(root: Path, name: str) -> set[str]:
    return {layer.media_type for layer in ImageStore(root).get(name).manifest.layers}


# --- minictl save: docker and skopeo read it --------------------------------------------------------

def test_save_writes_the_docker_25_form_byte_for_byte_reproducibly(busybox_tar, engine_root, busybox):
    members = read_tar(busybox_tar)
    assert {"oci-layout", "index.json", "manifest.json"} <= set(members)
    for name, data in members.items():
        if name.startswith("blobs/"):
            assert sha256(data) == name.replace("blobs/", "").replace("/", ":")  # content addressed
    entry, = json.loads(members["manifest.json"])
    assert entry["RepoTags"] == ["busybox:latest"]
    assert entry["Config"] == f"blobs/sha256/{busybox.id[7:]}"
    assert entry["Layers"] == [f"blobs/sha256/{layer.digest[7:]}" for layer in busybox.manifest.layers]
    top, = json.loads(members["index.json"])["manifests"]
    assert top["digest"] == busybox.digest
    assert top["annotations"] == {"io.containerd.image.name": "docker.io/library/busybox:latest",
                                  "org.opencontainers.image.ref.name": "latest"}
    again = minictl_bytes(engine_root, "image", "save", "busybox:latest")  # to stdout, a pipe
    assert again.returncode == 0 and again.stdout == busybox_tar.read_bytes(), again.stderr


def test_docker_loads_and_runs_an_image_minictl_saved(dockerd, busybox_tar, busybox):
    assert dockerd.docker("load", "-i", str(busybox_tar)).stdout.strip() == "Loaded image: busybox:latest"
    try:
        inspected = dockerd.docker("image", "inspect", "--format", "{{.Id}}", "busybox").stdout.strip()
        assert inspected == busybox.id  # docker's image id is the config's digest, as minictl's
        ran = dockerd.docker("run", "--rm", "--network", "none", "busybox", "sh", "-c",
                             "cat /etc/os-release; ls /etc/motd; ls /usr/share/doc/busybox", check=False)
        assert "mini-container" in ran.stdout  # layer 2's os-release
        assert "/etc/motd: No such file" in ran.stderr  # layer 2's whiteout, applied by docker
        assert ran.stdout.splitlines()[-1] == "README"  # the opaque directory hides layer 1's files
    finally:
        dockerd.docker("rmi", "busybox")


def test_skopeo_reads_a_tar_minictl_saved_as_docker_archive_and_oci_archive(workdir, busybox_tar, busybox,
                                                                             root):
    raw_config = skopeo(workdir, "inspect", "--raw", "--config", f"docker-archive:{busybox_tar}").stdout
    assert sha256(raw_config.encode()) == busybox.id
    inspected = json.loads(skopeo(workdir, "inspect", f"oci-archive:{busybox_tar}:latest").stdout)
    assert inspected["Digest"] == busybox.digest
    layout = workdir / "skopeo-from-docker-archive"
    skopeo(workdir, "copy", f"docker-archive:{busybox_tar}", f"oci:{layout}:busybox:copied")
    assert loaded_lines(minictl(root, "load", "-i", str(layout))) == ["Loaded image: busybox:copied"]
    copied = ImageStore(root).get("busybox:copied")  # skopeo rewrote docker's config as an OCI one
    assert [layer.chain_id for layer in copied.chain] == [layer.chain_id for layer in busybox.chain]
    assert copied.config["Cmd"] == busybox.config["Cmd"] == ["sh"]


@pytest.mark.parametrize("compression, flags, media_type", [
    ("gzip", [], oci.OCI_LAYER_GZIP),
    ("zstd", ["--dest-compress-format", "zstd", "--dest-compress"], oci.OCI_LAYER_ZSTD),
])
def test_oci_layouts_that_skopeo_made_load_as_directories_and_tars(workdir, busybox_tar, busybox, root,
                                                                   compression, flags, media_type):
    layout, name = workdir / f"skopeo-{compression}", f"mc-test/{compression}"
    skopeo(workdir, "copy", *flags, f"oci-archive:{busybox_tar}:latest", f"oci:{layout}:{name}")
    assert load(root, layout) == [f"{name}:latest"]
    assert media_types(root, name) == {media_type}
    assert ImageStore(root).get(name).id == busybox.id
    # The same layout as a tar, the whole of it compressed with zstd.
    packed = io.BytesIO()
    with tarfile.open(fileobj=packed, mode="w") as tar:
        tar.add(layout, ".")
    (workdir / f"{compression}.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(packed.getvalue()))
    assert load(root / "other", workdir / f"{compression}.tar.zst") == [f"{name}:latest"]
    assert store_state(root / "other") == store_state(root)


def test_a_multi_platform_layout_loads_this_hosts_image(workdir, root):
    """An index over linux/amd64 and linux/arm64/v8 (registry_fixture's layout, named `v1`): the nested
    index is resolved to the manifest of this host's platform."""
    layout = build_layout(workdir / "multi-platform", "v1")
    host = str(host_platform())
    assert host in layout.images, f"the layout has no image for this host ({host})"
    assert load(root, layout.path) == ["v1:latest"]  # a bare ref.name is read as a reference
    image = ImageStore(root).get("v1")
    assert image.digest == layout.images[host].digest
    assert (image.layers[1] / "platform.txt").read_text() == f"app for {host}\n"


# --- docker save: minictl loads it and runs it ------------------------------------------------------

def test_an_image_docker_saved_loads_and_runs(docker_saved, root):
    members = read_tar(docker_saved["named"])
    if "index.json" not in members:  # Docker 20.10 (Debian 12's): one directory per layer
        assert any(name.endswith("/layer.tar") for name in members)
        assert any(isinstance(data, str) for data in members.values()), "a shared layer.tar is a symlink"
    lines = loaded_lines(minictl(root, "load", "-i", str(docker_saved["named"])))
    assert sorted(lines) == ["Loaded image: mc-test/app:latest", "Loaded image: mc-test/app:v2",
                             "Loaded image: mc-test/base:v1"]
    store = ImageStore(root)
    assert store.get("mc-test/app:v2").id == docker_saved["ids"]["mc-test/app:v2"]  # docker's image id
    assert store.get("mc-test/base:v1").id == docker_saved["ids"]["mc-test/base:v1"]
    assert store.get("mc-test/app:latest").digest == store.get("mc-test/app:v2").digest
    assert store.get("mc-test/app:v2").chain[0] == store.get("mc-test/base:v1").chain[0]  # one base layer
    assert media_types(root, "mc-test/app:v2") == {oci.OCI_LAYER}  # sniffed: docker's layer.tar is plain
    ran = minictl(root, "run", "--rm", "mc-test/app:v2", "sh", "-c",
                  "cat /srv/new /etc/keep; test -e /etc/motd || echo motd deleted")
    assert (ran.returncode, ran.stdout) == (0, "written by docker\nkept\nmotd deleted\n"), ran.stderr


def test_an_image_saved_by_id_loads_untagged(docker_saved, root):
    entry, = json.loads(read_tar(docker_saved["by_id"])["manifest.json"])
    assert entry["RepoTags"] is None
    image_id = docker_saved["ids"]["mc-test/base:v1"]
    assert loaded_lines(minictl(root, "load", "-i", str(docker_saved["by_id"]))) == [
        f"Loaded image ID: {image_id}"]
    image, = ImageStore(root).list()
    assert (image.id, image.name, image.repo_tags, image.reference) == (image_id, None, [], image_id[7:19])


def docker_25_form(legacy: dict[str, bytes | str], path: Path) -> dict[str, str]:
    """Write Docker 25+'s `docker save` of the images of a Docker 20.10 one: every blob under
    blobs/sha256 (layers uncompressed), an OCI manifest per image in index.json (named by annotations),
    and manifest.json pointing into blobs/. Returns each name's OCI manifest digest."""
    def resolve(name: str) -> bytes:
        data = legacy[name]
        return resolve(os.path.normpath(os.path.join(os.path.dirname(name), data))) if isinstance(data, str) \
            else data

    blobs, index, entries, digests = {}, [], [], {}
    for entry in json.loads(legacy["manifest.json"]):
        config = resolve(entry["Config"])
        layers = [resolve(name) for name in entry["Layers"]]
        for data in (config, *layers):
            blobs[f"blobs/sha256/{sha256(data)[7:]}"] = data
        manifest = json.dumps({
            "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": sha256(config), "size": len(config)},
            "layers": [{"mediaType": oci.OCI_LAYER, "digest": sha256(d), "size": len(d)} for d in layers],
        }).encode()
        blobs[f"blobs/sha256/{sha256(manifest)[7:]}"] = manifest
        for tag in entry["RepoTags"]:
            digests[tag] = sha256(manifest)
            index.append({"mediaType": oci.OCI_MANIFEST, "digest": sha256(manifest), "size": len(manifest),
                          "annotations": {"io.containerd.image.name": f"docker.io/{tag}",
                                          "org.opencontainers.image.ref.name": tag.rpartition(":")[2]}})
        entries.append({"Config": f"blobs/sha256/{sha256(config)[7:]}", "RepoTags": entry["RepoTags"],
                        "Layers": [f"blobs/sha256/{sha256(d)[7:]}" for d in layers]})
    write_tar(path, {**blobs,  # docker's order (a directory's tar): manifest.json after the layers
                     "index.json": json.dumps({"schemaVersion": 2, "manifests": index}).encode(),
                     "manifest.json": json.dumps(entries).encode(),
                     "oci-layout": b'{"imageLayoutVersion": "1.0.0"}'})
    return digests


@pytest.fixture(scope="module")
def docker_25(docker_saved, workdir) -> tuple[Path, dict[str, str]]:
    """The Docker 25+ form of docker_saved's images, and each name's manifest digest: built here from a
    Docker 20.10 tar, or docker's own tar if the daemon is that new."""
    members = read_tar(docker_saved["named"])
    if "index.json" in members:
        index = json.loads(members["index.json"])["manifests"]
        names = [parse(entry["annotations"][archive.IMAGE_NAME]).familiar for entry in index]
        return docker_saved["named"], dict(zip(names, [entry["digest"] for entry in index], strict=True))
    path = workdir / "docker-25.tar"
    return path, docker_25_form(members, path)


def test_the_docker_25_form_loads_with_dockers_own_manifests(docker_25, docker_saved, root):
    path, digests = docker_25
    assert sorted(load(root, path)) == sorted(digests)
    store = ImageStore(root)
    for tag, digest in digests.items():
        assert store.get(tag).digest == digest  # kept, not synthesized
    assert store.get("mc-test/app:v2").id == docker_saved["ids"]["mc-test/app:v2"]
    in_archive = {name.removeprefix("blobs/sha256/") for name in read_tar(path) if name.startswith("blobs/")}
    assert store_state(root)["blobs/sha256"] == in_archive


def test_an_uncompressed_oci_layout_from_skopeo_loads(docker_25, workdir, root):
    layout = workdir / "skopeo-uncompressed"
    skopeo(workdir, "copy", "--dest-oci-accept-uncompressed-layers", f"oci-archive:{docker_25[0]}:v2",
           f"oci:{layout}:mc-test/app:plain")
    assert load(root, layout) == ["mc-test/app:plain"]
    assert media_types(root, "mc-test/app:plain") == {oci.OCI_LAYER}
    top = ImageStore(root).get("mc-test/app:plain").layers[1]
    assert (top / "srv/new").read_text() == "written by docker\n"


def test_a_gzip_compressed_docker_save_loads_from_stdin_with_progress_on_a_terminal(busybox_tar, root):
    primary, replica = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "mini_container.cli", "--root", str(root), "load"],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=replica,
                               env={**os.environ, "PYTHONPATH": str(REPO)})
    os.close(replica)
    out, _ = process.communicate(gzip.compress(busybox_tar.read_bytes()), timeout=60)
    shown = b""
    while select.select([primary], [], [], 0.5)[0]:
        try:
            chunk = os.read(primary, 65536)
        except OSError:  # EIO: the other end is closed and everything was read
            break
        if not chunk:
            break
        shown += chunk
    os.close(primary)
    assert (process.returncode, out) == (0, b"Loaded image: busybox:latest\n"), shown
    assert b"\r\x1b[2K" in shown and b"unpacked layer 2/2" in shown  # one status line, redrawn in place


# --- bad input: one line, and the store as it was ---------------------------------------------------

def test_a_truncated_tar_is_refused_and_leaves_nothing(busybox_tar, workdir, root):
    data = busybox_tar.read_bytes()
    cut = workdir / "truncated.tar"
    cut.write_bytes(data[: len(data) // 2])
    error = one_line_error(minictl(root, "load", "-i", str(cut)))
    assert "truncated or corrupt" in error and "unexpected end of data" in error
    assert store_state(root) == EMPTY


def test_what_is_not_an_archive_is_named(workdir, root):
    text = workdir / "notes.txt"
    text.write_text("not a tar\n" * 100)
    assert "not a readable tar archive" in refused(root, text)
    assert "No such file or directory" in refused(root, workdir / "nope")
    empty = workdir / "empty-layout"
    empty.mkdir()
    assert "neither a manifest.json" in refused(root, empty)
    assert store_state(root) == EMPTY


def test_a_manifest_naming_a_missing_blob_is_refused(busybox_tar, busybox, workdir, root):
    members = read_tar(busybox_tar)
    layer = busybox.manifest.layers[1].digest
    del members[f"blobs/sha256/{layer[7:]}"]
    error = one_line_error(minictl(root, "load", "-i", str(write_tar(workdir / "missing.tar", members))))
    assert f"layer 'blobs/sha256/{layer[7:]}' is not in the archive" in error
    del members["manifest.json"]  # now an OCI layout, whose manifest names the blob
    error = refused(root, write_tar(workdir / "missing-oci.tar", members))
    assert f"names layer 2 blob {layer}, which the archive does not hold" in error
    members[f"blobs/sha256/{layer[7:]}"] = b"not the layer"  # there, but not what its name says
    error = refused(root, write_tar(workdir / "altered-oci.tar", members))
    assert f"blob content has digest {sha256(b'not the layer')}, expected {layer}" in error
    assert store_state(root) == EMPTY


@pytest.mark.parametrize("where, said", [("layer", "layer 1 has unknown media type"),
                                         ("config", "has a config of unknown media type"),
                                         ("index entry", "index.json entry 1 has media type")])
def test_an_unknown_media_type_in_a_required_place_is_refused(busybox_tar, busybox, workdir, root, where,
                                                              said):
    members = read_tar(busybox_tar)
    del members["manifest.json"]
    manifest = json.loads(members[f"blobs/sha256/{busybox.digest[7:]}"])
    index = json.loads(members["index.json"])
    if where == "index entry":
        index["manifests"][0]["mediaType"] = UNKNOWN
    else:
        (manifest["layers"][0] if where == "layer" else manifest["config"])["mediaType"] = UNKNOWN
        data = json.dumps(manifest).encode()
        members[f"blobs/sha256/{sha256(data)[7:]}"] = data
        index["manifests"][0].update(digest=sha256(data), size=len(data))
    members["index.json"] = json.dumps(index).encode()
    error = refused(root, write_tar(workdir / f"unknown-{where.replace(' ', '-')}.tar", members))
    assert f"{said} {UNKNOWN!r}" in error
    assert store_state(root) == EMPTY


def test_a_wrong_diff_id_after_a_good_image_undoes_the_whole_load(busybox_tar, docker_saved, workdir, root):
    """The archive holds a good new image, then one whose config names a DiffID its layer does not have.
    The store already holds busybox: afterwards it holds busybox, exactly, and nothing else."""
    assert load(root, busybox_tar) == ["busybox:latest"]
    before = store_state(root)
    members = read_tar(docker_saved["named"])
    entries = json.loads(members["manifest.json"])
    base = next(e for e in entries if e["RepoTags"] == ["mc-test/base:v1"])
    config = json.loads(members[base["Config"]])
    config["rootfs"]["diff_ids"] = ["sha256:" + "1" * 64]
    bad = json.dumps(config).encode()
    members[f"{sha256(bad)[7:]}.json"] = bad
    entries.append({"Config": f"{sha256(bad)[7:]}.json", "RepoTags": ["mc-test/bad:v1"],
                    "Layers": base["Layers"]})
    members["manifest.json"] = json.dumps(entries).encode()
    error = one_line_error(minictl(root, "load", "-i", str(write_tar(workdir / "bad-diff.tar", members))))
    assert "mc-test/bad:v1" in error and f"the image config expects sha256:{'1' * 64}" in error
    assert store_state(root) == before


# --- layer semantics: the engine's tree equals umoci's ------------------------------------------------

def umoci(*args: str) -> None:
    result = subprocess.run([require("umoci", "umoci"), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, f"umoci {' '.join(args)}: {result.stderr}"


def first_layer(bundle_root: Path) -> None:
    """Directories with modes and owners, setuid/setgid/sticky bits, hard links, symlinks, a fifo, xattrs."""
    for directory, mode, owner in (("bin", 0o755, 0), ("etc", 0o755, 0), ("etc/dropped", 0o750, 0),
                                   ("srv", 0o755, 0), ("srv/shared", 0o1777, 0), ("srv/group", 0o2775, 50),
                                   ("home/user", 0o700, 1000)):
        (bundle_root / directory).mkdir(parents=True, exist_ok=True)
        os.chown(bundle_root / directory, owner, owner)
        os.chmod(bundle_root / directory, mode)
    files = {"bin/tool": (b"#!/bin/sh\necho tool\n", 0o755, 0), "bin/su": (b"setuid\n", 0o4755, 0),
             "bin/wall": (b"setgid\n", 0o2755, 5), "etc/config": (b"key=1\n", 0o640, 42),
             "etc/motd": (b"hello\n", 0o644, 0), "etc/dropped/a": (b"a\n", 0o600, 0),
             "etc/becomes-dir": (b"file\n", 0o644, 0), "srv/shared/x": (b"x\n", 0o666, 1000),
             "home/user/.profile": (b"PS1=$\n", 0o600, 1000)}
    for name, (data, mode, owner) in files.items():
        (bundle_root / name).write_bytes(data)
        os.chown(bundle_root / name, owner, owner)
        os.chmod(bundle_root / name, mode)
    os.link(bundle_root / "bin/tool", bundle_root / "bin/tool-again")
    os.symlink("config", bundle_root / "etc/relative")
    os.symlink("/etc/config", bundle_root / "etc/absolute")
    os.symlink("../nowhere", bundle_root / "etc/dangling")
    os.mkfifo(bundle_root / "srv/fifo", 0o620)
    os.setxattr(bundle_root / "etc/config", "user.mc.note", b"layer one")
    os.setxattr(bundle_root / "srv", "user.mc.dir", b"replaced by the opaque layer's srv/")
    os.setxattr(bundle_root / "bin", "user.mc.dir", b"kept: no later layer has an entry for bin/ itself")


def second_layer(bundle_root: Path) -> None:
    """Deletions (whiteouts), a file turned into a directory, a symlink into a file, changed metadata."""
    (bundle_root / "etc/motd").unlink()
    shutil.rmtree(bundle_root / "etc/dropped")
    (bundle_root / "etc/becomes-dir").unlink()
    (bundle_root / "etc/becomes-dir").mkdir()
    (bundle_root / "etc/becomes-dir/inside").write_bytes(b"inside\n")
    (bundle_root / "etc/relative").unlink()
    (bundle_root / "etc/relative").write_bytes(b"no longer a link\n")
    os.chmod(bundle_root / "etc/config", 0o600)
    os.setxattr(bundle_root / "etc/config", "user.mc.note", b"layer two")
    os.link(bundle_root / "etc/config", bundle_root / "etc/config-again")


def opaque_layer(path: Path) -> Path:
    """A layer umoci's repack does not write: an opaque srv/, a new file in it, and a whiteout."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("srv/", None), ("srv/.wh..wh..opq", b""), ("srv/new", b"after the opaque\n"),
                           ("bin/.wh.su", b"")):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type, info.mode = (tarfile.DIRTYPE, 0o711) if data is None else (tarfile.REGTYPE, 0o644)
            info.size = len(data or b"")
            tar.addfile(info, io.BytesIO(data or b""))
    return path


@pytest.fixture(scope="module")
def umoci_layouts(workdir) -> dict[str, Path]:
    """An OCI layout built by umoci (gzip layers), and skopeo's copy of it with zstd layers."""
    layout, bundle = workdir / "umoci", workdir / "umoci-bundle"
    umoci("init", "--layout", str(layout))
    umoci("new", "--image", f"{layout}:umoci")
    for change in (first_layer, second_layer):
        umoci("unpack", "--image", f"{layout}:umoci", str(bundle))
        change(bundle / "rootfs")
        umoci("repack", "--image", f"{layout}:umoci", str(bundle))
        shutil.rmtree(bundle)
    umoci("raw", "add-layer", "--image", f"{layout}:umoci", str(opaque_layer(workdir / "opaque.tar")))
    zstd = workdir / "umoci-zstd"
    skopeo(workdir, "copy", "--dest-compress-format", "zstd", "--dest-compress", f"oci:{layout}:umoci",
           f"oci:{zstd}:umoci")
    return {"gzip": layout, "zstd": zstd}


def tree(root: Path) -> dict[str, tuple]:
    """Every path under `root`: type, mode (with setuid, setgid, sticky), owner, link target, content
    hash, user xattrs, and the other names of its inode (hard links)."""
    entries, inodes = {}, {}
    for directory, subdirectories, files in os.walk(root):
        for name in ["", *subdirectories, *files] if directory == str(root) else [*subdirectories, *files]:
            path = Path(directory) / name
            st = path.lstat()
            relative = os.path.relpath(path, root)
            inodes.setdefault(st.st_ino, []).append(relative)
            kind = stat.S_IFMT(st.st_mode)
            entries[relative] = [
                kind, oct(stat.S_IMODE(st.st_mode)), st.st_uid, st.st_gid,
                os.readlink(path) if stat.S_ISLNK(st.st_mode) else None,
                hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(st.st_mode) else None,
                {} if stat.S_ISLNK(st.st_mode) else
                {x: os.getxattr(path, x) for x in os.listxattr(path) if x.startswith("user.")},
                st.st_ino]
    for entry in entries.values():  # the inode number itself differs between trees: keep the grouping
        entry[-1] = sorted(inodes[entry[-1]]) if len(inodes[entry[-1]]) > 1 else None
    return {path: tuple(entry) for path, entry in entries.items()}


def merged_tree(lowers: list[Path], scratch: Path) -> dict[str, tuple]:
    """In a child in a mount namespace of its own: the tree of the image's layers stacked by overlayfs."""
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    upper, work, target = scratch / "upper", scratch / "work", scratch / "merged"
    for path in (upper, work, target):
        path.mkdir(mode=0o755)
    rootfs.mount_overlay(lowers, upper, work, target)
    try:
        return tree(target)
    finally:
        rootfs.unmount(target)


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_the_engine_unpacks_umoci_layouts_as_umoci_does(umoci_layouts, workdir, root, compression):
    layout = umoci_layouts[compression]
    assert load(root, layout) == ["umoci:latest"]
    store = ImageStore(root)
    image = store.get("umoci")
    assert [layer.media_type for layer in image.manifest.layers] == [
        oci.OCI_LAYER_GZIP if compression == "gzip" else oci.OCI_LAYER_ZSTD] * 3
    ours, theirs = Path(tempfile.mkdtemp(dir=workdir)), Path(tempfile.mkdtemp(dir=workdir)) / "rootfs"
    for layer, diff_id in zip(image.manifest.layers, image.image_config["rootfs"]["diff_ids"], strict=True):
        with open(store.blob_path(layer.digest), "rb") as blob:
            apply_layer(blob, ours, image="umoci", layer=layer.digest, diff_id=diff_id)
    umoci("raw", "unpack", "--image", f"{umoci_layouts['gzip']}:umoci", str(theirs))  # umoci 0.4: no zstd
    engine, reference = tree(ours), tree(theirs)
    differences = {path: {"engine": engine.get(path), "umoci": reference.get(path)}
                   for path in sorted(set(engine) | set(reference))
                   if engine.get(path) != reference.get(path)}
    assert differences == {}
    # The tree a container sees: the store's layers (overlay form) stacked by overlayfs.
    merged = run_in_child(merged_tree, image.layers, Path(tempfile.mkdtemp(dir=workdir)))
    differences = {path: {"overlay": merged.get(path), "umoci": reference.get(path)}
                   for path in sorted(set(merged) | set(reference))
                   if merged.get(path) != reference.get(path)}
    assert differences == {}
    # What the layers did, so that two empty trees cannot pass:
    assert {"etc/motd", "etc/dropped", "bin/su", "srv/shared", "srv/fifo"}.isdisjoint(engine)
    assert engine["srv/new"][0] == stat.S_IFREG and engine["srv"][1] == oct(0o711)  # the opaque layer's
    assert engine["etc/becomes-dir"][0] == stat.S_IFDIR and engine["etc/relative"][0] == stat.S_IFREG
    assert engine["etc/absolute"][4] == "/etc/config" and engine["etc/dangling"][4] == "../nowhere"
    assert engine["bin/wall"][1:4] == (oct(0o2755), 5, 5)
    assert engine["home/user"][1:4] == (oct(0o700), 1000, 1000)
    assert engine["bin/tool"][7] == ["bin/tool", "bin/tool-again"]
    assert engine["etc/config"][1] == oct(0o600) and engine["etc/config"][6] == {"user.mc.note": b"layer two"}
    assert engine["etc/config"][7] == ["etc/config", "etc/config-again"]
