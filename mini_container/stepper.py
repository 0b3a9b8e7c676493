"""The step-through: a container built one step at a time, with the kernel's state after each.

    with Stepper(spec) as build:
        build.start()                       # fork the child; it waits for its first step
        while not build.done:
            result = build.step()           # one kernel change, then a snapshot and a diff
            print(result.name, result.text)
        print(build.wait())                 # the container's exit code

A container under construction is a paused child process. The controller (this object) and the child
talk over a socketpair with small named messages (`runtime.channel`); between steps the child blocks in
recv(2), so /proc/PID shows exactly the state after that step. Child steps are asked of the child;
parent steps are done here. With `observe=False` no snapshot is taken: that is `minictl run`.

After the `pid` step the process under construction changes: the child forked, and its child is pid 1
of the new namespace. `pid` always names the process being built, as the host sees it. The controller
makes itself a *child subreaper* (prctl PR_SET_CHILD_SUBREAPER) before it forks, so that when the
forking child exits, its orphan is reparented here rather than to the host's init: the controller
waits for the container's pid 1 itself. (A side effect worth knowing: any orphaned grandchild of this
process is reparented here too.)
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field

from . import cgroups, syscalls
from . import observe as observe_
from .cgroups import Cgroup
from .errors import ContainerError, ExecutableNotFoundError
from .runtime import channel, child, process
from .runtime.spec import ContainerSpec
from .runtime.steps import PARENT_STEPS, Step, plan


@dataclass
class StepResult:
    """What one step did: its name, what it asked of the kernel, and what changed."""

    name: str
    title: str
    pid: int
    diff: list[dict] = field(default_factory=list)
    snapshot: dict | None = None
    details: dict | None = None  # what the step made, seen by its stage: a cgroup's paths, limits, usage

    @property
    def text(self) -> str:
        return "\n".join(change["text"] for change in self.diff) or "(no visible change)"


class Stepper:
    """Drives one container's build, step by step, from the controller's side."""

    def __init__(self, spec: ContainerSpec, observe: bool = True):
        self.spec = spec
        self.observe = observe
        self.plan: list[Step] = plan(spec)
        self.position = 0
        self.pid: int | None = None  # the process being built (changes after the pid step)
        self.waitable: int | None = None  # our own child: the one we wait for
        self.terminal: int | None = None  # the master side of the container's terminal, with tty
        self.snapshot: dict | None = None
        self.cgroup: Cgroup | None = None  # made by the cgroup step, destroyed by close()
        self.network = None  # the network step's attachment, detached by close()
        self.exit_code: int | None = None
        self._sock = None

    # --- building ---------------------------------------------------------------------------------
    def start(self) -> dict | None:
        """Fork the child, paused before its first step; return its first snapshot (if observing)."""
        process.prepare(self.spec.process)  # the seccomp filter compiled here, once, not in every child
        ours, theirs = channel.pair()
        controller = os.getpid()
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        pid = os.fork()
        if pid == 0:
            ours.close()
            child.main(theirs, self.spec, controller)  # never returns
        theirs.close()
        self._sock, self.pid, self.waitable = ours, pid, pid
        if self.observe:
            self.snapshot = observe_.snapshot(pid)
        return self.snapshot

    @property
    def done(self) -> bool:
        return self.position >= len(self.plan)

    @property
    def next_step(self) -> Step | None:
        return None if self.done else self.plan[self.position]

    def step(self) -> StepResult:
        """Do the next step; return its name, the syscall it stands for, and the diff it made."""
        if self._sock is None:
            self.start()
        if self.done:
            raise ContainerError(f"container {self.spec.name}: every step is done")
        step = self.plan[self.position]
        self.position += 1
        if step.side == "parent":
            self._do(step)
        else:
            self._ask(step)
        result = StepResult(step.name, step.title, self.pid)
        if self.observe:
            after = self._snapshot_after(step)
            result.diff = observe_.diff(self.snapshot, after)
            result.snapshot = self.snapshot = after
            if step.name == "cgroup":
                result.details = cgroups.observe(self.pid)
        return result

    def run_all(self) -> None:
        """Every remaining step, in order.

        Without observing, the child steps between two parent steps are asked for all at once and
        their answers read afterwards: the child does them back to back, without waiting a round trip
        for each (it stops at the first that fails, so none runs after a failure).
        """
        if self._sock is None:
            self.start()
        while not self.done:
            if self.observe or self.next_step.side == "parent":
                self.step()
                continue
            batch = []
            while not self.done and self.next_step.side == "child":
                batch.append(self.plan[self.position])
                self.position += 1
            sent = []
            for step in batch:
                try:
                    self._send(step)
                except ContainerError:  # the child is gone: the answers before say why
                    break
                sent.append(step)
            for step in sent:
                self._receive(step)
            if len(sent) < len(batch):
                self._send(batch[len(sent)])  # no answer said why: this raises

    def _ask(self, step: Step) -> None:
        self._send(step)
        self._receive(step)

    def _send(self, step: Step) -> None:
        try:
            channel.send(self._sock, {"step": step.name})
        except OSError as e:
            raise ContainerError(f"container {self.spec.name}: the child died before step {step.name!r} "
                                 f"({e})") from e

    def _receive(self, step: Step) -> None:
        try:
            reply, fds = channel.receive(self._sock)
            if fds:  # the terminal step sends the master side of the container's terminal
                self.terminal = fds[0]
        except OSError as e:
            raise ContainerError(f"container {self.spec.name}: the child died during step {step.name!r} "
                                 f"({e})") from e
        if reply is None:
            if step.name == "exec":
                return  # end of file: execve succeeded and closed the child's end
            raise ContainerError(f"container {self.spec.name}: the child died during step {step.name!r}")
        if "error" in reply:
            cls = ExecutableNotFoundError if reply["type"] == "ExecutableNotFoundError" else ContainerError
            error = cls(reply["error"] if cls is not ContainerError
                        else f"container {self.spec.name}: step {step.name!r} failed: {reply['error']}")
            error.exit_code = reply["exit_code"]
            raise error
        if "pid" in reply:  # the pid step: our child forked pid 1 and exited; pid 1 is ours now
            os.waitpid(self.waitable, 0)
            self.pid = self.waitable = reply["pid"]

    def _do(self, step: Step) -> None:
        kept = PARENT_STEPS[step.name](self.spec, self.pid)
        if step.name == "cgroup":
            self.cgroup = kept
        elif step.name == "network" and self.spec.network == "bridge":  # "none" leaves nothing to undo
            self.network = kept

    def _snapshot_after(self, step: Step) -> dict:
        try:
            return observe_.snapshot(self.pid)
        except ContainerError:
            if step.name != "exec":
                raise
            return {"pid": self.pid, "exited": True}  # the command ran and finished already

    # --- after the build --------------------------------------------------------------------------
    def wait(self) -> int:
        """Wait for the container to exit; its exit code (128+N if killed by signal N)."""
        if self.exit_code is None:
            self._close_channel()
            _, status = os.waitpid(self.waitable, 0)
            code = os.waitstatus_to_exitcode(status)
            self.exit_code = code if code >= 0 else 128 - code
        return self.exit_code

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to the container's pid 1 (or the child, before it forked)."""
        if self.exit_code is None and self.pid is not None and self.pid > 0:  # never kill(0): the group
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        """Kill what is still running, reap it, remove its cgroup. The directory is its owner's to remove."""
        if self.waitable is not None and self.exit_code is None:
            self.kill()
            self.wait()
        if self.cgroup is not None:
            self.cgroup.kill()  # what pid 1 left: its namespace is gone, but a setns'd exec may linger
            self.cgroup.destroy()
            self.cgroup = None
        if self.network is not None:
            from . import network

            network.detach(self.spec.id, self.spec.network_dir)
            self.network = None
        self._close_channel()
        if self.terminal is not None:
            os.close(self.terminal)
            self.terminal = None

    def release(self) -> None:
        """Let the container live on without this controller (OCI create): forget it, kill nothing.

        Its pid 1 no longer dies with us (await_start cleared its death signal); when we exit it is
        reparented to the nearest subreaper (a shim) or to the host's init, which reaps it.
        """
        self._close_channel()
        if self.terminal is not None:
            os.close(self.terminal)
        self.waitable = self.terminal = self.cgroup = self.network = None

    def _close_channel(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> Stepper:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
