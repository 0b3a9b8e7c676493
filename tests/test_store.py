"""The image store on the real filesystem: verified blob writes, layers committed once by ChainID and
shared, rmi and prune, the lock between two processes, refused manifests that leave nothing behind, a
120-layer image mounted with overlayfs, and the image commands of minictl."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from helpers import REPO, minictl, mounts_under
from malicious_layers import directory, file, tar

from mini_container import rootfs, syscalls
from mini_container.errors import ContainerError, ImageNotFoundError, InvalidArgumentError
from mini_container.image import oci
from mini_container.image.bootstrap import bootstrap_busybox
from mini_container.image.layer_stream import LayerError
from mini_container.image.store import ImageStore
from mini_container.namespaces import run_in_child
from mini_container.runtime.containers import ContainerStore


@pytest.fixture
def root():
    """A private store root under /tmp (short, like /var/lib/mini-container), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mc-", dir="/tmp"))
    yield path
    leftovers = mounts_under(path)
    shutil.rmtree(path)
    assert leftovers == [], f"mounts left behind: {leftovers}"


@pytest.fixture
def store(root) -> ImageStore:
    return ImageStore(root)


@pytest.fixture
def busybox_root(root) -> Path:
    """A private root holding busybox:latest, for commands that change the store."""
    bootstrap_busybox(ImageStore(root))
    return root


def put_image(store: ImageStore, layers: list[bytes], *, diff_ids: list[str] | None = None,
              layer_type: str = oci.OCI_LAYER, config_type: str = oci.OCI_CONFIG,
              missing: int | None = None) -> str:
    """Write uncompressed layer blobs, a config and a manifest; return the manifest's digest.
    `missing`: the index of a layer whose blob is named but not written."""
    descriptors = []
    for index, data in enumerate(layers):
        digest = oci.sha256_digest(data) if index == missing else store.write_blob([data])
        descriptors.append({"mediaType": layer_type, "digest": digest, "size": len(data)})
    config = {"architecture": "amd64", "os": "linux", "config": {"Cmd": ["sh"]},
              "rootfs": {"type": "layers", "diff_ids": diff_ids or [oci.sha256_digest(d) for d in layers]},
              "history": [{"created_by": f"layer {n}"} for n in range(len(layers))]}
    config_data = json.dumps(config).encode()
    manifest = {"schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
                "config": {"mediaType": config_type, "digest": store.write_blob([config_data]),
                           "size": len(config_data)},
                "layers": descriptors}
    return store.write_blob([json.dumps(manifest).encode()])


def contents(path: Path) -> set[str]:
    return {p.name for p in path.iterdir()} if path.is_dir() else set()


WRONG = "sha256:" + "1" * 64  # a DiffID that no layer here has
BASE = tar(directory("etc"), file("etc/base", b"base"))
APP = tar(file("app", b"app"))
TOOL = tar(file("tool", b"tool"))


# --- blobs ------------------------------------------------------------------------------------------

def test_write_blob_verifies_and_renames_into_place(store):
    data = b"hello layer"
    digest = store.write_blob([data[:5], data[5:]], oci.sha256_digest(data), len(data))
    assert digest == oci.sha256_digest(data) and store.has_blob(digest)
    assert store.blob_path(digest).read_bytes() == data
    assert store.blob_path(digest).stat().st_mode & 0o777 == 0o444  # a blob never changes
    assert contents(store.blobs_dir) == {digest[7:]}


@pytest.mark.parametrize("expected_size, message", [(None, "expected sha256:"), (5, "more than the 5 bytes"),
                                                    (50, "11 bytes received")])
def test_write_blob_refuses_a_wrong_digest_or_size_and_leaves_nothing(store, expected_size, message):
    wrong = oci.sha256_digest(b"something else")
    with pytest.raises(oci.DigestMismatchError) as raised:
        store.write_blob([b"hello layer"], wrong if expected_size is None else None, expected_size)
    assert message in str(raised.value) and "nothing was stored" in str(raised.value)
    if expected_size is None:
        assert f"has digest {oci.sha256_digest(b'hello layer')}, expected {wrong}" in str(raised.value)
    assert contents(store.blobs_dir) == set()  # no temporary file, no blob


