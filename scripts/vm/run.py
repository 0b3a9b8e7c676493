"""The VM test: the live suite on a real cgroup v2 kernel, in a Debian 12 VM that qemu boots here.

    sudo .venv/bin/python scripts/vm/run.py [--rebuild] [--timeout MINUTES] [--results DIR]
    (`make test-vm` provisions the host, then runs this.)

1. The tools: qemu-system-x86_64, debootstrap and mkfs.ext4; a missing one is a failure naming the
   Debian package to install, never a silent pass.
2. The image: /var/cache/mini-container-vm/<key>, where the key is a hash of the files that make it
   (build-image, vm-init, scripts/provision.sh, pyproject.toml); built by build-image when absent (the
   first run, or after one of those files changed), kept for the next run, older keys removed.
3. The boot: `qemu-system-x86_64 -accel kvm -cpu host` when /dev/kvm opens, and `-accel tcg -cpu max`
   (emulation, ten times slower or more) when it does not, or when KVM fails before the guest's init
   has spoken: a /dev/kvm can open and even run a few instructions, yet fail on a real kernel (nested
   virtualization missing an MSR, say), so only a boot tells. Debian's kernel boots with
   `cgroup_no_v1=all`, so the guest has the cgroup v2 tree alone, every controller in it; the disk is
   opened with snapshot=on (the guest's writes go to a temporary file, the cached image stays as
   built); there is no network card. The project is shared read-only over 9p (virtio-9p) and a results
   directory read-write; the guest's init (vm-init) runs scripts/vm/guest-run, whose phases
   (provision; cgroups; then tests, beside lessons and containers) write their exit codes, wall times and
   JUnit XML there.
4. The verdict: the serial console is streamed here as it comes; then each phase's exit code and the
   JUnit reports decide. The run passes only if every phase passed, every pytest phase ran tests, and
   the cgroup v2 controller tests (the `[v2]` cases of tests/test_cgroups.py) ran and passed; otherwise
   it exits 1 with one line, `vm: FAILED: ...`, that says why.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent.parent
CACHE = Path("/var/cache/mini-container-vm")
IMAGE_INPUTS = ("scripts/vm/build-image", "scripts/vm/vm-init", "scripts/provision.sh", "pyproject.toml")
TOOLS = {"qemu-system-x86_64": "qemu-system-x86", "debootstrap": "debootstrap", "mkfs.ext4": "e2fsprogs"}
PHASES = ("provision", "cgroups", "tests", "lessons", "containers")  # tests beside the last two
CGROUPS_MINUTES = 4  # the budget of the cgroups phase; the phases after it get the rest, less BOOT_MINUTES
BOOT_MINUTES = 3  # boot, the copy of the project, provision.sh, power-off

INIT_MARKER = b"vm-init: "  # the first line of the guest's init: the kernel booted
KVM_GRACE = 120  # seconds KVM gets to reach the guest's init before the run falls back to TCG


class VMTestError(Exception):
    """The VM test could not run, or did not pass: the message says why and what to do."""


class KVMFailed(VMTestError):
    """KVM could not boot the guest: worth a second boot with TCG."""


def require_tools() -> None:
    """Fail, naming the Debian packages to install, if a tool the VM test needs is missing."""
    missing = {tool: package for tool, package in TOOLS.items() if shutil.which(tool) is None}
    if missing:
        raise VMTestError(f"{', '.join(missing)} missing: apt-get install {' '.join(missing.values())} "
                          f"(or run scripts/provision.sh, which installs them)")


def image_key() -> str:
    """A hash of every file the image is made from: a change to one of them means a new image."""
    digest = hashlib.sha256()
    for name in IMAGE_INPUTS:
        digest.update(name.encode() + b"\0" + (PROJECT / name).read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def cached_image(rebuild: bool) -> Path:
    """The image for this project's inputs, built when the cache lacks it (under a lock: one build)."""
    CACHE.mkdir(parents=True, exist_ok=True)
    image = CACHE / image_key()
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if rebuild and image.exists():
            shutil.rmtree(image)
        if not image.exists():
            sys.path.insert(0, str(PROJECT))  # the engine, even where the project is not installed
            from mini_container.image.bootstrap import apt_mirror  # the mirror the host's apt uses

            print(f"vm: building the image {image} (about ten minutes; kept for the next runs)", flush=True)
            started = time.monotonic()
            if subprocess.run([HERE / "build-image", image, apt_mirror()]).returncode != 0:
                raise VMTestError("building the VM image failed (build-image said why above)")
            print(f"vm: image built in {time.monotonic() - started:.0f} s", flush=True)
            for old in CACHE.iterdir():
                if old != image and (old / "manifest").is_file():
                    shutil.rmtree(old)
    return image


