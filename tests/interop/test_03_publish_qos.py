"""03 publish: QoS 0/1/2 in both directions for 3.1.1 and 5.0, with paho and byte-exact flows."""

from __future__ import annotations

import os

import pytest

from support.brokerproc import Broker, bastion_only
from support.clients import Clients, unique
from support.pahoclient import V5, V311, PahoClient
from support.rawclient import MQTT_5, MQTT_311, PacketType, RawClient, encode_ack, encode_publish

pytestmark = pytest.mark.interop
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])
QOS = [0, 1, 2]


def _subscriber(mqtt: Clients, broker: Broker, version: int, topic: str, qos: int) -> PahoClient:
    client = mqtt.paho(broker, version)
    assert client.subscribe(topic, qos) == [qos]
    return client


@both_versions
@pytest.mark.parametrize("pub_qos", QOS, ids=lambda q: f"pub{q}")
@pytest.mark.parametrize("sub_qos", QOS, ids=lambda q: f"sub{q}")
def test_delivered_qos_is_minimum_of_publish_and_subscription(
    broker: Broker, mqtt: Clients, ns: str, *, version: int, pub_qos: int, sub_qos: int
) -> None:
    topic = f"{ns}/qos"
    sub = _subscriber(mqtt, broker, version, topic, sub_qos)
    pub = mqtt.paho(broker, version)
    payloads = [f"m{i}".encode() for i in range(3)]
    for payload in payloads:
        pub.publish(topic, payload, pub_qos)
    got = sub.expect_n(3)
    assert [m.payload for m in got] == payloads  # same topic, same QoS: order kept
    for msg in got:
        assert (msg.topic, msg.qos) == (topic, min(pub_qos, sub_qos))
        assert (msg.retain, msg.dup) == (False, False)
    sub.expect_none(0.1)  # and nothing twice


@pytest.mark.parametrize(
    ("pub_version", "sub_version"), [(V311, V5), (V5, V311)], ids=["311to5", "5to311"]
)
@pytest.mark.parametrize("qos", QOS)
def test_messages_cross_protocol_versions(
    broker: Broker, mqtt: Clients, ns: str, *, pub_version: int, sub_version: int, qos: int
) -> None:
    topic = f"{ns}/cross"
    sub = _subscriber(mqtt, broker, sub_version, topic, 2)
    pub = mqtt.paho(broker, pub_version)
    pub.publish(topic, b"across", qos)
    msg = sub.expect()
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"across", qos)


@both_versions
@pytest.mark.parametrize(
    "payload",
    [b"", bytes(range(256)), os.urandom(256 * 1024)],
    ids=["empty", "all-bytes", "256KiB"],
)
def test_payload_arrives_byte_for_byte(
    broker: Broker, mqtt: Clients, ns: str, version: int, payload: bytes
) -> None:
    topic = f"{ns}/payload"
    sub = _subscriber(mqtt, broker, version, topic, 1)
    mqtt.paho(broker, version).publish(topic, payload, 1)
    assert sub.expect().payload == payload


@both_versions
@pytest.mark.parametrize("qos", [1, 2])
def test_many_messages_arrive_once_and_in_order(
    broker: Broker, mqtt: Clients, ns: str, version: int, qos: int
) -> None:
    """100 messages in windows of 10 in flight (below every receive maximum involved)."""
    topic = f"{ns}/ordered"
    sub = _subscriber(mqtt, broker, version, topic, qos)
    pub = mqtt.paho(broker, version)
    count, window = 100, 10
    for start in range(0, count, window):
        batch = range(start, start + window)
        mids = [pub.publish_nowait(topic, str(i).encode(), qos) for i in batch]
        for mid in mids:
            assert pub.wait_published(mid) in (0, 0x10)
    got = sub.expect_n(count, timeout=15)
    assert [int(m.payload) for m in got] == list(range(count))  # [MQTT-4.6.0-6]
    sub.expect_none(0.2)


MOSQUITTO_QOS2_BURST = bastion_only(
    "mosquitto 2.0.11 answers PUBREC 0x97 (quota exceeded) and drops QoS 2 messages while a "
    "subscriber's inflight window of 20 is full; Bastion queues them (bounded)"
)


@both_versions
@pytest.mark.parametrize("qos", [1, pytest.param(2, marks=MOSQUITTO_QOS2_BURST)])
def test_burst_of_unthrottled_messages_is_delivered_in_order(
    broker: Broker, mqtt: Clients, ns: str, version: int, qos: int
) -> None:
    topic = f"{ns}/burst"
    sub = _subscriber(mqtt, broker, version, topic, qos)
    pub = mqtt.paho(broker, version)
    count = 100
    mids = [pub.publish_nowait(topic, str(i).encode(), qos) for i in range(count)]
    for mid in mids:
        assert pub.wait_published(mid, timeout=15) in (0, 0x10)
    got = sub.expect_n(count, timeout=15)
    assert [int(m.payload) for m in got] == list(range(count))
    sub.expect_none(0.2)


# ----------------------------------------------------------------------------- byte-exact flows


