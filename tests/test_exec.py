"""exec: a process joins a running container (minictl exec, mini-runc exec), seen from both sides."""

from __future__ import annotations

import contextlib
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import REPO, minictl, wait_for

from mini_container import namespaces
from mini_container.runtime import oci

ENV = {**os.environ, "PYTHONPATH": str(REPO)}
KINDS = list(namespaces.KINDS)  # user, cgroup, ipc, uts, net, pid, mnt, time


@dataclass
class Container:
    id: str
    name: str
    pid: int  # pid 1, as the host sees it
    cgroup: dict[str, str]


@pytest.fixture(scope="module")
def container(engine_root):
    """A detached busybox whose pid 1 wrote /tmp/marker; removed with its cgroup at the end."""
    name = f"exec-target-{os.getpid()}"
    started = minictl(engine_root, "run", "-d", "--name", name, "busybox", "sh", "-c",
                      "echo written-by-pid-1 > /tmp/marker; exec sleep 1000")
    assert started.returncode == 0, started.stderr
    record = json.loads((engine_root / "containers" / started.stdout.strip() / "container.json").read_text())
    try:
        yield Container(record["id"], name, record["pid"], record["cgroup"])
    finally:
        assert minictl(engine_root, "rm", "-f", name).returncode == 0
        assert [path for path in record["cgroup"].values() if Path(path).exists()] == []


def exec_in(root, *args: str, **kwargs) -> subprocess.CompletedProcess:
    return minictl(root, "exec", *args, **kwargs)


def procs(cgroup: dict[str, str]) -> set[int]:
    return {int(pid) for path in set(cgroup.values())
            for pid in Path(path, "cgroup.procs").read_text().split()}


def ns_pid(pid: int) -> int:
    """The pid of host process `pid` in its own (innermost) pid namespace: the last NSpid field."""
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("NSpid:")).split()[-1])


def the_new_process(cgroup: dict[str, str], before: set[int], cmdline: bytes) -> int:
    """The host pid of the one process in the container's cgroup that runs `cmdline`."""
    def found():
        for pid in procs(cgroup) - before:
            with contextlib.suppress(FileNotFoundError):
                if Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline:
                    return pid
        return None
    return wait_for(found, f"{cmdline!r} in the container's cgroup")


# --- minictl exec ---------------------------------------------------------------------------------------