def test_a_writer_that_fails_midway_leaves_no_partial_blob(store):
    def chunks():
        yield b"first half"
        raise ConnectionResetError("the registry hung up")

    with pytest.raises(ConnectionResetError):
        store.write_blob(chunks())
    assert contents(store.blobs_dir) == set()


def test_write_blob_refuses_a_digest_that_is_not_sha256(store):
    with pytest.raises(oci.InvalidImageError, match="only sha256"):
        store.write_blob([b"x"], "sha512:" + "0" * 128)


# --- layers by ChainID ------------------------------------------------------------------------------

def test_import_unpacks_layers_once_and_shares_them_by_chain_id(store):
    app = store.import_image("app:1", put_image(store, [BASE, APP]))
    tool = store.import_image("tool:1", put_image(store, [BASE, TOOL]))
    assert app.layers[0] == tool.layers[0]  # same ChainID: one directory
    assert len(contents(store.layers_dir)) == 3
    assert (app.layers[1] / "app").read_bytes() == b"app" and (app.layers[0] / "etc/base").exists()
    assert app.chain[1].chain_id == oci.chain_ids([oci.sha256_digest(BASE), oci.sha256_digest(APP)])[1]
    assert app.chain[1].parent == app.chain[0].chain_id == oci.sha256_digest(BASE)
    # The same content on another base is another stack: a ChainID of its own, a directory of its own.
    flipped = store.import_image("flipped:1", put_image(store, [APP, BASE]))
    assert not set(flipped.layers) & set(app.layers) and len(contents(store.layers_dir)) == 5


def test_layer_directories_are_short_prefixes_of_their_chain_ids(store):
    image = store.import_image("app:1", put_image(store, [BASE, APP]))
    for layer in image.chain:
        assert len(layer.directory.name) == 4 and layer.chain_id[7:].startswith(layer.directory.name)


def test_import_of_an_image_the_store_holds_adds_only_the_name(store):
    digest = put_image(store, [BASE, APP])
    first = store.import_image("app:1", digest)
    before = {p: p.stat().st_ino for p in first.layers}
    second = store.import_image("app:latest", digest)
    assert {p: p.stat().st_ino for p in second.layers} == before
    assert sorted(second.repo_tags) == ["app:1", "app:latest"] and second.id == first.id


def test_get_by_name_full_reference_digest_and_id_prefix(store):
    image = store.import_image("127.0.0.1:5000/team/app:v1", put_image(store, [BASE, APP]))
    assert image.reference == "127.0.0.1:5000/team/app:v1" and image.name == "127.0.0.1:5000/team/app"
    for name in ("127.0.0.1:5000/team/app:v1", f"127.0.0.1:5000/team/app@{image.digest}", image.id,
                 image.id[7:19], image.id[:11]):
        assert store.get(name).digest == image.digest, name
    untagged = store.import_image(None, put_image(store, [TOOL]))
    assert untagged.reference == untagged.id[7:19] and untagged.tag is None
    assert store.get(untagged.reference).digest == untagged.digest


@pytest.mark.parametrize("name, hint", [
    ("busybox:1.36", "'minictl bootstrap busybox' builds busybox:latest"),
    ("debian", "'minictl bootstrap debian'"),
    ("team/app:v2", "load it (minictl load -i FILE) or pull it (minictl pull team/app:v2)"),
])
def test_a_missing_image_names_how_to_get_it(store, name, hint):
    with pytest.raises(ImageNotFoundError) as raised:
        store.get(name)
    assert hint in str(raised.value) and "\n" not in str(raised.value)


def test_a_reference_that_does_not_parse_is_refused(store):
    with pytest.raises(InvalidArgumentError, match="invalid image reference"):
        store.get("Not An Image!")


# --- bad images leave nothing behind ----------------------------------------------------------------