@both_versions
def test_inbound_qos1_is_acknowledged_with_same_packet_id(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    raw.publish(f"{ns}/in1", b"x", qos=1, packet_id=0x1234)
    pkt = raw.expect(PacketType.PUBACK)
    assert pkt.flags == 0
    if version == MQTT_311:
        assert pkt.body == b"\x12\x34"
    else:  # short form, or reason 0x00 / 0x10 (no matching subscribers)
        assert pkt.body[:2] == b"\x12\x34"
        assert pkt.body[2:3] in (b"", b"\x00", b"\x10"), pkt.body


@both_versions
def test_inbound_qos2_duplicate_publish_is_delivered_once(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/in2"
    sub = _subscriber(mqtt, broker, version, topic, 2)
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    raw.publish(topic, b"once", qos=2, packet_id=77)
    rec = raw.expect_ack(PacketType.PUBREC)
    assert (rec.packet_id, rec.flags) == (77, 0)
    assert rec.reason_code in (0x00, 0x10)
    # Resent before PUBREL, DUP set: must be acknowledged again but not delivered again.
    raw.publish(topic, b"once", qos=2, packet_id=77, dup=True)
    assert raw.expect_ack(PacketType.PUBREC).packet_id == 77
    raw.ack(PacketType.PUBREL, 77)
    comp = raw.expect(PacketType.PUBCOMP)
    assert comp.flags == 0 and comp.body[:2] == b"\x00\x4d"
    assert sub.expect().payload == b"once"
    sub.expect_none(0.3)  # [MQTT-4.3.3-2]: no duplicate delivery


@both_versions
def test_packet_id_is_reusable_after_qos2_flow_completes(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/reuse"
    sub = _subscriber(mqtt, broker, version, topic, 2)
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    for payload in (b"first", b"second"):
        raw.publish(topic, payload, qos=2, packet_id=9)
        assert raw.expect_ack(PacketType.PUBREC).packet_id == 9
        raw.ack(PacketType.PUBREL, 9)
        assert raw.expect_ack(PacketType.PUBCOMP).packet_id == 9
    assert [m.payload for m in sub.expect_n(2)] == [b"first", b"second"]


def _raw_subscriber(mqtt: Clients, broker: Broker, version: int, topic: str, qos: int) -> RawClient:
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    assert raw.subscribe([(topic, qos)]).reason_codes == (qos,)
    return raw


@both_versions
def test_outbound_qos1_flow(broker: Broker, mqtt: Clients, ns: str, version: int) -> None:
    topic = f"{ns}/out1"
    raw = _raw_subscriber(mqtt, broker, version, topic, 1)
    mqtt.paho(broker, version).publish(topic, b"p", 1)
    pub = raw.expect_publish()
    assert (pub.topic, pub.payload, pub.qos, pub.dup, pub.retain) == (topic, b"p", 1, False, False)
    assert pub.packet_id not in (None, 0)  # [MQTT-2.3.1-1]
    assert pub.packet_id is not None
    raw.ack(PacketType.PUBACK, pub.packet_id)
    raw.expect_nothing(0.3)  # acknowledged: never resent on this connection


@both_versions
def test_outbound_qos2_flow(broker: Broker, mqtt: Clients, ns: str, version: int) -> None:
    topic = f"{ns}/out2"
    raw = _raw_subscriber(mqtt, broker, version, topic, 2)
    mqtt.paho(broker, version).publish(topic, b"p2", 2)
    pub = raw.expect_publish()
    assert (pub.payload, pub.qos, pub.dup) == (b"p2", 2, False)
    assert pub.packet_id is not None and pub.packet_id != 0
    raw.ack(PacketType.PUBREC, pub.packet_id)
    rel = raw.expect_ack(PacketType.PUBREL)
    assert rel.flags == 0x02  # [MQTT-3.6.1-1]
    assert (rel.packet_id, rel.reason_code) == (pub.packet_id, 0)
    raw.ack(PacketType.PUBCOMP, pub.packet_id)
    raw.expect_nothing(0.3)


@both_versions
def test_unacknowledged_outbound_messages_use_distinct_packet_ids(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/ids"
    raw = _raw_subscriber(mqtt, broker, version, topic, 2)
    pub = mqtt.paho(broker, version)
    for i in range(5):
        pub.publish(topic, str(i).encode(), 1 + i % 2)
    got = [raw.expect_publish() for _ in range(5)]
    ids = [p.packet_id for p in got]
    assert len(set(ids)) == 5 and 0 not in ids and None not in ids, ids  # [MQTT-2.3.1-2]
    assert [p.payload for p in got] == [b"0", b"1", b"2", b"3", b"4"]


@both_versions
def test_incoming_dup_flag_is_not_propagated(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/dup"
    raw_sub = _raw_subscriber(mqtt, broker, version, topic, 1)
    raw_pub = mqtt.raw(broker, version)
    raw_pub.connect(unique())
    raw_pub.publish(topic, b"d", qos=1, dup=True, packet_id=5)
    assert raw_pub.expect_ack(PacketType.PUBACK).packet_id == 5
    delivered = raw_sub.expect_publish()
    assert delivered.dup is False  # [MQTT-3.3.1-3]: DUP is per hop


def test_v5_pubrel_for_unknown_packet_id_gets_pubcomp(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_5)
    raw.connect(unique())
    raw.send(encode_ack(PacketType.PUBREL, 4242, version=MQTT_5))
    comp = raw.expect_ack(PacketType.PUBCOMP)
    assert comp.packet_id == 4242
    assert comp.reason_code in (0x00, 0x92)  # 0x92: Packet Identifier not found
    raw.ping()


def test_v311_pubrel_for_unknown_packet_id_gets_pubcomp(broker: Broker, mqtt: Clients) -> None:
    raw = mqtt.raw(broker, MQTT_311)
    raw.connect(unique())
    raw.send(encode_ack(PacketType.PUBREL, 4243))
    comp = raw.expect(PacketType.PUBCOMP)
    assert comp.body == b"\x10\x93"
    raw.ping()


@both_versions
def test_qos0_publish_has_no_acknowledgement(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    topic = f"{ns}/q0"
    sub = _raw_subscriber(mqtt, broker, version, topic, 2)
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    raw.send(encode_publish(topic, b"zero", version=version))
    pub = sub.expect_publish()
    assert (pub.qos, pub.packet_id, pub.payload) == (0, None, b"zero")
    raw.ping()  # the next packet the publisher sees is the PINGRESP, not an ack
