"""Property tests of the MQTT codec: round-trips, framing in any chunking, hostile bytes.

Strategies build every packet type with every property its packet allows, for 3.1.1 and
5.0; ``codec.decode`` must never raise anything but ``ProtocolError``.
"""

from __future__ import annotations

import contextlib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import ProtocolError
from bastion.mqtt import codec
from bastion.mqtt.framing import FrameReader
from bastion.mqtt.packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    PacketType,
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
from bastion.mqtt.properties import (
    ALLOWED,
    BOOLEAN_BYTE_PROPERTIES,
    NON_ZERO_PROPERTIES,
    PROPERTY_BY_ID,
    WILL,
    PropertyId,
    WireType,
)
from bastion.mqtt.reason_codes import (
    CONNACK_REASON_FROM_V311,
    SUBACK_RETURN_CODES_V311,
    VALID_REASON_CODES,
)

SETTINGS = settings(max_examples=300, deadline=None)
VERSIONS = st.sampled_from([4, 5])

texts = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=12)
blobs = st.binary(max_size=24)
packet_ids = st.integers(1, 0xFFFF)
qos_levels = st.integers(0, 2)


def _value_strategy(pid: PropertyId) -> st.SearchStrategy[Any]:
    wire_type = PROPERTY_BY_ID[pid].wire_type
    low = 1 if pid in NON_ZERO_PROPERTIES else 0
    if pid in BOOLEAN_BYTE_PROPERTIES:
        return st.integers(0, 1)
    if wire_type == WireType.TWO_BYTE_INT:
        return st.integers(low, 0xFFFF)
    if wire_type == WireType.FOUR_BYTE_INT:
        return st.integers(low, 0xFFFF_FFFF)
    if wire_type == WireType.UTF8_STRING:
        return texts
    if wire_type == WireType.BINARY_DATA:
        return blobs
    raise AssertionError(pid)


def properties(kind: int) -> st.SearchStrategy[Properties]:
    """Any valid property set for ``kind`` (a PacketType or WILL)."""
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for pid in ALLOWED[kind]:
        field = PROPERTY_BY_ID[pid].field
        if pid == PropertyId.USER_PROPERTY:
            optional[field] = st.lists(st.tuples(texts, texts), max_size=3).map(tuple)
        elif pid == PropertyId.SUBSCRIPTION_IDENTIFIER:
            most = 3 if kind == PacketType.PUBLISH else 1
            ids = st.lists(st.integers(1, 268_435_455), max_size=most)
            optional[field] = ids.map(tuple)
        else:
            optional[field] = _value_strategy(pid)
    return st.fixed_dictionaries({}, optional=optional).map(lambda kw: Properties(**kw))


def props_for(kind: int, version: int) -> st.SearchStrategy[Properties]:
    return properties(kind) if version == 5 else st.just(NO_PROPERTIES)


@st.composite
def connects(draw: st.DrawFn, version: int) -> Connect:
    level = 5 if version == 5 else draw(st.sampled_from([3, 4]))
    will = None
    if draw(st.booleans()):
        will = Will(
            draw(texts),
            draw(blobs),
            draw(qos_levels),
            draw(st.booleans()),
            draw(props_for(WILL, version)),
        )
    username = draw(st.none() | texts)
    password = draw(st.none() | blobs) if username is not None or level == 5 else None
    return Connect(
        protocol_version=level,
        client_id=draw(texts),
        clean_start=draw(st.booleans()),
        keep_alive=draw(st.integers(0, 0xFFFF)),
        will=will,
        username=username,
        password=password,
        properties=draw(props_for(PacketType.CONNECT, version)),
        protocol_name="MQIsdp" if level == 3 else "MQTT",
    )


@st.composite
def connacks(draw: st.DrawFn, version: int) -> Connack:
    if version == 5:
        reason = draw(st.sampled_from(sorted(VALID_REASON_CODES[PacketType.CONNACK])))
    else:
        reason = draw(st.sampled_from(sorted(CONNACK_REASON_FROM_V311.values())))
    present = draw(st.booleans()) if reason == 0 else False
    return Connack(present, reason, draw(props_for(PacketType.CONNACK, version)))


@st.composite
def publishes(draw: st.DrawFn, version: int) -> Publish:
    qos = draw(qos_levels)
    return Publish(
        topic=draw(texts),
        payload=draw(st.binary(max_size=200)),
        qos=qos,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if qos else False,
        packet_id=draw(packet_ids) if qos else None,
        properties=draw(props_for(PacketType.PUBLISH, version)),
    )


_ACK_KINDS: list[tuple[type[Puback | Pubrec | Pubrel | Pubcomp], PacketType]] = [
    (Puback, PacketType.PUBACK),
    (Pubrec, PacketType.PUBREC),
    (Pubrel, PacketType.PUBREL),
    (Pubcomp, PacketType.PUBCOMP),
]


@st.composite
def acks(draw: st.DrawFn, version: int) -> Puback | Pubrec | Pubrel | Pubcomp:
    cls, kind = draw(st.sampled_from(_ACK_KINDS))
    if version != 5:
        return cls(draw(packet_ids))
    reason = draw(st.sampled_from(sorted(VALID_REASON_CODES[kind])))
    return cls(draw(packet_ids), reason, draw(properties(kind)))


@st.composite
def subscribes(draw: st.DrawFn, version: int) -> Subscribe:
    v5 = version == 5
    subscriptions = draw(
        st.lists(
            st.builds(
                Subscription,
                texts,
                qos_levels,
                st.booleans() if v5 else st.just(False),
                st.booleans() if v5 else st.just(False),
                st.integers(0, 2) if v5 else st.just(0),
            ),
            min_size=1,
            max_size=4,
        )
    )
    props = draw(props_for(PacketType.SUBSCRIBE, version))
    return Subscribe(draw(packet_ids), tuple(subscriptions), props)


