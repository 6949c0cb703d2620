"""The server's listening sockets: whose a port is, and when a process takes it.

Several server processes share each port through SO_REUSEPORT, which lets any process
of the same user join the group: a second `modelyard serve` on the same ports would
silently take a share of the connections. So a port is first checked without
SO_REUSEPORT, before any process of this server binds it: one in use by anyone is
refused at once. Each process then binds with SO_REUSEPORT only once it serves, so
the kernel never hands a connection to a process still loading its models.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket

import uvicorn

logger = logging.getLogger(__name__)

RETRY_S = 0.5
MAX_RETRY_S = 8.0


class PortInUse(Exception):
    def __init__(self, host: str, port: int, flag: str):
        self.port = port
        super().__init__(
            f"port {port} on {host} is in use by another program; "
            f"stop it, or serve on another port with {flag}"
        )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def check_free(host: str, ports: dict[str, int]) -> None:
    """Raise `PortInUse` for the first of ``ports`` (flag -> port) that anyone holds.

    SO_REUSEADDR only: a port left in TIME_WAIT by a server just stopped is free, one
    bound or listened on by any process (SO_REUSEPORT or not) is not.
    """
    for flag, port in ports.items():
        with socket.socket(_family(host), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise PortInUse(host, port, flag) from None
                raise


def bound_socket(host: str, port: int, shared: bool) -> socket.socket:
    """A socket bound to the port; ``shared`` by this server's processes (SO_REUSEPORT)."""
    sock = socket.socket(_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


async def bind_when_free(host: str, port: int, what: str, shared: bool) -> socket.socket:
    """A socket bound to ``port``, waiting (with a log line, then quietly, backing off)
    while another program holds it: a port busy for a moment must not end the process."""
    delay = RETRY_S
    warned = False
    while True:
        try:
            sock = bound_socket(host, port, shared)
        except OSError as e:
            if e.errno != errno.EADDRINUSE:
                raise
            if not warned:
                logger.error(
                    "the %s port %d on %s is busy (another program holds it); "
                    "trying again until it is free",
                    what, port, host,
                )  # fmt: skip
                warned = True
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)
            continue
        if warned:
            logger.info("the %s port %d is free again: serving on it", what, port)
        return sock


class HTTPServer(uvicorn.Server):
    """uvicorn as a part of this server: the server's own handlers take the signals."""

    def install_signal_handlers(self) -> None:
        pass
