"""Seccomp: a filter the kernel runs at every system call the process makes, deciding its fate.

A seccomp filter is a small BPF program, installed with seccomp(2) (SECCOMP_SET_MODE_FILTER). At each
system call the kernel runs it on the call's number, architecture and six arguments, and does what it
returns: allow, fail with an errno, kill, trap, log. Filters are inherited by children and kept
across execve; more can be stacked, never removed. /proc/PID/status shows `Seccomp: 2` (filter mode)
and `Seccomp_filters: N`.

OCI's `linux.seccomp` describes a filter as data: a `defaultAction`, the `architectures` it covers,
and `syscalls` rules ({names, action, errnoRet, args: [{index, value, valueTwo, op}]}). This module
compiles that with libseccomp, as runc does (through libseccomp-golang) and crun does: libseccomp
knows each architecture's system call numbers (x86_64, i386 and x32 differ), splits 64-bit argument
comparisons into the 32-bit loads BPF can make, and routes multiplexed calls (socketcall, ipc).
Writing the BPF by hand would teach the instruction set, but all of that would have to be redone
here; `filter_text` shows what libseccomp generated instead, as readable pseudo code.

Compiling Docker's profile (over 300 rules, three architectures) takes tens of milliseconds, more
than most steps of a container's build. So it is done once per process and profile: `compile_filter`
asks libseccomp for the BPF program (`seccomp_export_bpf`) and keeps it; the engine calls it before it
forks a container's process, which inherits the program and installs it itself with
seccomp(SECCOMP_SET_MODE_FILTER, flags, &program), as crun does with its precompiled filters.

Traps:
- Loading a filter needs CAP_SYS_ADMIN, or no_new_privs set first (else a setuid program could be
  run under a filter that fools it). libseccomp sets no_new_privs itself unless told not to; here
  it is told not to (SCMP_FLTATR_CTL_NNP = 0), so no_new_privs is only set when the config says so.
  That is why runc loads the filter before dropping capabilities when no_new_privs is off.
- After loading, every call the process still makes, down to execve, must be allowed by the filter.
- A name libseccomp does not know (a system call newer than the library) is skipped, as runc does:
  that call then gets the default action.
- In a rule, conditions on different arguments must all hold; several conditions on the same
  argument are alternatives (runc adds one rule each), since one value cannot equal two numbers.
- For SCMP_CMP_MASKED_EQ, `value` is the mask and `valueTwo` the expected result: (arg & value) ==
  valueTwo. Docker's clone rule is (flags & 0x7E020000) == 0: no CLONE_NEW* flag.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from .. import syscalls as sc
from ..errors import ContainerError, InvalidArgumentError

# <seccomp.h>: actions; ERRNO and TRACE carry 16 bits of data (the errno, the ptrace message).
ACTIONS = {"SCMP_ACT_KILL": 0x00000000, "SCMP_ACT_KILL_THREAD": 0x00000000,
           "SCMP_ACT_KILL_PROCESS": 0x80000000, "SCMP_ACT_TRAP": 0x00030000, "SCMP_ACT_ERRNO": 0x00050000,
           "SCMP_ACT_TRACE": 0x7FF00000, "SCMP_ACT_LOG": 0x7FFC0000, "SCMP_ACT_ALLOW": 0x7FFF0000}
_WITH_DATA = ("SCMP_ACT_ERRNO", "SCMP_ACT_TRACE")
OPERATORS = {"SCMP_CMP_NE": 1, "SCMP_CMP_LT": 2, "SCMP_CMP_LE": 3, "SCMP_CMP_EQ": 4, "SCMP_CMP_GE": 5,
             "SCMP_CMP_GT": 6, "SCMP_CMP_MASKED_EQ": 7}
# OCI's seccomp flags: seccomp(2)'s own
FLAGS = {"SECCOMP_FILTER_FLAG_TSYNC": sc.SECCOMP_FILTER_FLAG_TSYNC,
         "SECCOMP_FILTER_FLAG_LOG": sc.SECCOMP_FILTER_FLAG_LOG,
         "SECCOMP_FILTER_FLAG_SPEC_ALLOW": sc.SECCOMP_FILTER_FLAG_SPEC_ALLOW}
SCMP_FLTATR_CTL_NNP = 3  # 0: loading does not set no_new_privs by itself
SCMP_FLTATR_API_SYSRAWRC = 9  # 1: report the kernel's own errno, not ECANCELED


@dataclass(frozen=True)
class Rule:
    """One libseccomp rule: `action` for system call `name` when all `conditions` hold."""

    name: str
    action: int
    conditions: tuple[tuple[int, int, int, int], ...] = ()  # (arg index, operator, datum_a, datum_b)


def _action(name: str, errno_ret: int | None, where: str) -> int:
    if name == "SCMP_ACT_NOTIFY":
        raise InvalidArgumentError(f"{where}: SCMP_ACT_NOTIFY needs a seccomp agent (listenerPath), which "
                                   "mini-container does not support")
    if name not in ACTIONS:
        raise InvalidArgumentError(f"{where}: unknown action {name!r}; expected one of {', '.join(ACTIONS)}")
    if name in _WITH_DATA:
        return ACTIONS[name] | (errno.EPERM if errno_ret is None else errno_ret) & 0xFFFF
    if errno_ret is not None:
        raise InvalidArgumentError(f"{where}: errnoRet is only meaningful with SCMP_ACT_ERRNO or "
                                   "SCMP_ACT_TRACE")
    return ACTIONS[name]


def _conditions(args: list[dict], where: str) -> list[tuple[tuple[int, int, int, int], ...]]:
    """The condition lists to add as separate rules (one list, unless an argument index repeats)."""
    conditions = []
    for i, arg in enumerate(args):
        here = f"{where}.args[{i}]"
        if arg.get("op") not in OPERATORS:
            raise InvalidArgumentError(f"{here}.op: unknown operator {arg.get('op')!r}; expected one of "
                                       f"{', '.join(OPERATORS)}")
        if not isinstance(arg.get("index"), int) or not 0 <= arg["index"] <= 5:
            raise InvalidArgumentError(f"{here}.index: a system call argument index from 0 to 5 is needed")
        conditions.append((arg["index"], OPERATORS[arg["op"]], arg.get("value", 0), arg.get("valueTwo", 0)))
    if len({c[0] for c in conditions}) < len(conditions):
        return [(c,) for c in conditions]
    return [tuple(conditions)]


@dataclass(frozen=True)
class Policy:
    """An OCI `linux.seccomp` object, checked and turned into libseccomp's numbers."""

    default: int
    architectures: tuple[int, ...]  # libseccomp architecture tokens (AUDIT_ARCH_* values)
    flags: int  # seccomp(2)'s flags, from `flags`
    rules: tuple[Rule, ...]