def test_the_exec_process_is_in_every_namespace_the_cgroup_and_the_root_of_pid_1(engine_root, container):
    before = procs(container.cgroup)
    command = [sys.executable, "-m", "mini_container.cli", "--root", str(engine_root), "exec", container.name,
               "sleep", "31"]
    execing = subprocess.Popen(command, env=ENV, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        pid = the_new_process(container.cgroup, before, b"sleep\x0031\x00")
        assert namespaces.observe(pid) == namespaces.observe(container.pid)  # all eight kinds
        assert namespaces.observe(pid)["mnt"] != namespaces.observe(os.getpid())["mnt"]
        assert Path(f"/proc/{pid}/cgroup").read_text() == Path(f"/proc/{container.pid}/cgroup").read_text()
        root, pid_1_root = os.stat(f"/proc/{pid}/root"), os.stat(f"/proc/{container.pid}/root")
        assert (root.st_dev, root.st_ino) == (pid_1_root.st_dev, pid_1_root.st_ino)
        assert ns_pid(container.pid) == 1 and ns_pid(pid) > 1
        os.kill(pid, signal.SIGTERM)
        assert execing.wait(timeout=20) == 128 + signal.SIGTERM  # the exit code passes through
    finally:
        if execing.poll() is None:
            execing.kill()
            execing.wait()


def test_inside_it_sees_the_containers_files_pid_namespace_and_settings(engine_root, container):
    script = ("until [ -e /tmp/marker ]; do sleep 0.1; done; cat /tmp/marker; "
              "echo $$; cat /proc/self/cgroup; "
              f"for k in {' '.join(KINDS)}; do readlink /proc/self/ns/$k; readlink /proc/1/ns/$k; done; "
              "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status /proc/1/status; exit 3")
    result = exec_in(engine_root, container.name, "sh", "-c", script)
    assert result.returncode == 3, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "written-by-pid-1" and int(lines[1]) > 1
    cgroups = lines[2:lines.index(next(line for line in lines if ":[" in line))]
    assert cgroups and all(line.endswith(":/") for line in cgroups)  # the container's cgroup is its root
    links = lines[2 + len(cgroups):2 + len(cgroups) + 2 * len(KINDS)]
    host_view = namespaces.observe(container.pid)
    assert links[0::2] == links[1::2] == [f"{kind}:[{host_view[kind]}]" for kind in KINDS]
    settings = lines[2 + len(cgroups) + 2 * len(KINDS):]
    mine = [line.split(":", 1)[1] for line in settings if line.startswith("/proc/self/")]
    pid_1 = [line.split(":", 1)[1] for line in settings if line.startswith("/proc/1/")]
    assert len(mine) == 8 and mine == pid_1  # capabilities, no_new_privs and seccomp are pid 1's
    assert "Seccomp:\t2" in mine


def test_env_workdir_and_user(engine_root, container):
    script = "echo $FOO $HOSTNAME; pwd; id -u; id -g; grep Groups /proc/self/status"
    result = exec_in(engine_root, "-e", "FOO=bar", "-w", "/tmp", "-u", "nobody", container.name, "sh", "-c",
                     script)
    assert result.returncode == 0, result.stderr
    foo, hostname, *rest = result.stdout.split()
    assert (foo, rest) == ("bar", ["/tmp", "65534", "65534", "Groups:"])
    assert hostname == container.id[:12]  # from the container's environment
    numeric = exec_in(engine_root, "-u", "1000:1000", container.name, "sh", "-c", "id -u; id -g; pwd")
    assert numeric.stdout.split() == ["1000", "1000", "/"]


@pytest.mark.parametrize("args, code, message", [
    (["-u", "nosuch", "CONTAINER", "true"], 126, "unable to find user nosuch: no matching entries in passwd"),
    (["-u", "root:nosuch", "CONTAINER", "true"], 126, "unable to find group nosuch"),
    (["CONTAINER", "no-such-program"], 127, "executable 'no-such-program' not found in image busybox"),
    (["CONTAINER", "/etc"], 126, "cannot execute '/etc'"),
    (["-w", "/no/such/dir", "CONTAINER", "true"], 126, "working directory '/no/such/dir'"),
    (["-w", "relative", "CONTAINER", "true"], 1, "needs to be an absolute path"),
    (["no-such-container", "true"], 1, "no such container: no-such-container"),
    (["CONTAINER"], 1, "exec needs a command"),
])
def test_errors_are_one_line_with_dockers_exit_codes(engine_root, container, args, code, message):
    result = exec_in(engine_root, *[container.name if arg == "CONTAINER" else arg for arg in args])
    assert result.returncode == code, result.stderr
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_exec_into_a_stopped_container_is_refused(engine_root):
    name = f"exec-stopped-{os.getpid()}"
    assert minictl(engine_root, "run", "--name", name, "busybox", "true").returncode == 0
    try:
        result = exec_in(engine_root, name, "true")
        assert result.returncode == 1  # docker exec's code: "container ... is not running"
        assert result.stderr == f"minictl: container {name} is not running\n"
    finally:
        assert minictl(engine_root, "rm", name).returncode == 0


# The new process with its execve replaced: it says its pid (in the container) and whether it is
# dumpable, then waits for a byte on stdin before it really execs. By then it has joined everything
# and taken pid 1's settings, so only its dumpability can keep the container from reading it.
PAUSED_BEFORE_EXECVE = """
import os, sys
from mini_container import cli
from mini_container.runtime import process

def paused_execve(path, args, env, execve=os.execve):
    os.write(1, f"{os.getpid()} {int(process.is_dumpable())}\\n".encode())
    os.read(0, 1)
    execve(path, args, env)

os.execve = paused_execve
sys.exit(cli.main(sys.argv[1:]))
"""


def test_the_joining_process_is_not_dumpable_until_execve(engine_root, container):
    """CVE-2019-5736: root of the container, with pid 1's capabilities (no CAP_SYS_PTRACE), cannot open
    /proc/PID/environ of the process that is joining; it can once that process has exec'd."""
    command = [sys.executable, "-c", PAUSED_BEFORE_EXECVE, "--root", str(engine_root), "exec", "-i",
               container.name, "sleep", "32"]
    joining = subprocess.Popen(command, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert select.select([joining.stdout], [], [], 20)[0], "the new process never reached execve"
        pid, dumpable = joining.stdout.readline().split()
        assert dumpable == b"0"
        refused = exec_in(engine_root, container.name, "cat", f"/proc/{int(pid)}/environ")
        assert refused.returncode == 1 and "Permission denied" in refused.stderr

        joining.stdin.write(b"x")
        joining.stdin.flush()  # now it execs sleep, and execve makes it dumpable again

        def readable():
            result = exec_in(engine_root, container.name, "cat", f"/proc/{int(pid)}/environ")
            return result if result.returncode == 0 else None
        allowed = wait_for(readable, "the exec'd process to become readable")
        assert "PATH=" in allowed.stdout
        assert exec_in(engine_root, container.name, "kill", pid.decode()).returncode == 0
        assert joining.wait(timeout=20) == 128 + signal.SIGTERM
    finally:
        if joining.poll() is None:
            joining.kill()
            joining.wait()


def test_it_gives_a_terminal_of_the_containers_own_devpts(engine_root, container):
    script = "tty; echo $TERM; stat -c %d $(tty) /dev/pts; exit 4"
    pid, master = pty.fork()
    if pid == 0:
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "mini_container.cli", "--root", str(engine_root),
                                  "exec", "-it", container.name, "sh", "-c", script])
    try:
        output = _read_until_closed(master, deadline=time.monotonic() + 20)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 4
    tty, term, tty_device, devpts_device = output.decode().split()
    assert (tty, term) == ("/dev/pts/0", "xterm")
    assert tty_device == devpts_device != str(os.stat("/dev/pts").st_dev)  # its devpts, not the host's


