"""Per-connection MQTT protocol machine: bytes in, packets out; packets in, bytes out.

Sans-I/O (the h11 shape): ``receive_data`` frames and decodes with ``codec.py`` and enforces
what belongs to one network connection — CONNECT first and once, inbound topic aliases, the
server's Receive Maximum, packet direction. ``send`` encodes, assigns outbound topic aliases
and honours the client's Maximum Packet Size. The transport owns the socket; the broker
core sees only resolved, validated packets.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from bastion.errors import ProtocolError
from bastion.mqtt import codec
from bastion.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
    Properties,
    ProtocolVersion,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Unsuback,
)
from bastion.mqtt.reason_codes import ReasonCode
from bastion.mqtt.topics import validate_topic_name
from bastion.mqtt.wire import InvalidUtf8


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer broke the protocol; the connection must end.

    ``reason`` is the MQTT 5 reason code to answer with. ``during_connect`` tells the
    transport to answer with CONNACK (if at all) rather than DISCONNECT. ``invalid_utf8``
    marks a string field that was not well-formed UTF-8 or carried U+0000 (reason 0x81).
    """

    reason: int
    message: str
    during_connect: bool
    invalid_utf8: bool = False


Event = Packet | ProtocolViolation

# Packets only a server sends; receiving one from a client is a protocol error.
_SERVER_ONLY = frozenset(
    {PacketType.CONNACK, PacketType.SUBACK, PacketType.UNSUBACK, PacketType.PINGRESP}
)

# Packets whose reason string and user properties may be dropped to fit the client's limit.
_ACKS_WITH_DIAGNOSTICS = (
    Connack,
    Puback,
    Pubrec,
    Pubrel,
    Pubcomp,
    Suback,
    Unsuback,
    Disconnect,
    Auth,
)

MAX_PACKET_SIZE_LIMIT = 268_435_460  # 1 + 4 + 268,435,455 (largest remaining length)
_NOTHING_UNACKED: set[int] = set()  # shared by idle connections; never added to
_VALID_TOPICS_KEPT = 64  # per connection; the set starts over when it is full


