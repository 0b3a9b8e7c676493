"""Capabilities: root's power cut into 41 pieces, and the five sets that say which a process holds.

Since Linux 2.2, "root" is not one privilege but a list: CAP_CHOWN (change any file's owner),
CAP_NET_BIND_SERVICE (bind a port below 1024), CAP_SYS_ADMIN (mount, unshare, sethostname, and much
more), ... up to CAP_CHECKPOINT_RESTORE (40). The kernel checks a capability, not uid 0. Each thread
has five sets, shown as 64-bit hex masks in /proc/PID/status (bit N is capability N; `capsh --decode`
names them):

    CapInh  inheritable: what may pass to a program through execve (with the file's own caps)
    CapPrm  permitted:   the most it may ever have in effect; it can only shrink
    CapEff  effective:   what the kernel checks right now
    CapBnd  bounding:    the ceiling for every execve to come; dropped with prctl(PR_CAPBSET_DROP)
    CapAmb  ambient:     what a non-root process keeps across execve of a plain program

The calls: capget(2)/capset(2) read and write effective, permitted and inheritable (version 3: two
32-bit structs, low half then high half); prctl(PR_CAPBSET_DROP) removes one capability from the
bounding set (needs CAP_SETPCAP); prctl(PR_CAP_AMBIENT, RAISE) adds one to the ambient set.

Traps:
- setuid from 0 to another uid clears the permitted and effective sets, unless PR_SET_KEEPCAPS is set
  first; even then the effective set is cleared, and capset must raise it again.
- execve recomputes everything: for root, permitted = bounding (effective too); for a non-root user
  running a plain program, permitted = effective = ambient. So a non-root container process keeps a
  capability after exec only through the ambient set, which needs it in permitted and inheritable.
- Docker's default set has 14 capabilities (CapEff 00000000a80425fb for root); since Docker 20.10.14
  (CVE-2022-24769) the inheritable set is empty, as the kernel itself never fills it.
- capset changes only the calling thread: do it before starting threads.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from .. import syscalls as sc
from ..errors import InvalidArgumentError

# <linux/capability.h>: every capability, by number.
CAPABILITIES: dict[str, int] = {name: number for number, name in enumerate("""
    CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID CAP_SETUID
    CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN CAP_NET_RAW
    CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE CAP_SYS_PACCT
    CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME CAP_SYS_TTY_CONFIG CAP_MKNOD
    CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG
    CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE
    """.split())}

# moby's oci/caps DefaultCapabilities: what `docker run` grants without --cap-add/--cap-drop.
DOCKER_DEFAULT = ["CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD", "CAP_NET_RAW",
                  "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE",
                  "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE"]

SETS = ("bounding", "effective", "inheritable", "permitted", "ambient")
_STATUS_FIELDS = {"bounding": "CapBnd", "effective": "CapEff", "inheritable": "CapInh",
                  "permitted": "CapPrm", "ambient": "CapAmb"}


def number(name: str, where: str = "capability") -> int:
    """The number of capability `name` (e.g. "CAP_NET_RAW" -> 13); `where` names the setting at fault."""
    try:
        return CAPABILITIES[name]
    except KeyError:
        raise InvalidArgumentError(f"{where}: unknown capability {name!r}; the kernel's capabilities are "
                                   f"CAP_CHOWN ... CAP_CHECKPOINT_RESTORE (see capabilities(7))") from None


def mask(names: list[str], where: str = "capability") -> int:
    """The 64-bit mask of a list of capability names, as /proc/PID/status shows it."""
    bits = 0
    for name in names:
        bits |= 1 << number(name, where)
    return bits


def names(bits: int) -> list[str]:
    """The names of the capabilities set in a mask, in number order."""
    return [name for name, n in CAPABILITIES.items() if bits >> n & 1]


@dataclass(frozen=True)
class CapabilitySets:
    """The five sets as 64-bit masks, validated: what the process will hold when `apply` returns."""

    bounding: int
    effective: int
    inheritable: int
    permitted: int
    ambient: int


def docker_default_sets() -> dict[str, list[str]]:
    """What Docker puts in config.json: its defaults bounding, effective and permitted; none inherited."""
    return {"bounding": list(DOCKER_DEFAULT), "effective": list(DOCKER_DEFAULT), "inheritable": [],
            "permitted": list(DOCKER_DEFAULT), "ambient": []}


def resolve(sets: dict[str, list[str]] | None) -> CapabilitySets:
    """Check OCI's `process.capabilities` (None: Docker's defaults) and turn it into masks.

    A missing set is empty, as in runc. The kernel would refuse an effective capability outside
    permitted, or one it does not know: those are errors here, with names. An ambient one outside
    permitted and inheritable is left out, as runc does. (Reading cap_last_cap now also means no
    file is opened later, when the rlimits may already forbid it.)
    """
    sets = docker_default_sets() if sets is None else sets
    unknown = set(sets) - set(SETS)
    if unknown:
        raise InvalidArgumentError(f"process.capabilities: unknown set(s) {sorted(unknown)}; "
                                   f"the sets are {', '.join(SETS)}")
    masks = {kind: mask(sets.get(kind) or [], f"process.capabilities.{kind}") for kind in SETS}
    too_new = (masks["bounding"] | masks["permitted"]) >> (last_cap() + 1) << (last_cap() + 1)
    if too_new:
        raise InvalidArgumentError(f"process.capabilities: {', '.join(names(too_new))} is newer than this "
                                   f"kernel (its last capability is number {last_cap()})")
    outside = masks["effective"] & ~masks["permitted"]
    if outside:
        raise InvalidArgumentError(f"process.capabilities.effective: {', '.join(names(outside))} must also "
                                   f"be in permitted (the kernel refuses it otherwise)")
    # An ambient capability outside permitted and inheritable cannot be raised; runc skips it with a
    # warning, and `runc spec`'s own default asks for three of them with no inheritable set at all.
    masks["ambient"] &= masks["permitted"] & masks["inheritable"]
    return CapabilitySets(**masks)


@functools.cache
def last_cap() -> int:
    """The highest capability this kernel knows (/proc/sys/kernel/cap_last_cap), read once."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        return int(f.read())


def drop_bounding(keep: int) -> None:
    """Remove every capability not in `keep` from the bounding set (needs CAP_SETPCAP in effect).

    A bounding capability, once dropped, is gone for this process and all it starts.
    """
    for n in range(last_cap() + 1):
        if not keep >> n & 1 and sc.prctl(sc.PR_CAPBSET_READ, n):
            sc.prctl(sc.PR_CAPBSET_DROP, n)


def set_capabilities(effective: int, permitted: int, inheritable: int) -> None:
    """capset(2): set the three per-thread sets at once."""
    sc.capset(effective, permitted, inheritable)


def set_ambient(bits: int) -> None:
    """Make the ambient set exactly `bits`: clear it, then raise each capability in turn."""
    sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_CLEAR_ALL)
    for n in range(last_cap() + 1):
        if bits >> n & 1:
            sc.prctl(sc.PR_CAP_AMBIENT, sc.PR_CAP_AMBIENT_RAISE, n)


def observe(pid: int | str = "self") -> dict[str, list[str]]:
    """The five sets of `pid` by name, read from /proc/PID/status (CapBnd, CapEff, ...)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {kind: names(int(fields[field], 16)) for kind, field in _STATUS_FIELDS.items()}
