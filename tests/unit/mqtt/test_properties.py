"""Unit tests of ``bastion.mqtt.properties``: the tables, each wire type, and the checks."""

from __future__ import annotations

from dataclasses import fields

import pytest

from bastion.errors import MalformedPacket, ProtocolError
from bastion.mqtt.packets import NO_PROPERTIES, PacketType, Properties
from bastion.mqtt.properties import (
    ALLOWED,
    PROPERTY_BY_ID,
    PROPERTY_SPECS,
    WILL,
    PropertyId,
    WireType,
    decode_properties,
    encode_properties,
)


def test_table_covers_every_properties_field_once() -> None:
    assert sorted(spec.field for spec in PROPERTY_SPECS) == sorted(
        f.name for f in fields(Properties)
    )
    assert [spec.id for spec in PROPERTY_SPECS] == sorted(PropertyId)
    assert len(PROPERTY_BY_ID) == len(PropertyId) == 27


def test_every_packet_kind_has_a_row() -> None:
    assert set(ALLOWED) == {*PacketType, WILL}
    assert not ALLOWED[PacketType.PINGREQ]
    assert not ALLOWED[PacketType.PINGRESP]


@pytest.mark.parametrize(
    ("pid", "kinds"),
    [
        (PropertyId.TOPIC_ALIAS, {PacketType.PUBLISH}),
        (PropertyId.WILL_DELAY_INTERVAL, {WILL}),
        (PropertyId.SUBSCRIPTION_IDENTIFIER, {PacketType.PUBLISH, PacketType.SUBSCRIBE}),
        (
            PropertyId.SESSION_EXPIRY_INTERVAL,
            {PacketType.CONNECT, PacketType.CONNACK, PacketType.DISCONNECT},
        ),
        (
            PropertyId.AUTHENTICATION_METHOD,
            {PacketType.CONNECT, PacketType.CONNACK, PacketType.AUTH},
        ),
        (PropertyId.ASSIGNED_CLIENT_IDENTIFIER, {PacketType.CONNACK}),
        (PropertyId.REQUEST_PROBLEM_INFORMATION, {PacketType.CONNECT}),
        (PropertyId.SERVER_REFERENCE, {PacketType.CONNACK, PacketType.DISCONNECT}),
        (PropertyId.PAYLOAD_FORMAT_INDICATOR, {PacketType.PUBLISH, WILL}),
    ],
)
def test_allowed_table_rows_from_the_spec(pid: PropertyId, kinds: set[int]) -> None:
    assert {kind for kind, allowed in ALLOWED.items() if pid in allowed} == kinds


def test_user_property_is_allowed_everywhere_properties_exist() -> None:
    assert {kind for kind, allowed in ALLOWED.items() if PropertyId.USER_PROPERTY in allowed} == (
        {*PacketType, WILL} - {PacketType.PINGREQ, PacketType.PINGRESP}
    )


def test_empty_block_is_one_zero_byte() -> None:
    assert encode_properties(NO_PROPERTIES, PacketType.PUBLISH) == b"\x00"
    assert encode_properties(Properties(), PacketType.PUBACK) == b"\x00"
    props, offset = decode_properties(b"\xaa\x00\xbb", 1, PacketType.PUBLISH)
    assert props is NO_PROPERTIES
    assert offset == 2


@pytest.mark.parametrize(
    ("props", "kind", "encoded"),
    [
        (Properties(payload_format_indicator=1), PacketType.PUBLISH, "02 01 01"),
        (Properties(message_expiry_interval=0x01020304), PacketType.PUBLISH, "05 02 01020304"),
        (Properties(content_type="a"), PacketType.PUBLISH, "04 03 0001 61"),
        (Properties(correlation_data=b"\x00\xff"), PacketType.PUBLISH, "05 09 0002 00ff"),
        (Properties(subscription_identifiers=(128,)), PacketType.SUBSCRIBE, "03 0b 8001"),
        (
            Properties(subscription_identifiers=(1, 268_435_455)),
            PacketType.PUBLISH,
            "07 0b 01 0b ffffff7f",
        ),
        (Properties(server_keep_alive=0x1234), PacketType.CONNACK, "03 13 1234"),
        (Properties(user_properties=(("k", "v"),)), PacketType.AUTH, "07 26 0001 6b 0001 76"),
        (
            Properties(reason_string="r", user_properties=(("a", "b"), ("a", "c"))),
            PacketType.PUBACK,
            "12 1f 0001 72 26 0001 61 0001 62 26 0001 61 0001 63",
        ),
        (Properties(will_delay_interval=5), WILL, "05 18 00000005"),
    ],
)
def test_encode_and_decode_each_wire_type(props: Properties, kind: int, encoded: str) -> None:
    data = bytes.fromhex(encoded)
    assert encode_properties(props, kind) == data
    assert decode_properties(data, 0, kind) == (props, len(data))


