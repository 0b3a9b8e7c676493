"""Stage 3, the root filesystem, on the real kernel: through `minictl run`, and through the Stepper where
the diff of a step is the point.

What a test makes on the host (temp directories, a hostile image in a store of its own, containers) is
removed by fixtures, even when it fails; every mount lives in a container's mount namespace and dies
with it, and each test that could leak one checks the host's mount table.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import pytest
from helpers import minictl

from mini_container import cli, namespaces, rootfs
from mini_container import syscalls as sc
from mini_container.errors import ContainerError
from mini_container.image import bootstrap
from mini_container.image.store import ImageStore
from mini_container.runtime.containers import ContainerStore
from mini_container.runtime.spec import DEFAULT_MASKED_PATHS, DEFAULT_READONLY_PATHS, ContainerSpec, Mount
from mini_container.stepper import Stepper


def run(root: Path, *args: str, **kwargs):
    return minictl(root, "run", "--rm", *args, **kwargs)


def host_mount_table() -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return f.read().splitlines()


def mounts_inside(output: str) -> dict[str, tuple[str, str]]:
    """A container's /proc/self/mountinfo text -> {mount point: (fstype, per-mount options)}."""
    table = {}
    for line in output.splitlines():
        fields = line.split()
        if len(fields) > 6 and "-" in fields:
            table[fields[4]] = (fields[fields.index("-") + 1], fields[5])
    return table


@pytest.fixture
def scratch():
    """A temporary directory on the host, removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="rootfs-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def escape_name():
    """A name for the host's /NAME that a mis-resolved mount would create; removed if a failure made it."""
    name = f"mini-container-escape-{os.getpid()}"
    assert not os.path.exists(f"/{name}")
    yield name
    if os.path.isdir(f"/{name}") and not os.listdir(f"/{name}"):
        os.rmdir(f"/{name}")


@pytest.fixture
def build(engine_root):
    """Stepper builds of busybox containers whose output is captured; every container removed afterwards."""
    containers, made, builds = ContainerStore(engine_root), [], []

    def make(command: list[str], **fields) -> tuple[Stepper, ContainerSpec, tempfile.TemporaryFile]:
        spec = containers.create(ImageStore(engine_root).get("busybox"), command)
        made.append(spec)
        for key, value in fields.items():
            setattr(spec, key, value)
        output = tempfile.TemporaryFile()
        spec.stdout = output.fileno()
        stepper = Stepper(spec)
        builds.append((stepper, output))
        return stepper, spec, output

    yield make
    for stepper, output in builds:
        stepper.close()
        output.close()
    for spec in made:
        containers.remove(spec.id, force=True)
    assert not any(spec.directory.exists() for spec in made)


def finish(stepper: Stepper, output) -> tuple[int, str]:
    """Run the remaining steps, wait, and return the exit code and what the container wrote."""
    stepper.run_all()
    code = stepper.wait()
    output.seek(0)
    return code, output.read().decode()


# --- what the container sees ------------------------------------------------------------------------

def test_masked_paths_read_as_nothing(engine_root):
    """/dev/null over each masked file, an empty read-only tmpfs over each masked directory. Which of
    runc's paths exist depends on the kernel's configuration (/proc/kcore, /proc/sysrq-trigger may
    not): a missing one is skipped, so the test checks those the host has."""
    files = [p for p in DEFAULT_MASKED_PATHS if os.path.isfile(p)]
    directories = [p for p in DEFAULT_MASKED_PATHS if os.path.isdir(p)]
    assert files and directories, "expected /proc/keys and /sys/firmware at least on any kernel"
    script = [f'echo "{p} $(stat -c %t:%T {p}) $(wc -c < {p})"' for p in files]
    script += [f'echo "{p} $(ls -A {p} | wc -l) $(touch {p}/x 2>&1 | grep -c Read-only)"'
               for p in directories]
    script.append("cat /proc/self/mountinfo")
    result = run(engine_root, "busybox", "sh", "-c", "; ".join(script))
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stderr
    assert lines[:len(files)] == [f"{p} 1:3 0" for p in files]  # the null device, empty
    assert lines[len(files):len(files) + len(directories)] == [f"{p} 0 1" for p in directories]
    table = mounts_inside(result.stdout)
    assert all(table[p][0] == "tmpfs" and table[p][1].startswith("ro") for p in directories)


