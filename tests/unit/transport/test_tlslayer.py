"""Unit tests for ``bastion.transport.tlslayer``: a server ``TlsSession`` talking to a client
``SSLObject`` entirely in memory (no sockets), against the listener context of a real
``ServerContextHolder`` (so the ClientHello callback that picks the certificate runs too).

Certificates come from ``bastion.security.pki``; client contexts from ``tlskit.py``.
"""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import pytest

from bastion.security import pki
from bastion.security.tls import ServerContextHolder, TlsSettings, identity_from_peer_cert
from bastion.transport.tlslayer import TlsError, TlsHandshakeError, TlsSession

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "security"))
from tlskit import client_context

ROUNDS = 20  # flights are few; a handshake that needs more is stuck


class Client:
    """A TLS client over memory BIOs: what it writes goes to ``outbox``."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        self.done = False
        self.error: ssl.SSLError | None = None

    def step(self) -> None:
        if self.done or self.error is not None:
            return
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            return
        except ssl.SSLError as exc:
            self.error = exc
            return
        self.done = True

    def outbox(self) -> bytes:
        return self.outgoing.read()

    def read_all(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self.tls.read(1 << 16)
            except ssl.SSLWantReadError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def connect(server: TlsSession, client: Client) -> bytes:
    """Run the handshake to its end; return the plaintext the server got on the way."""
    received = b""
    for _ in range(ROUNDS):
        client.step()
        received += server.receive(client.outbox())
        client.incoming.write(server.pending_output())
        if server.handshake_done and client.done:
            return received
    raise AssertionError(f"handshake stuck (client error: {client.error!r})")


def fail(server: TlsSession, client: Client) -> tuple[TlsHandshakeError, bytes]:
    """Run a handshake that the server must refuse; return its error and the alert bytes."""
    for _ in range(ROUNDS):
        client.step()
        try:
            server.receive(client.outbox())
        except TlsHandshakeError as exc:
            return exc, server.pending_output()
        client.incoming.write(server.pending_output())
    raise AssertionError("the server never refused the handshake")


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    pki.init_ca(directory)
    pki.issue_client(directory, "dev1")
    return directory


def server_session(pki_dir: Path, **changes: object) -> TlsSession:
    settings = TlsSettings(
        certfile=pki_dir / "server.crt",
        keyfile=pki_dir / "server.key",
        **changes,  # type: ignore[arg-type]
    )
    return TlsSession(ServerContextHolder(settings).listener_context, server_side=True)


def test_tls13_handshake_and_data_both_ways(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    client = Client(client_context(pki_dir / "ca.crt"))
    assert not server.handshake_done
    assert connect(server, client) == b""
    assert server.handshake_done
    assert server.version() == "TLSv1.3"
    assert client.tls.version() == "TLSv1.3"
    assert server.peer_certificate() is None  # no client certificate asked for

    client.tls.write(b"\x10hello")
    assert server.receive(client.outbox()) == b"\x10hello"
    server.send(b"\x20world")
    server.send(b"!")
    client.incoming.write(server.pending_output())
    assert client.read_all() == b"\x20world!"
    assert server.pending_output() == b""


def test_data_in_the_client_finished_flight_is_delivered(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    client = Client(client_context(pki_dir / "ca.crt"))
    client.step()  # ClientHello
    server.receive(client.outbox())
    client.incoming.write(server.pending_output())
    client.step()  # Finished: done on the client side
    assert client.done
    client.tls.write(b"early enough")  # same flight as the Finished message
    assert server.receive(client.outbox()) == b"early enough"
    assert server.handshake_done


def test_plaintext_sent_before_the_handshake_waits_for_it(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    server.send(b"queued")
    client = Client(client_context(pki_dir / "ca.crt"))
    connect(server, client)
    assert client.read_all() == b"queued"


def test_tls12_client_is_refused_by_a_tls13_server_with_an_alert(pki_dir: Path) -> None:
    server = server_session(pki_dir)  # min_version 1.3 by default
    client = Client(client_context(pki_dir / "ca.crt", max_version=ssl.TLSVersion.TLSv1_2))
    error, alert = fail(server, client)
    assert not error.certificate
    assert "protocol" in error.detail
    assert server.failed and not server.handshake_done
    assert alert[:1] == b"\x15"  # a TLS alert record goes back to the client
    client.incoming.write(alert)
    client.step()
    assert client.error is not None
    with pytest.raises(TlsError):
        server.receive(b"")


def test_garbage_is_a_handshake_failure(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    with pytest.raises(TlsHandshakeError) as caught:
        server.receive(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00")  # a plain CONNECT
    assert not caught.value.certificate


def test_mtls_client_without_a_certificate_is_refused(pki_dir: Path) -> None:
    server = server_session(pki_dir, cafile=pki_dir / "ca.crt", require_certificate=True)
    client = Client(client_context(pki_dir / "ca.crt"))
    error, alert = fail(server, client)
    assert error.certificate
    assert "certificate" in error.detail
    assert alert  # the client is told


def test_mtls_client_from_another_ca_is_refused(pki_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    pki.init_ca(other)
    pki.issue_client(other, "intruder")
    server = server_session(pki_dir, cafile=pki_dir / "ca.crt", require_certificate=True)
    client = Client(
        client_context(pki_dir / "ca.crt", cert=other / "intruder.crt", key=other / "intruder.key")
    )
    error, _ = fail(server, client)
    assert error.certificate
    assert "verify failed" in error.detail


def test_mtls_client_with_a_certificate_gets_its_identity(pki_dir: Path) -> None:
    server = server_session(pki_dir, cafile=pki_dir / "ca.crt", require_certificate=True)
    client = Client(
        client_context(pki_dir / "ca.crt", cert=pki_dir / "dev1.crt", key=pki_dir / "dev1.key")
    )
    connect(server, client)
    assert identity_from_peer_cert(server.peer_certificate(), "cn") == "dev1"


def test_close_notify_both_ways(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    client = Client(client_context(pki_dir / "ca.crt"))
    connect(server, client)

    client.tls.write(b"last words")
    with pytest.raises(ssl.SSLWantReadError):
        client.tls.unwrap()  # close_notify out, waiting for the server's
    assert server.receive(client.outbox()) == b"last words"
    assert server.peer_closed
    goodbye = server.close()
    assert goodbye
    assert server.close() == b""  # only once
    client.incoming.write(goodbye)
    client.tls.unwrap()  # completes: the server's close_notify arrived


def test_server_close_before_the_handshake_sends_nothing(pki_dir: Path) -> None:
    assert server_session(pki_dir).close() == b""


def test_one_megabyte_round_trip(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    client = Client(client_context(pki_dir / "ca.crt"))
    connect(server, client)
    payload = bytes(range(256)) * 4096  # 1 MiB

    client.tls.write(payload)
    wire = client.outbox()
    received = b"".join(
        server.receive(wire[start : start + 1500]) for start in range(0, len(wire), 1500)
    )
    assert received == payload

    server.send(received)  # in one call: many records
    client.incoming.write(server.pending_output())
    assert client.read_all() == payload


def test_bytes_split_anywhere_still_handshake(pki_dir: Path) -> None:
    server = server_session(pki_dir)
    client = Client(client_context(pki_dir / "ca.crt"))
    for _ in range(ROUNDS):
        client.step()
        for byte in client.outbox():
            server.receive(bytes([byte]))
        client.incoming.write(server.pending_output())
        if server.handshake_done and client.done:
            break
    assert server.handshake_done and client.done
