"""Who the container's process is and what it may do: the last changes before execve.

`apply(settings)` is called by the process itself, inside the container, right before execve. It
makes OCI's `process` settings true, in runc's order (libcontainer's standard_init_linux.go and
finalizeNamespace), each step shown in /proc/PID/status or /proc/PID/limits:

1. OOM score   write /proc/self/oom_score_adj (-1000..1000)    /proc/PID/oom_score_adj
2. rlimits     setrlimit(2) per RLIMIT_*                       /proc/PID/limits
3. umask       umask(2), 0022 unless the config says otherwise  Umask:
4. no_new_privs prctl(PR_SET_NO_NEW_PRIVS, 1): execve can no longer grant privileges (setuid bits
               and file capabilities are ignored); it can never be unset        NoNewPrivs: 1
5. seccomp, when no_new_privs is off: loading a filter then needs CAP_SYS_ADMIN, so it comes
   before the capabilities are dropped                                          Seccomp: 2
6. bounding    prctl(PR_CAPBSET_DROP) for each capability not kept: needs CAP_SETPCAP, so it comes
               before the uid switch                                            CapBnd:
7. user        setgroups(2), setresgid(2), setresuid(2), with PR_SET_KEEPCAPS so that the permitted
               set survives the switch away from uid 0                          Uid: Gid: Groups:
8. capabilities capset(2) for effective, permitted, inheritable, then PR_CAP_AMBIENT_RAISE
                                                                  CapEff: CapPrm: CapInh: CapAmb:
9. seccomp, when no_new_privs is on: as late as possible, so that the filter sees few of the
   engine's own calls                                                           Seccomp: 2

Traps:
- Raising a hard rlimit or lowering oom_score_adj needs CAP_SYS_RESOURCE: both come first. The
  rlimits come after the last file `apply` opens: RLIMIT_NOFILE may leave no descriptor free.
- A change of uid clears the parent-death signal and makes the process non-dumpable; the signal is
  restored here (as runc does), and execve makes the program dumpable again.
- setgroups(2) is refused in a user namespace whose /proc/PID/setgroups says "deny".
- Nothing here may need a file of the host: `apply` runs after pivot_root, so every module and
  library it uses (libseccomp included, see syscalls.py) is loaded before.

Non-dumpable (the CVE-2019-5736 class): a process that joins a running container (`exec`) comes
from the host. While it is dumpable, a process of the container with the same uid may open its
/proc/PID/exe (the engine's binary, writable through it in runc's case) or ptrace it. So it calls
`make_non_dumpable()` before it joins the container's namespaces: /proc/PID/* then belongs to root,
and ptrace needs CAP_SYS_PTRACE. execve of the container's program resets dumpable to 1, once the
process no longer holds anything of the host.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass

from .. import syscalls as sc
from ..errors import ContainerError, InvalidArgumentError
from . import capabilities as caps
from . import seccomp
from .spec import ProcessSettings

_RLIM_MAX = 2**64 - 1  # OCI's "unlimited" (RLIM_INFINITY as an unsigned 64-bit value)
# <asm-generic/resource.h>, by number; /proc/PID/limits lists them in this order
RLIMITS = [f"RLIMIT_{name}" for name in "CPU FSIZE DATA STACK CORE RSS NPROC NOFILE MEMLOCK AS LOCKS "
           "SIGPENDING MSGQUEUE NICE RTPRIO RTTIME".split()]


@dataclass(frozen=True)
class Rlimit:
    """One resource limit: `soft` is enforced, `hard` is the ceiling the soft limit may be raised to."""

    name: str  # "RLIMIT_NOFILE"
    soft: int
    hard: int


def _rlimit(name: str, soft: int, hard: int) -> Rlimit:
    if name not in RLIMITS:
        raise InvalidArgumentError(f"process.rlimits: unknown limit {name!r}; expected one of "
                                   f"{', '.join(RLIMITS)}")
    soft, hard = (resource.RLIM_INFINITY if v == _RLIM_MAX else v for v in (soft, hard))
    if hard != resource.RLIM_INFINITY and (soft == resource.RLIM_INFINITY or soft > hard):
        raise InvalidArgumentError(f"process.rlimits {name}: the soft limit {soft} is above the hard "
                                   f"limit {hard}")
    return Rlimit(name, soft, hard)


def set_rlimits(rlimits: list[tuple[str, int, int]]) -> None:
    """setrlimit(2) for each (name, soft, hard), e.g. ("RLIMIT_NOFILE", 1024, 4096); all checked first."""
    for limit in [_rlimit(*entry) for entry in rlimits]:
        _setrlimit(limit)


def _setrlimit(limit: Rlimit) -> None:
    try:
        resource.setrlimit(RLIMITS.index(limit.name), (limit.soft, limit.hard))
    except (ValueError, OSError) as err:
        raise ContainerError(f"setrlimit({limit.name}, {limit.soft}, {limit.hard}): {err}; raising a hard "
                             "limit needs CAP_SYS_RESOURCE") from None


def set_oom_score_adj(value: int, pid: int | str = "self") -> None:
    """Write /proc/PID/oom_score_adj: -1000 (never OOM-kill) to 1000 (kill first); children inherit it.

    The parent may do it for the child (`pid`), or the process for itself. Lowering it below the
    lowest value the process ever had needs CAP_SYS_RESOURCE.
    """
    _check_oom_score_adj(value)
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as f:
            f.write(str(value))
    except PermissionError:
        raise ContainerError(f"cannot set oom_score_adj of {pid} to {value}: lowering it needs "
                             "CAP_SYS_RESOURCE") from None


def _check_oom_score_adj(value: int) -> None:
    if not -1000 <= value <= 1000:
        raise InvalidArgumentError(f"process.oomScoreAdj: {value} is outside -1000..1000")


def set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): no execve may ever grant this process or its children privileges."""
    sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)


