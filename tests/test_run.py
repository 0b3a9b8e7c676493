"""`minictl run` end to end on the real kernel: isolation, exit codes, stdio, terminals, bad input."""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time

from helpers import REPO, minictl


def run(root, *args, **kwargs):
    return minictl(root, "run", "--rm", *args, **kwargs)


def test_exit_code_and_separate_stdout_stderr(engine_root):
    result = run(engine_root, "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 3")
    assert (result.returncode, result.stdout, result.stderr) == (3, "out\n", "err\n")


def test_pid_1_is_protected_from_signals_sent_inside(engine_root):
    """The kernel drops SIGKILL sent to a pid namespace's init from inside that namespace."""
    result = run(engine_root, "busybox", "sh", "-c", "kill -9 $$; echo survived")
    assert (result.returncode, result.stdout) == (0, "survived\n")


def test_sigint_is_forwarded_and_a_second_one_kills(engine_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "mini_container.cli", "--root", str(engine_root),
                                "run", "--rm", "--name", "sleeper", "busybox", "sleep", "100"],
                               env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while "sleeper" not in minictl(engine_root, "ps").stdout:
            assert time.monotonic() < deadline and process.poll() is None
        process.send_signal(signal.SIGINT)  # sleep, as pid 1, has no handler: nothing happens
        time.sleep(0.5)
        assert process.poll() is None
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) == 128 + signal.SIGKILL
        assert "killing the container" in process.stderr.read()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_hostname_is_the_containers_own(engine_root):
    named = run(engine_root, "--hostname", "box", "busybox", "hostname")
    default = run(engine_root, "busybox", "hostname")
    assert named.stdout == "box\n"
    assert len(default.stdout.strip()) == 12  # the short container id, as docker does
    assert socket.gethostname() not in ("box", default.stdout.strip())


def test_pid_1_and_only_the_containers_processes(engine_root):
    result = run(engine_root, "busybox", "sh", "-c", "echo $$; ps -o pid,comm")
    lines = result.stdout.splitlines()
    assert lines[0] == "1"
    pids = [int(line.split()[0]) for line in lines[2:]]
    assert pids and max(pids) < 10  # the host's hundreds of processes are not there


def test_every_requested_namespace_differs_from_the_host(engine_root):
    kinds = ["uts", "ipc", "net", "mnt", "pid", "cgroup"]
    script = "; ".join(f"readlink /proc/self/ns/{k}" for k in kinds + ["user"])
    inside = run(engine_root, "busybox", "sh", "-c", script).stdout.split()
    host = [os.readlink(f"/proc/self/ns/{k}") for k in kinds + ["user"]]
    assert [a != b for a, b in zip(inside, host, strict=True)] == [True] * 6 + [False]


def test_network_none_holds_only_loopback_and_it_is_up(engine_root):
    result = run(engine_root, "--network", "none", "busybox", "sh", "-c", "ls /sys/class/net; ip route")
    assert result.stdout.split() == ["lo"]
    assert "127.0.0.1" in run(engine_root, "--network", "none", "busybox", "ip", "addr").stdout


def test_bridge_network_by_default_with_a_published_port_and_names(engine_root):
    """The session's own network namespace (conftest.py) stands in for the host: nothing leaves it."""
    server = minictl(engine_root, "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "sh", "-c",
                     "echo hello > /tmp/index.html; httpd -f -p 80 -h /tmp")
    assert server.returncode == 0, server.stderr
    try:
        client = run(engine_root, "busybox", "sh", "-c", "ls /sys/class/net; ip route; "
                     "wget -qO- http://web/index.html")
        assert client.stdout.split()[:2] == ["eth0", "lo"] and "default via 10.88.0.1" in client.stdout
        assert client.stdout.endswith("hello\n")
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", 8080), timeout=2) as conn:
                    conn.sendall(b"GET /index.html HTTP/1.0\r\n\r\n")
                    assert conn.makefile("rb").read().endswith(b"hello\n")
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        assert minictl(engine_root, "rm", "-f", "web").returncode == 0
    with open("/proc/self/net/dev") as f:  # (not /sys/class/net: sysfs shows the namespace it was mounted in)
        links = [line.split(":")[0].strip() for line in f.readlines()[2:]]
    assert "mini0" not in links and not [link for link in links if link.startswith("veth")]


def test_root_is_the_image_and_proc_is_the_containers(engine_root):
    result = run(engine_root, "busybox", "sh", "-c", "cat /etc/os-release; ls /proc | grep -c '^[0-9]'")
    assert "mini-container busybox" in result.stdout
    assert int(result.stdout.split()[-1]) < 10


def test_writes_go_to_the_container_not_the_image(engine_root):
    first = run(engine_root, "busybox", "sh", "-c", "echo changed > /etc/os-release; cat /etc/os-release")
    second = run(engine_root, "busybox", "cat", "/etc/os-release")
    assert first.stdout == "changed\n"
    assert "mini-container busybox" in second.stdout