def test_readonly_paths_and_sys_refuse_writes(engine_root):
    present = [p for p in DEFAULT_READONLY_PATHS if os.path.exists(p)]
    files = [p for p in present if os.path.isfile(p)]  # /proc/sysrq-trigger, if the kernel has it
    script = ["echo 1 > /proc/sys/net/ipv4/ip_forward", "touch /sys/x"]
    # opens for writing, writes nothing: harmless even if it worked (`true`, not `:`, a special builtin
    # whose failed redirection would end the shell before the mount table is printed)
    script += [f"true > {p}" for p in files]
    result = run(engine_root, "busybox", "sh", "-c", "; ".join(script) + "; cat /proc/self/mountinfo")
    assert result.stderr.count("Read-only file system") == 2 + len(files), result.stderr
    table = mounts_inside(result.stdout)
    assert [p for p in present if not table[p][1].startswith("ro,")] == []
    assert table["/sys"][1].startswith("ro,") and table["/sys/fs/cgroup"][1].startswith("ro,")
    assert table["/proc"][1].startswith("rw,")  # only the listed paths, not all of /proc


def test_dev_holds_the_standard_nodes_and_links(engine_root):
    script = ("for n in null zero full random urandom tty; do echo $n $(stat -c %F:%t:%T /dev/$n); done; "
              "for l in fd stdin stdout stderr ptmx; do echo $l $(readlink /dev/$l); done; "
              "head -c 3 /dev/zero | wc -c; echo x > /dev/full; cat /proc/self/mountinfo")
    result = run(engine_root, "busybox", "sh", "-c", script)
    lines = result.stdout.splitlines()
    assert lines[:6] == ["null character special file:1:3", "zero character special file:1:5",
                         "full character special file:1:7", "random character special file:1:8",
                         "urandom character special file:1:9", "tty character special file:5:0"]
    assert lines[6:11] == ["fd /proc/self/fd", "stdin /proc/self/fd/0", "stdout /proc/self/fd/1",
                           "stderr /proc/self/fd/2", "ptmx pts/ptmx"]
    assert lines[11] == "3" and "No space left on device" in result.stderr
    table = mounts_inside(result.stdout)
    assert {p: table[p][0] for p in ("/dev", "/dev/pts", "/dev/shm", "/dev/mqueue")} == {
        "/dev": "tmpfs", "/dev/pts": "devpts", "/dev/shm": "tmpfs", "/dev/mqueue": "mqueue"}


def test_dev_mqueue_holds_the_queues_of_the_containers_own_ipc_namespace(engine_root, build):
    """A queue made in one running container is not in another's /dev/mqueue."""
    stepper, spec, output = build(["sh", "-c", "touch /dev/mqueue/first-queue; sleep 30"])
    stepper.run_all()
    queue = Path(f"/proc/{stepper.pid}/root/dev/mqueue/first-queue")  # the container's root, seen from here
    deadline = time.monotonic() + 10
    while not queue.exists():
        assert time.monotonic() < deadline, "the first container never made its queue"
        time.sleep(0.05)
    assert queue.read_text().startswith("QSIZE:0")  # an mqueue file: the queue's state, not data
    other = run(engine_root, "busybox", "sh", "-c", "ls -A /dev/mqueue; touch /dev/mqueue/q; ls /dev/mqueue")
    assert other.stdout == "q\n"


