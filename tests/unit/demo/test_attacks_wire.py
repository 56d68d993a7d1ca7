"""The attacker's own wire code (``demo/attacks_wire.py``, ``demo/attacks_tls.py``) and the
verdicts that turn observations into results, without sockets.

Packets the attacker builds are read back by the broker's own codec (``bastion.mqtt``), and
what the attacker decodes is what that codec encodes, so both sides agree on every byte.
"""

from __future__ import annotations

import ssl
import struct
from pathlib import Path

import pytest

from bastion.config import load_settings
from bastion.demo.attacks_abuse import flood_verdict, trap_verdict
from bastion.demo.attacks_base import (
    MARKER_KEY,
    RATE_LIMIT,
    AttackContext,
    AttackTarget,
    SourceAddresses,
)
from bastion.demo.attacks_inside import payload_for_size
from bastion.demo.attacks_tls import TLS_1_0, TLS_1_1, client_hello, read_answer
from bastion.demo.attacks_wire import (
    DISCONNECT,
    PUBACK,
    Packet,
    WillSpec,
    WireError,
    decode_connack,
    decode_publish,
    decode_reason,
    decode_suback,
    encode_connect,
    encode_disconnect,
    encode_publish,
    encode_subscribe,
    publish_head,
    reason_text,
    varint,
)
from bastion.mqtt import codec
from bastion.mqtt.connection import MqttConnection, ProtocolViolation
from bastion.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Properties,
    Puback,
    Publish,
    Suback,
    Subscribe,
)


def _packet(data: bytes) -> Packet:
    """Split one encoded packet the way ``RawSession`` does."""
    length, used = 0, 1
    for shift in range(4):
        byte = data[used]
        used += 1
        length |= (byte & 0x7F) << (7 * shift)
        if not byte & 0x80:
            break
    assert len(data) == used + length
    return Packet(data[0] >> 4, data[0] & 0x0F, data[used:])


def _server_reads(*packets: bytes) -> list[object]:
    """What the broker's connection state machine makes of our bytes."""
    connection = MqttConnection()
    return list(connection.receive_data(b"".join(packets)))


# ----------------------------------------------------------------- encoding


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, 2_097_152, 268_435_455])
def test_varint_matches_the_broker(value: int) -> None:
    encoded = varint(value)
    assert codec.decode_variable_byte_int(encoded) == (value, len(encoded))


def test_varint_refuses_what_does_not_fit() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        varint(268_435_456)


def test_connect_is_read_by_the_broker_as_sent() -> None:
    will = WillSpec("temp/sensor1", b"bye", delay=30)
    data = encode_connect(
        "sensor1-x-abc",
        username="sensor1",
        password="pw",
        clean_start=False,
        session_expiry=30,
        will=will,
    )
    (event,) = _server_reads(data)
    assert isinstance(event, Connect)
    assert (event.client_id, event.username, event.password) == ("sensor1-x-abc", "sensor1", b"pw")
    assert event.clean_start is False and event.protocol_version == 5
    assert event.properties.session_expiry_interval == 30
    assert event.will is not None
    assert (event.will.topic, event.will.payload, event.will.qos) == ("temp/sensor1", b"bye", 0)
    assert event.will.properties.will_delay_interval == 30


def test_anonymous_connect_has_no_credentials() -> None:
    (event,) = _server_reads(encode_connect("anon"))
    assert isinstance(event, Connect)
    assert event.username is None and event.password is None and event.clean_start


def test_publish_and_subscribe_are_read_back() -> None:
    events = _server_reads(
        encode_connect("c"),
        encode_publish(b"temp/sensor1", b"x" * 300, qos=1, packet_id=7),
        encode_subscribe(3, "cmd/door1", 2),
        encode_disconnect(0, session_expiry=0),
    )
    assert isinstance(events[1], Publish)
    assert (events[1].topic, events[1].payload, events[1].packet_id) == (
        "temp/sensor1",
        b"x" * 300,
        7,
    )
    assert isinstance(events[2], Subscribe)
    assert events[2].packet_id == 3
    assert [(s.topic_filter, s.qos) for s in events[2].subscriptions] == [("cmd/door1", 2)]
    assert isinstance(events[3], Disconnect)
    assert events[3].reason_code == 0 and events[3].properties.session_expiry_interval == 0


