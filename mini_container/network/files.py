"""The three files that make a network usable by programs: /etc/hosts, /etc/hostname, /etc/resolv.conf.

The kernel resolves no names. The C library does, from files of the root filesystem: /etc/hosts maps
names to addresses, /etc/resolv.conf names the DNS servers, and /etc/hostname is what an init reads
at boot to call sethostname(2). An image ships its own copies, which know nothing of this host or of
the other containers, so the engine writes them, as docker does, into a directory of the container's
state that the runtime bind-mounts over the image's files.

Traps:
- A bind-mounted file is an inode: a file replaced by rename(2) would leave the container looking at
  the old one. So the files are rewritten in place (truncate, then write), and a reader may, for an
  instant, find one empty.
- A host that runs a local resolver (systemd-resolved's 127.0.0.53, dnsmasq's 127.0.0.1) lists a
  loopback nameserver; inside the container 127.0.0.1 is the container's own loopback, where nothing
  answers. Such nameservers are replaced: by systemd-resolved's upstream list when there is one
  (/run/systemd/resolve/resolv.conf), else by public servers, as docker does.
- Containers reach each other by name only through /etc/hosts here (docker runs a DNS server for that):
  every container's hosts file lists every container on the bridge, and is rewritten as they come and go.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

HOST_RESOLV_CONF = Path("/etc/resolv.conf")
RESOLVED_UPSTREAM = Path("/run/systemd/resolve/resolv.conf")
FALLBACK_NAMESERVERS = ("8.8.8.8", "8.8.4.4")
_LOCALHOST = ("127.0.0.1\tlocalhost\n"
              "::1\tlocalhost ip6-localhost ip6-loopback\n")


@dataclass(frozen=True)
class NetworkFiles:
    """The contents of a container's /etc/hosts, /etc/hostname and /etc/resolv.conf."""

    hosts: str
    hostname: str
    resolv_conf: str


def hosts(own: tuple[str, list[str]] | None, others: list[tuple[str, list[str]]]) -> str:
    """An /etc/hosts: localhost, the container's own (address, names), then the other containers'."""
    lines = [_LOCALHOST]
    if own is not None:
        lines.append(f"{own[0]}\t{' '.join(own[1])}\n")
    if others:
        lines.append("# the other containers on this bridge, kept current by the engine\n")
        lines += [f"{address}\t{' '.join(names)}\n" for address, names in others]
    return "".join(lines)


def loopback_files(hostname: str) -> NetworkFiles:
    """The files of a container whose only link is lo (--network none): localhost, its name, no resolver."""
    return NetworkFiles(hosts(None, []), f"{hostname}\n", "")


def _nameserver(line: str) -> str | None:
    words = line.split()
    return words[1] if len(words) > 1 and words[0] == "nameserver" else None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _has_loopback_server(text: str) -> bool:
    return any(_is_loopback(server) for line in text.splitlines() if (server := _nameserver(line)))


def resolv_conf(host_file: Path = HOST_RESOLV_CONF, upstream: Path = RESOLVED_UPSTREAM) -> str:
    """The host's resolv.conf made usable from a container's own network namespace (no loopback server)."""
    text = host_file.read_text() if host_file.is_file() else ""
    if not _has_loopback_server(text):
        return text
    if upstream.is_file() and not _has_loopback_server(upstream.read_text()):
        return upstream.read_text()
    kept = [line for line in text.splitlines() if not _is_loopback(_nameserver(line) or "")]
    if not any(_nameserver(line) for line in kept):
        kept += [f"nameserver {server}" for server in FALLBACK_NAMESERVERS]
    return "\n".join(kept) + "\n"


def write(directory: Path, files: NetworkFiles) -> None:
    """Write hosts, hostname and resolv.conf into `directory` (created if missing), each in place."""
    directory.mkdir(parents=True, exist_ok=True)
    write_in_place(directory / "hosts", files.hosts)
    write_in_place(directory / "hostname", files.hostname)
    write_in_place(directory / "resolv.conf", files.resolv_conf)


def write_in_place(path: Path, text: str) -> None:
    """Truncate and rewrite `path`, keeping its inode (a bind mount of it sees the new content)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