def assert_nothing_imported(store: ImageStore) -> None:
    assert store.list() == []
    assert contents(store.layers_dir) == set() and contents(store.layerdb_dir) == set()
    assert contents(store.images_dir) == set()


def test_a_manifest_naming_a_missing_blob_is_refused(store):
    manifest = put_image(store, [BASE, APP], missing=1)
    with pytest.raises(oci.InvalidImageError) as raised:
        store.import_image("app:1", manifest)
    assert f"names layer 2 blob {oci.sha256_digest(APP)}, which the store does not hold" in str(raised.value)
    assert_nothing_imported(store)


@pytest.mark.parametrize("kind, message", [
    ("layer", "layer 1 has unknown media type 'application/vnd.example.wasm'"),
    ("config", "config of unknown media type 'application/vnd.example.wasm'"),
])
def test_an_unknown_media_type_in_a_required_place_is_refused(store, kind, message):
    options = {"layer_type": "application/vnd.example.wasm"} if kind == "layer" else \
        {"config_type": "application/vnd.example.wasm"}
    with pytest.raises(oci.InvalidImageError, match=message):
        store.import_image("app:1", put_image(store, [BASE], **options))
    assert_nothing_imported(store)


def test_an_index_is_refused_with_its_platforms(store):
    index = {"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [
        {"mediaType": oci.OCI_MANIFEST, "digest": put_image(store, [BASE]), "size": 1,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]}
    with pytest.raises(oci.InvalidImageError, match=r"is an image index \(linux/arm64/v8\)"):
        store.import_image("app:1", store.write_blob([json.dumps(index).encode()]))
    assert_nothing_imported(store)


def test_a_diff_id_mismatch_rolls_back_every_layer_of_the_import(store):
    wrong = [oci.sha256_digest(BASE), oci.sha256_digest(b"not the app layer")]
    with pytest.raises(LayerError) as raised:
        store.import_image("app:1", put_image(store, [BASE, APP], diff_ids=wrong))
    assert "the image config expects" in str(raised.value) and "\n" not in str(raised.value)
    assert_nothing_imported(store)  # layer 1 was committed, then removed with the failed import
    assert not [p for p in store.layers_dir.iterdir() if p.name.startswith(".")]


def test_a_failed_import_keeps_the_layers_other_images_use(store):
    good = store.import_image("base:1", put_image(store, [BASE]))
    with pytest.raises(LayerError):
        store.import_image("app:1", put_image(store, [BASE, APP], diff_ids=[good.chain[0].diff_id, WRONG]))
    assert good.layers[0].is_dir() and [i.reference for i in store.list()] == ["base:1"]


# --- removing ---------------------------------------------------------------------------------------

def test_rmi_keeps_shared_layers_and_deletes_the_rest(store):
    app = store.import_image("app:1", put_image(store, [BASE, APP]))
    tool = store.import_image("tool:1", put_image(store, [BASE, TOOL]))
    done = store.remove("app:1")
    assert done[0] == "Untagged: app:1" and f"Deleted: {app.id}" in done
    assert app.layers[0].is_dir() and not app.layers[1].exists()
    assert not store.has_blob(app.digest) and store.has_blob(tool.digest)
    store.remove("tool:1")
    assert contents(store.layers_dir) == set() and contents(store.blobs_dir) == set()


def test_rmi_of_one_name_keeps_the_image_and_by_id_needs_force(store):
    image = store.import_image("app:1", put_image(store, [BASE]))
    store.tag("app:1", "app:2")
    with pytest.raises(ContainerError, match=r"several names \(app:1, app:2\).*rmi -f"):
        store.remove(image.id[7:19])
    assert store.remove("app:2") == ["Untagged: app:2"] and store.get("app:1").layers[0].is_dir()
    store.tag("app:1", "app:3")
    assert store.remove(image.id, force=True)[:2] == ["Untagged: app:1", "Untagged: app:3"]
    assert_nothing_imported(store)


