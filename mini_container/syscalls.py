"""The only door to libc: the system calls that build a container.

Python's `os` module already wraps many system calls (fork, execve, chroot, mknod, setsid, ...).
The ones a container engine needs beyond those are declared here (DECLARATIONS), through cffi in ABI
mode: `ffi.dlopen(None)` opens the C library that the interpreter itself is linked against, so nothing
is compiled at install time. Every wrapper checks the return value and, on failure, raises an `OSError`
whose message names the call, its arguments and the errno name, for example:

    OSError: [Errno 16] pivot_root('/tmp/root', '/tmp/root/.old'): EBUSY (Device or resource busy)

Calls that libc does not wrap on every system (pivot_root, pidfd_open, pidfd_send_signal) go through
`syscall(2)` with the architecture's system call number, exactly as runc does.

No other module of the engine declares a libc function: to see every way the engine talks to the
kernel, read this file.
"""

from __future__ import annotations

import errno
import hashlib
import importlib.util
import os
import platform

import cffi

# Every C declaration the engine uses, as the man pages give them.
DECLARATIONS = """
    /* namespaces, mounts, host names, prctl, and syscall(2) for the calls libc does not wrap */
    int unshare(int flags);
    int setns(int fd, int nstype);
    int mount(const char *source, const char *target, const char *filesystemtype,
              unsigned long mountflags, const void *data);
    int umount2(const char *target, int flags);
    int sethostname(const char *name, size_t len);
    int setdomainname(const char *name, size_t len);
    int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
    long syscall(long number, ...);

    /* capabilities (capget/capset) and seccomp filters (libseccomp) */
    typedef struct { uint32_t version; int pid; } cap_user_header;
    typedef struct { uint32_t effective; uint32_t permitted; uint32_t inheritable; } cap_user_data;
    int capget(cap_user_header *header, cap_user_data *data);
    int capset(cap_user_header *header, const cap_user_data *data);

    typedef void *scmp_filter_ctx;
    struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
    scmp_filter_ctx seccomp_init(uint32_t def_action);
    void seccomp_release(scmp_filter_ctx ctx);
    uint32_t seccomp_arch_resolve_name(const char *arch_name);
    int seccomp_arch_add(scmp_filter_ctx ctx, uint32_t arch_token);
    int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
    int seccomp_syscall_resolve_name(const char *name);
    int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall, unsigned int arg_cnt,
                               const struct scmp_arg_cmp *arg_array);
    int seccomp_export_pfc(scmp_filter_ctx ctx, int fd);

    /* seccomp: the BPF program libseccomp exports, installed with seccomp(2) */
    int seccomp_export_bpf(scmp_filter_ctx ctx, int fd);
    struct sock_filter { uint16_t code; uint8_t jt; uint8_t jf; uint32_t k; };
    struct sock_fprog { unsigned short len; struct sock_filter *filter; };

    /* nftables: libnftables, the library that the nft command is a shell around */
    void *nft_ctx_new(uint32_t flags);
    void nft_ctx_free(void *ctx);
    int nft_ctx_buffer_output(void *ctx);
    const char *nft_ctx_get_output_buffer(void *ctx);
    int nft_ctx_buffer_error(void *ctx);
    const char *nft_ctx_get_error_buffer(void *ctx);
    int nft_run_cmd_from_buffer(void *ctx, const char *buf);
"""


def _out_of_line_ffi(declarations: str) -> cffi.FFI:
    """cffi's FFI for `declarations`, in its out-of-line ABI mode: parsed once, then kept.

    In-line, `ffi.cdef()` has pycparser parse the declarations in every process that imports this
    module, ~40 ms with pycparser's own import: a large part of every minictl command's start. Out of
    line, cffi parses them once and writes the result as a small Python module (`ffi =
    _cffi_backend.FFI(...)`, the types serialized), which later imports load in about a millisecond.
    It is kept in __pycache__ beside this file, named by a hash of the declarations and cffi's version,
    so that a change to either makes a new one. Where it cannot be written, they are parsed in-line.
    """
    name = "_libc_ffi_" + hashlib.sha256((declarations + cffi.__version__).encode()).hexdigest()[:16]
    path = os.path.join(os.path.dirname(__file__), "__pycache__", name + ".py")
    if not os.path.exists(path):
        builder = cffi.FFI()
        builder.cdef(declarations)
        builder.set_source(name, None, compiler_verbose=0)  # (else it prints "generating ...")
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            partial = f"{path}.{os.getpid()}"
            builder.emit_python_code(partial)
            os.replace(partial, path)  # whole or absent, even with two processes building at once
        except OSError:
            return builder
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.ffi