def qemu_command(image: Path, results: Path, accel: str, suite_minutes: int) -> list[str]:
    """qemu-system-x86_64 booting `image`'s kernel on its disk, the project and `results` shared."""
    # quiet: warnings only on the console; mitigations=off: no speculative-execution workarounds, which
    # cost much under emulation and guard nothing here
    kernel_args = ["root=/dev/vda", "rw", "rootfstype=ext4", "console=ttyS0", "quiet", "panic=-1",
                   "init=/sbin/mini-container-vm-init", "cgroup_no_v1=all", "mitigations=off",
                   f"mc.cgroups_minutes={CGROUPS_MINUTES}", f"mc.suite_minutes={suite_minutes}"]
    return ["qemu-system-x86_64", "-accel", accel, "-cpu", "host" if accel == "kvm" else "max",
            "-smp", str(min(2, os.cpu_count() or 1)), "-m", "3072", "-nodefaults", "-no-user-config",
            "-display", "none", "-serial", "stdio", "-no-reboot", "-nic", "none",
            "-kernel", str(image / "vmlinuz"), "-initrd", str(image / "initrd.img"),
            "-append", " ".join(kernel_args),
            "-drive", f"file={image / 'rootfs.img'},format=raw,if=virtio,snapshot=on",
            "-device", "virtio-rng-pci",
            "-virtfs", f"local,path={PROJECT},mount_tag=project,security_model=none,readonly=on",
            "-virtfs", f"local,path={results},mount_tag=results,security_model=none"]


def boot(command: list[str], log: Path, minutes: int, kvm: bool) -> float | None:
    """Run qemu, streaming the guest's serial console here and into `log`, for at most `minutes`;
    return how many seconds the guest's init took to speak (None if it never did).
    With `kvm`, KVMFailed if qemu fails or stalls before the guest's init speaks.
    qemu is killed when this returns early for any reason (a timeout, an exception, SIGTERM)."""
    started = time.monotonic()
    seen = b""
    init_after = None
    with (open(log, "ab") as console,
          subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT) as qemu):
        os.set_blocking(qemu.stdout.fileno(), False)
        try:
            while True:
                chunk = qemu.stdout.read()
                if chunk:
                    console.write(chunk)
                    console.flush()
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
                    if init_after is None:
                        seen = seen[-len(INIT_MARKER):] + chunk
                        init_after = time.monotonic() - started if INIT_MARKER in seen else None
                elif qemu.poll() is not None:
                    break
                else:
                    waited = time.monotonic() - started
                    stalled = kvm and init_after is None and waited > KVM_GRACE
                    if stalled or waited > minutes * 60:
                        if stalled:
                            raise KVMFailed(f"the guest's init did not start within {KVM_GRACE} s")
                        raise VMTestError(f"the VM did not finish within {minutes} minutes: stopped it")
                    time.sleep(0.2)
        finally:
            if qemu.poll() is None:  # stopped early: the VM must not outlive the run
                qemu.kill()
                qemu.wait()
    if qemu.returncode != 0:
        if kvm and init_after is None:
            raise KVMFailed(f"qemu exited with {qemu.returncode} before the guest's init started")
        raise VMTestError(f"qemu exited with {qemu.returncode} (its messages are above)")
    return init_after


