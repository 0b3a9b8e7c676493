"""Unpacking one gzip layer of ~100 MB: the engine against `tar -xzf` and `umoci raw unpack` (issue 4).

    sudo .venv/bin/python -m benchmarks.bench_unpack [--layer FILE] [--rounds 5] [--workdir DIR] [--profile]

The goal it checks: the engine's throughput is at least 0.9x that of `tar -xzf` on the same file, and
above umoci's. Run it from the repository's root, as root (the unpack chowns every file).

The layer: `--layer FILE` (a gzip-compressed tar), else the largest layer of the store's `debian` image
(`minictl bootstrap debian`: a Debian minbase, ~128 MB of tar in ~6,700 entries, which is what a real
base layer looks like: many small files, a few large ones), else a tar of the first ~100 MiB of /usr
(files of up to 4 MiB), gzipped at level 6 (Go's and so docker's default).

Three contenders unpack that same file, from the page cache, into fresh directories of one filesystem:
- engine: `image.unpack.commit_layer`, in this process: the store's own path (unpack into a work
  directory, check the DiffID, rename into place), with every safety check on;
- tar: `tar -xzf LAYER -C DIR` (GNU tar, as root: owners and modes kept). `-z` starts gzip as a second
  process, so inflating and writing already run on two cores;
- umoci: `umoci raw unpack --image LAYOUT:bench DIR`, from an OCI layout built here around the same blob
  (umoci verifies the blob's digest and resolves each path inside the root, as the engine does).

`os.sync()` runs before each timed run, so that no contender pays for the writeback of the one before
it. The outputs are all kept until the end (about 3 x (rounds + 1) times the tar's size): on ext4,
creating files right after thousands were deleted is several times slower (the inode allocator checks
each recently freed inode, `recently_deleted()` in fs/ext4/ialloc.c, for ~30 s), and whoever ran after
a deletion would pay for it. After the rounds, the warm-up round's three trees are compared (entries
and bytes). Throughput is uncompressed bytes (the tar's size) per second. Beside the wall time, each
run's CPU time is taken (user + system, of all the threads and processes of the contender): on a
shared machine wall times move with the load, CPU times much less. `--profile` adds one profiled
engine unpack (pyinstrument if installed, else cProfile) to see where the time goes.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import (
    Contender,
    alternate,
    interpreter,
    machine,
    ratio,
    require_root,
    require_tool,
    seconds,
    spread,
    table,
    version,
)
from mini_container.errors import ContainerError
from mini_container.image import unpack
from mini_container.image.store import ImageStore
from mini_container.locations import engine_root

TARGET_BYTES = 100 * 2**20  # of uncompressed file data, when the layer is built from /usr
MAX_FILE = 4 * 2**20  # and bigger files left out: a base layer is mostly small files
GOAL_VS_TAR = 0.9  # the engine's throughput over tar's, at least
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass
class Layer:
    """The layer under test: where its blob is, and what it holds."""

    path: Path  # the gzip blob (inside the OCI layout built for umoci)
    origin: str
    digest: str  # sha256 of the compressed blob
    diff_id: str  # sha256 of the uncompressed tar
    size: int  # bytes of the uncompressed tar


def main(argv: list[str] | None = None) -> int:
    options = parse(argv)
    require_root()
    interpreter()
    require_tool("tar", "tar")
    require_tool("umoci", "umoci")
    work = Path(tempfile.mkdtemp(prefix="mini-bench-unpack-", dir=options.workdir))
    try:
        source, origin = find_layer(options, work)
        layer = make_layout(source, origin, work / "layout")
        report_setup(layer, work)
        cpu: dict[str, list[float]] = {"engine": [], "tar": [], "umoci": []}  # seconds, warm-up first
        contenders = [Contender("engine", lambda n: engine(layer, work / f"engine-{n}", cpu["engine"])),
                      Contender("tar", lambda n: tar(layer, work / f"tar-{n}", cpu["tar"])),
                      Contender("umoci", lambda n: umoci(layer, work / f"umoci-{n}", cpu["umoci"]))]
        check_space(layer, work, options.rounds)
        alternate(contenders, options.rounds, between=os.sync)
        check_same_output(work)
        report(layer, contenders, {name: times[-options.rounds:] for name, times in cpu.items()})
        if options.profile:
            profile(layer, work / "profiled")
    finally:
        shutil.rmtree(work)
    return 0


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench_unpack", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layer", type=Path, help="a gzip-compressed layer (default: the debian image's)")
    parser.add_argument("--root", default=str(engine_root()), help="the image store to take the layer from")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, after one warm-up round")
    parser.add_argument("--workdir", default="/var/tmp",
                        help="where the outputs go (one filesystem for all three; default /var/tmp)")
    parser.add_argument("--profile", action="store_true", help="profile one more engine unpack")
    return parser.parse_args(argv)


# --- the layer ------------------------------------------------------------------------------------


def find_layer(options: argparse.Namespace, work: Path) -> tuple[Path, str]:
    """The gzip blob to unpack, and a line saying where it comes from."""
    if options.layer is not None:
        return options.layer, f"{options.layer} (--layer)"
    try:
        image = ImageStore(options.root).get("debian")
    except ContainerError:
        return build_layer_from_usr(work / "usr.tar.gz"), "a tar of /usr (no debian image in the store)"
    store = ImageStore(options.root)
    biggest = max(image.manifest.layers, key=lambda descriptor: descriptor.size)
    return store.blob_path(biggest.digest), f"the largest layer of {image.reference} in {options.root}"


def build_layer_from_usr(path: Path) -> Path:
    """A gzip tar (level 6) of /usr's directories, links and files of up to MAX_FILE, to TARGET_BYTES."""
    print(f"building {path} from /usr ...", file=sys.stderr, flush=True)
    total = 0
    with gzip.open(path, "wb", compresslevel=6) as compressed, \
            tarfile.open(fileobj=compressed, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for directory, dirs, files in os.walk("/usr"):
            dirs.sort()
            for name in [".", *sorted(files)]:
                if total >= TARGET_BYTES:
                    return path
                full = os.path.normpath(os.path.join(directory, name))
                try:
                    info = tar.gettarinfo(full, arcname=full.lstrip("/"))
                    if info.isreg() and info.size <= MAX_FILE:
                        with open(full, "rb") as data:
                            tar.addfile(info, data)
                        total += info.size
                    elif info.isdir() or info.issym() or info.islnk():
                        tar.addfile(info)
                except OSError:
                    continue  # unreadable, or gone since the walk listed it
    return path


def make_layout(source: Path, origin: str, layout: Path) -> Layer:
    """An OCI image layout holding one image, 'bench', of the one layer: what umoci reads."""
    if not _is_gzip(source):
        raise SystemExit(f"{source} is not gzip-compressed: the benchmark compares gzip layers")
    blobs = layout / "blobs" / "sha256"
    blobs.mkdir(parents=True)
    digest, diff_id, size = _digests(source)
    path = blobs / digest.removeprefix("sha256:")
    shutil.copyfile(source, path)
    config = _put_json(blobs, {"architecture": _oci_arch(), "os": "linux", "config": {},
                               "rootfs": {"type": "layers", "diff_ids": [diff_id]}})
    manifest = _put_json(blobs, {"schemaVersion": 2, "mediaType": MANIFEST,
                                 "config": {"mediaType": CONFIG, **config},
                                 "layers": [{"mediaType": LAYER, "digest": digest,
                                             "size": path.stat().st_size}]})
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": MANIFEST, **manifest, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    return Layer(path, origin, digest, diff_id, size)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _digests(path: Path) -> tuple[str, str, int]:
    """sha256 of the blob, sha256 of its uncompressed tar (the DiffID), and the tar's size."""
    compressed, uncompressed, size = hashlib.sha256(), hashlib.sha256(), 0
    with open(path, "rb") as raw:
        while chunk := raw.read(1 << 20):
            compressed.update(chunk)
    with gzip.open(path, "rb") as tar:
        while chunk := tar.read(1 << 20):
            uncompressed.update(chunk)
            size += len(chunk)
    return f"sha256:{compressed.hexdigest()}", f"sha256:{uncompressed.hexdigest()}", size


def _put_json(blobs: Path, document: dict) -> dict:
    data = json.dumps(document).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def _oci_arch() -> str:
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


# --- the contenders -------------------------------------------------------------------------------
# Each does one unpack into a fresh `target`, appends the CPU time it took to `cpu` and returns its wall
# time; the outputs stay until the end.


def engine(layer: Layer, target: Path, cpu: list[float]) -> float:
    with open(layer.path, "rb") as blob:
        start, used = time.perf_counter(), _cpu(resource.RUSAGE_SELF)  # this process: all its threads
        unpack.commit_layer(blob, target, image="bench", layer=layer.digest, diff_id=layer.diff_id)
        cpu.append(_cpu(resource.RUSAGE_SELF) - used)
        return time.perf_counter() - start


def tar(layer: Layer, target: Path, cpu: list[float]) -> float:
    target.mkdir()
    return _command(["tar", "-xzf", str(layer.path), "-C", str(target)], cpu)


def umoci(layer: Layer, target: Path, cpu: list[float]) -> float:
    return _command([*_umoci_unpack(layer), str(target)], cpu)


def _umoci_unpack(layer: Layer) -> list[str]:
    return ["umoci", "--log", "error", "raw", "unpack", "--image", f"{layer.path.parents[2]}:bench"]


def _command(argv: list[str], cpu: list[float]) -> float:
    start, used = time.perf_counter(), _cpu(resource.RUSAGE_CHILDREN)  # the waited-for children: tar, gzip
    subprocess.run(argv, check=True)
    cpu.append(_cpu(resource.RUSAGE_CHILDREN) - used)
    return time.perf_counter() - start


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def check_space(layer: Layer, work: Path, rounds: int) -> None:
    """Refuse to start if the outputs, all kept until the end, would not fit."""
    needed = 3 * (rounds + 1) * layer.size * 1.1  # a little for directories and inode tables
    free = shutil.disk_usage(work).free
    if free < needed:
        raise SystemExit(f"{work} has {free / 1e9:.1f} GB free; {rounds} rounds need about "
                         f"{needed / 1e9:.1f} GB (--rounds fewer, or --workdir elsewhere)")


def check_same_output(work: Path) -> None:
    """Compare what the three wrote in the warm-up round: the count of entries and of bytes."""
    counts = {name: _count(work / f"{name}-0") for name in ("engine", "tar", "umoci")}
    if len(set(counts.values())) != 1:
        print(f"warning: the contenders wrote different trees (entries, bytes): {counts}", file=sys.stderr)


def _count(root: Path) -> tuple[int, int]:
    entries = size = 0
    for directory, dirs, files in os.walk(root):
        entries += len(dirs) + len(files)
        size += sum(os.lstat(os.path.join(directory, name)).st_size for name in files)
    return entries, size


# --- the report -----------------------------------------------------------------------------------


def report_setup(layer: Layer, work: Path) -> None:
    compressed = layer.path.stat().st_size
    print(f"layer: {layer.origin}\n  {compressed / 1e6:.1f} MB gzip, {layer.size / 1e6:.1f} MB of tar, "
          f"blob {layer.digest[:19]}..., DiffID {layer.diff_id[:19]}...")
    for line in machine({"outputs": work}):
        print(line)
    try:
        import isal
        inflater = f"python-isal {isal.__version__}"
    except ImportError:
        inflater = "zlib (python-isal is not installed)"
    print(f"tools: {version(['tar', '--version'])}; {version(['umoci', '--version'])}; engine inflater: "
          f"{inflater}", flush=True)


def report(layer: Layer, contenders: list[Contender], cpu: dict[str, list[float]]) -> None:
    rows = [(c.name, seconds(c.times), spread(c.times), f"{layer.size / 1e6 / c.median:.0f}",
             seconds(cpu[c.name])) for c in contenders]
    print()
    print(table(rows, ["contender", "median s", "min-max s", "MB/s (of tar)", "CPU s"]))
    engine_, tar_, umoci_ = contenders
    of_medians, paired = ratio(tar_, engine_)
    met = "met" if of_medians >= GOAL_VS_TAR else "NOT met"
    print(f"\nengine/tar throughput: {of_medians:.2f}x (median of per-round ratios {paired:.2f}x); "
          f"goal >= {GOAL_VS_TAR}x: {met}")
    of_medians, paired = ratio(umoci_, engine_)
    met = "met" if of_medians > 1 else "NOT met"
    print(f"engine/umoci throughput: {of_medians:.2f}x (median of per-round ratios {paired:.2f}x); "
          f"goal > 1x: {met}")


def profile(layer: Layer, target: Path) -> None:
    """One more engine unpack under a profiler: where the time goes, function by function."""
    def run() -> None:
        with open(layer.path, "rb") as blob:
            unpack.commit_layer(blob, target, image="bench", layer=layer.digest, diff_id=layer.diff_id)
    os.sync()
    try:
        from pyinstrument import Profiler
    except ImportError:
        import cProfile
        import pstats
        profiler = cProfile.Profile()
        profiler.runcall(run)
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
    else:
        profiler = Profiler(interval=0.001)
        profiler.start()
        run()
        profiler.stop()
        print(profiler.output_text(unicode=False, color=False))
    shutil.rmtree(target)


if __name__ == "__main__":
    sys.exit(main())
