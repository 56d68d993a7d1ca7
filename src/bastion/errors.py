"""Exception types shared by every layer.

Errors carry the answer for the wire: a ``ProtocolError`` knows the MQTT reason code
that the connection should close with, so transports map them mechanically.
"""

from __future__ import annotations


class BastionError(Exception):
    """Base class of every error Bastion raises on purpose."""


class ConfigError(BastionError):
    """A configuration file, setting or command-line value is invalid."""


class ProtocolError(BastionError):
    """Input broke the protocol; ``reason`` is the MQTT 5 reason code to answer with.

    For MQTT 3.1.1 clients the connection is simply closed (or, during CONNECT, the
    CONNACK return code derived from ``reason`` is sent).
    """

    def __init__(self, message: str, reason: int = 0x81) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason

    def __repr__(self) -> str:
        return f"ProtocolError({self.message!r}, reason=0x{self.reason:02X})"


class MalformedPacket(ProtocolError):  # noqa: N818 - the spec's name
    """The bytes do not decode as a packet (reason 0x81 Malformed Packet)."""

    def __init__(self, message: str, reason: int = 0x81) -> None:
        super().__init__(message, reason)
