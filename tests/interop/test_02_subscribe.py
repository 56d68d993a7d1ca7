"""02 subscribe: topic filter matching, SUBACK/UNSUBACK, replacement and invalid filters."""

from __future__ import annotations

import time

import pytest

from support.brokerproc import Broker
from support.clients import Clients, unique
from support.pahoclient import V5, V311
from support.rawclient import (
    ConnectionClosedError,
    PacketType,
    RawClient,
    decode_disconnect,
    decode_publish,
    decode_suback,
    encode_subscribe,
)

pytestmark = pytest.mark.interop
both_versions = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])

# (filter, topic, matches) — the worked examples of spec 4.7.1 plus the edge cases around them.
MATCH_TABLE: list[tuple[str, str, bool]] = [
    ("sport/tennis/player1/#", "sport/tennis/player1", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/ranking", True),
    ("sport/tennis/player1/#", "sport/tennis/player1/score/wimbledon", True),
    ("sport/tennis/player1/#", "sport/tennis/player2", False),
    ("sport/#", "sport", True),  # '#' also matches the parent level [MQTT-4.7.1-2]
    ("sport/tennis/+", "sport/tennis/player1", True),
    ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False),
    ("sport/+", "sport/", True),  # an empty level is still a level
    ("+/+", "/finance", True),
    ("/+", "/finance", True),
    ("+", "/finance", False),
    ("a/+/c", "a//c", True),
    ("Accounts", "ACCOUNTS", False),  # case-sensitive
    ("#", "ACCOUNTS", True),
    ("température/+", "température/salon", True),  # UTF-8 levels match byte for byte
]


def _receive_topics(raw: RawClient, count: int, timeout: float) -> list[str]:
    """Topics of the next ``count`` PUBLISHes (acknowledged); fewer if the deadline passes."""
    topics: list[str] = []
    deadline = time.monotonic() + timeout
    while len(topics) < count:
        try:
            pkt = raw.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        publish = decode_publish(pkt, raw.version)
        if publish.qos:
            assert publish.packet_id is not None
            raw.ack(PacketType.PUBACK, publish.packet_id)
        topics.append(publish.topic)
    return topics


@both_versions
def test_topic_filter_matching(broker: Broker, mqtt: Clients, ns: str, version: int) -> None:
    """Each row gets its own namespace and subscriber, so rows cannot match each other."""
    subscribers: list[RawClient] = []
    for row, (topic_filter, _, _) in enumerate(MATCH_TABLE):
        raw = mqtt.raw(broker, version)
        raw.connect(unique())
        assert raw.subscribe([(f"{ns}/{row}/{topic_filter}", 1)]).reason_codes == (1,)
        subscribers.append(raw)
    publisher = mqtt.raw(broker, version)
    publisher.connect(unique())
    for row, (_, topic, _) in enumerate(MATCH_TABLE):
        publisher.publish_qos1(f"{ns}/{row}/{topic}", topic.encode())
    for row, (topic_filter, topic, matches) in enumerate(MATCH_TABLE):
        if matches:
            got = _receive_topics(subscribers[row], 1, timeout=5.0)
            assert got == [f"{ns}/{row}/{topic}"], (topic_filter, topic)
    time.sleep(0.2)  # one shared quiet window: nothing beyond the expected matches arrives
    for row, (topic_filter, topic, _) in enumerate(MATCH_TABLE):
        extra = _receive_topics(subscribers[row], 1, timeout=0.01)
        assert extra == [], f"{topic_filter!r} must not match {topic!r}"


