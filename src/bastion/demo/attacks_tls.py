"""TLS from the attacker's side: a hand-built TLS 1.0/1.1 ClientHello and a reading of the
server's first answer (ServerHello with its version, an alert, or a closed connection), plus a
TLS 1.2-only handshake that tells whether the broker's minimum is 1.2 or 1.3.

Hand-built so the probe does not depend on the local OpenSSL still being willing to offer the
obsolete versions (OpenSSL 3 refuses them at its default security level). Used by
``attacks_entry.py``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import ssl
import struct
from dataclasses import dataclass
from typing import Final

from bastion.demo.attacks_wire import Dial

__all__ = [
    "TLS_1_0",
    "TLS_1_1",
    "ServerAnswer",
    "accepts_tls",
    "client_hello",
    "legacy_handshake",
    "version_name",
]

TLS_1_0: Final = 0x0301
TLS_1_1: Final = 0x0302
_VERSION_NAMES: Final = {0x0300: "SSL 3.0", 0x0301: "TLS 1.0", 0x0302: "TLS 1.1", 0x0303: "TLS 1.2"}

_HANDSHAKE: Final = 22
_ALERT: Final = 21
_CLIENT_HELLO: Final = 1
_SERVER_HELLO: Final = 2

# What a TLS 1.0/1.1 client of the time offered: ECDHE and RSA key exchange, AES-CBC, 3DES.
_CIPHER_SUITES: Final = (0xC013, 0xC014, 0xC009, 0xC00A, 0x002F, 0x0035, 0x000A)
_GROUPS: Final = (0x001D, 0x0017, 0x0018)  # x25519, secp256r1, secp384r1

ALERTS: Final = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    40: "handshake_failure",
    47: "illegal_parameter",
    50: "decode_error",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
}


def version_name(version: int) -> str:
    return _VERSION_NAMES.get(version, f"0x{version:04X}")


def _extension(kind: int, body: bytes) -> bytes:
    return struct.pack("!HH", kind, len(body)) + body


def _u16_list(values: tuple[int, ...]) -> bytes:
    data = b"".join(struct.pack("!H", v) for v in values)
    return struct.pack("!H", len(data)) + data


def client_hello(version: int, server_name: str | None = None) -> bytes:
    """One TLS record holding a ClientHello that offers exactly ``version`` (no
    supported_versions extension, so nothing newer is on the table)."""
    extensions = _extension(0x000A, _u16_list(_GROUPS))  # supported_groups
    extensions += _extension(0x000B, b"\x01\x00")  # ec_point_formats: uncompressed
    extensions += _extension(0xFF01, b"\x00")  # renegotiation_info (empty)
    if server_name is not None and not _is_ip(server_name):
        name = server_name.encode("ascii")
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        extensions += _extension(0x0000, struct.pack("!H", len(entry)) + entry)
    body = struct.pack("!H", version) + os.urandom(32) + b"\x00"  # no session id
    body += _u16_list(_CIPHER_SUITES) + b"\x01\x00"  # null compression only
    body += struct.pack("!H", len(extensions)) + extensions
    handshake = bytes((_CLIENT_HELLO,)) + len(body).to_bytes(3, "big") + body
    return struct.pack("!BHH", _HANDSHAKE, TLS_1_0, len(handshake)) + handshake


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class ServerAnswer:
    """The server's first answer to a ClientHello."""

    version: int | None = None  # the version of its ServerHello: it agreed to talk
    alert: int | None = None  # the alert it sent instead
    closed: bool = False  # it closed (or reset) the connection without a word
    other: str | None = None  # something else entirely

    def describe(self) -> str:
        if self.version is not None:
            return f"ServerHello {version_name(self.version)}"
        if self.alert is not None:
            return f"alert {ALERTS.get(self.alert, 'unknown')} ({self.alert})"
        if self.other is not None:
            return self.other
        return "connection closed without a ServerHello"


def read_answer(data: bytes) -> ServerAnswer:
    """Interpret the first bytes the server sent (``b""``: it closed the connection)."""
    if not data:
        return ServerAnswer(closed=True)
    if len(data) < 6:
        return ServerAnswer(other=f"{len(data)} unexpected bytes")
    kind = data[0]
    if kind == _ALERT and len(data) >= 7:
        return ServerAnswer(alert=data[6])
    if kind == _HANDSHAKE and data[5] == _SERVER_HELLO and len(data) >= 11:
        return ServerAnswer(version=int.from_bytes(data[9:11], "big"))
    return ServerAnswer(other=f"unexpected record type {kind}")


async def legacy_handshake(dial: Dial, version: int, timeout: float) -> ServerAnswer:
    """Offer only ``version`` over a plain TCP connection and read the first answer."""
    local = (dial.source, 0) if dial.source is not None else None
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(dial.host, dial.port, local_addr=local), timeout
    )
    try:
        writer.write(client_hello(version, dial.host))
        await asyncio.wait_for(writer.drain(), timeout)
        data = b""
        try:
            while len(data) < 11 and not (data[:1] == bytes((_ALERT,)) and len(data) >= 7):
                chunk = await asyncio.wait_for(reader.read(4096), timeout)
                if not chunk:
                    break
                data += chunk
        except ConnectionError:
            pass  # a reset after (or instead of) the answer
        except TimeoutError:
            if not data:
                raise
        return read_answer(data)
    finally:
        writer.transport.abort()


async def accepts_tls(dial: Dial, version: ssl.TLSVersion, timeout: float) -> bool:
    """Does the broker complete a handshake in exactly ``version``? (The certificate is not
    checked: only the version matters here.)"""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = version
    context.maximum_version = version
    local = (dial.source, 0) if dial.source is not None else None
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(
                dial.host,
                dial.port,
                ssl=context,
                server_hostname=dial.host,
                local_addr=local,
                ssl_handshake_timeout=timeout,
            ),
            timeout,
        )
    except (OSError, TimeoutError):
        return False
    writer.transport.abort()
    return True
