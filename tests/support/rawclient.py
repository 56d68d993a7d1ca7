"""A blocking MQTT 3.1.1 / 5.0 client on a TCP (or TLS) socket, for byte-exact black-box tests.

Packets come from ``rawcodec`` (written from the spec, independent of bastion's codec); this
module owns the socket, framing and deadlines: every read is bounded. The codec's names are
re-exported so tests import everything from here.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import time
from collections.abc import Sequence

from .rawcodec import (
    DEFAULT_TIMEOUT,
    MQTT_5,
    MQTT_311,
    Ack,
    ConnAck,
    ConnectionClosedError,
    Disconnect,
    MalformedResponseError,
    Packet,
    PacketType,
    Prop,
    Properties,
    PropList,
    PropValue,
    Publish,
    SubAck,
    Will,
    decode_ack,
    decode_connack,
    decode_disconnect,
    decode_publish,
    decode_suback,
    encode_ack,
    encode_binary,
    encode_connect,
    encode_disconnect,
    encode_pingreq,
    encode_properties,
    encode_publish,
    encode_subscribe,
    encode_unsubscribe,
    encode_utf8,
    encode_varint,
    packet,
    subscription_options,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MQTT_5",
    "MQTT_311",
    "Ack",
    "ConnAck",
    "ConnectionClosedError",
    "Disconnect",
    "MalformedResponseError",
    "Packet",
    "PacketType",
    "Prop",
    "PropList",
    "PropValue",
    "Properties",
    "Publish",
    "RawClient",
    "SubAck",
    "Will",
    "decode_ack",
    "decode_connack",
    "decode_disconnect",
    "decode_publish",
    "decode_suback",
    "encode_ack",
    "encode_binary",
    "encode_connect",
    "encode_disconnect",
    "encode_pingreq",
    "encode_properties",
    "encode_publish",
    "encode_subscribe",
    "encode_unsubscribe",
    "encode_utf8",
    "encode_varint",
    "packet",
    "subscription_options",
]


# --------------------------------------------------------------------------- the client


class RawClient:
    """A blocking MQTT client on one socket; every read honours a deadline.

    Packets that arrive while a caller waits for a different type are queued, not dropped, so
    a test can wait for a SUBACK while a retained PUBLISH is already on its way.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        version: int = MQTT_311,
        timeout: float = DEFAULT_TIMEOUT,
        tls: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        source: str | None = None,
    ) -> None:
        """Connect (and complete the TLS handshake when ``tls`` is given; it may raise).

        ``source`` binds the local end to that loopback address (127.x.y.z), so a test can
        play a client on its own IP; ``server_hostname`` defaults to ``host`` for TLS.
        """
        self.version = version
        self.timeout = timeout
        sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            try:
                sock = tls.wrap_socket(sock, server_hostname=server_hostname or host)
            except BaseException:
                sock.close()
                raise
        self.sock = sock
        self._buf = bytearray()
        self._pending: list[Packet] = []
        self._closed = False
        self._eof = False
        self._next_id = 0

    # ----------------------------------------------------------------- plumbing

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.sock.close()

    def abort(self) -> None:
        """Drop the connection without DISCONNECT (RST where the OS allows), like a crash."""
        if not self._closed:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    @property
    def tls_version(self) -> str | None:
        """The negotiated TLS version ("TLSv1.3"), or None on a plain socket."""
        return self.sock.version() if isinstance(self.sock, ssl.SSLSocket) else None

    def try_send(self, data: bytes) -> bool:
        """Send, reporting instead of raising if the broker already closed the connection."""
        try:
            self.sock.sendall(data)
        except OSError:
            return False
        return True

    def next_packet_id(self) -> int:
        self._next_id = self._next_id % 65535 + 1
        return self._next_id

    def _fill(self, deadline: float) -> None:
        if self._eof:
            raise ConnectionClosedError("connection already closed by peer")
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("timed out waiting for data from broker")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except TimeoutError:
            raise TimeoutError("timed out waiting for data from broker") from None
        except (ConnectionError, ssl.SSLError) as exc:  # reset, or TLS torn down
            self._eof = True
            raise ConnectionClosedError(str(exc)) from exc
        if not chunk:
            self._eof = True
            raise ConnectionClosedError("EOF")
        self._buf += chunk

    def _read_frame(self, deadline: float) -> Packet:
        while True:
            frame = self._try_frame()
            if frame is not None:
                return frame
            self._fill(deadline)

    def _try_frame(self) -> Packet | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length, shift, pos = 0, 0, 1
        while True:
            if pos >= len(buf):
                return None
            byte = buf[pos]
            length |= (byte & 0x7F) << shift
            pos += 1
            if not byte & 0x80:
                break
            shift += 7
            if pos > 4:
                raise MalformedResponseError("broker sent a remaining length longer than 4 bytes")
        if len(buf) < pos + length:
            return None
        pkt = Packet(buf[0] >> 4, buf[0] & 0x0F, bytes(buf[pos : pos + length]))
        del buf[: pos + length]
        return pkt

    # ----------------------------------------------------------------- reading

    def recv(self, timeout: float | None = None) -> Packet:
        """The next packet (queued ones first). Raises TimeoutError or ConnectionClosedError."""
        if self._pending:
            return self._pending.pop(0)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        return self._read_frame(deadline)

    def expect(self, ptype: PacketType, timeout: float | None = None) -> Packet:
        """Wait for a packet of ``ptype``; other packets are kept for later ``recv`` calls."""
        for i, pkt in enumerate(self._pending):
            if pkt.type == ptype:
                return self._pending.pop(i)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            pkt = self._read_frame(deadline)
            if pkt.type == ptype:
                return pkt
            if pkt.type == PacketType.DISCONNECT:
                raise AssertionError(
                    f"expected {ptype.name}, broker sent DISCONNECT "
                    f"{decode_disconnect(pkt, self.version)}"
                )
            self._pending.append(pkt)

    def expect_publish(self, timeout: float | None = None) -> Publish:
        return decode_publish(self.expect(PacketType.PUBLISH, timeout), self.version)

    def expect_ack(self, ptype: PacketType, timeout: float | None = None) -> Ack:
        return decode_ack(self.expect(ptype, timeout), self.version)

    def expect_nothing(self, duration: float) -> None:
        """Assert that no packet arrives (and the connection stays open) for ``duration``."""
        assert not self._pending, f"unexpected packets: {self._pending}"
        try:
            pkt = self._read_frame(time.monotonic() + duration)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {pkt.name} {pkt.body!r}")

    def check_open(self, wait: float = 0.01) -> bool:
        """Take in whatever arrives within ``wait`` (kept for ``recv``); False once closed."""
        if self._eof:
            return False
        try:
            self._fill(time.monotonic() + max(wait, 0.001))
        except TimeoutError:
            return True
        except ConnectionClosedError:
            return False
        finally:
            while (frame := self._try_frame()) is not None:
                self._pending.append(frame)
        return True

    def pending(self) -> list[Packet]:
        """Packets received but not yet consumed."""
        return list(self._pending)

    def read_until_closed(self, timeout: float | None = None) -> list[Packet]:
        """Everything the broker sends until it closes the connection.

        Raises AssertionError if the connection is still open at the deadline.
        """
        packets, self._pending = self._pending, []
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            try:
                packets.append(self._read_frame(deadline))
            except ConnectionClosedError:
                return packets
            except TimeoutError:
                raise AssertionError(
                    f"broker did not close the connection within the deadline; got {packets}"
                ) from None

    # ----------------------------------------------------------------- operations

    def connect(
        self,
        client_id: str | bytes = "",
        *,
        clean: bool = True,
        keepalive: int = 60,
        properties: PropList = (),
        will: Will | None = None,
        username: str | bytes | None = None,
        password: bytes | None = None,
        expect_success: bool = True,
    ) -> ConnAck:
        self.send(
            encode_connect(
                client_id,
                version=self.version,
                clean=clean,
                keepalive=keepalive,
                properties=properties,
                will=will,
                username=username,
                password=password,
            )
        )
        ack = decode_connack(self.expect(PacketType.CONNACK), self.version)
        if expect_success:
            assert ack.reason_code == 0, f"CONNACK refused: {ack}"
        return ack

    def publish(
        self,
        topic: str | bytes,
        payload: bytes = b"",
        *,
        qos: int = 0,
        retain: bool = False,
        dup: bool = False,
        packet_id: int | None = None,
        properties: PropList = (),
    ) -> int | None:
        """Send a PUBLISH; returns the packet id used (None for QoS 0)."""
        if qos and packet_id is None:
            packet_id = self.next_packet_id()
        self.send(
            encode_publish(
                topic,
                payload,
                version=self.version,
                qos=qos,
                retain=retain,
                dup=dup,
                packet_id=packet_id,
                properties=properties,
            )
        )
        return packet_id if qos else None

    def publish_qos1(
        self, topic: str, payload: bytes = b"", *, retain: bool = False, properties: PropList = ()
    ) -> Ack:
        """Publish at QoS 1 and wait for the PUBACK."""
        packet_id = self.publish(topic, payload, qos=1, retain=retain, properties=properties)
        ack = self.expect_ack(PacketType.PUBACK)
        assert ack.packet_id == packet_id
        return ack

    def publish_qos2(
        self, topic: str, payload: bytes = b"", *, retain: bool = False, properties: PropList = ()
    ) -> Ack:
        """Complete an inbound QoS 2 flow (PUBLISH, PUBREC, PUBREL, PUBCOMP)."""
        packet_id = self.publish(topic, payload, qos=2, retain=retain, properties=properties)
        assert packet_id is not None
        rec = self.expect_ack(PacketType.PUBREC)
        assert rec.packet_id == packet_id
        self.ack(PacketType.PUBREL, packet_id)
        comp = self.expect_ack(PacketType.PUBCOMP)
        assert comp.packet_id == packet_id
        return comp

    def ack(self, ptype: PacketType, packet_id: int, reason: int = 0) -> None:
        self.send(encode_ack(ptype, packet_id, version=self.version, reason=reason))

    def subscribe(
        self,
        filters: Sequence[tuple[str | bytes, int]],
        *,
        properties: PropList = (),
        packet_id: int | None = None,
    ) -> SubAck:
        """SUBSCRIBE and wait for the SUBACK; ``filters`` are (filter, options byte)."""
        pid = self.next_packet_id() if packet_id is None else packet_id
        self.send(encode_subscribe(pid, filters, version=self.version, properties=properties))
        ack = decode_suback(self.expect(PacketType.SUBACK), self.version)
        assert ack.packet_id == pid, f"SUBACK packet id {ack.packet_id} != {pid}"
        return ack

    def unsubscribe(self, filters: Sequence[str], *, properties: PropList = ()) -> SubAck:
        pid = self.next_packet_id()
        self.send(encode_unsubscribe(pid, filters, version=self.version, properties=properties))
        ack = decode_suback(self.expect(PacketType.UNSUBACK), self.version)
        assert ack.packet_id == pid
        return ack

    def ping(self) -> None:
        self.send(encode_pingreq())
        self.expect(PacketType.PINGRESP)

    def disconnect(self, reason: int = 0, properties: PropList = ()) -> None:
        """A clean DISCONNECT followed by closing our side."""
        self.try_send(encode_disconnect(version=self.version, reason=reason, properties=properties))
        self.close()
