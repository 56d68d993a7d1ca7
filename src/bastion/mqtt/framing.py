"""Incremental MQTT framing: cut a byte stream into (first byte, body) frames.

The transport feeds bytes in, ``connection.py`` pulls frames out and hands them to
``codec.decode``; re-exported from ``codec.py``. Enforces the maximum packet size early.
"""

from __future__ import annotations

from typing import Final

from bastion.errors import MalformedPacket, ProtocolError
from bastion.mqtt.reason_codes import ReasonCode

MAX_PACKET_SIZE: Final = 268_435_460
"""Largest packet the protocol can express: 1 + 4 + 268_435_455 bytes."""

_COMPACT_AT: Final = 64 * 1024


class FrameReader:
    """Buffer bytes and return complete frames, one at a time.

    Consumed bytes are tracked with an offset and dropped lazily (when everything is
    consumed, or when the consumed prefix is both large and most of the buffer), so many
    small packets in one chunk, or one packet in many chunks, cost linear time.
    """

    __slots__ = ("_buf", "_max_packet_size", "_pos")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._max_packet_size = MAX_PACKET_SIZE
        self.set_max_packet_size(max_packet_size)

    @property
    def max_packet_size(self) -> int:
        return self._max_packet_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def set_max_packet_size(self, max_packet_size: int) -> None:
        """Limit the total size (fixed header included) of frames accepted from now on."""
        if not 2 <= max_packet_size <= MAX_PACKET_SIZE:
            raise ValueError(f"maximum packet size must be 2..{MAX_PACKET_SIZE}")
        self._max_packet_size = max_packet_size

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append (copy) received bytes."""
        self._buf += data

    def next_frame(self) -> tuple[int, bytes] | None:
        """Return the next (first byte, body), or ``None`` until more data is fed.

        Raises ``ProtocolError`` (0x95 Packet too large) as soon as the Remaining Length
        announces a packet larger than the maximum, before its body is buffered, and
        ``MalformedPacket`` if the Remaining Length runs past 4 bytes or is not minimal.
        After an error the stream is unusable: the connection must be closed.
        """
        buf = self._buf
        start = self._pos
        size = len(buf)
        pos = start + 1
        remaining = 0
        shift = 0
        while True:
            if pos >= size:
                return None
            b = buf[pos]
            pos += 1
            remaining |= (b & 0x7F) << shift
            if b < 0x80:
                if b == 0 and shift:
                    raise MalformedPacket("remaining length not minimally encoded")
                break
            shift += 7
            if shift == 28:
                raise MalformedPacket("remaining length longer than 4 bytes")
        end = pos + remaining
        if end - start > self._max_packet_size:
            raise ProtocolError(
                f"packet of {end - start} bytes exceeds the maximum of {self._max_packet_size}",
                ReasonCode.PACKET_TOO_LARGE,
            )
        if end > size:
            return None
        first = buf[start]
        with memoryview(buf) as view:
            body = bytes(view[pos:end])
        if end == size:
            buf.clear()
            self._pos = 0
        elif end >= _COMPACT_AT and end * 2 >= size:
            del buf[:end]
            self._pos = 0
        else:
            self._pos = end
        return first, body


__all__ = ["MAX_PACKET_SIZE", "FrameReader"]