def test_decode_stops_at_the_block_end() -> None:
    data = bytes.fromhex("02 01 01 ffff")
    assert decode_properties(data, 0, PacketType.PUBLISH) == (
        Properties(payload_format_indicator=1),
        3,
    )


def test_decode_accepts_a_memoryview() -> None:
    data = memoryview(bytes.fromhex("04 03 0001 61"))
    assert decode_properties(data, 0, PacketType.PUBLISH)[0] == Properties(content_type="a")


def test_long_property_block_uses_a_multi_byte_length() -> None:
    props = Properties(reason_string="x" * 200)
    data = encode_properties(props, PacketType.DISCONNECT)
    assert data[:2] == bytes.fromhex("cb01")  # 203 = 0xCB 0x01
    assert decode_properties(data, 0, PacketType.DISCONNECT) == (props, len(data))


def test_encoding_a_property_the_packet_may_not_carry_raises() -> None:
    with pytest.raises(ValueError):
        encode_properties(Properties(topic_alias=1), PacketType.CONNECT)
    with pytest.raises(ValueError):
        encode_properties(Properties(subscription_identifiers=(1, 2)), PacketType.SUBSCRIBE)


@pytest.mark.parametrize(
    ("data", "kind", "reason"),
    [
        ("05 02 0000", PacketType.PUBLISH, 0x81),  # length past the buffer
        ("02 02 00", PacketType.PUBLISH, 0x81),  # value cut by the block end
        ("01 ff", PacketType.PUBLISH, 0x81),  # unknown identifier
        ("02 11 00", PacketType.PUBLISH, 0x81),  # session expiry not allowed in PUBLISH
        ("02 01 00", PacketType.CONNECT, 0x81),  # payload format not allowed in CONNECT
        ("02 23 00", WILL, 0x81),  # topic alias not allowed in Will Properties
        ("04 01 00 01 01", PacketType.PUBLISH, 0x82),  # repeated
        ("04 0b 01 0b 02", PacketType.SUBSCRIBE, 0x82),  # repeated outside PUBLISH
        ("02 0b 00", PacketType.PUBLISH, 0x82),  # subscription identifier 0
        ("03 23 0000", PacketType.PUBLISH, 0x82),  # topic alias 0
        ("03 21 0000", PacketType.CONNACK, 0x82),  # receive maximum 0
        ("05 27 00000000", PacketType.CONNECT, 0x82),  # maximum packet size 0
        ("02 24 02", PacketType.CONNACK, 0x82),  # maximum QoS 2
        ("02 19 02", PacketType.CONNECT, 0x82),  # request response information 2
        ("04 26 0000 00", PacketType.PUBLISH, 0x81),  # user property missing its value
        ("05 1f 0002 c0af", PacketType.PUBACK, 0x81),  # overlong UTF-8
        ("80", PacketType.PUBLISH, 0x81),  # truncated property length
    ],
)
def test_decode_errors(data: str, kind: int, reason: int) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_properties(bytes.fromhex(data), 0, kind)
    assert info.value.reason == reason
    assert isinstance(info.value, MalformedPacket) == (reason == 0x81)


def test_wire_types_of_the_byte_and_integer_properties() -> None:
    assert PROPERTY_BY_ID[0x24].wire_type == WireType.BYTE
    assert PROPERTY_BY_ID[0x21].wire_type == WireType.TWO_BYTE_INT
    assert PROPERTY_BY_ID[0x27].wire_type == WireType.FOUR_BYTE_INT
    assert PROPERTY_BY_ID[0x0B].wire_type == WireType.VARIABLE_BYTE_INT
    assert PROPERTY_BY_ID[0x26].wire_type == WireType.UTF8_STRING_PAIR
    assert PROPERTY_BY_ID[0x16].wire_type == WireType.BINARY_DATA