ffi = _out_of_line_ffi(DECLARATIONS)
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


# --- process settings: capabilities (capget/capset) and seccomp filters (libseccomp) ---------------
# Used by runtime/capabilities.py and runtime/seccomp.py.


# prctl options for capabilities, dumpability and the death signal, from <linux/prctl.h>
PR_GET_PDEATHSIG = 2
PR_GET_DUMPABLE = 3
PR_SET_KEEPCAPS = 8
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47  # with one of:
PR_CAP_AMBIENT_RAISE = 2
PR_CAP_AMBIENT_CLEAR_ALL = 4

_LINUX_CAPABILITY_VERSION_3 = 0x20080522  # 64-bit sets, passed as two 32-bit halves

# libseccomp is opened now, at import time, not at first use: a container's process loads its filter
# after pivot_root, when the host's /usr/lib is no longer in its file system.
try:
    _libseccomp = ffi.dlopen("libseccomp.so.2")
except OSError as _error:
    _libseccomp = None
    _libseccomp_error = str(_error)


def capget() -> tuple[int, int, int]:
    """The calling thread's (effective, permitted, inheritable) capability sets, as 64-bit masks."""
    header = ffi.new("cap_user_header *", {"version": _LINUX_CAPABILITY_VERSION_3, "pid": 0})
    data = ffi.new("cap_user_data[2]")
    _check(_libc.capget(header, data), "capget", 0)
    low, high = data[0], data[1]
    return (low.effective | high.effective << 32, low.permitted | high.permitted << 32,
            low.inheritable | high.inheritable << 32)


def capset(effective: int, permitted: int, inheritable: int) -> None:
    """Set the calling thread's effective, permitted and inheritable sets (64-bit masks).

    The kernel refuses (EPERM) a permitted set that grows, an effective set outside the new permitted
    set, and an inheritable set beyond the bounding set. Only the calling thread changes.
    """
    header = ffi.new("cap_user_header *", {"version": _LINUX_CAPABILITY_VERSION_3, "pid": 0})
    data = ffi.new("cap_user_data[2]")
    for half in (0, 1):
        shift = 32 * half
        data[half].effective = effective >> shift & 0xFFFFFFFF
        data[half].permitted = permitted >> shift & 0xFFFFFFFF
        data[half].inheritable = inheritable >> shift & 0xFFFFFFFF
    _check(_libc.capset(header, data), "capset", hex(effective), hex(permitted), hex(inheritable))


def get_pdeathsig() -> int:
    """The signal the calling process gets when its parent dies (PR_GET_PDEATHSIG); 0 for none.

    A change of uid or gid clears it: a process that switches user and must still die with its
    parent reads it first and sets it again after (as runc does).
    """
    value = ffi.new("int *")
    _check(_libc.prctl(PR_GET_PDEATHSIG, ffi.cast("unsigned long", value), 0, 0, 0),
           "prctl", PR_GET_PDEATHSIG)
    return value[0]


def _seccomp_lib():
    if _libseccomp is None:
        raise OSError(errno.ELIBACC, f"libseccomp.so.2 cannot be loaded ({_libseccomp_error}): "
                                     "install Debian's libseccomp2")
    return _libseccomp


def _check_seccomp(result: int, call: str, *args: object) -> int:
    """libseccomp returns -errno itself (it does not set errno): turn it into an OSError."""
    if result < 0:
        code = -result
        shown = ", ".join(repr(a) for a in args)
        raise OSError(code, f"{call}({shown}): {errno.errorcode.get(code, str(code))} ({os.strerror(code)})")
    return result


def seccomp_init(default_action: int):
    """A new libseccomp filter context for the native architecture, taking `default_action`."""
    context = _seccomp_lib().seccomp_init(default_action)
    if context == ffi.NULL:
        raise OSError(errno.EINVAL, f"seccomp_init({hex(default_action)}): invalid default action")
    return context


def seccomp_release(context) -> None:
    """Free a filter context (the filter loaded from it stays in force)."""
    _seccomp_lib().seccomp_release(context)


