"""Strict UTF-8 in every string field, through the connection machine (bytes in, events out).

MQTT 5 §1.5.4 / 3.1.1 §1.5.3: a UTF-8 Encoded String must be well-formed UTF-8 (no overlong
forms, no encoded surrogates, nothing above U+10FFFF) and must not contain U+0000; a
receiver that gets one treats the packet as malformed (0x81). Each case builds a valid
packet with a marker in one field, swaps the marker's bytes for a bad sequence of the same
length, and checks the violation, the answer on the wire and that nothing after it (or the
packet itself) is ever handed on.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import pytest

from bastion.mqtt import codec
from bastion.mqtt.connection import MqttConnection, ProtocolViolation
from bastion.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
)
from bastion.mqtt.reason_codes import ReasonCode

V5 = 5
V311 = 4

BAD_SEQUENCES = {
    "overlong-slash": b"\xc0\xaf",
    "overlong-nul": b"\xc0\x80",
    "overlong-3-byte": b"\xe0\x80\xaf",
    "surrogate-d800": b"\xed\xa0\x80",
    "surrogate-dfff": b"\xed\xbf\xbf",
    "above-10ffff": b"\xf4\x90\x80\x80",
    "lone-continuation": b"\x80",
    "truncated-sequence": b"\xe2\x82",
    "byte-ff": b"\xff",
    "u0000": b"\x00",
}
BAD = [pytest.param(bad, id=name) for name, bad in BAD_SEQUENCES.items()]

MARK = "~"  # the marker's character: used in no other field, and never a length byte here

Build = Callable[[str], Packet]


def _user(key: str = "k", value: str = "v") -> Properties:
    return Properties(user_properties=((key, value),))


# Every string field of CONNECT (MQTT 5), as a function of the text to put into it.
CONNECT_FIELDS_V5: dict[str, Build] = {
    "client-id": lambda m: Connect(V5, f"c{m}"),
    "username": lambda m: Connect(V5, "c", username=f"u{m}", password=b"p"),
    "will-topic": lambda m: Connect(V5, "c", will=Will(f"w/{m}", b"bye")),
    "will-content-type": lambda m: Connect(
        V5, "c", will=Will("w", b"bye", properties=Properties(content_type=f"t{m}"))
    ),
    "will-response-topic": lambda m: Connect(
        V5, "c", will=Will("w", b"bye", properties=Properties(response_topic=f"r/{m}"))
    ),
    "will-user-property-key": lambda m: Connect(
        V5, "c", will=Will("w", b"bye", properties=_user(key=f"k{m}"))
    ),
    "will-user-property-value": lambda m: Connect(
        V5, "c", will=Will("w", b"bye", properties=_user(value=f"v{m}"))
    ),
    "user-property-key": lambda m: Connect(V5, "c", properties=_user(key=f"k{m}")),
    "user-property-value": lambda m: Connect(V5, "c", properties=_user(value=f"v{m}")),
    "authentication-method": lambda m: Connect(
        V5, "c", properties=Properties(authentication_method=f"SCRAM{m}")
    ),
}

CONNECT_FIELDS_V311: dict[str, Build] = {
    "client-id": lambda m: Connect(V311, f"c{m}"),
    "username": lambda m: Connect(V311, "c", username=f"u{m}", password=b"p"),
    "will-topic": lambda m: Connect(V311, "c", will=Will(f"w/{m}", b"bye")),
}

# Every string field of the packets a client sends after CONNECT (MQTT 5).
PACKET_FIELDS_V5: dict[str, Build] = {
    "publish-topic": lambda m: Publish(f"a/{m}", b"x"),
    "publish-content-type": lambda m: Publish("a", b"x", properties=Properties(content_type=m)),
    "publish-response-topic": lambda m: Publish(
        "a", b"x", properties=Properties(response_topic=f"r/{m}")
    ),
    "publish-user-property-key": lambda m: Publish("a", b"x", properties=_user(key=m)),
    "publish-user-property-value": lambda m: Publish("a", b"x", properties=_user(value=m)),
    "subscribe-filter": lambda m: Subscribe(1, (Subscription(f"a/{m}"),)),
    "subscribe-user-property": lambda m: Subscribe(
        1, (Subscription("a"),), properties=_user(value=m)
    ),
    "unsubscribe-filter": lambda m: Unsubscribe(1, (f"a/{m}",)),
    "unsubscribe-user-property": lambda m: Unsubscribe(1, ("a",), properties=_user(key=m)),
    "puback-reason-string": lambda m: Puback(1, 0x80, Properties(reason_string=m)),
    "pubrec-reason-string": lambda m: Pubrec(1, 0x80, Properties(reason_string=m)),
    "pubrel-reason-string": lambda m: Pubrel(1, 0x92, Properties(reason_string=m)),
    "pubcomp-user-property": lambda m: Pubcomp(1, 0, _user(value=m)),
    "disconnect-reason-string": lambda m: Disconnect(0x80, Properties(reason_string=m)),
    "disconnect-user-property": lambda m: Disconnect(0, _user(key=m)),
    "auth-method": lambda m: Auth(0x18, Properties(authentication_method=m)),
    "auth-reason-string": lambda m: Auth(
        0x18, Properties(authentication_method="m", reason_string=m)
    ),
}

PACKET_FIELDS_V311: dict[str, Build] = {
    "publish-topic": lambda m: Publish(f"a/{m}", b"x"),
    "subscribe-filter": lambda m: Subscribe(1, (Subscription(f"a/{m}"),)),
    "unsubscribe-filter": lambda m: Unsubscribe(1, (f"a/{m}",)),
}


def _wire_with(build: Build, bad: bytes, version: int) -> bytes:
    """``build``'s packet on the wire, with the marker in its field replaced by ``bad``."""
    marker = (MARK * len(bad)).encode()
    data = codec.encode(build(MARK * len(bad)), version)
    assert data.count(marker) == 1, "the marker must be unique in the packet"
    return data.replace(marker, bad)