def test_the_invalid_utf8_topic_is_what_the_broker_calls_invalid_utf8() -> None:
    events = _server_reads(
        encode_connect("c"), encode_publish(b"alerts/attack/\xc3\x28", b"m", qos=1, packet_id=1)
    )
    violation = events[-1]
    assert isinstance(violation, ProtocolViolation)
    assert violation.invalid_utf8 and violation.reason == 0x81


def test_publish_head_announces_the_whole_payload() -> None:
    head = publish_head(b"temp/sensor1", 70_000, qos=1, packet_id=1)
    remaining, end = codec.decode_variable_byte_int(head, 1)
    assert remaining == len(head) - end + 70_000


@pytest.mark.parametrize("limit", [64, 127, 128, 65_536, 1 << 20])
def test_oversized_payload_makes_the_packet_one_byte_too_big(limit: int) -> None:
    size = payload_for_size(b"temp/sensor1", limit + 1)
    packet = publish_head(b"temp/sensor1", size, qos=1, packet_id=1) + b"x" * size
    assert len(packet) == limit + 1


# ----------------------------------------------------------------- decoding


def test_connack_with_properties_from_the_broker() -> None:
    props = Properties(
        maximum_packet_size=65_536, reason_string="hello", user_properties=(("k", "v"),)
    )
    data = codec.encode(Connack(True, 0, props), 5)
    connack = decode_connack(_packet(data))
    assert (connack.session_present, connack.reason, connack.max_packet_size) == (True, 0, 65_536)


def test_refused_connack_without_properties() -> None:
    connack = decode_connack(_packet(codec.encode(Connack(False, 0x87), 5)))
    assert (connack.reason, connack.max_packet_size) == (0x87, None)


def test_reasons_of_acks_and_disconnect() -> None:
    assert decode_reason(_packet(codec.encode(Puback(5, 0x87), 5))) == 0x87
    assert decode_reason(_packet(codec.encode(Puback(5, 0), 5))) == 0
    assert decode_reason(_packet(codec.encode(Disconnect(0x95), 5))) == 0x95
    assert decode_reason(_packet(codec.encode(Disconnect(0), 5))) == 0
    assert decode_suback(_packet(codec.encode(Suback(1, (0x87,)), 5))) == [0x87]


def test_publish_from_the_broker() -> None:
    data = codec.encode(Publish("cmd/door1", b"bait", qos=2, dup=True, packet_id=9), 5)
    message = decode_publish(_packet(data))
    assert (message.topic, message.payload, message.qos, message.packet_id, message.dup) == (
        b"cmd/door1",
        b"bait",
        2,
        9,
        True,
    )


def test_truncated_and_unknown_properties_are_wire_errors() -> None:
    with pytest.raises(WireError):
        decode_connack(Packet(2, 0, b"\x00\x00\x05\x27\x00"))
    with pytest.raises(WireError, match="unknown property"):
        decode_connack(Packet(2, 0, b"\x00\x00\x02\x7f\x00"))
    with pytest.raises(WireError, match="expected CONNACK"):
        decode_connack(Packet(PUBACK, 0, b"\x00\x01"))


def test_reason_text_names_the_code() -> None:
    assert reason_text(0x87) == "0x87 not authorized"
    assert reason_text(0x95) == "0x95 packet too large"
    assert reason_text(0) == "0x00 success"
    assert reason_text(0x7E) == "0x7E unknown reason"
    assert DISCONNECT == 14


# ----------------------------------------------------------------- TLS hello


@pytest.mark.parametrize("version", [TLS_1_0, TLS_1_1])
def test_client_hello_offers_only_the_old_version(version: int) -> None:
    record = client_hello(version, "localhost")
    kind, record_version, length = struct.unpack("!BHH", record[:5])
    assert (kind, record_version, length) == (22, TLS_1_0, len(record) - 5)
    assert record[5] == 1  # ClientHello
    assert int.from_bytes(record[6:9], "big") == len(record) - 9
    assert int.from_bytes(record[9:11], "big") == version
    assert b"\x00\x2b" not in record[44:]  # no supported_versions: nothing newer is offered
    assert b"localhost" in record


def test_client_hello_sends_no_server_name_for_an_address() -> None:
    assert b"127.0.0.1" not in client_hello(TLS_1_0, "127.0.0.1")