class MqttConnection:
    """Protocol state of one client connection, as seen by the server."""

    def __init__(
        self,
        *,
        max_packet_size: int = MAX_PACKET_SIZE_LIMIT,
        receive_maximum: int = 65535,
        topic_alias_maximum: int = 0,
        assign_topic_aliases: bool = True,
    ) -> None:
        self._reader = codec.FrameReader(max_packet_size)
        self.receive_maximum = receive_maximum
        self.topic_alias_maximum = topic_alias_maximum
        self._assign_aliases = assign_topic_aliases
        self.version: int | None = None
        self.connected = False  # CONNECT seen (the packet itself, password included, is not kept)
        self.failed = False
        # Limits the client announced in CONNECT (MQTT 5).
        self.client_maximum_packet_size: int | None = None
        self.client_topic_alias_maximum = 0
        self._inbound_aliases: dict[int, str] = {}
        self._outbound_aliases: dict[str, int] = {}
        self._next_alias = 1
        # Inbound QoS 1/2 packet ids not yet completed by PUBACK / PUBCOMP (Receive Maximum).
        self._inbound_unacked: set[int] = _NOTHING_UNACKED  # replaced at the first QoS 1/2
        # Topic names this client already sent that passed validation (devices repeat theirs);
        # created with the first PUBLISH, so an idle connection does not carry it.
        self._valid_topics: set[str] | None = None

    # ------------------------------------------------------------------ inbound

    def receive_data(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed bytes from the network; return the complete packets (or one violation)."""
        if self.failed:
            return []
        if (
            not self.connected
            and data
            and not self._reader.buffered
            and data[0] >> 4 != PacketType.CONNECT
        ):
            # Reject at the first byte: no need to wait for a frame that is not MQTT.
            self.failed = True
            return [
                ProtocolViolation(
                    ReasonCode.PROTOCOL_ERROR, "the first packet must be CONNECT", True
                )
            ]
        self._reader.feed(data)
        events: list[Event] = []
        try:
            while True:
                frame = self._reader.next_frame()
                if frame is None:
                    break
                events.append(self._handle_frame(frame[0], frame[1]))
        except ProtocolError as exc:
            self.failed = True
            events.append(
                ProtocolViolation(
                    exc.reason, exc.message, not self.connected, isinstance(exc, InvalidUtf8)
                )
            )
        return events

    def _handle_frame(self, first_byte: int, body: bytes) -> Packet:
        if not self.connected:
            return self._handle_connect(first_byte, body)
        version = self.version or ProtocolVersion.MQTT_3_1_1
        packet = codec.decode(first_byte, body, version)
        kind = packet.packet_type
        if kind is PacketType.PUBLISH:
            assert isinstance(packet, Publish)
            return self._inbound_publish(packet)
        if kind is PacketType.CONNECT:
            raise ProtocolError("second CONNECT on one connection", ReasonCode.PROTOCOL_ERROR)
        if kind in _SERVER_ONLY:
            raise ProtocolError(
                f"{kind.name} may only be sent by a server", ReasonCode.PROTOCOL_ERROR
            )
        return packet

    def _handle_connect(self, first_byte: int, body: bytes) -> Packet:
        if first_byte >> 4 != PacketType.CONNECT:
            raise ProtocolError("the first packet must be CONNECT", ReasonCode.PROTOCOL_ERROR)
        self.version = _peek_protocol_level(body)
        packet = codec.decode(first_byte, body, self.version or ProtocolVersion.MQTT_3_1_1)
        assert isinstance(packet, Connect)
        self.version = packet.protocol_version
        if packet.will is not None:
            validate_topic_name(packet.will.topic)
            _check_response_topic(packet.will.properties)
        props = packet.properties
        self.client_maximum_packet_size = props.maximum_packet_size
        if self._assign_aliases and props.topic_alias_maximum:
            self.client_topic_alias_maximum = props.topic_alias_maximum
        self.connected = True
        return packet

    def _inbound_publish(self, packet: Publish) -> Publish:
        alias = packet.properties.topic_alias
        if alias is not None:
            packet = self._resolve_alias(packet, alias)
        topic = packet.topic
        known = self._valid_topics
        if known is None:
            known = self._valid_topics = set()
        if topic not in known:
            validate_topic_name(topic)
            if len(known) >= _VALID_TOPICS_KEPT:
                known.clear()
            known.add(topic)
        _check_response_topic(packet.properties)
        if packet.qos and self.version == ProtocolVersion.MQTT_5:
            pid = packet.packet_id
            assert pid is not None
            unacked = self._inbound_unacked
            if pid not in unacked:
                if len(unacked) >= self.receive_maximum:
                    raise ProtocolError(
                        f"more than Receive Maximum ({self.receive_maximum}) unacknowledged "
                        "QoS 1/2 PUBLISH packets",
                        ReasonCode.RECEIVE_MAXIMUM_EXCEEDED,
                    )
                if unacked is _NOTHING_UNACKED:
                    unacked = self._inbound_unacked = set()
                unacked.add(pid)
        return packet

    def _resolve_alias(self, packet: Publish, alias: int) -> Publish:
        if alias == 0 or alias > self.topic_alias_maximum:
            raise ProtocolError(
                f"topic alias {alias} outside 1..{self.topic_alias_maximum}",
                ReasonCode.TOPIC_ALIAS_INVALID,
            )
        props = replace(packet.properties, topic_alias=None)
        if packet.topic:
            self._inbound_aliases[alias] = packet.topic
            return replace(packet, properties=props)
        topic = self._inbound_aliases.get(alias)
        if topic is None:
            raise ProtocolError(
                f"topic alias {alias} used before it was set", ReasonCode.PROTOCOL_ERROR
            )
        return replace(packet, topic=topic, properties=props)

    # ----------------------------------------------------------------- outbound

    def send(self, packet: Packet) -> bytes | None:
        """Encode a packet for this client; None if it exceeds the client's size limit."""
        version = self.version or ProtocolVersion.MQTT_3_1_1
        if isinstance(packet, Publish):
            return self._send_publish(packet, version)
        kind = packet.packet_type
        if kind is PacketType.PUBACK or kind is PacketType.PUBCOMP:
            assert isinstance(packet, Puback | Pubcomp)
            self._inbound_unacked.discard(packet.packet_id)
        elif kind is PacketType.PUBREC:
            assert isinstance(packet, Pubrec)
            if packet.reason_code >= 0x80:
                self._inbound_unacked.discard(packet.packet_id)
        data = codec.encode(packet, version)
        if self._fits(data):
            return data
        stripped = _without_diagnostics(packet)
        if stripped is not None:
            data = codec.encode(stripped, version)
            if self._fits(data):
                return data
        return None

    def _fits(self, data: bytes) -> bool:
        limit = self.client_maximum_packet_size
        return limit is None or len(data) <= limit

    def _send_publish(self, packet: Publish, version: int) -> bytes | None:
        if self.client_topic_alias_maximum == 0 or version != ProtocolVersion.MQTT_5:
            data = codec.encode(packet, version)
            return data if self._fits(data) else None
        alias = self._outbound_aliases.get(packet.topic)
        if alias is not None:
            aliased = replace(
                packet, topic="", properties=replace(packet.properties, topic_alias=alias)
            )
            data = codec.encode(aliased, version)
            return data if self._fits(data) else None
        new_alias = self._pick_outbound_alias()
        aliased = replace(packet, properties=replace(packet.properties, topic_alias=new_alias))
        data = codec.encode(aliased, version)
        if not self._fits(data):
            return None
        self._commit_outbound_alias(packet.topic, new_alias)
        return data

    def _pick_outbound_alias(self) -> int:
        """Next alias to use: a fresh one while any is free, then the oldest (round robin)."""
        return self._next_alias

    def _commit_outbound_alias(self, topic: str, alias: int) -> None:
        if len(self._outbound_aliases) >= self.client_topic_alias_maximum:
            for old_topic, old_alias in self._outbound_aliases.items():
                if old_alias == alias:
                    del self._outbound_aliases[old_topic]
                    break
        self._outbound_aliases[topic] = alias
        self._next_alias = alias % self.client_topic_alias_maximum + 1

    # ---------------------------------------------------------------- responses

    def violation_response(self, violation: ProtocolViolation) -> bytes:
        """Bytes to send before closing because of ``violation`` (may be empty).

        MQTT 5: CONNACK with the reason during CONNECT, else DISCONNECT with it. MQTT 3.1.1:
        only an unsupported protocol level gets an answer (CONNACK return code 1); every other
        violation is a plain close, as that version requires.
        """
        if violation.reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
            # Answer in the 3.1.1 format, which every client version can read.
            return codec.encode(
                Connack(reason_code=ReasonCode.UNSUPPORTED_PROTOCOL_VERSION),
                ProtocolVersion.MQTT_3_1_1,
            )
        if self.version != ProtocolVersion.MQTT_5:
            return b""
        if violation.during_connect:
            return codec.encode(Connack(reason_code=violation.reason), ProtocolVersion.MQTT_5)
        return codec.encode(Disconnect(reason_code=violation.reason), ProtocolVersion.MQTT_5)


def _check_response_topic(props: Properties) -> None:
    """A Response Topic is a topic name: no wildcards, not empty (§3.3.2.3.5, 0x82)."""
    topic = props.response_topic
    if topic is None:
        return
    try:
        validate_topic_name(topic)
    except ProtocolError as exc:
        raise ProtocolError("response " + exc.message, ReasonCode.PROTOCOL_ERROR) from None


def _peek_protocol_level(body: bytes) -> int | None:
    """Protocol level byte of a CONNECT body, if it can be read, to answer in kind."""
    if len(body) < 2:
        return None
    name_len = (body[0] << 8) | body[1]
    if len(body) < 3 + name_len:
        return None
    return body[2 + name_len]


def _without_diagnostics(packet: Packet) -> Packet | None:
    """The packet without reason string and user properties, which may be dropped to fit."""
    if not isinstance(packet, _ACKS_WITH_DIAGNOSTICS):
        return None
    props = packet.properties
    if props.reason_string is None and not props.user_properties:
        return None
    return replace(packet, properties=replace(props, reason_string=None, user_properties=()))


__all__ = ["MAX_PACKET_SIZE_LIMIT", "Event", "MqttConnection", "ProtocolViolation"]