@dataclass
class Report:
    """One pytest phase's JUnit XML, summed up."""

    tests: int = 0
    failed: list[str] | None = None
    passed_v2: int = 0

    @classmethod
    def read(cls, path: Path) -> Report:
        report = cls(failed=[])
        if not path.is_file():
            return report
        for case in ElementTree.parse(path).iter("testcase"):
            report.tests += 1
            name = f"{case.get('classname')}::{case.get('name')}"
            problems = [child for child in case if child.tag in ("failure", "error")]
            if problems:
                message = (problems[0].get("message") or problems[0].tag).strip().splitlines()
                report.failed.append(f"{name}: {message[0] if message else problems[0].tag}")
            elif case.find("skipped") is None and case.get("name", "").endswith("[v2]"):
                report.passed_v2 += 1
        return report


def verdict(results: Path) -> list[str]:
    """Why the guest's run did not pass (empty when it passed), printing each phase's summary."""
    lines = (results / "phases").read_text().splitlines() if (results / "phases").is_file() else []
    phases = {name: (code, seconds) for name, code, seconds in (line.split() for line in lines)}
    problems = [f"phase {name} did not run" for name in PHASES if name not in phases]
    problems += [f"phase {name} exited with {code}" for name, (code, _) in phases.items() if code != "0"]
    passed = failed = 0
    for name in PHASES[1:]:
        report = Report.read(results / f"{name}.xml")
        took = f" in {phases[name][1]} s" if name in phases else ""
        print(f"vm: {name}: {report.tests} tests, {len(report.failed)} failed{took}", flush=True)
        for failure in report.failed:
            print(f"vm:   FAILED {failure}")
        passed += report.tests - len(report.failed)
        failed += len(report.failed)
        if name in phases and report.tests == 0:
            problems.append(f"phase {name} reported no test")
        if name == "cgroups" and report.passed_v2 == 0:
            problems.append("no cgroup v2 controller test ([v2]) passed: they did not run")
    print(f"vm: {passed} passed, {failed} failed", flush=True)
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rebuild", action="store_true", help="build the image again even if it is cached")
    parser.add_argument("--timeout", type=int, default=25, metavar="MINUTES",
                        help="the longest the VM may run (default 25)")
    parser.add_argument("--results", type=Path, help="keep the guest's results (JUnit XML, logs) here")
    args = parser.parse_args()
    begun = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("vm: FAILED: stopped by SIGTERM"))  # qemu is killed
    try:
        if os.geteuid() != 0:
            raise VMTestError("needs root (it builds a disk image and shares the project with the VM)")
        require_tools()
        image = cached_image(args.rebuild)
        suite_minutes = args.timeout - BOOT_MINUTES - CGROUPS_MINUTES
        if suite_minutes < 1:
            raise VMTestError(f"--timeout {args.timeout} leaves no time for the suite: give more minutes")
        results = Path(tempfile.mkdtemp(prefix="mini-container-vm-"))
        try:
            started = time.monotonic()
            accel = "kvm" if os.access("/dev/kvm", os.R_OK | os.W_OK) else "tcg"
            print(f"vm: image {image.name}; booting with {accel}", flush=True)

            def run_vm(accel: str) -> float | None:
                command = qemu_command(image, results, accel, suite_minutes)
                return boot(command, results / "console.log", args.timeout, kvm=accel == "kvm")

            try:
                init_after = run_vm(accel)
            except KVMFailed as error:
                print(f"vm: KVM failed ({error}): booting again with tcg", flush=True)
                started = time.monotonic()
                init_after = run_vm("tcg")
            print(f"vm: the VM ran {time.monotonic() - started:.0f} s (its init started after "
                  f"{init_after or 0:.0f} s)", flush=True)
            problems = verdict(results)
        finally:
            if args.results:
                shutil.copytree(results, args.results, dirs_exist_ok=True)
            shutil.rmtree(results)
        if problems:
            raise VMTestError("; ".join(problems))
    except VMTestError as error:
        print(f"vm: FAILED: {error}", file=sys.stderr)
        return 1
    print(f"vm: PASSED in {time.monotonic() - begun:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