def test_prune_removes_untagged_images_and_what_crashed_writers_left(store):
    kept = store.import_image("app:1", put_image(store, [BASE, APP]))
    dangling = store.import_image(None, put_image(store, [TOOL]))
    used = store.import_image(None, put_image(store, [tar(file("used"))]))
    stray = store.write_blob([b"a blob no image names"])
    (store.layers_dir / "dead").mkdir()  # unpacked by a process killed before it recorded the layer
    (store.layers_dir / ".dead.unpacking-1234").mkdir()
    dead_pid = _a_dead_pid()
    (store.blobs_dir / f".partial-{dead_pid}-x").write_bytes(b"half a download")
    (store.blobs_dir / f".partial-{os.getpid()}-y").write_bytes(b"a download in progress")

    pruned = store.prune(keep={used.id})
    assert pruned.images == [dangling.digest]
    assert dangling.chain[0].chain_id in pruned.layers and "dead" in pruned.layers
    assert stray in pruned.blobs and f".partial-{dead_pid}-x" in pruned.blobs
    assert pruned.reclaimed >= len(TOOL)
    assert contents(store.layers_dir) == {p.name for p in kept.layers + used.layers}
    assert store.get(kept.id).layers == kept.layers and store.get(used.id).digest == used.digest
    assert f".partial-{os.getpid()}-y" in contents(store.blobs_dir)  # its writer is alive: kept
    assert store.prune(keep={used.id}).images == []


def _a_dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# --- two processes at once --------------------------------------------------------------------------

def test_the_lock_keeps_a_second_process_out(store):
    code = f"from mini_container.image.store import ImageStore as S\nwith S({str(store.root)!r}).lock(): 0"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with store.lock():
        child = subprocess.Popen([sys.executable, "-c", code], env=env)
        time.sleep(1)
        assert child.poll() is None  # blocked in flock(LOCK_EX)
        inode = os.stat(store.root / "lock").st_ino
        with open("/proc/locks") as locks:
            held = [line for line in locks if f":{inode} " in line]
        assert any(f"FLOCK  ADVISORY  WRITE {os.getpid()} " in line for line in held), held
    assert child.wait(timeout=10) == 0


def test_two_processes_importing_one_image_commit_each_layer_once(store):
    many = tar(directory("many"), *(file(f"many/{n}", b"x" * n) for n in range(300)))
    manifest = put_image(store, [BASE, many, APP])
    code = (f"from mini_container.image.store import ImageStore\n"
            f"print(ImageStore({str(store.root)!r}).import_image('app:1', {manifest!r}).layers)")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    children = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True)
                for _ in range(2)]
    outputs = [child.communicate(timeout=120)[0] for child in children]
    assert [child.returncode for child in children] == [0, 0]
    assert outputs[0] == outputs[1]  # both see the same directories
    assert len(contents(store.layers_dir)) == 3 and len(contents(store.layerdb_dir)) == 3
    assert len(os.listdir(store.layers_dir / store.get("app:1").layers[1].name / "many")) == 300


# --- a long chain under one mount option page -------------------------------------------------------

def _mount_and_list(lowers: list[Path], upper: Path, work: Path, target: Path) -> list[str]:
    syscalls.unshare(syscalls.CLONE_NEWNS)
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    rootfs.mount_overlay(lowers, upper, work, target)
    try:
        return sorted(os.listdir(target))
    finally:
        rootfs.unmount(target)


def test_an_image_of_120_layers_mounts_with_overlayfs(store, root):
    layers = [tar(file(f"f{n}", str(n).encode())) for n in range(119)] + [tar(file(".wh.f0", b""))]
    image = store.import_image("tall:1", put_image(store, layers))
    assert len(image.layers) == 120 and len(set(image.layers)) == 120
    upper, work, target = root / "upper", root / "work", root / "merged"
    for path in (upper, work, target):
        path.mkdir()
    options = (f"lowerdir={':'.join(str(p) for p in reversed(image.layers))},upperdir={upper},"
               f"workdir={work}")
    assert len(options) < 4096  # it fits mount(2)'s one page
    assert len(options) + 120 * 60 > 4096  # and would not with ChainIDs (64 hex digits) as names
    listing = run_in_child(_mount_and_list, image.layers, upper, work, target)
    assert listing == sorted(f"f{n}" for n in range(1, 119))  # f0 deleted by the whiteout of the top layer
    assert mounts_under(root) == []


