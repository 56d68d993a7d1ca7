"""MQTT 5 enhanced authentication methods: the plugin seam and the SCRAM-SHA-256 method.

A method answers each client message (CONNECT's, then each AUTH's Authentication Data) with
one ``AuthStep``. ``policy.Policy.enhanced_auth_methods`` is the registry the transport
consults; the transport owns the packets, timeouts and step bound, not the method.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bastion.security.scram import SCRAM_SHA_256, ScramCredential, ScramError, ScramServer

__all__ = [
    "AuthExchange",
    "AuthMethod",
    "AuthStep",
    "Continue",
    "Failure",
    "ScramSha256",
    "Success",
]

# MQTT 5 reason codes (security sits beside, not above, the MQTT package).
_BAD_USER_NAME_OR_PASSWORD = 0x86


class AuthExchange(Protocol):
    """The state of one exchange between two steps."""

    def next(self, auth_data: bytes) -> AuthStep:
        """Answer the Authentication Data of the client's next AUTH packet."""
        ...


@dataclass(frozen=True, slots=True)
class Continue:
    """Send ``data`` to the client in AUTH (0x18 Continue authentication) and wait.

    ``claimed_username``: who the client says it is, once the method knows (not verified
    yet); the transport applies bans and brute-force back-off to that name.
    """

    data: bytes
    exchange: AuthExchange
    claimed_username: str | None = None

    def next(self, auth_data: bytes) -> AuthStep:
        """The step that answers the client's reply."""
        return self.exchange.next(auth_data)


@dataclass(frozen=True, slots=True)
class Success:
    """Authenticated as ``username``; ``data`` goes to the client in CONNACK, if any."""

    username: str
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """Refused: CONNACK with ``reason_code`` (0x80 or above); ``message`` is for people."""

    reason_code: int
    message: str
    claimed_username: str | None = None


AuthStep = Continue | Success | Failure


class AuthMethod(Protocol):
    """One enhanced authentication method, registered under its ``name``.

    ``start`` gets the CONNECT's client identifier and Authentication Data (None if absent).
    Steps run on the event loop, so each must be quick (no password hashing, no I/O); the
    transport bounds the exchange in steps and in time.
    """

    @property
    def name(self) -> str: ...

    def start(self, client_id: str, auth_data: bytes | None) -> AuthStep: ...


class ScramSha256:
    """SCRAM-SHA-256 (RFC 7677) as an MQTT 5 method: one AUTH round trip.

    CONNECT carries client-first; the server's AUTH carries server-first; the client's AUTH
    carries client-final; CONNACK carries server-final (``v=``). Any SCRAM error is a 0x86
    failure whose message names RFC 5802's error value. ``lookup`` gives a user's
    credential; users without one fail at the proof, like a wrong password.
    """

    def __init__(
        self, lookup: Callable[[str], ScramCredential | None], *, decoy_secret: bytes
    ) -> None:
        self._lookup = lookup
        self._decoy_secret = decoy_secret

    @property
    def name(self) -> str:
        return SCRAM_SHA_256

    def start(self, client_id: str, auth_data: bytes | None) -> AuthStep:
        if not auth_data:
            return Failure(
                _BAD_USER_NAME_OR_PASSWORD,
                "SCRAM-SHA-256: the CONNECT must carry client-first as Authentication Data",
            )
        server = ScramServer(self._lookup, decoy_secret=self._decoy_secret)
        try:
            server_first = server.first(auth_data)
        except ScramError as exc:
            return _failure(exc, None)
        return Continue(server_first, _ScramFinal(server), server.username)


class _ScramFinal:
    """Waiting for client-final."""

    def __init__(self, server: ScramServer) -> None:
        self._server = server

    def next(self, auth_data: bytes) -> AuthStep:
        server = self._server
        try:
            server_final = server.final(auth_data)
        except ScramError as exc:
            return _failure(exc, server.username)
        assert server.username is not None
        return Success(server.username, server_final)


def _failure(exc: ScramError, claimed: str | None) -> Failure:
    return Failure(_BAD_USER_NAME_OR_PASSWORD, f"SCRAM-SHA-256: e={exc.error}", claimed)