def switch_user(uid: int, gid: int, additional_gids: list[int]) -> None:
    """Become uid:gid with exactly `additional_gids` as supplementary groups, keeping the permitted
    capabilities (PR_SET_KEEPCAPS) so that capset can then give the new user what the config says."""
    death_signal = sc.get_pdeathsig()
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    try:
        try:
            os.setgroups(additional_gids)
        except PermissionError:
            with open("/proc/self/setgroups") as f:
                if additional_gids or f.read().strip() != "deny":
                    raise
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
    finally:
        sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    if death_signal:
        sc.prctl(sc.PR_SET_PDEATHSIG, death_signal)


def is_dumpable() -> bool:
    """Whether the calling process is dumpable (PR_GET_DUMPABLE): if so, processes of its uid may
    ptrace it and open its /proc/PID files."""
    return sc.prctl(sc.PR_GET_DUMPABLE) == 1


def make_non_dumpable() -> None:
    """PR_SET_DUMPABLE 0: call it before joining a running container (see the module's docstring)."""
    sc.prctl(sc.PR_SET_DUMPABLE, 0)


def prepare(settings: ProcessSettings) -> None:
    """What `apply` needs that can be made once, before the fork: the seccomp filter, compiled, and
    the kernel's highest capability number, read.

    A process forked after this inherits both (the program it only installs: see seccomp.py).
    """
    caps.last_cap()
    if settings.seccomp is not None:
        seccomp.compile_filter(settings.seccomp)


def apply(settings: ProcessSettings) -> None:
    """Make `settings` true for the calling process, in runc's order; call it right before execve.

    Everything is checked before the first change, so a bad setting leaves the process as it was.
    The seccomp filter, if any, is loaded last or (without no_new_privs) before capabilities drop.
    """
    sets = caps.resolve(settings.capabilities)
    limits = [_rlimit(*entry) for entry in settings.rlimits]
    if settings.oom_score_adj is not None:
        _check_oom_score_adj(settings.oom_score_adj)
    compiled = None if settings.seccomp is None else seccomp.compile_filter(settings.seccomp)
    if settings.oom_score_adj is not None:
        set_oom_score_adj(settings.oom_score_adj)
    for limit in limits:
        _setrlimit(limit)
    os.umask(0o022 if settings.umask is None else settings.umask)
    if settings.no_new_privileges:
        set_no_new_privs()
    elif compiled is not None:
        seccomp.install(compiled)
    caps.drop_bounding(sets.bounding)
    switch_user(settings.uid, settings.gid, settings.additional_gids)
    caps.set_capabilities(sets.effective, sets.permitted, sets.inheritable)
    caps.set_ambient(sets.ambient)
    if settings.no_new_privileges and compiled is not None:
        seccomp.install(compiled)


def observe(pid: int | str = "self") -> dict:
    """What `apply` changed, for process `pid`: ids, groups, umask, capabilities, no_new_privs,
    seccomp mode, oom_score_adj and every rlimit as (soft, hard), -1 meaning unlimited."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    with open(f"/proc/{pid}/oom_score_adj") as f:
        oom_score_adj = int(f.read())
    with open(f"/proc/{pid}/limits") as f:  # "Max open files   1024   4096   files", after a header
        rows = [re.split(r"\s{2,}", line.strip()) for line in list(f)[1:]]
    limits = [tuple(-1 if v == "unlimited" else int(v) for v in row[1:3]) for row in rows]
    return {
        "uid": [int(v) for v in fields["Uid"].split()],  # real, effective, saved, filesystem
        "gid": [int(v) for v in fields["Gid"].split()],
        "groups": [int(v) for v in fields["Groups"].split()],
        "umask": int(fields["Umask"], 8),
        "capabilities": caps.observe(pid),
        "no_new_privs": int(fields["NoNewPrivs"]),
        "seccomp": int(fields["Seccomp"]),
        "oom_score_adj": oom_score_adj,
        "rlimits": dict(zip(RLIMITS, limits, strict=True)),
    }
