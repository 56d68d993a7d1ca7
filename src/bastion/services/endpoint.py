"""Where and as whom a service connects, how often it retries, and why a connection failed.

``Endpoint`` (host, port, TLS files, credentials, client id) and ``Backoff`` (the retry
schedule) configure ``netclient.ServiceClient``; ``ConnectError`` and the ``describe_*``
helpers turn socket, TLS and CONNACK failures into the one-line reasons the commands print.
"""

from __future__ import annotations

import contextlib
import random
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bastion.errors import BastionError, ConfigError

__all__ = [
    "DEFAULT_PORT",
    "TRANSIENT_REFUSALS",
    "Backoff",
    "ConnectError",
    "Endpoint",
    "close_stranded_sockets",
    "describe_refusal",
    "describe_socket_error",
    "reason_text",
]

DEFAULT_PORT: Final = 8883

# CONNACK refusals worth retrying; every other refusal (bad credentials, not authorised,
# banned, bad client id, ...) will not change by itself, so the client gives up at once.
TRANSIENT_REFUSALS: Final = frozenset({0x80, 0x83, 0x88, 0x89, 0x97, 0x9F})


class ConnectError(BastionError):
    """The client could not (re)connect; ``permanent`` if retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and as whom a service connects. TLS is on iff ``cafile`` is set.

    With TLS the server certificate must chain to ``cafile`` and name ``host`` (hostname
    checking is always on); ``certfile``/``keyfile`` add a client certificate.
    """

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    cafile: Path | None = None
    certfile: Path | None = None
    keyfile: Path | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    client_id: str = ""
    keepalive: int = 30

    def __post_init__(self) -> None:
        if not self.host:
            raise ConfigError("host must not be empty")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port must be 1-65535, got {self.port}")
        if not 0 <= self.keepalive <= 65535:
            raise ConfigError(f"keepalive must be 0-65535 seconds, got {self.keepalive}")
        if (self.certfile is None) != (self.keyfile is None):
            raise ConfigError("a client certificate needs both certfile and keyfile")
        if self.certfile is not None and self.cafile is None:
            raise ConfigError("a client certificate needs TLS: give the CA file too")
        if self.password is not None and self.username is None:
            raise ConfigError("a password needs a username")
        if len(self.client_id.encode()) > 65535:
            raise ConfigError("client id is too long")

    @property
    def tls(self) -> bool:
        """Whether the connection uses TLS."""
        return self.cafile is not None

    def url(self) -> str:
        """``mqtts://host:port`` (or ``mqtt://``), for logs and messages."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The client TLS context (TLS 1.2 minimum, 1.3 preferred), or None without TLS.

        ConfigError (one line) if the CA, certificate or key cannot be loaded.
        """
        if self.cafile is None:
            return None
        try:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(self.cafile))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load CA file {self.cafile}: {_os_reason(exc)}") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.check_hostname = True
        context.verify_mode = ssl.CERT_REQUIRED
        if self.certfile is not None and self.keyfile is not None:
            try:
                context.load_cert_chain(str(self.certfile), str(self.keyfile))
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load client certificate {self.certfile} with key {self.keyfile}: "
                    f"{_os_reason(exc)}"
                ) from None
        return context


@dataclass(frozen=True, slots=True)
class Backoff:
    """Retry schedule: ``first`` seconds, doubling up to ``maximum``, at most ``attempts`` tries.

    The budget applies to the first connection and to each outage after a connection that
    stayed up a while (``netclient.STABLE_AFTER``); shorter connections keep spending it.
    """

    first: float = 0.5
    maximum: float = 15.0
    attempts: int = 12  # about 100 s of trying (0.5, 1, 2, 4, 8, then 15 s apart)

    def __post_init__(self) -> None:
        if not 0 < self.first <= self.maximum:
            raise ConfigError("backoff needs 0 < first <= maximum")
        if self.attempts < 1:
            raise ConfigError("backoff needs at least one attempt")

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failed attempt (with 20 % jitter)."""
        base = min(self.maximum, self.first * 2.0 ** max(0, failures - 1))
        return base * random.uniform(0.8, 1.0)  # jitter only; not a secret


def _os_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).replace("_", " ").lower()
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def describe_socket_error(exc: OSError, endpoint: Endpoint) -> tuple[str, bool]:
    """A one-line reason for a failed TCP/TLS connect and whether retrying cannot help."""
    where = f"{endpoint.host}:{endpoint.port}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or _os_reason(exc)
        return f"TLS certificate verification failed for {where}: {detail}", True
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake with {where} failed: {_os_reason(exc)}", False
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused by {where} (is the broker running?)", False
    if isinstance(exc, TimeoutError):
        return f"timed out connecting to {where}", False
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve host {endpoint.host!r}: {_os_reason(exc)}", False
    return f"cannot connect to {where}: {_os_reason(exc)}", False


def reason_text(reason: Any) -> str:
    """A paho reason code as ``Name (0xNN)``, for logs and messages."""
    value = getattr(reason, "value", None)
    name = str(reason) if reason is not None else "unknown"
    return f"{name} (0x{value:02X})" if isinstance(value, int) else name


def describe_refusal(reason: Any, endpoint: Endpoint) -> ConnectError:
    """The error of a CONNACK that refused the connection; permanent unless the reason is
    one of ``TRANSIENT_REFUSALS``."""
    code = getattr(reason, "value", 0x80)
    return ConnectError(
        f"{endpoint.url()} refused the connection: {reason_text(reason)}",
        permanent=code not in TRANSIENT_REFUSALS,
    )


def close_stranded_sockets(exc: BaseException) -> None:
    """Close sockets a failed connect left open in the raising frames.

    paho does not close the TLS socket when the handshake fails; left to the garbage
    collector it would only be closed with a ResourceWarning.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in list(tb.tb_frame.f_locals.values()):
            if isinstance(value, socket.socket):
                with contextlib.suppress(OSError):
                    value.close()
        tb = tb.tb_next
