"""Unit tests for the per-connection protocol machine (mqtt/connection.py), no sockets."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bastion.mqtt import codec
from bastion.mqtt.connection import MqttConnection, ProtocolViolation
from bastion.mqtt.packets import (
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Will,
)
from bastion.mqtt.reason_codes import ReasonCode

V5 = 5
V311 = 4


def _conn(**kwargs: int) -> MqttConnection:
    return MqttConnection(
        max_packet_size=kwargs.get("max_packet_size", 1 << 20),
        receive_maximum=kwargs.get("receive_maximum", 10),
        topic_alias_maximum=kwargs.get("topic_alias_maximum", 4),
    )


def _wire(packet: Packet, version: int = V5) -> bytes:
    return codec.encode(packet, version)


def _connected(version: int = V5, props: Properties | None = None, **kw: int) -> MqttConnection:
    conn = _conn(**kw)
    connect = Connect(protocol_version=version, client_id="c1", properties=props or Properties())
    events = conn.receive_data(_wire(connect, version))
    assert events == [connect]
    return conn


def _violation(events: Sequence[object]) -> ProtocolViolation:
    assert events, "expected a violation event"
    last = events[-1]
    assert isinstance(last, ProtocolViolation)
    return last


def test_connect_must_come_first() -> None:
    conn = _conn()
    v = _violation(conn.receive_data(_wire(Pingreq(), V311)))
    assert v.reason == ReasonCode.PROTOCOL_ERROR
    assert v.during_connect
    # Nothing more is processed after a violation.
    assert conn.receive_data(_wire(Pingreq(), V311)) == []


def test_second_connect_is_protocol_error() -> None:
    conn = _connected()
    again = Connect(protocol_version=V5, client_id="c1")
    v = _violation(conn.receive_data(_wire(again)))
    assert v.reason == ReasonCode.PROTOCOL_ERROR
    assert not v.during_connect
    assert conn.violation_response(v) == _wire(Disconnect(ReasonCode.PROTOCOL_ERROR))


def test_server_only_packet_from_client_is_protocol_error() -> None:
    conn = _connected()
    v = _violation(conn.receive_data(_wire(Suback(1, (0,)))))
    assert v.reason == ReasonCode.PROTOCOL_ERROR


def test_packets_split_and_coalesced() -> None:
    conn = _conn()
    connect = Connect(protocol_version=V311, client_id="abc", keep_alive=30)
    stream = _wire(connect, V311) + _wire(Pingreq(), V311) + _wire(Pingreq(), V311)
    events: list[object] = []
    for i in range(len(stream)):
        events.extend(conn.receive_data(stream[i : i + 1]))
    assert events == [connect, Pingreq(), Pingreq()]
    assert conn.version == V311


def test_unsupported_protocol_level_gets_311_connack_rc1() -> None:
    conn = _conn()
    raw = bytearray(_wire(Connect(protocol_version=V311, client_id="x"), V311))
    raw[8] = 9  # protocol level byte: fixed header(2) + name length(2) + "MQTT"(4)
    v = _violation(conn.receive_data(bytes(raw)))
    assert v.reason == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert conn.violation_response(v) == b"\x20\x02\x00\x01"


def test_malformed_v311_is_plain_close() -> None:
    conn = _connected(V311)
    v = _violation(conn.receive_data(b"\x30\x01\x00"))  # truncated PUBLISH topic length
    assert conn.violation_response(v) == b""


def test_will_topic_with_wildcard_rejected_at_connect() -> None:
    conn = _conn()
    connect = Connect(protocol_version=V5, client_id="c", will=Will("a/#", b"x"))
    v = _violation(conn.receive_data(_wire(connect)))
    assert v.reason == ReasonCode.TOPIC_NAME_INVALID
    assert v.during_connect
    response = conn.violation_response(v)
    assert response[0] == 0x20  # CONNACK
    assert ReasonCode.TOPIC_NAME_INVALID in response


def test_publish_wildcard_topic_rejected() -> None:
    conn = _connected()
    v = _violation(conn.receive_data(_wire(Publish("a/+", b"x"))))
    assert v.reason == ReasonCode.TOPIC_NAME_INVALID


def test_inbound_topic_alias_set_and_used() -> None:
    conn = _connected()
    first = Publish("temp/sensor1", b"1", properties=Properties(topic_alias=2))
    second = Publish("", b"2", properties=Properties(topic_alias=2))
    events = conn.receive_data(_wire(first) + _wire(second))
    assert events == [Publish("temp/sensor1", b"1"), Publish("temp/sensor1", b"2")]


@pytest.mark.parametrize("alias", [5, 100])
def test_inbound_topic_alias_above_maximum(alias: int) -> None:
    conn = _connected(topic_alias_maximum=4)
    pkt = Publish("a", b"", properties=Properties(topic_alias=alias))
    assert _violation(conn.receive_data(_wire(pkt))).reason == ReasonCode.TOPIC_ALIAS_INVALID


def test_inbound_unknown_alias_is_protocol_error() -> None:
    conn = _connected()
    pkt = Publish("", b"", properties=Properties(topic_alias=1))
    assert _violation(conn.receive_data(_wire(pkt))).reason == ReasonCode.PROTOCOL_ERROR


def test_receive_maximum_exceeded() -> None:
    conn = _connected(receive_maximum=2)
    p1 = Publish("t", b"", qos=1, packet_id=1)
    p2 = Publish("t", b"", qos=2, packet_id=2)
    assert conn.receive_data(_wire(p1) + _wire(p2)) == [p1, p2]
    # A re-sent duplicate of an unacknowledged id does not count twice.
    dup = Publish("t", b"", qos=2, packet_id=2, dup=True)
    assert conn.receive_data(_wire(dup)) == [dup]
    p3 = Publish("t", b"", qos=1, packet_id=3)
    v = _violation(conn.receive_data(_wire(p3)))
    assert v.reason == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


def test_receive_maximum_quota_returns_on_ack() -> None:
    conn = _connected(receive_maximum=2)
    p1 = Publish("t", b"", qos=1, packet_id=1)
    p2 = Publish("t", b"", qos=2, packet_id=2)
    conn.receive_data(_wire(p1) + _wire(p2))
    assert conn.send(Puback(1)) is not None
    assert conn.send(Pubrec(2)) is not None  # QoS 2 still counts until PUBCOMP
    p3 = Publish("t", b"", qos=1, packet_id=3)
    assert conn.receive_data(_wire(p3)) == [p3]
    assert conn.receive_data(_wire(Pubrel(2))) == [Pubrel(2)]
    assert conn.send(Pubcomp(2)) is not None
    p4 = Publish("t", b"", qos=1, packet_id=4)
    assert conn.receive_data(_wire(p4)) == [p4]


def test_failed_pubrec_returns_quota() -> None:
    conn = _connected(receive_maximum=1)
    conn.receive_data(_wire(Publish("t", b"", qos=2, packet_id=7)))
    conn.send(Pubrec(7, reason_code=ReasonCode.NOT_AUTHORIZED))
    p = Publish("t", b"", qos=2, packet_id=8)
    assert conn.receive_data(_wire(p)) == [p]


def test_oversized_inbound_packet() -> None:
    conn = _connected(max_packet_size=64)
    v = _violation(conn.receive_data(_wire(Publish("t", b"x" * 100))))
    assert v.reason == ReasonCode.PACKET_TOO_LARGE


def test_outbound_respects_client_maximum_packet_size() -> None:
    conn = _connected(props=Properties(maximum_packet_size=50))
    assert conn.send(Publish("t", b"x" * 10)) is not None
    assert conn.send(Publish("t", b"x" * 100)) is None


def test_outbound_diagnostics_dropped_to_fit() -> None:
    conn = _connected(props=Properties(maximum_packet_size=20))
    ack = Puback(1, 0x80, Properties(reason_string="r" * 40))
    data = conn.send(ack)
    assert data is not None
    assert codec.decode(data[0], data[2:], V5) == Puback(1, 0x80)


def _decode_publish(data: bytes | None) -> Publish:
    assert data is not None
    packet = codec.decode(data[0], data[2:] if data[1] < 128 else data[3:], V5)
    assert isinstance(packet, Publish)
    return packet


def test_outbound_topic_aliases_assigned_by_server() -> None:
    conn = _connected(props=Properties(topic_alias_maximum=2))
    first = _decode_publish(conn.send(Publish("a/b", b"1")))
    assert first.topic == "a/b"
    assert first.properties.topic_alias == 1
    again = _decode_publish(conn.send(Publish("a/b", b"2")))
    assert again.topic == ""
    assert again.properties.topic_alias == 1
    other = _decode_publish(conn.send(Publish("c", b"3")))
    assert (other.topic, other.properties.topic_alias) == ("c", 2)
    # All aliases used: the oldest one is re-mapped by sending topic + alias again.
    third = _decode_publish(conn.send(Publish("d", b"4")))
    assert (third.topic, third.properties.topic_alias) == ("d", 1)
    reuse_a = _decode_publish(conn.send(Publish("a/b", b"5")))
    assert reuse_a.topic == "a/b"


def test_no_outbound_aliases_when_client_allows_none() -> None:
    conn = _connected()
    packet = _decode_publish(conn.send(Publish("a/b", b"1")))
    assert packet.topic == "a/b"
    assert packet.properties.topic_alias is None


def test_no_outbound_aliases_for_v311() -> None:
    conn = _connected(V311)
    data = conn.send(Publish("a/b", b"1"))
    assert data == _wire(Publish("a/b", b"1"), V311)


def test_non_mqtt_first_byte_rejected_before_a_whole_frame_arrives() -> None:
    conn = _conn()
    v = _violation(conn.receive_data(b"G"))  # "GET / HTTP/1.1" announces a huge "PUBACK"
    assert v.reason == ReasonCode.PROTOCOL_ERROR
    assert v.during_connect
    assert conn.violation_response(v) == b""


def test_a_repeated_topic_is_validated_once_and_bad_topics_still_fail() -> None:
    conn = MqttConnection()
    conn.receive_data(codec.encode(Connect(4, "c"), 4))
    good = codec.encode(Publish("a/b", b"1"), 4)
    for _ in range(3):
        [packet] = conn.receive_data(good)
        assert isinstance(packet, Publish) and packet.topic == "a/b"
    for i in range(200):  # more distinct topics than one connection remembers
        [packet] = conn.receive_data(codec.encode(Publish(f"t/{i}", b""), 4))
        assert isinstance(packet, Publish)
    [violation] = conn.receive_data(codec.encode(Publish("a/+", b"1"), 4))
    assert isinstance(violation, ProtocolViolation)