def _conn() -> MqttConnection:
    return MqttConnection(max_packet_size=1 << 20, receive_maximum=10, topic_alias_maximum=4)


def _connected(version: int) -> MqttConnection:
    conn = _conn()
    connect = Connect(version, "client")
    assert conn.receive_data(codec.encode(connect, version)) == [connect]
    return conn


def _only_violation(events: Sequence[object]) -> ProtocolViolation:
    assert len(events) == 1, events
    violation = events[0]
    assert isinstance(violation, ProtocolViolation)
    return violation


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", CONNECT_FIELDS_V5)
def test_v5_connect_string_fields(field: str, bad: bytes) -> None:
    conn = _conn()
    violation = _only_violation(conn.receive_data(_wire_with(CONNECT_FIELDS_V5[field], bad, V5)))
    assert violation.reason == ReasonCode.MALFORMED_PACKET
    assert violation.invalid_utf8
    assert violation.during_connect
    assert not conn.connected  # never accepted
    connack = codec.encode(Connack(reason_code=ReasonCode.MALFORMED_PACKET), V5)
    assert conn.violation_response(violation) == connack


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", CONNECT_FIELDS_V311)
def test_v311_connect_string_fields_close_without_answer(field: str, bad: bytes) -> None:
    conn = _conn()
    data = _wire_with(CONNECT_FIELDS_V311[field], bad, V311)
    violation = _only_violation(conn.receive_data(data))
    assert (violation.reason, violation.invalid_utf8) == (ReasonCode.MALFORMED_PACKET, True)
    assert conn.violation_response(violation) == b""  # 3.1.1: close the connection


