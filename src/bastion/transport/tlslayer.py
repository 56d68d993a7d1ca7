"""TLS without a socket: one connection's ``ssl.SSLObject`` over a pair of memory BIOs.

The listeners accept plain TCP and run TLS here, inside the connection's protocol object, so
the front sees every handshake: it can refuse a banned or over-limit address before any
cryptography, and report a failed handshake (with the peer's address) as a security event.
asyncio's own TLS (``create_server(ssl=...)``) drops failed handshakes silently.

``receive`` takes bytes from the wire and returns the plaintext they complete, driving the
handshake first; ``send`` queues plaintext; ``pending_output`` is what must go on the wire
next (handshake records, alerts, application data, close_notify). Call ``pending_output``
after every ``receive`` and ``send``, and also after a ``TlsHandshakeError``: it holds the
alert that tells the client why it was refused.
"""

from __future__ import annotations

import contextlib
import ssl

__all__ = ["TlsError", "TlsHandshakeError", "TlsSession"]

# Reads are done in chunks of this size until OpenSSL wants more input.
_READ_CHUNK = 64 * 1024

# OpenSSL reasons meaning this side refused the peer's certificate (or its absence).
_CERTIFICATE_REASONS = frozenset(
    {
        "CERTIFICATE_VERIFY_FAILED",
        "PEER_DID_NOT_RETURN_A_CERTIFICATE",
        "NO_CERTIFICATE_RETURNED",
        "CERTIFICATE_REQUIRED",
    }
)


class TlsError(Exception):
    """The TLS session failed; ``detail`` says why in a few words (for logs and audit)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class TlsHandshakeError(TlsError):
    """The handshake failed; ``certificate`` if the peer's certificate was the reason."""

    def __init__(self, detail: str, certificate: bool = False) -> None:
        super().__init__(detail)
        self.certificate = certificate


class TlsSession:
    """One TLS connection, driven by bytes in and bytes out (no I/O of its own)."""

    def __init__(
        self,
        context: ssl.SSLContext,
        server_side: bool = True,
        server_hostname: str | None = None,
    ) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._object = context.wrap_bio(
            self._incoming,
            self._outgoing,
            server_side=server_side,
            server_hostname=server_hostname,
        )
        self._handshake_done = False
        self._failed = False
        self._peer_closed = False  # the peer sent close_notify
        self._closed = False  # we sent close_notify
        self._queued: list[bytes] = []  # plaintext sent before the handshake completed

    # ------------------------------------------------------------------ state

    @property
    def handshake_done(self) -> bool:
        return self._handshake_done

    @property
    def failed(self) -> bool:
        return self._failed

    @property
    def peer_closed(self) -> bool:
        """The peer ended the session with close_notify: treat it as end of stream."""
        return self._peer_closed

    @property
    def ssl_object(self) -> ssl.SSLObject:
        return self._object

    def peer_certificate(self) -> dict[str, object] | None:
        """The verified peer certificate (``getpeercert()`` form), or None."""
        if not self._handshake_done:
            return None
        cert = self._object.getpeercert()
        return dict(cert) if cert else None

    def version(self) -> str | None:
        return self._object.version() if self._handshake_done else None

    def cipher(self) -> str | None:
        cipher = self._object.cipher() if self._handshake_done else None
        return cipher[0] if cipher else None

    # ------------------------------------------------------------------ data

    def receive(self, raw: bytes | memoryview) -> bytes:
        """Feed bytes from the wire; return the plaintext now readable (maybe b"").

        Raises ``TlsHandshakeError`` if the handshake fails and ``TlsError`` if an
        established session breaks; either way ``pending_output`` may hold an alert.
        """
        if self._failed:
            raise TlsError("session already failed")
        if raw:
            self._incoming.write(raw)
        if not self._handshake_done:
            try:
                self._object.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            except ssl.SSLError as exc:
                self._failed = True
                raise TlsHandshakeError(_describe(exc), _is_certificate_error(exc)) from exc
            self._handshake_done = True
            queued, self._queued = self._queued, []
            for plain in queued:
                self._write(plain)
        return self._read_all()

    def send(self, plain: bytes) -> None:
        """Encrypt ``plain`` (queued until the handshake completes); see ``pending_output``."""
        if not plain or self._failed or self._closed:
            return
        if not self._handshake_done:
            self._queued.append(plain)
            return
        self._write(plain)

    def pending_output(self) -> bytes:
        """Ciphertext to write to the wire now (b"" if none)."""
        return self._outgoing.read() if self._outgoing.pending else b""

    def close(self) -> bytes:
        """Send close_notify (once, after a completed handshake); return the bytes to write."""
        if self._handshake_done and not self._failed and not self._closed:
            self._closed = True
            # SSLWantReadError: the peer's close_notify is not waited for.
            with contextlib.suppress(ssl.SSLError):
                self._object.unwrap()
        return self.pending_output()

    # ------------------------------------------------------------------ internals

    def _read_all(self) -> bytes:
        chunks: list[bytes] = []
        while not self._peer_closed:
            try:
                chunk = self._object.read(_READ_CHUNK)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._peer_closed = True
                break
            except ssl.SSLError as exc:
                self._failed = True
                raise TlsError(_describe(exc)) from exc
            if not chunk:  # how CPython reports a close_notify it has received
                self._peer_closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def _write(self, plain: bytes) -> None:
        try:
            self._object.write(plain)
        except ssl.SSLError as exc:
            self._failed = True
            raise TlsError(_describe(exc)) from exc


def _is_certificate_error(exc: ssl.SSLError) -> bool:
    return isinstance(exc, ssl.SSLCertVerificationError) or exc.reason in _CERTIFICATE_REASONS


def _describe(exc: ssl.SSLError) -> str:
    """``exc`` in a few words: the OpenSSL reason, and the verification problem if any."""
    reason = (exc.reason or "").lower().replace("_", " ")
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return f"{reason}: {exc.verify_message}" if reason else str(exc.verify_message)
    if reason:
        return reason
    return exc.strerror or str(exc) or type(exc).__name__