def parse(oci: dict) -> Policy:
    """Check an OCI `linux.seccomp` object, naming the JSON path at fault, and return its policy.

    Rules whose action is the default action are left out: they would change nothing (and libseccomp
    refuses them).
    """
    where = "linux.seccomp"
    if "defaultAction" not in oci:
        raise InvalidArgumentError(f"{where}.defaultAction: missing (e.g. SCMP_ACT_ERRNO)")
    default = _action(oci["defaultAction"], oci.get("defaultErrnoRet"), f"{where}.defaultAction")
    architectures = []
    for arch in oci.get("architectures") or []:
        token = sc.seccomp_arch_resolve_name(arch.removeprefix("SCMP_ARCH_").lower())
        if not token:
            raise InvalidArgumentError(f"{where}.architectures: unknown architecture {arch!r}")
        architectures.append(token)
    for flag in oci.get("flags") or []:
        if flag not in FLAGS:
            raise InvalidArgumentError(f"{where}.flags: unsupported flag {flag!r}; supported: "
                                       f"{', '.join(FLAGS)}")
    rules = []
    for i, entry in enumerate(oci.get("syscalls") or []):
        here = f"{where}.syscalls[{i}]"
        if not entry.get("names"):
            raise InvalidArgumentError(f"{here}.names: at least one system call name is needed")
        action = _action(entry.get("action"), entry.get("errnoRet"), f"{here}.action")
        if action == default:
            continue
        for conditions in _conditions(entry.get("args") or [], here):
            rules += [Rule(name, action, conditions) for name in entry["names"]]
    flags = 0
    for flag in oci.get("flags") or []:
        flags |= FLAGS[flag]
    return Policy(default, tuple(architectures), flags, tuple(rules))


@contextmanager
def _compiled(policy: Policy) -> Iterator[object]:
    """A libseccomp filter context holding the policy's architectures and rules; released on exit."""
    context = sc.seccomp_init(policy.default)
    try:
        sc.seccomp_attr_set(context, SCMP_FLTATR_CTL_NNP, 0)
        sc.seccomp_attr_set(context, SCMP_FLTATR_API_SYSRAWRC, 1)
        for token in policy.architectures:
            try:
                sc.seccomp_arch_add(context, token)
            except FileExistsError:
                pass  # the native architecture is in every new filter already
        for rule in policy.rules:
            number = sc.seccomp_syscall_resolve_name(rule.name)
            if number != -1:
                sc.seccomp_rule_add(context, rule.action, number, list(rule.conditions))
        yield context
    finally:
        sc.seccomp_release(context)


def _exported(context: object, export: Callable[[object, int], None]) -> bytes:
    """What libseccomp's `export` function writes for `context`, read back from a memory file."""
    fd = os.memfd_create("seccomp-export")
    try:
        export(context, fd)
        os.lseek(fd, 0, os.SEEK_SET)
        with open(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Filter:
    """A compiled filter: the BPF program (struct sock_filter[]) and seccomp(2)'s flags for it."""

    program: bytes
    flags: int


_filters: dict[str, Filter] = {}  # compiled filters by their profile's sha256, for this process


def compile_filter(oci: dict) -> Filter:
    """Compile an OCI `linux.seccomp` object to BPF; once per process and profile (see the docstring)."""
    key = hashlib.sha256(json.dumps(oci, sort_keys=True).encode()).hexdigest()
    if key not in _filters:
        policy = parse(oci)
        with _compiled(policy) as context:
            _filters[key] = Filter(_exported(context, sc.seccomp_export_bpf), policy.flags)
    return _filters[key]


def install(compiled: Filter) -> None:
    """Install a compiled filter on the calling process, for good."""
    try:
        sc.seccomp_set_mode_filter(compiled.program, compiled.flags)
    except PermissionError as err:
        raise ContainerError(f"cannot load the seccomp filter: {err.strerror}; loading one needs "
                             "no_new_privileges or CAP_SYS_ADMIN in effect") from None


def filter_text(oci: dict) -> str:
    """The filter libseccomp would load for `oci`, as its pseudo filter code (nothing is loaded)."""
    with _compiled(parse(oci)) as context:
        return _exported(context, sc.seccomp_export_pfc).decode()


def observe(pid: int | str = "self") -> dict[str, int]:
    """`Seccomp` (0 off, 1 strict, 2 filter), `Seccomp_filters` and `NoNewPrivs` from /proc/PID/status."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
    return {key: int(fields[key]) for key in ("Seccomp", "Seccomp_filters", "NoNewPrivs")}