def test_bind_mounts_both_ways_and_read_only(engine_root, scratch):
    (scratch / "from-host").write_text("hello from the host\n")
    (scratch / "greeting").write_text("hi\n")
    result = run(engine_root, "-v", f"{scratch}:/data", "-v", f"{scratch}:/ro-data:ro",
                 "-v", f"{scratch}/greeting:/etc/new/greeting:ro", "busybox", "sh", "-c",
                 "cat /data/from-host /etc/new/greeting; echo written inside > /data/from-container; "
                 "touch /ro-data/refused; echo changed > /etc/new/greeting")
    assert result.stdout == "hello from the host\nhi\n"
    assert result.stderr.count("Read-only file system") == 2, result.stderr
    assert (scratch / "from-container").read_text() == "written inside\n"
    assert sorted(os.listdir(scratch)) == ["from-container", "from-host", "greeting"]
    assert (scratch / "greeting").read_text() == "hi\n"


def test_read_only_root_with_a_writable_tmpfs(engine_root):
    result = run(engine_root, "--read-only", "--tmpfs", "/tmp:size=1m,mode=1777", "busybox", "sh", "-c",
                 "touch /refused; touch /tmp/allowed && echo tmp is writable; cat /proc/self/mountinfo")
    assert "touch: /refused: Read-only file system" in result.stderr
    assert "tmp is writable" in result.stdout
    table = mounts_inside(result.stdout)
    assert table["/"][1].startswith("ro,")
    assert table["/tmp"][0] == "tmpfs" and table["/tmp"][1].startswith("rw,nosuid,nodev,noexec")
    assert table["/dev"][1].startswith("rw,")  # only / itself is read-only


@pytest.mark.parametrize("flags, message", [
    (["-v", "data:/data"], "the host path must be absolute"),
    (["-v", "{scratch}/missing:/data"], "does not exist on the host"),
    (["-v", "{scratch}:/data:rx"], "unknown option 'rx'"),
    (["-v", "{scratch}:/"], "the container path must be absolute, and not /"),
    (["--tmpfs", "tmp"], "the container path must be absolute"),
    (["-v", "{scratch}:/x", "--tmpfs", "/x/"], "duplicate mount point /x"),
])
def test_bad_mount_flags_are_refused_in_one_line(engine_root, scratch, capsys, flags, message):
    """Refused before anything is created (in-process: the command's main(), without its start-up time)."""
    containers = engine_root / "containers"
    before = sorted(os.listdir(containers)) if containers.is_dir() else []
    argv = [flag.format(scratch=scratch) for flag in flags]
    assert cli.main(["--root", str(engine_root), "run", "--rm", *argv, "busybox", "true"]) == 125
    stderr = capsys.readouterr().err
    assert stderr.count("\n") == 1 and message in stderr, stderr
    assert (sorted(os.listdir(containers)) if containers.is_dir() else []) == before


# --- mounts land inside the root, and nowhere else ---------------------------------------------------

def _busybox_entries(tar: tarfile.TarFile, mtime: float) -> None:
    for directory in ("bin", "proc", "sys", "dev", "tmp"):
        bootstrap.add_directory(tar, directory, mtime)
    bootstrap.add_host_path(tar, bootstrap.BUSYBOX, "bin/busybox")
    for applet in ("sh", "cat", "ls"):
        bootstrap.add_symlink(tar, f"bin/{applet}", "busybox", mtime)


def test_a_symlink_in_the_image_cannot_redirect_a_bind_mount_to_the_host(scratch, escape_name):
    """The image's /etc is a symlink to `/`. Resolved naively before pivot_root, `-v DIR:/etc/NAME` would
    mkdir and mount on the host's /NAME; resolved inside the root it lands on the container's /NAME."""
    name = escape_name
    store_root = scratch / "engine"

    def hostile(tar: tarfile.TarFile) -> None:
        _busybox_entries(tar, 0)
        bootstrap.add_symlink(tar, "etc", "/", 0)

    bootstrap.build_image(ImageStore(store_root), "hostile:latest",
                          [bootstrap.LayerBuild("busybox, and /etc -> /", hostile)],
                          {"Cmd": ["sh"], "Env": [f"PATH={bootstrap.PATH}"]}, "1970-01-01T00:00:00Z")
    (scratch / "volume").mkdir()
    (scratch / "volume" / "marker").write_text("the volume\n")
    before = host_mount_table()
    result = run(store_root, "-v", f"{scratch}/volume:/etc/{name}", "hostile", "sh", "-c",
                 f"cat /{name}/marker; ls -d /etc/{name}; cat /proc/self/mountinfo")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"the volume\n/etc/{name}\n")
    assert f"/{name}" in mounts_inside(result.stdout)  # the mount point is the container's /NAME
    assert not os.path.exists(f"/{name}")
    assert [line for line in host_mount_table() if line not in before and name in line] == []


