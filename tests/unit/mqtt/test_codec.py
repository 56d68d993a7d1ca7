"""Unit tests of ``bastion.mqtt.codec``: spec byte vectors, short forms, 3.1.1 vs 5.0.

Byte vectors are written by hand from the OASIS MQTT 3.1.1 and 5.0 specifications, so
the codec is checked against the spec and not only against itself.
"""

from __future__ import annotations

import pytest

from bastion.errors import ProtocolError
from bastion.mqtt import codec
from bastion.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from bastion.mqtt.reason_codes import ReasonCode, connack_return_code_v311


def split(frame: bytes) -> tuple[int, bytes]:
    """(first byte, body) of one whole frame."""
    length, offset = codec.decode_variable_byte_int(frame, 1)
    assert len(frame) == offset + length
    return frame[0], frame[offset:]


def decode_frame(frame: bytes, version: int) -> Packet:
    first, body = split(frame)
    return codec.decode(first, body, version)


# ---------------------------------------------------------------- variable byte integers

VBI_VECTORS = [  # spec 1.5.5 / 3.1.1 table 2.4: boundaries of each length
    (0, "00"),
    (127, "7f"),
    (128, "8001"),
    (16_383, "ff7f"),
    (16_384, "808001"),
    (2_097_151, "ffff7f"),
    (2_097_152, "80808001"),
    (268_435_455, "ffffff7f"),
]


