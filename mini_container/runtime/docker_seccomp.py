"""Docker's default seccomp profile, built in code and resolved for one container.

`docker run` filters every container's system calls with the profile moby keeps in
profiles/seccomp/default.json (Apache-2.0). This module rebuilds the same policy from its structure,
so that it reads as a lesson rather than as a long JSON file:

- the default action is SCMP_ACT_ERRNO with EPERM: a call not listed fails, as if unprivileged;
- about 350 calls are always allowed (files, memory, signals, time, sockets, IPC, ...);
- a few are allowed only with some argument values: personality() only with the personalities
  programs really use, socket() for any family but AF_VSOCK, clone() without any CLONE_NEW* flag;
- groups are allowed only if the container has a capability (mount, unshare, setns with
  CAP_SYS_ADMIN; ptrace with CAP_SYS_PTRACE; reboot with CAP_SYS_BOOT; ...), only on some
  architectures (arch_prctl on x86_64), or only from some kernel version;
- clone3 fails with ENOSYS without CAP_SYS_ADMIN: a filter cannot read the flags clone3 keeps in
  memory, and ENOSYS makes glibc fall back to clone(), whose flags it can check.

Docker resolves the conditional groups against the container's bounding set when it writes
config.json: the runtime only ever sees the resolved OCI object. `docker_default_seccomp` does that
resolution and returns the OCI `linux.seccomp` object.

Trap: filtering is not a second capability check. unshare(CLONE_NEWUSER) needs no capability at all,
so only the filter stops a container from making user namespaces (and reaching kernel code that a
user namespace makes available to it).
"""

from __future__ import annotations

import errno
import os
import platform
import socket
from dataclasses import dataclass, field

from .. import syscalls as sc
from . import capabilities as caps

_ALWAYS = {
    "files": """access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2 dup3
        faccessat faccessat2 fadvise64 fadvise64_64 fallocate fchdir fchmod fchmodat fchown fchown32
        fchownat fcntl fcntl64 fdatasync flock fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
        ftruncate64 futimesat getcwd getdents getdents64 lchown lchown32 link linkat _llseek lseek lstat
        lstat64 mkdir mkdirat mknod mknodat name_to_handle_at newfstatat open openat openat2 pread64
        preadv preadv2 pwrite64 pwritev pwritev2 read readahead readlink readlinkat readv rename renameat
        renameat2 rmdir sendfile sendfile64 splice stat stat64 statfs statfs64 statx symlink symlinkat
        sync sync_file_range syncfs tee truncate truncate64 umask unlink unlinkat utime utimensat
        utimensat_time64 utimes vmsplice write writev""",
    "extended attributes": """fgetxattr flistxattr fremovexattr fsetxattr getxattr lgetxattr listxattr
        llistxattr lremovexattr lsetxattr removexattr setxattr""",
    "waiting for events": """epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
        epoll_wait epoll_wait_old eventfd eventfd2 fanotify_mark inotify_add_watch inotify_init
        inotify_init1 inotify_rm_watch ioctl _newselect pause pipe pipe2 poll ppoll ppoll_time64 pselect6
        pselect6_time64 select signalfd signalfd4 timerfd_create timerfd_gettime timerfd_gettime64
        timerfd_settime timerfd_settime64""",
    "asynchronous I/O": """io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup
        io_submit io_uring_enter io_uring_register io_uring_setup""",
    "memory": """brk madvise membarrier memfd_create memfd_secret mincore mlock mlock2 mlockall mmap mmap2
        mprotect mremap msync munlock munlockall munmap pkey_alloc pkey_free pkey_mprotect
        remap_file_pages""",
    "processes": """capget capset execve execveat exit exit_group fork getcpu getpgid getpgrp getpid
        getppid getpriority get_robust_list getrlimit getrusage getsid get_thread_area gettid ioprio_get
        ioprio_set kill landlock_add_rule landlock_create_ruleset landlock_restrict_self pidfd_open
        pidfd_send_signal prctl prlimit64 process_mrelease restart_syscall rseq sched_getaffinity
        sched_getattr sched_getparam sched_get_priority_max sched_get_priority_min sched_getscheduler
        sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity sched_setattr
        sched_setparam sched_setscheduler sched_yield seccomp setpgid setpriority setrlimit
        set_robust_list setsid set_thread_area set_tid_address sysinfo tgkill times tkill ugetrlimit
        uname vfork wait4 waitid waitpid""",
    "signals": """rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn rt_sigsuspend
        rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaltstack sigprocmask sigreturn""",
    "user and group ids": """getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32
        getresgid getresgid32 getresuid getresuid32 getuid getuid32 setfsgid setfsgid32 setfsuid
        setfsuid32 setgid setgid32 setgroups setgroups32 setregid setregid32 setresgid setresgid32
        setresuid setresuid32 setreuid setreuid32 setuid setuid32""",
    "time": """adjtimex alarm clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
        clock_gettime64 clock_nanosleep clock_nanosleep_time64 getitimer gettimeofday nanosleep setitimer
        time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64 timer_settime
        timer_settime64""",
    "futexes and randomness": "futex futex_time64 futex_waitv getrandom",
    "sockets": """accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom
        recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown socketcall
        socketpair""",
    "System V and POSIX IPC": """ipc mq_getsetattr mq_notify mq_open mq_timedreceive
        mq_timedreceive_time64 mq_timedsend mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd
        semctl semget semop semtimedop semtimedop_time64 shmat shmctl shmdt shmget""",
}