def test_server_answers_are_read() -> None:
    alert = bytes((21, 3, 3, 0, 2, 2, 70))
    assert read_answer(alert).alert == 70
    assert read_answer(alert).describe() == "alert protocol_version (70)"
    hello = bytes((22, 3, 1, 0, 40, 2, 0, 0, 36, 3, 1)) + bytes(32)
    assert read_answer(hello).version == TLS_1_0
    assert read_answer(b"").closed
    assert read_answer(b"").describe() == "connection closed without a ServerHello"
    assert read_answer(b"\x20\x03\x00\x00\x00\x00").other == "unexpected record type 32"


# ----------------------------------------------------------------- verdicts


def _context(settings_text: str | None = None, directory: Path | None = None) -> AttackContext:
    """A context with the given ``bastion.toml`` (None: no configuration known)."""
    settings = None
    if settings_text is not None:
        assert directory is not None
        path = directory / "bastion.toml"
        path.write_text(settings_text)
        settings = load_settings(path)
    target = AttackTarget("127.0.0.1", 1, Path("ca.crt"), Path("."), {})
    return AttackContext(
        target, ssl.create_default_context(), SourceAddresses("192.0.2.1"), settings
    )


def test_flood_cut_off_by_the_broker_is_blocked() -> None:
    result = flood_verdict(
        _context(),
        "message flood",
        user="sensor1",
        sent=80,
        elapsed=0.1,
        ending="DISCONNECT 0x96 message rate too high",
        count=60,
    )
    assert result.blocked and result.control == RATE_LIMIT
    assert "0x96" in result.detail and "60 of them" in result.detail


def test_flood_within_a_generous_budget_is_not_blocked(tmp_path: Path) -> None:
    text = "[limits.client]\nmessages_per_second = 1000.0\nburst_messages = 2000.0\n"
    ctx = _context(text, tmp_path)
    result = flood_verdict(
        ctx, "message flood", user="sensor1", sent=3000, elapsed=2.0, ending=None, count=3000
    )
    assert not result.blocked and "allows it all" in result.detail


def test_flood_throttled_to_its_budget_is_blocked(tmp_path: Path) -> None:
    text = "[limits.client]\nmessages_per_second = 20.0\nburst_messages = 60.0\n"
    ctx = _context(text, tmp_path)
    kept = flood_verdict(
        ctx, "message flood", user="sensor1", sent=5000, elapsed=2.0, ending=None, count=110
    )
    assert kept.blocked and "throttled" in kept.detail
    leaked = flood_verdict(
        ctx, "message flood", user="sensor1", sent=5000, elapsed=2.0, ending=None, count=4000
    )
    assert not leaked.blocked and "not throttled" in leaked.detail


def test_flood_without_an_observer_is_not_claimed() -> None:
    result = flood_verdict(
        _context(), "message flood", user="sensor1", sent=10, elapsed=1, ending=None, count=None
    )
    assert not result.blocked and "nothing observed" in result.detail


def test_trap_verdicts() -> None:
    assert trap_verdict("t", 3, 6, 3).blocked
    unbounded = trap_verdict("t", 7, 6, 0)
    assert not unbounded.blocked and "no bound" in unbounded.detail
    assert not trap_verdict("t", 0, 6, 3).blocked


def test_markers_match_only_their_attack_and_run() -> None:
    ctx = _context()
    payload = ctx.marker("message flood", n=3)
    assert MARKER_KEY.encode() in payload
    assert ctx.ours("message flood")("temp/sensor1", payload)
    assert ctx.ours("message flood")(None, payload)
    assert not ctx.ours("oversized packet")("temp/sensor1", payload)
    other = _context()
    assert not other.ours("message flood")("temp/sensor1", payload)


def test_no_source_addresses_for_a_remote_broker() -> None:
    sources = SourceAddresses("192.0.2.1")
    assert not sources.available and sources.next() is None


def test_loopback_source_addresses_are_distinct() -> None:
    sources = SourceAddresses("127.0.0.1")
    if not sources.available:
        pytest.skip("this system does not route all of 127.0.0.0/8 to the loopback interface")
    first, second = sources.next(), sources.next()
    assert first != second
    assert first is not None and first.startswith("127.") and first != "127.0.0.1"
