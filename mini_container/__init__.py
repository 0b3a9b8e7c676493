"""mini-container: a real container engine, built to be watched.

Read the stages in order: `syscalls` (the door to libc), `namespaces`, `cgroups`, `rootfs`,
`image`, `runtime`; then `observe` (what the kernel shows of a process) and `stepper` (a container
built one step at a time, with the kernel's state diffed after each step).
"""

__version__ = "0.1.0"