@st.composite
def subacks(draw: st.DrawFn, version: int) -> Suback:
    valid = VALID_REASON_CODES[PacketType.SUBACK] if version == 5 else SUBACK_RETURN_CODES_V311
    codes = draw(st.lists(st.sampled_from(sorted(valid)), min_size=1, max_size=4))
    props = draw(props_for(PacketType.SUBACK, version))
    return Suback(draw(packet_ids), tuple(codes), props)


@st.composite
def unsubscribes(draw: st.DrawFn, version: int) -> Unsubscribe:
    filters = draw(st.lists(texts, min_size=1, max_size=4))
    props = draw(props_for(PacketType.UNSUBSCRIBE, version))
    return Unsubscribe(draw(packet_ids), tuple(filters), props)


@st.composite
def unsubacks(draw: st.DrawFn, version: int) -> Unsuback:
    if version != 5:
        return Unsuback(draw(packet_ids))
    valid = sorted(VALID_REASON_CODES[PacketType.UNSUBACK])
    codes = draw(st.lists(st.sampled_from(valid), min_size=1, max_size=4))
    return Unsuback(draw(packet_ids), tuple(codes), draw(properties(PacketType.UNSUBACK)))


def with_reason(
    cls: type[Disconnect] | type[Auth], kind: PacketType
) -> st.SearchStrategy[Disconnect | Auth]:
    return st.builds(cls, st.sampled_from(sorted(VALID_REASON_CODES[kind])), properties(kind))


def packets(version: int) -> st.SearchStrategy[Packet]:
    choices: list[st.SearchStrategy[Any]] = [
        connects(version),
        connacks(version),
        publishes(version),
        acks(version),
        subscribes(version),
        subacks(version),
        unsubscribes(version),
        unsubacks(version),
        st.just(Pingreq()),
        st.just(Pingresp()),
    ]
    if version == 5:
        choices.append(with_reason(Disconnect, PacketType.DISCONNECT))
        choices.append(with_reason(Auth, PacketType.AUTH))
    else:
        choices.append(st.just(Disconnect()))
    return st.one_of(choices)


def decode_whole(data: bytes, version: int) -> Packet:
    reader = FrameReader()
    reader.feed(data)
    frame = reader.next_frame()
    assert frame is not None
    assert reader.buffered == 0
    return codec.decode(frame[0], frame[1], version)


@SETTINGS
@given(packets(5))
def test_v5_packets_round_trip(packet: Packet) -> None:
    assert decode_whole(codec.encode(packet, 5), 5) == packet


@SETTINGS
@given(packets(4))
def test_v311_packets_round_trip(packet: Packet) -> None:
    assert decode_whole(codec.encode(packet, 4), 4) == packet


@SETTINGS
@given(st.lists(packets(5), min_size=1, max_size=8), st.data())
def test_frame_reader_yields_the_same_frames_in_any_chunking(
    stream: list[Packet], data: st.DataObject
) -> None:
    encoded = [codec.encode(packet, 5) for packet in stream]
    joined = b"".join(encoded)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(joined)), max_size=12)))
    reader = FrameReader()
    frames: list[tuple[int, bytes]] = []
    start = 0
    for cut in [*cuts, len(joined)]:
        reader.feed(joined[start:cut])
        start = cut
        while (frame := reader.next_frame()) is not None:
            frames.append(frame)
    assert [
        bytes([first]) + codec.encode_variable_byte_int(len(body)) + body for first, body in frames
    ] == encoded
    assert [codec.decode(first, body, 5) for first, body in frames] == stream


def _decode_never_escapes(first_byte: int, body: bytes, version: int) -> None:
    """The strict decoder (without ``decode``'s last-resort net) raises only ProtocolError."""
    for buffer in (body, memoryview(body)):
        with contextlib.suppress(ProtocolError):
            codec._decode_checked(first_byte, buffer, version)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=64), st.sampled_from([3, 4, 5]))
def test_decode_of_arbitrary_bytes_raises_only_protocol_error(
    first_byte: int, body: bytes, version: int
) -> None:
    _decode_never_escapes(first_byte, body, version)


@st.composite
def mutated(draw: st.DrawFn) -> tuple[int, bytes, int]:
    """A valid packet's frame with a few bytes flipped, inserted or cut off."""
    version = draw(VERSIONS)
    data = bytearray(codec.encode(draw(packets(version)), version))
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(data) - 1))
        action = draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        if action == "flip":
            data[where] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data.insert(where, draw(st.integers(0, 255)))
        elif action == "delete" and len(data) > 1:
            del data[where]
        elif action == "truncate":
            del data[max(where, 1) :]
    first = data[0]
    try:
        _, offset = codec.decode_variable_byte_int(bytes(data), 1)
    except ProtocolError:
        offset = 2
    return first, bytes(data[offset:]), version


@settings(max_examples=500, deadline=None)
@given(mutated())
def test_decode_of_mutated_packets_raises_only_protocol_error(
    case: tuple[int, bytes, int],
) -> None:
    _decode_never_escapes(*case)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=40), max_size=10), VERSIONS)
def test_frame_reader_and_decoder_on_garbage_raise_only_protocol_error(
    chunks: list[bytes], version: int
) -> None:
    reader = FrameReader(max_packet_size=1000)
    try:
        for chunk in chunks:
            reader.feed(chunk)
            while (frame := reader.next_frame()) is not None:
                with contextlib.suppress(ProtocolError):
                    codec._decode_checked(frame[0], frame[1], version)
    except ProtocolError:
        pass  # framing errors end the stream, as they end a connection