def test_a_bundle_root_is_bound_onto_itself_and_mounts_stay_inside(scratch, build, escape_name):
    """An OCI bundle's root directory (root_path) instead of an overlay, with the same hostile symlink:
    the mount point is created inside the bundle's root, and the Stepper's diffs show each mount."""
    name = escape_name
    bundle_root = scratch / "bundle" / "rootfs"
    for directory in ("bin", "proc", "sys", "dev"):
        (bundle_root / directory).mkdir(parents=True)
    shutil.copy2(bootstrap.BUSYBOX, bundle_root / "bin" / "busybox")
    (bundle_root / "bin" / "cat").symlink_to("busybox")
    (bundle_root / "etc").symlink_to("/")
    (scratch / "volume").mkdir()
    (scratch / "volume" / "marker").write_text("the volume\n")
    stepper, spec, output = build(["cat", f"/etc/{name}/marker"], root_path=bundle_root,
                                  mounts=[Mount(f"/etc/{name}", "bind", str(scratch / "volume"), ["rbind"])])
    seen = {}
    stepper.start()
    while stepper.next_step.name != "exec":
        result = stepper.step()
        seen[result.name] = result.text
    assert "rootfs" not in seen
    assert f"on {bundle_root} (bind of " in seen["bundle_root"]  # the bind's root: the directory itself
    assert f"on {bundle_root}/{name} (bind of " in seen["mounts"] and "/volume)" in seen["mounts"]
    code, text = finish(stepper, output)
    assert (code, text) == (0, "the volume\n")
    assert (bundle_root / name).is_dir() and not os.path.exists(f"/{name}")
    assert [line for line in host_mount_table() if str(scratch) in line] == []


def test_nothing_the_build_mounts_reaches_the_host(scratch, build):
    """Paused just before execve, every mount of the container is in its own table and none in ours."""
    (scratch / "volume").mkdir()
    mounts = [Mount("/data", "bind", str(scratch / "volume"), ["rbind", "ro"]),
              Mount("/scratch", "tmpfs", "tmpfs", ["size=1m"]), Mount("/queues", "mqueue", "mqueue", [])]
    stepper, spec, output = build(["true"], mounts=mounts, readonly_rootfs=True)
    seen = {}
    stepper.start()
    while stepper.next_step.name != "exec":
        result = stepper.step()
        seen[result.name] = result.text
    order = ["dev", "mqueue", "mounts", "pivot_root", "readonly_paths", "masked_paths", "readonly_root"]
    assert [name for name in seen if name in order] == order
    assert "mounted mqueue on " in seen["mqueue"]
    assert "mounted tmpfs on /scratch" not in seen["mounts"]  # before pivot_root: host paths
    assert f"mounted tmpfs on {spec.rootfs}/scratch" in seen["mounts"]
    assert "mounted proc on /proc/sys (bind of /sys)" in seen["readonly_paths"]
    assert "mounted tmpfs on /proc/keys (bind of /null)" in seen["masked_paths"]
    assert "remounted /: rw,relatime -> ro,relatime" in seen["readonly_root"]
    with open(f"/proc/{stepper.pid}/mountinfo") as f:
        inside = mounts_inside(f.read())
    assert {"/data", "/scratch", "/queues", "/dev/mqueue"} <= set(inside)
    assert inside["/data"][1].startswith("ro,")
    leaked = [line for line in host_mount_table() if str(spec.directory) in line or str(scratch) in line]
    assert leaked == []
    assert finish(stepper, output) == (0, "")


