"""Where the demo broker listens: 8883 when it is free, else a free port (and say so).

An explicitly asked-for port that is taken is an error with what to do instead; a
wildcard bind address means the clients connect over loopback.
"""

from __future__ import annotations

import errno
import socket
from typing import Final

from bastion.demo.errors import DemoError

__all__ = ["DEFAULT_PORT", "connect_host", "pick_port"]

DEFAULT_PORT: Final = 8883


def connect_host(host: str) -> str:
    """Where clients connect when the broker binds ``host`` (a wildcard means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def pick_port(host: str, wanted: int | None) -> tuple[int, str | None]:
    """The port to listen on and, when it is not the one asked for, a note saying why.

    An explicit ``wanted`` port that is taken is a ``DemoError``; the default 8883 falls
    back to a free port.
    """
    port = DEFAULT_PORT if wanted is None else wanted
    problem = _bind_problem(host, port)
    if problem is None:
        return port, None
    if wanted is not None:
        raise DemoError(
            f"cannot listen on {host}:{port}: the port is {problem}; choose another --port, "
            "or leave it out to use a free one"
        )
    free = _free_port(host)
    return free, f"port {port} on {host} is {problem}; using port {free} instead"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound (as the broker binds: SO_REUSEADDR), or None."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return "taken (another broker?)"
            if exc.errno == errno.EACCES:
                return "not allowed (a privileged port)"
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT) or isinstance(
                exc, socket.gaierror
            ):
                raise DemoError(
                    f"cannot listen on {host}: not an address of this machine"
                ) from None
            return exc.strerror or str(exc)
    return None


def _free_port(host: str) -> int:
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
