"""Build the embedded default images offline, from what is installed on the host.

`busybox`: one statically linked binary (Debian's busybox-static) that is every Unix tool at once; the
image is that binary plus a symlink per applet (`/bin/sh -> /bin/busybox`, ...), a minimal /etc, and
the empty directories that the rootfs stage mounts over (/proc, /sys, /dev, /tmp).

Static linking matters: a container sees only its own root filesystem, so a dynamically linked
binary would look for its loader (/lib64/ld-linux-x86-64.so.2) and libc inside the image, and fail.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from ..errors import ContainerError
from .store import Image, ImageStore

BUSYBOX = Path("/bin/busybox")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_ETC = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/os-release": 'NAME="mini-container busybox"\nID=busybox\n',
}


def is_static_elf(path: Path) -> bool:
    """True if the ELF file at `path` has no PT_INTERP program header, i.e. needs no dynamic loader."""
    with open(path, "rb") as f:
        header = f.read(64)
        if header[:4] != b"\x7fELF" or header[4] != 2:  # 2: a 64-bit ELF
            return False
        phoff, = struct.unpack_from("<Q", header, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", header, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3: PT_INTERP


def bootstrap_busybox(store: ImageStore, reference: str = "busybox:latest") -> Image:
    """Build the busybox image from the host's static busybox and record it in `store`."""
    if not BUSYBOX.exists() or not is_static_elf(BUSYBOX):
        raise ContainerError(f"{BUSYBOX} is missing or not statically linked: "
                             "install Debian's busybox-static (apt-get install busybox-static)")
    layer = store.new_layer_dir()
    try:
        _fill_busybox_layer(layer)
    except BaseException:
        shutil.rmtree(layer, ignore_errors=True)
        raise
    config = {"Env": [f"PATH={PATH}"], "Cmd": ["sh"], "WorkingDir": "/"}
    try:
        old = store.get(reference)
    except ContainerError:
        old = None
    image = store.add(reference, [layer], config)
    if old is not None:
        for stale in set(old.layers) - set(image.layers):
            shutil.rmtree(stale, ignore_errors=True)
    return image


def _fill_busybox_layer(root: Path) -> None:
    for directory in ("bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "root", "tmp",
                      "var/tmp", "home"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    os.chmod(root / "var/tmp", 0o1777)
    os.chmod(root / "root", 0o700)
    shutil.copy2(BUSYBOX, root / "bin/busybox")
    applets = subprocess.run([str(BUSYBOX), "--list-full"], check=True, capture_output=True, text=True)
    for applet in applets.stdout.split():
        link = root / applet
        if applet == "bin/busybox" or link.exists():
            continue
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to("/bin/busybox")
    for name, text in _ETC.items():
        (root / name).write_text(text)
