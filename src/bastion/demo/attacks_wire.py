"""Raw MQTT 5 for the attacker: a small encoder that writes what no honest client would (invalid
UTF-8, oversized packets, floods, acknowledgements withheld) and an asyncio connection that
reports exactly what the broker answered: the packet, or that it closed the connection.

Kept apart from ``bastion.mqtt`` on purpose: the broker's codec refuses to build the packets an
attacker sends. Used by ``attacks_entry.py`` and ``attacks_inside.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Final

from bastion.mqtt.reason_codes import ReasonCode

__all__ = [
    "CONNACK",
    "DISCONNECT",
    "PUBACK",
    "PUBCOMP",
    "PUBLISH",
    "PUBREC",
    "SUBACK",
    "ConnAck",
    "Dial",
    "Packet",
    "RawPublish",
    "RawSession",
    "WillSpec",
    "WireError",
    "decode_connack",
    "decode_publish",
    "decode_reason",
    "decode_suback",
    "encode_connect",
    "encode_disconnect",
    "encode_publish",
    "encode_subscribe",
    "publish_head",
    "reason_text",
    "varint",
]

CONNECT: Final = 1
CONNACK: Final = 2
PUBLISH: Final = 3
PUBACK: Final = 4
PUBREC: Final = 5
PUBREL: Final = 6
PUBCOMP: Final = 7
SUBSCRIBE: Final = 8
SUBACK: Final = 9
DISCONNECT: Final = 14

MAX_INBOUND: Final = 1 << 20  # the largest packet we accept from the broker
READ_CHUNK: Final = 65536

# MQTT 5 property identifier -> its wire type (spec 2.2.2.2), to walk a property list.
_BYTE, _U16, _U32, _VARINT, _STRING, _BINARY, _PAIR = range(7)
_PROPERTY_TYPES: Final = {
    0x01: _BYTE, 0x02: _U32, 0x03: _STRING, 0x08: _STRING, 0x09: _BINARY, 0x0B: _VARINT,
    0x11: _U32, 0x12: _STRING, 0x13: _U16, 0x15: _STRING, 0x16: _BINARY, 0x17: _BYTE,
    0x18: _U32, 0x19: _BYTE, 0x1A: _STRING, 0x1C: _STRING, 0x1F: _STRING, 0x21: _U16,
    0x22: _U16, 0x23: _U16, 0x24: _BYTE, 0x25: _BYTE, 0x26: _PAIR, 0x27: _U32, 0x28: _BYTE,
    0x29: _BYTE, 0x2A: _BYTE,
}  # fmt: skip
SESSION_EXPIRY: Final = 0x11
WILL_DELAY: Final = 0x18
MAXIMUM_PACKET_SIZE: Final = 0x27


class WireError(ValueError):
    """The broker sent bytes we cannot read as the packet we expected."""


def reason_text(code: int) -> str:
    """``0x87 not authorized``: a reason code as the details show it."""
    if code == 0:
        return "0x00 success"
    try:
        name = ReasonCode(code).name.lower().replace("_", " ")
    except ValueError:
        name = "unknown reason"
    return f"0x{code:02X} {name}"


# ----------------------------------------------------------------- encoding


def varint(value: int) -> bytes:
    """A Variable Byte Integer (spec 1.5.5)."""
    if not 0 <= value <= 268_435_455:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(data: bytes) -> bytes:
    """Two-byte length prefix: a UTF-8 string or binary field, written as given."""
    return struct.pack("!H", len(data)) + data


def _packet(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + varint(len(body)) + body


def _properties(values: dict[int, int]) -> bytes:
    """A property list of four-byte integer properties (all the attacker needs)."""
    body = b"".join(bytes((ident,)) + struct.pack("!I", value) for ident, value in values.items())
    return varint(len(body)) + body


@dataclass(frozen=True, slots=True)
class WillSpec:
    """A Last Will for CONNECT. ``delay`` is the Will Delay Interval in seconds."""

    topic: str
    payload: bytes
    delay: int = 0
    qos: int = 0
    retain: bool = False


def encode_connect(
    client_id: str,
    *,
    username: str | None = None,
    password: str | None = None,
    clean_start: bool = True,
    keepalive: int = 30,
    session_expiry: int = 0,
    will: WillSpec | None = None,
) -> bytes:
    """An MQTT 5 CONNECT."""
    flags = 0x02 if clean_start else 0
    payload = _field(client_id.encode())
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
        will_props = _properties({WILL_DELAY: will.delay} if will.delay else {})
        payload += will_props + _field(will.topic.encode()) + _field(will.payload)
    if username is not None:
        flags |= 0x80
        payload += _field(username.encode())
    if password is not None:
        flags |= 0x40
        payload += _field(password.encode())
    props = _properties({SESSION_EXPIRY: session_expiry} if session_expiry else {})
    header = _field(b"MQTT") + bytes((5, flags)) + struct.pack("!H", keepalive) + props
    return _packet(CONNECT << 4, header + payload)


def publish_head(topic: bytes, payload_size: int, *, qos: int = 0, packet_id: int = 0) -> bytes:
    """Everything of a PUBLISH before its payload; ``topic`` goes out byte for byte."""
    variable = _field(topic) + (struct.pack("!H", packet_id) if qos else b"") + b"\x00"
    remaining = len(variable) + payload_size
    return bytes(((PUBLISH << 4) | (qos << 1),)) + varint(remaining) + variable


def encode_publish(topic: bytes, payload: bytes, *, qos: int = 0, packet_id: int = 0) -> bytes:
    """A whole PUBLISH (no properties)."""
    return publish_head(topic, len(payload), qos=qos, packet_id=packet_id) + payload


def encode_subscribe(packet_id: int, topic_filter: str, qos: int) -> bytes:
    """SUBSCRIBE to one filter with the given maximum QoS."""
    body = struct.pack("!H", packet_id) + b"\x00" + _field(topic_filter.encode()) + bytes((qos,))
    return _packet((SUBSCRIBE << 4) | 0x02, body)


def encode_disconnect(reason: int = 0, *, session_expiry: int | None = None) -> bytes:
    """DISCONNECT, optionally changing the Session Expiry Interval (e.g. to 0: end it)."""
    props = {} if session_expiry is None else {SESSION_EXPIRY: session_expiry}
    return _packet(DISCONNECT << 4, bytes((reason,)) + _properties(props))


# ----------------------------------------------------------------- decoding


@dataclass(frozen=True, slots=True)
class Packet:
    """One packet from the broker: its type, the low nibble of its first byte, its body."""

    kind: int
    flags: int
    body: bytes


@dataclass(frozen=True, slots=True)
class ConnAck:
    session_present: bool
    reason: int
    max_packet_size: int | None  # the broker's Maximum Packet Size, if it announced one


@dataclass(frozen=True, slots=True)
class RawPublish:
    topic: bytes
    payload: bytes
    qos: int
    packet_id: int | None
    dup: bool


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(4):
        if pos >= len(data):
            raise WireError("truncated variable byte integer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise WireError("variable byte integer longer than four bytes")


def _need(data: bytes, pos: int, size: int) -> None:
    if pos + size > len(data):
        raise WireError("truncated packet")


def _properties_at(data: bytes, pos: int) -> tuple[dict[int, int | bytes], int]:
    """Walk a property list; integer properties as ints, strings and binaries as bytes."""
    length, pos = _read_varint(data, pos)
    end = pos + length
    _need(data, pos, length)
    found: dict[int, int | bytes] = {}
    while pos < end:
        ident, pos = _read_varint(data, pos)
        kind = _PROPERTY_TYPES.get(ident)
        if kind is None:
            raise WireError(f"unknown property 0x{ident:02X}")
        if kind == _VARINT:
            found[ident], pos = _read_varint(data, pos)
            continue
        size = {_BYTE: 1, _U16: 2, _U32: 4}.get(kind)
        if size is not None:
            _need(data, pos, size)
            found[ident] = int.from_bytes(data[pos : pos + size], "big")
            pos += size
            continue
        for _ in range(2 if kind == _PAIR else 1):
            _need(data, pos, 2)
            size = int.from_bytes(data[pos : pos + 2], "big")
            _need(data, pos + 2, size)
            found[ident] = data[pos + 2 : pos + 2 + size]
            pos += 2 + size
    if pos != end:
        raise WireError("property list overruns its length")
    return found, end


def decode_connack(packet: Packet) -> ConnAck:
    if packet.kind != CONNACK or len(packet.body) < 2:
        raise WireError(f"expected CONNACK, got packet type {packet.kind}")
    props: dict[int, int | bytes] = {}
    if len(packet.body) > 2:
        props, _ = _properties_at(packet.body, 2)
    maximum = props.get(MAXIMUM_PACKET_SIZE)
    return ConnAck(
        bool(packet.body[0] & 1), packet.body[1], maximum if isinstance(maximum, int) else None
    )


def decode_reason(packet: Packet) -> int:
    """The reason code of a DISCONNECT or of a PUBACK/PUBREC/PUBREL/PUBCOMP (0 if omitted)."""
    offset = 0 if packet.kind == DISCONNECT else 2
    return packet.body[offset] if len(packet.body) > offset else 0


def decode_suback(packet: Packet) -> list[int]:
    if packet.kind != SUBACK or len(packet.body) < 3:
        raise WireError(f"expected SUBACK, got packet type {packet.kind}")
    _, pos = _properties_at(packet.body, 2)
    return list(packet.body[pos:])


def decode_publish(packet: Packet) -> RawPublish:
    if packet.kind != PUBLISH:
        raise WireError(f"expected PUBLISH, got packet type {packet.kind}")
    body = packet.body
    qos = (packet.flags >> 1) & 3
    _need(body, 0, 2)
    size = int.from_bytes(body[:2], "big")
    _need(body, 2, size)
    topic, pos = body[2 : 2 + size], 2 + size
    packet_id = None
    if qos:
        _need(body, pos, 2)
        packet_id = int.from_bytes(body[pos : pos + 2], "big")
        pos += 2
    _, pos = _properties_at(body, pos)
    return RawPublish(topic, body[pos:], qos, packet_id, bool(packet.flags & 0x08))


# ----------------------------------------------------------------- the connection


@dataclass(frozen=True, slots=True)
class Dial:
    """Where a connection goes: host and port, TLS (a client context) or not, and the local
    address it is made from (None: the system's choice)."""

    host: str
    port: int
    tls: ssl.SSLContext | None
    source: str | None = None


class RawSession:
    """One connection that sends bytes as given and reads the broker's packets.

    Reading never raises for what the broker does: a closed or reset connection is ``None``
    (``closed`` then says how); only running out of time raises ``TimeoutError``.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._buffer = bytearray()
        self.closed: str | None = None  # how the connection ended, once it has

    @classmethod
    async def open(cls, dial: Dial, timeout: float) -> RawSession:
        """Connect (and finish the TLS handshake); raises ``OSError`` (``ssl.SSLError``
        included) or ``TimeoutError`` when that fails."""
        local = (dial.source, 0) if dial.source is not None else None
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                dial.host,
                dial.port,
                ssl=dial.tls,
                server_hostname=dial.host if dial.tls is not None else None,
                local_addr=local,
                ssl_handshake_timeout=timeout if dial.tls is not None else None,
            ),
            timeout,
        )
        return cls(reader, writer)

    async def send(self, data: bytes, timeout: float = 5.0) -> bool:
        """Write ``data`` and wait for the buffer to drain; False if the connection is gone."""
        if self.closed is not None:
            return False
        try:
            self._writer.write(data)
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError:
            raise
        except (OSError, RuntimeError) as exc:
            self._mark_closed(exc)
            return False
        return True

    def write_nowait(self, data: bytes) -> bool:
        """Queue ``data`` without waiting (a flood); False if the connection is gone."""
        if self.closed is not None or self._writer.is_closing():
            self.closed = self.closed or "closed"
            return False
        self._writer.write(data)
        return True

    async def drain(self, timeout: float) -> bool:
        """Wait at most ``timeout`` for queued bytes to go out; False if they did not (the
        broker stopped reading) or the connection is gone."""
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except TimeoutError:
            return False
        except (OSError, RuntimeError) as exc:
            self._mark_closed(exc)
            return False
        return True

    def buffered(self) -> int:
        """Bytes written but not yet handed to the kernel."""
        return self._writer.transport.get_write_buffer_size()

    async def read_bytes(self, timeout: float) -> bytes:
        """Whatever arrives first, raw (``b""``: the connection was closed)."""
        if self._buffer:
            data, self._buffer = bytes(self._buffer), bytearray()
            return data
        return await self._fill(timeout)

    async def read(self, timeout: float) -> Packet | None:
        """The next whole packet, or None when the broker has closed the connection."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            packet = self._parse()
            if packet is not None:
                return packet
            if self.closed is not None:
                return None
            chunk = await self._fill(deadline - loop.time())
            self._buffer += chunk

    async def expect(self, kinds: tuple[int, ...], timeout: float) -> Packet | None:
        """The next packet of one of ``kinds`` (others are skipped), or None when closed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            packet = await self.read(deadline - loop.time())
            if packet is None or packet.kind in kinds:
                return packet

    async def _fill(self, timeout: float) -> bytes:
        if self.closed is not None:
            return b""
        if timeout <= 0:
            raise TimeoutError
        try:
            chunk = await asyncio.wait_for(self._reader.read(READ_CHUNK), timeout)
        except TimeoutError:
            raise
        except (OSError, RuntimeError) as exc:
            self._mark_closed(exc)
            return b""
        if not chunk:
            self.closed = "closed by the broker"
        return chunk

    def _parse(self) -> Packet | None:
        data = self._buffer
        if len(data) < 2:
            return None
        try:
            remaining, start = _read_varint(bytes(data[1:5]), 0)
        except WireError:
            if len(data) < 5:
                return None  # the length is still arriving
            raise
        if remaining > MAX_INBOUND:
            raise WireError(f"the broker announced a {remaining}-byte packet")
        end = 1 + start + remaining
        if len(data) < end:
            return None
        first = data[0]
        packet = Packet(first >> 4, first & 0x0F, bytes(data[1 + start : end]))
        del data[:end]
        return packet

    def _mark_closed(self, exc: BaseException) -> None:
        if self.closed is None:
            text = str(exc) or type(exc).__name__
            self.closed = f"reset ({text})" if isinstance(exc, ConnectionError) else text

    def abort(self) -> None:
        """Drop the connection at once with a TCP reset, without DISCONNECT (as a crash would):
        bytes still queued on either side are discarded, not processed."""
        transport = self._writer.transport
        if not transport.is_closing():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        self.closed = self.closed or "aborted"

    async def close(self, timeout: float = 1.0) -> None:
        """Close politely (TLS close_notify) within ``timeout``, else abort."""
        writer = self._writer
        if writer.is_closing() and self.closed == "aborted":
            return
        try:
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), timeout)
        except TimeoutError:
            self.abort()
        except (OSError, RuntimeError):
            pass
        self.closed = self.closed or "closed"
