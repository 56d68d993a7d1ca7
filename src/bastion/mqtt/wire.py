"""MQTT's primitive wire types: variable byte integers, big-endian integers, strings, binary.

Bounded readers used by ``properties.py`` and ``codec.py``: every read takes the end of
the region it may use and raises ``MalformedPacket`` instead of running past it.
"""

from __future__ import annotations

from struct import Struct
from typing import Final

from bastion.errors import MalformedPacket

Buffer = bytes | bytearray | memoryview

MAX_VARIABLE_BYTE_INT: Final = 268_435_455
MAX_TWO_BYTE_INT: Final = 0xFFFF

_ONE_BYTE: Final = tuple(bytes((i,)) for i in range(256))
_U16: Final = Struct(">H")
_U32: Final = Struct(">I")
pack_u16: Final = _U16.pack
pack_u32: Final = _U32.pack


def byte(n: int) -> bytes:
    """One byte 0..255 as a (cached) bytes object."""
    return _ONE_BYTE[n]


def encode_variable_byte_int(n: int) -> bytes:
    """Encode 0..268_435_455 in 1-4 bytes, least significant group first (spec 1.5.5)."""
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0 or n > MAX_VARIABLE_BYTE_INT:
        raise ValueError(f"{n} does not fit a variable byte integer")
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def read_variable_byte_int(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """Decode a variable byte integer at ``pos``; return (value, position after it).

    More than 4 bytes, a non-minimal encoding (spec MQTT-1.5.5-1) or running past
    ``end`` raise ``MalformedPacket``.
    """
    value = 0
    shift = 0
    for index in range(4):
        if pos >= end:
            raise MalformedPacket("truncated variable byte integer")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            if b == 0 and index:
                raise MalformedPacket("variable byte integer not minimally encoded")
            return value, pos
        shift += 7
    raise MalformedPacket("variable byte integer longer than 4 bytes")


def read_u8(buf: Buffer, pos: int, end: int) -> int:
    if pos >= end:
        raise MalformedPacket("truncated packet: expected a byte")
    return buf[pos]


def read_u16(buf: Buffer, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise MalformedPacket("truncated packet: expected a two byte integer")
    return (buf[pos] << 8) | buf[pos + 1]


def read_u32(buf: Buffer, pos: int, end: int) -> int:
    if pos + 4 > end:
        raise MalformedPacket("truncated packet: expected a four byte integer")
    return int.from_bytes(buf[pos : pos + 4], "big")


def read_binary(buf: Buffer, pos: int, end: int) -> tuple[bytes, int]:
    """Binary Data: a two byte length then that many bytes."""
    if pos + 2 > end:
        raise MalformedPacket("truncated packet: expected a length prefix")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated packet: length prefix runs past the packet")
    return bytes(buf[pos + 2 : stop]), stop


class InvalidUtf8(MalformedPacket):
    """A UTF-8 Encoded String is not well-formed UTF-8 or carries U+0000 (0x81, §1.5.4).

    A distinct type so that fronts can report this attack apart from other malformed input.
    """


def read_utf8(buf: Buffer, pos: int, end: int) -> tuple[str, int]:
    """UTF-8 Encoded String (spec 1.5.4): well-formed UTF-8 without U+0000.

    Python's strict decoder already rejects overlong forms, encoded surrogates and code
    points above U+10FFFF; every string field of every packet is read here, so a bad one
    raises ``InvalidUtf8`` wherever it is.
    """
    if pos + 2 > end:
        raise MalformedPacket("truncated packet: expected a string length")
    stop = pos + 2 + ((buf[pos] << 8) | buf[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated packet: string runs past the packet")
    try:
        text = str(buf[pos + 2 : stop], "utf-8")
    except UnicodeDecodeError:
        raise InvalidUtf8("string is not well-formed UTF-8") from None
    if "\x00" in text:
        raise InvalidUtf8("string contains U+0000")
    return text, stop


def encode_binary(data: bytes) -> bytes:
    """Binary Data with its two byte length prefix."""
    if len(data) > MAX_TWO_BYTE_INT:
        raise ValueError("binary data longer than 65535 bytes")
    return pack_u16(len(data)) + data


def encode_utf8(text: str) -> bytes:
    """UTF-8 Encoded String with its two byte length prefix."""
    data = text.encode("utf-8")
    if len(data) > MAX_TWO_BYTE_INT:
        raise ValueError("string longer than 65535 bytes once encoded")
    return pack_u16(len(data)) + data


__all__ = [
    "MAX_TWO_BYTE_INT",
    "MAX_VARIABLE_BYTE_INT",
    "Buffer",
    "InvalidUtf8",
    "byte",
    "encode_binary",
    "encode_utf8",
    "encode_variable_byte_int",
    "pack_u16",
    "pack_u32",
    "read_binary",
    "read_u8",
    "read_u16",
    "read_u32",
    "read_utf8",
    "read_variable_byte_int",
]