@pytest.mark.parametrize(("value", "encoded"), VBI_VECTORS)
def test_variable_byte_int_matches_spec_table(value: int, encoded: str) -> None:
    assert codec.encode_variable_byte_int(value) == bytes.fromhex(encoded)
    assert codec.decode_variable_byte_int(bytes.fromhex(encoded), 0) == (value, len(encoded) // 2)


def test_variable_byte_int_decodes_at_an_offset() -> None:
    assert codec.decode_variable_byte_int(b"\xaa\x80\x01\xbb", 1) == (128, 3)


@pytest.mark.parametrize("value", [-1, 268_435_456])
def test_variable_byte_int_out_of_range_is_refused(value: int) -> None:
    with pytest.raises(ValueError):
        codec.encode_variable_byte_int(value)


@pytest.mark.parametrize("data", ["ffffffff7f", "ffffffff", "80", "", "8000", "ff8000"])
def test_variable_byte_int_malformed(data: str) -> None:
    with pytest.raises(ProtocolError) as info:
        codec.decode_variable_byte_int(bytes.fromhex(data), 0)
    assert info.value.reason == ReasonCode.MALFORMED_PACKET


# ---------------------------------------------------------------- spec byte vectors

MINIMAL_CONNECT_311 = bytes.fromhex(
    "10 0c"  # CONNECT, remaining length 12
    "0004 4d515454"  # "MQTT"
    "04"  # protocol level 4
    "02"  # clean session
    "003c"  # keep alive 60
    "0000"  # empty client identifier
)


def test_minimal_311_connect_against_spec_bytes() -> None:
    packet = Connect(protocol_version=4, client_id="", keep_alive=60)
    assert codec.encode(packet, 4) == MINIMAL_CONNECT_311
    assert decode_frame(MINIMAL_CONNECT_311, 4) == packet


def test_311_connect_with_will_and_credentials_against_spec_bytes() -> None:
    # Flags 0xCE as in the 3.1.1 spec example (3.1.2.11): user name, password,
    # will QoS 1, will flag, clean session; keep alive 10.
    frame = bytes.fromhex(
        "10 1f 0004 4d515454 04 ce 000a"
        "0002 6964"  # client id "id"
        "0001 74"  # will topic "t"
        "0002 6279"  # will payload "by"
        "0004 75736572"  # user name "user"
        "0002 7077"  # password "pw"
    )
    packet = Connect(
        protocol_version=4,
        client_id="id",
        keep_alive=10,
        will=Will("t", b"by", qos=1),
        username="user",
        password=b"pw",
    )
    assert decode_frame(frame, 4) == packet
    assert codec.encode(packet, 4) == frame


def test_mqtt_31_connect_uses_mqisdp() -> None:
    frame = bytes.fromhex("10 10 0006 4d5149736470 03 02 003c 0002 6964")
    packet = Connect(protocol_version=3, client_id="id", keep_alive=60, protocol_name="MQIsdp")
    assert decode_frame(frame, 4) == packet
    assert codec.encode(packet, 3) == frame


def test_minimal_v5_connect_against_spec_bytes() -> None:
    frame = bytes.fromhex("10 0d 0004 4d515454 05 02 003c 00 0000")
    packet = Connect(protocol_version=5, client_id="", keep_alive=60)
    assert codec.encode(packet, 5) == frame
    assert decode_frame(frame, 5) == packet


def test_v5_connect_with_properties_against_spec_bytes() -> None:
    frame = bytes.fromhex(
        "10 18 0004 4d515454 05 02 000a"
        "08"  # property length
        "11 0000000a"  # session expiry interval 10
        "21 0014"  # receive maximum 20
        "0003 616263"  # client id "abc"
    )
    props = Properties(session_expiry_interval=10, receive_maximum=20)
    packet = Connect(protocol_version=5, client_id="abc", keep_alive=10, properties=props)
    assert decode_frame(frame, 5) == packet
    assert codec.encode(packet, 5) == frame


@pytest.mark.parametrize(
    ("reason", "return_code"),
    [(0x00, 0), (0x84, 1), (0x85, 2), (0x88, 3), (0x86, 4), (0x87, 5)],
)
def test_311_connack_against_spec_bytes(reason: int, return_code: int) -> None:
    frame = bytes((0x20, 0x02, 0x00, return_code))
    assert codec.encode(Connack(reason_code=reason), 4) == frame
    assert decode_frame(frame, 4) == Connack(reason_code=reason)


def test_311_connack_session_present() -> None:
    assert codec.encode(Connack(session_present=True), 4) == bytes.fromhex("20020100")


def test_v5_connack_against_spec_bytes() -> None:
    frame = bytes.fromhex("20 08 00 00 05 22 000a 24 01")
    packet = Connack(reason_code=0, properties=Properties(topic_alias_maximum=10, maximum_qos=1))
    assert codec.encode(packet, 5) == frame
    assert decode_frame(frame, 5) == packet


def test_publish_qos0_against_spec_bytes() -> None:
    frame = bytes.fromhex("30 07 0003 612f62 6869")  # topic "a/b", payload "hi"
    packet = Publish("a/b", b"hi")
    assert codec.encode(packet, 4) == frame
    assert decode_frame(frame, 4) == packet


def test_publish_qos1_against_spec_bytes() -> None:
    # 3.1.1 spec 3.3.2.3 example: topic "a/b", packet identifier 10.
    frame = bytes.fromhex("33 09 0003 612f62 000a 6869")  # QoS 1, retain
    packet = Publish("a/b", b"hi", qos=1, retain=True, packet_id=10)
    assert codec.encode(packet, 4) == frame
    assert decode_frame(frame, 4) == packet


def test_v5_publish_with_properties_against_spec_bytes() -> None:
    frame = bytes.fromhex(
        "3c 0f 0003 612f62 0001"  # QoS 2, DUP, packet id 1
        "05 01 01 23 0007"  # payload format 1, topic alias 7
        "6869"
    )
    packet = Publish(
        "a/b",
        b"hi",
        qos=2,
        dup=True,
        packet_id=1,
        properties=Properties(payload_format_indicator=1, topic_alias=7),
    )
    assert codec.encode(packet, 5) == frame
    assert decode_frame(frame, 5) == packet


def test_utf8_string_example_from_spec() -> None:
    # Spec 1.5.4 example: "A\U0002A6D4" is 00 05 41 F0 AA 9B 94.
    frame = bytes.fromhex("30 09 0005 41f0aa9b94 2121")
    assert decode_frame(frame, 4) == Publish("A\U0002a6d4", b"!!")


def test_subscribe_and_suback_against_spec_bytes() -> None:
    # 3.1.1 spec 3.8.3 example: "a/b" QoS 1 and "c/d" QoS 2, packet id 10.
    subscribe = bytes.fromhex("82 0e 000a 0003 612f62 01 0003 632f64 02")
    packet = Subscribe(10, (Subscription("a/b", 1), Subscription("c/d", 2)))
    assert codec.encode(packet, 4) == subscribe
    assert decode_frame(subscribe, 4) == packet
    suback = bytes.fromhex("90 05 000a 00 01 80")
    assert decode_frame(suback, 4) == Suback(10, (0, 1, 0x80))
    assert codec.encode(Suback(10, (0, 1, 0x80)), 4) == suback


def test_v5_subscription_options_byte() -> None:
    frame = bytes.fromhex("82 09 0001 00 0003 612f62 2e")
    sub = Subscription("a/b", qos=2, no_local=True, retain_as_published=True, retain_handling=2)
    assert decode_frame(frame, 5) == Subscribe(1, (sub,))
    assert codec.encode(Subscribe(1, (sub,)), 5) == frame


def test_unsubscribe_and_unsuback() -> None:
    frame = bytes.fromhex("a2 07 0005 0003 612f62")
    assert decode_frame(frame, 4) == Unsubscribe(5, ("a/b",))
    assert codec.encode(Unsubscribe(5, ("a/b",)), 4) == frame
    assert codec.encode(Unsuback(5, (0x11,)), 4) == bytes.fromhex("b0020005")
    v5 = bytes.fromhex("b0 04 0005 00 11")
    assert codec.encode(Unsuback(5, (0x11,)), 5) == v5
    assert decode_frame(v5, 5) == Unsuback(5, (0x11,))


@pytest.mark.parametrize(
    ("packet", "frame"),
    [
        (Pingreq(), "c000"),
        (Pingresp(), "d000"),
        (Disconnect(), "e000"),
        (Puback(10), "4002000a"),
        (Pubrec(10), "5002000a"),
        (Pubrel(10), "6202000a"),
        (Pubcomp(10), "7002000a"),
    ],
)
def test_fixed_frames_in_both_versions(packet: Packet, frame: str) -> None:
    for version in (4, 5):
        assert codec.encode(packet, version) == bytes.fromhex(frame)
        assert decode_frame(bytes.fromhex(frame), version) == packet


# ---------------------------------------------------------------- MQTT 5 short forms


@pytest.mark.parametrize(
    ("packet", "frame"),
    [
        (Puback(1, 0x10), "4003 0001 10"),
        (Pubrec(1, 0x80), "5003 0001 80"),
        (Pubrel(1, 0x92), "6203 0001 92"),
        (Pubcomp(1, 0x00, Properties(reason_string="x")), "7008 0001 00 04 1f 0001 78"),
        (Disconnect(0x04), "e001 04"),
        (Disconnect(0, Properties(session_expiry_interval=0)), "e007 00 05 11 00000000"),
        (Auth(), "f000"),
        (Auth(0x18, Properties(authentication_method="m")), "f006 18 04 15 0001 6d"),
    ],
)
def test_v5_omits_what_the_spec_lets_it_omit(packet: Packet, frame: str) -> None:
    data = bytes.fromhex(frame)
    assert codec.encode(packet, 5) == data
    assert decode_frame(data, 5) == packet


@pytest.mark.parametrize(
    ("frame", "packet"),
    [
        ("4004 0001 00 00", Puback(1)),  # explicit reason and empty property block
        ("4003 0001 00", Puback(1)),
        ("e002 00 00", Disconnect()),
        ("f001 19", Auth(0x19)),
    ],
)
def test_v5_accepts_the_long_forms_too(frame: str, packet: Packet) -> None:
    assert decode_frame(bytes.fromhex(frame), 5) == packet


# ---------------------------------------------------------------- 3.1.1 down-mapping


def test_311_drops_properties_and_reason_codes() -> None:
    props = Properties(reason_string="nope", user_properties=(("a", "b"),))
    assert codec.encode(Puback(7, 0x87, props), 4) == bytes.fromhex("40020007")
    assert codec.encode(Disconnect(0x8B, props), 4) == bytes.fromhex("e000")
    publish = Publish("t", b"", properties=Properties(message_expiry_interval=5))
    assert codec.encode(publish, 4) == bytes.fromhex("30030001 74")


def test_311_suback_failure_codes_become_0x80() -> None:
    assert codec.encode(Suback(1, (0x02, 0x87, 0xA2)), 4) == bytes.fromhex("9005 0001 02 80 80")


def test_311_connack_maps_v5_reasons() -> None:
    assert codec.encode(Connack(reason_code=ReasonCode.BANNED), 4)[-1] == 5
    assert codec.encode(Connack(reason_code=ReasonCode.SERVER_BUSY), 4)[-1] == 3


def test_connack_success_code_other_than_0_cannot_be_mapped_to_311() -> None:
    with pytest.raises(ValueError):
        codec.encode(Connack(reason_code=0x10), 4)


def test_auth_cannot_be_encoded_for_311() -> None:
    with pytest.raises(ValueError):
        codec.encode(Auth(), 4)


@pytest.mark.parametrize(
    "packet",
    [
        Publish("t", qos=1),  # no packet identifier
        Publish("t", qos=3, packet_id=1),
        Publish("t" * 70_000),
        Puback(0x1_0000),
        Suback(1, (0x100,)),
        Subscribe(1, (Subscription("t", qos=3),)),
        Puback(1, 0, Properties(topic_alias=3)),  # not allowed in PUBACK
        Puback(1, 0x100),
        Connect(5, "c", will=Will("t", b"", qos=3)),
    ],
)
def test_unencodable_values_raise_value_error(packet: Packet) -> None:
    with pytest.raises(ValueError):
        codec.encode(packet, 5)


# ---------------------------------------------------------------- reason code mapping


@pytest.mark.parametrize(
    ("reason", "code"),
    [
        (0x00, 0),
        (0x84, 1),
        (0x85, 2),
        (0x88, 3),
        (0x89, 3),
        (0x97, 3),
        (0x9F, 3),
        (0x9C, 3),
        (0x86, 4),
        (0x87, 5),
        (0x8A, 5),
        (0x8C, 5),
        (0x9B, 5),
        (0xFE, 5),  # unknown failure: a refusal that does not invite retries
    ],
)
def test_connack_return_code_v311(reason: int, code: int) -> None:
    assert connack_return_code_v311(reason) == code


def test_connack_return_code_v311_rejects_non_connack_codes() -> None:
    with pytest.raises(ValueError):
        connack_return_code_v311(ReasonCode.GRANTED_QOS_1)


def test_reason_code_aliases() -> None:
    assert ReasonCode["NORMAL_DISCONNECTION"] is ReasonCode.SUCCESS
    assert ReasonCode["GRANTED_QOS_0"] is ReasonCode(0)
    assert int(ReasonCode.SUCCESS) == 0
    assert int(ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED) == 0xA2
    assert len({int(code) for code in ReasonCode}) == 43
    assert ReasonCode(0x8A) is ReasonCode.BANNED


# ---------------------------------------------------------------- decoding details


def test_decode_accepts_memoryview_and_bytearray_bodies() -> None:
    first, body = split(bytes.fromhex("3c 0f 0003 612f62 0001 05 01 01 23 0007 6869"))
    expected = codec.decode(first, body, 5)
    assert codec.decode(first, memoryview(body), 5) == expected
    assert codec.decode(first, bytearray(body), 5) == expected
    assert type(codec.decode(first, memoryview(body), 5)).__name__ == "Publish"


def test_decoded_publish_without_properties_shares_the_empty_block() -> None:
    packet = decode_frame(bytes.fromhex("30 06 0003 612f62 00"), 5)
    assert isinstance(packet, Publish)
    assert packet.properties is NO_PROPERTIES


def test_connect_password_without_user_name_is_allowed_in_v5() -> None:
    frame = bytes.fromhex("10 11 0004 4d515454 05 42 0000 00 0000 0002 7077")
    assert decode_frame(frame, 5) == Connect(5, "", password=b"pw")


def test_connect_with_v5_will_properties() -> None:
    will = Will("w", b"x", qos=2, retain=True, properties=Properties(will_delay_interval=30))
    packet = Connect(5, "c", will=will)
    assert decode_frame(codec.encode(packet, 5), 5) == packet
    assert codec.encode(packet, 5)[9] == 0x36  # will retain, will QoS 2, will flag, clean


def test_connect_ignores_the_negotiated_version() -> None:
    assert decode_frame(MINIMAL_CONNECT_311, 5) == Connect(4, "", keep_alive=60)


def test_publish_with_empty_topic_for_topic_alias_decodes() -> None:
    frame = bytes.fromhex("30 06 0000 03 23 0001")
    packet = decode_frame(frame, 5)
    assert packet == Publish("", properties=Properties(topic_alias=1))


def test_v5_publish_keeps_user_property_order_and_repeats() -> None:
    users = (("k", "1"), ("k", "2"), ("a", ""))
    packet = Publish(
        "t", properties=Properties(user_properties=users, subscription_identifiers=(3, 1))
    )
    decoded = decode_frame(codec.encode(packet, 5), 5)
    assert isinstance(decoded, Publish)
    assert decoded.properties.user_properties == users
    assert decoded.properties.subscription_identifiers == (3, 1)


def test_large_publish_uses_multi_byte_remaining_length() -> None:
    payload = bytes(range(256)) * 1000
    data = codec.encode(Publish("big", payload, qos=1, packet_id=9), 4)
    assert data[1:4] == codec.encode_variable_byte_int(len(data) - 4)
    assert decode_frame(data, 4) == Publish("big", payload, qos=1, packet_id=9)


def test_encoding_one_publish_for_both_versions_gives_each_its_own_bytes() -> None:
    """The one-entry memo is keyed by the packet and the version family."""
    packet = Publish("t/x", b"data", properties=Properties(content_type="a"))
    twin = Publish("t/x", b"data", properties=Properties(content_type="a"))
    v4 = codec.encode(packet, 4)
    v5 = codec.encode(packet, 5)
    assert v4 != v5
    assert codec.encode(packet, 4) == v4 == codec.encode(twin, 4)
    assert codec.encode(packet, 5) == v5 == codec.encode(twin, 5)
    assert codec.encode(packet, 3) == v4  # 3.1 and 3.1.1 share the PUBLISH layout
    assert codec.decode(v5[0], v5[2:], 5) == packet
