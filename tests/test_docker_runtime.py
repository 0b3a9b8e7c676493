"""mini-runc as Docker's runtime: `docker run --runtime mini`, through containerd's shim, on the real kernel.

A private dockerd (Debian's docker.io, tests/docker_fixture.py) is told of the runtime in its daemon.json
("runtimes": {"mini": {"path": MINI-RUNC}}, what `dockerd --add-runtime mini=MINI-RUNC` says), and the
session's busybox image is loaded into it (`minictl save`, then `docker load`). Docker never calls the
runtime itself: containerd's shim (containerd-shim-runc-v2) does, with runc's global flags (--root,
--log FILE --log-format json) and runc's subcommands: create --bundle --pid-file [--console-socket],
start, state, kill, delete [--force], exec --process FILE --detach --pid-file [--console-socket],
pause, resume, update --resources -, ps --format json. The shim reads a container's statistics from
its cgroup itself (`docker stats`), found through /proc/PID/cgroup of its pid 1.

Each test is one thing a Docker user does; one that the runtime does not get right yet fails.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from docker_fixture import DOCKER, Dockerd
from helpers import REPO, minictl, wait_for

RUNTIME = "mini"
# The shim's runtime root for containers of dockerd's "moby" namespace, under its --exec-root.
RUNTIME_ROOTS = "exec/runtime-*/moby"


def mini_runc_path() -> Path:
    """The `mini-runc` that pyproject's [project.scripts] installed beside the interpreter, or in the
    project's .venv (the tests may run under another interpreter): dockerd needs an executable's path."""
    for directory in (Path(sys.executable).parent, REPO / ".venv/bin"):
        if (directory / "mini-runc").is_file():
            return directory / "mini-runc"
    pytest.fail("mini-runc is not installed: run scripts/provision.sh (it runs pip install -e . into .venv)")


# --- fixtures -----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dockerd(engine_root):
    """A private dockerd with mini-runc as runtime "mini", and busybox:latest loaded into it.

    At the end every container is removed through docker, which must leave the runtime's root empty
    (each container's `delete` ran), before the daemon is stopped and its leftovers are looked for."""
    daemon = Dockerd(runtimes={RUNTIME: str(mini_runc_path())})
    saved = Path(tempfile.mkdtemp(prefix="mc-docker-runtime-", dir="/tmp"))
    left: list[str] = []
    try:
        result = minictl(engine_root, "save", "-o", str(saved / "busybox.tar"), "busybox")
        assert result.returncode == 0, result.stderr
        daemon.start()
        daemon.docker("load", "-i", str(saved / "busybox.tar"))
        yield daemon
        remaining = daemon.docker("ps", "--all", "--quiet").stdout.split()
        if remaining:
            daemon.docker("rm", "--force", *remaining)
        left = [str(path) for root in daemon.workdir.glob(RUNTIME_ROOTS) for path in root.iterdir()]
    finally:
        shutil.rmtree(saved)
        daemon.stop()
    assert daemon.leftovers() == []
    assert left == [], "docker rm left containers in mini-runc's root"


@pytest.fixture
def containers(dockerd):
    """Names for this test's containers; each is removed (docker rm --force) after the test."""
    made: list[str] = []

    def name(label: str) -> str:
        made.append(f"mc-{label}-{os.getpid()}")
        return made[-1]

    yield name
    if made:
        dockerd.docker("rm", "--force", *made, check=False)


@pytest.fixture(scope="module")
def box(dockerd):
    """A long-running container with limits: --memory 64m --cpus 0.5 --pids-limit 20, `sleep 1000`."""
    name = f"mc-box-{os.getpid()}"
    run(dockerd, "-d", "--name", name, "--memory", "64m", "--cpus", "0.5", "--pids-limit", "20",
        "busybox", "sleep", "1000")
    identifier = container_id(dockerd, name)
    yield name
    dockerd.docker("rm", "--force", name, check=False)
    assert cgroups_of(dockerd, identifier) == [], "docker rm left the container's cgroups"


def run(dockerd: Dockerd, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """docker run --runtime mini --network none ARGS... (the private daemon has no bridge)."""
    return dockerd.docker("run", "--runtime", RUNTIME, "--network", "none", *args, check=check, **kwargs)


def inspect(dockerd: Dockerd, name: str, template: str) -> str:
    return dockerd.docker("inspect", "--format", template, name).stdout.strip()


def container_id(dockerd: Dockerd, name: str) -> str:
    return inspect(dockerd, name, "{{.Id}}")


def pid_1(dockerd: Dockerd, name: str) -> int:
    """The host pid of the container's pid 1."""
    return int(inspect(dockerd, name, "{{.State.Pid}}"))


def cgroup_dir(pid: int, controller: str) -> Path:
    """The directory of process `pid`'s cgroup in the v1 hierarchy of `controller`."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return Path("/sys/fs/cgroup") / controllers / path.lstrip("/")
    raise AssertionError(f"process {pid} is in no {controller} cgroup")


def own_cgroup(controller: str) -> str:
    """This process's cgroup path in the hierarchy of `controller`."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    raise AssertionError(f"this process is in no {controller} cgroup")


def cgroups_of(dockerd: Dockerd, identifier: str) -> list[Path]:
    """The cgroup directories of container `identifier` that exist, in any hierarchy: named by its id,
    below the daemon's cgroup parent or the engine's own subtree, from our own cgroup or the root."""
    found = []
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, own = line.split(":", 2)
        mount = Path("/sys/fs/cgroup") / (controllers.removeprefix("name=") or "unified")
        for base in (mount, mount / own.lstrip("/")):
            found += [base / parent / identifier for parent in (dockerd.cgroup_parent, "mini-container")]
    return [path for path in dict.fromkeys(found) if path.is_dir()]


def runtime_root(dockerd: Dockerd) -> Path:
    """mini-runc's --root as the shim gives it: one directory per container it knows."""
    roots = list(dockerd.workdir.glob(RUNTIME_ROOTS))
    assert len(roots) == 1, f"expected one runtime root under {dockerd.workdir}, found {roots}"
    return roots[0]


def logs_of(dockerd: Dockerd, name: str) -> subprocess.CompletedProcess | None:
    """docker logs NAME, once both its stdout and its stderr have something."""
    logs = dockerd.docker("logs", name)
    return logs if logs.stdout and logs.stderr else None


def on_a_terminal(dockerd: Dockerd, *args: str, typed: bytes, after: bytes = b"READY",
                  timeout: float = 60) -> tuple[int, str]:
    """Run `docker ARGS...` with a pseudo-terminal as its stdin, stdout and stderr (what -it needs);
    type `typed` once `after` was printed. Return its exit code and everything it printed."""
    pid, master = pty.fork()
    if pid == 0:  # the child: docker on the terminal's slave side
        try:
            os.execve(DOCKER, ["docker", *args], dockerd.env)
        finally:
            os._exit(127)
    deadline = time.monotonic() + timeout
    try:
        printed = converse(master, typed, after, deadline)
        status = reap(pid, deadline)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    finally:
        os.close(master)
    return os.waitstatus_to_exitcode(status), printed.decode(errors="replace")


def converse(master: int, typed: bytes, after: bytes, deadline: float) -> bytes:
    """Read the terminal until it closes, typing `typed` once `after` shows; what it printed."""
    printed, sent = b"", False
    while time.monotonic() < deadline:
        if not select.select([master], [], [], 0.2)[0]:
            continue
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the last process on the slave side closed it
            return printed
        if not data:
            return printed
        printed += data
        if after in printed and not sent:
            os.write(master, typed)
            sent = True
    raise AssertionError(f"the terminal was still open after the timeout; it showed {printed!r}")


def reap(pid: int, deadline: float) -> int:
    """The wait status of child `pid`, which must exit before `deadline`."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.05)
    raise AssertionError(f"docker (pid {pid}) did not exit after its terminal closed")


# --- docker run: what the process gets ------------------------------------------------------------------

def test_run_passes_the_exit_code_stdout_and_stderr(dockerd):
    result = run(dockerd, "--rm", "busybox", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


@pytest.mark.parametrize(("command", "code", "message"), [
    (["no-such-program"], 127, 'exec: "no-such-program": executable file not found in $PATH'),
    (["/etc/passwd"], 126, 'exec: "/etc/passwd": permission denied'),
])
def test_run_of_a_program_that_cannot_start_exits_as_with_runc(dockerd, command, code, message):
    """Docker reads runc's words in the runtime's error: 127 for a missing program, 126 for one that
    cannot be executed (any other failure to start is 125)."""
    result = run(dockerd, "--rm", "busybox", *command, check=False)
    assert result.returncode == code, result.stderr
    assert message in result.stderr


def test_run_sets_the_environment(dockerd):
    result = run(dockerd, "--rm", "--hostname", "boxhost", "-e", "FOO=bar baz", "busybox", "env")
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env == {"FOO": "bar baz", "HOSTNAME": "boxhost", "HOME": "/root",  # HOME: runc's, from /etc/passwd
                   "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}


def test_run_sets_the_working_directory(dockerd):
    result = run(dockerd, "--rm", "-w", "/srv/work", "busybox", "pwd")
    assert result.stdout == "/srv/work\n"  # made by docker in the root filesystem, entered by the runtime


def test_run_sets_the_user(dockerd):
    result = run(dockerd, "--rm", "-u", "1000:1001", "--group-add", "1002", "busybox", "sh", "-c",
                 "id -u; id -g; id -G; echo $HOME")
    assert result.stdout.split() == ["1000", "1001", "1001", "1002", "/"]  # no passwd line: HOME is /


def test_run_joins_the_namespaces_of_another_container(dockerd, box):
    """--network and --pid container:NAME: config.json names the other container's namespace files (a
    path), and the runtime joins them with setns(2) instead of making new ones."""
    kinds = ("net", "pid")
    shared = [f"--network=container:{box}", f"--pid=container:{box}"]
    probe = "for k in net ipc pid uts; do readlink /proc/self/ns/$k; done"
    result = dockerd.docker("run", "--rm", "--runtime", RUNTIME, *shared, "busybox", "sh", "-c", probe)
    joined = dict(zip(("net", "ipc", "pid", "uts"), result.stdout.split(), strict=True))
    target = pid_1(dockerd, box)
    assert {kind: joined[kind] for kind in kinds} == {kind: os.readlink(f"/proc/{target}/ns/{kind}")
                                                      for kind in kinds}
    assert joined["uts"] != os.readlink(f"/proc/{target}/ns/uts")  # not asked to share: a new one


# --- docker run: the cgroup ------------------------------------------------------------------------------

def test_memory_limit_is_in_the_cgroup(dockerd, box):
    limit = cgroup_dir(pid_1(dockerd, box), "memory") / "memory.limit_in_bytes"
    assert limit.read_text() == f"{64 << 20}\n"


def test_cpus_limit_is_in_the_cgroup(dockerd, box):
    directory = cgroup_dir(pid_1(dockerd, box), "cpu")
    quota, period = (int((directory / f"cpu.cfs_{name}_us").read_text()) for name in ("quota", "period"))
    assert (quota, period) == (50_000, 100_000)  # --cpus 0.5: half of each 100 ms period


def test_pids_limit_is_in_the_cgroup(dockerd, box):
    assert (cgroup_dir(pid_1(dockerd, box), "pids") / "pids.max").read_text() == "20\n"


def test_pids_limit_is_in_effect(dockerd):
    """The shell forks until the cgroup is full; the kernel refuses the 11th process (EAGAIN)."""
    result = run(dockerd, "--rm", "--pids-limit", "10", "busybox", "sh", "-c",
                 "for i in $(seq 20); do sleep 1 & done; wait", check=False)
    assert "can't fork" in result.stderr


def test_the_cgroup_is_where_docker_asked(dockerd, box):
    """Docker's cgroupsPath, "mini-container-dockerd-PID/ID", is relative: runc puts it below its own
    cgroup, which is the shim's and ours, in each hierarchy."""
    wanted = f"{dockerd.cgroup_parent}/{container_id(dockerd, box)}"
    for controller in ("memory", "cpu", "pids", "freezer"):
        expected = Path("/sys/fs/cgroup") / controller / own_cgroup(controller).lstrip("/") / wanted
        assert cgroup_dir(pid_1(dockerd, box), controller) == expected


# --- detached containers: logs, stop, rm ---------------------------------------------------------------

def test_detached_output_is_in_docker_logs(dockerd, containers):
    name = containers("logs")
    run(dockerd, "-d", "--name", name, "busybox", "sh", "-c", "echo hello; echo oops >&2; sleep 100")
    logs = wait_for(lambda: logs_of(dockerd, name), "the container's output in docker logs", timeout=20)
    assert (logs.stdout, logs.stderr) == ("hello\n", "oops\n")


def test_stop_kills_a_pid_1_that_ignores_sigterm(dockerd, containers):
    """pid 1 of a namespace gets SIGTERM only with a handler: `sleep` has none, so SIGKILL after -t 1."""
    name = containers("stop")
    run(dockerd, "-d", "--name", name, "busybox", "sleep", "100")
    identifier = container_id(dockerd, name)
    pid, directory = pid_1(dockerd, name), runtime_root(dockerd) / identifier
    assert directory.is_dir() and cgroup_dir(pid, "memory").is_dir()
    dockerd.docker("stop", "-t", "1", name)
    assert inspect(dockerd, name, "{{.State.Status}} {{.State.ExitCode}}") == "exited 137"
    assert not Path(f"/proc/{pid}").exists()
    wait_for(lambda: not directory.exists() and not cgroups_of(dockerd, identifier),
             "runc delete of the stopped container", timeout=20)


def test_stop_lets_a_pid_1_with_a_handler_exit(dockerd, containers):
    name = containers("term")
    run(dockerd, "-d", "--name", name, "busybox", "sh", "-c", "trap 'exit 42' TERM; echo ready; "
        "while true; do sleep 0.1; done")
    wait_for(lambda: dockerd.docker("logs", name).stdout, "the trap to be set", timeout=20)
    dockerd.docker("stop", "-t", "20", name)
    assert inspect(dockerd, name, "{{.State.ExitCode}}") == "42"


def test_rm_force_removes_a_running_container_and_all_it_had(dockerd, containers):
    name = containers("rm")
    run(dockerd, "-d", "--name", name, "busybox", "sleep", "100")
    identifier = container_id(dockerd, name)
    pid, directory = pid_1(dockerd, name), runtime_root(dockerd) / identifier
    assert cgroups_of(dockerd, identifier) != []
    dockerd.docker("rm", "--force", name)
    assert name not in dockerd.docker("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not Path(f"/proc/{pid}").exists()
    assert not directory.exists() and cgroups_of(dockerd, identifier) == []


# --- docker exec ------------------------------------------------------------------------------------------

def test_exec_runs_in_the_container_with_its_own_settings(dockerd, box):
    result = dockerd.docker("exec", "-e", "X=1", "-u", "1000:1000", "-w", "/tmp", box, "sh", "-c",
                            "echo $X; id -u; pwd; hostname; cat /proc/1/comm; echo oops >&2; exit 4",
                            check=False)
    assert result.returncode == 4, result.stderr
    # in the container's uts and pid namespaces: its host name, and its pid 1 is `sleep`
    assert result.stdout.split() == ["1", "1000", "/tmp", container_id(dockerd, box)[:12], "sleep"]
    assert result.stderr == "oops\n"


def test_exec_of_a_missing_program_fails_as_with_runc(dockerd, box):
    """Docker 20.10 gives `docker exec` of a missing program 126 with runc too; the CLI prints the error."""
    result = dockerd.docker("exec", box, "no-such-program", check=False)
    assert result.returncode == 126, result.stderr
    assert 'exec: "no-such-program": executable file not found in $PATH' in result.stdout + result.stderr


# --- terminals: the console socket ------------------------------------------------------------------------

def test_run_it_gives_pid_1_a_terminal(dockerd):
    code, printed = on_a_terminal(dockerd, "run", "-it", "--rm", "--runtime", RUNTIME, "--network", "none",
                                  "busybox", "sh", "-c", "tty; echo READY; read line; echo got $line; exit 5",
                                  typed=b"typed-in\n")
    assert code == 5, printed
    assert "/dev/pts/0" in printed and "got typed-in" in printed


def test_exec_it_gives_the_process_a_terminal(dockerd, box):
    code, printed = on_a_terminal(dockerd, "exec", "-it", box, "sh", "-c",
                                  "tty; echo READY; read line; echo got $line; exit 6", typed=b"typed-in\n")
    assert code == 6, printed
    assert "/dev/pts/" in printed and "got typed-in" in printed


# --- pause, top, stats, update ----------------------------------------------------------------------------

def test_pause_freezes_and_unpause_thaws(dockerd, box):
    freezer = cgroup_dir(pid_1(dockerd, box), "freezer") / "freezer.state"
    dockerd.docker("pause", box)
    try:
        assert inspect(dockerd, box, "{{.State.Status}}") == "paused"
        assert freezer.read_text() == "FROZEN\n"
    finally:
        dockerd.docker("unpause", box)
    assert inspect(dockerd, box, "{{.State.Status}}") == "running"
    assert freezer.read_text() == "THAWED\n"


def test_top_lists_the_container_processes(dockerd, box):
    top = dockerd.docker("top", box, "-o", "pid,args").stdout.splitlines()  # runc ps, then the host's ps
    assert [line.split(None, 1) for line in top[1:]] == [[str(pid_1(dockerd, box)), "sleep 1000"]]


def test_stats_shows_the_cgroup_usage_and_limits(dockerd, box):
    stats = dockerd.docker("stats", "--no-stream", "--format", "{{.MemUsage}}|{{.PIDs}}", box).stdout
    memory, pids = stats.strip().split("|")
    assert memory.endswith(" / 64MiB") and pids == "1"


def test_update_changes_the_limits_of_a_running_container(dockerd, containers):
    name = containers("update")
    run(dockerd, "-d", "--name", name, "--memory", "64m", "busybox", "sleep", "100")
    dockerd.docker("update", "--memory", "96m", "--memory-swap", "200m", "--cpus", "0.25",
                   "--pids-limit", "30", name)
    pid = pid_1(dockerd, name)
    assert (cgroup_dir(pid, "memory") / "memory.limit_in_bytes").read_text() == f"{96 << 20}\n"
    assert (cgroup_dir(pid, "memory") / "memory.memsw.limit_in_bytes").read_text() == f"{200 << 20}\n"
    assert (cgroup_dir(pid, "cpu") / "cpu.cfs_quota_us").read_text() == "25000\n"
    assert (cgroup_dir(pid, "pids") / "pids.max").read_text() == "30\n"


def test_events_stats_has_runcs_shape(dockerd, box):
    """`runc events --stats`, as containerd's go-runc decodes it (runc's types.Stats)."""
    root = runtime_root(dockerd)
    result = subprocess.run([str(mini_runc_path()), "--root", str(root), "events", "--stats",
                             container_id(dockerd, box)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    event = json.loads(result.stdout)
    assert (event["type"], event["id"]) == ("stats", container_id(dockerd, box))
    data = event["data"]
    assert data["memory"]["usage"]["limit"] == 64 << 20 and data["memory"]["usage"]["usage"] > 0
    assert data["pids"] == {"current": 1, "limit": 20}
    assert data["cpu"]["usage"]["total"] > 0 and {"kernel", "user"} <= data["cpu"]["usage"].keys()
    assert {"blkio", "hugetlb", "intel_rdt", "network_interfaces"} <= data.keys()