def test_no_pivot_moves_the_root_and_chroots(build):
    stepper, spec, output = build(["sh", "-c", "cat /etc/os-release; ls /"], no_pivot=True)
    names = [step.name for step in stepper.plan]
    assert "move_root" in names and "pivot_root" not in names
    code, text = finish(stepper, output)
    assert code == 0 and "mini-container busybox" in text
    assert {"bin", "etc", "proc", "sys", "dev"} <= set(text.split())


def _escapes(change_root: str, root: Path) -> tuple[list[str], list[str] | None, int | None]:
    """In a mount namespace of its own, a tmpfs at `root` becomes "/" through rootfs.`change_root`. Then
    two ways out are tried. The textbook chroot escape: chroot into a subdirectory while the working
    directory stays above it, walk up with "..", chroot there. And, after move_root only, lifting the
    cover with CAP_SYS_ADMIN: unmount "/" and setns() into the namespace again. Returns what "/" lists
    after each, and how many entries /proc holds in the second."""
    namespaces.unshare(["mnt"])
    namespaces.make_mounts_private()
    root.mkdir()
    sc.mount("tmpfs", str(root), "tmpfs")
    (root / "inside").mkdir()
    namespace = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    getattr(rootfs, change_root)(root)
    os.mkdir("/x")
    os.chroot("/x")
    for _ in range(64):
        os.chdir("..")
    os.chroot(".")
    walked = sorted(os.listdir("/"))
    if change_root != "move_root":
        return walked, None, None
    sc.umount2("/", sc.MNT_DETACH)
    sc.setns(namespace, sc.CLONE_NEWNS)
    return walked, sorted(os.listdir("/")), len(os.listdir("/proc"))


def test_the_chroot_fallback_covers_the_host_root_without_removing_it(scratch):
    """What the docs of rootfs.move_root say, shown: ".." cannot climb out of either root (from the top
    of the moved root it falls back into the mount that covers the old "/"), but after MS_MOVE + chroot
    the host's root is still in the namespace, and CAP_SYS_ADMIN uncovers it; only its proc is gone."""
    pivoted = namespaces.run_in_child(_escapes, "pivot_root", scratch / "pivoted")
    moved = namespaces.run_in_child(_escapes, "move_root", scratch / "moved")
    assert pivoted == (["inside", "x"], None, None)
    assert moved == (["inside", "x"], sorted(os.listdir("/")), 0)  # the host's "/", its /proc detached


# --- sysctls --------------------------------------------------------------------------------------

def test_a_namespaced_sysctl_is_set_inside_only(build):
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        host = f.read().strip()
    wanted = "0" if host == "1" else "1"
    stepper, spec, output = build(["cat", "/proc/sys/net/ipv4/ip_forward"],
                                  sysctls={"net.ipv4.ip_forward": wanted})
    assert "sysctl" in [step.name for step in stepper.plan]
    assert finish(stepper, output) == (0, f"{wanted}\n")
    with open("/proc/sys/net/ipv4/ip_forward") as f:
        assert f.read().strip() == host


@pytest.mark.parametrize("sysctls, kinds, message", [
    ({"vm.swappiness": "10"}, None, "sysctl vm.swappiness is not namespaced"),
    ({"kernel.panic": "1"}, None, "sysctl kernel.panic is not namespaced"),
    ({"net.ipv4.ip_forward": "1"}, ["uts", "ipc", "mnt", "pid"], "shares with the host"),
])
def test_a_sysctl_that_would_change_the_host_is_refused(build, sysctls, kinds, message):
    fields = {"sysctls": sysctls} | ({"namespaces": kinds} if kinds else {})
    with open("/proc/sys/vm/swappiness") as f:
        swappiness = f.read()
    stepper, spec, output = build(["true"], **fields)
    with pytest.raises(ContainerError, match=message):
        finish(stepper, output)
    with open("/proc/sys/vm/swappiness") as f:
        assert f.read() == swappiness
