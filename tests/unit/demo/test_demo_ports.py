"""Where the demo listens (``demo/ports.py``): 8883, a free port instead, or a clear error."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from bastion.demo import ports
from bastion.demo.errors import DemoError


@pytest.fixture
def taken() -> Iterator[int]:
    """A loopback port with a listener on it (ours, closed after the test)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_a_free_default_port_is_used_as_is(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        free = int(sock.getsockname()[1])
    monkeypatch.setattr(ports, "DEFAULT_PORT", free)
    assert ports.pick_port("127.0.0.1", None) == (free, None)


def test_a_taken_default_port_falls_back_to_a_free_one(
    monkeypatch: pytest.MonkeyPatch, taken: int
) -> None:
    monkeypatch.setattr(ports, "DEFAULT_PORT", taken)
    port, note = ports.pick_port("127.0.0.1", None)
    assert port != taken
    assert (
        note == f"port {taken} on 127.0.0.1 is taken (another broker?); using port {port} instead"
    )
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # it really is free


def test_a_taken_explicit_port_is_an_error(taken: int) -> None:
    with pytest.raises(DemoError, match=rf"cannot listen on 127\.0\.0\.1:{taken}: .*taken.*--port"):
        ports.pick_port("127.0.0.1", taken)


def test_an_address_of_another_machine_is_an_error() -> None:
    with pytest.raises(DemoError, match="not an address of this machine"):
        ports.pick_port("192.0.2.1", 18883)


@pytest.mark.parametrize(
    ("bind", "connect"),
    [
        ("0.0.0.0", "127.0.0.1"),
        ("::", "::1"),
        ("127.0.0.1", "127.0.0.1"),
        ("localhost", "localhost"),
    ],
)
def test_clients_connect_over_loopback_to_a_wildcard(bind: str, connect: str) -> None:
    assert ports.connect_host(bind) == connect
