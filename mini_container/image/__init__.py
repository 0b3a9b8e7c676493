"""Stage 4: images.

An image is an ordered list of layers (directory trees, each holding only what it changes against the
layers below it) plus a configuration (the default command, environment and working directory). The
rootfs stage stacks the layers with overlayfs; nothing of an image is ever copied into a container.

- `store`: where images and their layers live on disk, and how a reference like `busybox` finds them.
- `bootstrap`: builds the embedded default images offline, from packages already on the host.
"""