@pytest.mark.parametrize("bad", [BAD_SEQUENCES["surrogate-d800"], BAD_SEQUENCES["u0000"]])
def test_protocol_name_must_be_utf8(bad: bytes) -> None:
    data = codec.encode(Connect(V5, "c"), V5)
    name = b"\x00\x04MQTT"
    assert data.count(name) == 1
    data = data.replace(name, b"\x00\x04" + bad + b"T" * (4 - len(bad)))
    violation = _only_violation(_conn().receive_data(data))
    assert (violation.reason, violation.invalid_utf8) == (ReasonCode.MALFORMED_PACKET, True)


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", PACKET_FIELDS_V5)
def test_v5_packet_string_fields_disconnect_0x81(field: str, bad: bytes) -> None:
    conn = _connected(V5)
    good = Publish("ok", b"before")
    after = Publish("ok", b"after")
    data = (
        codec.encode(good, V5)
        + _wire_with(PACKET_FIELDS_V5[field], bad, V5)
        + codec.encode(after, V5)
    )
    events = conn.receive_data(data)
    assert events[0] == good  # what came before is handled; the bad packet and after: never
    violation = _only_violation(events[1:])
    assert (violation.reason, violation.invalid_utf8) == (ReasonCode.MALFORMED_PACKET, True)
    assert not violation.during_connect
    answer = conn.violation_response(violation)
    assert answer == codec.encode(Disconnect(ReasonCode.MALFORMED_PACKET), V5)
    assert conn.receive_data(codec.encode(after, V5)) == []  # the connection is finished


@pytest.mark.parametrize("bad", BAD)
@pytest.mark.parametrize("field", PACKET_FIELDS_V311)
def test_v311_packet_string_fields_close(field: str, bad: bytes) -> None:
    conn = _connected(V311)
    violation = _only_violation(conn.receive_data(_wire_with(PACKET_FIELDS_V311[field], bad, V311)))
    assert (violation.reason, violation.invalid_utf8) == (ReasonCode.MALFORMED_PACKET, True)
    assert conn.violation_response(violation) == b""


def test_split_bad_string_is_still_caught() -> None:
    conn = _connected(V5)
    data = _wire_with(PACKET_FIELDS_V5["publish-topic"], b"\xed\xa0\x80", V5)
    events: list[object] = []
    for index in range(len(data)):
        events.extend(conn.receive_data(data[index : index + 1]))
    assert _only_violation(events).invalid_utf8


def test_other_malformed_input_is_not_flagged_as_utf8() -> None:
    conn = _connected(V5)
    violation = _only_violation(conn.receive_data(b"\x30\x01\x00"))  # truncated topic length
    assert violation.reason == ReasonCode.MALFORMED_PACKET
    assert not violation.invalid_utf8


def test_valid_non_ascii_strings_pass() -> None:
    conn = _connected(V5)
    text = "température/salon/😀/\u00e9\u0301"
    packet = Publish(
        text, b"x", properties=Properties(content_type=text, user_properties=((text, text),))
    )
    assert conn.receive_data(codec.encode(packet, V5)) == [packet]


# -- Response Topic: a topic name (§3.3.2.3.5) --------------------------------------------


@pytest.mark.parametrize("response_topic", ["reply/+", "reply/#", ""])
def test_publish_response_topic_must_be_a_topic_name(response_topic: str) -> None:
    conn = _connected(V5)
    packet = Publish("a", b"x", properties=Properties(response_topic=response_topic))
    violation = _only_violation(conn.receive_data(codec.encode(packet, V5)))
    assert violation.reason == ReasonCode.PROTOCOL_ERROR
    assert "response topic" in violation.message


def test_will_response_topic_must_be_a_topic_name() -> None:
    will = Will("w", b"x", properties=Properties(response_topic="reply/#"))
    violation = _only_violation(_conn().receive_data(codec.encode(Connect(V5, "c", will=will), V5)))
    assert (violation.reason, violation.during_connect) == (ReasonCode.PROTOCOL_ERROR, True)


def test_valid_response_topic_passes() -> None:
    conn = _connected(V5)
    packet = Publish("a", b"x", properties=Properties(response_topic="reply/me"))
    assert conn.receive_data(codec.encode(packet, V5)) == [packet]
    aliased = replace(packet, properties=replace(packet.properties, topic_alias=1))
    assert conn.receive_data(codec.encode(aliased, V5)) == [packet]