def seccomp_arch_resolve_name(name: str) -> int:
    """libseccomp's token (an AUDIT_ARCH_* value) for an architecture name like "x86_64"; 0 if unknown."""
    return _seccomp_lib().seccomp_arch_resolve_name(name.encode())


def seccomp_arch_add(context, token: int) -> None:
    """Let the filter match system calls made with another architecture's ABI (EEXIST if already in)."""
    _check_seccomp(_seccomp_lib().seccomp_arch_add(context, token), "seccomp_arch_add", hex(token))


def seccomp_attr_set(context, attribute: int, value: int) -> None:
    """Set a filter attribute (SCMP_FLTATR_*), such as whether loading also sets no_new_privs."""
    _check_seccomp(_seccomp_lib().seccomp_attr_set(context, attribute, value), "seccomp_attr_set",
                   attribute, value)


def seccomp_syscall_resolve_name(name: str) -> int:
    """The native number of system call `name`; -1 if libseccomp does not know it at all.

    A call that exists on another architecture of the filter only (socketcall on x86_64) gets a
    negative "pseudo" number that libseccomp translates per architecture.
    """
    return _seccomp_lib().seccomp_syscall_resolve_name(name.encode())


def seccomp_rule_add(context, action: int, number: int,
                     conditions: list[tuple[int, int, int, int]] = ()) -> None:
    """Add a rule: `action` for system call `number` when all (arg, op, datum_a, datum_b) conditions hold."""
    array = ffi.new("struct scmp_arg_cmp[]", [{"arg": a, "op": op, "datum_a": x, "datum_b": y}
                                              for a, op, x, y in conditions] or 1)
    _check_seccomp(_seccomp_lib().seccomp_rule_add_array(context, action, number, len(conditions), array),
                   "seccomp_rule_add", hex(action), number, conditions)


def seccomp_export_pfc(context, fd: int) -> None:
    """Write the filter as libseccomp's readable pseudo filter code to file descriptor `fd`."""
    _check_seccomp(_seccomp_lib().seccomp_export_pfc(context, fd), "seccomp_export_pfc", fd)


# --- the rootfs stage: more mount flags, and openat2(2) ---------------------------------------------
# More <linux/mount.h> flags, for the mount options of OCI `mounts` entries ("sync", "noatime", ...).
MS_SYNCHRONOUS = 16
MS_DIRSYNC = 128
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_UNBINDABLE = 1 << 17
MS_RELATIME = 1 << 21

# openat2's `resolve` flags, from <linux/openat2.h>
RESOLVE_NO_MAGICLINKS = 0x02  # do not follow /proc/PID/fd/N-style links
RESOLVE_BENEATH = 0x08  # fail (EXDEV) where resolution would leave dirfd, rather than stay inside
RESOLVE_IN_ROOT = 0x10  # resolve as if dirfd were "/": absolute symlinks and ".." stay inside it

for _numbers in _SYSCALL_NUMBERS.values():
    _numbers["openat2"] = 437  # the same on x86_64 and aarch64 (added in Linux 5.6)


def openat2(dirfd: int, path: str, flags: int, mode: int = 0, resolve: int = 0) -> int:
    """openat(2) with a path-resolution policy: with RESOLVE_IN_ROOT, `path` (and every symlink met on
    the way) is resolved as if `dirfd` were the root directory, so it cannot lead outside it.

    glibc has no wrapper; the arguments travel in a `struct open_how {u64 flags, mode, resolve}`.
    """
    number = _syscall_number("openat2")
    how = ffi.new("uint64_t[3]", [flags, mode, resolve])
    return _check(_libc.syscall(ffi.cast("long", number), ffi.cast("int", dirfd),
                                ffi.new("char[]", _bytes(path)), how, ffi.cast("size_t", ffi.sizeof(how))),
                  "openat2", dirfd, path, hex(resolve))


# --- seccomp: a filter compiled once, installed many times -------------------------------------------
# libseccomp exports the BPF program it generates; seccomp(2) installs such a program directly.
SECCOMP_SET_MODE_FILTER = 1
# seccomp(2)'s flags for SECCOMP_SET_MODE_FILTER, from <linux/seccomp.h>
SECCOMP_FILTER_FLAG_TSYNC = 1
SECCOMP_FILTER_FLAG_LOG = 2
SECCOMP_FILTER_FLAG_SPEC_ALLOW = 4
_SYSCALL_NUMBERS["x86_64"]["seccomp"] = 317
_SYSCALL_NUMBERS["aarch64"]["seccomp"] = 277