# --- minictl ----------------------------------------------------------------------------------------

def test_minictl_images_lists_like_docker(busybox_root):
    result = minictl(busybox_root, "images")
    header, row = result.stdout.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "IMAGE", "ID", "CREATED", "SIZE"]
    image = ImageStore(busybox_root).get("busybox")
    assert row.split()[:3] == ["busybox", "latest", image.id[7:19]] and row.endswith("MB")
    assert minictl(busybox_root, "image", "ls", "-q").stdout == f"{image.id[7:19]}\n"


def test_minictl_image_inspect_shows_config_history_layers_and_sizes(busybox_root):
    result = minictl(busybox_root, "image", "inspect", "busybox")
    assert result.returncode == 0, result.stderr
    [shown] = json.loads(result.stdout)
    image = ImageStore(busybox_root).get("busybox")
    assert shown["Id"] == image.id and shown["RepoTags"] == ["busybox:latest"]
    assert shown["RepoDigests"] == [f"busybox@{image.digest}"]
    assert shown["Config"]["Cmd"] == ["sh"]
    assert shown["RootFS"]["diff_ids"] == [layer.diff_id for layer in image.chain]
    assert [h.get("empty_layer", False) for h in shown["History"]] == [False, False, True]
    assert shown["Size"] == sum(layer["Size"] for layer in shown["Layers"]) > 1_000_000
    assert [layer["Directory"] for layer in shown["Layers"]] == [str(p) for p in image.layers]
    assert all(layer["BlobSize"] < layer["Size"] for layer in shown["Layers"])  # gzip-compressed blobs


def test_minictl_rmi_and_prune(busybox_root):
    assert minictl(busybox_root, "image", "prune").stdout == "Total reclaimed space: 0B\n"
    store = ImageStore(busybox_root)
    spec = ContainerStore(busybox_root).create(store.get("busybox"), ["true"], name="user")
    refused = minictl(busybox_root, "rmi", "busybox")
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert "is used by container user" in refused.stderr and "rmi -f" in refused.stderr
    ContainerStore(busybox_root).remove(spec.id)
    result = minictl(busybox_root, "image", "rm", "busybox")
    assert result.returncode == 0 and result.stdout.startswith("Untagged: busybox:latest\nDeleted: sha256:")
    assert contents(store.layers_dir) == set() and store.list() == []


@pytest.mark.parametrize("args, error", [
    (("rmi", "nosuch"), "minictl: image nosuch:latest not found in"),
    (("image", "inspect", "debian"), "'minictl bootstrap debian' builds debian:latest offline"),
    (("rmi", "Bad Name!"), "minictl: invalid image reference 'Bad Name!'"),
])
def test_minictl_image_errors_are_one_line(root, args, error):
    result = minictl(root, *args)
    assert result.returncode != 0 and result.stderr.count("\n") == 1 and error in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failed_import_releases_the_lock(store):
    with pytest.raises(oci.InvalidImageError):
        store.import_image("app:1", put_image(store, [BASE], missing=0))
    with open(store.root / "lock") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released: no BlockingIOError


def test_a_damaged_image_is_named_and_can_still_be_removed(busybox_root):
    store = ImageStore(busybox_root)
    shutil.rmtree(store.get("busybox").layers[1])  # a layer directory lost behind the store's back
    listed = minictl(busybox_root, "images")
    assert listed.returncode == 125 and listed.stderr.count("\n") == 1
    assert "is missing from the store: remove the image (minictl rmi)" in listed.stderr
    assert minictl(busybox_root, "rmi", "busybox").returncode == 0
    assert store.list() == [] and contents(store.layers_dir) == set()