# Calls allowed only when the container's bounding set holds a capability.
_WITH_CAPABILITY = {
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
    "CAP_SYS_ADMIN": """bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie mount
        mount_setattr move_mount open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname
        setns syslog umount umount2 unshare""",
    "CAP_SYS_BOOT": "reboot",
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_MODULE": "delete_module init_module finit_module",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_PTRACE": "kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_SYS_NICE": "get_mempolicy mbind set_mempolicy set_mempolicy_home_node",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}

# Calls allowed only on some architectures (Go's names for them, as moby's profile uses).
_ON_ARCHITECTURE = [
    ({"ppc64le"}, "sync_file_range2 swapcontext"),
    ({"arm", "arm64"}, "arm_fadvise64_64 arm_sync_file_range sync_file_range2 breakpoint cacheflush set_tls"),
    ({"amd64", "x32"}, "arch_prctl"),
    ({"amd64", "x32", "x86"}, "modify_ldt"),
    ({"s390", "s390x"}, "s390_pci_mmio_read s390_pci_mmio_write s390_runtime_instr"),
    ({"riscv64"}, "riscv_flush_icache"),
]

# personality(2) values: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and 0xffffffff (query)
_PERSONALITIES = [0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF]
_CLONE_NAMESPACE_FLAGS = (sc.CLONE_NEWNS | sc.CLONE_NEWCGROUP | sc.CLONE_NEWUTS | sc.CLONE_NEWIPC
                          | sc.CLONE_NEWUSER | sc.CLONE_NEWPID | sc.CLONE_NEWNET)  # 0x7E020000

# uname -m -> (Go's name for the architecture, the SCMP_ARCH_* list the profile covers on it)
_ARCHITECTURES = {
    "x86_64": ("amd64", ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]),
    "aarch64": ("arm64", ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]),
    "s390x": ("s390x", ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"]),
    "riscv64": ("riscv64", ["SCMP_ARCH_RISCV64"]),
    "ppc64le": ("ppc64le", []),
}


@dataclass
class _Profile:
    """The resolved profile under construction: OCI `syscalls` entries."""

    syscalls: list[dict] = field(default_factory=list)

    def allow(self, names: str, args: list[dict] | None = None) -> None:
        entry = {"names": names.split(), "action": "SCMP_ACT_ALLOW"}
        if args:
            entry["args"] = args
        self.syscalls.append(entry)


def _kernel_at_least(major: int, minor: int) -> bool:
    release = os.uname().release.split("-")[0].split(".")
    return (int(release[0]), int(release[1])) >= (major, minor)


def docker_default_seccomp(capabilities: list[str] | None = None) -> dict:
    """Docker's default profile as an OCI `linux.seccomp` object, for a container whose bounding set
    is `capabilities` (None: Docker's default capabilities), on this machine's architecture."""
    held = set(caps.DOCKER_DEFAULT if capabilities is None else capabilities)
    for name in held:
        caps.number(name, "docker_default_seccomp")
    go_arch, architectures = _ARCHITECTURES.get(platform.machine(), ("", []))
    profile = _Profile()
    profile.allow(" ".join(" ".join(names.split()) for names in _ALWAYS.values()))
    if _kernel_at_least(4, 8):  # before 4.8, ptrace could bypass seccomp
        profile.allow("process_vm_readv process_vm_writev ptrace")
    profile.allow("socket", [{"index": 0, "value": socket.AF_VSOCK, "op": "SCMP_CMP_NE"}])
    for value in _PERSONALITIES:
        profile.allow("personality", [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}])
    for arches, names in _ON_ARCHITECTURE:
        if go_arch in arches:
            profile.allow(names)
    for capability, names in _WITH_CAPABILITY.items():
        if capability in held:
            profile.allow(names)
    if "CAP_SYS_ADMIN" not in held:
        flags_arg = 1 if go_arch == "s390x" else 0  # s390's clone takes the flags second
        no_namespace = {"index": flags_arg, "value": _CLONE_NAMESPACE_FLAGS, "op": "SCMP_CMP_MASKED_EQ"}
        profile.allow("clone", [no_namespace])
        profile.syscalls.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    oci = {"defaultAction": "SCMP_ACT_ERRNO", "defaultErrnoRet": errno.EPERM}
    if architectures:
        oci["architectures"] = architectures
    return {**oci, "syscalls": profile.syscalls}