def seccomp_export_bpf(context, fd: int) -> None:
    """Write the filter's BPF program (an array of 8-byte struct sock_filter) to file descriptor `fd`."""
    _check_seccomp(_seccomp_lib().seccomp_export_bpf(context, fd), "seccomp_export_bpf", fd)


def seccomp_set_mode_filter(program: bytes, flags: int = 0) -> None:
    """seccomp(SECCOMP_SET_MODE_FILTER, flags, &prog): install a BPF program on the calling thread.

    Needs no_new_privs or CAP_SYS_ADMIN, like every filter; `flags` are SECCOMP_FILTER_FLAG_*.
    """
    instructions = ffi.from_buffer("struct sock_filter[]", program)
    fprog = ffi.new("struct sock_fprog *", {"len": len(program) // 8, "filter": instructions})
    _check(_libc.syscall(ffi.cast("long", _syscall_number("seccomp")), ffi.cast("unsigned int",
                         SECCOMP_SET_MODE_FILTER), ffi.cast("unsigned int", flags), fprog),
           "seccomp", "SECCOMP_SET_MODE_FILTER", hex(flags), f"{len(program) // 8} instructions")


# --- types and functions looked up once, at import ----------------------------------------------------
# cffi parses a C type written as a string ("char[]", "struct sock_fprog *") with pycparser the first
# time it meets it, and looks a library's function up the first time it is called; it keeps both. Both
# are done here, in the engine's process, so that each container's process, forked from it, finds
# them done rather than doing them again (~0.5 ms a type).
for _type in ("char[]", "int", "int *", "long", "size_t", "unsigned int", "unsigned long", "uint64_t[3]",
              "cap_user_header *", "cap_user_data[2]", "struct scmp_arg_cmp[]", "struct sock_filter[]",
              "struct sock_fprog *"):
    ffi.typeof(_type)
for _name in ("unshare", "setns", "mount", "umount2", "sethostname", "setdomainname", "prctl", "syscall",
              "capget", "capset"):
    getattr(_libc, _name)


# --- nftables: libnftables, the library that the `nft` command is a shell around ------------------------
# Used by network/nat.py. `nft -f FILE` hands the file's text to nft_run_cmd_from_buffer(); the engine
# does the same in its own process: the same parser, the same netlink transaction, no program started.
# Opened at first use, not at import: only bridge networks need it, and loading it (with libnftnl,
# libmnl, libxtables, libjansson and libgmp) takes ~1.5 ms.
_libnftables = None


def _nftables_lib():
    global _libnftables
    if _libnftables is None:
        try:
            _libnftables = ffi.dlopen("libnftables.so.1")
        except OSError as error:
            raise OSError(errno.ELIBACC, f"libnftables.so.1 cannot be loaded ({error}): install Debian's "
                                         "nftables package (it brings libnftables1)") from None
    return _libnftables


def nft_ctx_new():
    """A libnftables context whose output and errors go to buffers (read by nft_run_cmd_from_buffer).

    Its netlink socket belongs to the calling thread's network namespace. Undo: nft_ctx_free().
    """
    context = _nftables_lib().nft_ctx_new(0)  # NFT_CTX_DEFAULT
    if context == ffi.NULL:
        raise OSError(errno.ENOMEM, "nft_ctx_new(NFT_CTX_DEFAULT): out of memory")
    _libnftables.nft_ctx_buffer_output(context)
    _libnftables.nft_ctx_buffer_error(context)
    return context


def nft_ctx_free(context) -> None:
    """Free a context made by nft_ctx_new(), closing its netlink socket."""
    _nftables_lib().nft_ctx_free(context)


def nft_run_cmd_from_buffer(context, commands: str) -> tuple[int, str, str]:
    """Run nftables commands (what `nft -f FILE` reads) through `context`.

    Returns libnftables' result (0 on success), what the commands printed (`list ...`) and its error
    messages.
    """
    result = _nftables_lib().nft_run_cmd_from_buffer(context, commands.encode())
    return (result, ffi.string(_libnftables.nft_ctx_get_output_buffer(context)).decode(),
            ffi.string(_libnftables.nft_ctx_get_error_buffer(context)).decode())
