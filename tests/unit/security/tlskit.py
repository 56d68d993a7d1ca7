"""Test kit for ``test_tls.py``: one real TLS handshake over 127.0.0.1 and client contexts.

The server side runs in a thread with socket timeouts, so every wait is bounded; the outcome
records what each side saw (version, cipher, peer certificate) or the error it got.
"""

from __future__ import annotations

import socket
import ssl
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

TIMEOUT = 5.0


@dataclass
class Outcome:
    """What one handshake attempt produced on each side."""

    ok: bool = False  # application data went both ways after the handshake
    version: str | None = None  # as the server saw it
    cipher: str | None = None
    peercert: dict[str, object] | None = None
    peercert_der: bytes | None = None
    server_cert_der: bytes | None = None  # what the client received
    server_error: BaseException | None = None
    client_error: BaseException | None = None

    @property
    def errors(self) -> str:
        return f"server: {self.server_error!r}; client: {self.client_error!r}"


def handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, *, server_hostname: str | None = "localhost"
) -> Outcome:
    """Connect ``client`` to ``server`` once over 127.0.0.1 and exchange b"ok" / b"bye"."""
    outcome = Outcome()
    server_done = threading.Event()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]

        def serve() -> None:
            try:
                conn, _ = listener.accept()
                conn.settimeout(TIMEOUT)
                with server.wrap_socket(conn, server_side=True) as tls:
                    outcome.version = tls.version()
                    cipher = tls.cipher()
                    outcome.cipher = cipher[0] if cipher else None
                    outcome.peercert = dict(tls.getpeercert() or {})
                    outcome.peercert_der = tls.getpeercert(binary_form=True)
                    tls.sendall(b"ok")
                    if tls.recv(3) != b"bye":
                        raise ConnectionError("client did not finish")
            except (OSError, ssl.SSLError) as exc:
                outcome.server_error = exc
            finally:
                server_done.set()

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw,
                client.wrap_socket(raw, server_hostname=server_hostname) as tls,
            ):
                outcome.server_cert_der = tls.getpeercert(binary_form=True)
                if tls.recv(2) != b"ok":
                    raise ConnectionError("server closed without data")
                tls.sendall(b"bye")
        except (OSError, ssl.SSLError) as exc:
            outcome.client_error = exc
        thread.join(TIMEOUT)
        assert server_done.is_set(), "server thread did not finish in time"
    outcome.ok = outcome.server_error is None and outcome.client_error is None
    return outcome


def client_context(
    ca: Path,
    *,
    cert: Path | None = None,
    key: Path | None = None,
    max_version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A normal, verifying client (hostname checked), optionally with a client certificate."""
    context = ssl.create_default_context(cafile=ca)
    if cert is not None:
        context.load_cert_chain(cert, key)
    if max_version is not None:
        context.maximum_version = max_version
    return context


def legacy_client(version: ssl.TLSVersion) -> ssl.SSLContext:
    """A client that speaks only ``version`` (TLS 1.0/1.1) with every cipher at SECLEVEL 0.

    Python warns that these versions are deprecated; that is the point of the test.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = version
        context.maximum_version = version
    return context


def permissive_server(certfile: Path, keyfile: Path) -> ssl.SSLContext:
    """A deliberately weak server (TLS 1.0+, SECLEVEL 0): the control for ``legacy_client``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("ALL:@SECLEVEL=0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
    context.load_cert_chain(certfile, keyfile)
    return context