@both_versions
def test_suback_grants_requested_qos_in_order(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    client = mqtt.paho(broker, version)
    codes = client.subscribe_many([(f"{ns}/q2", 2), (f"{ns}/q0", 0), (f"{ns}/q1", 1)])
    assert codes == [2, 0, 1]  # one code per filter, in order [MQTT-3.9.3-1]


@both_versions
def test_unsubscribe_stops_delivery(broker: Broker, mqtt: Clients, ns: str, version: int) -> None:
    client = mqtt.paho(broker, version)
    topic = f"{ns}/u"
    assert client.subscribe(topic, 1) == [1]
    client.publish(topic, b"before", 1)
    assert client.expect().payload == b"before"
    codes = client.unsubscribe(topic)
    if version == V5:
        assert codes == [0]
    client.publish(topic, b"after", 1)
    client.expect_none(0.4)


def test_v5_unsubscribe_of_unknown_filter(broker: Broker, mqtt: Clients, ns: str) -> None:
    raw = mqtt.raw(broker, V5)
    raw.connect(unique())
    ack = raw.unsubscribe([f"{ns}/never-subscribed"])
    assert ack.reason_codes in ((0x00,), (0x11,))  # Success or "No subscription existed"


@both_versions
def test_resubscribe_replaces_the_subscription(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    client = mqtt.paho(broker, version)
    topic = f"{ns}/replace"
    assert client.subscribe(topic, 0) == [0]
    assert client.subscribe(topic, 2) == [2]  # same filter: replaced [MQTT-3.8.4-3]
    client.publish(topic, b"x", 2)
    msg = client.expect()
    assert (msg.payload, msg.qos) == (b"x", 2)
    client.expect_none(0.3)  # exactly one copy


@both_versions
def test_unsubscribe_one_of_several_filters(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    client = mqtt.paho(broker, version)
    client.subscribe_many([(f"{ns}/keep", 1), (f"{ns}/drop", 1)])
    client.unsubscribe(f"{ns}/drop")
    client.publish(f"{ns}/drop", b"d", 1)
    client.publish(f"{ns}/keep", b"k", 1)
    msg = client.expect()
    assert (msg.topic, msg.payload) == (f"{ns}/keep", b"k")
    client.expect_none(0.3)


@both_versions
@pytest.mark.parametrize("bad_filter", ["a/#/b", "a+", "#a", "a/b#", "+a/b", ""])
def test_invalid_topic_filter_is_rejected(
    broker: Broker, mqtt: Clients, version: int, bad_filter: str
) -> None:
    """Either a failure code for that filter, or (as a protocol error) a disconnect."""
    raw = mqtt.raw(broker, version)
    raw.connect(unique())
    raw.send(encode_subscribe(7, [(bad_filter, 1)], version=version))
    try:
        pkt = raw.recv()
    except ConnectionClosedError:
        return  # 3.1.1 4.8.0: close on protocol violation
    if pkt.type == PacketType.SUBACK:
        ack = decode_suback(pkt, version)
        assert ack.packet_id == 7
        assert ack.reason_codes == (0x80,) or (version == V5 and ack.reason_codes == (0x8F,))
        return
    assert version == V5 and pkt.type == PacketType.DISCONNECT, pkt
    assert decode_disconnect(pkt, version).reason_code in (0x81, 0x82, 0x8F)
    assert raw.read_until_closed() == []


@both_versions
def test_subscriber_receives_own_publish_by_default(
    broker: Broker, mqtt: Clients, ns: str, version: int
) -> None:
    client = mqtt.paho(broker, version)
    assert client.subscribe(f"{ns}/#", 1) == [1]
    client.publish(f"{ns}/echo", b"loop", 1)
    assert client.expect().payload == b"loop"


def test_subscriptions_of_different_clients_are_independent(
    broker: Broker, mqtt: Clients, ns: str
) -> None:
    a = mqtt.paho(broker, V311)
    b = mqtt.paho(broker, V5)
    a.subscribe(f"{ns}/a", 1)
    b.subscribe(f"{ns}/b", 1)
    a.publish(f"{ns}/b", b"to-b", 1)
    b.publish(f"{ns}/a", b"to-a", 1)
    assert a.expect().payload == b"to-a"
    assert b.expect().payload == b"to-b"
    a.expect_none(0.2)
    b.expect_none(0.1)
