"""The controller <-> child channel: one JSON message per datagram on a SOCK_SEQPACKET socketpair.

SOCK_SEQPACKET keeps message boundaries (one send, one receive), so no framing is needed. A file
descriptor can ride along with a message (SCM_RIGHTS): this is how the child hands the controller the
master side of a terminal it opened inside the container, as runc's `--console-socket` does.

End of file means the child is gone — or that it called execve: the child's end is close-on-exec, so
a successful exec closes it, and the controller reads EOF. This is how Python's subprocess knows that
exec worked, and what runc's exec fifo does.
"""

from __future__ import annotations

import json
import socket

MAX_MESSAGE = 65536


def pair() -> tuple[socket.socket, socket.socket]:
    """A connected (controller, child) pair; both ends are close-on-exec."""
    return socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)


def send(sock: socket.socket, message: dict, fds: list[int] = ()) -> None:
    """Send one message, with file descriptors if any."""
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict | None, list[int]]:
    """Receive one message and any descriptors that came with it; (None, []) at end of file."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, 4)
    if not data:
        return None, fds
    return json.loads(data), fds