def test_stdin_passes_through_with_i_and_is_empty_without(engine_root):
    assert run(engine_root, "-i", "busybox", "cat", input="hello\n").stdout == "hello\n"
    assert run(engine_root, "busybox", "cat", input="hello\n").stdout == ""


def test_environment_from_image_and_flags(engine_root, monkeypatch):
    monkeypatch.setenv("FROM_HOST", "passed")
    result = run(engine_root, "-e", "A=1", "-e", "FROM_HOST", "-e", "UNSET_ON_HOST", "busybox", "env")
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert env["A"] == "1" and env["FROM_HOST"] == "passed" and "UNSET_ON_HOST" not in env
    assert env["PATH"].startswith("/usr/local/sbin") and env["HOME"] == "/root"


def test_no_engine_descriptor_leaks_into_the_container(engine_root):
    assert run(engine_root, "busybox", "ls", "/proc/self/fd").stdout.split() == ["0", "1", "2", "3"]


def test_name_ps_and_rm(engine_root):
    created = minictl(engine_root, "run", "--name", "kept", "busybox", "sh", "-c", "exit 4")
    assert created.returncode == 4
    taken = minictl(engine_root, "run", "--name", "kept", "busybox", "true")
    assert taken.returncode == 125 and "already in use" in taken.stderr
    listing = minictl(engine_root, "ps", "-a").stdout
    assert "kept" in listing and "Exited (4)" in listing
    assert "kept" not in minictl(engine_root, "ps").stdout
    assert minictl(engine_root, "rm", "kept").returncode == 0
    assert "kept" not in minictl(engine_root, "ps", "-a").stdout
    assert list((engine_root / "containers").glob("*/container.json")) == []


def test_rm_leaves_no_container_directory(engine_root):
    before = set((engine_root / "containers").iterdir())
    assert run(engine_root, "busybox", "true").returncode == 0
    assert set((engine_root / "containers").iterdir()) == before


def test_interactive_terminal(engine_root):
    """-it: a shell on a terminal from the container's own devpts, with the caller's window size."""
    pid, master = pty.fork()
    if pid == 0:
        os.environ["PYTHONPATH"] = str(REPO)
        os.execv(sys.executable, [sys.executable, "-m", "mini_container.cli", "--root", str(engine_root),
                                  "run", "-it", "--rm", "busybox", "sh"])
    try:
        output = _converse(master, b"tty; echo $TERM; exit 5\n")
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(master)
    assert os.waitstatus_to_exitcode(status) == 5
    assert b"/dev/pts/0" in output and b"xterm" in output


def _converse(master: int, keys: bytes, timeout: float = 20) -> bytes:
    output, deadline, sent = b"", time.monotonic() + timeout, False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if not ready:
            if not sent and b"#" in output:  # the shell's prompt
                os.write(master, keys)
                sent = True
            continue
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    return output


def test_missing_executable_is_one_line_and_127(engine_root):
    result = run(engine_root, "busybox", "no-such-program")
    assert result.returncode == 127
    assert result.stderr.count("\n") == 1 and "'no-such-program' not found in image busybox" in result.stderr


def test_missing_image_names_the_bootstrap_command(engine_root):
    result = run(engine_root, "busybox:other", "true")
    assert result.returncode == 125
    assert "minictl bootstrap busybox" in result.stderr and "Traceback" not in result.stderr


def test_bad_reference_is_one_line(engine_root):
    result = run(engine_root, "Bad Image!", "true")
    assert result.returncode == 125 and result.stderr.startswith("minictl: invalid image reference")


def test_non_root_gets_one_line(engine_root):
    """Drop to nobody in a forked child (the interpreter may not be executable by nobody) and run main().
    The parser is built first, as root: its modules may not be readable by nobody either."""
    from mini_container import cli

    cli.parser()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.setgid(65534)
        os.setuid(65534)
        sys.stderr = os.fdopen(write_end, "w")
        code = cli.main(["--root", str(engine_root), "ps"])
        sys.stderr.flush()
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as f:
        stderr = f.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) != 0
    assert stderr.count("\n") == 1 and "needs root" in stderr


def test_ns_shows_a_running_containers_namespaces(engine_root):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen([sys.executable, "-m", "mini_container.cli", "--root", str(engine_root),
                                "run", "--rm", "--name", "watched", "busybox", "sleep", "100"], env=env)
    try:
        deadline = time.monotonic() + 20
        while "watched" not in minictl(engine_root, "ps").stdout:
            assert time.monotonic() < deadline and process.poll() is None
        rows = minictl(engine_root, "ns", "watched", "uts", "user").stdout.splitlines()[1:]
        assert [(row.split()[0], row.split()[-1]) for row in rows] == [("uts", "yes"), ("user", "no")]
    finally:
        assert minictl(engine_root, "rm", "-f", "watched").returncode == 0
        assert process.wait(timeout=20) == 128 + signal.SIGKILL


def test_ns_rejects_an_unknown_kind_in_one_line(engine_root):
    result = minictl(engine_root, "ns", str(os.getpid()), "mount")
    assert result.returncode == 125
    assert result.stderr.count("\n") == 1 and "unknown namespace kind 'mount'" in result.stderr