def _read_until_closed(fd: int, deadline: float, until: bytes | None = None) -> bytes:
    output = b""
    while time.monotonic() < deadline and (until is None or until not in output):
        if not select.select([fd], [], [], 0.5)[0]:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: every process holding the terminal is gone
            break
        if not chunk:
            break
        output += chunk
    return output


# --- mini-runc exec ------------------------------------------------------------------------------------

def mini_runc(root: Path, *args: str, **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("capture_output", True)
    return subprocess.run([sys.executable, "-m", "mini_container.cli.runc", "--root", str(root), *args],
                          text=True, timeout=60, env=ENV, **kwargs)


@pytest.fixture(scope="module")
def runc_root():
    """A busybox bundle with runc's default config.json (`sleep 100`), and a mini-runc root where c1 runs
    it. Whatever a test leaves in the root is deleted with --force at the end."""
    bundle = Path(tempfile.mkdtemp(prefix="exec-bundle-"))
    state = bundle / "state"
    try:
        (bundle / "rootfs/bin").mkdir(parents=True)
        for name in ("proc", "sys", "dev", "tmp", "etc"):
            (bundle / "rootfs" / name).mkdir()
        shutil.copy("/bin/busybox", bundle / "rootfs/bin/busybox")
        for applet in ("sh", "sleep", "cat", "id", "pwd", "tty", "grep"):
            (bundle / "rootfs/bin" / applet).symlink_to("busybox")
        config = oci.default_config(terminal=False)
        config["process"]["args"] = ["sleep", "100"]
        (bundle / "config.json").write_text(json.dumps(config))
        assert run_detached(state, bundle, "c1").returncode == 0
        yield bundle, state
    finally:
        for directory in state.iterdir() if state.exists() else []:
            assert mini_runc(state, "delete", "--force", directory.name).returncode == 0
        shutil.rmtree(bundle)


def run_detached(state: Path, bundle: Path, container_id: str) -> subprocess.CompletedProcess:
    """mini-runc run -d: pid 1 keeps run's stdio, so it gets /dev/null rather than our pipes."""
    return mini_runc(state, "run", "-d", "--bundle", str(bundle), container_id, capture_output=False,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def in_c1(state: Path, pid: int, cmdline: bytes) -> None:
    """Check that host process `pid` runs `cmdline` in c1: its namespaces, its cgroup, a pid > 1 there."""
    # execve closes the channel before it lays out the new argv: cmdline is empty for a moment
    wait_for(lambda: Path(f"/proc/{pid}/cmdline").read_bytes() == cmdline, repr(cmdline))
    pid_1 = json.loads((state / "c1" / "state.json").read_text())["pid"]
    assert namespaces.observe(pid) == namespaces.observe(pid_1) and ns_pid(pid) > 1
    assert json.loads(mini_runc(state, "ps", "--format", "json", "c1").stdout) == sorted([pid_1, pid])


def end(pid: int) -> None:
    """Kill a detached exec'd process, and reap it if it was reparented to us (a subreaper)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), f"process {pid} to go")


def test_runc_exec_passes_the_exit_code(runc_root):
    _, state = runc_root
    result = mini_runc(state, "exec", "-e", "FOO=bar", "--cwd", "/tmp", "-u", "1000:1000", "c1", "sh", "-c",
                       "echo $FOO; pwd; id -u; id -g; exit 7")
    assert (result.returncode, result.stdout.split()) == (7, ["bar", "/tmp", "1000", "1000"]), result.stderr
    missing = mini_runc(state, "exec", "c1", "no-such-program")
    assert missing.returncode == 255  # runc's code for every exec failure, logged as runc logs it
    assert 'level=error msg="exec failed: executable \'no-such-program\' not found' in missing.stderr


def test_runc_exec_into_a_stopped_container_is_refused(runc_root):
    bundle, state = runc_root
    assert run_detached(state, bundle, "c2").returncode == 0
    assert mini_runc(state, "kill", "c2", "KILL").returncode == 0
    wait_for(lambda: json.loads(mini_runc(state, "state", "c2").stdout)["status"] == "stopped", "c2 to stop")
    stopped = mini_runc(state, "exec", "c2", "true")
    assert stopped.returncode == 255
    assert 'level=error msg="exec failed: cannot exec in a stopped container"' in stopped.stderr
    assert mini_runc(state, "delete", "c2").returncode == 0


def test_runc_exec_into_a_paused_container_is_refused(runc_root):
    """Its cgroup is frozen: a process that joined it would freeze too."""
    _, state = runc_root
    assert mini_runc(state, "pause", "c1").returncode == 0
    try:
        paused = mini_runc(state, "exec", "c1", "true")
        assert paused.returncode == 255
        assert 'msg="exec failed: cannot exec in a paused container' in paused.stderr
    finally:
        assert mini_runc(state, "resume", "c1").returncode == 0


def test_runc_exec_runs_a_process_json(runc_root, tmp_path):
    _, state = runc_root
    process = {"args": ["sh", "-c", "echo $FOO; pwd; id -u; id -g; grep CapBnd /proc/self/status"],
               "env": ["FOO=from-json", "PATH=/bin"], "cwd": "/tmp", "user": {"uid": 5, "gid": 6}}
    (tmp_path / "process.json").write_text(json.dumps(process))
    result = mini_runc(state, "exec", "--process", str(tmp_path / "process.json"), "c1")
    assert result.returncode == 0, result.stderr
    # no capabilities in process.json: the container's (runc spec's AUDIT_WRITE, KILL, NET_BIND_SERVICE)
    assert result.stdout.split() == ["from-json", "/tmp", "5", "6", "CapBnd:", "0000000020000420"]
    (tmp_path / "process.json").write_text(json.dumps({**process, "args": []}))
    invalid = mini_runc(state, "exec", "--process", str(tmp_path / "process.json"), "c1")
    assert invalid.returncode == 255 and "args: must hold at least 1 item" in invalid.stderr


def test_runc_exec_detached_writes_the_pid_file(runc_root, tmp_path):
    _, state = runc_root
    with open(tmp_path / "stderr", "w") as stderr:  # a pipe would stay open in the detached process
        started = mini_runc(state, "exec", "--detach", "--pid-file", str(tmp_path / "pid"), "c1", "sleep",
                            "33", capture_output=False, stdout=subprocess.DEVNULL, stderr=stderr)
    assert started.returncode == 0, (tmp_path / "stderr").read_text()
    pid = int((tmp_path / "pid").read_text())
    try:
        in_c1(state, pid, b"sleep\x0033\x00")
    finally:
        end(pid)


def test_runc_exec_tty_sends_the_terminal_to_the_console_socket(runc_root, tmp_path):
    _, state = runc_root
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(tmp_path / "console.sock"))
        listener.listen(1)
        started = mini_runc(state, "exec", "-d", "-t", "--console-socket", str(tmp_path / "console.sock"),
                            "--pid-file", str(tmp_path / "pid"), "c1", "sh", "-c", "tty; exec sleep 34")
        assert started.returncode == 0, started.stderr
        pid = int((tmp_path / "pid").read_text())
        try:
            connection, _ = listener.accept()
            with connection:
                _, fds, _, _ = socket.recv_fds(connection, 1024, 1)
            try:
                assert _read_until_closed(fds[0], time.monotonic() + 20, until=b"\n") == b"/dev/pts/0\r\n"
                in_c1(state, pid, b"sleep\x0034\x00")
            finally:
                os.close(fds[0])  # the terminal hangs up: SIGHUP to its session
        finally:
            end(pid)
    refused = mini_runc(state, "exec", "-d", "-t", "c1", "true")
    assert refused.returncode == 255 and "without setting console socket" in refused.stderr
