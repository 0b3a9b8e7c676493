"""The only door to libc: the system calls that build a container.

Python's `os` module already wraps many system calls (fork, execve, chroot, mknod, setsid, ...).
The ones a container engine needs beyond those are declared here, through cffi in ABI mode:
`ffi.dlopen(None)` opens the C library that the interpreter itself is linked against, so nothing is
compiled at install time. Every wrapper checks the return value and, on failure, raises an `OSError`
whose message names the call, its arguments and the errno name, for example:

    OSError: [Errno 16] pivot_root('/tmp/root', '/tmp/root/.old'): EBUSY (Device or resource busy)

Calls that libc does not wrap on every system (pivot_root, pidfd_open, pidfd_send_signal) go through
`syscall(2)` with the architecture's system call number, exactly as runc does.

No other module of the engine declares a libc function: to see every way the engine talks to the
kernel, read this file.
"""

from __future__ import annotations

import errno
import os
import platform

from cffi import FFI

ffi = FFI()
ffi.cdef(
    """
    int unshare(int flags);
    int setns(int fd, int nstype);
    int mount(const char *source, const char *target, const char *filesystemtype,
              unsigned long mountflags, const void *data);
    int umount2(const char *target, int flags);
    int sethostname(const char *name, size_t len);
    int setdomainname(const char *name, size_t len);
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
    long syscall(long number, ...);
    """
)
_libc = ffi.dlopen(None)

# --- namespace flags, from <linux/sched.h> -------------------------------------------------------
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# --- mount flags, from <linux/mount.h> --------------------------------------------------------------
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_STRICTATIME = 1 << 24

MNT_DETACH = 2  # umount2: detach now, finish when the mount is no longer busy

# --- prctl options, from <linux/prctl.h> ---------------------------------------------------------
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_CHILD_SUBREAPER = 36
PR_SET_NO_NEW_PRIVS = 38

# --- system call numbers that differ by architecture ----------------------------------------------
_SYSCALL_NUMBERS = {
    "x86_64": {"pivot_root": 155, "pidfd_open": 434, "pidfd_send_signal": 424},
    "aarch64": {"pivot_root": 41, "pidfd_open": 434, "pidfd_send_signal": 424},
}


def _syscall_number(name: str) -> int:
    machine = platform.machine()
    try:
        return _SYSCALL_NUMBERS[machine][name]
    except KeyError:
        raise OSError(errno.ENOSYS, f"{name}: no system call number for architecture {machine}") from None


def _check(result: int, call: str, *args: object) -> int:
    """Turn libc's `-1 and errno` convention into an OSError naming the call and its arguments."""
    if result == -1:
        code = ffi.errno
        name = errno.errorcode.get(code, str(code))
        shown = ", ".join(repr(a) for a in args)
        raise OSError(code, f"{call}({shown}): {name} ({os.strerror(code)})")
    return result


def _bytes(value: str | bytes | None):
    if value is None:
        return ffi.NULL
    return value if isinstance(value, bytes) else os.fsencode(value)


def unshare(flags: int) -> None:
    """Move the calling process into new namespaces of the kinds in `flags` (CLONE_NEW*).

    A new pid or time namespace is entered only by the children created afterwards.
    """
    _check(_libc.unshare(flags), "unshare", hex(flags))


def setns(fd: int, nstype: int = 0) -> None:
    """Join the namespace that the open file `fd` (a /proc/PID/ns/KIND file) refers to."""
    _check(_libc.setns(fd, nstype), "setns", fd, hex(nstype))


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """Attach a filesystem (or bind, move, or change the propagation of a mount) at `target`."""
    _check(_libc.mount(_bytes(source), _bytes(target), _bytes(fstype), flags, _bytes(data)),
           "mount", source, target, fstype, hex(flags), data)


def umount2(target: str, flags: int = 0) -> None:
    """Detach the mount at `target`; with MNT_DETACH, lazily, once it is no longer busy."""
    _check(_libc.umount2(_bytes(target), flags), "umount2", target, flags)


def pivot_root(new_root: str, put_old: str) -> None:
    """Make `new_root` the root of the calling process's mount namespace; the old root moves to `put_old`.

    glibc has no wrapper, so this goes through syscall(2). `new_root` must be a mount point, and
    neither it nor its parent may have shared propagation (else EINVAL).
    """
    number = _syscall_number("pivot_root")
    _check(_libc.syscall(ffi.cast("long", number), ffi.new("char[]", _bytes(new_root)),
                         ffi.new("char[]", _bytes(put_old))),
           "pivot_root", new_root, put_old)


def sethostname(name: str) -> None:
    """Set the host name of the calling process's UTS namespace."""
    raw = name.encode()
    _check(_libc.sethostname(raw, len(raw)), "sethostname", name)


def setdomainname(name: str) -> None:
    """Set the NIS domain name of the calling process's UTS namespace."""
    raw = name.encode()
    _check(_libc.setdomainname(raw, len(raw)), "setdomainname", name)


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    """Set or read an attribute of the calling process (death signal, dumpable, no_new_privs, ...)."""
    return _check(_libc.prctl(option, arg2, arg3, arg4, arg5), "prctl", option, arg2)


def pidfd_open(pid: int) -> int:
    """A file descriptor that refers to process `pid` itself, immune to pid reuse."""
    number = _syscall_number("pidfd_open")
    return _check(_libc.syscall(ffi.cast("long", number), ffi.cast("int", pid), ffi.cast("unsigned int", 0)),
                  "pidfd_open", pid)


def pidfd_send_signal(pidfd: int, signal: int) -> None:
    """Send `signal` to the process behind `pidfd` (never to a newer process that reused its pid)."""
    number = _syscall_number("pidfd_send_signal")
    _check(_libc.syscall(ffi.cast("long", number), ffi.cast("int", pidfd), ffi.cast("int", signal),
                         ffi.NULL, ffi.cast("unsigned int", 0)),
           "pidfd_send_signal", pidfd, signal)
